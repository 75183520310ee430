"""The owner role: auctions, leases with fencing epochs, results, retries.

One ``OwnedSlot`` machine per (job, slot) (transitions in ``states.py``,
moved only by ``OwnerBase._move``).  What differs between job kinds is read
from ``protocols.kinds.KIND_POLICY`` and the kind controllers registered by
the node core; this package imports no controller.

The parts, one concern each:

* ``census.py``: which nodes match an ops/daemon job (one pinned slot each);
* ``auction.py``: asks, bids, the winner, requeues without a bid;
* ``leases.py``: grants with fencing epochs, renewals, results, lease timers;
* ``outcomes.py``: retries, restarts, rollouts, the job's state;
* this module: the local API (submit, update, cancel, restore, describe).

The rules that make outcomes exact on a lossy network are stated once, in
docs/protocol.md, section 6 (leases, fencing, time bounds, retries).
"""

from __future__ import annotations

import random
from typing import Any

from protocols.config import NodeConfig
from protocols.directory import Directory
from protocols.errors import LocalProtocolError
from protocols.kinds import KIND_POLICY, KindRegistry, Records, SlotSource, kinds_where
from protocols.outbox import Outbox
from protocols.owned import Execution, OwnedJob, OwnedSlot, parse_execution_id
from protocols.owner.auction import AuctionMixin
from protocols.owner.base import (
    DEFAULT_QUEUE_TIMEOUT,
    HISTORY_TABLE,
    JOBS_TABLE,
    KEEP_EXECUTIONS,
    MAX_LOST_LEASES,
    NO_MATCH_ROUNDS,
    OPS_QUIET_ROUNDS,
    PINNED_RETRY_MAX,
    PINNED_SILENT_ROUNDS,
    RESTART_BACKOFF_MAX,
    SLOTS_TABLE,
    STABLE_RUN,
    waiting_reason,
)
from protocols.owner.census import CensusMixin
from protocols.owner.leases import LeaseMixin
from protocols.owner.logs import LogMixin
from protocols.owner.outcomes import OutcomeMixin
from protocols.spec import SpecValidationError, validate_spec
from protocols.states import SlotEvent, SlotState
from protocols.timers import DEADLINE, LEASE, SlotTimer
from protocols.times import time_fields
from protocols.unit import WorkUnit


