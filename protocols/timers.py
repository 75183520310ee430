"""Typed timer keys: which machine a timer belongs to, and what it names.

Keys are small named tuples: equal to, hashed and ordered like the plain
tuples they replace (``("lease", job_id, slot)``), and printed the same way,
so runtimes, the simulator's timer tables and its trace hashes see exactly
the keys they saw before.  ``NodeCore._on_timer`` dispatches on ``kind``.
"""

from __future__ import annotations

from typing import NamedTuple

# Owner, one slot.
AUCTION = "auction"  # the bid window closes
RETRY = "retry"  # a queued slot's next auction
LEASE = "lease"  # no renewal within ttl + grace
DEADLINE = "deadline"  # no result within timeout + grace
SLOT_TIMERS = (AUCTION, RETRY, LEASE, DEADLINE)
# Owner, one job (the controllers' timers are job timers too: cron, chain*).
CENSUS = "census"
CENSUS_ECHO = "census-echo"  # the round's broadcast ask again, halfway through its window
# Holder, one bid and one execution.
BID = "bid"  # bid_hold over without a grant
RENEW = "renew"
LAPSE = "lapse"  # self-fencing: the lease validity ran out
XTIMEOUT = "xtimeout"  # the task's own timeout
RUNFOR = "runfor"  # a consumer's graceful end (run_for)
RESTART = "restart"  # a daemon's restart in place
FORGET = "forget"  # stop reporting a result nobody acknowledges
EXEC_TIMERS = (RENEW, LAPSE, XTIMEOUT, RUNFOR, RESTART, FORGET)
# Node.
GOSSIP = "gossip"
QUERY = "query"  # a job query's wait for answers ends (protocols/queries.py)


class SlotTimer(NamedTuple):
    kind: str  # one of SLOT_TIMERS
    job_id: str
    slot: int

    def __repr__(self) -> str:
        return tuple.__repr__(self)


class JobTimer(NamedTuple):
    kind: str  # CENSUS, or a kind controller's timer ("cron", "chainwatch", ...)
    job_id: str
    zero: int = 0  # (the third field the plain tuples carried)

    def __repr__(self) -> str:
        return tuple.__repr__(self)


class BidTimer(NamedTuple):
    kind: str  # BID
    job_id: str
    slot: int
    attempt: int

    def __repr__(self) -> str:
        return tuple.__repr__(self)


class ExecTimer(NamedTuple):
    kind: str  # one of EXEC_TIMERS
    execution_id: str

    def __repr__(self) -> str:
        return tuple.__repr__(self)


class NodeTimer(NamedTuple):
    kind: str  # GOSSIP

    def __repr__(self) -> str:
        return tuple.__repr__(self)


class QueryTimer(NamedTuple):
    kind: str  # QUERY
    query_id: str

    def __repr__(self) -> str:
        return tuple.__repr__(self)
