"""Liveness checkers: healthy jobs end well, lost executions cost no attempts.

A *healthy* job is a batch job whose task cannot fail by itself (a sim task
with no exit code, no failure rate, no hang, shorter than its timeout).

L1. a healthy job ends ``failed`` only for a fault-attributable reason: its
    lost-lease budget ran out (``"... leases lost"``), never "failed on
    <node>" with its user's attempts used up;
L2. a lost execution never consumes an attempt: an execution whose holder
    crashed while it ran (executor ground truth) must never be reported to
    its owner as ``execution_failed`` (it is lost: a restart, a lease lapse
    or an unreachable holder count against the separate lost budget);
L3. (the runner's *calm* mode) once every fault stopped, every healthy job
    still open completes within a bound: :meth:`Liveness.check_calm`.

Without L1/L3 a core that never retransmits, or that fails jobs on any
hiccup, passes every safety sweep.
"""

from __future__ import annotations

from typing import Any

from protocols.events import StartExecution
from simnet.engine import Observer
from simnet.invariants import TERMINAL, Invariants

# Failure reasons a fault explains (the owner's own words, protocols/owner.py).
# "no node matches": every matching node was down, cut off or byzantine when the
# auction concluded (a liveness matter: the calm mode's L3 bounds it).
FAULT_REASONS = ("leases lost", "no node matches")
# L2 (and L1 for restart-lost executions) need issue 11 #4 (a holder's restart
# reports its lost execution as lost, not failed).  Until that fix is merged
# a restart still consumes an attempt; then this turns True.
CHECK_LOST_ATTEMPTS = False
RESTART_LOST = "node restarted; the execution was lost"  # today's Holder.restore words


def is_healthy(spec: dict[str, Any]) -> bool:
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


class Liveness(Observer):
    def __init__(self, inv: Invariants) -> None:
        self.inv = inv
        self.healthy: set[str] = set()
        self.running: dict[str, set[str]] = {}  # node -> execution ids it runs
        self.lost: set[str] = set()  # executions whose holder crashed under them
        self.fault_failures = 0  # healthy jobs failed for a fault-attributable reason
        self.check_lost_attempts = CHECK_LOST_ATTEMPTS

    def expect(self, job_id: str, spec: dict[str, Any]) -> None:
        if is_healthy(spec):
            self.healthy.add(job_id)

    def on_exec_start(self, node: str, action: StartExecution, now: float) -> None:
        self.running.setdefault(node, set()).add(action.execution_id)

    def on_exec_end(self, node: str, execution_id: str, status: str, now: float) -> None:
        self.running.get(node, set()).discard(execution_id)

    def on_crash(self, node: str, now: float) -> None:
        self.lost |= self.running.pop(node, set())

    def on_notify(self, node: str, kind: str, data: dict[str, Any], now: float) -> None:
        if kind == "execution_failed":
            eid = str(data.get("execution_id"))
            if eid in self.lost and self.check_lost_attempts:
                self.inv.violate(now, f"{eid}: lost when its holder crashed, yet reported to "
                                      f"{node} as {data.get('status')} (L2: a lost execution "
                                      f"must not consume an attempt)")
        elif kind == "job_state" and data.get("state") == "failed":
            jid = str(data.get("job_id"))
            if jid not in self.healthy:
                return
            reason = str(data.get("reason") or "")
            if any(r in reason for r in FAULT_REASONS) or (
                    not self.check_lost_attempts and RESTART_LOST in reason):
                self.fault_failures += 1
            else:
                self.inv.violate(now, f"healthy job {jid} failed for a reason no fault "
                                      f"explains: {reason} (L1)")

    def check_calm(self, now: float, calm_since: float) -> None:
        """L3: every healthy job that was still open when faults stopped at
        ``calm_since`` has completed by ``now``."""
        late = sorted(j for j in self.healthy
                      if (track := self.inv.jobs.get(j)) is None or track.state not in TERMINAL)
        if late:
            sample = ", ".join(late[:5])
            self.inv.violate(now, f"{len(late)} healthy job(s) not completed {now - calm_since:g}s "
                                  f"after every fault stopped: {sample} (L3)")
