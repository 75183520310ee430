"""Leases: grants with fencing epochs, renewals, releases, results, timers.

Each grant carries ``epoch = previous + 1`` for its slot, persisted before the
grant leaves.  Only a message carrying the slot's current epoch, from the peer
holding it, moves the slot; anything older is answered as stale and recorded
as late, so no slot completes twice.  The owner judges a lease on its own
clock: dead after ``ttl + grace`` without a renewal, failed after ``timeout +
timeout_grace`` without a result (``ttl`` is the one the grant carried).
"""

from __future__ import annotations

import attrs

from protocols.errors import RemoteProtocolError
from protocols.messages import (
    LOST,
    ExecutionResult,
    InputRef,
    LeaseAccept,
    LeaseGrant,
    LeaseRelease,
    LeaseRenew,
    RenewAck,
    ResultAck,
)
from protocols.owned import Execution, OwnedJob, OwnedSlot, execution_id, parse_execution_id
from protocols.owner.auction import round_attempt
from protocols.owner.base import KEEP_EXECUTIONS, OwnerBase
from protocols.states import ExecutionState, SlotEvent, SlotState, slot_accepts
from protocols.timers import CENSUS, CENSUS_ECHO, DEADLINE, LEASE, SlotTimer
from protocols.units import human_duration


