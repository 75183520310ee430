"""Typed, immutable views of a validated job spec, and its canonical form.

The views are what the rest of the code reads (``spec.task.timeout_ms``).
Python field names carry their unit (``timeout_ms``, ``memory_bytes``); the
canonical dict keeps the spec's own key names (``timeout``, ``memory``), given
by the ``key`` field metadata.  Build views with the validator: a view built by
hand is not checked (round-trip it through ``validate_task(view.canonical())``
when in doubt).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any, Literal, cast

import attrs
import msgpack

# re-exported: the validator's defaults live apart, for the CLI's quick path
from protocols.spec_defaults import DEFAULT_CPU as DEFAULT_CPU
from protocols.spec_defaults import DEFAULT_MEMORY as DEFAULT_MEMORY
from protocols.spec_defaults import MIB as MIB
from protocols.units import format_duration_ms, format_size

__all__ = [
    "JOB_TYPES",
    "Constraints",
    "DagTask",
    "DockerEngine",
    "Engine",
    "History",
    "JobSpec",
    "MapSpec",
    "ProcessEngine",
    "Resources",
    "Retry",
    "Schedule",
    "SimEngine",
    "Stage",
    "StreamBatch",
    "StreamSettings",
    "StreamSource",
    "TaskSpec",
    "WasmEngine",
    "canonical_bytes",
    "spec_digest",
]

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS

JOB_TYPES = ("batch", "ops", "daemon", "service", "cron", "dag", "chain", "stream")

# Defaults, shared with the validator so they are written down once.
DEFAULT_TIMEOUT_MS = 30 * MINUTE_MS
DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF_MS = 1 * SECOND_MS
DEFAULT_SIM_DURATION_MS = 1 * SECOND_MS
DEFAULT_CATCH_UP_MS = 1 * MINUTE_MS
DEFAULT_HISTORY_SUCCEEDED = 10
DEFAULT_HISTORY_FAILED = 5
DEFAULT_RUN_FOR_MS = 5 * MINUTE_MS
DEFAULT_CHECKPOINT_MS = 10 * SECOND_MS
DEFAULT_BATCH_ENTRIES = 1000
DEFAULT_BATCH_WAIT_MS = 5 * SECOND_MS
DEFAULT_WASM_ENTRYPOINT = "_start"


def _key(name: str) -> dict[str, Any]:
    """Field metadata: the field's key in the canonical dict."""
    return {"key": name}


# Field metadata: leave the key out of the canonical dict when the value is None
# (kind-specific fields: a batch job has no ``schedule`` key at all).
_OMIT_NONE: dict[str, Any] = {"omit_none": True}


def _str_tuple(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(items)


def _frozen_map(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(sorted(value.items())))


def _plain(value: Any) -> Any:
    """Views -> plain msgpack-able data, mapping keys sorted at every level."""
    if isinstance(value, _View):
        return value.canonical()
    if isinstance(value, Mapping):
        return {key: _plain(value[key]) for key in sorted(value)}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    return value


class _View:
    """Base of the views: generic canonical() driven by field metadata."""

    def canonical(self) -> dict[str, Any]:
        """This view as a plain dict, keys sorted recursively (see the package doc)."""
        out: dict[str, Any] = {}
        for field in attrs.fields(cast("type[attrs.AttrsInstance]", type(self))):
            value = getattr(self, field.name)
            if value is None and field.metadata.get("omit_none"):
                continue
            if field.metadata.get("omit_default") and value == field.default:
                continue
            if field.metadata.get("flatten"):
                out.update(_plain(value))
            else:
                out[field.metadata.get("key", field.name)] = _plain(value)
        return {key: out[key] for key in sorted(out)}


# --- task ----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class ProcessEngine(_View):
    """Run ``command`` as a local process (argv list, no shell unless you ask)."""

    command: tuple[str, ...] = attrs.field(converter=_str_tuple)
    type: Literal["process"] = "process"


@attrs.frozen(kw_only=True)
class DockerEngine(_View):
    """Run a local image; ``command``/``workdir`` None = the image's own."""

    image: str
    command: tuple[str, ...] | None = None
    workdir: str | None = None
    type: Literal["docker"] = "docker"


@attrs.frozen(kw_only=True)
class SimEngine(_View):
    """Simulated work for simnet: no process, just an outcome after a delay."""

    duration_ms: int = attrs.field(default=DEFAULT_SIM_DURATION_MS, metadata=_key("duration"))
    exit_code: int = 0
    output_bytes: int = 0
    fail_rate: float = 0.0
    hang: bool = False
    type: Literal["sim"] = "sim"


@attrs.frozen(kw_only=True)
class WasmEngine(_View):
    """Run a WebAssembly (WASI preview 1) module: ``module`` is a local file
    path in a spec as written, and its content id ``sha256:<hex>`` once
    submitted (the CLI stores the file as a blob: the canonical form)."""

    module: str
    entrypoint: str = DEFAULT_WASM_ENTRYPOINT
    args: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)
    type: Literal["wasm"] = "wasm"


