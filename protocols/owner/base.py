"""The owner's state and the helpers every part of it uses.

``Owner`` (``__init__.py``) is assembled from one mixin per concern:
``census.py`` (which nodes match an ops/daemon job), ``auction.py`` (asks,
bids, requeues), ``leases.py`` (grants, renewals, results, timers) and
``outcomes.py`` (retries, restarts, rollouts, job states).  Each part reads the
state declared here; what it needs from another part is declared below for the
type checker only.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from protocols.config import NodeConfig
from protocols.directory import Directory
from protocols.kinds import KIND_POLICY, KindPolicy, KindRegistry
from protocols.logs import LogBook
from protocols.messages import AskForBid
from protocols.outbox import Outbox
from protocols.owned import OwnedJob, OwnedSlot
from protocols.states import SlotEvent, SlotState, check_slot_transition
from protocols.units import human_size

if TYPE_CHECKING:
    from protocols.owned import Execution

JOBS_TABLE = "jobs"
SLOTS_TABLE = "slots"
HISTORY_TABLE = "history"  # job id -> {"events": [...]}: the job's timeline
MAX_HISTORY = 200  # events kept per job (the first, "submitted", always stays)
MAX_HISTORY_DETAIL = 300  # characters of one event's detail
NO_MATCH_ROUNDS = 3  # broadcast rounds without any matching node before failing fast
DEFAULT_QUEUE_TIMEOUT = 3600.0  # matching nodes exist but are busy: wait at most this
MAX_LOST_LEASES = 10
OPS_QUIET_ROUNDS = 2  # an ops census repeats until this many rounds in a row find nobody new
PINNED_SILENT_ROUNDS = 5  # an ops node silent this many rounds is gone: its slot fails
PINNED_RETRY_MAX = 30.0  # a daemon slot waits for its node with at most this backoff
RESTART_BACKOFF_MAX = 60.0  # daemon/service restarts back off up to this
STABLE_RUN = 60.0  # an execution that ran this long resets the restart backoff
KEEP_EXECUTIONS = 20  # a daemon/service slot keeps its last executions only


# Forgotten executions answered for (see OwnerBase.forgotten): about the
# micro-batches of a few minutes of a busy stream.
MAX_FORGOTTEN_EXECUTIONS = 4096


class OwnerBase:
    def __init__(
        self, config: NodeConfig, out: Outbox, directory: Directory, rng: random.Random
    ) -> None:
        self.config = config
        self.t = config.timings
        self.out = out
        self.directory = directory
        self.rng = rng
        self.jobs: dict[str, OwnedJob] = {}
        self.history: dict[str, list[dict[str, Any]]] = {}  # job id -> events, oldest first
        self.logbook = LogBook()  # live output of owned executions (volatile, bounded)
        # Room (auction.py, volatile): peers that declined for want of capacity,
        # until when they count as full; per peer, our slots with an open ask
        # to it or a lease on it (checked lazily against the slots); slots
        # requeued busy, oldest first, woken as our claims end.
        self.full_until: dict[str, float] = {}
        self.full_streak: dict[str, int] = {}  # capacity declines in a row
        self.claims: dict[str, dict[tuple[str, int], None]] = {}
        self.waiting_room: dict[tuple[str, int], None] = {}
        self.woken_for: dict[tuple[str, int], str] = {}  # slot -> peer whose room woke it
        # Lease counters (metrics; volatile): renewals of current leases this
        # owner acknowledged, and leases it saw expire without one.
        self.lease_renewals = 0
        self.lease_lapses = 0
        # Executions of jobs we forgot (a committed micro-batch, trimmed cron
        # history) -> (holder, whether its result was recorded): their holders
        # may still be repeating a result whose ack was lost, or renewing.
        # Volatile and bounded (oldest out first, MAX_FORGOTTEN_EXECUTIONS).
        self.forgotten: dict[str, tuple[str, bool]] = {}
        # Jobs being finished right now (``_finish_job``): stopping their
        # slots and children ends runs whose ends reach the controllers, which
        # must not decide another outcome for the job meanwhile (a stop would
        # turn into "failed", then into an illegal failed --> stopped).
        self.finishing: set[str] = set()
        # The kind controllers (``Owner.install``; the node core builds them).
        self.kinds: KindRegistry

    @staticmethod
    def policy(job: OwnedJob) -> KindPolicy:
        return KIND_POLICY[job.kind]

    def _move(
        self,
        slot: OwnedSlot,
        event: SlotEvent,
        new: SlotState,
        *,
        reason: str | None = None,
        persist: bool = True,
    ) -> None:
        """The one way a slot changes state: checked against the table, the
        reason recorded, the record persisted (volatile auction moves pass
        ``persist=False``: a restart re-queues a bidding slot anyway)."""
        slot.state = check_slot_transition(slot.state, event, new)
        if reason is not None:
            slot.reason = reason
        if persist:
            self.out.persist(SLOTS_TABLE, slot.key, slot.record())

    def _ask(
        self, job: OwnedJob, slot: int, attempt: int, pinned_node: str = "",
        window_s: float | None = None,
    ) -> AskForBid:
        """An ask for ``job``'s work unit, for one round of ``slot`` (a round of
        ``window_s``, by default our bid window)."""
        unit = job.unit
        window_s = self.t.bid_window if window_s is None else window_s
        return AskForBid(
            job_id=job.job_id,
            slot=slot,
            attempt=attempt,
            engine=unit.engine,
            cpu=unit.cpu,
            memory=unit.memory,
            labels=unit.labels,
            bid_window_ms=int(window_s * 1000),
            pinned_node=pinned_node,
        )

    def persist_slot(self, slot: OwnedSlot) -> None:
        self.out.persist(SLOTS_TABLE, slot.key, slot.record())

    def persist_job(self, job: OwnedJob) -> None:
        self.out.persist(JOBS_TABLE, job.job_id, job.record())

    def note(
        self, job_id: str, event: str, *, node: str = "", slot: int | None = None, detail: str = ""
    ) -> None:
        """Add an event to the job's timeline (``job history``), persisted with
        the step that caused it; bounded to ``MAX_HISTORY`` (the oldest after
        the first go)."""
        events = self.history.setdefault(job_id, [])
        events.append(
            {
                "at_ms": self.out.wall_ms(),
                "event": event,
                "node": node or None,
                "slot": slot,
                "detail": detail[:MAX_HISTORY_DETAIL],
            }
        )
        if len(events) > MAX_HISTORY:
            del events[1]
        self.out.persist(HISTORY_TABLE, job_id, {"events": list(events)})

    if TYPE_CHECKING:
        # census.py
        def _open_census(self, job: OwnedJob) -> None: ...
        def _census_answer(self, sender: str, job_id: str, attempt: int, matches: bool) -> None: ...
        def _close_census(self, job: OwnedJob) -> None: ...
        def _on_census_timer(self, job: OwnedJob) -> None: ...
        def _echo_census(self, job: OwnedJob, census_round: int) -> None: ...

        # auction.py
        def _open_auction(self, job: OwnedJob, slot: OwnedSlot) -> None: ...
        def _room_freed(self, node: str) -> None: ...
        def _close_auction(self, job: OwnedJob, slot: OwnedSlot) -> None: ...
        def _failed_nodes(self, job: OwnedJob, slot: OwnedSlot) -> list[str]: ...

        # leases.py
        def _grant(self, job: OwnedJob, slot: OwnedSlot, node: str) -> None: ...
        def _lookup(
            self, sender: str, exec_id: str
        ) -> tuple[OwnedJob, OwnedSlot, Execution]: ...
        def _lease_ttl(self, slot: OwnedSlot) -> float: ...

        # outcomes.py
        def _end_lease(self, job: OwnedJob, slot: OwnedSlot, cause: str) -> None: ...
        def _notify_execution(
            self, kind: str, slot: OwnedSlot, execution: Execution, **extra: Any
        ) -> None: ...
        def _cancel_holder(self, execution: Execution, reason: str) -> None: ...
        def _lease_lost(
            self, job: OwnedJob, slot: OwnedSlot, event: SlotEvent, reason: str
        ) -> None: ...
        def _execution_failed(
            self, job: OwnedJob, slot: OwnedSlot, event: SlotEvent, reason: str
        ) -> None: ...
        def _stop_slot(self, job: OwnedJob, slot: OwnedSlot, reason: str) -> None: ...
        def _roll(self, job: OwnedJob) -> None: ...
        def _slot_failed(
            self, job: OwnedJob, slot: OwnedSlot, event: SlotEvent, reason: str
        ) -> None: ...
        def _finish_job(self, job: OwnedJob, state: str, reason: str) -> None: ...
        def _update_job_state(self, job: OwnedJob) -> None: ...


def need(job: OwnedJob) -> str:
    unit = job.unit
    return (
        f"labels {unit.labels}, executor {unit.engine!r}, cpu {unit.cpu:g}, "
        f"memory {human_size(unit.memory)}"
    )


def no_match_reason(job: OwnedJob, directory: Directory) -> str:
    """Why a job fails fast: what it needs, and a hint when the executor it
    names runs nowhere in the view (a node enables executors with --executors)."""
    reason = f"no node matches the constraints ({need(job)})"
    engine = job.unit.engine
    if not directory.has_executor(engine):
        reason += (
            f"; no node in view has the executor {engine!r} "
            f"(a node enables it with: p2pnode serve --executors {engine})"
        )
    return reason


def waiting_reason(job: OwnedJob, slot: OwnedSlot) -> str:
    """Why a slot still waits for a node, for ``describe`` when its own reason
    is empty ("" while it is not waiting between auction rounds).  Names the
    constraints, so a job pinned by labels to a peer that left says so."""
    if slot.reason or job.terminal or slot.state is not SlotState.QUEUED or slot.attempt < 1:
        return ""
    if slot.busy_rounds:
        return f"waiting: matching nodes are busy ({need(job)})"
    if slot.view_matches == 0:
        return f"waiting: no node in view matches the constraints ({need(job)})"
    return f"waiting: no matching node answered ({need(job)})"
