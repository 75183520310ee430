"""What every command receives from the root group, and the exit codes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import attrs
import click

EXIT_OK = 0
EXIT_INVALID = 1  # the input (a job spec) is invalid
EXIT_USAGE = 2  # bad usage or unreadable file; click uses 2 for usage errors too

OUTPUT_FORMATS = ("table", "json", "yaml")


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/p2pnode``, else ``~/.local/share/p2pnode``."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join("~", ".local", "share")
    return Path(base).expanduser() / "p2pnode"


@attrs.frozen
class CliContext:
    """Root options, as ``ctx.obj``; a command takes it with ``@pass_cli``.

    ``data_dir`` is only resolved, never created: commands that need it
    create it themselves.
    """

    output: str = "table"
    data_dir: Path = attrs.field(factory=default_data_dir)
    verbose: int = 0


pass_cli = click.make_pass_decorator(CliContext, ensure=True)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print one line on stderr and exit with ``code``."""
    click.echo(f"p2pnode: {message}", err=True)
    raise click.exceptions.Exit(code)
