"""Job kinds (cron, daemon, service, ops) in the simulator, under faults.

Every cluster runs both checker sets (simnet.invariants and
simnet.kind_invariants) from its first event; the scenarios add their own
expectations, the sweep runs the ``kinds`` workload over many seeds, and the
last section feeds each kind checker a hand-made violating history (or a
deliberately broken core) to show that it can fail.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import pytest

from protocols.config import Timings
from protocols.events import StartExecution, SuspendJob
from simnet.harness import Cluster
from simnet.invariants import Invariants, split_execution_id
from simnet.kind_invariants import (
    Bounds,
    KindInvariants,
    default_bounds,
    parse_run_id,
    run_parent,
    virtual,
    wall_ms,
)
from simnet.network import NetConfig
from simnet.runner import BIG_NODE
from simnet.workload import cron_spec, forever_task, kind_spec, sim_task
from tests.simnetcli import run_simnet

pytest.importorskip("protocols.node")

TIMINGS = Timings()
BOUNDS = default_bounds(TIMINGS)
TTL_GRACE = TIMINGS.lease_ttl + TIMINGS.lease_grace
POLICIES = ("skip", "allow", "replace", "buffer_one")


def configure(*owners_only: str) -> Callable[[int, dict[str, Any]], dict[str, Any]]:
    """Big nodes (capacity never blocks); ``owners_only`` own jobs, never bid."""
    def conf(i: int, fields: dict[str, Any]) -> dict[str, Any]:
        fields = {**fields, **BIG_NODE}
        if fields["node_id"] in owners_only:
            fields["compute"] = False
        return fields
    return conf


def clean(c: Cluster) -> None:
    assert c.violations == [], c.violations[:3]


def runs_of(c: Cluster, owner: str, job: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = c.core(owner).runs(job)
    return runs


def live(c: Cluster, job: str) -> dict[str, list[str]]:
    """node -> execution ids of ``job`` running there (executor ground truth)."""
    out: dict[str, list[str]] = {}
    for (idx, eid) in c.engine.executor.running:
        if parse_run_id(eid) is not None and eid.startswith(f"{job}/"):
            out.setdefault(c.ids[idx], []).append(eid)
    return out


def stop_all(c: Cluster, jobs: list[str]) -> None:
    """Cancel ``jobs``; every job ends and every execution stops within TTL + grace."""
    for job in jobs:
        c.cancel(job, reason="test over")
    assert c.run_until_done(c.now + 60)
    c.run_until(c.now + TTL_GRACE + 1.0)
    clean(c)
    assert c.engine.executor.running == {}
    lost = c.inv.finish(c.owned(), c.now, c.submitted)
    assert lost == [], lost
    clean(c)


# --- cron ---------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_cron_owner_crash_and_restart_each_overlap_policy(policy: str) -> None:
    c = Cluster(6, seed=41, configure=configure("n0000"))
    c.start()
    c.run_until(3.0)
    # Runs (7 s) outlast the period (5 s): every policy has to decide.
    job = c.submit(cron_spec("c", 5000, 7000, policy, catch_up_ms=60_000), owner="n0000")
    c.run_until(40.0)
    c.crash("n0000")
    c.run_until(60.0)  # 45, 50, 55 (and 60) pass while the owner is down
    c.restart("n0000")
    c.run_until(120.0)
    c.kinds.finish(c.now)  # C2: every time while the owner was up (or caught up) handled
    clean(c)
    # The whole history as notified (the owner trims what it keeps).
    entries = {t: e for (j, t), e in c.kinds.cron_entries.items() if j == job}
    # 45, 50 and 55 passed while down: one missed entry; the catch-up handles 60 only.
    assert c.kinds.missed[job] == [(wall_ms(45.0), wall_ms(55.0))]
    assert len(entries) == 120 // 5 - 3  # every other time from 5 s to 120 s, once
    down = [(virtual(t), e.t) for t, e in entries.items() if 40.0 < virtual(t) <= 60.0]
    assert down == [(60.0, 60.0)], "only the newest time passed while down is handled"
    runs = runs_of(c, "n0000", job)
    most = c.kinds.cron_concurrency.get(job, 0)
    if policy == "skip":
        assert any(e.outcome == "skipped" for e in entries.values()) and most == 1
    elif policy == "allow":
        assert most >= 2  # runs overlap
    elif policy == "replace":
        assert any("replaced by run" in r["reason"] for r in runs)
    else:
        assert most == 1 and c.kinds.cron_outcomes.get("buffered", 0) >= 1
    stop_all(c, [job])


@pytest.mark.parametrize("policy", POLICIES)
def test_cron_under_message_loss_each_overlap_policy(policy: str) -> None:
    net = NetConfig(loss=0.2, duplicate=0.1, reorder=0.1)
    c = Cluster(6, seed=42, net=net, configure=configure())
    c.start()
    job = c.submit(cron_spec("lossy", 4000, 3000, policy, catch_up_ms=30_000), at=3.0)
    c.run_until(100.0)
    c.kinds.finish(c.now)
    clean(c)
    runs = runs_of(c, c.owner_of(job) or "", job)
    assert sum(r["outcome"] == "completed" for r in runs) >= 5
    assert len(c.kinds.cron_started) >= 15
    stop_all(c, [job])


def test_cron_owner_down_longer_than_catch_up_records_missed() -> None:
    c = Cluster(4, seed=43, configure=configure("n0000"))
    c.start()
    job = c.submit(cron_spec("late", 5000, 1000, "allow", catch_up_ms=10_000),
                   owner="n0000", at=3.0)
    c.run_until(20.0)
    c.crash("n0000")
    c.run_until(50.0)  # 30 s down: the times older than 10 s are missed
    c.restart("n0000")
    c.run_until(80.0)
    c.kinds.finish(c.now)
    clean(c)
    runs = runs_of(c, "n0000", job)
    missed = [r for r in runs if r["outcome"] == "missed"]
    # 25 .. 50 passed while down: the newest (50) runs, the 5 before it are missed.
    assert len(missed) == 1 and missed[0]["count"] == 5
    assert virtual(missed[0]["first_scheduled_ms"]) == 25.0
    assert virtual(missed[0]["scheduled_ms"]) == 45.0
    caught_up = [r for r in runs if r["run_id"] and 40.0 <= virtual(r["scheduled_ms"]) <= 50.0]
    assert [virtual(r["scheduled_ms"]) for r in caught_up] == [50.0]
    assert any(r["run_id"] and virtual(r["scheduled_ms"]) > 55.0 for r in runs)
    stop_all(c, [job])


def test_cron_suspended_times_are_skipped_not_missed() -> None:
    c = Cluster(4, seed=44, configure=configure())
    c.start()
    job = c.submit(cron_spec("sus", 5000, 1000, "skip"), owner="n0001", at=3.0)
    c.run_until(20.0)
    c.engine.inject(c.idx("n0001"), SuspendJob(job, True), c.now)
    c.run_until(40.0)
    c.engine.inject(c.idx("n0001"), SuspendJob(job, False), c.now)
    c.run_until(60.0)
    c.kinds.finish(c.now)
    clean(c)
    runs = runs_of(c, "n0001", job)
    assert any("suspended" in r["reason"] for r in runs)
    assert any(r["run_id"] and virtual(r["scheduled_ms"]) > 40.0 for r in runs)
    stop_all(c, [job])


# --- daemon -----------------------------------------------------------------------------


def test_daemon_joiners_crashes_and_steady_state() -> None:
    c = Cluster(8, seed=51, configure=configure("n0000"), record=True)
    c.start([f"n{i:04d}" for i in range(6)])
    everywhere = c.submit(kind_spec("d", "daemon", task=forever_task()), owner="n0000", at=3.0)
    zoned = c.submit(kind_spec("dz", "daemon", labels={"zone": "b"}, task=forever_task()),
                     owner="n0001", at=3.0)
    c.at(20.0, lambda: c.join("n0006"))
    c.at(35.0, lambda: c.join("n0007"))  # zone b: joins both daemons
    c.at(50.0, lambda: c.crash("n0003"))
    c.at(75.0, lambda: c.restart("n0003"))
    c.at(90.0, lambda: c.crash("n0001"))  # the zoned daemon's owner (and a holder)
    c.at(100.0, lambda: c.restart("n0001"))
    c.run_until(100.0 + BOUNDS.daemon + 5.0)
    c.kinds.finish(c.now)
    clean(c)
    assert sorted(live(c, everywhere)) == [f"n{i:04d}" for i in range(1, 8)]
    assert sorted(live(c, zoned)) == ["n0001", "n0004", "n0007"]
    assert all(len(e) == 1 for e in live(c, everywhere).values())
    assert c.core("n0000").describe(everywhere)["live"] == 7
    summary = c.kinds.summary()
    assert summary["joins_quiet"] == 3
    assert summary["join_latency_max"] <= BOUNDS.join
    assert summary["daemon_recovery_max"][0] <= BOUNDS.daemon
    stop_all(c, [everywhere, zoned])


def test_daemon_restarts_in_place_under_its_lease() -> None:
    # The task exits every 4 s: the holder restarts it in place ("<id>#<n>")
    # twice, then reports; the owner re-grants.  No checker may flag the ids.
    c = Cluster(3, seed=52, configure=configure("n0000"), record=True)
    c.start()
    task = sim_task(4000, attempts=3, backoff_ms=500, timeout_ms=60_000)
    job = c.submit(kind_spec("flap", "daemon", task=task), owner="n0000", at=3.0)
    c.run_until(60.0)
    clean(c)
    restarted = c.notes_of("execution_restarted")
    assert restarted and any(n.data["restarts"] == 2 for n in restarted)
    epochs = {n.data["epoch"] for n in c.notes_of("lease_granted") if n.data["job_id"] == job}
    assert len(epochs) >= 2
    stop_all(c, [job])


# --- service ------------------------------------------------------------------------------


def test_service_recovers_after_each_holder_crash() -> None:
    c = Cluster(7, seed=61, configure=configure("n0000"))
    c.start()
    job = c.submit(kind_spec("svc", "service", task=forever_task(), count=3),
                   owner="n0000", at=3.0)
    c.run_until(15.0)
    t = 15.0
    for _ in range(4):  # crash a current holder, bring it back later
        holder = sorted(live(c, job))[0]
        c.crash(holder)
        c.at(c.now + 20.0, functools.partial(c.restart, holder))
        t += 40.0
        c.run_until(t)
    c.run_until(c.now + BOUNDS.service)
    c.kinds.finish(c.now)
    clean(c)
    assert sum(len(v) for v in live(c, job).values()) == 3
    worst = c.kinds.summary()["service_recovery_max"]
    assert worst is not None and worst[0] <= BOUNDS.service
    assert len(c.kinds.service_recovery) >= 4
    stop_all(c, [job])


def test_service_owner_crash_then_recovery() -> None:
    c = Cluster(5, seed=62, configure=configure("n0000"))
    c.start()
    job = c.submit(kind_spec("svc", "service", task=forever_task(), count=2),
                   owner="n0000", at=3.0)
    c.run_until(20.0)
    c.crash("n0000")  # holders fence themselves after TTL: 0 live while it is down
    c.run_until(50.0)
    assert live(c, job) == {}
    c.restart("n0000")
    c.run_until(50.0 + BOUNDS.service)
    c.kinds.finish(c.now)
    clean(c)
    assert sum(len(v) for v in live(c, job).values()) == 2
    stop_all(c, [job])


# --- ops ------------------------------------------------------------------------------------

# A bug this file found (fixed): an ops job took a single census round, so a
# matching node whose answers were all lost was never asked again and the job
# completed without it (O2: "ops ... completed ... without running on ...").
# Now holders repeat census answers until released, late answers still get a
# slot, and the census repeats until rounds find nobody new.


def test_ops_with_crashes_runs_once_per_matching_node() -> None:
    c = Cluster(9, seed=72, net=NetConfig(duplicate=0.1, reorder=0.2),
                configure=configure("n0000"), record=True)
    c.start()
    job = c.submit(kind_spec("o", "ops", labels={"zone": "c"}, task=sim_task(8000)),
                   owner="n0000", at=5.0)
    c.at(8.0, lambda: c.crash("n0002"))  # a holder dies mid-run: re-granted on its return
    c.at(12.0, lambda: c.restart("n0002"))
    assert c.run_until_done(200.0)
    c.kinds.finish(c.now)
    clean(c)
    assert c.state_of(job) == "completed"
    nodes = sorted(s["node"] for s in c.core("n0000").describe(job)["slots"])
    assert nodes == ["n0002", "n0005", "n0008"]
    accepted = [n.data for n in c.notes_of("result_accepted") if n.data["job_id"] == job]
    assert sorted(d["holder"] for d in accepted) == nodes
    assert c.inv.finish(c.owned(), c.now, c.submitted) == []


@pytest.mark.parametrize("seed", [73, 74, 75])
def test_ops_under_loss_is_safe_and_completes(seed: int) -> None:
    """Loss, duplication, reordering: an ops job completes, runs only on
    matching nodes and at most once per node (O1, checked throughout)."""
    net = NetConfig(loss=0.2, duplicate=0.1, reorder=0.1)
    c = Cluster(9, seed=seed, net=net, configure=configure("n0000"), record=True)
    c.start()
    job = c.submit(kind_spec("o", "ops", labels={"zone": "a"},
                             task=sim_task(3000, fail_rate=0.2)), owner="n0000", at=5.0)
    assert c.run_until_done(300.0)
    clean(c)
    assert c.state_of(job) in ("completed", "failed")
    nodes = [s["node"] for s in c.core("n0000").describe(job)["slots"]]
    assert len(nodes) == len(set(nodes)) and set(nodes) <= {"n0003", "n0006"}
    assert c.inv.finish(c.owned(), c.now, c.submitted) == []


def test_ops_under_loss_runs_once_per_matching_node() -> None:
    net = NetConfig(loss=0.2, duplicate=0.1, reorder=0.1)
    c = Cluster(9, seed=71, net=net, configure=configure("n0000"), record=True)
    c.start()
    job = c.submit(kind_spec("o", "ops", labels={"zone": "b"}, task=sim_task(2000)),
                   owner="n0000", at=5.0)
    assert c.run_until_done(120.0)
    clean(c)
    assert c.state_of(job) == "completed"
    nodes = sorted(s["node"] for s in c.core("n0000").describe(job)["slots"])
    assert nodes == ["n0001", "n0004", "n0007"]  # the zone-b nodes, once each
    accepted = [n.data for n in c.notes_of("result_accepted") if n.data["job_id"] == job]
    assert sorted(d["holder"] for d in accepted) == nodes
    c.kinds.finish(c.now)
    clean(c)


@pytest.mark.parametrize("seed", [71, 2, 3, 5, 8, 13])
def test_o2_holds_where_the_single_round_census_lost_nodes(seed: int) -> None:
    """Seed 71 lost n0004's census answers under the old one-round census."""
    net = NetConfig(loss=0.2, duplicate=0.1, reorder=0.1)
    c = Cluster(9, seed=seed, net=net, configure=configure("n0000"))
    c.start()
    c.submit(kind_spec("o", "ops", labels={"zone": "b"}, task=sim_task(2000)),
             owner="n0000", at=5.0)
    assert c.run_until_done(120.0)
    c.kinds.check_ops(c.now)
    assert c.violations == []


