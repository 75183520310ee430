"""Every state-machine rule of the protocol, in one table each (after h11's _state.py).

Two machines run on every node (and five smaller ones, at the end: job, the
owner's record of an execution, DAG task, micro-batch partition, chain role):

* the **owner slot** machine: one per (job, slot) the node owns; it auctions the
  slot, grants leases with fencing epochs, watches them, accepts the result or
  retries, and finally completes, fails or is cancelled;
* the **holder execution** machine: one per execution the node holds (a bid is
  a capacity reservation, not yet an execution); it runs under the lease, renews
  it, reports the result, and fences itself when the lease is lost.

The handlers in ``owner/`` / ``holder.py`` decide *which* of the allowed next
states to take (e.g. retry or give up); the tables decide what is *allowed*.  A
transition not in a table is a protocol error: ``RemoteProtocolError`` when a
peer's message caused it (the frame is dropped and counted),
``LocalProtocolError`` when our own caller did.  ``docs/architecture.md`` draws
every table (``python -m protocols.docgen_states``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

from protocols.errors import LocalProtocolError, RemoteProtocolError


class SlotState(enum.Enum):
    QUEUED = "queued"  # waiting for an auction round (first one, retry or backoff)
    BIDDING = "bidding"  # ask sent, collecting bids
    GRANTED = "granted"  # lease granted, holder has not confirmed yet
    RUNNING = "running"  # holder confirmed and renews
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


SLOT_TERMINAL = frozenset({SlotState.COMPLETED, SlotState.FAILED, SlotState.CANCELLED})


class SlotEvent(enum.Enum):
    START = "start"  # local: first auction (job accepted) or retry timer
    BID = "bid"  # remote: a bid arrived
    DECLINE = "decline"  # remote: a candidate declined
    CLOSE = "close"  # local: bid window over (or every candidate answered)
    ACCEPTED = "accepted"  # remote: holder confirmed the grant
    RENEWED = "renewed"  # remote: holder renewed
    RELEASED = "released"  # remote: holder gave the lease back unused
    SUCCEEDED = "succeeded"  # remote: result with success
    FAILED = "failed"  # remote: result with failure / timeout / error
    EXPIRED = "expired"  # local: no renewal within ttl + grace
    TIMED_OUT = "timed_out"  # local: timeout + grace passed without a result
    CANCEL = "cancel"  # local: job stopped, or a sibling slot failed the job
    ROLL = "roll"  # local: a rolling update replaces the running execution
    RESUMED = "resumed"  # local: the owner restarted; a bidding round died with the process


_S, _E = SlotState, SlotEvent
_LEASED_EXITS = {
    _E.ACCEPTED: {_S.RUNNING},
    _E.RENEWED: {_S.RUNNING},
    _E.RELEASED: {_S.QUEUED, _S.FAILED},
    _E.SUCCEEDED: {_S.COMPLETED, _S.QUEUED},  # QUEUED: a daemon/service restarts
    _E.FAILED: {_S.QUEUED, _S.FAILED},
    _E.EXPIRED: {_S.QUEUED, _S.FAILED},
    _E.TIMED_OUT: {_S.QUEUED, _S.FAILED},
    _E.CANCEL: {_S.CANCELLED},
    _E.ROLL: {_S.QUEUED},
}

SLOT_TRANSITIONS: dict[SlotState, dict[SlotEvent, frozenset[SlotState]]] = {
    _S.QUEUED: {
        _E.START: frozenset({_S.BIDDING}),
        _E.CANCEL: frozenset({_S.CANCELLED}),
    },
    _S.BIDDING: {
        _E.BID: frozenset({_S.BIDDING}),
        _E.DECLINE: frozenset({_S.BIDDING}),
        _E.CLOSE: frozenset({_S.GRANTED, _S.QUEUED, _S.FAILED}),
        _E.CANCEL: frozenset({_S.CANCELLED}),
        _E.RESUMED: frozenset({_S.QUEUED}),
    },
    _S.GRANTED: {e: frozenset(s) for e, s in _LEASED_EXITS.items()},
    _S.RUNNING: {e: frozenset(s) for e, s in _LEASED_EXITS.items()},
    _S.COMPLETED: {},
    _S.FAILED: {},
    _S.CANCELLED: {},
}

# Events that come from a peer's message; the rest are local (timers, API).
REMOTE_SLOT_EVENTS = frozenset(
    {_E.BID, _E.DECLINE, _E.ACCEPTED, _E.RENEWED, _E.RELEASED, _E.SUCCEEDED, _E.FAILED}
)


def slot_accepts(state: SlotState, event: SlotEvent) -> bool:
    """Whether ``event`` means anything in ``state`` (e.g. a bid only while bidding)."""
    return event in SLOT_TRANSITIONS[state]


def allowed_slot_exits(state: SlotState, event: SlotEvent) -> frozenset[SlotState]:
    """The states ``event`` may lead to from ``state``; raises if none."""
    exits = SLOT_TRANSITIONS[state].get(event)
    if exits is None:
        error = RemoteProtocolError if event in REMOTE_SLOT_EVENTS else LocalProtocolError
        raise error(f"slot event {event.value!r} not allowed in state {state.value!r}")
    return exits


def check_slot_transition(state: SlotState, event: SlotEvent, new: SlotState) -> SlotState:
    if new not in allowed_slot_exits(state, event):
        raise LocalProtocolError(
            f"slot {state.value} --{event.value}--> {new.value} is not a legal transition"
        )
    return new


class ExecState(enum.Enum):
    # (A bid is not an execution: the holder keeps it as a capacity reservation
    # until bid_hold; an execution starts with the grant.)
    RUNNING = "running"  # lease held, execution running, renewing every ttl/3
    REPORTING = "reporting"  # execution ended, result sent until acknowledged
    STOPPING = "stopping"  # told to stop (cancel, lease lost); waiting for the executor
    DONE = "done"


class ExecEvent(enum.Enum):
    GRANT = "grant"  # remote: a duplicate of the grant that started the execution
    FINISHED = "finished"  # local: executor reported the end
    RENEW_OK = "renew_ok"  # remote: renewal acknowledged
    STOP = "stop"  # remote: cancel, or renewal refused (superseded)
    LAPSED = "lapsed"  # local: lease validity ran out (self-fencing)
    RESULT_ACKED = "result_acked"  # remote


_X, _V = ExecState, ExecEvent
EXEC_TRANSITIONS: dict[ExecState, dict[ExecEvent, frozenset[ExecState]]] = {
    _X.RUNNING: {
        _V.GRANT: frozenset({_X.RUNNING}),  # duplicate grant: re-confirm
        _V.RENEW_OK: frozenset({_X.RUNNING}),
        # RUNNING: a daemon restarts in place (the lease goes on meanwhile).
        _V.FINISHED: frozenset({_X.REPORTING, _X.RUNNING}),
        _V.STOP: frozenset({_X.STOPPING}),
        _V.LAPSED: frozenset({_X.STOPPING}),
    },
    _X.REPORTING: {
        _V.GRANT: frozenset({_X.REPORTING}),
        _V.RENEW_OK: frozenset({_X.REPORTING}),
        _V.RESULT_ACKED: frozenset({_X.DONE}),
        _V.STOP: frozenset({_X.DONE}),
        _V.LAPSED: frozenset({_X.DONE}),
    },
    _X.STOPPING: {
        _V.GRANT: frozenset({_X.STOPPING}),
        _V.RENEW_OK: frozenset({_X.STOPPING}),
        _V.STOP: frozenset({_X.STOPPING}),
        _V.LAPSED: frozenset({_X.STOPPING}),
        _V.FINISHED: frozenset({_X.DONE}),
    },
    _X.DONE: {},
}

REMOTE_EXEC_EVENTS = frozenset({_V.GRANT, _V.RENEW_OK, _V.STOP, _V.RESULT_ACKED})


def exec_accepts(state: ExecState, event: ExecEvent) -> bool:
    """Whether ``event`` means anything in ``state`` (e.g. a result ack only while reporting)."""
    return event in EXEC_TRANSITIONS[state]


def check_exec_transition(state: ExecState, event: ExecEvent, new: ExecState) -> ExecState:
    exits = EXEC_TRANSITIONS[state].get(event)
    if exits is None:
        error = RemoteProtocolError if event in REMOTE_EXEC_EVENTS else LocalProtocolError
        raise error(f"execution event {event.value!r} not allowed in state {state.value!r}")
    if new not in exits:
        raise LocalProtocolError(
            f"execution {state.value} --{event.value}--> {new.value} is not a legal transition"
        )
    return new


# --- the smaller machines: state -> the states it may move to ----------------------------
#
# Plain-string values: records, notifications and JSON outputs carry ``.value``.


def _check_next(
    machine: str, table: Mapping[Any, frozenset[Any]], state: Any, new: Any
) -> None:
    if new != state and new not in table[state]:
        raise LocalProtocolError(f"{machine} {state} --> {new} is not a legal transition")


class JobState(enum.StrEnum):
    """An owned job.  Derived from its slots (queued/running, then the kind's
    end rule), or decided by its kind's controller (scheduled/suspended, running)."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"  # cron: waiting for its next time
    SUSPENDED = "suspended"  # cron: times pass as skipped
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    STOPPED = "stopped"


