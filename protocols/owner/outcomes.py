"""Outcomes: what an ended lease leads to, and the job states that follow.

* **Retries** (policy ``OnExit.RETRY``): failed executions count against
  ``retry.attempts`` with exponential backoff from ``retry.backoff``; lost
  leases (silence, restarts, a result with status ``lost``) count against
  ``MAX_LOST_LEASES`` so network trouble cannot burn user retries.
* **Restarts** (``OnExit.RESTART``: daemon, service, stream consumer): an exit
  is run again after a backoff that grows with restarts in a row.
* **Rollouts**: an update replaces running executions of older versions,
  ``rollout.max_unavailable`` at a time.
* **Job states**: derived from the slots per the kind's ``EndRule``, or decided
  by the kind's controller.
"""

from __future__ import annotations

from typing import Any

from protocols.kinds import EndRule, SlotSource
from protocols.messages import Cancel
from protocols.owned import Execution, OwnedJob, OwnedSlot
from protocols.owner.base import (
    HISTORY_TABLE,
    JOBS_TABLE,
    MAX_FORGOTTEN_EXECUTIONS,
    MAX_LOST_LEASES,
    RESTART_BACKOFF_MAX,
    SLOTS_TABLE,
    STABLE_RUN,
    OwnerBase,
)
from protocols.owner.census import census_over
from protocols.states import ExecutionState, SlotEvent, SlotState
from protocols.timers import CENSUS, DEADLINE, LEASE, RETRY, JobTimer, SlotTimer


