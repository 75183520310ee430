"""The owner role: auctions, leases with fencing epochs, results, retries.

One ``OwnedSlot`` machine per (job, slot) (transitions in ``states.py``).  The
rules that make outcomes exact on a lossy network:

* **Fencing.** Each grant carries ``epoch = previous + 1`` for its slot, and the
  slot record with the new epoch is persisted *before* the grant is sent.  Only a
  result or renewal carrying the slot's current epoch, from the peer that holds
  it, can move the slot; anything older is recorded as late and refused
  (``ResultAck(accepted=False)``, ``RenewAck(valid=False)``), so no slot ever
  completes twice.
* **Time bounds.** The owner judges a lease on its own clock: dead after
  ``ttl + grace`` without a renewal, failed after ``timeout + timeout_grace``
  without a result.  Either way the slot is re-auctioned under a new epoch.
* **Retries.** Failed executions count against ``retry.attempts`` (with
  exponential backoff from ``retry.backoff``); lost leases (silence, restarts)
  count against ``max_lost_leases`` so network trouble cannot burn user retries.
  Nodes that failed a slot are asked last.
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from protocols.config import ANNOUNCE_TOPIC, NodeConfig
from protocols.directory import Directory
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.messages import (
    AskForBid,
    Bid,
    BidDeclined,
    BidRejected,
    Cancel,
    ExecutionResult,
    LeaseAccept,
    LeaseGrant,
    LeaseRelease,
    LeaseRenew,
    RenewAck,
    ResultAck,
)
from protocols.outbox import Outbox
from protocols.spec import SpecValidationError, validate_spec
from protocols.states import SLOT_TERMINAL, SlotEvent, SlotState, check_slot_transition
from protocols.unit import WorkUnit

JOBS_TABLE = "jobs"
SLOTS_TABLE = "slots"
NO_MATCH_ROUNDS = 3  # broadcast rounds without any matching node before failing fast
DEFAULT_QUEUE_TIMEOUT = 3600.0  # matching nodes exist but are busy: wait at most this
MAX_LOST_LEASES = 10


def execution_id(job_id: str, slot: int, epoch: int) -> str:
    return f"{job_id}/{slot}/{epoch}"


def parse_execution_id(exec_id: str) -> tuple[str, int, int]:
    job_id, slot, epoch = exec_id.rsplit("/", 2)
    return job_id, int(slot), int(epoch)


@attrs.define
class Execution:
    """The owner's record of one lease it granted."""

    execution_id: str
    epoch: int
    node: str
    state: str = "granted"  # granted|running|succeeded|failed|timeout|expired|released|cancelled
    exit_code: int | None = None
    error: str = ""
    manifest_id: str = ""
    stdout_tail: str = ""
    stderr_tail: str = ""
    reported: bool = False  # the holder's result was recorded
    late: bool = False  # a result arrived after the lease was superseded

    def record(self) -> dict[str, Any]:
        # Spelled out: attrs.asdict is ~10x slower, and records are built on every persist.
        return {
            "execution_id": self.execution_id,
            "epoch": self.epoch,
            "node": self.node,
            "state": self.state,
            "exit_code": self.exit_code,
            "error": self.error,
            "manifest_id": self.manifest_id,
            "stdout_tail": self.stdout_tail,
            "stderr_tail": self.stderr_tail,
            "reported": self.reported,
            "late": self.late,
        }


