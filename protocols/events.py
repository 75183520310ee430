"""What goes into a node core (events) and what comes out (actions).

The node core is sans-IO: ``NodeCore.handle(event, now) -> list[Action]``.
Whoever drives it (the trio runtime in ``p2pnode/``, the discrete-event engine
in ``simnet/``) turns the actions into I/O, in order.  Ordering matters: a
``Persist`` always precedes the ``Send`` that depends on it, and the driver
must make it durable before performing any later action of the same batch.

``now`` is the driver's monotonic clock in seconds (virtual time in simnet).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import attrs

# --- events (driver -> core) ---------------------------------------------------


@attrs.frozen
class Started:
    """The node (re)started; the core was built from its persisted records.

    ``wall`` is the wall-clock time (unix seconds) at this start: cron
    schedules are in wall time, everything else in the monotonic ``now``.
    The core keeps the offset between the two from this event on."""

    wall: float = 0.0


@attrs.frozen
class Stopping:
    """The node is stopping cleanly: the core says goodbye to its view (sends
    only; the driver transmits them, bounded, before it closes the network)."""

    reason: str = "stopped"


@attrs.frozen
class MessageReceived:
    """A frame arrived.  ``sender`` is the *authenticated* peer id (from the
    transport: the pubsub signature or the secure channel), which the core
    checks against the envelope's claimed sender."""

    sender: str
    data: bytes
    topic: str = ""  # "" for point-to-point


@attrs.frozen
class TimerFired:
    key: Hashable


@attrs.frozen
class ExecutionFinished:
    """The executor ended an execution the core started (or was told to stop)."""

    execution_id: str
    status: str  # succeeded | failed | timeout | cancelled | error
    exit_code: int = 0
    error: str = ""
    manifest_id: str = ""
    stdout_tail: str = ""
    stderr_tail: str = ""
    duration_ms: int = 0
    log_manifest: str = ""  # the complete stdout/stderr, stored as a blob manifest


@attrs.frozen
class ExecutionOutput:
    """A running execution wrote to ``stream`` ("stdout" or "stderr").

    ``skipped``: bytes the driver dropped before ``data`` (over its rate or
    buffer limit), so the core's offsets stay true and the owner can say how
    much is missing.  ``execution_id`` is the executor's run id."""

    execution_id: str
    stream: str
    data: bytes
    skipped: int = 0


@attrs.frozen
class ExecutionProgress:
    """A running execution reported progress (a stream consumer's
    ``P2PNODE_CHECKPOINT <value>`` / ``P2PNODE_LAG <n>`` stdout lines).
    ``execution_id`` is the executor's run id, as in ExecutionFinished."""

    execution_id: str
    checkpoint: str = ""
    lag: int = -1


@attrs.frozen
class SourceBatch:
    """The owner's source connector buffered entries of a micro-batch stream
    partition into a blob: run a batch over it.  ``first``/``last`` are the
    source positions it covers; ``last`` becomes the partition's checkpoint
    once a batch execution over it succeeds."""

    job_id: str
    partition: str
    manifest_id: str
    first: str
    last: str
    count: int


@attrs.frozen
class ItemsRead:
    """Answer to ``ReadItems``: the lines of a DAG task's outputs (or why not)."""

    job_id: str
    task: str
    items: tuple[str, ...] = ()
    error: str = ""


@attrs.frozen
class SubmitJob:
    """Local API: become the owner of a new job.  ``spec`` is the canonical spec."""

    job_id: str
    spec: dict[str, Any]


@attrs.frozen
class CancelJob:
    """Local API: stop a job this node owns."""

    job_id: str
    reason: str = "stopped by user"


@attrs.frozen
class UpdateJob:
    """Local API: a new version of a daemon, service or cron job's spec."""

    job_id: str
    spec: dict[str, Any]


@attrs.frozen
class SuspendJob:
    """Local API: suspend (True) or resume (False) a cron job's schedule."""

    job_id: str
    suspended: bool = True


@attrs.frozen
class QueryJob:
    """Local API: ask the owner of a job another peer owns (``job_query``).
    The core picks whom to ask (the owner it knows of, else every peer of its
    view) and notifies ``job_answer`` per answer, then ``job_query_done``."""

    query_id: str
    op: str
    job: str  # an id or a unique id prefix
    args: str = "{}"  # JSON object
    timeout: float = 5.0  # seconds to wait for answers


@attrs.frozen
class AnswerQuery:
    """Local API: the driver's answer to a ``job_query`` notify (it ran the
    operation locally); the core sends it back as ``job_answer``."""

    peer: str
    query_id: str
    status: str
    job_id: str = ""
    detail: str = ""
    answer: bytes = b""


Event = (
    Started
    | Stopping
    | MessageReceived
    | TimerFired
    | ExecutionFinished
    | SubmitJob
    | CancelJob
    | UpdateJob
    | SuspendJob
    | ExecutionProgress
    | ExecutionOutput
    | SourceBatch
    | ItemsRead
    | QueryJob
    | AnswerQuery
)

# --- actions (core -> driver) --------------------------------------------------


@attrs.frozen
class Send:
    """Point-to-point frame to one peer (best effort)."""

    to: str
    data: bytes


@attrs.frozen
class Publish:
    """Frame to every subscriber of a topic (best effort)."""

    topic: str
    data: bytes


@attrs.frozen
class SetTimer:
    """Deliver ``TimerFired(key)`` at ``at`` (replaces a timer with the same key)."""

    key: Hashable
    at: float


@attrs.frozen
class CancelTimer:
    key: Hashable


@attrs.frozen
class StartExecution:
    """Run a task; the driver answers later with ``ExecutionFinished``.

    The driver must itself kill the execution at ``timeout`` seconds: the core
    also fences it, but a hard bound must not depend on the core being alive.
    """

    execution_id: str
    job_id: str
    slot: int
    task: dict[str, Any]
    env: dict[str, str]
    timeout: float
    # Inputs to fetch before the task starts: (name, manifest id, node holding it),
    # laid out under ``$P2PNODE_INPUTS/<name>/``.
    inputs: tuple[tuple[str, str, str], ...] = ()
    # The job's owner (the grant's sender): a wasm task's module blob is fetched from it.
    owner: str = ""


@attrs.frozen
class ReadItems:
    """Fetch the outputs ``refs`` ((manifest id, node) pairs) and answer with
    ``ItemsRead``: every non-empty line of every output file, in order (a
    DAG ``map`` fans out over them)."""

    job_id: str
    task: str
    refs: tuple[tuple[str, str], ...]


@attrs.frozen
class StopExecution:
    """Kill a running execution; the driver answers with ``ExecutionFinished``
    (status ``cancelled``) unless the execution had already ended."""

    execution_id: str
    reason: str


@attrs.frozen
class Persist:
    """Durably store ``value`` under (table, key); ``None`` deletes it."""

    table: str
    key: str
    value: dict[str, Any] | None


@attrs.frozen
class Notify:
    """Something observable happened (job state change, result accepted, ...).

    Drivers log it and wake API waiters; simnet's invariant checkers read it.
    ``kind`` names the happening, ``data`` holds its fields.
    """

    kind: str
    data: dict[str, Any]


Action = (
    Send
    | Publish
    | SetTimer
    | CancelTimer
    | StartExecution
    | StopExecution
    | Persist
    | Notify
    | ReadItems
)
