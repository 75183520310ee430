"""Validation of the kind-specific parts of a job: cron schedule, DAG, chain, stream."""

from __future__ import annotations

import re
import zoneinfo
from typing import Any

from croniter import croniter

from protocols.spec.check import Ctx, Fields, index, join, show, suggest
from protocols.spec.model import (
    DAY_MS,
    DEFAULT_BATCH_ENTRIES,
    DEFAULT_BATCH_WAIT_MS,
    DEFAULT_CATCH_UP_MS,
    DEFAULT_CHECKPOINT_MS,
    DEFAULT_HISTORY_FAILED,
    DEFAULT_HISTORY_SUCCEEDED,
    DEFAULT_RUN_FOR_MS,
    HOUR_MS,
    SECOND_MS,
    DagTask,
    History,
    MapSpec,
    ProcessEngine,
    Schedule,
    Stage,
    StreamBatch,
    StreamSettings,
    StreamSource,
    TaskSpec,
)
from protocols.spec.task import MAX_TIMEOUT_MS, check_task

# Names of jobs, DAG tasks, chain stages and stream partitions: safe in ids,
# file names and log lines.
NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
NAME_HINT = "must be 1-63 characters of a-z, 0-9, '.', '_', '-', starting with a letter or digit"
IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")

OVERLAP_POLICIES = ("skip", "allow", "replace", "buffer_one")
WHEN_CHOICES = ("succeeded", "failed", "always")
STREAM_MODES = ("consume", "micro_batch")
SCHEDULE_KEYS = ("cron", "every", "time_zone", "overlap", "catch_up", "history", "suspended")

MAX_CRON_TEXT = 256
MAX_ZONE_TEXT = 64
MIN_EVERY_MS = 1 * SECOND_MS
MAX_EVERY_MS = 30 * DAY_MS
MAX_CATCH_UP_MS = 7 * DAY_MS
MAX_HISTORY = 1000
MAX_DAG_TASKS = 200
MAX_STAGES = 100
MAX_PARTITIONS = 1024
MAX_STREAMS = 1024
MAX_BATCH_ENTRIES = 100_000
MAX_BATCHES_IN_FLIGHT = 16  # per partition (batch.max_in_flight)
MAX_BATCH_WAIT_MS = 1 * HOUR_MS
REDIS_URL = re.compile(r"(redis|rediss|unix)://\S+")


# --- cron ----------------------------------------------------------------------


def check_schedule(ctx: Ctx, value: Any, path: str) -> Schedule:
    fields = ctx.mapping(value, path, SCHEDULE_KEYS)
    if fields is None:
        return Schedule(every_ms=MIN_EVERY_MS)
    cron: str | None = None
    every_ms: int | None = None
    if fields.has("cron") and fields.has("every"):
        ctx.error(path, "set exactly one of cron or every, not both")
    elif not fields.has("cron") and not fields.has("every"):
        ctx.error(path, "set one of cron (e.g. '*/5 * * * *') or every (e.g. 30s)")
    elif fields.has("cron"):
        cron = _cron(ctx, fields.get("cron"), fields.at("cron"))
    else:
        every_ms = fields.duration("every", MIN_EVERY_MS, lo=MIN_EVERY_MS, hi=MAX_EVERY_MS)
    history = History()
    if fields.has("history"):
        hist = ctx.mapping(fields.get("history"), fields.at("history"), ("succeeded", "failed"))
        if hist is not None:
            history = History(
                succeeded=hist.integer(
                    "succeeded", DEFAULT_HISTORY_SUCCEEDED, lo=0, hi=MAX_HISTORY
                ),
                failed=hist.integer("failed", DEFAULT_HISTORY_FAILED, lo=0, hi=MAX_HISTORY),
            )
    return Schedule(
        cron=cron,
        every_ms=every_ms,
        time_zone=_time_zone(ctx, fields),
        overlap=fields.choice("overlap", OVERLAP_POLICIES, "skip"),
        catch_up_ms=fields.duration("catch_up", DEFAULT_CATCH_UP_MS, lo=0, hi=MAX_CATCH_UP_MS),
        history=history,
        suspended=fields.boolean("suspended", False),
    )


def _cron(ctx: Ctx, value: Any, path: str) -> str | None:
    text = ctx.string(value, path, max_len=MAX_CRON_TEXT)
    if text is None:
        return None
    parts = text.split()
    # Canonical spacing, so "*/5  * * * *" and "*/5 * * * *" are one spec.
    normal = " ".join(parts)
    if len(parts) != 5:
        ctx.error(
            path,
            f"must have 5 fields (minute hour day-of-month month day-of-week), "
            f"got {len(parts)} in {text!r}",
        )
        return None
    try:
        valid = bool(croniter.is_valid(normal))
    except Exception:  # croniter raises assorted errors on odd input
        valid = False
    if not valid:
        ctx.error(path, f"is not a valid cron expression: {text!r}")
        return None
    return normal


