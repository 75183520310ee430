"""``p2pnode job run|update|suspend|resume|runs|list|describe|executions|logs|history|stop|get``.

Each command reaches the node serving ``--data-dir`` through its control socket
(``p2pnode/control.py``); that node is the owner of the jobs submitted to it.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import click

from p2pnode.cli.common import (
    EXIT_NOT_COMPLETED,
    EXIT_UNKNOWN,
    BoundedFloat,
    NodeCalls,
    call_node,
    data_dir_option,
    output_option,
)
from p2pnode.cli.context import CliContext, fail, pass_cli
from p2pnode.cli.inline import (
    INLINE_SOURCE,
    InlineJob,
    RunCommand,
    given_inline_flags,
    inline_command,
    inline_options,
    inline_spec_text,
)
from p2pnode.cli.job import SPEC_ARGUMENT, _report_invalid, job, spec_base
from p2pnode.cli.output import (
    emit_document,
    escape_name,
    escape_text,
    render_table,
    to_json,
    to_yaml,
)
from p2pnode.cli.retry import DEFAULT_RETRY_FOR, Attempts, OutcomeUnknown, new_key
from p2pnode.control_request import MAX_IDEMPOTENCY_KEY, MAX_LIST_LIMIT, MAX_TAIL_LINES, TIMEOUT
from p2pnode.control_request import MAX_TIMEOUT as MAX_WAIT_SECONDS
from p2pnode.errors import BlobError, ControlError
from p2pnode.timefmt import iso_utc
from protocols.kinds import KIND_POLICY
from protocols.spec_errors import SpecValidationError
from protocols.states import JobState
from protocols.units import UnitError, parse_duration_ms

JOB_ID = click.argument("job_id")
OPTIONAL_SPEC = click.argument(
    "spec_path",
    metavar="[SPEC]",
    required=False,
    type=click.Path(readable=False, allow_dash=True, path_type=Path),
)


def _emit(cli: CliContext, data: Any, table: Any) -> None:
    if cli.output == "table":
        table()
    else:
        emit_document(data if isinstance(data, dict) else {"items": data}, cli.output)


@job.command(cls=RunCommand)
@OPTIONAL_SPEC
@click.option("--wait", is_flag=True, help="Show progress; exit 0 only if the job completes.")
@click.option("--id-only", is_flag=True, help="Print only the job id.")
@click.option(
    "--timeout",
    default=None,
    metavar="SECONDS|DUR",
    help="SPEC, with --wait: stop waiting after SECONDS (exit 4; the job goes on).  "
    "Inline job: the task's timeout (30s, 5m, 2h; a bare number is seconds) [default: 30m].",
)
@click.option(
    "--idempotency-key",
    "key",
    metavar="KEY",
    default=None,
    help="Submit at most once per KEY: the same KEY again returns the same job "
    "(default: a new key per invocation, reused by its retries).",
)
@click.option(
    "--retry-for",
    type=click.FloatRange(min=0),
    default=DEFAULT_RETRY_FOR,
    show_default=True,
    metavar="SECONDS",
    help="After a lost connection, retry (same key) this long; then exit 6.",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Wait, then download the outputs of a completed job here (like job get).",
)
@inline_options
@data_dir_option
@output_option
@pass_cli
def run(
    cli: CliContext,
    spec_path: Path | None,
    wait: bool,
    id_only: bool,
    timeout: str | None,
    key: str | None,
    retry_for: float,
    output_dir: Path | None,
    image: str | None,
    name: str | None,
    count: int,
    labels: tuple[str, ...],
    env: tuple[str, ...],
    cpu: float,
    memory: str,
    network: str | None,
) -> None:
    """Submit SPEC to the node serving --data-dir, which becomes its owner.

    SPEC is a p2pnode spec or a Bacalhau v1 job file (- for stdin).  Or an
    inline batch job: `job run -- CMD ARGS` (process engine) or `job run
    --image IMAGE -- CMD ARGS` (docker engine), shaped by the "Inline job"
    flags below.

    If the connection to the node is lost (the node died or restarted), the
    submit is retried with the same idempotency key, so that it makes one job
    whatever happened; exit 6 if the node does not answer within --retry-for.
    """
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        fail(f"--idempotency-key must be 1 to {MAX_IDEMPOTENCY_KEY} characters")
    ctx = click.get_current_context()
    command = inline_command(ctx)
    wait_timeout: float | None = None
    if command is not None or image is not None:  # an inline job
        if spec_path is not None:
            raise click.UsageError(
                f"give SPEC or an inline command (-- CMD ARGS), not both (got SPEC {spec_path})"
            )
        spec_path = Path(INLINE_SOURCE)
        inline = InlineJob(
            command=command or (),
            image=image,
            name=name,
            count=count,
            labels=labels,
            env=env,
            timeout=timeout,
            cpu=cpu,
            memory=memory,
            network=network,
        )
        text = _inline_text(cli, inline)
    else:
        if spec_path is None:
            raise click.UsageError(
                "missing SPEC (a spec file, - for stdin) or an inline command (-- CMD ARGS)"
            )
        flags = given_inline_flags(ctx)
        if flags:
            raise click.UsageError(
                f"{', '.join(flags)}: only for inline jobs (job run [OPTIONS] -- CMD ARGS)"
            )
        if timeout is not None and not (wait or output_dir is not None):
            raise click.UsageError("--timeout needs --wait (it bounds the wait, not the job)")
        if timeout is not None:
            param = next(p for p in ctx.command.params if p.name == "timeout")
            wait_timeout = WAIT_TIMEOUT.convert(timeout, param, ctx)
        text = _read_valid_spec(cli, spec_path)
    wait = wait or output_dir is not None  # outputs exist once the job completed
    attempts = Attempts(key or new_key(), retry_for)
    shown: list[str] = []
    source = spec_path

    async def submit(client: NodeCalls) -> dict[str, Any]:
        from p2pnode.cli.progress import Progress  # rich: only for a wait

        spec = await _with_module_ids(cli, source, text)
        answer = await client.call("submit", spec=spec, idempotency_key=attempts.key)
        attempts.reached()
        job_id = str(answer["job_id"])
        if (id_only or cli.output == "table") and not shown:
            click.echo(job_id)
        shown.append(job_id)
        if not wait:
            return {"job_id": job_id}
        progress = Progress(job_id, quiet=id_only)
        try:
            with progress:
                async for item in client.stream("wait", job_id=job_id, timeout=wait_timeout):
                    if "event" in item:
                        progress.update(item["event"])
                    else:
                        view = dict(item["result"])
                        if output_dir is not None and view["state"] == "completed":
                            target = str(output_dir.resolve())
                            got = await client.call("get", job_id=job_id, output_dir=target)
                            view["outputs"] = {"output_dir": target, "files": got["files"]}
                        return view
        except ControlError as exc:
            if exc.code != TIMEOUT:
                raise
            # The wait ended, not the job: show where it stands.
            view = dict(await client.call("describe", job_id=job_id))
            return {**view, "wait_timed_out": True}
        raise AssertionError("unreachable")

    try:
        view = call_node(cli, lambda client: attempts.run(submit, client))
    except OutcomeUnknown as exc:
        fail(str(exc), code=EXIT_UNKNOWN)
    if not wait:
        if cli.output != "table" and not id_only:
            emit_document(view, cli.output)
        return
    timed_out = bool(view.pop("wait_timed_out", False))
    if not id_only:
        _emit(cli, view, lambda: _print_run_result(view))
    if view["state"] == "completed":
        return
    if timed_out and view["state"] not in ("failed", "stopped"):
        click.echo(
            f"p2pnode: job {view['job_id']} still {view['state']} after {wait_timeout:g}s; "
            f"not stopped (p2pnode job stop {view['job_id']})",
            err=True,
        )
    else:
        reason = view.get("reason") or view["state"]
        click.echo(f"p2pnode: job {view['job_id']} {view['state']}: {reason}", err=True)
    raise click.exceptions.Exit(EXIT_NOT_COMPLETED)


WAIT_TIMEOUT = BoundedFloat(0, MAX_WAIT_SECONDS, low_open=True)


def _inline_text(cli: CliContext, inline: InlineJob) -> str:
    """The spec text of an inline job; else every error is printed, exit 1."""
    try:
        return inline_spec_text(inline)
    except SpecValidationError as exc:
        _report_invalid(cli, Path(INLINE_SOURCE), exc.errors)
        raise AssertionError("unreachable") from None


def _print_run_result(view: dict[str, Any]) -> None:
    _print_job(view)
    outputs = view.get("outputs")
    if outputs is not None:
        files = [escape_name(str(f)) for f in outputs["files"]]  # names chosen by the task
        click.echo(f"\noutputs in {escape_text(outputs['output_dir'])}:")
        click.echo("\n".join(f"  {f}" for f in files) if files else "  (no outputs)")


def _read_valid_spec(cli: CliContext, spec_path: Path) -> str:
    """The text of SPEC (``-`` = stdin) once it validates and the wasm module
    files it names exist; else every error is printed and the command ends
    (exit 1; exit 2 for an unreadable file)."""
    # Here, not at the top: commands that only ask the node never load the spec machinery.
    from p2pnode.specfile import native_spec_text, read_spec_bytes
    from p2pnode.wasm_modules import check_module_files
    from protocols.spec import MAX_SPEC_BYTES, SpecValidationError, parse_spec

    try:
        if str(spec_path) == "-":
            raw: str | bytes = sys.stdin.read(MAX_SPEC_BYTES + 1)
        else:
            raw = read_spec_bytes(spec_path)  # bounded: /dev/zero cannot pin us
        text = native_spec_text(raw)  # a Bacalhau job: the p2pnode spec it maps to
        spec = parse_spec(text)  # every error, before bothering the node
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {spec_path}: {getattr(exc, 'strerror', None) or exc}")
    except SpecValidationError as exc:
        _report_invalid(cli, spec_path, exc.errors)
        raise AssertionError("unreachable") from None
    missing = check_module_files(spec.canonical(), spec_base(spec_path))
    if missing:
        _report_invalid(cli, spec_path, missing)
    return text


async def _with_module_ids(cli: CliContext, spec_path: Path, text: str) -> str | dict[str, Any]:
    """The spec to send: ``text`` itself, or, when it names wasm module files,
    its document with each file stored in the node's blob store and named by
    its content id (``p2pnode/wasm_modules.py``).  Called once the node
    answers, so its data dir exists."""
    import trio  # here: commands that only ask the node never import it

    from p2pnode.wasm_modules import store_module_files, wasm_engines
    from protocols.spec import load_spec_text

    doc = load_spec_text(text)
    if not any(True for _ in wasm_engines(doc)):
        return text
    try:
        stored = await trio.to_thread.run_sync(
            store_module_files, doc, spec_base(spec_path), cli.data_dir
        )
    except BlobError as err:
        fail(str(err))
    return dict(stored)


@job.command()
@JOB_ID
@SPEC_ARGUMENT
@data_dir_option
@output_option
@pass_cli
def update(cli: CliContext, job_id: str, spec_path: Path) -> None:
    """Give a daemon, service or cron job a new version of its spec.

    Cron: later runs use it, a run already going finishes.  Daemon and service:
    a rolling replacement, rollout.max_unavailable slots at a time.  The type
    of a job cannot change; batch and ops jobs cannot be updated (exit 5).
    """
    text = _read_valid_spec(cli, spec_path)

    async def send(client: NodeCalls) -> Any:
        spec = await _with_module_ids(cli, spec_path, text)
        return await client.call("update", job_id=job_id, spec=spec)

    result = call_node(cli, send)
    _emit(cli, result, lambda: click.echo(f"{result['job_id']} version {result['version']}"))


def _suspend(cli: CliContext, job_id: str, op: str) -> None:
    view = call_node(cli, lambda c: c.call(op, job_id=job_id))
    _emit(cli, view, lambda: click.echo(f"{view['job_id']} {view['state']}"))


@job.command()
@JOB_ID
@data_dir_option
@output_option
@pass_cli
def suspend(cli: CliContext, job_id: str) -> None:
    """Suspend a cron job: its scheduled times are skipped until resumed
    (a run already going finishes).  Any other kind of job: exit 5."""
    _suspend(cli, job_id, "suspend")


@job.command()
@JOB_ID
@data_dir_option
@output_option
@pass_cli
def resume(cli: CliContext, job_id: str) -> None:
    """Resume a suspended cron job from its next scheduled time (the times
    that passed while suspended are not run)."""
    _suspend(cli, job_id, "resume")


RUN_COLUMNS = ["scheduled", "version", "outcome", "execution", "node", "reason"]


@job.command()
@JOB_ID
@data_dir_option
@output_option
@pass_cli
def runs(cli: CliContext, job_id: str) -> None:
    """A cron job's runs, oldest first, skipped and missed times included.

    With --output json/yaml: a list of {run_id, scheduled (ISO-8601 UTC),
    scheduled_ms, version, outcome, reason, executions: [{execution_id, node,
    state}], count, first_scheduled_ms} (a missed row stands for `count`
    times, from first_scheduled_ms to scheduled_ms).
    """
    rows = call_node(cli, lambda c: c.call("runs", job_id=job_id))
    if cli.output != "table":
        click.echo(to_json(rows) if cli.output == "json" else to_yaml(rows))
        return
    table = []
    for row in rows:
        executions = row.get("executions") or [{}]
        for i, e in enumerate(executions):
            first = i == 0
            table.append(
                {
                    "scheduled": row["scheduled"] if first else "",
                    "version": row["version"] if first else "",
                    "outcome": _outcome(row) if first else "",
                    "execution": e.get("execution_id", "-") + (f" ({e['state']})" if e else ""),
                    "node": e.get("node", "-"),
                    "reason": row["reason"] if first else "",
                }
            )
    click.echo(render_table(table, RUN_COLUMNS))


def _outcome(row: dict[str, Any]) -> str:
    count = int(row.get("count") or 1)
    return f"{row['outcome']} x{count}" if count > 1 else str(row["outcome"])


JOB_STATES = tuple(state.value for state in JobState)


class SinceTime(click.ParamType[int]):
    """``--since``: a duration back from now (10m, 2h, 1d) or an ISO-8601
    time (UTC unless it says otherwise), as unix milliseconds."""

    name = "DUR|ISO"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int):
            return value
        text = str(value).strip()
        try:
            return max(0, round(time.time() * 1000) - parse_duration_ms(text))
        except UnitError:
            pass
        try:
            moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(
                f"{text!r} is neither a duration (10m, 2h, 1d) nor an ISO-8601 time"
                " (2026-01-31T12:00:00Z)",
                param,
                ctx,
            )
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        return max(0, round(moment.timestamp() * 1000))


@job.command(name="list")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(JOB_STATES),
    help="Only jobs in this state (repeat for any of several).",
)
@click.option(
    "--type",
    "job_type",
    type=click.Choice(sorted(KIND_POLICY)),
    default=None,
    help="Only jobs of this type.",
)
@click.option("--name", default=None, help="Only jobs whose name contains this text.")
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=MAX_LIST_LIMIT),
    default=None,
    help="Only the N most recently submitted jobs.",
)
@click.option(
    "--since",
    type=SinceTime(),
    default=None,
    help="Only jobs submitted since then: a duration back from now (10m, 2h) or an ISO time.",
)
@data_dir_option
@output_option
@pass_cli
def list_jobs(
    cli: CliContext,
    states: tuple[str, ...],
    job_type: str | None,
    name: str | None,
    limit: int | None,
    since: int | None,
) -> None:
    """Jobs owned by the node serving --data-dir, oldest submitted first.

    A cron job's runs are not rows here: `p2pnode job runs CRON` lists them.
    """
    from p2pnode.client import list_arguments  # the client's request, built once

    filters = list_arguments(
        state=list(states) or None, type=job_type, name=name, limit=limit, since=since, runs=False
    )
    jobs = call_node(cli, lambda c: c.call("jobs", **filters))
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
        {"slot": s["slot"], **{k: e[k] for k in EXECUTION_FIELDS if k in e}}
        for s in view.get("slots", [])
        for e in s["executions"]
    ]


EXECUTION_COLUMNS = [
    "slot",
    "execution_id",
    "node",
    "epoch",
    "version",
    "state",
    "exit_code",
    "started_at",
    "duration_s",
    "manifest_id",
]


SLOT_COLUMNS = ["slot", "state", "node", "version", "epoch", "reason"]
# ``job executions -o json``: the table's columns and every time field.
EXECUTION_FIELDS = [*EXECUTION_COLUMNS[1:], "submitted_at", "finished_at"]


def _time_lines(view: dict[str, Any]) -> list[tuple[str, str]]:
    """submitted / started / finished (duration) lines of a job's description."""
    if not view.get("submitted_at"):
        return []
    lines = [("submitted", view["submitted_at"]), ("started", view.get("started_at") or "-")]
    if view.get("finished_at"):
        lines.append(("finished", f"{view['finished_at']}  ({view.get('duration_s') or 0:g}s)"))
    return lines


