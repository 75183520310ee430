"""What every command receives from the root group, and the exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import attrs
import click

from p2pnode.cli.output import escape_text
from p2pnode.datadir import default_data_dir as default_data_dir  # re-exported

EXIT_OK = 0
EXIT_INVALID = 1  # the input (a job spec) is invalid
EXIT_USAGE = 2  # bad usage or unreadable file; click uses 2 for usage errors too
# serve only (the client commands use 3-5, see common.py):
EXIT_CANNOT_START = 1  # data dir in use, listen address taken or not on this host
EXIT_BAD_KEY = 8  # node.key corrupt, empty, group/other-accessible, or not a file
EXIT_NO_ENGINE = 7  # an enabled executor's engine is missing (no Docker engine)

OUTPUT_FORMATS = ("table", "json", "yaml")


@attrs.frozen
class CliContext:
    """Root options, as ``ctx.obj``; a command takes it with ``@pass_cli``.

    ``data_dir`` is only resolved, never created: commands that need it
    create it themselves.
    """

    output: str = "table"
    data_dir: Path = attrs.field(factory=default_data_dir)
    verbose: int = 0
    wide: bool = False  # tables show whole peer ids (else their last 12 characters)


pass_cli = click.make_pass_decorator(CliContext, ensure=True)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line on stderr and exit with ``code``.

    The message may quote what a peer or task chose (a file name, a reason):
    its control characters are escaped, so it stays one harmless line.
    """
    click.echo(f"p2pnode: {escape_text(message)}", err=True)
    raise click.exceptions.Exit(code)
