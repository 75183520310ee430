"""Node health in the directory (issue 14): goodbye, heartbeats, status, fast joins.

Pure protocol tests over ``ProtoNet`` (node cores, virtual time): a peer that
says goodbye leaves every view at once and a job constrained to it fails fast
naming the constraint; a silent peer turns "suspect", then leaves; idle live
peers stay (heartbeats); a joiner fills its view from one exchange.
"""

from __future__ import annotations

import random

import pytest

from protocols.config import NodeConfig, Timings
from protocols.directory import Directory
from protocols.events import MessageReceived, Stopping, SubmitJob
from protocols.messages import Goodbye, Hello, NodeInfo, Peers
from protocols.node import NodeCore
from tests.protonet import ProtoNet, batch_spec, wire_frame

IDS = ["a", "b", "c"]


def _health(net: ProtoNet, node: str) -> dict[str, dict[str, object]]:
    return {row["info"].node_id: row for row in net.core(node).peer_health(net.now)}


def _joined(ids: list[str], **kw: object) -> ProtoNet:
    net = ProtoNet(ids, **kw)  # type: ignore[arg-type]
    net.run_for(5.0)
    for node in ids:
        assert set(net.core(node).directory.peers) == set(ids) - {node}
    return net


def test_goodbye_drops_the_peer_everywhere_and_a_job_pinned_to_it_fails_fast() -> None:
    net = _joined(IDS, labels={"b": {"host": "b"}})
    net.feed("b", Stopping(reason="stopped by operator"))
    assert len(net.frames(Goodbye)) == 2  # one per peer of b's view
    net.crash("b")
    net.run_for(1.0)
    for node in ("a", "c"):
        assert "b" not in net.core(node).directory.peers
        row = _health(net, node)["b"]
        assert row["status"] == "gone" and row["left"] == "stopped by operator"
    assert {"node_id": "b", "reason": "stopped by operator"} in net.notes_of("peer_left")

    net.feed("a", SubmitJob("j1", batch_spec(labels={"host": "b"})))
    net.run_until(lambda: net.job_state("a", "j1") == "failed", limit=net.now + 30)
    reason = net.core("a").describe("j1")["reason"]
    assert "no node matches the constraints" in reason and "'host': 'b'" in reason


def test_without_goodbye_a_constrained_job_waits_with_a_reason_naming_the_constraint() -> None:
    """A SIGKILLed peer says nothing: the job waits, and says why."""
    net = _joined(IDS, labels={"b": {"host": "b"}})
    net.crash("b")
    net.feed("a", SubmitJob("j1", batch_spec(labels={"host": "b"})))
    net.run_for(20.0)
    view = net.core("a").describe("j1")
    assert view["state"] == "queued"
    assert view["reason"].startswith("waiting: ") and "'host': 'b'" in view["reason"]
    assert view["slots"][0]["reason"] == view["reason"]


def test_hearsay_does_not_bring_back_a_peer_that_said_goodbye() -> None:
    net = _joined(IDS)
    info_b = net.core("b").me
    net.feed("a", MessageReceived("b", wire_frame("b", Goodbye())))
    assert "b" not in net.core("a").directory.peers
    net.feed("a", MessageReceived("c", wire_frame("c", Peers(peers=[net.core("c").me, info_b]))))
    assert "b" not in net.core("a").directory.peers
    # b itself saying hello again (it restarted) brings it back.
    net.feed("a", MessageReceived("b", wire_frame("b", Hello(info=info_b, want_peers=False))))
    assert "b" in net.core("a").directory.peers
    assert _health(net, "a")["b"]["status"] == "alive"



def test_a_silent_peer_turns_suspect_then_leaves_while_idle_live_peers_stay() -> None:
    t = Timings()
    net = _joined(IDS)
    net.crash("c")
    net.run_for(t.peer_heartbeat * 1.5 + t.gossip_interval)
    health = _health(net, "a")
    assert health["c"]["status"] == "suspect" and health["b"]["status"] == "alive"
    net.run_for(t.peer_expiry + t.gossip_interval * 1.2)
    assert set(net.core("a").directory.peers) == {"b"}
    # Idle a and b heard nothing but each other's heartbeats for minutes.
    net.run_for(t.peer_expiry * 3)
    assert set(net.core("a").directory.peers) == {"b"}
    assert set(net.core("b").directory.peers) == {"a"}
    assert _health(net, "b")["a"]["status"] == "alive"


