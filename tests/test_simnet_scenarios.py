"""End-to-end scenarios: real node cores in the discrete-event simulator.

Every cluster runs the invariant checkers from its first event, so each test
also asserts the safety properties (one accepted result per slot, fencing,
bounded executions, ownership) on top of its own expectations.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
from typing import Any

import pytest

from protocols.config import Timings
from simnet.harness import Cluster, Note
from simnet.network import NetConfig
from simnet.workload import ZONES, batch_spec, sim_task
from tests.simnetcli import run_simnet

pytest.importorskip("protocols.node")

TIMINGS = Timings()
TTL_GRACE = TIMINGS.lease_ttl + TIMINGS.lease_grace


def healthy_jobs(cluster: Cluster, n: int, seed: int, start: float = 3.0,
                 window: float = 30.0) -> list[str]:
    """``n`` batch jobs of 1-3 slots (a third pinned to a zone) that succeed."""
    rng = random.Random(seed)
    ids = []
    for i in range(n):
        labels = {"zone": rng.choice(ZONES)} if rng.random() < 0.33 else {}
        spec = batch_spec(f"ok-{i}", rng.randint(1, 3), labels=labels,
                          task=sim_task(rng.randint(1000, 8000)))
        ids.append(cluster.submit(spec, at=start + rng.random() * window))
    return ids


def no_compute_on(*node_ids: str) -> Any:
    """Cluster ``configure`` hook: these nodes own jobs but never bid."""
    def configure(i: int, fields: dict[str, Any]) -> dict[str, Any]:
        if fields["node_id"] in node_ids:
            fields["compute"] = False
        return fields
    return configure


def finish(cluster: Cluster, limit: float) -> None:
    """Run until all jobs are terminal, then apply the end-of-run checks."""
    done = cluster.run_until_done(limit)
    assert cluster.violations == [], cluster.violations[:3]
    assert done, {j: cluster.state_of(j) for j in cluster.submitted if
                  cluster.state_of(j) not in ("completed", "failed", "stopped")}
    lost = cluster.inv.finish(cluster.owned(), cluster.now, cluster.submitted)
    assert lost == [] and cluster.violations == []


def wait_for(cluster: Cluster, kind: str, limit: float, **match: Any) -> Note:
    """Run until a notification of ``kind`` with the given fields appears."""
    def found() -> Note | None:
        for note in cluster.notes_of(kind):
            if all(note.data.get(k) == v for k, v in match.items()):
                return note
        return None

    cluster.run_until(limit, stop=lambda: found() is not None)
    note = found()
    assert note is not None, f"no {kind} {match} by t={cluster.now}"
    return note


# --- healthy and lossy networks ------------------------------------------------------------


def test_200_jobs_on_20_nodes_all_complete() -> None:
    c = Cluster(20, seed=11)
    c.start()
    jobs = healthy_jobs(c, 200, seed=11)
    finish(c, 600)
    assert all(c.state_of(j) == "completed" for j in jobs)


def test_200_jobs_complete_under_loss_duplication_reordering() -> None:
    net = NetConfig(loss=0.2, duplicate=0.1, reorder=0.1)
    c = Cluster(20, seed=12, net=net)
    c.start()
    jobs = healthy_jobs(c, 200, seed=12)
    finish(c, 1200)
    assert all(c.state_of(j) == "completed" for j in jobs)
    assert c.engine.stats.delivered < c.engine.stats.sent  # the faults did happen


# --- crashes ---------------------------------------------------------------------------------


def test_compute_crash_mid_execution_is_reauctioned_and_late_result_ignored() -> None:
    c = Cluster(5, seed=21, configure=no_compute_on("n0000"), record=True)
    c.start()
    c.run_until(3.0)
    job = c.submit(batch_spec("long", 1, task=sim_task(20_000)), owner="n0000")
    first = wait_for(c, "lease_granted", 10.0, job_id=job)
    holder, e1 = first.data["holder"], first.data["execution_id"]
    c.run_until(c.now + 5.0)
    c.crash(holder)
    # Down for longer than TTL + grace: the owner re-auctions elsewhere.
    second = wait_for(c, "lease_granted", c.now + 3 * TTL_GRACE, job_id=job, epoch=2)
    assert second.data["holder"] != holder
    c.restart(holder)  # it reports the execution it lost (epoch 1): too late
    finish(c, 200)
    assert c.state_of(job) == "completed"
    accepted = c.notes_of("result_accepted")
    assert [n.data["epoch"] for n in accepted] == [2]
    ignored = [n.data for n in c.notes_of("result_ignored")]
    assert any(d["execution_id"] == e1 for d in ignored) or accepted[0].data["epoch"] > 1


def test_owner_crash_and_restart_resumes_from_store() -> None:
    c = Cluster(10, seed=22, configure=no_compute_on("n0000"), record=True)
    c.start()
    c.run_until(3.0)
    jobs = [c.submit(batch_spec(f"j{i}", 2, task=sim_task(15_000)), owner="n0000")
            for i in range(5)]
    wait_for(c, "lease_granted", 10.0, job_id=jobs[-1])
    c.run_until(c.now + 2.0)
    c.crash("n0000")
    c.at(c.now + 30.0, lambda: c.restart("n0000"))
    finish(c, 400)
    assert all(c.state_of(j) == "completed" for j in jobs)
    assert c.owned()["n0000"].keys() == set(jobs)


def test_partitioned_holder_fences_itself_and_owner_regrants() -> None:
    c = Cluster(5, seed=23, configure=no_compute_on("n0000"), record=True)
    c.start()
    c.run_until(3.0)
    job = c.submit(batch_spec("fenced", 1, task=sim_task(40_000)), owner="n0000")
    first = wait_for(c, "lease_granted", 10.0, job_id=job)
    holder, e1 = first.data["holder"], first.data["execution_id"]
    c.run_until(c.now + 2.0)
    c.partition([holder])  # the holder alone, owner with the others
    fenced = wait_for(c, "execution_fenced", c.now + 2 * TTL_GRACE, execution_id=e1)
    assert fenced.node == holder
    assert not c.engine.executor.is_running(c.idx(holder), e1)
    regrant = wait_for(c, "lease_granted", c.now + 2 * TTL_GRACE, job_id=job, epoch=2)
    assert regrant.data["holder"] != holder
    c.run_until(c.now + 30.0)
    c.heal()
    finish(c, 300)
    assert c.state_of(job) == "completed"
    assert len(c.notes_of("result_accepted")) == 1


# --- failing and cancelling ------------------------------------------------------------------


def test_no_matching_node_fails_fast_with_reason() -> None:
    c = Cluster(6, seed=31)
    c.start()
    job = c.submit(batch_spec("nowhere", 1, labels={"zone": "mars"}), at=3.0)
    finish(c, 60)
    assert c.state_of(job) == "failed"
    assert c.now < 30.0
    reason = c.reason_of(job)
    assert "mars" in reason or "match" in reason, reason


def test_failing_task_exhausts_retries_with_reason() -> None:
    c = Cluster(6, seed=32)
    c.start()
    job = c.submit(batch_spec("bad", 1, task=sim_task(500, exit_code=7, attempts=2,
                                                      backoff_ms=100)), at=3.0)
    finish(c, 120)
    assert c.state_of(job) == "failed"
    assert c.reason_of(job)


def test_cancel_mid_run_stops_everything() -> None:
    c = Cluster(6, seed=33, record=True)
    c.start()
    c.run_until(3.0)
    job = c.submit(batch_spec("cancel-me", 3, task=sim_task(60_000)), owner="n0001")
    wait_for(c, "job_state", 20.0, job_id=job, state="running")
    c.run_until(c.now + 5.0)
    c.cancel(job, reason="user said so")
    finish(c, c.now + 60)
    assert c.state_of(job) == "stopped"
    assert "user said so" in c.reason_of(job)
    c.run_until(c.now + TTL_GRACE)
    assert c.engine.executor.running == {}


# --- determinism and sweeps ---------------------------------------------------------------------


_cli = run_simnet


def test_same_seed_same_trace_in_fresh_processes() -> None:
    args = ("run", "--nodes", "12", "--jobs", "40", "--seed", "5", "--loss", "0.1",
            "--duplicate", "0.05", "--reorder", "0.1", "--crash-rate", "0.02",
            "--output", "json")
    a = _cli(*args, hashseed="1")
    b = _cli(*args, hashseed="2")
    assert a["trace_hash"] == b["trace_hash"]
    assert a["messages_delivered"] == b["messages_delivered"]
    assert a["invariant_violations"] == [] and a["lost"] == 0
    for key in ("seed", "nodes", "jobs", "completed", "failed", "lost", "invariant_violations",
                "messages_sent", "messages_delivered", "virtual_seconds", "wall_seconds"):
        assert key in a


@pytest.mark.slow
def test_sweep_200_seeds_mixed_faults() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "simnet", "sweep", "--seeds", "0..199", "--nodes", "10",
         "--jobs", "30", "--loss", "0.1", "--duplicate", "0.05", "--reorder", "0.1",
         "--crash-rate", "0.1", "--partition-rate", "0.5", "--output", "json"],
        capture_output=True, text=True, timeout=600, check=False,
    )
    summary = json.loads(proc.stdout)
    assert summary["seeds"] == 200
    assert summary["failures"] == [], json.dumps(summary["failures"][:3], indent=1)
    assert proc.returncode == 0


def test_plain_workload_completes_every_job_under_loss() -> None:
    from simnet.runner import RunOptions, run_scenario

    report = run_scenario(
        RunOptions(nodes=30, jobs=120, seed=5, loss=0.1, duplicate=0.05, workload="plain")
    )
    assert report["invariant_violations"] == []
    assert (report["completed"], report["failed"], report["lost"]) == (120, 0, 0)
