"""Owners ask only peers with room (protocols/owner/auction.py, "Room").

A saturated burst in the simulator: 200 plain jobs submitted within one
second to 5 nodes, far more than their capacity.  Before owners tracked room,
every backed-off slot kept asking peers that were full (35 asks and 33
declines per job for this seed); now asks stay close to what the jobs need,
and every job still completes with the simulator's invariants holding.
"""

from __future__ import annotations

import pytest

import protocols.owner.auction as auction
from protocols.owner.auction import AuctionMixin
from simnet.runner import RunOptions, run_scenario

ASKS_BOUND, DECLINES_BOUND = 5.0, 2.5
BURST = RunOptions(nodes=5, jobs=200, seed=0, submit_window=1.0, workload="plain")


def per_job(report: dict[str, object], kind: str) -> float:
    sent = report["sent_by_type"]
    assert isinstance(sent, dict)
    return float(sent.get(kind, 0)) / BURST.jobs


def test_saturated_burst_asks_peers_with_room_only() -> None:
    report = run_scenario(BURST)
    assert report["invariant_violations"] == []
    assert (report["completed"], report["lost"]) == (BURST.jobs, 0)
    assert per_job(report, "ask_for_bid") < ASKS_BOUND
    assert per_job(report, "bid_declined") < DECLINES_BOUND


def over_bound(report: dict[str, object]) -> bool:
    return (
        per_job(report, "ask_for_bid") >= ASKS_BOUND
        or per_job(report, "bid_declined") >= DECLINES_BOUND
    )


def test_the_bound_catches_asks_to_full_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: every peer has room (7.2 asks, 5.2 declines per job)."""
    monkeypatch.setattr(AuctionMixin, "_has_room", lambda self, node, cpu, memory: True)
    report = run_scenario(BURST)
    assert report["completed"] == BURST.jobs
    assert over_bound(report)


def test_the_bound_catches_every_waiting_slot_polling(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: every slot waiting for room polls (5.6 asks, 3.5 declines)."""
    monkeypatch.setattr(auction, "POLLERS", 10**9)
    report = run_scenario(BURST)
    assert report["completed"] == BURST.jobs
    assert over_bound(report)
