"""Heterogeneous peers in the simulator (``--timings mixed``, issue 11).

Every node draws its own ``Timings``; the sweeps must pass all the same, and
they must fail when the holder goes back to pacing a lease by its own
settings instead of the grant's (the defect the issue found over real
processes: owner ``--lease-ttl 2``, holder default)."""

from __future__ import annotations

from typing import Any

import pytest

from protocols.config import Timings
from protocols.holder import Holder
from simnet.runner import RunOptions, run_scenario
from simnet.timings import MIXED_RANGES, draw_timings, envelope, node_timings
from tests.simnetcli import run_simnet
from tests.test_simnet_invariants import Fake

pytest.importorskip("protocols.node")

PLAIN_SEEDS = range(8)
KINDS_SEEDS = range(3)


def _run(workload: str, seed: int) -> dict[str, Any]:
    return run_scenario(
        RunOptions(
            nodes=6,
            jobs=20,
            seed=seed,
            workload=workload,
            duration=600.0,
            drain=600.0,
            timings="mixed",
        )
    )


def _problems(workload: str, seeds: range) -> list[str]:
    """Failed seeds: a violation, a lost job, or (plain: only healthy jobs on
    a healthy network) any job that did not complete."""
    problems = []
    for seed in seeds:
        report = _run(workload, seed)
        bad = report["invariant_violations"] or report["lost"]
        if workload == "plain" and report["completed"] != report["jobs"]:
            bad = bad or f"{report['failed']} healthy job(s) failed"
        if bad:
            problems.append(f"{workload} seed {seed}: {bad}")
    return problems


def test_mixed_draws_each_node_its_own_timings() -> None:
    ids = [f"n{i:04d}" for i in range(20)]
    drawn = node_timings("mixed", 7, ids)
    assert drawn == node_timings("mixed", 7, ids)  # seeded
    assert drawn != node_timings("mixed", 8, ids)
    ttls = {t.lease_ttl for t in drawn.values()}
    assert len(ttls) == len(ids)
    lo, hi = MIXED_RANGES["lease_ttl"]
    assert all(lo <= ttl <= hi for ttl in ttls)
    assert all(t.retransmit_base <= t.retransmit_max for t in drawn.values())
    assert set(node_timings("uniform", 7, ids).values()) == {Timings()}
    assert envelope(list(drawn.values())).lease_ttl == max(ttls)
    with pytest.raises(ValueError, match="unknown timings mode"):
        draw_timings("wild", 7, "n0000")


def test_cli_runs_mixed_and_reproduces_it() -> None:
    report = run_simnet(
        "run", "--nodes", "5", "--jobs", "8", "--seed", "3", "--workload", "plain",
        "--duration", "5m", "--drain", "5m", "--timings", "mixed", "--output", "json",
    )  # fmt: skip
    assert report["options"]["timings"] == "mixed"
    assert not report["invariant_violations"] and report["completed"] == 8
    uniform = run_simnet(
        "run", "--nodes", "5", "--jobs", "8", "--seed", "3", "--workload", "plain",
        "--duration", "5m", "--drain", "5m", "--output", "json",
    )  # fmt: skip
    assert uniform["options"]["timings"] == "uniform"
    assert uniform["trace_hash"] != report["trace_hash"]


def test_reproduce_line_keeps_the_timings_mode() -> None:
    from simnet.cli import reproduce_command

    kw = {"nodes": 3, "jobs": 2, "duration": 60.0, "submit_window": 60.0, "drain": 60.0}
    assert "--timings mixed" in reproduce_command(1, {**kw, "timings": "mixed"})
    assert "--timings" not in reproduce_command(1, {**kw, "timings": "uniform"})


@pytest.mark.slow
def test_mixed_sweeps_pass() -> None:
    assert _problems("plain", PLAIN_SEEDS) == []
    assert _problems("kinds", KINDS_SEEDS) == []


@pytest.mark.slow
def test_mixed_sweeps_catch_a_holder_pacing_by_its_own_ttl(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The planted bug: renewals at the holder's own ttl/3 (the old code)."""
    monkeypatch.setattr(Holder, "_renew_interval", lambda self, held: self.t.renew_interval)
    assert _problems("plain", PLAIN_SEEDS)
    assert _problems("kinds", KINDS_SEEDS)


# --- the checker: an expired lease's holder has already fenced itself ------------------


def _history(stop_at: float) -> Fake:
    f = Fake()
    f.note("o", "job_submitted", 0.0, job_id="j1", owner="o", slots=1)
    f.note("o", "lease_granted", 1.0, job_id="j1", slot=0, epoch=1, execution_id="j1/0/1",
           holder="h1", ttl=2.0, grace=0.5, timeout=60.0)  # fmt: skip
    f.start("h1", "j1/0/1", 1.1)
    if stop_at < 3.5:
        f.end("h1", "j1/0/1", stop_at)  # fenced at the renewal's send + ttl
    f.note("o", "lease_ended", 3.5, job_id="j1", slot=0, epoch=1, execution_id="j1/0/1",
           cause="expired")  # fmt: skip
    return f


def test_checker_accepts_a_holder_that_fenced_itself_first() -> None:
    assert _history(stop_at=3.1).inv.violations == []


def test_checker_fires_when_the_holder_outlives_the_owners_patience() -> None:
    f = _history(stop_at=99.0)
    f.run_checks(10.0)  # past the expiry plus the checker's slack for clock rates
    [violation] = f.inv.violations
    assert "still runs j1/0/1 after its owner saw the lease expire" in violation


@pytest.mark.slow
def test_sweep_catches_a_holder_that_never_fences_itself(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: no self-fencing.  Partitions cut holders off their owners."""
    monkeypatch.setattr(Holder, "on_lapse_timer", lambda self, exec_id: None)
    fired = []
    for seed in range(4):
        report = run_scenario(
            RunOptions(nodes=6, jobs=20, seed=seed, workload="plain", duration=600.0,
                       drain=600.0, timings="mixed", partition_rate=2.0)
        )  # fmt: skip
        fired += [v for v in report["invariant_violations"] if "saw the lease expire" in v]
    assert fired
