"""The per-peer score and bans of p2pnode/net/guard.py (pure: time passed in)."""

from __future__ import annotations

import math

import attrs
import pytest

from p2pnode.net.guard import GuardLimits, PeerGuard
from protocols.askguard import AskLimits, AskScores
from protocols.codec import encode
from protocols.messages import AskForBid, Hello, NodeInfo
from protocols.node import broadcast_refusal


def test_garbage_bans_and_bans_double_on_repeat() -> None:
    guard = PeerGuard(GuardLimits(threshold=10.0, leak_per_s=0.0, ban=60.0, max_ban=200.0))
    bans = [guard.penalize("m", "undecodable", 0.0) for _ in range(10)]
    assert bans == [0.0] * 9 + [60.0]
    assert guard.banned("m", 59.9) and not guard.banned("m", 60.0)
    assert guard.penalize("m", "undecodable", 30.0) == 0.0  # in flight while banned: counted only
    assert guard.stats(30.0)["rejected_by_peer"]["m"] == {"undecodable": 11}
    again = [guard.penalize("m", "bad_varint", 61.0) for _ in range(2)]  # weight 5 each
    assert again == [0.0, 120.0]
    third = [guard.penalize("m", "bad_varint", 200.0) for _ in range(2)]
    assert third == [0.0, 200.0]  # capped at max_ban
    stats = guard.stats(200.0)
    assert stats["bans_by_peer"] == {"m": 3} and stats["banned"] == {"m": 200.0}


def test_the_score_leaks_so_occasional_rejections_never_ban() -> None:
    guard = PeerGuard()  # defaults: threshold 30, leak 0.5/s
    now = 0.0
    for _ in range(1000):  # one unauthorized frame every 2 s, for half an hour
        assert not guard.penalize("honest", "unauthorized", now)
        now += 2.0
    assert not guard.banned("honest", now)
    # Without the leak, the same peer is banned within a minute.
    no_leak = PeerGuard(GuardLimits(leak_per_s=0.0))
    assert any(no_leak.penalize("honest", "unauthorized", t * 2.0) for t in range(30))
    # And with no threshold at all, a flood is never banned.
    open_door = PeerGuard(GuardLimits(threshold=math.inf))
    assert not any(open_door.penalize("m", "forged", 0.0) for _ in range(1000))


def test_broadcast_refusal_allows_only_signed_broadcast_asks() -> None:
    ask = AskForBid(
        job_id="j",
        slot=0,
        attempt=1,
        engine="process",
        cpu=1.0,
        memory=1,
        broadcast=True,
        bid_window_ms=500,
    )
    assert broadcast_refusal("p", encode(ask, msg_id="p:1:1", sender="p")) is None
    assert "claims sender" in str(broadcast_refusal("q", encode(ask, msg_id="p:1:1", sender="p")))
    direct = attrs.evolve(ask, broadcast=False)
    assert "not allowed" in str(broadcast_refusal("p", encode(direct, msg_id="p:1:2", sender="p")))
    hello = Hello(info=NodeInfo(node_id="p"))
    assert "not allowed" in str(broadcast_refusal("p", encode(hello, msg_id="p:1:3", sender="p")))
    assert broadcast_refusal("p", b"\xc1") is not None


def test_a_flood_of_new_identities_does_not_evict_a_ban(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("p2pnode.net.guard.MAX_TRACKED_PEERS", 3)
    guard = PeerGuard(GuardLimits(threshold=2.0, leak_per_s=0.0))
    guard.penalize("m", "undecodable", 0.0)
    assert guard.penalize("m", "undecodable", 0.0)
    for i in range(100):  # one bad frame each: counted, not banned
        guard.penalize(f"sybil-{i}", "unauthorized", 1.0)
    assert len(guard.peers) == 3
    assert guard.banned("m", 2.0)


def test_the_ask_table_is_bounded_and_keeps_backoffs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("protocols.askguard.MAX_TRACKED_ASKERS", 3)
    scores = AskScores(AskLimits(threshold=1.0))
    assert scores.expired("m", 0.0)
    for i in range(100):
        scores.closed(f"owner-{i}", 1.0)
    assert len(scores.askers) == 3
    assert scores.ignoring("m", 2.0)
