"""An ops job ends only once its census is over (O2, ``simnet/kind_invariants.py``).

Ops jobs run once on every matching node, found by census rounds that repeat
until ``OPS_QUIET_ROUNDS`` rounds find nobody new.  The job completed as soon
as every slot it had so far ended, even with a later round still open: with
10 % loss and heterogeneous timings (kinds workload, 10 nodes, seeds 0 and
10), a node whose first ask was lost answered round 2 in time, and the job
completed 0.1 s before that round closed, never running there.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import pytest

from protocols.messages import Message
from protocols.outbox import Outbox
from protocols.owner import Owner
from protocols.owner import auction as auction_module
from simnet.runner import RunOptions, run_scenario

SEEDS = (0, 10)  # at 10 % loss
ECHO_SEEDS = (40, 91)  # at 30 % loss: a node outside the owner's view (see below)


def _kinds(seed: int, loss: float = 0.1) -> dict[str, Any]:
    """Kinds among peers whose timings differ, on a lossy network."""
    return run_scenario(RunOptions(seed=seed, nodes=10, jobs=30, loss=loss, duplicate=0.05,
                                   reorder=0.2, workload="kinds", timings="mixed",
                                   duration=180.0))


CENSUS_RUNS = [(seed, 0.1) for seed in SEEDS] + [(seed, 0.3) for seed in ECHO_SEEDS]


@pytest.mark.parametrize(("seed", "loss"), CENSUS_RUNS)
def test_an_ops_job_waits_for_a_census_that_counts_every_node(seed: int, loss: float) -> None:
    report = _kinds(seed, loss)
    assert report["invariant_violations"] == []
    assert report["lost"] == 0


def test_planted_ops_job_ending_during_its_census_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planted: the old end rule (every slot ended, census or not).  It only
    shows when a census answer comes in a later round; asks sent once, as
    they were when these seeds found it, make that likely again."""
    _plant_single_ask(monkeypatch, "ask")
    _plant_single_ask(monkeypatch, "census-ask")
    _plant_single_broadcast(monkeypatch)
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


# --- 30 % loss: a live pinned node is neither given up on nor left out ------------------
#
# An ops slot is pinned to one node; its auction asks that node alone, and five
# silent rounds fail the slot ("did not answer (gone since the census?)").
# With one copy of each ask, 30 % loss failed an ops job on a live node in 9 of
# 12 runs (kinds, 10 nodes, no node fault).  The census asked every node once
# per round, directly and by broadcast; once the pinned asks held, a live node
# missing every round showed (O2, seeds 37 and 63 of 140).  Both asks now
# repeat within the round until the node answers.

LOSSY_SEEDS = range(6)
CENSUS_SEEDS = (37, 63)
# Where the planted single census asks (direct and broadcast) are caught now:
# the seeds above found them before later changes (more renewal tries, longer
# one-node rounds) drew the network's randomness differently (4 of 300 seeds).
PLANTED_CENSUS_SEEDS = (36, 95)


def _lossy_kinds(seed: int) -> dict[str, Any]:
    return run_scenario(RunOptions(seed=seed, nodes=10, jobs=30, loss=0.3,
                                   workload="kinds", duration=180.0))


def _given_up(report: dict[str, Any]) -> list[str]:
    return [r for r in report["failed_reasons"].values() if "did not answer" in r]


def _plant_single_ask(monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Planted: asks whose retransmission key starts with ``kind`` go out once."""
    send_reliably = Outbox.send_reliably

    def once(self: Outbox, key: Hashable, to: str, message: Message, give_up_after: float) -> None:
        if isinstance(key, tuple) and key[0] == kind:
            self.send(to, message)
            return
        send_reliably(self, key, to, message, give_up_after)

    monkeypatch.setattr(Outbox, "send_reliably", once)


def _plant_single_broadcast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: a census round's broadcast goes once (no echo)."""
    monkeypatch.setattr(Owner, "_echo_census", lambda self, job, census_round: None)


@pytest.mark.parametrize("seed", [*LOSSY_SEEDS, *CENSUS_SEEDS, *PLANTED_CENSUS_SEEDS])
def test_ops_jobs_hold_on_a_lossy_network(seed: int) -> None:
    report = _lossy_kinds(seed)
    assert _given_up(report) == [], report["failed_reasons"]
    assert report["invariant_violations"] == []
    assert report["lost"] == 0


def test_planted_single_pinned_ask_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Caught by O3 (an ops job failed on a network with no node fault), and
    seen in the report's ``failed_reasons``."""
    _plant_single_ask(monkeypatch, "ask")
    reports = [_lossy_kinds(seed) for seed in LOSSY_SEEDS]
    assert any(_given_up(report) for report in reports)
    flagged = [v for report in reports for v in report["invariant_violations"]]
    assert any("(O3)" in v and "did not answer" in v for v in flagged), flagged


def test_planted_single_census_ask_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: direct census asks go once, and so does the round's broadcast
    (as when the defect was found).  With the broadcast's echo in place, a
    single direct ask alone was caught on none of 300 seeds: the two are
    redundant defences against loss for a node in the owner's view, and the
    echo alone is what reaches a node outside it (below)."""
    _plant_single_ask(monkeypatch, "census-ask")
    _plant_single_broadcast(monkeypatch)
    caught = [seed for seed in PLANTED_CENSUS_SEEDS
              if any("without running on" in v
                     for v in _lossy_kinds(seed)["invariant_violations"])]
    assert caught, "an ops census that missed a live node went unnoticed"


# --- 30 % loss: a node the owner has not heard of yet still hears the census ----------
#
# A node whose first hello to the network was lost may be missing from the
# owner's view for a heartbeat or more; only the census broadcast reaches it,
# and the broadcast has no ack.  With one copy per round, all three rounds of an
# ops census were lost to such a node (kinds, mixed timings, 30 % loss, seeds
# 40 and 91 of 100), and the job completed without it (O2).  The broadcast now
# goes again halfway through each round's window.

# CENSUS_RUNS (above) runs ECHO_SEEDS with the echo; below, without it.


def test_planted_census_broadcast_once_per_round_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _plant_single_broadcast(monkeypatch)
    caught = [seed for seed in ECHO_SEEDS
              if any("without running on" in v
                     for v in _kinds(seed, 0.3)["invariant_violations"])]
    assert caught, "a census broadcast sent once per round went unnoticed"


# --- 30 % loss, a short bid window: a pinned node's late answers -----------------------
#
# An owner with a 0.1 s bid window (mixed timings draw 0.1-3 s) asked a pinned
# node whose every bid, with frames delayed up to 250 ms, came after the round
# closed: five "silent" rounds failed the ops slot of a live node (O3, seed 256
# of 300).  A round that asks one node now lasts at least
# ``SINGLE_ASK_MIN_WINDOW`` (1 s); the node's answer still closes it at once.

SHORT_WINDOW_SEEDS = (256,)


@pytest.mark.parametrize("seed", SHORT_WINDOW_SEEDS)
def test_a_pinned_node_is_not_given_up_on_for_a_short_bid_window(seed: int) -> None:
    report = _kinds(seed, 0.3)
    assert report["invariant_violations"] == []
    assert _given_up(report) == [], report["failed_reasons"]


def test_planted_one_node_round_of_the_bid_window_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(auction_module, "SINGLE_ASK_MIN_WINDOW", 0.0)
    flagged = [v for seed in SHORT_WINDOW_SEEDS for v in _kinds(seed, 0.3)["invariant_violations"]]
    assert any("(O3)" in v and "did not answer" in v for v in flagged), flagged