# --- the kinds workload: sweep and determinism ------------------------------------------------

SWEEP = ("--nodes", "8", "--jobs", "10", "--duration", "2m", "--duplicate", "0.05",
         "--reorder", "0.1", "--crash-rate", "0.1", "--partition-rate", "0.5",
         "--workload", "kinds", "--output", "json")


_simnet = run_simnet


def test_kinds_sweep_with_loss() -> None:
    summary = _simnet("sweep", "--seeds", "0..59", "--loss", "0.1", *SWEEP)
    assert summary["seeds"] == 60
    assert summary["failures"] == [], json.dumps(summary["failures"][:3], indent=1)


def test_kinds_sweep_lossless_enforces_bounds_during_faults() -> None:
    summary = _simnet("sweep", "--seeds", "100..159", *SWEEP)
    assert summary["failures"] == [], json.dumps(summary["failures"][:3], indent=1)
    worst = summary["kinds_worst"]
    assert worst["join_latency_max"]["value"] <= BOUNDS.join
    assert worst["daemon_recovery_max"]["value"] <= BOUNDS.daemon
    assert worst["service_recovery_max"]["value"] <= BOUNDS.service


def test_kinds_same_seed_same_trace() -> None:
    args = ("run", "--seed", "7", "--loss", "0.1", *SWEEP)
    a = _simnet(*args, hashseed="1")
    b = _simnet(*args, hashseed="2")
    assert a["trace_hash"] == b["trace_hash"]
    assert a["invariant_violations"] == [] and a["lost"] == 0
    assert a["kinds"]["cron_runs_started"] > 0
    assert a["kinds"] == b["kinds"]