def _time_zone(ctx: Ctx, fields: Fields) -> str:
    if not fields.has("time_zone"):
        return "UTC"
    path = fields.at("time_zone")
    name = ctx.string(fields.get("time_zone"), path, max_len=MAX_ZONE_TEXT)
    if name is None:
        return "UTC"
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        ctx.error(path, f"unknown time zone {name!r} (use an IANA name like Europe/Paris)")
        return "UTC"
    return name


# --- dag -----------------------------------------------------------------------


def check_dag_tasks(ctx: Ctx, value: Any, path: str) -> dict[str, DagTask]:
    if not isinstance(value, dict):
        ctx.error(path, f"must be a mapping of task name to task, got {show(value)}")
        return {}
    if not 1 <= len(value) <= MAX_DAG_TASKS:
        ctx.error(path, f"must have 1 to {MAX_DAG_TASKS} tasks, got {len(value)}")
        return {}
    names = [key for key in value if isinstance(key, str)]
    nodes: dict[str, DagTask] = {}
    for raw_name, raw_task in value.items():
        node_path = join(path, raw_name)
        name = ctx.string(raw_name, node_path, max_len=63, pattern=NAME, pattern_hint=NAME_HINT)
        node = _dag_task(ctx, raw_task, node_path, name or "", names)
        if name is not None:
            nodes[name] = node
    _check_cycles(ctx, path, {name: node.depends_on for name, node in nodes.items()})
    return nodes


def _dag_task(ctx: Ctx, value: Any, path: str, name: str, names: list[str]) -> DagTask:
    task, fields = check_task(ctx, value, path, extra_keys=("depends_on", "map", "when"))
    if fields is None:
        return DagTask(task=task)
    depends_on: list[str] = []
    if fields.has("depends_on"):
        deps_path = fields.at("depends_on")
        raw = fields.get("depends_on")
        deps = ctx.str_list(raw, deps_path, min_items=0, max_items=MAX_DAG_TASKS, unique=True)
        # Walk the raw list for the indexes; str_list dropped (and reported)
        # the invalid items and the repeats, which `pending` skips.
        pending = set(deps or ())
        for i, dep in enumerate(raw if deps is not None else ()):
            if not isinstance(dep, str) or dep not in pending:
                continue
            pending.discard(dep)
            if dep == name:
                ctx.error(index(deps_path, i), "a task cannot depend on itself")
            elif dep not in names:
                ctx.error(index(deps_path, i), f"unknown task {dep!r}" + suggest(dep, names))
            else:
                depends_on.append(dep)
    fan_out: MapSpec | None = None
    if fields.has("map"):
        map_fields = ctx.mapping(fields.get("map"), fields.at("map"), ("over", "as"))
        if map_fields is not None:
            over = map_fields.string("over", max_len=63)
            as_ = map_fields.string(
                "as",
                max_len=64,
                pattern=IDENTIFIER,
                pattern_hint="must be an identifier (letters, digits, _)",
            )
            if over and over not in depends_on:
                ctx.error(map_fields.at("over"), f"{over!r} must be one of depends_on")
            fan_out = MapSpec(over=over, as_=as_)
    return DagTask(
        task=task,
        depends_on=tuple(sorted(depends_on)),  # order carries no meaning
        map=fan_out,
        when=fields.choice("when", WHEN_CHOICES, "succeeded"),
    )


def _check_cycles(ctx: Ctx, path: str, edges: dict[str, tuple[str, ...]]) -> None:
    """Report one cycle per strongly connected component, deterministically."""
    for component in _strong_components(edges):
        if len(component) < 2:
            continue  # self-edges were rejected (and dropped) earlier
        start = min(component)
        cycle = _cycle_through(start, component, edges)
        ctx.error(path, f"dependency cycle: {' -> '.join(cycle)} (each depends on the next)")


