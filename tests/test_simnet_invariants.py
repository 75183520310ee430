"""The invariant checkers must be able to fail: feed them violating streams."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from protocols.config import Timings
from protocols.events import StartExecution
from simnet.checker import Checker, handles
from simnet.cli import parse_duration
from simnet.invariants import Invariants, split_execution_id
from simnet.liveness import Liveness


class Fake:
    """Stands in for the engine: a list of scheduled checks and a running set."""

    def __init__(self) -> None:
        self.checks: list[tuple[float, Callable[[], None]]] = []
        self.running: set[tuple[str, str]] = set()
        self.inv = Invariants(Timings(), self.schedule, self.is_running)

    def schedule(self, at: float, fn: Callable[[], None]) -> None:
        self.checks.append((at, fn))

    def is_running(self, node: str, eid: str) -> bool:
        return (node, eid) in self.running

    def run_checks(self, until: float) -> None:
        due = [c for c in self.checks if c[0] <= until]
        self.checks = [c for c in self.checks if c[0] > until]
        for _, fn in sorted(due, key=lambda c: c[0]):
            fn()

    def note(self, node: str, kind: str, t: float, **data: Any) -> None:
        self.inv.on_notify(node, kind, data, t)

    def start(self, node: str, eid: str, t: float, timeout: float = 60.0) -> None:
        job, slot, _ = split_execution_id(eid) or ("", 0, 0)
        self.running.add((node, eid))
        self.inv.on_exec_start(node, StartExecution(eid, job, slot, {}, {}, timeout), t)

    def end(self, node: str, eid: str, t: float) -> None:
        self.running.discard((node, eid))
        self.inv.on_exec_end(node, eid, "succeeded", t)


def grant(f: Fake, epoch: int, t: float, holder: str = "h1", job: str = "j1") -> str:
    eid = f"{job}/0/{epoch}"
    f.note("o", "lease_granted", t, job_id=job, slot=0, epoch=epoch, execution_id=eid,
           holder=holder, ttl=10.0, timeout=60.0)
    return eid


def submitted(f: Fake, job: str = "j1", owner: str = "o") -> None:
    f.note(owner, "job_submitted", 0.0, job_id=job, owner=owner, slots=1)


def test_clean_history_has_no_violation() -> None:
    f = Fake()
    submitted(f)
    e1 = grant(f, 1, 1.0)
    f.start("h1", e1, 1.1)
    f.note("o", "lease_ended", 13.0, job_id="j1", slot=0, epoch=1, execution_id=e1,
           cause="timeout")  # (an expired lease must have stopped already)
    e2 = grant(f, 2, 14.0, holder="h2")
    f.end("h1", e1, 15.0)  # stops within ttl + grace of the new grant
    f.start("h2", e2, 14.1)
    f.end("h2", e2, 20.0)
    f.note("o", "result_accepted", 20.1, job_id="j1", slot=0, epoch=2, execution_id=e2,
           status="succeeded", holder="h2")
    f.note("o", "job_state", 20.1, job_id="j1", state="completed", reason="")
    f.run_checks(1000)
    f.inv.finish({"o": {"j1": "completed"}, "h1": {}, "h2": {}}, 1000.0, ["j1"])
    assert f.inv.violations == []


def test_two_accepted_results_fire() -> None:
    f = Fake()
    submitted(f)
    for epoch in (1, 2):
        f.note("o", "result_accepted", 5.0 + epoch, job_id="j1", slot=0, epoch=epoch,
               execution_id=f"j1/0/{epoch}", status="succeeded", holder="h")
    assert any("second accepted result" in v for v in f.inv.violations)


def test_stale_epoch_accepted_fires() -> None:
    f = Fake()
    submitted(f)
    grant(f, 1, 1.0)
    f.note("o", "lease_ended", 13.0, job_id="j1", slot=0, epoch=1, execution_id="j1/0/1",
           cause="expired")
    grant(f, 2, 14.0)
    f.note("o", "result_accepted", 15.0, job_id="j1", slot=0, epoch=1, execution_id="j1/0/1",
           status="succeeded", holder="h1")
    assert any("although epoch 2" in v for v in f.inv.violations)


def test_two_unexpired_leases_and_non_increasing_epoch_fire() -> None:
    f = Fake()
    submitted(f)
    grant(f, 3, 1.0)
    grant(f, 2, 2.0, holder="h2")
    assert any("unexpired" in v for v in f.inv.violations)
    assert any("must increase" in v for v in f.inv.violations)


def test_superseded_holder_still_running_fires() -> None:
    f = Fake()
    submitted(f)
    e1 = grant(f, 1, 1.0)
    f.start("h1", e1, 1.1)
    f.note("o", "lease_ended", 13.0, job_id="j1", slot=0, epoch=1, execution_id=e1,
           cause="timeout")
    grant(f, 2, 14.0, holder="h2")
    assert not f.inv.violations
    f.run_checks(14.0 + 10.0 + 2.0 + 1.0)  # TTL + grace + slack after the new grant
    assert any("still runs j1/0/1 past its own lease" in v for v in f.inv.violations)


def test_execution_outliving_timeout_fires() -> None:
    f = Fake()
    f.start("h1", "j1/0/1", 0.0, timeout=10.0)
    f.run_checks(100.0)
    assert any("outlived its timeout" in v for v in f.inv.violations)


def test_ownership_and_forgotten_jobs_fire() -> None:
    f = Fake()
    submitted(f, "j1", "a")
    submitted(f, "j2", "b")
    f.inv.check_ownership({"a": {"j1": "running"}, "b": {"j1": "running"}}, 50.0)
    assert any("j1 owned by a, b" in v for v in f.inv.violations)
    assert any("j2 owned by nobody" in v for v in f.inv.violations)
    lost = f.inv.finish({"a": {"j1": "running"}, "b": {"j2": "queued"}}, 99.0,
                        ["j1", "j2", "j3"])
    assert lost == ["j1", "j2", "j3"]
    assert any("never accepted" in v for v in f.inv.violations)
    assert any("never reached a terminal state" in v for v in f.inv.violations)


def test_terminal_state_is_final_and_failures_need_a_reason() -> None:
    f = Fake()
    submitted(f)
    f.note("o", "job_state", 1.0, job_id="j1", state="failed", reason="")
    f.note("o", "job_state", 2.0, job_id="j1", state="running", reason="")
    assert any("without a reason" in v for v in f.inv.violations)
    assert any("left terminal state" in v for v in f.inv.violations)


def test_first_violation_calls_back_with_time() -> None:
    seen: list[str] = []
    inv = Invariants(Timings(), lambda at, fn: None, lambda n, e: False, seen.append)
    inv.on_notify("o", "job_state", {"job_id": "j", "state": "failed", "reason": ""}, 12.5)
    assert seen and seen[0].startswith("t=12.500s:")


@pytest.mark.parametrize(("text", "seconds"), [
    ("1h", 3600.0), ("30m", 1800.0), ("1h30m", 5400.0), ("90s", 90.0), ("500ms", 0.5),
    ("120", 120.0), ("2.5s", 2.5),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_duration("1x")


# --- the Checker base (simnet/checker.py) --------------------------------------------


def test_checker_base_dispatches_marked_handlers_only() -> None:
    seen: list[tuple[str, str, float]] = []
    reported: list[tuple[float, str]] = []

    class Counting(Checker):
        def __init__(self) -> None:
            super().__init__(lambda now, text: reported.append((now, text)))
            self.noticed_at: list[float] = []

        def noticed(self, now: float) -> None:
            self.noticed_at.append(now)

        @handles("lease_granted", "lease_ended")
        def _lease(self, node: str, d: dict[str, Any], now: float) -> None:
            seen.append((node, str(d["what"]), now))
            if d["what"] == "bad":
                self.violate(now, "a bad lease")

    class Stricter(Counting):
        @handles("lease_ended")
        def _ended(self, node: str, d: dict[str, Any], now: float) -> None:
            self.violate(now, "ended")

    c = Counting()
    c.on_notify("n1", "lease_granted", {"what": "ok"}, 1.0)
    c.on_notify("n1", "job_state", {"what": "ignored"}, 2.0)  # not handled: not seen
    c.on_notify("n2", "lease_ended", {"what": "bad"}, 3.0)
    assert seen == [("n1", "ok", 1.0), ("n2", "bad", 3.0)]
    assert c.noticed_at == [1.0, 3.0]
    assert reported == [(3.0, "a bad lease")]
    # A subclass inherits its base's handlers and may override one kind.
    assert set(Stricter.handlers) == {"lease_granted", "lease_ended"}
    Stricter().on_notify("n3", "lease_ended", {"what": "ok"}, 4.0)
    assert reported[-1] == (4.0, "ended") and len(seen) == 2
    # The base's hooks are no-ops; the checkers' tables are built from their marks.
    c.expect("j1", {})
    c.cancelled("j1")
    c.on_fault(5.0, "crash")
    assert len(reported) == 2  # the no-op hooks reported nothing
    assert Invariants.handlers["result_ignored"] is Invariants.handlers["lease_ended"]


def test_every_checker_reports_through_the_core_checker() -> None:
    f = Fake()
    halted: list[str] = []
    f.inv._on_violation = halted.append
    liveness = Liveness(f.inv)
    liveness.expect("j1", {"type": "batch", "task": {"timeout": 60,
                                                     "engine": {"type": "sim", "duration": 1}}})
    liveness.node_faults = False
    liveness.on_notify("o", "job_state", {"job_id": "j1", "state": "failed", "reason": "odd"}, 7.0)
    assert f.inv.violations == halted
    assert len(halted) == 1 and halted[0].startswith("t=7.000s: healthy job j1 failed")