# --- the checkers can fail -------------------------------------------------------------------


class World:
    """A hand-made world: labels per node, partitions as groups."""

    def __init__(self, labels: dict[str, dict[str, str]]) -> None:
        self.labels = labels
        self.group: dict[str, int] = {}

    def matches(self, node: str, labels: Any) -> bool:
        mine = self.labels.get(node)
        return mine is not None and all(mine.get(k) == v for k, v in labels.items())

    def connected(self, a: str, b: str) -> bool:
        return self.group.get(a, 0) == self.group.get(b, 0)


class Fake:
    """Drives a KindInvariants by hand: notifies, executions, scheduled checks."""

    def __init__(self, nodes: int = 4, bounds: Bounds | None = None,
                 absent: tuple[str, ...] = ()) -> None:
        self.world = World({f"n{i}": {"zone": "a" if i % 2 else "b"} for i in range(nodes)})
        self.checks: list[tuple[float, Callable[[], None]]] = []
        self.violations: list[str] = []
        self.inv = KindInvariants(TIMINGS, self.schedule, self.world,
                                  lambda t, text: self.violations.append(f"t={t:.3f}s: {text}"),
                                  bounds or Bounds(daemon=30.0, service=30.0, join=8.0))
        for i in range(nodes):
            if f"n{i}" not in absent:
                self.inv.on_start(f"n{i}", 0.0)

    def schedule(self, at: float, fn: Callable[[], None]) -> None:
        self.checks.append((at, fn))

    def run(self, until: float) -> None:
        while True:
            due = sorted((c for c in self.checks if c[0] <= until), key=lambda c: c[0])
            if not due:
                return
            self.checks.remove(due[0])
            due[0][1]()

    def note(self, node: str, kind: str, t: float, **data: Any) -> None:
        self.run(t)
        self.inv.on_notify(node, kind, data, t)

    def submit(self, job: str, spec: dict[str, Any], owner: str = "n0", t: float = 0.0) -> None:
        self.inv.expect(job, spec)
        self.note(owner, "job_submitted", t, job_id=job, owner=owner, job_type=spec["type"])

    def start(self, node: str, eid: str, t: float) -> None:
        self.run(t)
        job = eid.rsplit("/", 2)[0]
        self.inv.on_exec_start(node, StartExecution(eid, job, 0, {}, {}, 60.0), t)

    def end(self, node: str, eid: str, t: float) -> None:
        self.run(t)
        self.inv.on_exec_end(node, eid, "succeeded", t)

    def has(self, text: str) -> bool:
        return any(text in v for v in self.violations)