def _print_job(view: dict[str, Any]) -> None:
    if "owner" not in view and view.get("chain"):  # a chain this node owns(ed) a stage of
        click.echo(f"job:  {view['job_id']}  (chain; its submitter has the job)")
        _print_chain(view["chain"])
        return
    lines = [
        ("job", f"{view['job_id']}  ({view['type']} '{view['name']}')"),
        ("version", str(view.get("version", 1))),
        ("owner", view["owner"]),
        ("state", view["state"] + (f"  ({view['reason']})" if view.get("reason") else "")),
        *_time_lines(view),
    ]
    if "desired" in view:
        lines.append(("live", f"{view['live']} of {view['desired']} desired"))
    if view.get("parent"):
        lines.append(("run of", f"{view['parent']}, scheduled {iso_utc(view['scheduled_ms'])}"))
    schedule = view.get("schedule")
    if schedule:
        lines += _schedule_lines(schedule)
    width = max(len(label) for label, _ in lines) + 2
    for label, value in lines:
        click.echo(f"{label + ':':<{width}}{escape_text(value)}")
    if view["type"] == "cron":  # its runs are jobs of their own
        click.echo(f"\nruns: p2pnode job runs {view['job_id']}")
        return
    if view.get("partitions"):  # a stream job
        click.echo()
        click.echo(_partitions_table(view["partitions"]))
    if view.get("tasks"):  # a DAG
        click.echo()
        click.echo(render_table(_task_rows(view["tasks"]), TASK_COLUMNS))
        return
    if view.get("chain"):
        _print_chain(view["chain"])
        return
    if view["slots"]:
        click.echo()
        click.echo(render_table(view["slots"], SLOT_COLUMNS))
    click.echo()
    click.echo(render_table(_executions(view), EXECUTION_COLUMNS))