def _strong_components(edges: dict[str, tuple[str, ...]]) -> list[set[str]]:
    """Tarjan's algorithm (recursion depth <= MAX_DAG_TASKS)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        order[node] = low[node] = len(order)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges.get(node, ()):
            if nxt not in edges:
                continue
            if nxt not in order:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], order[nxt])
        if low[node] == order[node]:
            component: set[str] = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            found.append(component)

    for node in sorted(edges):
        if node not in order:
            visit(node)
    return sorted(found, key=min)


def _cycle_through(start: str, component: set[str], edges: dict[str, tuple[str, ...]]) -> list[str]:
    """Shortest path start -> ... -> start inside one component (BFS)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier: list[str] = []
        for node in frontier:
            for nxt in sorted(edges[node]):
                if nxt == start:
                    back = [node]  # walk the BFS tree back to start
                    while back[-1] != start:
                        back.append(parents[back[-1]])
                    return [*reversed(back), start]
                if nxt in component and nxt not in parents:
                    parents[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return [start, start]  # unreachable for a real component


# --- chain ---------------------------------------------------------------------


def check_stages(ctx: Ctx, value: Any, path: str) -> list[Stage]:
    if not isinstance(value, list):
        ctx.error(path, f"must be a list of stages, got {show(value)}")
        return []
    if not 1 <= len(value) <= MAX_STAGES:
        ctx.error(path, f"must have 1 to {MAX_STAGES} stages, got {len(value)}")
        return []
    stages: list[Stage] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(value):
        stage_path = index(path, i)
        fields = ctx.mapping(raw, stage_path, ("name", "task"))
        if fields is None:
            continue
        name = fields.string("name", max_len=63, pattern=NAME, pattern_hint=NAME_HINT)
        if name in seen:
            ctx.error(
                fields.at("name"), f"duplicate stage name {name!r} (also {path}[{seen[name]}])"
            )
        elif name:
            seen[name] = i
        if fields.has("task"):
            task, _ = check_task(ctx, fields.get("task"), fields.at("task"))
        else:
            fields.missing("task")
            task = TaskSpec(engine=ProcessEngine(command=()))
        stages.append(Stage(name=name, task=task))
    return stages


# --- stream --------------------------------------------------------------------


def check_stream(ctx: Ctx, fields: Fields) -> StreamSettings:
    """The stream keys live at the top level of the job, hence ``fields``."""
    partitions: int | tuple[str, ...] = 1
    if fields.has("partitions"):
        raw = fields.get("partitions")
        if isinstance(raw, list):
            names = ctx.str_list(
                raw,
                fields.at("partitions"),
                min_items=1,
                max_items=MAX_PARTITIONS,
                unique=True,
                max_len=63,
                pattern=NAME,
                pattern_hint=NAME_HINT,
            )
            partitions = tuple(names) if names else 1
        else:
            partitions = fields.integer("partitions", 1, lo=1, hi=MAX_PARTITIONS)
    run_for = fields.duration("run_for", DEFAULT_RUN_FOR_MS, lo=SECOND_MS, hi=MAX_TIMEOUT_MS)
    checkpoint = fields.duration("checkpoint_every", DEFAULT_CHECKPOINT_MS, lo=1, hi=MAX_TIMEOUT_MS)
    if checkpoint > run_for:
        ctx.error(fields.at("checkpoint_every"), "must not be longer than run_for")
    mode = fields.choice("mode", STREAM_MODES, "consume")
    source: StreamSource | None = None
    if fields.has("source"):
        source = _source(ctx, fields.get("source"), fields.at("source"))
    elif mode == "micro_batch":
        fields.missing("source", " when mode is micro_batch")
    batch: StreamBatch | None = None
    if mode == "micro_batch":
        batch = StreamBatch()
        if fields.has("batch"):
            batch = _batch(ctx, fields.get("batch"), fields.at("batch"))
    elif fields.has("batch"):
        ctx.error(fields.at("batch"), "only allowed when mode is micro_batch")
    return StreamSettings(
        partitions=partitions,
        run_for_ms=run_for,
        checkpoint_every_ms=checkpoint,
        mode=mode,
        source=source,
        batch=batch,
    )


def _source(ctx: Ctx, value: Any, path: str) -> StreamSource | None:
    fields = ctx.mapping(value, path, ("type", "url", "streams"))
    if fields is None:
        return None
    if fields.has("type"):
        ctx.choice(fields.get("type"), fields.at("type"), ("redis",))
    else:
        fields.missing("type", " (redis)")
    url = fields.string(
        "url", pattern=REDIS_URL, pattern_hint="must be a redis://, rediss:// or unix:// URL"
    )
    streams: list[str] = []
    if fields.has("streams"):
        streams = (
            ctx.str_list(
                fields.get("streams"),
                fields.at("streams"),
                min_items=1,
                max_items=MAX_STREAMS,
                unique=True,
                max_len=256,
            )
            or []
        )
    else:
        fields.missing("streams")
    return StreamSource(url=url, streams=tuple(streams))


def _batch(ctx: Ctx, value: Any, path: str) -> StreamBatch:
    fields = ctx.mapping(value, path, ("max_entries", "max_wait", "max_in_flight"))
    if fields is None:
        return StreamBatch()
    return StreamBatch(
        max_entries=fields.integer(
            "max_entries", DEFAULT_BATCH_ENTRIES, lo=1, hi=MAX_BATCH_ENTRIES
        ),
        max_wait_ms=fields.duration("max_wait", DEFAULT_BATCH_WAIT_MS, lo=1, hi=MAX_BATCH_WAIT_MS),
        max_in_flight=fields.integer("max_in_flight", 1, lo=1, hi=MAX_BATCHES_IN_FLIGHT),
    )