def cron(overlap: str = "skip", catch_up_ms: int = 60_000) -> dict[str, Any]:
    return cron_spec("c", 10_000, 1000, overlap, catch_up_ms=catch_up_ms)


def ms(t: float) -> int:
    return wall_ms(t)


def started(f: Fake, t: float, sched: float, job: str = "c1", owner: str = "n0") -> str:
    run = f"{job}@{ms(sched)}"
    f.note(owner, "cron_run", t, job_id=job, run_id=run, scheduled_ms=ms(sched),
           outcome="queued", reason="")
    f.note(owner, "job_submitted", t, job_id=run, owner=owner, job_type="run")
    f.note(owner, "cron_run_started", t, job_id=job, run_id=run, scheduled_ms=ms(sched))
    return run


def test_clean_cron_history_passes() -> None:
    f = Fake()
    f.submit("c1", cron(), t=1.0)
    for k in range(1, 6):
        run = started(f, 10.0 * k, 10.0 * k)
        f.start("n1", f"{run}/0/1", 10.0 * k + 0.1)
        f.end("n1", f"{run}/0/1", 10.0 * k + 1.1)
        f.note("n0", "job_state", 10.0 * k + 1.2, job_id=run, state="completed", reason="")
    f.inv.finish(55.0)
    assert f.violations == []


