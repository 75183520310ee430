"""``p2pnode job run|list|describe|executions|logs|stop|get``: talk to a node.

Each command reaches the node serving ``--data-dir`` through its control socket
(``p2pnode/control.py``); that node is the owner of the jobs submitted to it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from p2pnode.cli.common import (
    EXIT_NOT_COMPLETED,
    call_node,
    data_dir_option,
    output_option,
)
from p2pnode.cli.context import CliContext, fail, pass_cli
from p2pnode.cli.job import SPEC_ARGUMENT, _report_invalid, job
from p2pnode.cli.output import emit_document, render_table
from p2pnode.cli.progress import Progress
from p2pnode.control import ControlClient
from protocols.spec import MAX_SPEC_BYTES, SpecValidationError, parse_spec

JOB_ID = click.argument("job_id")


def _emit(cli: CliContext, data: Any, table: Any) -> None:
    if cli.output == "table":
        table()
    else:
        emit_document(data if isinstance(data, dict) else {"items": data}, cli.output)


@job.command()
@SPEC_ARGUMENT
@click.option("--wait", is_flag=True, help="Show progress; exit 0 only if the job completes.")
@click.option("--id-only", is_flag=True, help="Print only the job id.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after SECONDS.")
@data_dir_option
@output_option
@pass_cli
def run(cli: CliContext, spec_path: Path, wait: bool, id_only: bool, timeout: float | None) -> None:
    """Submit SPEC to the node serving --data-dir, which becomes its owner."""
    try:
        text = (
            sys.stdin.read(MAX_SPEC_BYTES + 1)
            if str(spec_path) == "-"
            else spec_path.read_text(encoding="utf-8")
        )
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {spec_path}: {getattr(exc, 'strerror', None) or exc}")
    try:
        parse_spec(text)  # every error, before bothering the node
    except SpecValidationError as exc:
        _report_invalid(cli, spec_path, exc.errors)

    async def submit(client: ControlClient) -> dict[str, Any]:
        answer = await client.call("submit", spec=text)
        job_id = str(answer["job_id"])
        if id_only or cli.output == "table":
            click.echo(job_id)
        if not wait:
            return {"job_id": job_id}
        progress = Progress(job_id, quiet=id_only)
        with progress:
            async for item in client.stream("wait", job_id=job_id, timeout=timeout):
                if "event" in item:
                    progress.update(item["event"])
                else:
                    return dict(item["result"])
        raise AssertionError("unreachable")

    view = call_node(cli, submit)
    if not wait:
        if cli.output != "table" and not id_only:
            emit_document(view, cli.output)
        return
    if not id_only:
        _emit(cli, view, lambda: _print_job(view))
    if view["state"] != "completed":
        reason = view.get("reason") or view["state"]
        click.echo(f"p2pnode: job {view['job_id']} {view['state']}: {reason}", err=True)
        raise click.exceptions.Exit(EXIT_NOT_COMPLETED)


@job.command(name="list")
@data_dir_option
@output_option
@pass_cli
def list_jobs(cli: CliContext) -> None:
    """Jobs owned by the node serving --data-dir."""
    jobs = call_node(cli, lambda c: c.call("jobs"))
    columns = ["job_id", "name", "type", "state", "reason"]
    _emit(cli, jobs, lambda: click.echo(render_table(jobs, columns)))


@job.command()
@JOB_ID
@data_dir_option
@output_option
@pass_cli
def describe(cli: CliContext, job_id: str) -> None:
    """State, owner and every execution of a job (node, epoch, state, exit code, outputs)."""
    view = call_node(cli, lambda c: c.call("describe", job_id=job_id))
    _emit(cli, view, lambda: _print_job(view))


def _executions(view: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"slot": s["slot"], **{k: e[k] for k in EXECUTION_COLUMNS[1:] if k in e}}
        for s in view["slots"]
        for e in s["executions"]
    ]


EXECUTION_COLUMNS = ["slot", "execution_id", "node", "epoch", "state", "exit_code", "manifest_id"]


def _print_job(view: dict[str, Any]) -> None:
    click.echo(f"job:    {view['job_id']}  ({view['type']} '{view['name']}')")
    click.echo(f"owner:  {view['owner']}")
    reason = f"  ({view['reason']})" if view.get("reason") else ""
    click.echo(f"state:  {view['state']}{reason}")
    click.echo(render_table(_executions(view), EXECUTION_COLUMNS))


@job.command()
@JOB_ID
@data_dir_option
@output_option
@pass_cli
def executions(cli: CliContext, job_id: str) -> None:
    """Every execution of a job, oldest first per slot."""
    view = call_node(cli, lambda c: c.call("describe", job_id=job_id))
    rows = _executions(view)
    _emit(cli, rows, lambda: click.echo(render_table(rows, EXECUTION_COLUMNS)))


@job.command()
@JOB_ID
@data_dir_option
@output_option
@pass_cli
def logs(cli: CliContext, job_id: str) -> None:
    """The captured stdout/stderr tails of each slot's latest execution."""
    view = call_node(cli, lambda c: c.call("describe", job_id=job_id))
    latest = [(s["slot"], s["executions"][-1]) for s in view["slots"] if s["executions"]]
    if cli.output != "table":
        rows = [
            {
                "slot": slot,
                "execution_id": e["execution_id"],
                "stdout": e.get("stdout_tail", ""),
                "stderr": e.get("stderr_tail", ""),
            }
            for slot, e in latest
        ]
        emit_document({"items": rows}, cli.output)
        return
    for slot, e in latest:
        if len(latest) > 1:
            click.echo(f"==> slot {slot} ({e['execution_id']} on {e['node']}) <==")
        click.echo(e.get("stdout_tail", ""), nl=False)
        if e.get("stderr_tail"):
            click.echo(e["stderr_tail"], nl=False, err=True)


@job.command()
@JOB_ID
@data_dir_option
@output_option
@pass_cli
def stop(cli: CliContext, job_id: str) -> None:
    """Stop a job: cancel its executions (their leases bound them anyway)."""
    view = call_node(cli, lambda c: c.call("cancel", job_id=job_id))
    _emit(cli, view, lambda: click.echo(f"{view['job_id']} {view['state']}"))


@job.command()
@JOB_ID
@click.option(
    "--output-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to write the outputs (OUT/<slot>/... for several slots).",
)
@data_dir_option
@output_option
@pass_cli
def get(cli: CliContext, job_id: str, output_dir: Path) -> None:
    """Download a job's outputs, from whichever nodes hold them (hash-verified)."""
    target = str(output_dir.resolve())
    result = call_node(cli, lambda c: c.call("get", job_id=job_id, output_dir=target))
    files = result["files"]
    _emit(cli, result, lambda: click.echo("\n".join(files) if files else "(no outputs)"))
