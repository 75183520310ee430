"""``p2pnode job ...``: commands about job specs.

Commands that talk to a node (run, status, ...) join this group later; the
ones here are offline and need no running node.
"""

from __future__ import annotations

import logging
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from p2pnode.cli.common import output_option
from p2pnode.cli.context import EXIT_INVALID, CliContext, fail, pass_cli
from p2pnode.cli.output import emit_document, plural, to_yaml

if TYPE_CHECKING:
    from protocols.spec import JobSpec, SpecError

log = logging.getLogger(__name__)

SPEC_ARGUMENT = click.argument(
    "spec_path", metavar="SPEC", type=click.Path(readable=False, allow_dash=True, path_type=Path)
)


@click.group()
def job() -> None:
    """Submit, watch and inspect jobs; validate specs offline."""


def read_spec(path: Path) -> JobSpec | list[SpecError]:
    """The validated spec at ``path`` (``-`` = stdin), or its errors.

    An unreadable file ends the command with exit code 2 and one line on stderr.
    """
    # Here, not at the top: commands that only ask the node never load the spec machinery.
    from p2pnode.specfile import load_spec_file, native_spec_text
    from p2pnode.wasm_modules import check_module_files
    from protocols.spec import MAX_SPEC_BYTES, SpecValidationError, parse_spec

    try:
        if str(path) == "-":
            text = sys.stdin.read(MAX_SPEC_BYTES + 1)
            spec = parse_spec(native_spec_text(text))  # a Bacalhau job too
        else:
            log.info("reading spec %s", path)
            spec = load_spec_file(path)
    except SpecValidationError as err:
        return err.errors
    except OSError as err:
        fail(f"cannot read {path}: {err.strerror or err}")
    # Local files the spec names (wasm modules) must be readable too.
    return check_module_files(spec.canonical(), spec_base(path)) or spec


def spec_base(path: Path) -> Path:
    """The directory that relative paths in the spec at ``path`` start from."""
    return Path.cwd() if str(path) == "-" else path.parent


def _report_invalid(cli: CliContext, path: Path, errors: list[SpecError]) -> None:
    """Print the errors (stdout), a summary (stderr), and exit 1."""
    if cli.output == "table":
        for error in errors:
            click.echo(str(error))
    else:
        emit_document({"ok": False, "digest": None, "errors": _error_dicts(errors)}, cli.output)
    click.echo(f"{plural(len(errors), 'error')} in {_shown(path)}", err=True)
    raise click.exceptions.Exit(EXIT_INVALID)


def _error_dicts(errors: list[SpecError]) -> list[dict[str, str]]:
    return [{"path": error.path, "message": error.message} for error in errors]


def _shown(path: Path) -> str:
    return "<stdin>" if str(path) == "-" else str(path)


@job.command()
@SPEC_ARGUMENT
@output_option
@pass_cli
def validate(cli: CliContext, spec_path: Path) -> None:
    """Check the job spec SPEC (a YAML or JSON file, - for stdin; a Bacalhau
    v1 job file is mapped to a p2pnode spec first).

    Prints OK, or every error with the path of its field.  With --output
    json/yaml: {ok, digest, errors: [{path, message}]}.
    """
    result = read_spec(spec_path)
    if isinstance(result, list):
        _report_invalid(cli, spec_path, result)
        return
    from protocols.spec import spec_digest

    if cli.output == "table":
        click.echo("OK")
    else:
        emit_document({"ok": True, "digest": spec_digest(result), "errors": []}, cli.output)


@job.command()
@SPEC_ARGUMENT
@output_option
@pass_cli
def explain(cli: CliContext, spec_path: Path) -> None:
    """Show SPEC in canonical form, with every default, and its digest.

    The canonical form is what identifies the spec (the digest hashes it):
    durations are in milliseconds and sizes in bytes.
    """
    result = read_spec(spec_path)
    if isinstance(result, list):
        _report_invalid(cli, spec_path, result)
        return
    from protocols.spec import spec_digest

    summary: dict[str, Any] = {
        "ok": True,
        "digest": spec_digest(result),
        "summary": result.describe(),
        "spec": result.canonical(),
    }
    if cli.output != "table":
        emit_document(summary, cli.output)
        return
    click.echo(summary["summary"])
    click.echo(f"digest: {summary['digest']}")
    click.echo("canonical spec (durations in ms, sizes in bytes):")
    click.echo(textwrap.indent(to_yaml(summary["spec"]), "  "))
