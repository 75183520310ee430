"""The ``p2pnode`` command line (click).

The root group takes the options every command shares (``--output``,
``--data-dir``, ``-v``) into a :class:`~p2pnode.cli.context.CliContext`.
Command groups live in their own modules (``job.py`` ...) and are attached
below with ``cli.add_command``.
"""

from __future__ import annotations

import importlib
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import click

from p2pnode.cli.context import OUTPUT_FORMATS, CliContext, default_data_dir

__all__ = ["cli", "main"]

EPILOG = """\b
Exit codes:
  0  success
  1  invalid job spec
  2  usage error, or a file that cannot be read
  3  no node is running for the data dir
  4  the job did not complete (failed or stopped)
  5  the node refused the request (e.g. unknown job)
  6  outcome unknown: the node was lost mid-request (job run: retry with the key)
serve:
  1  the node cannot start (data dir in use, listen address taken or absent)
  7  an enabled executor cannot run here (e.g. no Docker engine)
  8  node.key is unusable (corrupt, empty, readable by others, not a file)
"""


class _StderrHandler(logging.Handler):
    """Writes to the *current* sys.stderr, so redirections (tests) see logs."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
        except Exception:
            self.handleError(record)


def log_formatter() -> logging.Formatter:
    """Every ``-v`` line starts with its UTC time to the millisecond:
    ``2026-12-03T05:50:00.123Z INFO p2pnode.runtime: ...``."""
    formatter = logging.Formatter(
        "%(asctime)s.%(msecs)03dZ %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    formatter.converter = time.gmtime
    return formatter


def _setup_logging(verbose: int) -> None:
    """-v: INFO, -vv: DEBUG, on stderr.  Without -v nothing is installed and
    Python's last-resort handler still prints warnings and errors."""
    if not verbose:
        return
    root = logging.getLogger()
    # Replace our own handler on repeated calls (tests invoke cli many times),
    # never anybody else's.
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(log_formatter())
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


# command -> (module, attribute): imported when the command is used, so that
# `job list` does not import what `serve` needs (trio, py-libp2p).
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("p2pnode.cli.serve", "serve"),
    "job": ("p2pnode.cli.jobs", "job"),  # jobs.py adds run/list/... to job.py's group
    "node": ("p2pnode.cli.nodes", "node"),
    "completion": ("p2pnode.cli.extras", "completion"),
    "version": ("p2pnode.cli.extras", "version"),
    "http-token": ("p2pnode.cli.extras", "http_token"),
}


class LazyGroup(click.Group):
    """A group whose commands (``COMMANDS``) are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute = COMMANDS[cmd_name]
            self.add_command(getattr(importlib.import_module(module), attribute), cmd_name)
        return self.commands.get(cmd_name)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=EPILOG,
)
@click.option(
    "--output",
    "-o",
    type=click.Choice(OUTPUT_FORMATS),
    default="table",
    show_default=True,
    help="How results are printed: table for people, json/yaml for programs.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="P2PNODE_DATA_DIR",
    show_envvar=True,
    help="Where the node keeps its state  [default: $XDG_DATA_HOME/p2pnode, "
    "else ~/.local/share/p2pnode]",
)
@click.option("-v", "--verbose", count=True, help="Log to stderr (-v info, -vv debug).")
@click.option(
    "--wide", is_flag=True, help="Tables show whole peer ids (default: their last 12 characters)."
)
@click.version_option(package_name="p2pnode")
@click.pass_context
def cli(ctx: click.Context, output: str, data_dir: Path | None, verbose: int, wide: bool) -> None:
    """p2pnode: a peer-to-peer compute network without an orchestrator."""
    _setup_logging(verbose)
    ctx.obj = CliContext(
        output=output, data_dir=data_dir or default_data_dir(), verbose=verbose, wide=wide
    )



def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (``p2pnode`` and ``python -m p2pnode``).

    A usage error is one line on stderr, like every other error (click's
    default prints the usage and a boxed message), pointing at ``--help``.
    """
    try:
        code = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="p2pnode",
            standalone_mode=False,
        )
    except click.UsageError as exc:
        if isinstance(exc, _NO_ARGS_IS_HELP):  # `p2pnode job`: the help, as click shows it
            exc.show()
            sys.exit(exc.exit_code)
        where = exc.ctx.command_path if exc.ctx is not None else "p2pnode"
        click.echo(f"p2pnode: {_one_line(exc.format_message())} (see {where} --help)", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        click.echo(f"p2pnode: {_one_line(exc.format_message())}", err=True)
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("p2pnode: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)


# click >= 8.2 raises this for a group called without a command.
_NO_ARGS_IS_HELP: type[Exception] = getattr(click.exceptions, "NoArgsIsHelpError", click.Abort)


def _one_line(message: str) -> str:
    return " ".join(message.split())