TASK_COLUMNS = ["task", "state", "runs", "executions", "outputs", "reason"]
RECORD_COLUMNS = ["seq", "kind", "stage", "from", "to", "signed_by", "hash"]


def _task_rows(tasks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per DAG task: its state, runs, executions (node: state) and outputs."""
    rows = []
    for task in tasks:
        executions = [e for r in task["runs"] for e in r["executions"]]
        rows.append(
            {
                "task": task["task"],
                "state": task["state"],
                "runs": len(task["runs"]),
                "executions": ", ".join(f"{e['node'][-8:]}:{e['state']}" for e in executions[:4])
                + (f" (+{len(executions) - 4})" if len(executions) > 4 else ""),
                "outputs": len(task["outputs"]),
                "reason": task["reason"],
            }
        )
    return rows


def _print_chain(chain: dict[str, Any]) -> None:
    """Where the chain stands, and its record log (checked)."""
    click.echo(f"stage:  {chain['stage']}  owner {chain['owner']}  (this node: {chain['role']})")
    click.echo(f"log:    {chain['log_verified']}")
    rows = [
        {**r, "signed_by": ",".join(s[-8:] for s in r["signed_by"]), "hash": r["hash"][:19]}
        for r in chain["records"]
    ]
    click.echo()
    click.echo(render_table(rows, RECORD_COLUMNS))


CONSUME_COLUMNS = ["partition", "state", "holder", "epoch", "checkpoint", "lag"]
MICRO_BATCH_COLUMNS = [
    *("partition", "streams", "checkpoint", "position", "in_flight", "batches", "entries"),
    "source_error",
]


def _partitions_table(partitions: list[dict[str, Any]]) -> str:
    """Consume mode: holder, epoch, committed checkpoint and lag per partition;
    micro_batch: committed and read positions, the batch in flight, counts and
    the source's last read error."""
    if any("in_flight" in p for p in partitions):
        rows = [{**p, "streams": ",".join(p.get("streams") or [])} for p in partitions]
        return render_table(rows, MICRO_BATCH_COLUMNS)
    return render_table(partitions, CONSUME_COLUMNS)


def _schedule_lines(schedule: dict[str, Any]) -> list[tuple[str, str]]:
    def when(ms: int | None) -> str:
        return iso_utc(ms) if ms else "-"

    lines = [
        ("schedule", "suspended" if schedule["suspended"] else "active"),
        ("overlap", str(schedule["overlap"])),
        ("last time", when(schedule["last_scheduled_ms"])),
        ("next time", when(schedule["next_ms"])),
        ("active runs", ", ".join(schedule["active_runs"]) or "-"),
    ]
    if schedule.get("buffered_ms"):
        lines.append(("buffered", when(schedule["buffered_ms"])))
    return lines


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
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Print output as it happens; exit when the job ends (0 completed, 4 otherwise).",
)
@click.option(
    "--tail",
    type=click.IntRange(0, MAX_TAIL_LINES),
    default=None,
    metavar="N",
    help="Only the last N lines of each stream (then, with --follow, what comes next).",
)
@data_dir_option
@output_option
@pass_cli
def logs(cli: CliContext, job_id: str, follow: bool, tail: int | None) -> None:
    """Each slot's output (its latest execution): live while the job runs,
    complete once it ended."""
    args: dict[str, Any] = {"job_id": job_id, "follow": follow, "tail": tail}
    if follow:
        final = call_node(cli, lambda c: _follow_logs(cli, c, args))
        if final.get("state") != "completed":
            sys.exit(EXIT_NOT_COMPLETED)
        return
    pieces: list[dict[str, Any]] = []
    latest: list[tuple[int, dict[str, Any]]] = []  # (slot, its latest execution)

    async def collect(client: NodeCalls) -> None:
        async for item in client.stream("logs", **args):
            if "event" in item:
                pieces.append(item["event"])
        view = await client.call("describe", job_id=job_id)
        latest.extend((s["slot"], s["executions"][-1]) for s in view["slots"] if s["executions"])

    call_node(cli, collect)
    # One row per slot's latest execution (as before), output or not.
    slots = {
        slot: {"slot": slot, "execution_id": e["execution_id"], "stdout": "", "stderr": ""}
        for slot, e in latest
    }
    nodes = {e["execution_id"]: e["node"] for _, e in latest}
    for piece in pieces:
        row = slots.setdefault(
            piece["slot"],
            {"slot": piece["slot"], "execution_id": piece["execution"], "stdout": "", "stderr": ""},
        )
        if row["execution_id"] != piece["execution"] and not (row["stdout"] or row["stderr"]):
            row["execution_id"] = piece["execution"]  # (a retry started after the pieces)
        if row["execution_id"] == piece["execution"]:
            row[piece["stream"]] += piece["data"]
    rows = [slots[k] for k in sorted(slots)]
    if cli.output != "table":
        emit_document({"items": rows}, cli.output)
        return
    for row in rows:
        if len(rows) > 1:
            node = nodes.get(row["execution_id"], "?")
            click.echo(f"==> slot {row['slot']} ({row['execution_id']} on {node}) <==")
        _echo_output(row["stdout"], sys.stdout)
        if row["stderr"]:
            _echo_output(row["stderr"], sys.stderr)