def test_c1_second_run_for_one_time_fires() -> None:
    f = Fake()
    f.submit("c1", cron(), t=1.0)
    started(f, 10.0, 10.0)
    f.inv.on_crash("n0", 12.0)
    f.inv.on_start("n0", 15.0)
    run = f"c1@{ms(10.0)}"
    f.note("n0", "job_submitted", 15.0, job_id=run, owner="n0", job_type="run")
    f.note("n0", "cron_run_started", 15.0, job_id="c1", run_id=run, scheduled_ms=ms(10.0))
    assert f.has("accepted twice") and f.has("second run")


def test_c1_time_handled_twice_early_run_and_unknown_run_fire() -> None:
    f = Fake()
    f.submit("c1", cron(), t=1.0)
    started(f, 10.0, 10.0)
    f.note("n0", "cron_run", 11.0, job_id="c1", run_id="", scheduled_ms=ms(10.0),
           outcome="skipped", reason="run x still active")
    assert f.has("handled twice")
    started(f, 15.0, 20.0)  # five seconds early
    assert f.has("before its time")
    f.start("n1", f"c1@{ms(30.0)}/0/1", 31.0)  # an execution of a run never started
    assert f.has("never started")


def test_c2_skipped_scheduled_time_fires() -> None:
    f = Fake()
    f.submit("c1", cron(), t=1.0)
    started(f, 10.0, 10.0)
    started(f, 30.0, 30.0)  # 20.0 was never handled, though the owner was up
    f.inv.check_cron(35.0)
    assert f.has(f"time {ms(20.0)}") and f.has("never handled")
    f2 = Fake()
    f2.submit("c1", cron(catch_up_ms=60_000), t=1.0)
    f2.inv.on_crash("n0", 5.0)
    f2.inv.on_start("n0", 25.0)  # back 15 s after 10.0: inside catch_up
    f2.note("n0", "cron_run", 25.0, job_id="c1", run_id="", scheduled_ms=ms(20.0),
            outcome="missed", reason="2 scheduled time(s) older than catch_up")
    f2.inv.check_cron(28.0)
    assert f2.has("recorded missed")


def test_c2_times_owner_missed_are_not_required() -> None:
    f = Fake()
    f.submit("c1", cron(catch_up_ms=0), t=1.0)
    f.inv.on_crash("n0", 5.0)
    f.inv.on_start("n0", 25.0)  # 10.0 and 20.0 passed while down, catch_up 0
    assert f.inv.required_times("c1", 28.0) == []
    started(f, 30.0, 30.0)
    assert f.inv.required_times("c1", 35.0) == [ms(30.0)]


def test_c2_illegitimate_skip_reasons_fire() -> None:
    f = Fake()
    f.submit("c1", cron(), t=1.0)
    f.note("n0", "cron_run", 10.0, job_id="c1", run_id="", scheduled_ms=ms(10.0),
           outcome="skipped", reason="run c1@1 still active")
    assert f.has("no run of c1 is active")
    f.note("n0", "cron_run", 20.0, job_id="c1", run_id="", scheduled_ms=ms(20.0),
           outcome="skipped", reason="the schedule is suspended")
    assert f.has("not suspended")
    f.note("n0", "cron_run", 30.0, job_id="c1", run_id="", scheduled_ms=ms(30.0),
           outcome="skipped", reason="felt like it")
    assert f.has("unknown reason")


def missed(f: Fake, t: float, first: float, last: float, count: int) -> None:
    f.note("n0", "cron_run", t, job_id="c1", run_id="", scheduled_ms=ms(last),
           outcome="missed", reason="n scheduled time(s) were not run", count=count,
           first_scheduled_ms=ms(first))


def test_c1_missed_ranges_are_checked() -> None:
    f = Fake()
    f.submit("c1", cron(), t=1.0)
    started(f, 10.0, 10.0)
    f.inv.on_crash("n0", 12.0)
    f.inv.on_start("n0", 45.0)
    missed(f, 45.0, 20.0, 30.0, 2)
    started(f, 45.0, 40.0)
    assert f.violations == []
    missed(f, 46.0, 10.0, 10.0, 1)  # 10.0 already ran
    assert f.has("already handled")
    missed(f, 47.0, 30.0, 30.0, 1)  # inside the range recorded before
    assert f.has(f"covers time {ms(30.0)}")
    missed(f, 48.0, 50.0, 60.0, 3)  # a count that is not the schedule's
    assert f.has("counts 3 times, the schedule has 2") and f.has("before it was due")
    f.note("n0", "cron_run", 49.0, job_id="c1", run_id="", scheduled_ms=ms(20.0),
           outcome="skipped", reason="the cron job was stopped")
    assert f.has("after it was recorded missed")


def test_c4_a_time_handled_when_a_later_one_is_due_fires() -> None:
    f = Fake()
    f.submit("c1", cron(), t=1.0)
    f.inv.on_crash("n0", 5.0)
    f.inv.on_start("n0", 35.0)
    started(f, 35.0, 20.0)  # 30.0 is due too: only the newest may be handled
    assert f.has("C4: newest only")
    started(f, 35.0, 30.0)
    assert len([v for v in f.violations if "newest only" in v]) == 1


def test_c2_after_downtime_only_the_newest_time_is_required() -> None:
    f = Fake()
    f.submit("c1", cron(catch_up_ms=60_000), t=1.0)
    f.inv.on_crash("n0", 5.0)
    f.inv.on_start("n0", 35.0)  # 10, 20 and 30 passed while down
    assert f.inv.required_times("c1", 38.0) == [ms(30.0)]
    missed(f, 35.0, 10.0, 30.0, 3)
    f.inv.check_cron(38.0)
    assert f.has(f"time {ms(30.0)}") and f.has("recorded missed")