Engine = ProcessEngine | DockerEngine | SimEngine | WasmEngine


@attrs.frozen(kw_only=True)
class Resources(_View):
    cpu: float = DEFAULT_CPU
    memory_bytes: int = attrs.field(default=DEFAULT_MEMORY, metadata=_key("memory"))


@attrs.frozen(kw_only=True)
class Retry(_View):
    """``attempts`` counts every try, the first included."""

    attempts: int = DEFAULT_ATTEMPTS
    backoff_ms: int = attrs.field(default=DEFAULT_BACKOFF_MS, metadata=_key("backoff"))


@attrs.frozen(kw_only=True)
class TaskSpec(_View):
    """One unit of work: what runs, with what, and for how long at most."""

    engine: Engine
    env: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_map)
    resources: Resources = attrs.field(factory=Resources)
    timeout_ms: int = attrs.field(default=DEFAULT_TIMEOUT_MS, metadata=_key("timeout"))
    retry: Retry = attrs.field(factory=Retry)
    # "none" (an empty network namespace) or "host".  Left out of the
    # canonical form at its default, so specs written before the key existed
    # keep their digest.
    network: str = attrs.field(default="none", metadata={"omit_default": True})


# --- job -----------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Constraints(_View):
    """A node matches when it carries every one of ``labels``."""

    labels: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_map)


@attrs.frozen(kw_only=True)
class History(_View):
    """How many finished cron runs of each outcome are kept."""

    succeeded: int = DEFAULT_HISTORY_SUCCEEDED
    failed: int = DEFAULT_HISTORY_FAILED


@attrs.frozen(kw_only=True)
class Rollout(_View):
    """How a spec update replaces the running executions of a daemon or service:
    node by node, with at most ``max_unavailable`` of them down at a time."""

    max_unavailable: int = 1


@attrs.frozen(kw_only=True)
class Schedule(_View):
    """When a cron job fires: exactly one of ``cron`` / ``every_ms`` is set.

    ``catch_up_ms``: after downtime, the newest missed time is still run if
    it is at most this old (0 = never run missed occurrences, only the next
    one on schedule); every other missed time is recorded as missed.
    """

    cron: str | None = None
    every_ms: int | None = attrs.field(default=None, metadata=_key("every"))
    time_zone: str = "UTC"
    overlap: str = "skip"
    catch_up_ms: int = attrs.field(default=DEFAULT_CATCH_UP_MS, metadata=_key("catch_up"))
    history: History = attrs.field(factory=History)
    suspended: bool = False


@attrs.frozen(kw_only=True)
class MapSpec(_View):
    """Fan out: one instance of the task per item of parent ``over``'s output."""

    over: str
    as_: str = attrs.field(metadata=_key("as"))


@attrs.frozen(kw_only=True)
class DagTask(_View):
    """A DAG node: a task plus its edges; canonically one flat mapping."""

    task: TaskSpec = attrs.field(metadata={"flatten": True})
    depends_on: tuple[str, ...] = attrs.field(default=(), converter=_str_tuple)  # sorted
    map: MapSpec | None = None
    when: str = "succeeded"


@attrs.frozen(kw_only=True)
class Stage(_View):
    name: str
    task: TaskSpec


@attrs.frozen(kw_only=True)
class StreamSource(_View):
    url: str
    streams: tuple[str, ...] = attrs.field(converter=_str_tuple)
    type: str = "redis"


@attrs.frozen(kw_only=True)
class StreamBatch(_View):
    max_entries: int = DEFAULT_BATCH_ENTRIES
    max_wait_ms: int = attrs.field(default=DEFAULT_BATCH_WAIT_MS, metadata=_key("max_wait"))
    max_in_flight: int = 1  # batches of one partition running at once (committed in order)


@attrs.frozen(kw_only=True)
class StreamSettings(_View):
    """The stream-only top-level keys (flattened into the job's canonical dict)."""

    partitions: int | tuple[str, ...] = 1
    run_for_ms: int = attrs.field(default=DEFAULT_RUN_FOR_MS, metadata=_key("run_for"))
    checkpoint_every_ms: int = attrs.field(
        default=DEFAULT_CHECKPOINT_MS, metadata=_key("checkpoint_every")
    )
    mode: str = "consume"
    source: StreamSource | None = None
    batch: StreamBatch | None = None  # set (with defaults) iff mode == micro_batch

    @property
    def partition_names(self) -> tuple[str, ...]:
        """Partition names; an int ``n`` means ``0`` .. ``n-1``."""
        if isinstance(self.partitions, int):
            return tuple(str(i) for i in range(self.partitions))
        return self.partitions