async def _follow_logs(
    cli: CliContext, client: NodeCalls, args: dict[str, Any]
) -> dict[str, Any]:
    """Print each piece of output as it comes (json/yaml: one document per
    piece); the final answer."""
    view = await client.call("describe", job_id=args["job_id"])
    several = len(view.get("slots") or ()) > 1
    shown: tuple[int, str] | None = None  # (slot, execution) of the last piece printed
    async for item in client.stream("logs", **args):
        if "result" in item:
            return dict(item["result"] or {})
        piece = item["event"]
        if cli.output != "table":
            # One document per piece: JSON lines, or a YAML stream.
            if cli.output == "json":
                click.echo(json.dumps(piece, ensure_ascii=False))
            else:
                click.echo("---\n" + to_yaml(piece), nl=False)
            continue
        where = (piece["slot"], piece["execution"])
        if (shown is not None and where != shown) or (shown is None and several):
            click.echo(f"==> slot {piece['slot']} ({piece['execution']}) <==")
        shown = where
        out = sys.stderr if piece["stream"] == "stderr" else sys.stdout
        _echo_output(piece["data"], out)
        out.flush()
    return {}


HISTORY_COLUMNS = ["time", "event", "node", "slot", "detail"]


@job.command()
@JOB_ID
@data_dir_option
@output_option
@pass_cli
def history(cli: CliContext, job_id: str) -> None:
    """The job's timeline: submitted, auctioned, leased, started, lost, retried,
    result, completed/failed/stopped, ..."""
    events = call_node(cli, lambda c: c.call("history", job_id=job_id))
    rows = [
        {
            "time": e["at"],
            "event": e["event"],
            "node": (e["node"] or "")[-12:],
            "slot": "" if e["slot"] is None else e["slot"],
            "detail": e["detail"],
        }
        for e in events
    ]
    _emit(cli, events, lambda: click.echo(render_table(rows, HISTORY_COLUMNS)))


def _echo_output(text: str, stream: Any) -> None:
    """A task's output exactly as written (``color=True``: click would strip
    some escape sequences from a pipe), unless shown on a terminal: there its
    escape sequences, which could rewrite the screen, are shown escaped."""
    if stream.isatty():
        text = escape_text(text, keep="\n\t")
    click.echo(text, nl=False, err=stream is sys.stderr, color=True)


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
    files = [escape_name(str(f)) for f in result["files"]]  # names chosen by the task
    _emit(cli, result, lambda: click.echo("\n".join(files) if files else "(no outputs)"))