class OutcomeMixin(OwnerBase):
    # --- one lease ends ---------------------------------------------------------------

    def _end_lease(self, job: OwnedJob, slot: OwnedSlot, cause: str) -> None:
        execution = slot.current
        assert execution is not None
        self.out.settle(("grant", execution.execution_id))
        self.out.cancel_timer(SlotTimer(LEASE, job.job_id, slot.index))
        self.out.cancel_timer(SlotTimer(DEADLINE, job.job_id, slot.index))
        execution.finished_ms = self.out.wall_ms()
        self._notify_execution("lease_ended", slot, execution, cause=cause)
        self._room_freed(execution.node)

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

    def _requeue(
        self,
        job: OwnedJob,
        slot: OwnedSlot,
        event: SlotEvent,
        reason: str,
        *,
        backoff: float | None,
    ) -> None:
        """Back to the queue after a lease ended: re-auctioned at once
        (``backoff`` None) or when the retry timer fires."""
        self._move(slot, event, SlotState.QUEUED, reason=reason)
        slot.waiting_since = self.out.now
        when = "at once" if backoff is None else f"in {backoff:g}s"
        self.note(job.job_id, "retried", slot=slot.index, detail=f"re-auctioned {when}: {reason}")
        if backoff is None:
            self._open_auction(job, slot)
        else:
            self.out.timer(SlotTimer(RETRY, job.job_id, slot.index), self.out.now + backoff)
        self._update_job_state(job)

    def _lease_lost(self, job: OwnedJob, slot: OwnedSlot, event: SlotEvent, reason: str) -> None:
        self._end_lease(job, slot, event.value)
        holder = slot.current.node if slot.current is not None else ""
        self.note(job.job_id, "lost", node=holder, slot=slot.index, detail=reason)
        slot.lost += 1
        if slot.lost > MAX_LOST_LEASES and not self.policy(job).long_running:
            self._slot_failed(job, slot, event, f"{reason}; {slot.lost} leases lost")
            return
        self._requeue(job, slot, event, reason, backoff=None)

    def _execution_failed(
        self, job: OwnedJob, slot: OwnedSlot, event: SlotEvent, reason: str
    ) -> None:
        if event is SlotEvent.TIMED_OUT:
            self._end_lease(job, slot, "timeout")
        if self.policy(job).long_running:
            self._restart(job, slot, event, reason)
            return
        slot.failures += 1
        if slot.failures >= job.unit.attempts:
            self._slot_failed(
                job, slot, event, f"{reason} (attempt {slot.failures} of {job.unit.attempts})"
            )
            return
        backoff = job.unit.backoff * 2 ** (slot.failures - 1)
        self._requeue(job, slot, event, reason, backoff=backoff)

    def _restart(self, job: OwnedJob, slot: OwnedSlot, event: SlotEvent, reason: str) -> None:
        """A long-running execution ended: run it again after a backoff that
        grows with restarts in a row (reset by an execution that ran long).  A
        graceful end (a stream consumer's run_for) is re-granted at once, to the
        same node if it bids (stickiness)."""
        execution = slot.current
        graceful = event is SlotEvent.SUCCEEDED and execution is not None
        if graceful and self.policy(job).regrant_on_success:
            assert execution is not None
            slot.failures, slot.prefer = 0, execution.node
            self._requeue(job, slot, event, "", backoff=None)
            return
        if self.out.now - slot.granted_at >= STABLE_RUN:
            slot.failures = 0
        slot.failures += 1
        backoff = min(job.unit.backoff * 2 ** (slot.failures - 1), RESTART_BACKOFF_MAX)
        self._requeue(job, slot, event, reason, backoff=backoff)

    def _stop_slot(self, job: OwnedJob, slot: OwnedSlot, reason: str) -> None:
        """Retire one slot (scaled down, or its node stopped matching)."""
        if slot.terminal:
            return
        self._cancel_slot(job, slot, reason)
        self._update_job_state(job)

    def _cancel_slot(self, job: OwnedJob, slot: OwnedSlot, reason: str) -> None:
        """Stop a live slot: no more auctions, its holder told to stop."""
        for kind in ("auction", "retry"):
            self.out.cancel_timer(SlotTimer(kind, job.job_id, slot.index))
        execution = slot.current
        if slot.leased and execution is not None:
            execution.move(ExecutionState.CANCELLED)
            self._cancel_holder(execution, reason)
            self._end_lease(job, slot, "cancelled")
        self._move(slot, SlotEvent.CANCEL, SlotState.CANCELLED, reason=reason)

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
            execution.move(ExecutionState.REPLACED)
            self._cancel_holder(execution, f"replaced by version {job.version}")
            self._end_lease(job, slot, "replaced")
            slot.rolling, slot.failures = True, 0
            self._move(slot, SlotEvent.ROLL, SlotState.QUEUED)
            slot.waiting_since = self.out.now
            self._open_auction(job, slot)
            rolling += 1

    def _slot_failed(self, job: OwnedJob, slot: OwnedSlot, event: SlotEvent, reason: str) -> None:
        self._move(slot, event, SlotState.FAILED, reason=reason)
        if self.policy(job).end is EndRule.EVERY_NODE:
            # The others finish; the job reports every node that failed.
            self._update_job_state(job)
            return
        self._finish_job(job, "failed", f"slot {slot.index}: {reason}")

    # --- the job ----------------------------------------------------------------------

    def _finish_job(self, job: OwnedJob, state: str, reason: str) -> None:
        """Terminal job: stop every slot still in flight, then record the outcome."""
        self.finishing.add(job.job_id)
        try:
            self.out.cancel_timer(JobTimer(CENSUS, job.job_id))
            self.kinds[job.kind].on_stop(job, reason)
            for slot in job.slots:
                if not slot.terminal:
                    self._cancel_slot(job, slot, reason)
        finally:
            self.finishing.discard(job.job_id)
        self._set_terminal(job, state, reason)

    def fail(self, job: OwnedJob, reason: str) -> None:
        """Stop a job as failed (a controller's verdict, e.g. a stream batch
        that failed for good); not one already ending (its outcome is decided)."""
        if not job.terminal and job.job_id not in self.finishing:
            self._finish_job(job, "failed", reason)

    def set_terminal(self, job: OwnedJob, state: str, reason: str) -> None:
        """Record a job's outcome (jobs whose state their controller decides),
        unless it is being finished already: that outcome stands."""
        if job.job_id not in self.finishing:
            self._set_terminal(job, state, reason)

    def _set_terminal(self, job: OwnedJob, state: str, reason: str) -> None:
        job.move(state)
        job.reason = reason
        job.finished_ms = self.out.wall_ms()
        self.note(job.job_id, state, detail=reason)
        self.persist_job(job)
        self.out.notify("job_state", job_id=job.job_id, state=state, reason=reason)
        if not job.parent:
            return
        parent = self.jobs.get(job.parent)
        if parent is not None:
            self.kinds[parent.kind].on_run_finished(job)
        else:  # (a chain stage's chain job is owned elsewhere)
            for controller in self.kinds.all():
                controller.on_run_finished(job)

    def set_job_state(self, job: OwnedJob, state: str, *, persist: bool, notify: bool) -> None:
        """A non-terminal state a controller decides (scheduled, suspended, running)."""
        job.move(state)
        if persist:
            self.persist_job(job)
        if notify:
            self.out.notify("job_state", job_id=job.job_id, state=state, reason="")

    def _update_job_state(self, job: OwnedJob) -> None:
        policy = self.policy(job)
        if job.terminal or policy.end is EndRule.CONTROLLER:
            return  # its controller decides
        if policy.slots is SlotSource.CONTROLLER and not job.slots:
            return  # no slots of its own (a micro-batch stream): its controller decides
        states = [s.state for s in job.slots]
        if (policy.end is EndRule.EVERY_NODE and job.slots and census_over(job)
                and all(s.terminal for s in job.slots)):
            failed = [s for s in job.slots if s.state is not SlotState.COMPLETED]
            if not failed:
                self._set_terminal(job, "completed", "")
                return
            nodes = "; ".join(f"{s.pinned}: {s.reason}" for s in failed)
            self._set_terminal(
                job, "failed", f"failed on {len(failed)} of {len(job.slots)} nodes: {nodes}"
            )
            return
        if policy.end is EndRule.ALL_SLOTS and all(s is SlotState.COMPLETED for s in states):
            self._set_terminal(job, "completed", "")
            return
        leased = (SlotState.GRANTED, SlotState.RUNNING, SlotState.COMPLETED)
        state = "running" if any(s in leased for s in states) else "queued"
        if job.move(state):  # derived; persisted only when terminal
            self.out.notify("job_state", job_id=job.job_id, state=state, reason="")

    def forget(self, job_id: str) -> None:
        """Drop a finished job and its records (cron history trimming)."""
        job = self.jobs.pop(job_id, None)
        if job is None:
            return
        self.out.persist(JOBS_TABLE, job_id, None)
        if self.history.pop(job_id, None) is not None:
            self.out.persist(HISTORY_TABLE, job_id, None)
        for slot in job.slots:
            self.out.persist(SLOTS_TABLE, slot.key, None)
            for execution in slot.executions:
                self.forgotten[execution.execution_id] = (execution.node, execution.reported)
        while len(self.forgotten) > MAX_FORGOTTEN_EXECUTIONS:
            del self.forgotten[next(iter(self.forgotten))]