@pytest.mark.parametrize("overlap", ["skip", "buffer_one"])
def test_c3_two_runs_executing_at_once_fires(overlap: str) -> None:
    f = Fake()
    f.submit("c1", cron(overlap), t=1.0)
    first = started(f, 10.0, 10.0)
    f.start("n1", f"{first}/0/1", 10.1)
    f.note("n0", "job_state", 19.0, job_id=first, state="failed", reason="timeout")
    second = started(f, 20.0, 20.0)
    f.start("n2", f"{second}/0/1", 20.1)  # the first still runs on n1
    assert f.has(f"while n1 still runs {first}/0/1")


def test_c3_allow_tolerates_overlap() -> None:
    f = Fake()
    f.submit("c1", cron("allow"), t=1.0)
    f.start("n1", f"{started(f, 10.0, 10.0)}/0/1", 10.1)
    f.start("n2", f"{started(f, 20.0, 20.0)}/0/1", 20.1)
    assert f.violations == [] and f.inv.cron_concurrency["c1"] == 2


def daemon(labels: dict[str, str] | None = None) -> dict[str, Any]:
    return kind_spec("d", "daemon", labels=labels, task=forever_task())


def test_d1_daemon_node_left_uncovered_fires() -> None:
    f = Fake()
    f.submit("d1", daemon(), owner="n0", t=1.0)
    for n in ("n0", "n1", "n2"):
        f.start(n, f"d1/{n[1]}/1", 2.0)
    f.run(1.0 + 30.0 + 1.0)
    assert f.has("daemon d1 short since t=1.000s (n3)")


def test_d1_fault_restarts_the_bound_and_recovery_is_measured() -> None:
    f = Fake()
    f.submit("d1", daemon({"zone": "a"}), owner="n1", t=1.0)  # n1, n3 match
    f.start("n1", "d1/0/1", 2.0)
    f.run(25.0)
    f.inv.on_fault(25.0, "partition")  # a fault: the bound counts from here
    f.start("n3", "d1/1/1", 50.0)  # 25 s after the fault: within 30
    f.run(100.0)
    assert f.violations == []
    assert f.inv.daemon_recovery == [(25.0, "d1", 50.0)]
    f.inv.check_steady(100.0)
    assert f.violations == []
    f.start("n3", "d1/2/1", 101.0)  # a second execution on n3
    f.run(101.0 + TTL_GRACE + 1.0)
    assert f.has("n3 runs 2 executions")
    f.inv.check_steady(120.0)
    assert f.has("several on")


def test_d1_not_enforced_on_a_lossy_network_but_measured() -> None:
    f = Fake()
    f.inv.enforce = False
    f.submit("d1", daemon({"zone": "a"}), owner="n1", t=1.0)
    f.start("n1", "d1/0/1", 2.0)
    f.run(60.0)
    assert f.violations == []
    f.inv.calm(60.0)  # the network calmed down: the bound runs from now
    f.run(60.0 + 31.0)
    assert f.has("daemon d1 short since t=1.000s (n3)")


def test_d2_joiner_without_daemon_fires() -> None:
    f = Fake(nodes=5, absent=("n4",))
    f.submit("d1", daemon(), owner="n0", t=1.0)
    f.inv.on_start("n4", 20.0)
    f.inv.on_fault(20.0, "join")
    f.run(20.0 + 8.0)
    assert f.has("joiner n4")
    quiet = Fake(nodes=5, absent=("n4",))
    quiet.submit("d1", daemon(), owner="n0", t=1.0)
    quiet.inv.on_start("n4", 20.0)
    quiet.inv.on_fault(21.0, "crash")  # a fault in the window voids the joiner bound
    quiet.run(20.0 + 8.0)
    assert not quiet.has("joiner")


def test_s1_service_short_too_long_fires_and_owner_down_pauses_it() -> None:
    f = Fake()
    f.submit("s1", kind_spec("s", "service", task=forever_task(), count=2), t=1.0)
    f.start("n1", "s1/0/1", 2.0)
    f.start("n2", "s1/1/1", 2.0)
    f.inv.on_crash("n2", 10.0)
    f.inv.on_fault(10.0, "crash")
    f.run(39.0)
    assert f.violations == []
    f.run(41.0)
    assert f.has("service s1 short since t=10.000s (1 of 2 executions)")
    paused = Fake()
    paused.submit("s1", kind_spec("s", "service", task=forever_task(), count=1), t=1.0)
    paused.inv.on_crash("n0", 2.0)  # the owner is down: nobody can recover it
    paused.run(100.0)
    assert paused.violations == []
    paused.inv.on_start("n0", 100.0)
    paused.inv.on_fault(100.0, "restart")
    paused.run(131.0)
    assert paused.has("service s1 short")


def test_steady_state_counts_fire() -> None:
    f = Fake()
    f.submit("s1", kind_spec("s", "service", task=forever_task(), count=2), t=1.0)
    for k, n in enumerate(("n1", "n2", "n3")):
        f.start(n, f"s1/{k}/1", 2.0)
    f.inv.check_steady(50.0)
    assert f.has("service s1 in the steady state: 3 executions, want 2")


