"""Every state-machine rule of the protocol, in one table each (after h11's _state.py).

Two machines run on every node:

* the **owner slot** machine: one per (job, slot) the node owns; it auctions the
  slot, grants leases with fencing epochs, watches them, accepts the result or
  retries, and finally completes, fails or is cancelled;
* the **holder execution** machine: one per execution the node bid for or holds;
  it bids, runs under the lease, renews it, reports the result, and fences itself
  when the lease is lost.

The handlers in ``owner.py`` / ``holder.py`` decide *which* of the allowed next
states to take (e.g. retry or give up); the tables decide what is *allowed*.  A
transition not in a table is a protocol error: ``RemoteProtocolError`` when a
peer's message caused it (the frame is dropped and counted),
``LocalProtocolError`` when our own caller did.
"""

from __future__ import annotations

import enum

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
        _E.START: frozenset({_S.BIDDING, _S.FAILED}),
        _E.CANCEL: frozenset({_S.CANCELLED}),
    },
    _S.BIDDING: {
        _E.BID: frozenset({_S.BIDDING}),
        _E.DECLINE: frozenset({_S.BIDDING}),
        _E.CLOSE: frozenset({_S.GRANTED, _S.QUEUED, _S.FAILED}),
        _E.CANCEL: frozenset({_S.CANCELLED}),
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
    BIDDING = "bidding"  # bid sent, capacity reserved until bid_hold
    RUNNING = "running"  # lease held, execution running, renewing every ttl/3
    REPORTING = "reporting"  # execution ended, result sent until acknowledged
    STOPPING = "stopping"  # told to stop (cancel, lease lost); waiting for the executor
    DONE = "done"


class ExecEvent(enum.Enum):
    GRANT = "grant"  # remote
    BID_REJECTED = "bid_rejected"  # remote
    BID_EXPIRED = "bid_expired"  # local: no grant within bid_hold
    FINISHED = "finished"  # local: executor reported the end
    RENEW_OK = "renew_ok"  # remote: renewal acknowledged
    STOP = "stop"  # remote: cancel, or renewal refused (superseded)
    LAPSED = "lapsed"  # local: lease validity ran out (self-fencing)
    RESULT_ACKED = "result_acked"  # remote


_X, _V = ExecState, ExecEvent
EXEC_TRANSITIONS: dict[ExecState, dict[ExecEvent, frozenset[ExecState]]] = {
    _X.BIDDING: {
        _V.GRANT: frozenset({_X.RUNNING, _X.DONE}),  # DONE: released (no capacity, bad task)
        _V.BID_REJECTED: frozenset({_X.DONE}),
        _V.BID_EXPIRED: frozenset({_X.DONE}),
    },
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

REMOTE_EXEC_EVENTS = frozenset({_V.GRANT, _V.BID_REJECTED, _V.RENEW_OK, _V.STOP, _V.RESULT_ACKED})


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
