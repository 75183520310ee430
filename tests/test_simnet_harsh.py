"""Harsh simulator modes (tails, pauses, clock skew, byzantine peers, calm
mode) and the checkers they need; each checker is shown to fire on a
planted bug (issue 11, "make the simulator harsh enough")."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

import pytest

from protocols import owner as owner_module
from protocols.config import Timings
from protocols.events import Action, Event, MessageReceived, SetTimer, Started, TimerFired
from simnet.engine import Engine
from simnet.harness import Cluster
from simnet.invariants import Invariants
from simnet.liveness import Liveness, is_healthy
from simnet.runner import RunOptions, run_scenario
from simnet.workload import batch_spec, sim_task
from tests.simnetcli import run_simnet

HARSH = ["--nodes", "6", "--jobs", "12", "--duration", "4m", "--loss", "0.1",
         "--duplicate", "0.05", "--crash-rate", "0.2", "--partition-rate", "0.5",
         "--pause-rate", "0.3", "--latency-tail", "0.05", "--clock-skew", "0.01",
         "--reorder", "0.2", "--reorder-delay", "5s", "--byzantine", "0.2"]
HARSH_OPTS: dict[str, Any] = {
    "nodes": 6, "jobs": 12, "duration": 240.0, "loss": 0.1, "duplicate": 0.05,
    "crash_rate": 0.2, "partition_rate": 0.5, "pause_rate": 0.3, "latency_tail": 0.05,
    "clock_skew": 0.01, "reorder": 0.2, "reorder_delay": 5.0, "byzantine": 0.2,
}


# --- determinism and the modes really happening ---------------------------------------------


def test_harsh_run_is_determined_by_its_seed() -> None:
    one = run_simnet("run", "--seed", "7", *HARSH, "--output", "json", hashseed="1")
    two = run_simnet("run", "--seed", "7", *HARSH, "--output", "json", hashseed="2")
    assert one["trace_hash"] == two["trace_hash"]
    assert one["invariant_violations"] == []
    assert one["pauses"] > 0 and one["byzantine_frames"] > 0
    assert len(one["byzantine_nodes"]) == 1
    other = run_simnet("run", "--seed", "8", *HARSH, "--output", "json")
    assert other["trace_hash"] != one["trace_hash"]


def test_bad_harsh_option_is_one_clear_error() -> None:
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "simnet", "run", "--latency-tail", "2"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "--latency-tail" in proc.stderr and "Traceback" not in proc.stderr


# --- engine: pauses and clock rates -----------------------------------------------------------


class Recorder:
    """A core that records what it sees and arms one timer at start."""

    def __init__(self, log: list[tuple[str, float, Any]], timer_at: float) -> None:
        self.log = log
        self.timer_at = timer_at  # (only node b's log is kept: a's is a no-op list)

    def handle(self, event: Event, now: float) -> list[Action]:
        if isinstance(event, Started):
            return [SetTimer("t", self.timer_at)]
        if isinstance(event, TimerFired):
            self.log.append(("timer", now, event.key))
        elif isinstance(event, MessageReceived):
            self.log.append(("frame", now, event.data))
        return []


def _engine(timer_at: float) -> tuple[Engine, list[tuple[str, float, Any]]]:
    log: list[tuple[str, float, Any]] = []
    engine = Engine(1)
    engine.add_node("a", lambda records, inc: Recorder([], timer_at))
    engine.add_node("b", lambda records, inc: Recorder(log, timer_at))
    return engine, log


def test_a_paused_node_gets_its_frames_in_order_and_its_timer_late() -> None:
    engine, log = _engine(timer_at=2.0)
    engine.start_node(0)
    engine.start_node(1)
    engine.pause_node(1, until=5.0)
    for i in range(3):
        engine.call_at(1.0 + i, lambda i=i: engine.send("a", "b", b"frame%d" % i))
    engine.run(until=10.0)
    # Nothing reached b before it resumed at 5.0; then the frames and the
    # overdue timer, in the order they were due (frame0 at ~1.0, timer at 2.0).
    assert [e[0] for e in log] == ["frame", "timer", "frame", "frame"]
    assert all(t == 5.0 for _, t, _ in log)
    assert [e[2] for e in log if e[0] == "frame"] == [b"frame0", b"frame1", b"frame2"]


def test_a_node_clock_runs_at_its_own_rate() -> None:
    engine, log = _engine(timer_at=10.0)
    engine.set_clock_rate(1, 1.01)  # a fast clock reaches 10.0 early
    engine.start_node(1)
    engine.run(until=20.0)
    [(kind, local, _)] = log
    assert kind == "timer" and local >= 10.0  # never before the core's own deadline
    assert engine.now == pytest.approx(10.0 / 1.01)


def test_checker_deadlines_do_not_count_frozen_time() -> None:
    cluster = Cluster(2, 3)
    fired: list[float] = []
    cluster.start()
    cluster.at(1.0, lambda: cluster.pause("n0001", 4.0))
    cluster.at(1.0, lambda: cluster.schedule_check(3.0, lambda: fired.append(cluster.now)))
    cluster.run_until(20.0)
    assert fired == [pytest.approx(7.0)]  # 2 s of unfrozen time after the 4 s pause
    assert cluster.thawed_deadline(0.0, 3.0, "n0001") == pytest.approx(7.0)
    assert cluster.thawed_deadline(0.0, 3.0, "n0000") == pytest.approx(3.0)  # not paused


# --- checker: one (job, slot, epoch), one holder ------------------------------------------------


def _invariants() -> Invariants:
    return Invariants(Timings(), lambda at, fn: None, lambda node, eid: False)


def test_an_epoch_granted_to_two_holders_is_a_violation() -> None:
    inv = _invariants()
    grant = {"job_id": "j1", "slot": 0, "epoch": 3, "execution_id": "j1/0/3", "ttl": 10.0}
    inv.on_notify("o", "lease_granted", {**grant, "holder": "h1"}, 1.0)
    inv.on_notify("o", "lease_granted", {**grant, "holder": "h1"}, 2.0)  # a re-announce
    assert inv.violations == []
    inv.on_notify("o", "lease_granted", {**grant, "holder": "h2"}, 3.0)
    assert any("granted to h2, already granted to h1" in v for v in inv.violations)


def test_a_result_accepted_from_a_non_holder_is_a_violation() -> None:
    inv = _invariants()
    inv.on_notify("o", "lease_granted", {"job_id": "j1", "slot": 0, "epoch": 1, "holder": "h1",
                                         "execution_id": "j1/0/1", "ttl": 10.0}, 1.0)
    inv.on_notify("o", "result_accepted", {"job_id": "j1", "slot": 0, "epoch": 1,
                                           "execution_id": "j1/0/1", "holder": "x"}, 2.0)
    assert any("accepted from x" in v for v in inv.violations)


def test_grant_without_persisting_the_epoch_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted bug of issue 11 that 30 seeds did not notice."""
    from simnet.mutants import CATALOGUE, SWEEPS
    [mutation] = [m for m in CATALOGUE if m.name == "grant-without-persisting-epoch"]
    original = owner_module.Owner._grant
    persist_calls: list[int] = []

    def grant(self: Any, job: Any, slot: Any, node: str) -> None:
        real = self.out.persist
        # Drop exactly the fencing persist: the first Persist of the slot in _grant.
        def persist(table: str, key: str, value: Any) -> None:
            if table == owner_module.SLOTS_TABLE and not persist_calls:
                persist_calls.append(1)
                return
            real(table, key, value)
        monkeypatch.setattr(self.out, "persist", persist)
        try:
            original(self, job, slot, node)
        finally:
            persist_calls.clear()
            monkeypatch.setattr(self.out, "persist", real)
    monkeypatch.setattr(owner_module.Owner, "_grant", grant)
    for seed in range(mutation.seeds):
        report = run_scenario(RunOptions(seed=seed, **SWEEPS["crashes"]))
        if any("already granted to" in v for v in report["invariant_violations"]):
            return
    pytest.fail(f"no seed of {mutation.seeds} caught the re-granted epoch")


