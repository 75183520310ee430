"""Liveness checkers: healthy jobs end well, lost executions cost no attempts.

A *healthy* job is a batch job whose task cannot fail by itself (a sim task
with no exit code, no failure rate, no hang, shorter than its timeout).

L1. a healthy job ends ``failed`` only for a fault-attributable reason: its
    lost-lease budget ran out (``"... leases lost"``) or no matching node
    answered, never "failed on <node>" with its user's attempts used up; and
    on a network that only loses, duplicates and reorders frames (no crash,
    partition, pause or latency tail; lies are no excuse) no execution of a
    healthy job is even reported failed, and no holder gives back the lease
    of one it started.  (A grant that comes after its bid's hold ran out,
    its copies lost three times in a row, finds the holder full and is given
    back unused: a lost placement, re-auctioned, not a stopped execution.)
L2. a lost execution never consumes an attempt: an execution whose holder
    crashed while it ran (executor ground truth) must never be reported to
    its owner as ``execution_failed`` (it is lost: a restart, a lease lapse
    or an unreachable holder count against the separate lost budget);
L4. retransmission: on a network that only loses (at most 30 %), duplicates
    and reorders frames, no slot loses more than ``MAX_EXPIRED_LOSS_ONLY``
    leases to expiry (a renewal and its retries all lost); the real core
    loses at most one in thousands of seeds, a core that never retransmits
    loses 2-5 per run;
L3. (the runner's *calm* mode) once every fault stopped, every healthy job
    still open completes within a bound: :meth:`Liveness.check_calm`.

Without L1/L3 a core that never retransmits, or that fails jobs on any
hiccup, passes every safety sweep.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocols.events import StartExecution
from simnet.checker import Checker, handles
from simnet.invariants import TERMINAL, Invariants

# Failure reasons a fault explains (the owner's own words, protocols/owner.py).
# "leases lost": crashes, partitions, pauses cost leases.
FAULT_REASONS = ("leases lost",)
# "no node matches": every matching node was down, cut off or byzantine when
# the auction concluded -- or, on a lossy network, the owner's directory had
# not heard of it yet (a known liveness gap, see docs/architecture.md).
ALWAYS_EXCUSED = ("no node matches",)
# L2 (and L1 for restart-lost executions): a holder's restart reports its
# lost execution as lost, not failed (issue 11 #4), so it never uses an attempt.
CHECK_LOST_ATTEMPTS = True
RESTART_LOST = "node restarted; the execution was lost"  # today's Holder.restore words
MAX_EXPIRED_LOSS_ONLY = 2  # L4


def is_healthy(spec: Mapping[str, Any]) -> bool:
    """A batch job none of whose executions can fail by itself."""
    if spec.get("type", "batch") != "batch" or spec.get("queue_timeout"):
        return False
    task = spec.get("task") or {}
    engine = task.get("engine") or {}
    if engine.get("type") != "sim":
        return False
    return (not engine.get("exit_code") and not engine.get("fail_rate")
            and not engine.get("hang")
            and int(engine.get("duration", 0)) < int(task.get("timeout", 0)))


class Liveness(Checker):
    def __init__(self, inv: Invariants) -> None:
        super().__init__(inv.violate)
        self.inv = inv  # its job states (L3)
        self.healthy: set[str] = set()
        self.running: dict[str, set[str]] = {}  # node -> execution ids it runs
        self.started: set[str] = set()  # every execution id an executor started
        self.lost: set[str] = set()  # executions whose holder crashed under them
        self.fault_failures = 0  # healthy jobs failed for a fault-attributable reason
        self.check_lost_attempts = CHECK_LOST_ATTEMPTS
        # False when the run injects no node fault (crash, partition, pause,
        # lie, latency tail): message loss, duplication and reordering alone
        # excuse nothing, since the protocol retransmits.
        self.node_faults = True
        self.check_expiries = False  # L4 (the runner: no node fault, loss <= 30 %)
        self.expired: dict[tuple[str, int], int] = {}  # (job, slot) -> leases expired

    def expect(self, job_id: str, spec: Mapping[str, Any]) -> None:
        if is_healthy(spec):
            self.healthy.add(job_id)

    def on_exec_start(self, node: str, action: StartExecution, now: float) -> None:
        self.running.setdefault(node, set()).add(action.execution_id)
        self.started.add(action.execution_id.partition("#")[0])  # (a daemon's run: eid#n)

    def on_exec_end(self, node: str, execution_id: str, status: str, now: float) -> None:
        self.running.get(node, set()).discard(execution_id)

    def on_crash(self, node: str, now: float) -> None:
        self.lost |= self.running.pop(node, set())

    @handles("lease_ended")
    def _lease_ended(self, node: str, data: dict[str, Any], now: float) -> None:
        if (data.get("cause") == "released" and not self.node_faults
                and str(data.get("job_id")) in self.healthy
                and str(data.get("execution_id")) in self.started):
            self.violate(now, f"{data.get('execution_id')}: its holder released the lease "
                              f"of a healthy job it had started although no node fault "
                              f"happened (L1: only the owner stops a healthy execution)")
        elif data.get("cause") == "expired":
            key = (str(data.get("job_id")), int(data.get("slot", 0)))
            count = self.expired[key] = self.expired.get(key, 0) + 1
            if self.check_expiries and count == MAX_EXPIRED_LOSS_ONLY + 1:
                self.violate(now, f"{key[0]}#{key[1]}: {count} leases expired on a network "
                                  f"that only loses frames (L4: retransmission)")

    @handles("execution_failed")
    def _execution_failed(self, node: str, data: dict[str, Any], now: float) -> None:
        eid = str(data.get("execution_id"))
        if not self.node_faults and str(data.get("job_id")) in self.healthy:
            self.violate(now, f"{eid} of healthy job {data.get('job_id')} reported "
                              f"{data.get('status')} to {node} although no node "
                              f"fault happened (L1)")
        if eid in self.lost and self.check_lost_attempts:
            self.violate(now, f"{eid}: lost when its holder crashed, yet reported to "
                              f"{node} as {data.get('status')} (L2: a lost execution "
                              f"must not consume an attempt)")

    @handles("job_state")
    def _job_state(self, node: str, data: dict[str, Any], now: float) -> None:
        if data.get("state") != "failed":
            return
        jid = str(data.get("job_id"))
        if jid not in self.healthy:
            return
        reason = str(data.get("reason") or "")
        excused = (any(r in reason for r in ALWAYS_EXCUSED)
                   or (self.node_faults and any(r in reason for r in FAULT_REASONS))
                   or (not self.check_lost_attempts and RESTART_LOST in reason))
        if excused:
            self.fault_failures += 1
        else:
            self.violate(now, f"healthy job {jid} failed for a reason no fault "
                              f"explains: {reason} (L1)")

    def check_calm(self, now: float, calm_since: float) -> None:
        """L3: every healthy job that was still open when faults stopped at
        ``calm_since`` has completed by ``now``."""
        late = sorted(j for j in self.healthy
                      if (track := self.inv.jobs.get(j)) is None or track.state not in TERMINAL)
        if late:
            sample = ", ".join(late[:5])
            self.violate(now, f"{len(late)} healthy job(s) not completed {now - calm_since:g}s "
                                  f"after every fault stopped: {sample} (L3)")