def test_l1_long_running_job_ending_by_itself_fires() -> None:
    f = Fake()
    f.submit("d1", daemon(), t=1.0)
    f.note("n0", "job_state", 5.0, job_id="d1", state="failed", reason="slot 0: oops")
    assert f.has("daemon job d1 ended failed")
    f.submit("s1", kind_spec("s", "service", task=forever_task(), count=1), t=6.0)
    f.inv.cancelled("s1")
    f.note("n0", "job_state", 7.0, job_id="s1", state="stopped", reason="user")
    f.submit("c1", cron(), t=8.0)
    f.note("n0", "job_state", 9.0, job_id="c1", state="completed", reason="")
    assert f.has("cron job c1 ended completed") and not f.has("s1 ended")


def test_l2_execution_outliving_its_stopped_job_fires() -> None:
    f = Fake()
    f.submit("s1", kind_spec("s", "service", task=forever_task(), count=1), t=1.0)
    f.start("n1", "s1/0/1", 2.0)
    f.inv.cancelled("s1")
    f.note("n0", "job_state", 10.0, job_id="s1", state="stopped", reason="user")
    f.start("n2", "s1/0/2", 11.0)  # a late grant's copy started after the stop
    f.run(10.0 + TTL_GRACE + 1.5)
    assert f.has("n1 still runs s1/0/1") and not f.has("n2")
    f.run(11.0 + TTL_GRACE + 2.0)
    assert f.has("n2 still runs s1/0/2 of ended job s1")


def test_o1_and_placement_fire() -> None:
    f = Fake()
    f.submit("p1", kind_spec("o", "ops", labels={"zone": "a"}, task=sim_task()), t=1.0)
    f.start("n2", "p1/0/1", 2.0)  # n2 is zone b
    assert f.has("does not match")
    for epoch in (1, 2):
        f.note("n0", "result_accepted", 5.0 + epoch, job_id="p1", slot=epoch, epoch=1,
               execution_id=f"p1/{epoch}/1", status="succeeded", holder="n1")
    assert f.has("second accepted result on n1")


# --- broken cores are caught in the simulator -------------------------------------------------


def test_broken_skip_policy_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from protocols.cron import CronController

    monkeypatch.setattr(CronController, "_active_runs", lambda self, state: [])
    c = Cluster(4, seed=81, configure=configure())
    c.start()
    c.submit(cron_spec("c", 3000, 7000, "skip"), at=3.0)
    c.run_until(60.0)
    assert any("overlap skip" in v for v in c.violations), c.violations