JOB_TERMINAL = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.STOPPED})
_J = JobState
_JOB_ENDS = JOB_TERMINAL
JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _J.QUEUED: frozenset({_J.RUNNING, *_JOB_ENDS}),
    _J.RUNNING: frozenset({_J.QUEUED, *_JOB_ENDS}),  # QUEUED: every lease lost
    _J.SCHEDULED: frozenset({_J.SUSPENDED, _J.STOPPED}),
    _J.SUSPENDED: frozenset({_J.SCHEDULED, _J.STOPPED}),
    _J.COMPLETED: frozenset(),
    _J.FAILED: frozenset(),
    _J.STOPPED: frozenset(),
}


def check_job_transition(state: str, new: str) -> JobState:
    _check_next("job", JOB_TRANSITIONS, JobState(state), JobState(new))
    return JobState(new)


class ExecutionState(enum.StrEnum):
    """The owner's record of one lease it granted (``owned.Execution``)."""

    GRANTED = "granted"
    RUNNING = "running"  # the holder confirmed the grant
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"  # the holder's timeout, or ours (no result in time)
    CANCELLED = "cancelled"  # the job stopped or the slot was retired
    EXPIRED = "expired"  # no renewal within ttl + grace
    RELEASED = "released"  # the holder gave the lease back
    LOST = "lost"  # the holder restarted and lost it
    REPLACED = "replaced"  # a rolling update replaced it