@attrs.define
class OwnedSlot:
    job_id: str
    index: int
    state: SlotState = SlotState.QUEUED
    epoch: int = 0
    failures: int = 0
    lost: int = 0
    reason: str = ""
    executions: list[Execution] = attrs.field(factory=list)
    # Volatile auction state (rebuilt after a restart).
    attempt: int = 0
    widen: int = 0  # silent rounds: each doubles the candidate count
    broadcast_next: bool = False
    no_match_rounds: int = 0
    busy_rounds: int = 0  # rounds where matching nodes were busy: the backoff grows
    busy_hint: bool = False  # a late "busy" decline arrived after its round closed
    view_matches: int = 0  # matching peers in our view when the round opened
    asked_all: bool = False  # the round asked every matching peer of our view
    waiting_since: float = 0.0
    asked: set[str] | None = None  # None: broadcast round
    answered: set[str] = attrs.field(factory=set)
    busy_seen: bool = False
    bids: dict[str, Bid] = attrs.field(factory=dict)
    lease_expires: float = 0.0

    @property
    def key(self) -> str:
        return f"{self.job_id}/{self.index}"

    @property
    def current(self) -> Execution | None:
        return self.executions[-1] if self.executions else None

    def find(self, exec_id: str) -> Execution | None:
        return next((e for e in self.executions if e.execution_id == exec_id), None)

    def record(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "epoch": self.epoch,
            "failures": self.failures,
            "lost": self.lost,
            "reason": self.reason,
            "executions": [e.record() for e in self.executions],
        }

    @classmethod
    def from_record(cls, job_id: str, index: int, rec: dict[str, Any]) -> OwnedSlot:
        return cls(
            job_id=job_id,
            index=index,
            state=SlotState(rec["state"]),
            epoch=rec["epoch"],
            failures=rec["failures"],
            lost=rec["lost"],
            reason=rec["reason"],
            executions=[Execution(**e) for e in rec["executions"]],
        )


@attrs.define
class OwnedJob:
    job_id: str
    spec: dict[str, Any]
    unit: WorkUnit
    slots: list[OwnedSlot]
    state: str = "queued"  # queued|running|completed|failed|stopped
    reason: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in ("completed", "failed", "stopped")

    def record(self) -> dict[str, Any]:
        return {"spec": self.spec, "state": self.state, "reason": self.reason}


