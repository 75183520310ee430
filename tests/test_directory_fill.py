"""Views fill fast on a lossy, busy network (issue 16, "Scale on one host").

Pure protocol tests over ``ProtoNet``: many nodes bootstrap from one at once
while frames are lost (under load a dial times out and the hello in it is
dropped).  A node that learnt a peer by hearsay says hello again (2, 4, 8, ... s
apart) until that peer answers (a first contact is answered at once), and a view with
room keeps asking (doubling the delay) instead of waiting a whole gossip
interval after one unlucky round.  Each mechanism has a planted-bug test.
"""

from __future__ import annotations

import random

import pytest

from protocols.config import NodeConfig, Timings
from protocols.directory import Directory
from protocols.node import NodeCore
from tests.protonet import ProtoNet

T = Timings()


class _Star(ProtoNet):
    """Every node bootstraps from ``n00`` only, all at the same time."""

    def config(self, node_id: str) -> NodeConfig:
        return NodeConfig(
            node_id=node_id,
            executors=("sim",),
            bootstrap=() if node_id == "n00" else ("n00",),
            timings=self.timings,
        )


def _lossy_star(count: int, loss: float, seconds: float) -> list[int]:
    ids = [f"n{i:02d}" for i in range(count)]
    net = _Star(ids)
    rng = random.Random(7)
    net.drop = lambda _frame: rng.random() < loss
    net.run_for(seconds)
    return [len(net.core(n).directory.peers) for n in ids]


# Far below a heartbeat period (the old repair: 54-84 s) and below one
# gossip interval (what a view with room waited after a round taught nothing).
FILL_WITHIN = 0.6 * T.gossip_interval
# A full view of 64 out of 100: within one gossip interval.  (0.6 of one
# before greetings to hearsay entries backed off: they now come 2, 4, 8, ... s
# apart, so the last lost ones take a little longer.)
FULL_VIEW_WITHIN = T.gossip_interval


def test_views_fill_within_a_round_despite_lost_frames() -> None:
    sizes = _lossy_star(40, 0.1, FILL_WITHIN)
    assert min(sizes) == 39, sorted(sizes)


def test_without_rehello_to_silent_hearsay_peers_views_stay_short(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planted: hearsay entries are never said hello to again."""
    monkeypatch.setattr(Directory, "unconfirmed", lambda self: [])
    sizes = _lossy_star(40, 0.1, FILL_WITHIN)
    assert min(sizes) < 39


def test_without_the_fill_backoff_one_lost_answer_costs_a_gossip_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planted: a round that teaches nothing jumps to the gossip interval."""
    monkeypatch.setattr(NodeCore, "_next_fill_delay", lambda self: T.gossip_interval)
    sizes = _lossy_star(100, 0.1, FULL_VIEW_WITHIN)
    assert min(sizes) < 64


def test_a_full_view_of_100_fills_within_a_round_despite_lost_frames() -> None:
    sizes = _lossy_star(100, 0.1, FULL_VIEW_WITHIN)
    assert min(sizes) == 64, sorted(sizes)


def test_a_first_contact_is_answered_so_both_sides_know_first_hand() -> None:
    ids = [f"n{i:02d}" for i in range(12)]
    net = _Star(ids)
    net.run_for(1.0)  # far below a gossip round: only hellos and their answers
    for node in ids:
        view = net.core(node).directory
        assert len(view.peers) == 11 and view.unconfirmed() == [], node


def test_without_the_answer_entries_stay_hearsay(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: a hello from a new peer is not answered."""
    monkeypatch.setattr(NodeCore, "_hello_due", lambda self, peer, spacing: False)
    ids = [f"n{i:02d}" for i in range(12)]
    net = _Star(ids)
    net.run_for(1.0)
    assert any(net.core(n).directory.unconfirmed() for n in ids)