_N = ExecutionState
_EXECUTION_ENDS = frozenset(
    {_N.SUCCEEDED, _N.FAILED, _N.TIMEOUT, _N.CANCELLED, _N.EXPIRED, _N.RELEASED, _N.LOST,
     _N.REPLACED}
)
EXECUTION_TRANSITIONS: dict[ExecutionState, frozenset[ExecutionState]] = {
    _N.GRANTED: frozenset({_N.RUNNING, *_EXECUTION_ENDS}),
    _N.RUNNING: _EXECUTION_ENDS,
    **{end: frozenset() for end in _EXECUTION_ENDS},
}


def check_execution_transition(state: str, new: str) -> ExecutionState:
    _check_next("execution", EXECUTION_TRANSITIONS, ExecutionState(state), ExecutionState(new))
    return ExecutionState(new)


class DagTaskState(enum.StrEnum):
    """One task of a DAG job (``dag.TaskState``)."""

    WAITING = "waiting"  # for its dependencies
    READING = "reading"  # a map task: its items are being read
    RUNNING = "running"  # its runs exist
    SUCCEEDED = "succeeded"
    CACHED = "cached"  # every run was a cache hit
    FAILED = "failed"
    SKIPPED = "skipped"  # its `when` did not hold
    CANCELLED = "cancelled"  # another task failed, or the job stopped


