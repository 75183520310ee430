"""An ops job ends only once its census is over (O2, ``simnet/kind_invariants.py``).

Ops jobs run once on every matching node, found by census rounds that repeat
until ``OPS_QUIET_ROUNDS`` rounds find nobody new.  The job completed as soon
as every slot it had so far ended, even with a later round still open: with
10 % loss and heterogeneous timings (kinds workload, 10 nodes, seeds 0 and
10), a node whose first ask was lost answered round 2 in time, and the job
completed 0.1 s before that round closed, never running there.
"""

from __future__ import annotations

from typing import Any

import pytest

from protocols.owner import Owner
from simnet.runner import RunOptions, run_scenario

SEEDS = (0, 10)


def _kinds(seed: int) -> dict[str, Any]:
    return run_scenario(RunOptions(seed=seed, nodes=10, jobs=30, loss=0.1, duplicate=0.05,
                                   reorder=0.2, workload="kinds", timings="mixed",
                                   duration=180.0))


@pytest.mark.parametrize("seed", SEEDS)
def test_an_ops_job_waits_for_its_census(seed: int) -> None:
    report = _kinds(seed)
    assert report["invariant_violations"] == []
    assert report["lost"] == 0


def test_planted_ops_job_ending_during_its_census_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planted: the old end rule (every slot ended, census or not)."""
    update = Owner._update_job_state

    def census_ignored(self: Any, job: Any) -> None:
        saved = job.census_open, job.census_quiet
        job.census_open, job.census_quiet = False, 10**6
        try:
            update(self, job)
        finally:
            job.census_open, job.census_quiet = saved

    monkeypatch.setattr(Owner, "_update_job_state", census_ignored)
    caught = [seed for seed in SEEDS
              if any("without running on" in v for v in _kinds(seed)["invariant_violations"])]
    assert caught, "an ops job ending during its census went unnoticed"