class Owner(CensusMixin, AuctionMixin, LeaseMixin, OutcomeMixin, LogMixin):
    def __init__(
        self, config: NodeConfig, out: Outbox, directory: Directory, rng: random.Random
    ) -> None:
        super().__init__(config, out, directory, rng)
        self.kinds = KindRegistry(self, {})  # no controllers until the node core installs them
        self.next_seq = 1  # submit order of the next job created (persisted in its record)

    def install(self, kinds: KindRegistry) -> None:
        """The node core hands over the kind controllers it built."""
        self.kinds = kinds

    # --- local API ------------------------------------------------------------------

    def submit(self, job_id: str, spec: dict[str, Any]) -> None:
        if job_id in self.jobs:
            raise LocalProtocolError(f"job {job_id} already exists")
        spec = self._canonical(job_id, spec)
        kind = spec.get("type", "batch")
        policy = KIND_POLICY.get(kind)
        if policy is None or not policy.submittable:
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
        policy, controller = KIND_POLICY[kind], self.kinds[kind]
        unit = WorkUnit.for_job(spec)
        count = 0
        if policy.slots is SlotSource.SPEC:
            count = unit.count
        elif policy.slots is SlotSource.CONTROLLER:
            count = controller.slot_count(spec)
        slots = [OwnedSlot(job_id=job_id, index=i) for i in range(count)]
        job = OwnedJob(
            job_id=job_id,
            spec=spec,
            unit=unit,
            slots=slots,
            state=policy.first_state,
            kind=kind,
            version=version,
            parent=parent,
            scheduled_ms=scheduled_ms,
            inputs=list(inputs or []),
            env=dict(env or {}),
            seq=self.next_seq,
            submitted_ms=self.out.wall_ms(),
        )
        self.next_seq += 1
        self.jobs[job_id] = job
        detail = f"{kind} job, {count} slot(s)" + (f", run of {parent}" if parent else "")
        self.note(job_id, "submitted", node=self.config.node_id, detail=detail)
        self.persist_job(job)
        for slot in slots:
            self.persist_slot(slot)
        self.out.notify(
            "job_submitted", job_id=job_id, owner=self.config.node_id, slots=count, job_type=kind
        )
        self.out.notify("job_state", job_id=job_id, state=job.state.value, reason="")
        for slot in slots:
            slot.waiting_since = self.out.now
            self._open_auction(job, slot)
        if policy.slots is SlotSource.CENSUS:
            self._open_census(job)
        controller.start(job)
        return job

    def cancel(self, job_id: str, reason: str) -> None:
        job = self.jobs.get(job_id)
        if job is None:
            raise LocalProtocolError(f"job {job_id} is not owned by this node")
        if job.terminal:
            return
        self._finish_job(job, "stopped", reason)

    def update(self, job_id: str, spec: dict[str, Any]) -> int:
        """A new version of an updatable job's spec; returns the version.

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
                    self.persist_slot(slot)
        self.persist_job(job)
        self.out.notify("job_updated", job_id=job_id, version=job.version)
        policy = self.policy(job)
        if policy.slots is SlotSource.SPEC:
            self._resize(job, job.unit.count)
        if policy.long_running:
            self._roll(job)
        self.kinds[job.kind].on_update(job)
        return job.version

    def suspend(self, job_id: str, suspended: bool) -> None:
        job = self._updatable(job_id)
        if not self.policy(job).suspendable:
            raise LocalProtocolError(
                f"job {job_id} is a {job.kind} job; "
                f"only {kinds_where(lambda p: p.suspendable)} jobs suspend"
            )
        self.kinds[job.kind].on_suspend(job, suspended)

    def _updatable(self, job_id: str) -> OwnedJob:
        job = self.jobs.get(job_id)
        if job is None:
            raise LocalProtocolError(f"job {job_id} is not owned by this node")
        if not self.policy(job).updatable:
            raise LocalProtocolError(
                f"job {job_id} is a {job.kind} job; "
                f"only {kinds_where(lambda p: p.updatable)} jobs change"
            )
        if job.terminal:
            raise LocalProtocolError(f"job {job_id} is {job.state}")
        return job

    def _resize(self, job: OwnedJob, count: int) -> None:
        """The spec's count changed: add slots, or stop the highest ones."""
        live = [s for s in job.slots if not s.terminal]
        if count > len(live):
            added = []
            for _ in range(count - len(live)):
                slot = OwnedSlot(job_id=job.job_id, index=len(job.slots))
                job.slots.append(slot)
                added.append(slot)
                self.persist_slot(slot)
            self.persist_job(job)
            for slot in added:
                slot.waiting_since = self.out.now
                self._open_auction(job, slot)
        for slot in live[count:]:
            self._stop_slot(job, slot, "scaled down")

    # --- restart ----------------------------------------------------------------------

    def restore(self, records: Records) -> None:
        """Rebuild owned jobs, then the controllers' state, from persisted
        records (before ``resume``)."""
        slots = records.get(SLOTS_TABLE, {})
        for job_id, rec in records.get(JOBS_TABLE, {}).items():
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
                seq=rec.get("seq", 0),
                submitted_ms=rec.get("submitted_ms", 0),
                started_ms=rec.get("started_ms", 0),
                finished_ms=rec.get("finished_ms", 0),
            )
        self.next_seq = max((job.seq for job in self.jobs.values()), default=0) + 1
        for job_id, rec in records.get(HISTORY_TABLE, {}).items():
            self.history[job_id] = list(rec.get("events", []))
        for controller in self.kinds.all():
            controller.restore(records)

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
                    self.out.timer(SlotTimer(LEASE, job.job_id, slot.index), slot.lease_expires)
                    self.out.timer(
                        SlotTimer(DEADLINE, job.job_id, slot.index),
                        now + job.unit.timeout + self.t.timeout_grace,
                    )
                elif slot.state in (SlotState.QUEUED, SlotState.BIDDING):
                    if slot.state is SlotState.BIDDING:  # its round died with the process
                        self._move(slot, SlotEvent.RESUMED, SlotState.QUEUED, persist=False)
                    slot.waiting_since = now
                    self._open_auction(job, slot)
            policy = self.policy(job)
            if policy.slots is SlotSource.CENSUS and (policy.recount or not job.slots):
                self._open_census(job)  # ops: only if the census had not finished
            elif policy.slots is SlotSource.CENSUS:
                # An ops census with slots is not resumed (its state is
                # volatile): it counts as over, so the job ends with its slots.
                job.census_quiet = OPS_QUIET_ROUNDS
                self._update_job_state(job)  # its slots may all have ended already
            self.kinds[job.kind].resume_job(job)
            if policy.long_running:
                self._roll(job)
        for controller in self.kinds.all():
            controller.resume()

    # --- queries ----------------------------------------------------------------------

    def describe(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None:
            for controller in self.kinds.all():
                unowned = controller.describe_unowned(job_id)
                if unowned is not None:
                    return unowned
            raise LocalProtocolError(f"job {job_id} is not owned by this node")
        waiting = [waiting_reason(job, s) for s in job.slots]
        described: dict[str, Any] = {
            "job_id": job.job_id,
            "name": job.spec.get("name", ""),
            "type": job.kind,
            "version": job.version,
            "owner": self.config.node_id,
            "state": job.state.value,
            "reason": job.reason or next(filter(None, waiting), ""),
            **time_fields(job.submitted_ms, job.started_ms, job.finished_ms),
            "slots": [
                {
                    **_slot_times(job, s),
                    "slot": s.index,
                    "state": s.state.value,
                    "epoch": s.epoch,
                    "failures": s.failures,
                    "lost": s.lost,
                    "reason": s.reason or reason,
                    "node": s.pinned or (s.current.node if s.current else ""),
                    "version": s.current.version if s.current else 0,
                    "executions": [_execution_view(e) for e in s.executions],
                }
                for s, reason in zip(job.slots, waiting, strict=True)
            ],
        }
        if job.parent:
            described["parent"] = job.parent
            described["scheduled_ms"] = job.scheduled_ms
        policy = self.policy(job)
        if policy.long_running or policy.slots is SlotSource.CENSUS:
            live = [s for s in job.slots if not s.terminal]
            described["desired"] = len(live)
            described["live"] = sum(1 for s in live if s.state is SlotState.RUNNING)
        controller = self.kinds[job.kind]
        if controller.describe_key:
            described[controller.describe_key] = controller.describe(job)
        return described


def _slot_times(job: OwnedJob, slot: OwnedSlot) -> dict[str, object]:
    """A slot's times: waiting since the job's submission, started with its
    first execution, finished with its last one once the slot is terminal."""
    started = next((e.started_ms for e in slot.executions if e.started_ms), 0)
    finished = 0
    if slot.terminal:
        last = slot.current
        finished = (last.finished_ms if last is not None else 0) or job.finished_ms
    return time_fields(job.submitted_ms, started, finished)


def _execution_view(execution: Execution) -> dict[str, Any]:
    """An execution's record with its times (``submitted_at``: its grant)."""
    times = time_fields(execution.granted_ms, execution.started_ms, execution.finished_ms)
    del times["submitted_ms"], times["started_ms"], times["finished_ms"]  # (in the record)
    return {**execution.record(), **times}


def job_history(owner: Owner, job_id: str) -> list[dict[str, Any]]:
    """The job's timeline, oldest first (``LocalProtocolError`` if unknown)."""
    if job_id not in owner.jobs and job_id not in owner.history:
        raise LocalProtocolError(f"job {job_id} is not owned by this node")
    return [dict(e) for e in owner.history.get(job_id, [])]


__all__ = [
    "DEFAULT_QUEUE_TIMEOUT",
    "HISTORY_TABLE",
    "JOBS_TABLE",
    "KEEP_EXECUTIONS",
    "MAX_LOST_LEASES",
    "NO_MATCH_ROUNDS",
    "OPS_QUIET_ROUNDS",
    "PINNED_RETRY_MAX",
    "PINNED_SILENT_ROUNDS",
    "RESTART_BACKOFF_MAX",
    "SLOTS_TABLE",
    "STABLE_RUN",
    "Owner",
    "job_history",
    "parse_execution_id",
]