# --- liveness checkers ---------------------------------------------------------------------------


def test_healthy_jobs_are_told_apart() -> None:
    assert is_healthy(batch_spec("ok", task=sim_task(1000)))
    assert not is_healthy(batch_spec("flaky", task=sim_task(1000, fail_rate=0.3)))
    assert not is_healthy(batch_spec("exit", task=sim_task(1000, exit_code=3)))
    assert not is_healthy(batch_spec("hang", task=sim_task(1000, hang=True)))


def _liveness() -> tuple[Invariants, Liveness]:
    inv = _invariants()
    live = Liveness(inv)
    live.expect("j1", batch_spec("ok", task=sim_task(1000)))
    return inv, live


def test_a_healthy_job_failing_without_a_fault_is_a_violation() -> None:
    inv, live = _liveness()
    live.on_notify("o", "job_state", {"job_id": "j1", "state": "failed",
                                      "reason": "slot 0: lease on h expired; 4 leases lost"}, 1.0)
    assert inv.violations == []
    live.on_notify("o", "job_state", {"job_id": "j1", "state": "failed",
                                      "reason": "slot 0: failed on h: exit code 1"}, 2.0)
    assert any("(L1)" in v for v in inv.violations)


def _start(live: Liveness, execution_id: str) -> None:
    from protocols.events import StartExecution
    live.on_exec_start("h", StartExecution(execution_id=execution_id, job_id="j1", slot=0,
                                           task={}, env={}, timeout=60), 1.0)