class Owner:
    def __init__(
        self, config: NodeConfig, out: Outbox, directory: Directory, rng: random.Random
    ) -> None:
        self.config = config
        self.t = config.timings
        self.out = out
        self.directory = directory
        self.rng = rng
        self.jobs: dict[str, OwnedJob] = {}

    # --- local API ------------------------------------------------------------------

    def submit(self, job_id: str, spec: dict[str, Any]) -> None:
        if job_id in self.jobs:
            raise LocalProtocolError(f"job {job_id} already exists")
        try:
            spec = validate_spec(spec, canonical=True).canonical()  # defaults filled in
        except SpecValidationError as exc:
            errors = "; ".join(str(e) for e in exc.errors[:5])
            raise LocalProtocolError(f"job {job_id}: invalid spec: {errors}") from None
        if spec.get("type", "batch") != "batch":
            raise LocalProtocolError(f"job type {spec.get('type')!r} is not supported by this node")
        unit = WorkUnit.from_spec(spec)
        slots = [OwnedSlot(job_id=job_id, index=i) for i in range(unit.count)]
        job = OwnedJob(job_id=job_id, spec=spec, unit=unit, slots=slots)
        self.jobs[job_id] = job
        self.out.persist(JOBS_TABLE, job_id, job.record())
        for slot in slots:
            self.out.persist(SLOTS_TABLE, slot.key, slot.record())
        self.out.notify("job_submitted", job_id=job_id, owner=self.config.node_id, slots=unit.count)
        self.out.notify("job_state", job_id=job_id, state="queued", reason="")
        for slot in slots:
            slot.waiting_since = self.out.now
            self._open_auction(job, slot)

    def cancel(self, job_id: str, reason: str) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            raise LocalProtocolError(f"job {job_id} is not owned by this node")
        if job.terminal:
            return
        self._finish_job(job, "stopped", reason)

    def restore(self, jobs: dict[str, dict[str, Any]], slots: dict[str, dict[str, Any]]) -> None:
        """Rebuild owned jobs from persisted records (before ``resume``)."""
        for job_id, rec in jobs.items():
            unit = WorkUnit.from_spec(rec["spec"])
            owned = [
                OwnedSlot.from_record(job_id, i, slots[f"{job_id}/{i}"]) for i in range(unit.count)
            ]
            self.jobs[job_id] = OwnedJob(
                job_id=job_id,
                spec=rec["spec"],
                unit=unit,
                slots=owned,
                state=rec["state"],
                reason=rec["reason"],
            )

    def resume(self) -> None:
        """After a restart: re-auction queued slots, re-arm timers of leased ones.

        Lease deadlines are not persisted (monotonic clocks do not survive a
        restart); a leased slot gets a fresh ttl + grace: a live holder keeps
        renewing, a dead one is detected one lease later.
        """
        now = self.out.now
        for job in self.jobs.values():
            if job.terminal:
                continue
            for slot in job.slots:
                if slot.state in (SlotState.GRANTED, SlotState.RUNNING):
                    slot.lease_expires = now + self.t.lease_ttl + self.t.lease_grace
                    self.out.timer(("lease", job.job_id, slot.index), slot.lease_expires)
                    self.out.timer(
                        ("deadline", job.job_id, slot.index),
                        now + job.unit.timeout + self.t.timeout_grace,
                    )
                elif slot.state in (SlotState.QUEUED, SlotState.BIDDING):
                    slot.state = SlotState.QUEUED
                    slot.waiting_since = now
                    self._open_auction(job, slot)

    # --- auction ---------------------------------------------------------------------

    def _open_auction(self, job: OwnedJob, slot: OwnedSlot) -> None:
        unit = job.unit
        slot.state = check_slot_transition(slot.state, SlotEvent.START, SlotState.BIDDING)
        slot.attempt += 1
        slot.bids, slot.answered, slot.busy_seen = {}, set(), False
        ask = AskForBid(
            job_id=job.job_id,
            slot=slot.index,
            attempt=slot.attempt,
            engine=unit.engine,
            cpu=unit.cpu,
            memory=unit.memory,
            labels=unit.labels,
            bid_window_ms=int(self.t.bid_window * 1000),
        )
        count = self.config.candidates * 2 ** min(slot.widen, 8)
        picked, slot.view_matches = self.directory.candidates(
            key=f"{slot.key}/{slot.attempt}",
            labels=unit.labels,
            engine=unit.engine,
            cpu=unit.cpu,
            memory=unit.memory,
            count=0 if slot.broadcast_next else count,
            avoid=[e.node for e in slot.executions if e.state != "succeeded"],
        )
        if picked:
            slot.asked = set(picked)
            slot.asked_all = len(picked) >= slot.view_matches
            for node in picked:
                self.out.send(node, ask)
        else:
            # Nothing (more) in our view: ask everyone; only matching nodes answer.
            slot.asked = None
            self.out.publish(ANNOUNCE_TOPIC, attrs.evolve(ask, broadcast=True))
            if self.directory.me.compute:  # publishes are not delivered to ourselves
                self.out.send(self.config.node_id, attrs.evolve(ask, broadcast=True))
        self.out.timer(("auction", job.job_id, slot.index), self.out.now + self.t.bid_window)

    def _auction_slot(self, sender: str, job_id: str, index: int, attempt: int) -> OwnedSlot | None:
        job = self.jobs.get(job_id)
        if job is None or not 0 <= index < len(job.slots):
            raise RemoteProtocolError(f"bid for unknown job {job_id!r} slot {index}")
        slot = job.slots[index]
        if slot.state is not SlotState.BIDDING or slot.attempt != attempt:
            return None  # late answer to a closed round: harmless
        if slot.asked is not None and sender not in slot.asked:
            raise RemoteProtocolError(f"unsolicited bid from {sender}")
        return slot

    def on_bid(self, sender: str, bid: Bid) -> None:
        slot = self._auction_slot(sender, bid.job_id, bid.slot, bid.attempt)
        if slot is None:
            self.out.send(
                sender, BidRejected(job_id=bid.job_id, slot=bid.slot, attempt=bid.attempt)
            )
            return
        slot.bids[sender] = bid
        slot.answered.add(sender)
        self._maybe_close_early(slot)

    def on_decline(self, sender: str, msg: BidDeclined) -> None:
        slot = self._auction_slot(sender, msg.job_id, msg.slot, msg.attempt)
        if slot is None:
            if msg.matches:  # a late "busy": still proof that a matching node exists
                self.jobs[msg.job_id].slots[msg.slot].busy_hint = True
            return
        slot.answered.add(sender)
        slot.busy_seen = slot.busy_seen or msg.matches
        self._maybe_close_early(slot)

    def _maybe_close_early(self, slot: OwnedSlot) -> None:
        everyone = slot.asked is not None and slot.answered >= slot.asked
        enough = slot.asked is None and len(slot.bids) >= self.config.candidates
        if everyone or enough:
            self.out.cancel_timer(("auction", slot.job_id, slot.index))
            self._close_auction(self.jobs[slot.job_id], slot)

    def _close_auction(self, job: OwnedJob, slot: OwnedSlot) -> None:
        if slot.bids:
            winner = self._rank(job, slot)
            for node, bid in slot.bids.items():
                if node != winner:
                    self.out.send(
                        node, BidRejected(job_id=job.job_id, slot=slot.index, attempt=bid.attempt)
                    )
            slot.widen, slot.no_match_rounds, slot.busy_rounds = 0, 0, 0
            slot.broadcast_next = False
            self._grant(job, slot, winner)
            return
        self._requeue_without_bid(job, slot)

    def _requeue_without_bid(self, job: OwnedJob, slot: OwnedSlot) -> None:
        """No bid this round.  Busy matching nodes: back off (with jitter, so slots
        queued together do not re-auction together).  Silence: widen the search,
        up to a broadcast.  Only broadcast rounds that no matching node answers,
        while our view knows none either, count towards failing fast."""
        unit = job.unit
        if slot.busy_seen or slot.busy_hint:
            slot.busy_rounds += 1
            slot.no_match_rounds, slot.broadcast_next, slot.busy_hint = 0, False, False
            delay = self.t.requeue_delay * 2 ** min(slot.busy_rounds - 1, 3)
            delay *= 0.5 + self.rng.random()
        else:
            slot.widen += 1
            if slot.asked is not None:
                slot.broadcast_next = slot.asked_all
            else:
                slot.broadcast_next = slot.view_matches == 0
                slot.no_match_rounds += slot.view_matches == 0
            delay = self.t.requeue_delay
        if unit.queue_timeout is None and slot.no_match_rounds >= NO_MATCH_ROUNDS:
            need = (
                f"labels {unit.labels}, executor {unit.engine!r}, "
                f"cpu {unit.cpu:g}, memory {unit.memory}"
            )
            self._slot_failed(
                job, slot, SlotEvent.CLOSE, f"no node matches the constraints ({need})"
            )
            return
        limit = unit.queue_timeout if unit.queue_timeout is not None else DEFAULT_QUEUE_TIMEOUT
        if self.out.now - slot.waiting_since >= limit:
            self._slot_failed(
                job, slot, SlotEvent.CLOSE, f"no node accepted the work within {limit:g}s"
            )
            return
        slot.state = check_slot_transition(slot.state, SlotEvent.CLOSE, SlotState.QUEUED)
        self.out.timer(("retry", job.job_id, slot.index), self.out.now + delay)

    def _rank(self, job: OwnedJob, slot: OwnedSlot) -> str:
        """Best bid: never ran this slot here, holds no sibling slot, most free capacity."""
        failed_here = {e.node for e in slot.executions}
        siblings = {
            s.current.node
            for s in job.slots
            if s.current is not None and s.state in (SlotState.GRANTED, SlotState.RUNNING)
        }

        def score(item: tuple[str, Bid]) -> tuple[float, str]:
            node, bid = item
            value = bid.free_cpu + (0.0 if node in failed_here else 10.0)
            value -= (1.0 if node in siblings else 0.0) + 0.1 * bid.running
            value += self.rng.random()  # seeded jitter spreads ties
            return (-value, node)

        return min(sorted(slot.bids.items()), key=score)[0]

    # --- leases -----------------------------------------------------------------------

    def _grant(self, job: OwnedJob, slot: OwnedSlot, node: str) -> None:
        now, unit = self.out.now, job.unit
        slot.state = check_slot_transition(slot.state, SlotEvent.CLOSE, SlotState.GRANTED)
        slot.epoch += 1
        exec_id = execution_id(job.job_id, slot.index, slot.epoch)
        slot.executions.append(Execution(execution_id=exec_id, epoch=slot.epoch, node=node))
        # Fencing: the new epoch is durable before any peer can see it.
        self.out.persist(SLOTS_TABLE, slot.key, slot.record())
        grant = LeaseGrant(
            execution_id=exec_id,
            job_id=job.job_id,
            slot=slot.index,
            attempt=slot.attempt,
            epoch=slot.epoch,
            ttl_ms=int(self.t.lease_ttl * 1000),
            timeout_ms=int(unit.timeout * 1000),
            task=unit.task,
        )
        ttl_grace = self.t.lease_ttl + self.t.lease_grace
        self.out.send_reliably(("grant", exec_id), node, grant, give_up_after=ttl_grace)
        slot.lease_expires = now + ttl_grace
        self.out.timer(("lease", job.job_id, slot.index), slot.lease_expires)
        self.out.timer(
            ("deadline", job.job_id, slot.index), now + unit.timeout + self.t.timeout_grace
        )
        self.out.notify(
            "lease_granted",
            job_id=job.job_id,
            slot=slot.index,
            epoch=slot.epoch,
            execution_id=exec_id,
            holder=node,
            ttl=self.t.lease_ttl,
            timeout=unit.timeout,
        )
        self._update_job_state(job)

    def _lookup(self, sender: str, exec_id: str) -> tuple[OwnedJob, OwnedSlot, Execution]:
        """The execution named in a holder's message; only its holder may speak for it."""
        try:
            job_id, index, _ = parse_execution_id(exec_id)
        except ValueError:
            raise RemoteProtocolError(f"malformed execution id {exec_id!r}") from None
        job = self.jobs.get(job_id)
        if job is None or not 0 <= index < len(job.slots):
            raise RemoteProtocolError(f"unknown execution {exec_id}")
        slot = job.slots[index]
        execution = slot.find(exec_id)
        if execution is None:
            raise RemoteProtocolError(f"unknown execution {exec_id}")
        if execution.node != sender:
            raise RemoteProtocolError(f"{sender} does not hold the lease of {exec_id}")
        return job, slot, execution

    def _is_current(self, slot: OwnedSlot, execution: Execution) -> bool:
        return execution.epoch == slot.epoch and slot.state in (
            SlotState.GRANTED,
            SlotState.RUNNING,
        )

    def on_renew(self, sender: str, msg: LeaseAccept | LeaseRenew) -> None:
        _job, slot, execution = self._lookup(sender, msg.execution_id)
        if not self._is_current(slot, execution):
            reason = "superseded" if execution.epoch != slot.epoch else f"slot {slot.state.value}"
            self.out.send(
                sender,
                RenewAck(
                    execution_id=msg.execution_id,
                    epoch=msg.epoch,
                    seq=msg.seq,
                    valid=False,
                    reason=reason,
                ),
            )
            return
        event = SlotEvent.ACCEPTED if isinstance(msg, LeaseAccept) else SlotEvent.RENEWED
        was = slot.state
        slot.state = check_slot_transition(slot.state, event, SlotState.RUNNING)
        self.out.settle(("grant", execution.execution_id))
        # Only the deadline moves: the armed timer re-arms itself when it fires
        # early (one timer per lease period, not one per renewal).
        slot.lease_expires = self.out.now + self.t.lease_ttl + self.t.lease_grace
        if was is SlotState.GRANTED:
            execution.state = "running"
            self.out.persist(SLOTS_TABLE, slot.key, slot.record())
        self.out.send(sender, RenewAck(execution_id=msg.execution_id, epoch=msg.epoch, seq=msg.seq))

    def on_release(self, sender: str, msg: LeaseRelease) -> None:
        job, slot, execution = self._lookup(sender, msg.execution_id)
        if not self._is_current(slot, execution):
            return
        execution.state, execution.error = "released", msg.reason
        self._lease_lost(job, slot, SlotEvent.RELEASED, f"released by {sender}: {msg.reason}")

    def on_result(self, sender: str, msg: ExecutionResult) -> None:
        job, slot, execution = self._lookup(sender, msg.execution_id)
        if execution.reported:
            # A retransmission of the result we already recorded (our ack was lost).
            self.out.send(
                sender, ResultAck(execution_id=msg.execution_id, epoch=msg.epoch, accepted=True)
            )
            return
        if not self._is_current(slot, execution):
            first_copy = not execution.late
            execution.late = True
            if first_copy:
                execution.exit_code, execution.error = msg.exit_code, msg.error
                self.out.persist(SLOTS_TABLE, slot.key, slot.record())
                reason = (
                    "superseded" if execution.epoch != slot.epoch else f"slot {slot.state.value}"
                )
                self._notify_execution("result_ignored", slot, execution, reason=reason)
            self.out.send(
                sender, ResultAck(execution_id=msg.execution_id, epoch=msg.epoch, accepted=False)
            )
            return
        self._end_lease(job, slot, "result")
        execution.reported = True
        execution.exit_code, execution.error = msg.exit_code, msg.error
        execution.manifest_id = msg.manifest_id
        execution.stdout_tail, execution.stderr_tail = msg.stdout_tail, msg.stderr_tail
        if msg.status == "succeeded":
            execution.state = "succeeded"
            slot.state = check_slot_transition(slot.state, SlotEvent.SUCCEEDED, SlotState.COMPLETED)
            self.out.persist(SLOTS_TABLE, slot.key, slot.record())
            self._notify_execution(
                "result_accepted", slot, execution, status=msg.status, holder=sender
            )
        else:
            execution.state = msg.status if msg.status in ("timeout", "cancelled") else "failed"
            detail = msg.error or f"exit code {msg.exit_code}"
            if msg.stderr_tail.strip():  # one line: reasons are printed in tables and logs
                last = " | ".join(msg.stderr_tail.strip().splitlines()[-3:])
                detail += f"; stderr: {last[-200:]}"
            self._notify_execution(
                "execution_failed", slot, execution, status=msg.status, holder=sender
            )
            self._execution_failed(
                job, slot, SlotEvent.FAILED, f"{msg.status} on {sender}: {detail}"
            )
        self.out.send(sender, ResultAck(execution_id=msg.execution_id, epoch=msg.epoch))
        self._update_job_state(job)

    # --- timers -----------------------------------------------------------------------

    def on_timer(self, kind: str, job_id: str, index: int) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.terminal:
            return
        slot = job.slots[index]
        if kind == "auction" and slot.state is SlotState.BIDDING:
            self._close_auction(job, slot)
        elif kind == "retry" and slot.state is SlotState.QUEUED:
            self._open_auction(job, slot)
        elif kind == "lease" and slot.state in (SlotState.GRANTED, SlotState.RUNNING):
            if self.out.now < slot.lease_expires:  # renewed meanwhile
                self.out.timer(("lease", job.job_id, slot.index), slot.lease_expires)
            else:
                execution = slot.current
                assert execution is not None
                execution.state = "expired"
                self._cancel_holder(execution, "lease expired")
                self._lease_lost(job, slot, SlotEvent.EXPIRED, f"lease on {execution.node} expired")
        elif kind == "deadline" and slot.state in (SlotState.GRANTED, SlotState.RUNNING):
            execution = slot.current
            assert execution is not None
            execution.state = "timeout"
            self._cancel_holder(execution, "execution timeout")
            self._execution_failed(
                job,
                slot,
                SlotEvent.TIMED_OUT,
                f"no result from {execution.node} within timeout {job.unit.timeout:g}s",
            )

    # --- outcomes ---------------------------------------------------------------------

    def _end_lease(self, job: OwnedJob, slot: OwnedSlot, cause: str) -> None:
        execution = slot.current
        assert execution is not None
        self.out.settle(("grant", execution.execution_id))
        self.out.cancel_timer(("lease", job.job_id, slot.index))
        self.out.cancel_timer(("deadline", job.job_id, slot.index))
        self._notify_execution("lease_ended", slot, execution, cause=cause)

    def _notify_execution(
        self, kind: str, slot: OwnedSlot, execution: Execution, **extra: Any
    ) -> None:
        self.out.notify(
            kind,
            job_id=slot.job_id,
            slot=slot.index,
            epoch=execution.epoch,
            execution_id=execution.execution_id,
            **extra,
        )

    def _cancel_holder(self, execution: Execution, reason: str) -> None:
        # Best effort: the lease bounds the holder anyway (it stops at ttl).
        self.out.send(
            execution.node,
            Cancel(execution_id=execution.execution_id, epoch=execution.epoch, reason=reason),
        )

    def _lease_lost(self, job: OwnedJob, slot: OwnedSlot, event: SlotEvent, reason: str) -> None:
        self._end_lease(job, slot, event.value)
        slot.lost += 1
        if slot.lost > MAX_LOST_LEASES:
            self._slot_failed(job, slot, event, f"{reason}; {slot.lost} leases lost")
            return
        slot.state = check_slot_transition(slot.state, event, SlotState.QUEUED)
        slot.waiting_since = self.out.now
        self.out.persist(SLOTS_TABLE, slot.key, slot.record())
        self._open_auction(job, slot)
        self._update_job_state(job)

    def _execution_failed(
        self, job: OwnedJob, slot: OwnedSlot, event: SlotEvent, reason: str
    ) -> None:
        if event is SlotEvent.TIMED_OUT:
            self._end_lease(job, slot, "timeout")
        slot.failures += 1
        if slot.failures >= job.unit.attempts:
            self._slot_failed(
                job, slot, event, f"{reason} (attempt {slot.failures} of {job.unit.attempts})"
            )
            return
        slot.state = check_slot_transition(slot.state, event, SlotState.QUEUED)
        slot.reason = reason
        slot.waiting_since = self.out.now
        self.out.persist(SLOTS_TABLE, slot.key, slot.record())
        backoff = job.unit.backoff * 2 ** (slot.failures - 1)
        self.out.timer(("retry", job.job_id, slot.index), self.out.now + backoff)
        self._update_job_state(job)

    def _slot_failed(self, job: OwnedJob, slot: OwnedSlot, event: SlotEvent, reason: str) -> None:
        slot.state = check_slot_transition(slot.state, event, SlotState.FAILED)
        slot.reason = reason
        self.out.persist(SLOTS_TABLE, slot.key, slot.record())
        self._finish_job(job, "failed", f"slot {slot.index}: {reason}")

    def _finish_job(self, job: OwnedJob, state: str, reason: str) -> None:
        """Terminal job: stop every slot still in flight, then record the outcome."""
        for slot in job.slots:
            if slot.state in SLOT_TERMINAL:
                continue
            for kind in ("auction", "retry"):
                self.out.cancel_timer((kind, job.job_id, slot.index))
            execution = slot.current
            if slot.state in (SlotState.GRANTED, SlotState.RUNNING) and execution is not None:
                execution.state = "cancelled"
                self._cancel_holder(execution, reason)
                self._end_lease(job, slot, "cancelled")
            slot.state = check_slot_transition(slot.state, SlotEvent.CANCEL, SlotState.CANCELLED)
            slot.reason = reason
            self.out.persist(SLOTS_TABLE, slot.key, slot.record())
        job.state, job.reason = state, reason
        self.out.persist(JOBS_TABLE, job.job_id, job.record())
        self.out.notify("job_state", job_id=job.job_id, state=state, reason=reason)

    def _update_job_state(self, job: OwnedJob) -> None:
        if job.terminal:
            return
        states = [s.state for s in job.slots]
        if all(s is SlotState.COMPLETED for s in states):
            job.state, job.reason = "completed", ""
            self.out.persist(JOBS_TABLE, job.job_id, job.record())
            self.out.notify("job_state", job_id=job.job_id, state="completed", reason="")
            return
        leased = (SlotState.GRANTED, SlotState.RUNNING, SlotState.COMPLETED)
        state = "running" if any(s in leased for s in states) else "queued"
        if state != job.state:
            job.state = state  # derived; persisted only when terminal
            self.out.notify("job_state", job_id=job.job_id, state=state, reason="")

    # --- queries ----------------------------------------------------------------------

    def describe(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None:
            raise LocalProtocolError(f"job {job_id} is not owned by this node")
        return {
            "job_id": job.job_id,
            "name": job.spec.get("name", ""),
            "type": job.spec.get("type", "batch"),
            "owner": self.config.node_id,
            "state": job.state,
            "reason": job.reason,
            "slots": [
                {
                    "slot": s.index,
                    "state": s.state.value,
                    "epoch": s.epoch,
                    "failures": s.failures,
                    "lost": s.lost,
                    "reason": s.reason,
                    "executions": [e.record() for e in s.executions],
                }
                for s in job.slots
            ],
        }