_T = DagTaskState
_TASK_ENDS = frozenset({_T.SUCCEEDED, _T.CACHED, _T.FAILED, _T.SKIPPED, _T.CANCELLED})
TASK_TRANSITIONS: dict[DagTaskState, frozenset[DagTaskState]] = {
    _T.WAITING: frozenset({_T.READING, _T.RUNNING, _T.SKIPPED}),
    _T.READING: frozenset({_T.RUNNING, _T.SUCCEEDED, _T.FAILED, _T.CANCELLED}),
    _T.RUNNING: frozenset({_T.SUCCEEDED, _T.CACHED, _T.FAILED, _T.CANCELLED}),
    **{end: frozenset() for end in _TASK_ENDS},
}


def check_task_transition(state: str, new: str) -> DagTaskState:
    _check_next("DAG task", TASK_TRANSITIONS, DagTaskState(state), DagTaskState(new))
    return DagTaskState(new)


class FeedState(enum.StrEnum):
    """A micro-batch stream partition (``stream.PartitionFeed``): up to
    ``batch.max_in_flight`` batches in flight; the checkpoint moves only over
    batches that succeeded, in the order they were read."""

    IDLE = "idle"
    IN_FLIGHT = "in_flight"


class FeedEvent(enum.StrEnum):
    BATCH = "batch"  # entries were read: a batch run starts
    SUCCEEDED = "succeeded"  # the run completed: its last position is committed
    FAILED = "failed"  # the run failed for good: position back to the checkpoint, job fails


FEED_TRANSITIONS: dict[FeedState, dict[FeedEvent, FeedState]] = {
    FeedState.IDLE: {FeedEvent.BATCH: FeedState.IN_FLIGHT},
    # Pipelined (batch.max_in_flight > 1): another batch while some are in
    # flight; SUCCEEDED / FAILED end the oldest one (commits go in order) and
    # leave the partition IDLE only when it was the last.
    FeedState.IN_FLIGHT: {
        FeedEvent.BATCH: FeedState.IN_FLIGHT,
        FeedEvent.SUCCEEDED: FeedState.IDLE,
        FeedEvent.FAILED: FeedState.IDLE,
    },
}


def check_feed_transition(state: FeedState, event: FeedEvent) -> FeedState:
    new = FEED_TRANSITIONS[state].get(event)
    if new is None:
        raise LocalProtocolError(f"partition event {event} not allowed in state {state}")
    return new


class ChainRole(enum.StrEnum):
    """This node's role in one chain (``chain.ChainState``)."""

    OWNER = "owner"  # runs the head stage (the submitter after genesis or a takeover)
    PENDING = "pending"  # accepted an offer; owner once the commit arrives in the window
    FORMER = "former"  # handed over, fenced, or ended its stage (non-submitter)
    WATCHING = "watching"  # the submitter while another node owns the chain


_C = ChainRole
CHAIN_ROLE_TRANSITIONS: dict[ChainRole, frozenset[ChainRole]] = {
    _C.OWNER: frozenset({_C.WATCHING, _C.FORMER, _C.PENDING}),  # handover, fence/end, offer
    _C.PENDING: frozenset({_C.OWNER, _C.WATCHING, _C.FORMER}),  # commit; window over
    _C.WATCHING: frozenset({_C.OWNER, _C.PENDING}),  # takeover; offered a stage
    _C.FORMER: frozenset({_C.OWNER, _C.PENDING}),  # takeover; offered a stage
}


def check_role_transition(state: str, new: str) -> ChainRole:
    _check_next("chain role", CHAIN_ROLE_TRANSITIONS, ChainRole(state), ChainRole(new))
    return ChainRole(new)