def test_dropped_scheduled_time_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from protocols.cron import CronController

    original = CronController._fire

    def lossy_fire(self: CronController, job: Any, state: Any, t: int) -> None:
        if (t // 3000) % 4 != 3:  # forget every fourth time, silently
            original(self, job, state, t)
    monkeypatch.setattr(CronController, "_fire", lossy_fire)
    c = Cluster(4, seed=82, configure=configure())
    c.start()
    c.submit(cron_spec("c", 3000, 500, "allow"), at=3.0)
    c.run_until(40.0)
    c.kinds.finish(c.now)
    assert any("never handled" in v for v in c.violations), c.violations


def _catch_up_cluster(policy: str, seed: int, *, down: float = 20.0) -> tuple[Cluster, str]:
    """A 5 s cron job on owner n0000 (owns, never computes), which is down from
    22 s for ``down`` seconds."""
    c = Cluster(4, seed=seed, configure=configure("n0000"))
    c.start()
    job = c.submit(cron_spec("c", 5000, 1000, policy, catch_up_ms=60_000), owner="n0000", at=3.0)
    c.run_until(22.0)
    c.crash("n0000")
    c.run_until(22.0 + down)
    c.restart("n0000")
    c.run_until(60.0)
    c.kinds.finish(c.now)
    return c, job


@pytest.mark.parametrize("policy", POLICIES)
def test_catch_up_starts_one_run_per_policy_in_the_simulator(policy: str) -> None:
    c, job = _catch_up_cluster(policy, 84)
    clean(c)
    # 25, 30, 35 and 40 passed while down: 40 is handled (its policy decides), 25..35 missed.
    assert c.kinds.missed[job] == [(wall_ms(25.0), wall_ms(35.0))]
    assert (job, wall_ms(40.0)) in c.kinds.cron_entries
    assert not any(j == job and 25.0 <= virtual(t) <= 35.0 for j, t in c.kinds.cron_started)


def test_catch_up_of_every_due_time_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The old catch-up (every due time inside catch_up handled): C4 fires."""
    from protocols.cron import CronController
    from protocols.schedule import ScheduledTimes

    def burst(self: CronController, job: Any) -> None:
        state = self.states[job.job_id]
        times, _ = ScheduledTimes(job.spec["schedule"]).between(state.last_ms,
                                                                self._wall_ms(), 100)
        for t in times:
            self._fire(job, state, t)
        state.last_ms = max([state.last_ms, *times])
        self._save(state)
        self._arm(job, state)
    monkeypatch.setattr(CronController, "on_timer", burst)
    c, _ = _catch_up_cluster("allow", 85)
    assert any("newest only" in v for v in c.violations), c.violations


def test_catch_up_running_the_oldest_due_time_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The old ``skip`` defect (the oldest in-window time handled, the newest
    dropped): C2 and C4 fire."""
    from protocols.cron import CronController
    from protocols.schedule import Due, ScheduledTimes

    real_due = ScheduledTimes.due

    def oldest(self: ScheduledTimes, after_ms: int, until_ms: int) -> Due | None:
        due = real_due(self, after_ms, until_ms)
        return None if due is None else Due(due.first_ms, due.first_ms, 1)
    monkeypatch.setattr(ScheduledTimes, "due", oldest)
    original = CronController.on_timer

    def then_forget(self: CronController, job: Any) -> None:
        original(self, job)
        self.states[job.job_id].last_ms = self._wall_ms()  # the rest is never seen again
    monkeypatch.setattr(CronController, "on_timer", then_forget)
    c, _ = _catch_up_cluster("skip", 86)
    assert any("newest only" in v for v in c.violations), c.violations
    assert any("never handled" in v for v in c.violations), c.violations


def test_cron_refire_after_a_quick_restart_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A planted double run: the restored state forgets the newest handled
    time and the run-id guard is gone; the owner is down 1 s.  C1 fires."""
    from protocols.cron import CronController

    original = CronController.restore

    def forgetful(self: CronController, records: dict[str, dict[str, Any]]) -> None:
        original(self, records)
        for state in self.states.values():
            state.last_ms -= 5000
    monkeypatch.setattr(CronController, "restore", forgetful)
    monkeypatch.setattr(CronController, "_handled", lambda self, state, run_id, t: False)
    c, _ = _catch_up_cluster("allow", 87, down=1.0)
    assert any("second run" in v for v in c.violations), c.violations
    assert any("handled twice" in v for v in c.violations), c.violations


def test_daemon_without_recount_misses_joiner(monkeypatch: pytest.MonkeyPatch) -> None:
    from protocols.owner import Owner

    monkeypatch.setattr(Owner, "on_peer_joined", lambda self, node: None)
    slow = Timings(daemon_scan=60.0)  # the census would find the joiner only a minute later
    c = Cluster(5, seed=83, timings=slow, configure=configure("n0000"),
                bounds=default_bounds(TIMINGS))
    c.start([f"n{i:04d}" for i in range(4)])
    c.submit(kind_spec("d", "daemon", task=forever_task()), owner="n0000", at=3.0)
    c.at(20.0, lambda: c.join("n0004"))
    c.run_until(40.0)
    assert any("joiner n0004" in v for v in c.violations), c.violations


def test_service_never_reauctioned_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from protocols.owner import Owner

    original = Owner._open_auction

    def no_second_chance(self: Owner, job: Any, slot: Any) -> None:
        if job.kind != "service" or slot.epoch == 0:
            original(self, job, slot)
    monkeypatch.setattr(Owner, "_open_auction", no_second_chance)
    c = Cluster(5, seed=84, configure=configure("n0000"))
    c.start()
    job = c.submit(kind_spec("s", "service", task=forever_task(), count=2), owner="n0000",
                   at=3.0)
    c.run_until(10.0)
    c.crash(sorted(live(c, job))[0])
    c.run_until(10.0 + BOUNDS.service + 1.0)
    assert any(f"service {job} short" in v for v in c.violations), c.violations


# --- the batch checkers know the kinds ------------------------------------------------------


def test_execution_ids_of_restarts_and_runs_parse() -> None:
    assert split_execution_id("d1/0/3#2") == ("d1", 0, 3)
    assert split_execution_id("d1/0/3#x") is None
    assert parse_run_id("c1@1800000010000/0/1#4") == ("c1@1800000010000", 0, 1, 4)
    assert run_parent("c1@1800000010000") == ("c1", 1800000010000)
    assert run_parent("j000001") is None


def test_long_running_jobs_are_not_lost_unless_stopped() -> None:
    inv = Invariants(TIMINGS, lambda at, fn: None, lambda n, e: False)
    for job, kind in (("d1", "daemon"), ("s1", "service"), ("c1", "cron"), ("b1", "batch")):
        inv.on_notify("o", "job_submitted", {"job_id": job, "slots": 1, "job_type": kind}, 1.0)
    assert inv.unfinished() == ["b1"]
    inv.cancelled("d1")
    assert inv.unfinished() == ["b1", "d1"]


def test_forgotten_finished_cron_run_is_owned_by_nobody() -> None:
    inv = Invariants(TIMINGS, lambda at, fn: None, lambda n, e: False)
    for run in ("c1@1", "c1@2"):
        inv.on_notify("o", "job_submitted", {"job_id": run, "slots": 1, "job_type": "run"}, 1.0)
    inv.on_notify("o", "job_state", {"job_id": "c1@1", "state": "completed", "reason": ""}, 2.0)
    inv.check_ownership({"o": {}}, 3.0)  # the owner trimmed both from its history
    assert len(inv.violations) == 1 and "c1@2 owned by nobody" in inv.violations[0]


def test_joiner_partitioned_from_the_owner_is_not_held_to_the_bound() -> None:
    f = Fake(nodes=5, absent=("n4",))
    f.submit("d1", daemon(), owner="n0", t=1.0)
    f.world.group["n4"] = 1  # it starts on the other side of a partition
    f.inv.on_start("n4", 20.0)
    f.inv.on_fault(20.0, "join")
    f.run(40.0)
    assert not f.has("joiner")