def test_a_started_healthy_execution_given_back_is_a_violation() -> None:
    """L1 on a loss-only network: a holder may give back a grant it never
    started (late, no room), never the lease of an execution it started."""
    inv, live = _liveness()
    live.node_faults = False
    released = {"job_id": "j1", "slot": 0, "epoch": 1, "cause": "released"}
    live.on_notify("o", "lease_ended", {**released, "execution_id": "j1/0/1"}, 2.0)
    assert inv.violations == []  # never started: a lost placement
    _start(live, "j1/0/2")
    live.on_notify("o", "lease_ended", {**released, "execution_id": "j1/0/2", "epoch": 2}, 3.0)
    assert any("j1/0/2" in v and "(L1" in v for v in inv.violations)


def test_planted_holder_giving_back_started_executions_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planted: the holder starts an execution, then gives its lease back."""
    from protocols.holder import Holder
    from protocols.messages import LeaseRelease
    start_run = Holder._start_run

    def start_then_give_back(self: Any, held: Any) -> None:
        start_run(self, held)
        self.out.send(held.owner, LeaseRelease(execution_id=held.execution_id,
                                               epoch=held.epoch, reason="planted"))
    monkeypatch.setattr(Holder, "_start_run", start_then_give_back)
    report = run_scenario(RunOptions(seed=1, nodes=6, jobs=10, loss=0.05, workload="plain"))
    assert any("(L1: only the owner stops" in v for v in report["invariant_violations"])


def _late_grants_run(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], int]:
    """20 nodes, 30 jobs each, 20 % loss, seed 0: one grant's copies are lost
    until its bid's hold ran out; it finds the holder full and is given back
    unused.  Returns the report and how many grants were given back so."""
    given_back = 0
    on_release = owner_module.Owner.on_release

    def counting(self: Any, sender: str, msg: Any) -> None:
        nonlocal given_back
        given_back += "no room" in msg.reason
        on_release(self, sender, msg)
    monkeypatch.setattr(owner_module.Owner, "on_release", counting)
    report = run_scenario(RunOptions(seed=0, nodes=20, jobs=600, loss=0.2, workload="plain"))
    return report, given_back


def test_late_grants_given_back_under_load_pass_l1(monkeypatch: pytest.MonkeyPatch) -> None:
    """L1 flagged such a release as a stopped execution, halting a 50-node,
    1,500-job run with 808 jobs unfinished."""
    report, given_back = _late_grants_run(monkeypatch)
    assert given_back >= 1  # the run does exercise the path
    assert report["invariant_violations"] == []
    assert report["lost"] == 0 and report["completed"] == 600


def test_planted_l1_without_ground_truth_flags_the_late_grant(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planted: L1 as it was (every release of a healthy job's lease counts)."""
    class _Everything(set[str]):
        def __contains__(self, item: object) -> bool:
            return True
    init = Liveness.__init__

    def as_before(self: Liveness, inv: Invariants) -> None:
        init(self, inv)
        self.started = _Everything()
    monkeypatch.setattr(Liveness, "__init__", as_before)
    report, given_back = _late_grants_run(monkeypatch)
    assert given_back >= 1
    assert any("(L1: only the owner stops" in v for v in report["invariant_violations"])


