"""Chain jobs in the simulator: 5-20 stages across 50 nodes under loss,
duplication, partitions and crashes at every step of the handover.

Every cluster runs all checkers from its first event (simnet.chain_invariants:
CH1 one owner after every event, CH1b no orphan stage execution, CH2 one
accepted result per ownership record, CH3 the record logs verify and never
fork, CH4 every chain ends; the takeover bound).  Sections:

* crashes keyed on the frames of one handover (before/after each of offer,
  accept, commit, ack), with restarts the current core survives;
* the core bugs this file found (A-H, fixed since in protocols/chain.py):
  each scenario is a regression test, and the old core's bugs, re-created
  by monkeypatching, are caught;
* a sweep, determinism, and measured numbers;
* the checkers can fail: hand-made violating histories and broken cores.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from protocols.chain import ChainController, pack, record_hash
from protocols.config import Timings
from protocols.events import StartExecution
from protocols.signing import SimKeyring
from simnet.chain_invariants import ChainInvariants, parse_stage_run, spec_digest
from simnet.harness import Cluster
from simnet.runner import RunOptions, run_scenario
from simnet.sources import sim_manifest
from simnet.workload import chain_spec, sim_task
from tests.simnetcli import run_simnet

pytest.importorskip("protocols.node")

T = Timings()
S = "n0000"  # the submitter in the scenarios


def submitter_only(i: int, fields: dict[str, Any]) -> dict[str, Any]:
    """n0000 submits and never runs a stage (it is never offered one)."""
    return {**fields, "compute": fields["node_id"] != S}


def chain_of(n: int, ms: int = 1500) -> dict[str, Any]:
    return chain_spec("ch", [sim_task(ms, timeout_ms=30_000) for _ in range(n)])


def settle(c: Cluster, limit: float = 400.0) -> bool:
    """Run until every job ended, then TTL + grace more, then the end checks."""
    done = c.run_until_done(limit)
    c.run_until(c.now + T.lease_ttl + T.lease_grace + 2.0)
    if c.engine.halted is None:
        c.inv.finish(c.owned(), c.now, c.submitted, c.down())
        c.chain.finish(c.now)
    return done


def clean(c: Cluster) -> None:
    assert c.violations == [], c.violations[:3]


def log_of(c: Cluster, job: str) -> dict[str, Any]:
    chain: dict[str, Any] = c.core(S).describe(job)["chain"]
    return chain


# --- the old core, re-created (to show the checkers catch its bugs) ------------------------


def _old_resume(self: ChainController) -> None:
    """ChainController.resume before the fixes: a restarted owner came back as
    owner, a restarted pending node got a fresh accept window, re-sent offers
    had no timeout (bugs A, B, D below)."""
    now = self.out.now
    for chain in self.chains.values():
        chain.heard_at = now
        chain.valid_until = now + self.t.lease_ttl
        if chain.role == "owner" and chain.submitter != self.me:
            self._report(chain, "running")
        if chain.offer is not None:
            self._send_offer(chain)
        if chain.commit_hash:
            self._send_commit(chain)
        if chain.submitter == self.me and not chain.outcome:
            self.out.timer(("chainwatch", chain.job_id, 0), now + self.t.renew_interval)
        if chain.role == "pending":
            self.out.timer(("chainpending", chain.job_id, 0), now + self.t.lease_ttl)


def old_core(mp: pytest.MonkeyPatch) -> None:
    """Bugs A, B, D (resume) and F (every hop a fresh ttl) back in the core."""
    orig_commit = ChainController.on_commit

    def on_commit(self: ChainController, sender: str, msg: Any) -> None:
        chain = self.chains.get(msg.job_id)
        pending = chain is not None and chain.role == "pending"
        orig_commit(self, sender, msg)
        chain = self.chains.get(msg.job_id)
        if pending and chain is not None and chain.role == "owner":
            chain.valid_until = self.out.now + self.t.lease_ttl
            self.out.timer(("chainlapse", chain.job_id, 0), chain.valid_until)

    orig_offer = ChainController.on_offer

    def on_offer(self: ChainController, sender: str, msg: Any) -> None:
        # The old core also wrote a pending acceptance to disk (bug B's
        # restart brings it back); the core no longer does (issue 16).
        orig_offer(self, sender, msg)
        chain = self.chains.get(msg.job_id)
        if chain is not None and chain.role == "pending":
            self._save(chain)
    mp.setattr(ChainController, "resume", _old_resume)
    mp.setattr(ChainController, "on_commit", on_commit)
    mp.setattr(ChainController, "on_offer", on_offer)


# --- a clean run ---------------------------------------------------------------------------


def test_three_chains_of_5_to_20_stages_across_50_nodes() -> None:
    c = Cluster(50, seed=11, configure=submitter_only, record=True)
    c.start()
    jobs = [c.submit(chain_of(n), owner=S, at=3.0 + i) for i, n in enumerate((5, 12, 20))]
    assert settle(c)
    clean(c)
    for job, n in zip(jobs, (5, 12, 20), strict=True):
        assert c.state_of(job) == "completed"
        log = log_of(c, job)
        assert log["log_verified"] == "ok" and log["stage"] == f"st{n - 1}"
        assert [r["kind"] for r in log["records"]] == ["genesis"] + ["handover"] * (n - 1)
        for rec in log["records"][1:]:
            assert set(rec["signed_by"]) == {rec["from"], rec["to"]}
    assert c.chain.max_owners_seen == 0 and c.chain.handovers == 5 + 12 + 20 - 3


# --- crashes at every step of the handover ------------------------------------------------

STEPS = [(t, w) for t in ("handover_offer", "handover_accept", "handover_commit",
                          "handover_ack") for w in ("before", "after")]


def crash_once(mtype: str, when: str, restart_after: float | None, seed: int = 3,
               stages: int = 8) -> tuple[Cluster, str, bool]:
    """A chain whose first handover between two non-submitters crashes the
    sender of ``mtype`` (``before`` the frame leaves or ``after``)."""
    c = Cluster(50, seed=seed, configure=submitter_only, record=True)
    c.start()
    job = c.submit(chain_of(stages), owner=S, at=3.0)
    c.crash_on_frame(mtype, when, match=lambda s, r: S not in (s, r),
                     restart_after=restart_after)
    done = settle(c)
    assert c.triggers[0].fired, "the crash point was never reached"
    return c, job, done


@pytest.mark.parametrize(("mtype", "when"), STEPS)
@pytest.mark.parametrize("restart_after", [3.0, None], ids=["back-in-3s", "stays-down"])
def test_crash_at_each_handover_step(mtype: str, when: str,
                                     restart_after: float | None) -> None:
    c, job, done = crash_once(mtype, when, restart_after)
    clean(c)
    assert done and c.state_of(job) == "completed"
    assert log_of(c, job)["log_verified"] == "ok"
    crashed = c.triggers[0].fired[0][1]
    if restart_after is None and mtype == "handover_offer":
        # The owner died holding the stage's outputs: the submitter took over.
        assert [n.data["silent"] for n in c.notes_of("chain_takeover")] == [crashed]


@pytest.mark.parametrize(("mtype", "when"), STEPS)
def test_crash_at_each_handover_step_back_late(mtype: str, when: str) -> None:
    c, job, done = crash_once(mtype, when, 20.0)  # back after the submitter took over
    clean(c)
    assert done and c.state_of(job) == "completed"


def test_takeover_latency_within_its_bound() -> None:
    # The owner of stage 3 dies before its offer and stays down.
    c, _job, _done = crash_once("handover_offer", "before", None)
    clean(c)
    ((latency, _, _),) = c.chain.takeovers
    assert latency <= c.chain.takeover_bound
    assert latency >= T.lease_ttl  # it waited for the owner's lease to run out


# --- core bugs this file found (fixed since in protocols/chain.py): regressions ------------

# (The texts say what each bug was; the scenarios below reproduced it.)
BUG_A = ("protocols/chain.py ChainController.resume: a non-submitter owner restarted after "
         "the submitter's takeover comes back as owner (two owners)")
BUG_B = ("protocols/chain.py ChainController.resume: a restarted pending node gets a fresh "
         "accept window; a commit re-sent by the restarted old owner makes a second owner")
BUG_C = ("protocols/chain.py on_pending_timeout: the submitter's pending handover expiring "
         "deletes the submitter's chain state; the chain hangs forever")
BUG_D = ("protocols/chain.py ChainController.resume: a re-sent offer has no offer timeout; "
         "if its receiver died the chain waits forever")
BUG_F = ("protocols/chain.py on_commit: each hop grants the new owner a fresh ttl; with the "
         "submitter partitioned away the chain hops on while the submitter takes over")
BUG_G = ("protocols/chain.py on_offer: the accept window (ttl from the offer) outlasts the "
         "submitter's earliest takeover; a late commit makes a second owner")
BUG_H = ("protocols/chain.py on_offer: a submitter offered a stage rebuilds its state with "
         "heard_at = 0 and its next watch tick takes the chain over from the live owner")


def bug_a(c: Cluster) -> str:
    job = c.submit(chain_of(8), owner=S, at=3.0)
    c.crash_on_frame("handover_offer", "before", match=lambda s, r: s != S, restart_after=20.0)
    return job


def bug_b(c: Cluster) -> str:
    job = c.submit(chain_of(8), owner=S, at=3.0)
    accepted: list[str] = []

    def accept(sender: str, receiver: str) -> bool:
        if S in (sender, receiver):
            return False
        accepted.append(sender)
        return True
    c.crash_on_frame("handover_accept", "after", match=accept, restart_after=17.0)
    c.crash_on_frame("handover_commit", "after", restart_after=16.0,
                     match=lambda s, r: bool(accepted) and r == accepted[0])
    return job


def bug_c(c: Cluster) -> str:
    job = c.submit(chain_of(8), owner=S, at=3.0)  # S computes here: it is offered stages
    c.crash_on_frame("handover_accept", "after", node=S, restart_after=5.0)
    c.crash_on_frame("handover_commit", "before", match=lambda s, r: r == S, restart_after=30.0)
    return job


def bug_d(c: Cluster) -> str:
    job = c.submit(chain_of(8), owner=S, at=3.0)
    c.crash_on_frame("handover_offer", "after", match=lambda s, r: s != S, restart_after=2.0)
    c.crash_on_frame("handover_accept", "after", match=lambda s, r: r != S, restart_after=None)
    return job


def bug_f(c: Cluster) -> str:
    job = c.submit(chain_spec("ch", [sim_task(1000, timeout_ms=30_000)] * 20), owner=S, at=3.0)
    c.at(8.0, lambda: c.partition([S]))
    c.at(40.0, c.heal)
    return job


def bug_g(c: Cluster) -> str:
    job = c.submit(chain_of(8), owner=S, at=3.0)

    def commit(sender: str, receiver: str) -> bool:
        if S in (sender, receiver) or c.engine.network.partitioned:
            return False
        c.partition([receiver])  # the commit is lost, and its retransmissions for 7 s
        c.at(c.now + 7.0, lambda: c.partition([receiver, sender]))  # then only S is cut off
        c.at(c.now + 30.0, c.heal)
        return False  # (no crash: the hook only cuts the network)
    c.crash_on_frame("handover_commit", match=commit)
    return job


def bug_h(c: Cluster) -> str:
    job = c.submit(chain_of(8), owner=S, at=3.0)  # S computes here: it is offered stages

    def accept(sender: str, receiver: str) -> bool:
        if sender == S and not c.engine.network.partitioned:
            c.partition([S])  # S's accept is lost, and the offer's retransmissions
            c.at(c.now + 4.0, c.heal)
        return False
    c.crash_on_frame("handover_accept", match=accept)
    return job


BUGS: dict[str, tuple[Callable[[Cluster], str], int, bool, str]] = {
    # name: (scenario, nodes, submitter computes, reason)
    "A": (bug_a, 50, False, BUG_A),
    "B": (bug_b, 50, False, BUG_B),
    "C": (bug_c, 3, True, BUG_C),
    "D": (bug_d, 50, False, BUG_D),
    "F": (bug_f, 50, False, BUG_F),
    "G": (bug_g, 50, False, BUG_G),
    "H": (bug_h, 3, True, BUG_H),
}


def run_bug(name: str, seed: int = 3) -> tuple[Cluster, str, bool]:
    scenario, nodes, computes, _ = BUGS[name]
    c = Cluster(nodes, seed=seed, configure=None if computes else submitter_only, record=True)
    c.start()
    job = scenario(c)
    done = settle(c, 300.0)
    return c, job, done


@pytest.mark.parametrize("name", list(BUGS))
def test_core_bug_scenario_passes(name: str) -> None:
    c, job, done = run_bug(name)
    clean(c)
    assert done and c.state_of(job) == "completed"
    assert log_of(c, job)["log_verified"] == "ok"


@pytest.mark.parametrize("name", ["A", "B", "D", "F"])
def test_the_old_core_bugs_are_caught(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    old_core(monkeypatch)
    c, _job, done = run_bug(name)
    first = c.violations[0] if c.violations else f"done={done}"
    want = {"A": "restarted at", "B": "restarted at", "D": "never reached a terminal state",
            "F": "n0000 (owner since"}[name]
    assert want in first, first


# --- sweeps, determinism, numbers ----------------------------------------------------------

SWEEP = dict(nodes=50, jobs=3, duration=600.0, crash_rate=0.02, partition_rate=0.5, loss=0.05,
             duplicate=0.05, reorder=0.1, workload="chain", frame_crash=0.1)


def _one(seed: int) -> dict[str, Any]:
    report = run_scenario(RunOptions(seed=seed, **SWEEP))  # type: ignore[arg-type]
    return {"seed": seed, "violations": report["invariant_violations"][:2],
            "lost": report["lost"], "chain": report["chain"], "completed": report["completed"],
            "failed": report["failed"], "frame_crashes": report["frame_crashes"]}


def sweep(seeds: range) -> list[dict[str, Any]]:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        return pool.map(_one, seeds, chunksize=1)


def test_chain_sweep() -> None:
    """10 seeds x 3 chains of 5-20 stages on 50 nodes: loss, duplication,
    reordering, partitions, Poisson crashes and crashes at handover frames."""
    results = sweep(range(10))
    bad = [r for r in results if r["violations"] or r["lost"]]
    assert bad == [], bad[:2]
    assert sum(r["completed"] + r["failed"] for r in results) == 30
    assert sum(r["frame_crashes"] for r in results) > 100
    assert sum(r["chain"]["takeovers"] for r in results) > 20
    worst = max(r["chain"]["takeover_latency_max"] or (0.0,) for r in results)
    assert worst[0] <= T.lease_ttl + T.lease_grace + T.renew_interval + 1.0  # takeover_bound


def test_chain_same_seed_same_trace() -> None:
    args = ["run", "--seed", "4", "--nodes", "50", "--jobs", "2", "--workload", "chain",
            "--loss", "0.05", "--duplicate", "0.05", "--partition-rate", "0.5",
            "--frame-crash", "0.1", "--duration", "10m", "--output", "json"]
    runs = [run_simnet(*args, hashseed=h, timeout=120) for h in ("1", "2")]
    a, b = runs
    assert a["trace_hash"] == b["trace_hash"] and a["chain"] == b["chain"]
    assert a["invariant_violations"] == b["invariant_violations"]
    assert a["chain"]["handovers"] > 5


def test_the_event_budget_counts_a_chains_stages() -> None:
    """The livelock backstop counts units of work: 20 chains of 5-20 stages at
    30 % loss (mixed timings, seed 30) need 114,125 events, past a budget that
    counted jobs (20,000 + 2,000 x (jobs + nodes) = 80,000), which failed them
    as livelocks with no violation.  Every chain has at least 5 stages."""
    opts = RunOptions(seed=3, nodes=4, jobs=2, workload="chain", duration=60.0)
    report = run_scenario(opts)
    assert report["event_budget"] >= 20_000 + 2_000 * (5 * opts.jobs + opts.nodes)
    assert report["events"] <= report["event_budget"]


# --- the checkers can fail: hand-made histories -------------------------------------------


class FakeWorld:
    """Nodes with hand-made chain states (``core(n)`` is None when down)."""

    def __init__(self, nodes: list[str]) -> None:
        self.ids = nodes
        self.states: dict[str, dict[str, Any]] = {n: {} for n in nodes}
        self.down: set[str] = set()
        self.specs: dict[str, dict[str, Any]] = {}

    def core(self, node: str) -> Any:
        if node in self.down:
            return None
        chain = SimpleNamespace(chains=self.states[node], specs=self.specs)
        return SimpleNamespace(chain=chain,
                               describe=lambda job: {"chain": {"log_verified": "ok"}})


def state(records: list[dict[str, Any]], role: str = "owner", outcome: str = "") -> Any:
    return SimpleNamespace(records=records, role=role, outcome=outcome,
                           head=records[-1]["body"], final=[])


def record(job: str, spec: dict[str, Any], prev: dict[str, Any] | None, kind: str, frm: str,
           to: str, stage: int, inputs: list[list[str]] | None = None,
           signers: tuple[str, ...] | None = None) -> dict[str, Any]:
    body = {"job": job, "seq": 0 if prev is None else prev["body"]["seq"] + 1, "stage": stage,
            "kind": kind, "from": frm, "to": to, "prev": "" if prev is None else record_hash(prev),
            "inputs": inputs or [], "spec": spec_digest(spec)}
    who = signers if signers is not None else tuple(dict.fromkeys(n for n in (frm, to) if n))
    return {"body": body, "sigs": {n: SimKeyring(n).sign(pack(body)) for n in who}}


class Fake:
    def __init__(self, nodes: int = 5) -> None:
        self.world = FakeWorld([f"n{i}" for i in range(nodes)])
        self.checks: list[tuple[float, Callable[[], None]]] = []
        self.violations: list[str] = []
        self.inv = ChainInvariants(T, lambda at, fn: self.checks.append((at, fn)), self.world,
                                   lambda t, text: self.violations.append(f"t={t:.3f}s: {text}"))
        self.spec = chain_of(4)
        for n in self.world.ids:
            self.inv.on_start(n, 0.0)

    def run(self, until: float) -> None:
        for at, fn in sorted(self.checks, key=lambda c: c[0]):
            if at <= until:
                fn()
        self.checks = [c for c in self.checks if c[0] > until]

    def submit(self, job: str = "j1", at: float = 1.0) -> dict[str, Any]:
        self.inv.expect(job, self.spec)
        self.world.specs[job] = self.spec
        genesis = record(job, self.spec, None, "genesis", "", "n0", 0)
        self.world.states["n0"][job] = state([genesis])
        self.inv.on_notify("n0", "job_submitted", {"job_id": job, "job_type": "chain"}, at)
        self.inv.after_event("n0", at)
        return genesis

    def has(self, text: str) -> bool:
        return any(text in v for v in self.violations)


def test_ch1_two_owners_after_an_event_fires() -> None:
    f = Fake()
    genesis = f.submit()
    handover = record("j1", f.spec, genesis, "handover", "n0", "n1", 1)
    f.world.states["n1"]["j1"] = state([genesis, handover])
    f.inv.after_event("n1", 2.0)  # n0 did not let go
    assert f.has("n0 (owner since t=1.000s), n1 (owner since t=2.000s) all consider")
    ok = Fake()
    genesis = ok.submit()
    ok.world.states["n0"]["j1"] = state([genesis], role="watching")
    ok.inv.after_event("n0", 2.0)
    ok.world.states["n1"]["j1"] = state([genesis, handover])
    ok.inv.after_event("n1", 2.1)
    assert ok.violations == [] and ok.inv.jobs["j1"].owners == {"n1"}


def test_ch1b_stage_execution_outliving_its_owner_fires() -> None:
    f = Fake()
    f.submit()
    run = "j1~s0~r0~1"
    f.inv.on_notify("n0", "job_submitted", {"job_id": run, "job_type": "run"}, 1.0)
    f.inv.on_exec_start("n2", StartExecution(f"{run}/0/1", run, 0, {}, {}, 30.0), 1.5)
    f.world.states["n0"]["j1"].role = "former"  # fenced at t=2
    f.inv.after_event("n0", 2.0)
    f.run(2.0 + T.lease_ttl + T.lease_grace + 0.5)
    assert f.violations == []
    f.run(2.0 + T.lease_ttl + T.lease_grace + 1.5)
    assert f.has("n2 still runs j1~s0~r0~1/0/1 of n0's stage run")
    assert parse_stage_run(run) == ("j1", 0, 0)


def test_ch2_second_acceptance_under_one_record_fires() -> None:
    f = Fake()
    genesis = f.submit()
    run = "j1~s0~r0~1"
    for eid, node in ((f"{run}/0/1", "n1"), (f"{run}/0/2", "n2")):
        f.inv.on_notify("n0", "job_submitted", {"job_id": run, "job_type": "run"}, 1.0)
        f.inv.on_exec_start(node, StartExecution(eid, run, 0, {}, {}, 30.0), 1.0)
        f.inv.on_exec_end(node, eid, "succeeded", 2.0)
    assert f.has("stage run j1~s0~r0~1 created twice")
    for to, eid in (("n1", f"{run}/0/1"), ("n2", f"{run}/0/2")):
        rec = record("j1", f.spec, genesis, "handover", "n0", to, 1,
                     inputs=[["st0", sim_manifest(eid), to]])
        f.world.states["n0"]["j1"] = state([genesis, rec], role="former")
        f.inv.on_notify("n0", "handover_committed", {"job_id": "j1", "stage": 1, "to": to}, 3.0)
    assert f.has("a second stage result accepted under record 0 (handover to n1, then "
                  "handover to n2) (CH2)")


def test_ch2_handover_of_an_output_nobody_produced_fires() -> None:
    f = Fake()
    genesis = f.submit()
    rec = record("j1", f.spec, genesis, "handover", "n0", "n1", 1,
                 inputs=[["st0", "sha256:" + "e" * 64, "n1"]])
    f.world.states["n0"]["j1"] = state([genesis, rec], role="former")
    f.inv.on_notify("n0", "handover_committed", {"job_id": "j1", "stage": 1, "to": "n1"}, 3.0)
    assert f.has("which no succeeded execution of stage 0 under record 0 produced")


def test_ch3_forged_forked_and_lost_logs_fire() -> None:
    f = Fake()
    genesis = f.submit()
    forged = record("j1", f.spec, genesis, "handover", "n0", "n1", 1, signers=("n1",))
    f.world.states["n1"]["j1"] = state([genesis, forged])
    f.inv.check_logs(5.0)
    assert f.has("the log at n1 (owner) does not verify: record 1: not signed by the current "
                 "owner n0")
    fork = Fake()
    genesis = fork.submit()
    for to in ("n1", "n2"):
        fork.world.states[to]["j1"] = state(
            [genesis, record("j1", fork.spec, genesis, "handover", "n0", to, 1)], role="former")
    fork.inv.check_logs(5.0)
    assert fork.has("the logs of n1 and n2 fork at record 1 (handover to n1 / handover to n2)")
    taken = Fake()  # a takeover superseding a handover the submitter never learned of: allowed
    genesis = taken.submit()
    taken.world.states["n1"]["j1"] = state(
        [genesis, record("j1", taken.spec, genesis, "handover", "n0", "n1", 1)], role="former")
    taken.world.states["n0"]["j1"] = state(
        [genesis, record("j1", taken.spec, genesis, "takeover", "n1", "n0", 0)])
    taken.inv.check_logs(5.0)
    assert taken.violations == [] and taken.inv.jobs["j1"].superseded == 1
    lost = Fake()
    lost.submit()
    lost.inv.check_logs(5.0)
    del lost.world.states["n0"]["j1"]
    lost.inv.check_logs(6.0)
    assert lost.has("its submitter n0 lost the chain's log (CH3)")


def test_takeover_bound_fires_when_the_submitter_never_takes_over() -> None:
    f = Fake()
    genesis = f.submit()
    head = record("j1", f.spec, genesis, "handover", "n0", "n1", 1)
    f.world.states["n0"]["j1"] = state([genesis, head], role="watching")
    f.inv.after_event("n0", 2.0)
    f.inv.on_crash("n1", 10.0)
    f.run(10.0 + f.inv.takeover_bound + 0.1)
    assert f.has("its owner n1 died at t=10.000s and the submitter n0 has not taken over")
    ok = Fake()
    genesis = ok.submit()
    ok.world.states["n0"]["j1"] = state([genesis, head], role="watching")
    ok.inv.on_crash("n1", 10.0)
    ok.inv.on_notify("n0", "chain_takeover", {"job_id": "j1", "silent": "n1"}, 22.0)
    ok.run(40.0)
    assert ok.violations == [] and ok.inv.takeovers == [(12.0, "j1", 22.0)]


# --- the checkers can fail: broken cores --------------------------------------------------


def test_owner_that_never_lets_go_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ChainController._committed

    def clingy(self: ChainController, chain: Any, full: dict[str, Any]) -> None:
        original(self, chain, full)
        if full["body"]["to"] != self.me:
            chain.role = "owner"  # keeps considering itself the owner
    monkeypatch.setattr(ChainController, "_committed", clingy)
    c = Cluster(20, seed=5, configure=submitter_only)
    c.start()
    c.submit(chain_of(4), owner=S, at=3.0)
    c.run_until(60.0)
    assert any("CH1" in v for v in c.violations), c.violations


def test_tampered_record_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = ChainController._committed

    def tamper(self: ChainController, chain: Any, full: dict[str, Any]) -> None:
        bad = {"body": {**full["body"], "inputs": []}, "sigs": full["sigs"]}
        original(self, chain, bad)  # a countersigned record changed after signing
    monkeypatch.setattr(ChainController, "_committed", tamper)
    c = Cluster(20, seed=6, configure=submitter_only)
    c.start()
    c.submit(chain_of(4), owner=S, at=3.0)
    c.run_until(60.0)
    assert any("does not verify" in v for v in c.violations), c.violations


def test_submitter_that_never_takes_over_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ChainController, "on_watch_timer", lambda self, job_id: None)
    c, _job, _done = crash_once("handover_offer", "before", None)
    assert any("has not taken over" in v for v in c.violations), c.violations
