"""Frozen, typed views of what a node reports: jobs, runs, peers, counters.

``Node.describe`` returns a ``JobView``, ``Node.stats`` a ``NodeStats``, and
so on.  Each view has typed attributes for the fields a program reads
(``view.state``, ``view.slots[0].executions[-1].manifest_id``) and
``to_json()``, which returns the very JSON object the control socket and the
CLI print (the same keys, in the same order): the view keeps the object it
was built from and serves it back, so the views can never make that output
drift.  ``to_json`` returns a fresh copy each time.

A view is also a read-only mapping of its JSON object (``view["state"]``,
``dict(view)``), so code written when these methods returned plain dicts
keeps working.  The kind-specific parts of a job (a cron job's ``schedule``,
a DAG's ``tasks``, a chain's ``chain``, a stream's ``partitions``) are kept
as read-only JSON (``MappingProxyType`` and tuples); docs/library.md lists
their fields (the ``describe`` row of the API table).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

import attrs

from protocols.times import TIME_FIELDS

__all__ = [
    "TERMINAL_STATES",
    "TIME_FIELDS",
    "ExecutionView",
    "JobSummary",
    "JobView",
    "NodeStats",
    "PeerView",
    "RunView",
    "SlotView",
]

TERMINAL_STATES = frozenset({"completed", "failed", "stopped"})

_View = TypeVar("_View", bound="JsonView")


def frozen_json(value: Any) -> Any:
    """``value`` (decoded JSON) made read-only: objects become
    ``MappingProxyType``s and arrays tuples, recursively (copied)."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: frozen_json(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(frozen_json(item) for item in value)
    return value