def test_a_lost_execution_reported_failed_is_a_violation() -> None:
    from protocols.events import StartExecution
    inv, live = _liveness()
    live.check_lost_attempts = True
    live.on_exec_start("h", StartExecution(execution_id="j1/0/1", job_id="j1", slot=0,
                                           task={}, env={}, timeout=60), 1.0)
    live.on_crash("h", 2.0)
    live.on_notify("o", "execution_failed", {"execution_id": "j1/0/1", "status": "failed"}, 3.0)
    assert any("(L2" in v for v in inv.violations)


def test_no_retransmission_is_caught_in_calm_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Removing retransmission entirely passed every sweep before L4."""
    from protocols.holder import Holder
    from protocols.outbox import Outbox
    from simnet.mutants import SWEEPS

    def once(self: Any, key: Hashable) -> None:
        self._pending.pop(key, None)  # sent once, never again
    renew = Holder._renew

    def renew_without_retries(self: Any, held: Any) -> None:
        renew(self, held)
        held.next_renew = self.out.now + self.t.renew_interval  # no quick retry
        self.out.timer(("renew", held.execution_id), held.next_renew)
    monkeypatch.setattr(Outbox, "on_retransmit_timer", once)
    monkeypatch.setattr(Holder, "_renew", renew_without_retries)
    for seed in range(10):
        report = run_scenario(RunOptions(seed=seed, **SWEEPS["calm"]))
        if any("(L4" in v for v in report["invariant_violations"]):
            return
    pytest.fail("no seed caught a core that never retransmits")


def test_calm_mode_passes_on_the_real_core() -> None:
    from simnet.mutants import SWEEPS
    for seed in range(3):
        report = run_scenario(RunOptions(seed=seed, **SWEEPS["calm"]))
        assert report["invariant_violations"] == [], seed
        assert report["lost"] == 0


# --- byzantine peers ---------------------------------------------------------------------


def test_honest_nodes_stay_safe_among_liars() -> None:
    report = run_scenario(RunOptions(seed=4, nodes=6, jobs=15, duration=240.0,
                                     byzantine=0.34))
    assert report["invariant_violations"] == []
    assert report["byzantine_frames"] > 100
    assert len(report["byzantine_nodes"]) == 2
    assert report["dropped"]  # the lies reached the honest nodes and were refused


def test_results_from_any_sender_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner forgetting to check who speaks for an execution."""
    original: Callable[..., Any] = owner_module.Owner._lookup

    def lookup(self: Any, sender: str, exec_id: str) -> Any:
        job, slot, execution = original(self, slot_holder(self, exec_id) or sender, exec_id)
        return job, slot, execution

    def slot_holder(self: Any, exec_id: str) -> str | None:
        try:
            job_id, index, _ = owner_module.parse_execution_id(exec_id)
            found = self.jobs[job_id].slots[index].find(exec_id)
        except (KeyError, IndexError, ValueError):
            return None
        return found.node if found is not None else None
    monkeypatch.setattr(owner_module.Owner, "_lookup", lookup)
    for seed in range(10):
        report = run_scenario(RunOptions(seed=seed, nodes=6, jobs=15, duration=240.0,
                                         byzantine=0.34))
        if report["invariant_violations"]:
            return
    pytest.fail("no seed caught an owner that takes results from any peer")