@attrs.frozen(kw_only=True)
class JobSpec(_View):
    """A validated job spec.  Kind-specific fields are None for other kinds."""

    name: str
    type: str = "batch"
    constraints: Constraints = attrs.field(factory=Constraints)
    queue_timeout_ms: int | None = attrs.field(default=None, metadata=_key("queue_timeout"))
    count: int | None = attrs.field(default=None, metadata=_OMIT_NONE)  # batch/service/cron
    task: TaskSpec | None = attrs.field(default=None, metadata=_OMIT_NONE)  # not dag/chain
    schedule: Schedule | None = attrs.field(default=None, metadata=_OMIT_NONE)  # cron
    rollout: Rollout | None = attrs.field(default=None, metadata=_OMIT_NONE)  # daemon/service
    tasks: Mapping[str, DagTask] | None = attrs.field(
        default=None,
        converter=attrs.converters.optional(_frozen_map),
        metadata=_OMIT_NONE,
    )  # dag
    cache: bool | None = attrs.field(default=None, metadata=_OMIT_NONE)  # dag
    stages: tuple[Stage, ...] | None = attrs.field(default=None, metadata=_OMIT_NONE)  # chain
    stream: StreamSettings | None = attrs.field(
        default=None, metadata={"flatten": True, "omit_none": True}
    )  # stream

    def describe(self) -> str:
        """A one-line plain-language summary of what this job does."""
        return _describe(self)


def canonical_bytes(spec: JobSpec | TaskSpec) -> bytes:
    """The canonical form as msgpack: the exact bytes that :func:`spec_digest` hashes."""
    packed: bytes = msgpack.packb(spec.canonical(), use_bin_type=True)
    return packed


def spec_digest(spec: JobSpec | TaskSpec) -> str:
    """``sha256:<hex>`` of :func:`canonical_bytes`: the identity of a spec version."""
    return "sha256:" + hashlib.sha256(canonical_bytes(spec)).hexdigest()


# --- summary ---------------------------------------------------------------------


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _describe_task(task: TaskSpec) -> str:
    parts = [
        f"{task.engine.type} engine",
        f"timeout {format_duration_ms(task.timeout_ms)}",
        f"up to {_plural(task.retry.attempts, 'attempt')}",
    ]
    if task.resources != Resources():
        parts.append(f"{task.resources.cpu:g} cpu, {format_size(task.resources.memory_bytes)}")
    if task.network == "host":
        parts.append("host network")
    return ", ".join(parts)


def _describe(spec: JobSpec) -> str:
    head = f"{spec.type} job '{spec.name}'"
    parts: list[str] = []
    if spec.schedule is not None:
        sched = spec.schedule
        when = (
            f"every {format_duration_ms(sched.every_ms)}"
            if sched.every_ms is not None
            else f"on cron '{sched.cron}' ({sched.time_zone})"
        )
        parts.append(when + (" (suspended)" if sched.suspended else ""))
        parts.append(f"overlap {sched.overlap}")
    if spec.count is not None:
        parts.append(_plural(spec.count, "slot"))
    if spec.type in ("ops", "daemon"):
        parts.append("one per matching node")
    if spec.stream is not None:
        stream = spec.stream
        parts.append(_plural(len(stream.partition_names), "partition"))
        parts.append(f"{stream.mode} mode")
        parts.append(f"runs of {format_duration_ms(stream.run_for_ms)}")
    if spec.task is not None:
        parts.append(_describe_task(spec.task))
    if spec.tasks is not None:
        parts.append(f"{_plural(len(spec.tasks), 'task')} ({', '.join(spec.tasks)})")
        if spec.cache:
            parts.append("cached")
    if spec.stages is not None:
        names = " -> ".join(stage.name for stage in spec.stages)
        parts.append(f"{_plural(len(spec.stages), 'stage')} ({names})")
    if spec.constraints.labels:
        labels = ",".join(f"{k}={v}" for k, v in spec.constraints.labels.items())
        parts.append(f"on nodes labelled {labels}")
    if spec.queue_timeout_ms is not None:
        parts.append(f"waits up to {format_duration_ms(spec.queue_timeout_ms)} for a node")
    return f"{head}: {', '.join(parts)}"