class JsonView(Mapping[str, Any]):
    """The base of every view: the JSON object it was built from, served back
    by ``to_json`` and as a read-only mapping."""

    __slots__ = ()
    _json: dict[str, Any]
    # Keys a subclass reads when it is built: a missing one raises KeyError.
    required: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_json(cls: type[_View], data: Mapping[str, Any]) -> _View:
        """The view of ``data`` (which is copied: later changes to it do not show)."""
        missing = [key for key in cls.required if key not in data]
        if missing:
            raise KeyError(f"{cls.__name__} needs the field(s) {missing}")
        raw = copy.deepcopy(dict(data))
        return cls(**cls._fields(raw), **{"json": raw})

    @classmethod
    def _fields(cls, data: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """The JSON object this view was built from (a fresh copy)."""
        return copy.deepcopy(self._json)

    def __getitem__(self, key: str) -> Any:
        return copy.deepcopy(self._json[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self._json)

    def __len__(self) -> int:
        return len(self._json)


# --- jobs -------------------------------------------------------------------------------


@attrs.frozen(eq=False)
class ExecutionView(JsonView):
    """One lease the owner granted for a slot, and what became of it."""

    execution_id: str
    epoch: int
    node: str
    state: str  # granted, running, succeeded, failed, timeout, expired, lost, ...
    exit_code: int | None
    error: str
    manifest_id: str  # the outputs' manifest, "" if none (yet)
    stdout_tail: str
    stderr_tail: str
    version: int  # the job spec version it ran
    started_at: str | None  # ISO-8601 UTC, or None (also finished_at)
    finished_at: str | None
    duration_s: float | None  # None until it finished
    log_manifest: str  # the complete stdout/stderr on ``node``, "" if none (yet)
    _json: dict[str, Any] = attrs.field(repr=False, alias="json")
    required = ("execution_id", "node", "state")

    @classmethod
    def _fields(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "execution_id": data["execution_id"],
            "epoch": data.get("epoch", 0),
            "node": data["node"],
            "state": data["state"],
            "exit_code": data.get("exit_code"),
            "error": data.get("error", ""),
            "manifest_id": data.get("manifest_id", ""),
            "stdout_tail": data.get("stdout_tail", ""),
            "stderr_tail": data.get("stderr_tail", ""),
            "version": data.get("version", 1),
            "started_at": data.get("started_at"),
            "finished_at": data.get("finished_at"),
            "duration_s": data.get("duration_s"),
            "log_manifest": data.get("log_manifest", ""),
        }


@attrs.frozen(eq=False)
class SlotView(JsonView):
    """One slot of a job (a batch job's instance, a daemon's node, ...)."""

    slot: int
    state: str
    epoch: int
    failures: int
    lost: int
    reason: str
    node: str  # the node running it (or pinned to it), "" if none
    version: int
    executions: tuple[ExecutionView, ...]
    started_at: str | None  # ISO-8601 UTC, or None (also finished_at)
    finished_at: str | None
    duration_s: float | None
    _json: dict[str, Any] = attrs.field(repr=False, alias="json")
    required = ("slot", "state")

    @classmethod
    def _fields(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "slot": data["slot"],
            "state": data["state"],
            "epoch": data.get("epoch", 0),
            "failures": data.get("failures", 0),
            "lost": data.get("lost", 0),
            "reason": data.get("reason", ""),
            "node": data.get("node", ""),
            "version": data.get("version", 0),
            "executions": tuple(ExecutionView.from_json(e) for e in data.get("executions", ())),
            "started_at": data.get("started_at"),
            "finished_at": data.get("finished_at"),
            "duration_s": data.get("duration_s"),
        }


@attrs.frozen(eq=False)
class JobView(JsonView):
    """A job this node owns (``Node.describe``, ``Node.wait``).

    A chain stage this node only took part in has just ``job_id``, ``type``
    ("chain") and ``chain``: its other fields are empty.
    """

    job_id: str
    type: str  # batch, daemon, service, cron, dag, chain, stream
    name: str
    version: int  # 1 at submit, +1 per update
    owner: str
    state: str
    reason: str
    slots: tuple[SlotView, ...]
    parent: str  # a cron run: the cron job it belongs to ("" otherwise)
    scheduled_ms: int | None  # a cron run: its scheduled time (unix ms)
    desired: int | None  # daemons, services, pinned kinds: slots wanted ...
    live: int | None  # ... and slots running
    schedule: Mapping[str, Any] | None  # cron
    tasks: tuple[Mapping[str, Any], ...]  # dag
    partitions: tuple[Mapping[str, Any], ...]  # stream
    chain: Mapping[str, Any] | None  # chain
    submitted_at: str | None  # ISO-8601 UTC, or None (also started_at, finished_at)
    started_at: str | None
    finished_at: str | None
    duration_s: float | None  # None until it finished
    _json: dict[str, Any] = attrs.field(repr=False, alias="json")
    required = ("job_id", "type")

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def _fields(cls, data: dict[str, Any]) -> dict[str, Any]:
        def section(key: str) -> Any:
            return frozen_json(data[key]) if key in data else None

        return {
            "job_id": data["job_id"],
            "type": data["type"],
            "name": data.get("name", ""),
            "version": data.get("version", 0),
            "owner": data.get("owner", ""),
            "state": data.get("state", ""),
            "reason": data.get("reason", ""),
            "slots": tuple(SlotView.from_json(s) for s in data.get("slots", ())),
            "parent": data.get("parent", ""),
            "scheduled_ms": data.get("scheduled_ms"),
            "desired": data.get("desired"),
            "live": data.get("live"),
            "schedule": section("schedule"),
            "tasks": section("tasks") or (),
            "partitions": section("partitions") or (),
            "chain": section("chain"),
            "submitted_at": data.get("submitted_at"),
            "started_at": data.get("started_at"),
            "finished_at": data.get("finished_at"),
            "duration_s": data.get("duration_s"),
        }


@attrs.frozen(eq=False)
class JobSummary(JsonView):
    """One row of ``Node.jobs``."""

    job_id: str
    name: str
    type: str
    state: str
    reason: str
    submitted_at: str | None  # ISO-8601 UTC, or None (also started_at, finished_at)
    started_at: str | None
    finished_at: str | None
    duration_s: float | None
    _json: dict[str, Any] = attrs.field(repr=False, alias="json")
    required = ("job_id", "name", "type", "state", "reason")

    @classmethod
    def _fields(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {
            **{key: data[key] for key in cls.required},
            **{key: data.get(key) for key in TIME_FIELDS},
        }


@attrs.frozen(eq=False)
class RunView(JsonView):
    """One scheduled time a cron job handled (``Node.runs``)."""

    run_id: str  # "" when the time was skipped or missed
    scheduled: str  # ISO-8601 UTC
    scheduled_ms: int  # unix ms
    version: int
    outcome: str  # queued, running, completed, failed, stopped, skipped, missed, buffered
    reason: str
    executions: tuple[Mapping[str, Any], ...]  # {execution_id, node, state}
    _json: dict[str, Any] = attrs.field(repr=False, alias="json")
    required = ("run_id", "scheduled", "scheduled_ms", "outcome")

    @classmethod
    def _fields(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "run_id": data["run_id"],
            "scheduled": data["scheduled"],
            "scheduled_ms": data["scheduled_ms"],
            "version": data.get("version", 1),
            "outcome": data["outcome"],
            "reason": data.get("reason", ""),
            "executions": frozen_json(data.get("executions", ())),
        }


# --- the network --------------------------------------------------------------------------


@attrs.frozen(eq=False)
class PeerView(JsonView):
    """This node or a peer in its view (``Node.peers``); JSON ``self`` is ``is_self``."""

    node_id: str
    labels: Mapping[str, str]
    cpu: float
    memory: int  # bytes
    executors: tuple[str, ...]
    compute: bool
    addrs: tuple[str, ...]
    is_self: bool
    status: str  # "alive", "suspect" (silent a while) or "gone" (said goodbye)
    last_seen_s: float  # seconds since the peer was last heard from directly
    running: int  # executions it ran at its last hello
    max_executions: int
    version: str
    _json: dict[str, Any] = attrs.field(repr=False, alias="json")
    required = ("node_id",)

    @classmethod
    def _fields(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "node_id": data["node_id"],
            "labels": frozen_json(data.get("labels", {})),
            "cpu": data.get("cpu", 0.0),
            "memory": data.get("memory", 0),
            "executors": tuple(data.get("executors", ())),
            "compute": data.get("compute", False),
            "addrs": tuple(data.get("addrs", ())),
            "is_self": data.get("self", False),
            "status": data.get("status", "alive"),
            "last_seen_s": data.get("last_seen_s", 0.0),
            "running": data.get("running", 0),
            "max_executions": data.get("max_executions", 0),
            "version": data.get("version", ""),
        }


@attrs.frozen(eq=False)
class NodeStats(JsonView):
    """A node's counters (``Node.stats``); field meanings in docs/architecture.md
    ("Abusive peers")."""

    node_id: str
    sent_by_type: Mapping[str, int]  # frames sent, by message type
    frames_sent: int
    dropped_by_sender: Mapping[str, int]  # frames the core refused, by sender
    duplicates: int  # frames filtered as already seen
    transport: Mapping[str, int]  # the transport's own counters
    peers: Mapping[str, Any]  # rejected frames, scores and bans by peer
    asks: Mapping[str, Mapping[str, Any]]  # what each asker cost us
    jobs_by_kind: Mapping[str, Mapping[str, int]]  # owned jobs: kind -> state -> count
    received_by_type: Mapping[str, int]  # frames accepted (decoded, not duplicates), by type
    frames_received: int
    rejected_by_reason: Mapping[str, int]  # rejected frames (transport's and core's), by reason
    leases: Mapping[str, int]  # renewals / lapses of the leases this node granted as owner
    handovers: Mapping[str, int]  # chain handovers: offered / accepted
    executions: Mapping[str, Any]  # running, finished by executor and outcome, durations
    _json: dict[str, Any] = attrs.field(repr=False, alias="json")
    required = ("node_id",)

    @classmethod
    def _fields(cls, data: dict[str, Any]) -> dict[str, Any]:
        return {
            "node_id": data["node_id"],
            "sent_by_type": frozen_json(data.get("sent_by_type", {})),
            "frames_sent": data.get("frames_sent", 0),
            "dropped_by_sender": frozen_json(data.get("dropped_by_sender", {})),
            "duplicates": data.get("duplicates", 0),
            "transport": frozen_json(data.get("transport", {})),
            "peers": frozen_json(data.get("peers", {})),
            "asks": frozen_json(data.get("asks", {})),
            "jobs_by_kind": frozen_json(data.get("jobs_by_kind", {})),
            "received_by_type": frozen_json(data.get("received_by_type", {})),
            "frames_received": data.get("frames_received", 0),
            "rejected_by_reason": frozen_json(data.get("rejected_by_reason", {})),
            "leases": frozen_json(data.get("leases", {})),
            "handovers": frozen_json(data.get("handovers", {})),
            "executions": frozen_json(data.get("executions", {})),
        }
