"""The owner role: auctions, leases with fencing epochs, results, retries.

One ``OwnedSlot`` machine per (job, slot) (transitions in ``states.py``).  The
rules that make outcomes exact on a lossy network:

* **Fencing and leases**: the rules are docs/protocol.md, section 6 (the
  epoch persisted before the grant, expiry at ttl + grace on our clock, the
  grant's ttl kept with the execution); this module implements the owner side.
* **Retries.** Failed executions count against ``retry.attempts`` (with
  exponential backoff from ``retry.backoff``); lost leases (silence, restarts)
  count against ``max_lost_leases`` so network trouble cannot burn user retries.
  So does a result with status ``lost`` (a holder that restarted and lost the
  execution): it never counts as the task's failure.
  Nodes that failed a slot are asked last.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import attrs

from protocols.config import ANNOUNCE_TOPIC, NodeConfig
from protocols.directory import Directory
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.messages import (
    CENSUS_SLOT,
    LOST,
    AskForBid,
    Bid,
    BidDeclined,
    BidRejected,
    Cancel,
    ExecutionResult,
    InputRef,
    LeaseAccept,
    LeaseGrant,
    LeaseRelease,
    LeaseRenew,
    RenewAck,
    ResultAck,
)
from protocols.outbox import Outbox
from protocols.owned import (
    LONG_RUNNING,
    OWNED_KINDS,
    PINNED,
    UPDATABLE,
    Execution,
    OwnedJob,
    OwnedSlot,
    execution_id,
    parse_execution_id,
)
from protocols.spec import SpecValidationError, validate_spec
from protocols.states import SlotEvent, SlotState, check_slot_transition
from protocols.stream import partition_names
from protocols.unit import WorkUnit

if TYPE_CHECKING:
    from protocols.signing import Keyring

JOBS_TABLE = "jobs"
SLOTS_TABLE = "slots"
NO_MATCH_ROUNDS = 3  # broadcast rounds without any matching node before failing fast
DEFAULT_QUEUE_TIMEOUT = 3600.0  # matching nodes exist but are busy: wait at most this
MAX_LOST_LEASES = 10
OPS_QUIET_ROUNDS = 2  # an ops census repeats until this many rounds in a row find nobody new
PINNED_SILENT_ROUNDS = 5  # an ops node silent this many rounds is gone: its slot fails
PINNED_RETRY_MAX = 30.0  # a daemon slot waits for its node with at most this backoff
RESTART_BACKOFF_MAX = 60.0  # daemon/service restarts back off up to this
STABLE_RUN = 60.0  # an execution that ran this long resets the restart backoff
KEEP_EXECUTIONS = 20  # a daemon/service slot keeps its last executions only


class Owner:
    def __init__(
        self,
        config: NodeConfig,
        out: Outbox,
        directory: Directory,
        rng: random.Random,
        keys: Keyring | None = None,
    ) -> None:
        from protocols.chain import ChainController
        from protocols.cron import CronController  # cron and streams drive the owner's API
        from protocols.dag import DagController
        from protocols.signing import SimKeyring
        from protocols.stream import StreamController

        self.config = config
        self.t = config.timings
        self.out = out
        self.directory = directory
        self.rng = rng
        self.jobs: dict[str, OwnedJob] = {}
        self.cron = CronController(self)
        self.stream = StreamController(self)
        self.dag = DagController(self)
        self.chain = ChainController(self, keys or SimKeyring(config.node_id))

    # --- local API ------------------------------------------------------------------

    def submit(self, job_id: str, spec: dict[str, Any]) -> None:
        if job_id in self.jobs:
            raise LocalProtocolError(f"job {job_id} already exists")
        spec = self._canonical(job_id, spec)
        kind = spec.get("type", "batch")
        if kind not in OWNED_KINDS or kind == "run":
            raise LocalProtocolError(f"job type {kind!r} is not supported by this node")
        self.create_job(job_id, spec, kind=kind)

    def _canonical(self, job_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        try:
            return validate_spec(spec, canonical=True).canonical()  # defaults filled in
        except SpecValidationError as exc:
            errors = "; ".join(str(e) for e in exc.errors[:5])
            raise LocalProtocolError(f"job {job_id}: invalid spec: {errors}") from None

    def create_job(
        self,
        job_id: str,
        spec: dict[str, Any],
        *,
        kind: str,
        version: int = 1,
        parent: str = "",
        scheduled_ms: int = 0,
        inputs: list[tuple[str, str, str]] | None = None,
        env: dict[str, str] | None = None,
    ) -> OwnedJob:
        """A new owned job, persisted, its first auctions (or census, or schedule) open."""
        unit = WorkUnit.for_job(spec)
        count = unit.count if kind in ("batch", "service", "run") else 0
        if kind == "stream" and spec.get("mode", "consume") == "consume":
            count = len(partition_names(spec))
        slots = [OwnedSlot(job_id=job_id, index=i) for i in range(count)]
        job = OwnedJob(
            job_id=job_id,
            spec=spec,
            unit=unit,
            slots=slots,
            kind=kind,
            version=version,
            parent=parent,
            scheduled_ms=scheduled_ms,
            inputs=list(inputs or []),
            env=dict(env or {}),
        )
        if kind == "cron":
            job.state = "scheduled"
        self.jobs[job_id] = job
        self.out.persist(JOBS_TABLE, job_id, job.record())
        for slot in slots:
            self.out.persist(SLOTS_TABLE, slot.key, slot.record())
        self.out.notify(
            "job_submitted", job_id=job_id, owner=self.config.node_id, slots=count, job_type=kind
        )
        self.out.notify("job_state", job_id=job_id, state=job.state, reason="")
        for slot in slots:
            slot.waiting_since = self.out.now
            self._open_auction(job, slot)
        if kind in PINNED:
            self._open_census(job)
        elif kind == "cron":
            self.cron.start(job)
        elif kind == "stream" and not slots:
            self.stream.start(job)
        elif kind == "dag":
            self.dag.start(job)
        elif kind == "chain":
            self.chain.start(job)
        return job

    def cancel(self, job_id: str, reason: str) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            raise LocalProtocolError(f"job {job_id} is not owned by this node")
        if job.terminal:
            return
        self._finish_job(job, "stopped", reason)

    def update(self, job_id: str, spec: dict[str, Any]) -> int:
        """A new version of a daemon, service or cron job's spec; returns the version.

        Cron: later runs use it, running ones finish.  Daemon/service: a rolling
        replacement, node by node (``rollout.max_unavailable`` at a time)."""
        job = self._updatable(job_id)
        spec = self._canonical(job_id, spec)
        if spec.get("type", "batch") != job.kind:
            raise LocalProtocolError(
                f"job {job_id} is a {job.kind} job; an update cannot make it {spec.get('type')!r}"
            )
        old = job.unit
        job.spec, job.unit, job.version = spec, WorkUnit.for_job(spec), job.version + 1
        if (old.task, old.labels) == (job.unit.task, job.unit.labels):
            # Same work (e.g. only the count changed): running executions
            # already run this version; nothing to roll.
            for slot in job.slots:
                if slot.current is not None and not slot.terminal:
                    slot.current.version = job.version
                    self.out.persist(SLOTS_TABLE, slot.key, slot.record())
        self.out.persist(JOBS_TABLE, job_id, job.record())
        self.out.notify("job_updated", job_id=job_id, version=job.version)
        if job.kind == "service":
            self._resize(job, job.unit.count)
        if job.kind in LONG_RUNNING:
            self._roll(job)
        elif job.kind == "cron":
            self.cron.on_update(job)
        return job.version

    def suspend(self, job_id: str, suspended: bool) -> None:
        job = self._updatable(job_id)
        if job.kind != "cron":
            raise LocalProtocolError(f"job {job_id} is a {job.kind} job; only cron jobs suspend")
        self.cron.set_suspended(job, suspended)

    def _updatable(self, job_id: str) -> OwnedJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise LocalProtocolError(f"job {job_id} is not owned by this node")
        if job.kind not in UPDATABLE:
            raise LocalProtocolError(
                f"job {job_id} is a {job.kind} job; only daemon, service and cron jobs change"
            )
        if job.terminal:
            raise LocalProtocolError(f"job {job_id} is {job.state}")
        return job

    def restore(self, jobs: dict[str, dict[str, Any]], slots: dict[str, dict[str, Any]]) -> None:
        """Rebuild owned jobs from persisted records (before ``resume``)."""
        for job_id, rec in jobs.items():
            unit = WorkUnit.for_job(rec["spec"])
            count = rec.get("slots", unit.count)
            owned = [OwnedSlot.from_record(job_id, i, slots[f"{job_id}/{i}"]) for i in range(count)]
            self.jobs[job_id] = OwnedJob(
                job_id=job_id,
                spec=rec["spec"],
                unit=unit,
                slots=owned,
                state=rec["state"],
                reason=rec["reason"],
                kind=rec.get("kind", rec["spec"].get("type", "batch")),
                version=rec.get("version", 1),
                parent=rec.get("parent", ""),
                scheduled_ms=rec.get("scheduled_ms", 0),
                inputs=[(i[0], i[1], i[2]) for i in rec.get("inputs", [])],
                env=dict(rec.get("env", {})),
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
                if slot.leased:
                    slot.lease_expires = now + self._lease_ttl(slot) + self.t.lease_grace
                    slot.granted_at = now
                    self.out.timer(("lease", job.job_id, slot.index), slot.lease_expires)
                    self.out.timer(
                        ("deadline", job.job_id, slot.index),
                        now + job.unit.timeout + self.t.timeout_grace,
                    )
                elif slot.state in (SlotState.QUEUED, SlotState.BIDDING):
                    slot.state = SlotState.QUEUED
                    slot.waiting_since = now
                    self._open_auction(job, slot)
            if job.kind in PINNED and (job.kind == "daemon" or not job.slots):
                self._open_census(job)  # ops: only if the census had not finished
            elif job.kind == "cron":
                self.cron.resume(job)
            elif job.kind == "dag":
                self.dag.resume(job)
            if job.kind in LONG_RUNNING:
                self._roll(job)
        self.chain.resume()

    # --- census (ops, daemon): which nodes match ------------------------------------

    def _open_census(self, job: OwnedJob) -> None:
        """Ask every node (broadcast, plus matching peers of our view directly)
        whether it matches; busy nodes count too.  Ops runs one census at
        submit; a daemon repeats it every ``daemon_scan`` to find joiners."""
        unit = job.unit
        job.census_round += 1
        job.census_open, job.census_found = True, set()
        ask = AskForBid(
            job_id=job.job_id,
            slot=CENSUS_SLOT,
            attempt=(job.census_round - 1) % 10_000 + 1,
            engine=unit.engine,
            cpu=unit.cpu,
            memory=unit.memory,
            labels=unit.labels,
            bid_window_ms=int(self.t.bid_window * 1000),
        )
        peers, _ = self.directory.candidates(
            key=f"{job.job_id}/census",
            labels=unit.labels,
            engine=unit.engine,
            cpu=unit.cpu,
            memory=unit.memory,
            count=self.config.view_size + 1,
        )
        for node in peers:  # direct asks survive a lossy broadcast
            self.out.send(node, ask)
        self.out.publish(ANNOUNCE_TOPIC, attrs.evolve(ask, broadcast=True))
        self.out.timer(("census", job.job_id, 0), self.out.now + self.t.bid_window)

    def _census_answer(self, sender: str, job_id: str, attempt: int, matches: bool) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.kind not in PINNED:
            raise RemoteProtocolError(f"census answer for unknown job {job_id!r}")
        if not matches:
            return
        current = (job.census_round - 1) % 10_000 + 1
        if job.census_open and attempt == current:
            job.census_found.add(sender)
            return
        # A late answer (its round closed; holders retransmit census answers
        # until released): still a matching node, so it gets its slot now.
        started = job.kind == "daemon" or bool(job.slots)
        if started and not job.terminal and sender not in self._covered(job):
            self._add_pinned_slots(job, [sender])

    def _covered(self, job: OwnedJob) -> set[str]:
        """Nodes that have their slot: an ops node once for good, a daemon node
        while its slot is live."""
        if job.kind == "ops":
            return {s.pinned for s in job.slots}
        return {s.pinned for s in job.slots if not s.terminal}

    def _close_census(self, job: OwnedJob) -> None:
        job.census_open = False
        found = sorted(job.census_found)
        job.census_found = set()
        # Release the capacity the bidders reserved: a census never grants.
        attempt = (job.census_round - 1) % 10_000 + 1
        for node in found:
            self.out.send(node, BidRejected(job_id=job.job_id, slot=CENSUS_SLOT, attempt=attempt))
        covered = self._covered(job)
        new = [node for node in found if node not in covered]
        self._add_pinned_slots(job, new)
        if job.kind == "ops":
            if not job.slots:
                job.census_empty += 1
                if job.census_empty >= NO_MATCH_ROUNDS:
                    self._finish_job(
                        job, "failed", f"no node matches the constraints ({_need(job)})"
                    )
                    return
            else:
                # Answers can be lost: count again until rounds find nobody new.
                job.census_quiet = 0 if new else job.census_quiet + 1
                if job.census_quiet >= OPS_QUIET_ROUNDS:
                    return
            self.out.timer(("census", job.job_id, 0), self.out.now + self.t.requeue_delay)
            return
        # A daemon node that answers is up: wake its slot if it waits in backoff.
        for slot in job.slots:
            if slot.pinned in found and slot.state is SlotState.QUEUED and slot.pinned in covered:
                self.out.cancel_timer(("retry", job.job_id, slot.index))
                self._open_auction(job, slot)
        self.out.timer(("census", job.job_id, 0), self.out.now + self.t.daemon_scan)

    def on_peer_joined(self, node: str) -> None:
        """A peer introduced itself: a daemon job re-counts soon, not a scan later."""
        for job in self.jobs.values():
            waiting = job.kind == "daemon" and not job.terminal and not job.census_open
            if waiting and all(s.pinned != node or s.terminal for s in job.slots):
                self.out.timer(("census", job.job_id, 0), self.out.now + self.t.bid_window)

    def _add_pinned_slots(self, job: OwnedJob, nodes: list[str]) -> None:
        if not nodes:
            return
        new = []
        for node in nodes:
            slot = OwnedSlot(job_id=job.job_id, index=len(job.slots), pinned=node)
            job.slots.append(slot)
            new.append(slot)
            self.out.persist(SLOTS_TABLE, slot.key, slot.record())
        self.out.persist(JOBS_TABLE, job.job_id, job.record())
        for slot in new:
            slot.waiting_since = self.out.now
            self._open_auction(job, slot)

    def _resize(self, job: OwnedJob, count: int) -> None:
        """A service's count changed: add slots, or stop the highest ones."""
        live = [s for s in job.slots if not s.terminal]
        if count > len(live):
            added = []
            for _ in range(count - len(live)):
                slot = OwnedSlot(job_id=job.job_id, index=len(job.slots))
                job.slots.append(slot)
                added.append(slot)
                self.out.persist(SLOTS_TABLE, slot.key, slot.record())
            self.out.persist(JOBS_TABLE, job.job_id, job.record())
            for slot in added:
                slot.waiting_since = self.out.now
                self._open_auction(job, slot)
        for slot in live[count:]:
            self._stop_slot(job, slot, "scaled down")

    # --- auction ---------------------------------------------------------------------

    def _open_auction(self, job: OwnedJob, slot: OwnedSlot) -> None:
        unit = job.unit
        slot.state = check_slot_transition(slot.state, SlotEvent.START, SlotState.BIDDING)
        slot.attempt += 1
        slot.bids, slot.answered, slot.busy_seen, slot.mismatch = {}, set(), False, ""
        ask = AskForBid(
            job_id=job.job_id,
            slot=slot.index,
            attempt=(slot.attempt - 1) % 10_000 + 1,
            engine=unit.engine,
            cpu=unit.cpu,
            memory=unit.memory,
            labels=unit.labels,
            bid_window_ms=int(self.t.bid_window * 1000),
            pinned_node=slot.pinned,
        )
        if slot.pinned or slot.prefer:
            # Pinned: only this node.  Preferred (a consumer's graceful end):
            # this node first, anyone after a round without its bid.
            node = slot.pinned or slot.prefer
            slot.asked, slot.asked_all, slot.view_matches = {node}, True, 1
            self.out.send(node, ask)
            self.out.timer(("auction", job.job_id, slot.index), self.out.now + self.t.bid_window)
            return
        count = self.config.candidates * 2 ** min(slot.widen, 8)
        picked, slot.view_matches = self.directory.candidates(
            key=f"{slot.key}/{slot.attempt}",
            labels=unit.labels,
            engine=unit.engine,
            cpu=unit.cpu,
            memory=unit.memory,
            count=0 if slot.broadcast_next else count,
            avoid=self._failed_nodes(job, slot),
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

    def _failed_nodes(self, job: OwnedJob, slot: OwnedSlot) -> list[str]:
        """Nodes to ask last.  Batch: any node that failed the slot.  A daemon or
        service restarts in place unless a node failed it repeatedly (twice in
        its last five executions)."""
        if job.kind not in LONG_RUNNING:
            return [e.node for e in slot.executions if e.state != "succeeded"]
        recent = [e.node for e in slot.executions[-5:] if e.state not in ("replaced", "cancelled")]
        return sorted({node for node in recent if recent.count(node) >= 2})

    def _auction_slot(self, sender: str, job_id: str, index: int, attempt: int) -> OwnedSlot | None:
        job = self.jobs.get(job_id)
        if job is None or not 0 <= index < len(job.slots):
            raise RemoteProtocolError(f"bid for unknown job {job_id!r} slot {index}")
        slot = job.slots[index]
        current = (slot.attempt - 1) % 10_000 + 1
        if slot.state is not SlotState.BIDDING or current != attempt:
            return None  # late answer to a closed round: harmless
        if slot.asked is not None and sender not in slot.asked:
            raise RemoteProtocolError(f"unsolicited bid from {sender}")
        return slot

    def on_bid(self, sender: str, bid: Bid) -> None:
        if bid.slot == CENSUS_SLOT:
            self._census_answer(sender, bid.job_id, bid.attempt, matches=True)
            if not self.jobs[bid.job_id].census_open:  # late: release the reservation now
                self.out.send(
                    sender, BidRejected(job_id=bid.job_id, slot=bid.slot, attempt=bid.attempt)
                )
            return
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
        if msg.slot == CENSUS_SLOT:
            self._census_answer(sender, msg.job_id, msg.attempt, matches=msg.matches)
            if msg.matches and not self.jobs[msg.job_id].census_open:  # stops its retransmission
                self.out.send(
                    sender, BidRejected(job_id=msg.job_id, slot=msg.slot, attempt=msg.attempt)
                )
            return
        slot = self._auction_slot(sender, msg.job_id, msg.slot, msg.attempt)
        if slot is None:
            if msg.matches:  # a late "busy": still proof that a matching node exists
                self.jobs[msg.job_id].slots[msg.slot].busy_hint = True
            return
        slot.answered.add(sender)
        slot.busy_seen = slot.busy_seen or msg.matches
        if slot.pinned and not msg.matches:
            slot.mismatch = msg.reason
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
        if slot.pinned:
            self._requeue_pinned(job, slot)
            return
        if slot.prefer:  # the preferred node cannot take it back: ask anyone, now
            slot.prefer = ""
            slot.state = check_slot_transition(slot.state, SlotEvent.CLOSE, SlotState.QUEUED)
            self._open_auction(job, slot)
            return
        self._requeue_without_bid(job, slot)

    def _requeue_without_bid(self, job: OwnedJob, slot: OwnedSlot) -> None:
        """No bid this round.  Busy matching nodes: back off (with jitter, so slots
        queued together do not re-auction together).  Silence: widen the search,
        up to a broadcast.  Only broadcast rounds that no matching node answers,
        while our view knows none either, count towards failing fast (never for
        a service: it waits for nodes)."""
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
            if job.kind in LONG_RUNNING:
                delay *= 2 ** min(slot.no_match_rounds, 5)
        waits = job.kind in LONG_RUNNING
        if not waits and unit.queue_timeout is None and slot.no_match_rounds >= NO_MATCH_ROUNDS:
            self._slot_failed(
                job, slot, SlotEvent.CLOSE, f"no node matches the constraints ({_need(job)})"
            )
            return
        limit = unit.queue_timeout if unit.queue_timeout is not None else DEFAULT_QUEUE_TIMEOUT
        if not waits and self.out.now - slot.waiting_since >= limit:
            self._slot_failed(
                job, slot, SlotEvent.CLOSE, f"no node accepted the work within {limit:g}s"
            )
            return
        slot.state = check_slot_transition(slot.state, SlotEvent.CLOSE, SlotState.QUEUED)
        self.out.timer(("retry", job.job_id, slot.index), self.out.now + delay)

    def _requeue_pinned(self, job: OwnedJob, slot: OwnedSlot) -> None:
        """A pinned slot's node did not bid.  Busy: back off.  No longer
        matching: an ops slot fails, a daemon slot retires (a later census
        brings it back if the node matches again).  Silent: an ops slot fails
        after a few rounds; a daemon slot waits for its node, backing off."""
        node = slot.pinned
        if slot.mismatch:
            reason = f"node {node} no longer matches: {slot.mismatch}"
            if job.kind == "ops":
                self._slot_failed(job, slot, SlotEvent.CLOSE, reason)
            else:
                self._stop_slot(job, slot, reason)
            return
        if slot.busy_seen or slot.busy_hint:
            slot.busy_rounds += 1
            slot.no_match_rounds, slot.busy_hint = 0, False
            delay = self.t.requeue_delay * 2 ** min(slot.busy_rounds - 1, 3)
        else:
            slot.no_match_rounds += 1
            if job.kind == "ops" and slot.no_match_rounds >= PINNED_SILENT_ROUNDS:
                self._slot_failed(
                    job,
                    slot,
                    SlotEvent.CLOSE,
                    f"node {node} did not answer (gone since the census?)",
                )
                return
            delay = min(self.t.requeue_delay * 2 ** (slot.no_match_rounds - 1), PINNED_RETRY_MAX)
            slot.reason = f"waiting for node {node}"
        limit = (
            job.unit.queue_timeout if job.unit.queue_timeout is not None else DEFAULT_QUEUE_TIMEOUT
        )
        if job.kind == "ops" and self.out.now - slot.waiting_since >= limit:
            self._slot_failed(job, slot, SlotEvent.CLOSE, f"node {node} stayed busy for {limit:g}s")
            return
        slot.state = check_slot_transition(slot.state, SlotEvent.CLOSE, SlotState.QUEUED)
        self.out.timer(
            ("retry", job.job_id, slot.index), self.out.now + delay * (0.5 + self.rng.random())
        )

    def _rank(self, job: OwnedJob, slot: OwnedSlot) -> str:
        """Best bid: never ran this slot here, holds no sibling slot, most free capacity."""
        if job.kind in LONG_RUNNING:
            failed_here = set(self._failed_nodes(job, slot))
        else:
            failed_here = {e.node for e in slot.executions}
        siblings = {s.current.node for s in job.slots if s.current is not None and s.leased}

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
        slot.reason = ""
        exec_id = execution_id(job.job_id, slot.index, slot.epoch)
        ttl_ms = int(self.t.lease_ttl * 1000)
        slot.executions.append(
            Execution(
                execution_id=exec_id,
                epoch=slot.epoch,
                node=node,
                version=job.version,
                ttl_ms=ttl_ms,
            )
        )
        if job.kind in LONG_RUNNING and len(slot.executions) > KEEP_EXECUTIONS:
            del slot.executions[:-KEEP_EXECUTIONS]
        # Fencing: the new epoch is durable before any peer can see it.
        self.out.persist(SLOTS_TABLE, slot.key, slot.record())
        grant = LeaseGrant(
            execution_id=exec_id,
            job_id=job.job_id,
            slot=slot.index,
            attempt=(slot.attempt - 1) % 10_000 + 1,
            epoch=slot.epoch,
            ttl_ms=ttl_ms,
            timeout_ms=int(unit.timeout * 1000),
            task=unit.task,
        )
        if job.parent and job.scheduled_ms:  # a cron run: which scheduled time it serves
            grant = attrs.evolve(
                grant,
                env={"P2PNODE_CRON_JOB": job.parent, "P2PNODE_SCHEDULED_MS": str(job.scheduled_ms)},
            )
        if job.inputs or job.env:  # a stream batch: its blob, partition and range
            inputs = [InputRef(name=n, manifest_id=m, node=h) for n, m, h in job.inputs]
            grant = attrs.evolve(grant, env={**grant.env, **job.env}, inputs=inputs)
        if job.kind == "stream":
            grant = attrs.evolve(
                grant, env=self.stream.consumer_env(job, slot), run_for_ms=job.spec["run_for"]
            )
        if job.kind == "daemon":
            # A failed daemon restarts in place first (retry.attempts - 1 times,
            # backing off from retry.backoff); only then does the owner re-grant.
            grant = attrs.evolve(
                grant,
                restarts=max(unit.attempts - 1, 0),
                restart_backoff_ms=int(unit.backoff * 1000),
            )
        ttl_grace = ttl_ms / 1000 + self.t.lease_grace
        self.out.send_reliably(("grant", exec_id), node, grant, give_up_after=ttl_grace)
        slot.lease_expires = now + ttl_grace
        slot.granted_at = now
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
            ttl=ttl_ms / 1000,
            grace=self.t.lease_grace,
            timeout=unit.timeout,
            version=job.version,
        )
        self._update_job_state(job)

    def _lookup(self, sender: str, exec_id: str) -> tuple[OwnedJob, OwnedSlot, Execution]:
        """The execution named in a holder's message; only its holder may speak for it."""
        try:
            job_id, index, epoch = parse_execution_id(exec_id)
        except ValueError:
            raise RemoteProtocolError(f"malformed execution id {exec_id!r}") from None
        job = self.jobs.get(job_id)
        if job is None or not 0 <= index < len(job.slots):
            raise RemoteProtocolError(f"unknown execution {exec_id}")
        slot = job.slots[index]
        execution = slot.find(exec_id)
        if execution is None:
            if 0 < epoch < slot.epoch and job.kind in LONG_RUNNING:
                # Older than the executions a daemon/service slot keeps: stale
                # for sure, answered as such (never recorded).
                return job, slot, Execution(exec_id, epoch, sender, state="expired", late=True)
            raise RemoteProtocolError(f"unknown execution {exec_id}")
        if execution.node != sender:
            raise RemoteProtocolError(f"{sender} does not hold the lease of {exec_id}")
        return job, slot, execution

    def _lease_ttl(self, slot: OwnedSlot) -> float:
        """The ttl the slot's current lease was granted with (seconds)."""
        execution = slot.current
        if execution is None or not execution.ttl_ms:  # a record from an older version
            return self.t.lease_ttl
        return execution.ttl_ms / 1000

    def _is_current(self, slot: OwnedSlot, execution: Execution) -> bool:
        return execution.epoch == slot.epoch and slot.leased

    def on_renew(self, sender: str, msg: LeaseAccept | LeaseRenew) -> None:
        job, slot, execution = self._lookup(sender, msg.execution_id)
        if not self._is_current(slot, execution):
            if isinstance(msg, LeaseRenew) and msg.progress:
                self.stream.refuse(job, slot, execution, "the lease is no longer current")
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
        slot.lease_expires = self.out.now + self._lease_ttl(slot) + self.t.lease_grace
        if was is SlotState.GRANTED:
            execution.state = "running"
            self.out.persist(SLOTS_TABLE, slot.key, slot.record())
        if isinstance(msg, LeaseRenew) and (msg.progress or msg.lag >= 0):
            self.stream.commit(job, slot, execution, msg.progress, msg.lag, msg.seq)
        self.out.send(sender, RenewAck(execution_id=msg.execution_id, epoch=msg.epoch, seq=msg.seq))
        if was is SlotState.GRANTED and slot.rolling and execution.version == job.version:
            slot.rolling = False
            self._roll(job)  # this node runs the new version: replace the next one

    def on_release(self, sender: str, msg: LeaseRelease) -> None:
        job, slot, execution = self._lookup(sender, msg.execution_id)
        if msg.progress and self.stream.final_commit_allowed(slot, execution):
            # A consumer stopped with the job: its last checkpoint still counts.
            self.stream.commit(job, slot, execution, msg.progress, -1, 2**32)
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
            if msg.progress and self.stream.final_commit_allowed(slot, execution):
                self.stream.commit(job, slot, execution, msg.progress, msg.lag, 2**32)
            elif msg.progress:
                self.stream.refuse(job, slot, execution, "the lease is no longer current")
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
        if msg.progress or msg.lag >= 0:
            self.stream.commit(job, slot, execution, msg.progress, msg.lag, 2**32)
        if msg.status == LOST:
            # The holder restarted and lost the run: a lost lease, not a failure
            # of the task (its retries are for the task's own failures).
            execution.reported, execution.state, execution.error = True, "lost", msg.error
            self._lease_lost(job, slot, SlotEvent.RELEASED, f"lost on {sender}: {msg.error}")
            self.out.send(sender, ResultAck(execution_id=msg.execution_id, epoch=msg.epoch))
            return
        self._end_lease(job, slot, "result")
        execution.reported = True
        execution.exit_code, execution.error = msg.exit_code, msg.error
        execution.manifest_id = msg.manifest_id
        execution.stdout_tail, execution.stderr_tail = msg.stdout_tail, msg.stderr_tail
        if msg.status == "succeeded" and job.kind not in LONG_RUNNING:
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
            if msg.status == "succeeded":  # a daemon or service is not meant to end
                execution.state, detail = "succeeded", "exited with code 0"
            self._notify_execution(
                "execution_failed", slot, execution, status=msg.status, holder=sender
            )
            event = SlotEvent.SUCCEEDED if msg.status == "succeeded" else SlotEvent.FAILED
            self._execution_failed(job, slot, event, f"{msg.status} on {sender}: {detail}")
        self.out.send(sender, ResultAck(execution_id=msg.execution_id, epoch=msg.epoch))
        self._update_job_state(job)

    # --- timers -----------------------------------------------------------------------

    def on_timer(self, kind: str, job_id: str, index: int) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.terminal:
            return
        if kind == "census":
            if job.census_open:
                self._close_census(job)
            elif job.kind == "daemon" or job.census_quiet < OPS_QUIET_ROUNDS:
                self._open_census(job)
            return
        if kind == "cron":
            self.cron.on_timer(job)
            return
        if not 0 <= index < len(job.slots):
            return
        slot = job.slots[index]
        if kind == "auction" and slot.state is SlotState.BIDDING:
            self._close_auction(job, slot)
        elif kind == "retry" and slot.state is SlotState.QUEUED:
            self._open_auction(job, slot)
        elif kind == "lease" and slot.leased:
            if self.out.now < slot.lease_expires:  # renewed meanwhile
                self.out.timer(("lease", job.job_id, slot.index), slot.lease_expires)
            else:
                execution = slot.current
                assert execution is not None
                execution.state = "expired"
                self._cancel_holder(execution, "lease expired")
                self._lease_lost(job, slot, SlotEvent.EXPIRED, f"lease on {execution.node} expired")
        elif kind == "deadline" and slot.leased:
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
        if slot.lost > MAX_LOST_LEASES and job.kind not in LONG_RUNNING:
            self._slot_failed(job, slot, event, f"{reason}; {slot.lost} leases lost")
            return
        slot.state = check_slot_transition(slot.state, event, SlotState.QUEUED)
        slot.reason = reason
        slot.waiting_since = self.out.now
        self.out.persist(SLOTS_TABLE, slot.key, slot.record())
        self._open_auction(job, slot)
        self._update_job_state(job)

    def _execution_failed(
        self, job: OwnedJob, slot: OwnedSlot, event: SlotEvent, reason: str
    ) -> None:
        if event is SlotEvent.TIMED_OUT:
            self._end_lease(job, slot, "timeout")
        if job.kind in LONG_RUNNING:
            self._restart(job, slot, event, reason)
            return
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

    def _restart(self, job: OwnedJob, slot: OwnedSlot, event: SlotEvent, reason: str) -> None:
        """A daemon or service execution ended: run it again after a backoff that
        grows with restarts in a row (reset by an execution that ran long).  A
        stream consumer that ended well (run_for) is re-granted at once, to the
        same node if it bids (stickiness)."""
        execution = slot.current
        if job.kind == "stream" and event is SlotEvent.SUCCEEDED and execution is not None:
            slot.failures, slot.prefer = 0, execution.node
            slot.state = check_slot_transition(slot.state, event, SlotState.QUEUED)
            slot.reason, slot.waiting_since = "", self.out.now
            self.out.persist(SLOTS_TABLE, slot.key, slot.record())
            self._open_auction(job, slot)
            self._update_job_state(job)
            return
        if self.out.now - slot.granted_at >= STABLE_RUN:
            slot.failures = 0
        slot.failures += 1
        slot.state = check_slot_transition(slot.state, event, SlotState.QUEUED)
        slot.reason = reason
        slot.waiting_since = self.out.now
        self.out.persist(SLOTS_TABLE, slot.key, slot.record())
        backoff = min(job.unit.backoff * 2 ** (slot.failures - 1), RESTART_BACKOFF_MAX)
        self.out.timer(("retry", job.job_id, slot.index), self.out.now + backoff)
        self._update_job_state(job)

    def _stop_slot(self, job: OwnedJob, slot: OwnedSlot, reason: str) -> None:
        """Retire one slot (scaled down, or its node stopped matching)."""
        if slot.terminal:
            return
        self._cancel_slot(job, slot, reason)
        self._update_job_state(job)

    def _cancel_slot(self, job: OwnedJob, slot: OwnedSlot, reason: str) -> None:
        """Stop a live slot: no more auctions, its holder told to stop."""
        for kind in ("auction", "retry"):
            self.out.cancel_timer((kind, job.job_id, slot.index))
        execution = slot.current
        if slot.leased and execution is not None:
            execution.state = "cancelled"
            self._cancel_holder(execution, reason)
            self._end_lease(job, slot, "cancelled")
        slot.state = check_slot_transition(slot.state, SlotEvent.CANCEL, SlotState.CANCELLED)
        slot.reason = reason
        self.out.persist(SLOTS_TABLE, slot.key, slot.record())

    def _roll(self, job: OwnedJob) -> None:
        """Rolling update: replace running executions of older versions, at most
        ``rollout.max_unavailable`` slots in transition at a time.  A slot stays
        in transition until the new version's holder confirms its lease, so a
        version that does not start halts the rollout."""
        limit = int((job.spec.get("rollout") or {}).get("max_unavailable", 1))
        rolling = sum(1 for s in job.slots if s.rolling and not s.terminal)
        for slot in job.slots:
            if rolling >= limit:
                return
            execution = slot.current
            if slot.state is not SlotState.RUNNING or execution is None:
                continue
            if execution.version >= job.version:
                continue
            execution.state = "replaced"
            self._cancel_holder(execution, f"replaced by version {job.version}")
            self._end_lease(job, slot, "replaced")
            slot.state = check_slot_transition(slot.state, SlotEvent.ROLL, SlotState.QUEUED)
            slot.rolling, slot.failures = True, 0
            slot.waiting_since = self.out.now
            self.out.persist(SLOTS_TABLE, slot.key, slot.record())
            self._open_auction(job, slot)
            rolling += 1

    def _slot_failed(self, job: OwnedJob, slot: OwnedSlot, event: SlotEvent, reason: str) -> None:
        slot.state = check_slot_transition(slot.state, event, SlotState.FAILED)
        slot.reason = reason
        self.out.persist(SLOTS_TABLE, slot.key, slot.record())
        if job.kind == "ops":  # the others finish; the job reports every node that failed
            self._update_job_state(job)
            return
        self._finish_job(job, "failed", f"slot {slot.index}: {reason}")

    def _finish_job(self, job: OwnedJob, state: str, reason: str) -> None:
        """Terminal job: stop every slot still in flight, then record the outcome."""
        for kind in ("census", "cron"):
            self.out.cancel_timer((kind, job.job_id, 0))
        if job.kind == "cron":
            self.cron.on_stop(job, reason)
        elif job.kind == "stream":
            self.stream.on_stop(job, reason)
        elif job.kind == "dag":
            self.dag.on_stop(job, reason)
        elif job.kind == "chain":
            self.chain.on_stop(job, reason)
        for slot in job.slots:
            if not slot.terminal:
                self._cancel_slot(job, slot, reason)
        self._set_terminal(job, state, reason)

    def set_terminal(self, job: OwnedJob, state: str, reason: str) -> None:
        """Record a job's outcome (jobs whose state their controller decides)."""
        self._set_terminal(job, state, reason)

    def _set_terminal(self, job: OwnedJob, state: str, reason: str) -> None:
        job.state, job.reason = state, reason
        self.out.persist(JOBS_TABLE, job.job_id, job.record())
        self.out.notify("job_state", job_id=job.job_id, state=state, reason=reason)
        parent = self.jobs.get(job.parent) if job.parent else None
        if parent is not None and parent.kind == "cron":
            self.cron.on_run_finished(job)
        elif parent is not None and parent.kind == "stream":
            self.stream.on_run_finished(job)
        elif parent is not None and parent.kind == "dag":
            self.dag.on_run_finished(job)
        elif job.parent in self.chain.chains:  # (its chain job may be owned elsewhere)
            self.chain.on_run_finished(job)

    def _update_job_state(self, job: OwnedJob) -> None:
        if job.terminal or job.kind in ("cron", "dag", "chain"):
            return  # their controllers decide
        if job.kind == "stream" and not job.slots:
            return
        states = [s.state for s in job.slots]
        if job.kind == "ops" and job.slots and all(s.terminal for s in job.slots):
            failed = [s for s in job.slots if s.state is not SlotState.COMPLETED]
            if not failed:
                self._set_terminal(job, "completed", "")
                return
            nodes = "; ".join(f"{s.pinned}: {s.reason}" for s in failed)
            self._set_terminal(
                job, "failed", f"failed on {len(failed)} of {len(job.slots)} nodes: {nodes}"
            )
            return
        if job.kind in ("batch", "run") and all(s is SlotState.COMPLETED for s in states):
            self._set_terminal(job, "completed", "")
            return
        leased = (SlotState.GRANTED, SlotState.RUNNING, SlotState.COMPLETED)
        state = "running" if any(s in leased for s in states) else "queued"
        if state != job.state:
            job.state = state  # derived; persisted only when terminal
            self.out.notify("job_state", job_id=job.job_id, state=state, reason="")

    def forget(self, job_id: str) -> None:
        """Drop a finished job and its records (cron history trimming)."""
        job = self.jobs.pop(job_id, None)
        if job is None:
            return
        self.out.persist(JOBS_TABLE, job_id, None)
        for slot in job.slots:
            self.out.persist(SLOTS_TABLE, slot.key, None)

    # --- queries ----------------------------------------------------------------------

    def describe(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None and job_id in self.chain.chains:  # a chain stage we own(ed)
            return {"job_id": job_id, "type": "chain", "chain": self.chain.describe(job_id)}
        if job is None:
            raise LocalProtocolError(f"job {job_id} is not owned by this node")
        described: dict[str, Any] = {
            "job_id": job.job_id,
            "name": job.spec.get("name", ""),
            "type": job.kind,
            "version": job.version,
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
                    "node": s.pinned or (s.current.node if s.current else ""),
                    "version": s.current.version if s.current else 0,
                    "executions": [e.record() for e in s.executions],
                }
                for s in job.slots
            ],
        }
        if job.parent:
            described["parent"] = job.parent
            described["scheduled_ms"] = job.scheduled_ms
        if job.kind in LONG_RUNNING or job.kind in PINNED:
            live = [s for s in job.slots if not s.terminal]
            described["desired"] = len(live)
            described["live"] = sum(1 for s in live if s.state is SlotState.RUNNING)
        if job.kind == "cron":
            described["schedule"] = self.cron.describe(job)
        if job.kind == "stream":
            described["partitions"] = self.stream.describe(job)
        if job.kind == "dag":
            described["tasks"] = self.dag.describe(job)
        if job.kind == "chain":
            described["chain"] = self.chain.describe(job_id)
        return described


def _need(job: OwnedJob) -> str:
    unit = job.unit
    return f"labels {unit.labels}, executor {unit.engine!r}, cpu {unit.cpu:g}, memory {unit.memory}"