class LeaseMixin(OwnerBase):
    def _grant(self, job: OwnedJob, slot: OwnedSlot, node: str) -> None:
        now, unit, policy = self.out.now, job.unit, self.policy(job)
        self._move(slot, SlotEvent.CLOSE, SlotState.GRANTED, reason="", persist=False)
        slot.epoch += 1
        exec_id = execution_id(job.job_id, slot.index, slot.epoch)
        ttl_ms = int(self.t.lease_ttl * 1000)
        slot.executions.append(
            Execution(
                execution_id=exec_id,
                epoch=slot.epoch,
                node=node,
                version=job.version,
                ttl_ms=ttl_ms,
                granted_ms=self.out.wall_ms(),
            )
        )
        slot.auction_noted = False
        self.note(
            job.job_id,
            "leased",
            node=node,
            slot=slot.index,
            detail=f"epoch {slot.epoch}, {exec_id}",
        )
        if policy.long_running and len(slot.executions) > KEEP_EXECUTIONS:
            del slot.executions[:-KEEP_EXECUTIONS]
        # Fencing: the new epoch is durable before any peer can see it.
        self.persist_slot(slot)
        grant = LeaseGrant(
            execution_id=exec_id,
            job_id=job.job_id,
            slot=slot.index,
            attempt=round_attempt(slot),
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
        grant = self.kinds[job.kind].grant_env(job, slot, grant)
        if policy.restarts_in_place:
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
        self.out.timer(SlotTimer(LEASE, job.job_id, slot.index), slot.lease_expires)
        self.out.timer(
            SlotTimer(DEADLINE, job.job_id, slot.index), now + unit.timeout + self.t.timeout_grace
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
            if 0 < epoch < slot.epoch and self.policy(job).long_running:
                # Older than the executions a daemon/service slot keeps: stale
                # for sure, answered as such (never recorded).
                stale = Execution(exec_id, epoch, sender, state=ExecutionState.EXPIRED, late=True)
                return job, slot, stale
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

    def _forgotten_from(self, sender: str, exec_id: str) -> tuple[str, bool] | None:
        """A forgotten execution of ours that ``sender`` held, or None."""
        forgotten = self.forgotten.get(exec_id)
        return forgotten if forgotten is not None and forgotten[0] == sender else None

    def on_renew(self, sender: str, msg: LeaseAccept | LeaseRenew) -> None:
        if self._forgotten_from(sender, msg.execution_id) is not None:
            # Its job is over and forgotten: no lease to extend.
            ack = RenewAck(execution_id=msg.execution_id, epoch=msg.epoch, seq=msg.seq,
                           valid=False, reason="job finished")
            self.out.send(sender, ack)
            return
        job, slot, execution = self._lookup(sender, msg.execution_id)
        kind = self.kinds[job.kind]
        if not self._is_current(slot, execution):
            if isinstance(msg, LeaseRenew):
                kind.on_progress(job, slot, execution, msg, current=False)
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
        late = was is SlotState.RUNNING and self.out.now > slot.lease_expires - self.t.lease_grace
        self._move(slot, event, SlotState.RUNNING, persist=False)
        self.out.settle(("grant", execution.execution_id))
        if event is SlotEvent.RENEWED:
            self.lease_renewals += 1
        if late:  # past its ttl, within the grace: the lease nearly lapsed
            overdue = self.out.now - (slot.lease_expires - self.t.lease_grace)
            self.note(
                job.job_id,
                "renewed_late",
                node=sender,
                slot=slot.index,
                detail=f"{overdue:.1f}s past the lease ttl",
            )
        # Only the deadline moves: the armed timer re-arms itself when it fires
        # early (one timer per lease period, not one per renewal).
        slot.lease_expires = self.out.now + self._lease_ttl(slot) + self.t.lease_grace
        if was is SlotState.GRANTED:
            execution.move(ExecutionState.RUNNING)
            execution.started_ms = self.out.wall_ms()
            self.persist_slot(slot)
            if not job.started_ms:
                job.started_ms = execution.started_ms
                self.persist_job(job)
            # A DAG's task, a chain's stage or a cron run: the job it is part
            # of started with its first run (its own describe and listing times).
            parent = self.jobs.get(job.parent) if job.parent else None
            if parent is not None and not parent.started_ms:
                parent.started_ms = execution.started_ms
                self.persist_job(parent)
            self.note(job.job_id, "started", node=sender, slot=slot.index, detail=msg.execution_id)
        if isinstance(msg, LeaseRenew):
            kind.on_progress(job, slot, execution, msg, current=True)
        rollover = isinstance(msg, LeaseRenew) and msg.rollover
        rollover = rollover and self.policy(job).regrant_on_success
        if rollover:
            # A consumer's run ended at run_for and its final checkpoint is
            # committed (above): the next run starts in place, from it, under
            # this lease, with a timeout of its own (stream.py, "roll-over").
            self.out.timer(
                SlotTimer(DEADLINE, job.job_id, slot.index),
                self.out.now + job.unit.timeout + self.t.timeout_grace,
            )
        self.out.send(
            sender,
            RenewAck(
                execution_id=msg.execution_id,
                epoch=msg.epoch,
                seq=msg.seq,
                rollover=rollover,
                checkpoint=slot.checkpoint if rollover else "",
            ),
        )
        if was is SlotState.GRANTED and slot.rolling and execution.version == job.version:
            slot.rolling = False
            self._roll(job)  # this node runs the new version: replace the next one

    def on_release(self, sender: str, msg: LeaseRelease) -> None:
        job, slot, execution = self._lookup(sender, msg.execution_id)
        current = self._is_current(slot, execution)
        self.kinds[job.kind].on_progress(job, slot, execution, msg, current=current)
        if not current:
            return
        execution.move(ExecutionState.RELEASED)
        execution.error = msg.reason
        self._lease_lost(job, slot, SlotEvent.RELEASED, f"released by {sender}: {msg.reason}")

    def on_result(self, sender: str, msg: ExecutionResult) -> None:
        forgotten = self._forgotten_from(sender, msg.execution_id)
        if forgotten is not None:
            # Our ack was lost and the job has since been forgotten (a
            # committed micro-batch): answer as before, or the holder repeats
            # the result for 10 ttls, and each copy counted against it as a
            # bad frame.
            self.out.send(sender, ResultAck(execution_id=msg.execution_id, epoch=msg.epoch,
                                            accepted=forgotten[1]))
            return
        job, slot, execution = self._lookup(sender, msg.execution_id)
        if execution.reported:
            # A retransmission of the result we already recorded (our ack was lost).
            self.out.send(
                sender, ResultAck(execution_id=msg.execution_id, epoch=msg.epoch, accepted=True)
            )
            return
        if not self._is_current(slot, execution):
            self.kinds[job.kind].on_progress(job, slot, execution, msg, current=False)
            first_copy = not execution.late
            execution.late = True
            if first_copy:
                execution.exit_code, execution.error = msg.exit_code, msg.error
                self.persist_slot(slot)
                reason = (
                    "superseded" if execution.epoch != slot.epoch else f"slot {slot.state.value}"
                )
                self._notify_execution("result_ignored", slot, execution, reason=reason)
            self.out.send(
                sender, ResultAck(execution_id=msg.execution_id, epoch=msg.epoch, accepted=False)
            )
            return
        self.kinds[job.kind].on_progress(job, slot, execution, msg, current=True)
        if msg.status == LOST:
            # The holder restarted and lost the run: a lost lease, not a failure
            # of the task (its retries are for the task's own failures).
            execution.reported, execution.error = True, msg.error
            execution.move(ExecutionState.LOST)
            self._lease_lost(job, slot, SlotEvent.RELEASED, f"lost on {sender}: {msg.error}")
            self.out.send(sender, ResultAck(execution_id=msg.execution_id, epoch=msg.epoch))
            return
        self._end_lease(job, slot, "result")
        self.note(
            job.job_id,
            "result",
            node=sender,
            slot=slot.index,
            detail=f"{msg.status}, exit code {msg.exit_code}"
            + (f": {msg.error}" if msg.error else ""),
        )
        execution.reported = True
        execution.exit_code, execution.error = msg.exit_code, msg.error
        execution.manifest_id = msg.manifest_id
        execution.log_manifest = msg.log_manifest
        execution.stdout_tail, execution.stderr_tail = msg.stdout_tail, msg.stderr_tail
        if msg.status == "succeeded" and not self.policy(job).long_running:
            execution.move(ExecutionState.SUCCEEDED)
            self._move(slot, SlotEvent.SUCCEEDED, SlotState.COMPLETED)
            self._notify_execution(
                "result_accepted", slot, execution, status=msg.status, holder=sender
            )
        else:
            detail = msg.error or f"exit code {msg.exit_code}"
            if msg.stderr_tail.strip():  # one line: reasons are printed in tables and logs
                last = " | ".join(msg.stderr_tail.strip().splitlines()[-3:])
                detail += f"; stderr: {last[-200:]}"
            if msg.status == "succeeded":  # a daemon or service is not meant to end
                execution.move(ExecutionState.SUCCEEDED)
                detail = "exited with code 0"
            elif msg.status in ("timeout", "cancelled"):
                execution.move(ExecutionState(msg.status))
            else:
                execution.move(ExecutionState.FAILED)
            self._notify_execution(
                "execution_failed", slot, execution, status=msg.status, holder=sender
            )
            event = SlotEvent.SUCCEEDED if msg.status == "succeeded" else SlotEvent.FAILED
            self._execution_failed(job, slot, event, f"{msg.status} on {sender}: {detail}")
        self._update_job_state(job)
        # The ack after what the result set off (it leaves with the same
        # commit either way): a chain's handover offer goes to this same
        # holder, which would otherwise commit the ack before it reads the
        # offer, about a commit longer on every handover's path.
        self.out.send(sender, ResultAck(execution_id=msg.execution_id, epoch=msg.epoch))

    # --- timers -----------------------------------------------------------------------

    def on_timer(self, kind: str, job_id: str, index: int) -> None:
        job = self.jobs.get(job_id)
        if job is None or job.terminal:
            return
        if kind == CENSUS:
            self._on_census_timer(job)
            return
        if kind == CENSUS_ECHO:
            self._echo_census(job, index)
            return
        if not 0 <= index < len(job.slots):
            return
        slot = job.slots[index]
        # A timer of a round or lease that already ended finds its event refused by the table.
        if kind == "auction" and slot_accepts(slot.state, SlotEvent.CLOSE):
            self._close_auction(job, slot)
        elif kind == "retry" and slot_accepts(slot.state, SlotEvent.START):
            self._open_auction(job, slot)
        elif kind == "lease" and slot_accepts(slot.state, SlotEvent.EXPIRED):
            if self.out.now < slot.lease_expires:  # renewed meanwhile
                self.out.timer(SlotTimer(LEASE, job.job_id, slot.index), slot.lease_expires)
            else:
                execution = slot.current
                assert execution is not None
                execution.move(ExecutionState.EXPIRED)
                self.lease_lapses += 1
                self._cancel_holder(execution, "lease expired")
                self._lease_lost(job, slot, SlotEvent.EXPIRED, f"lease on {execution.node} expired")
        elif kind == "deadline" and slot_accepts(slot.state, SlotEvent.TIMED_OUT):
            execution = slot.current
            assert execution is not None
            execution.move(ExecutionState.TIMEOUT)
            self._cancel_holder(execution, "execution timeout")
            self._execution_failed(
                job,
                slot,
                SlotEvent.TIMED_OUT,
                f"no result from {execution.node} "
                f"within timeout {human_duration(job.unit.timeout)}",
            )