def test_the_heartbeat_is_what_keeps_idle_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test above fails without heartbeats: idle peers expire each other."""
    monkeypatch.setattr(NodeCore, "_heartbeat", lambda self: None)
    net = _joined(["a", "b", "c", "d", "e", "f"])
    net.run_for(Timings().peer_expiry * 3)
    assert any(len(net.core(n).directory.peers) < 5 for n in net.ids), (
        "peers stayed without heartbeats: the heartbeat test proves nothing"
    )


def test_heartbeat_cost_is_bounded_by_the_view_not_the_rounds() -> None:
    t = Timings()
    net = _joined(IDS)
    before = net.core("a").out.sent_by_type.get("hello", 0)
    net.run_for(t.peer_heartbeat * 10)
    hellos = net.core("a").out.sent_by_type.get("hello", 0) - before
    # One exchange per gossip round plus one heartbeat per peer per heartbeat
    # period (at most a gossip interval early).
    rounds = t.peer_heartbeat * 10 / (0.8 * t.gossip_interval)
    per_peer = t.peer_heartbeat * 10 / (t.peer_heartbeat - 1.2 * t.gossip_interval)
    assert hellos <= rounds + 2 * per_peer + 2


class _LateJoin(ProtoNet):
    """Everyone knows everyone but ``j``, which bootstraps from ``n00`` only."""

    def config(self, node_id: str) -> NodeConfig:
        bootstrap = (
            ("n00",) if node_id == "j" else tuple(i for i in self.ids if i not in (node_id, "j"))
        )
        return NodeConfig(
            node_id=node_id, executors=("sim",), bootstrap=bootstrap, timings=self.timings
        )


def _join_late(count: int) -> tuple[ProtoNet, list[str]]:
    ids = [f"n{i:02d}" for i in range(count)]
    net = _LateJoin([*ids, "j"], absent=frozenset({"j"}))
    net.run_for(3.0)
    net.start("j")
    net.run_for(1.0)  # far below a gossip round (24 s at the earliest)
    return net, ids


def test_a_joiner_learns_a_whole_view_from_one_exchange() -> None:
    net, ids = _join_late(20)
    assert set(net.core("j").directory.peers) == set(ids)
    # ... and every one of them learnt the joiner (its hello), in both directions.
    assert all("j" in net.core(n).directory.peers for n in ids)


def test_a_joiner_asking_for_the_default_sample_would_not(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: without the whole-view request the joiner knows a sample only."""
    monkeypatch.setattr(NodeCore, "_sample_wanted", lambda self: self.config.peer_sample)
    net, _ = _join_late(20)
    assert len(net.core("j").directory.peers) == NodeConfig(node_id="x").peer_sample


def test_a_hello_asking_for_a_sample_gets_that_many_entries() -> None:
    ids = [f"n{i:02d}" for i in range(20)]
    net = _joined(ids)
    me = NodeInfo(node_id="z", executors=["sim"])
    net.feed("n00", MessageReceived("z", wire_frame("z", Hello(info=me, sample=64))))
    (answer,) = [f.message for f in net.frames(Peers) if f.dest == "z"]
    assert isinstance(answer, Peers) and len(answer.peers) == 20  # n00 and its 19 peers
    net.feed("n01", MessageReceived("z", wire_frame("z", Hello(info=me))))
    (answer,) = [f.message for f in net.frames(Peers) if f.dest == "z" and f.sender == "n01"]
    assert len(answer.peers) == NodeConfig(node_id="x").peer_sample


def test_directory_remove_and_departed_bound() -> None:
    me = NodeInfo(node_id="me")
    directory = Directory(me, view_size=2, rng=random.Random(1))
    for i in range(4):
        directory.upsert(NodeInfo(node_id=f"p{i}"), now=float(i), direct=True)
    assert set(directory.peers) == {"p2", "p3"}
    assert directory.remove("p3", now=10.0, reason="bye")
    assert not directory.remove("p3", now=11.0, reason="bye")  # not in the view any more
    assert set(directory.departed) == {"p3"}
    assert not directory.upsert(NodeInfo(node_id="p3"), now=12.0, direct=False)
    assert directory.expire(now=500.0, max_age=300.0) == ["p2"]
    assert set(directory.departed) == {"p2"}  # p3 forgotten after the same bound
    assert directory.departed["p2"].reason == "silent for 300s"
    assert directory.upsert(NodeInfo(node_id="p3"), now=501.0, direct=False)