def test_unknown_mutation_is_one_clear_error() -> None:
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "simnet.mutants", "--only", "nope"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "unknown mutation(s): nope"


def test_a_sweep_reproduce_line_carries_the_harsh_modes() -> None:
    from simnet.cli import reproduce_command
    kw = {"nodes": 4, "jobs": 5, "loss": 0.0, "duration": 120.0, "submit_window": 60.0,
          "drain": 1800.0, "workload": "plain", "latency_tail": 0.05, "pause_rate": 0.5,
          "clock_skew": 0.01, "byzantine": 0.25, "reorder_delay": 5.0, "calm_after": 90.0,
          "liveness_bound": 300.0}
    line = reproduce_command(3, kw)
    for flag in ("--latency-tail 0.05", "--pause-rate 0.5", "--clock-skew 0.01",
                 "--byzantine 0.25", "--reorder-delay 5s", "--calm-after 90s",
                 "--liveness-bound 300s"):
        assert flag in line


def test_a_one_way_link_failure_cuts_one_direction_only() -> None:
    engine, log = _engine(timer_at=100.0)
    engine.start_node(0)
    engine.start_node(1)
    engine.network.block(0, 1)
    engine.call_at(1.0, lambda: engine.send("a", "b", b"lost"))
    engine.run(until=5.0)
    assert log == []
    assert not engine.network.connected(0, 1) and not engine.network.connected(1, 0)
    engine.network.unblock(0, 1)
    engine.call_at(6.0, lambda: engine.send("a", "b", b"through"))
    engine.run(until=10.0)
    assert [e[2] for e in log] == [b"through"]


def test_a_lease_counted_from_the_ack_receipt_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted bug of issue 11: the holder extends its lease from the
    ack's receipt; a late ack then outlives the owner's ttl + grace."""
    from protocols.holder import Holder
    from simnet.network import NetConfig
    original = Holder.on_renew_ack

    def from_receipt(self: Any, sender: str, ack: Any) -> None:
        original(self, sender, ack)
        held = self.held.get(ack.execution_id)
        if held is not None and ack.valid:
            held.valid_until = max(held.valid_until, self.out.now + held.ttl)

    def late_ack_run(seed: int) -> list[str] | None:
        c = Cluster(3, seed, net=NetConfig(tail=0.5),
                    configure=lambda i, f: {**f, "compute": i != 0})  # n0000 owns, never holds
        c.start()
        c.submit(batch_spec("long", task=sim_task(80_000, timeout_ms=200_000)), owner="n0000",
                 at=2.0)
        c.run_until(45.0)
        holders = [n for n in c.ids if any(k[0] == c.idx(n) for k in c.engine.executor.running)]
        if len(holders) != 1:  # the tail already cost this seed its first lease: not the case
            return None
        c.block(holders[0], "n0000", 40.0)  # its renewals stop reaching the owner; acks come
        c.run_until(120.0)
        return list(c.violations)

    # Which seed's tail delays an ack past the ttl moves with the traces:
    # sweep a few, then show those seeds run clean without it.
    with monkeypatch.context() as planted:
        planted.setattr(Holder, "on_renew_ack", from_receipt)
        caught = {}
        for seed in range(2, 22):
            violations = late_ack_run(seed) or []
            if any("after its owner saw the lease expire" in v for v in violations):
                caught[seed] = violations
                break
    assert caught, "no seed caught a lease counted from the ack's receipt"
    # Without the bug the same seeds run clean (where the case arises at all).
    clean = [late_ack_run(seed) for seed in range(2, 22)]
    assert all(v in (None, []) for v in clean) and [] in clean, clean
