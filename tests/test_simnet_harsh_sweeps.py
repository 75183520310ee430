"""CI: every workload for 200 seeds in the harsh modes (``loaded``, whose
runs are 30 times larger, for 100), and the mutation catalogue's quick subset
(issue 11).  ``make soak`` runs 10,000 seeds of each of the same profiles;
``make mutants`` the whole catalogue."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from simnet.mutants import CATALOGUE, run_mutant
from simnet.soak import PROFILES, sweep

pytestmark = pytest.mark.slow

# Killed within a few seeds each (see the kill matrix in docs/architecture.md).
QUICK_MUTANTS = ("result-from-any-sender", "stale-epoch-accepted",
                 "owner-forgets-active-jobs-on-restart", "epoch-not-incremented-on-regrant")


# Seeds per profile in CI: 10 nodes x 300 jobs per ``loaded`` seed cost as
# much as about 30 seeds of a small profile (it was CI's longest test).
CI_SEEDS = {"loaded": "0..99"}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_workload_passes_its_harsh_seeds(profile: str) -> None:
    seeds = CI_SEEDS.get(profile, "0..199")
    result = sweep(profile, seeds, workers=2)
    assert result.get("failed") == 0, result
    first, last = (int(x) for x in seeds.split(".."))
    assert result.get("seeds") == last - first + 1, result  # every seed ran


@pytest.mark.parametrize("name", QUICK_MUTANTS)
def test_mutant_is_killed(name: str) -> None:
    [mutation] = [m for m in CATALOGUE if m.name == name]
    row = run_mutant(mutation)
    assert row["status"] == "killed", row
    assert row["seeds_to_kill"] <= mutation.seeds


def test_a_stale_mutation_fails_the_tool(tmp_path: object) -> None:
    """A mutation whose text no longer matches is reported, and fails the run."""
    from simnet.mutants import Mutation
    stale = Mutation(name="x", file="protocols/owner/leases.py", find="no such text anywhere",
                     replace="", sweeps=("crashes",), seeds=1, why="test")
    assert run_mutant(stale)["status"] == "stale"


def test_mutants_command_lists_the_catalogue() -> None:
    proc = subprocess.run([sys.executable, "scripts/mutants.py", "--list"], capture_output=True,
                          text=True, check=False, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == len(CATALOGUE) >= 12
