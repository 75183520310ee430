"""Greetings to hearsay peers back off (issue 16, "Scale on one host").

A node that learnt a peer second hand says hello to it, and again if that
peer does not answer: our hello (or its answer) may have been lost.  But each
unanswered greeting doubles the wait for the next.  Re-greeting every round
fed on its own failures: on a saturated host dials time out, the entries stay
unanswered, and the hellos to them kept the host saturated (at 100 nodes on 2
cores a node sent ~140 hellos a minute and ~2 arrived).

Pure protocol tests over ``ProtoNet``; each rule has a planted-bug test.
"""

from __future__ import annotations

import itertools

import attrs
import pytest

from protocols import codec
from protocols.config import NodeConfig, Timings
from protocols.directory import Directory
from protocols.events import MessageReceived
from protocols.messages import Hello, NodeInfo, Peers
from protocols.node import JOIN_RETRY, NodeCore
from tests.protonet import ProtoNet, wire_frame

# A long expiry (an hour) tells a back-off from a greeting per round: with
# the default 300 s the entry expires after ~8 greetings either way.
T = Timings(peer_expiry=3600.0)
GHOST = NodeInfo(node_id="ghost", executors=["sim"], cpu=1.0, memory=2**30)




class _Clocked(ProtoNet):
    """Records the virtual time of every greeting (``hello(want_peers=false)``)
    ``a`` sends to the ghost.  (A gossip round's peer exchange may pick the
    ghost too: that is one random view entry per round, not a greeting.)"""

    def __init__(self) -> None:
        self.greeted_at: list[float] = []
        self.hello_at: list[float] = []  # every hello, peer exchanges included
        super().__init__(["a", "b", GHOST.node_id], timings=T, absent=frozenset({GHOST.node_id}))

    def config(self, node_id: str) -> NodeConfig:
        config = super().config(node_id)
        return attrs.evolve(config, bootstrap=("b",) if node_id == "a" else ())

    def _emit(self, sender: str, dest: str, data: bytes, topic: str) -> None:
        if sender == "a" and dest == GHOST.node_id:
            message = codec.decode(data).message
            if isinstance(message, Hello):
                self.hello_at.append(self.now)
                if not message.want_peers:
                    self.greeted_at.append(self.now)
        super()._emit(sender, dest, data, topic)


def _ghost_heard_of(seconds: float) -> _Clocked:
    """``a`` and ``b`` joined; ``a`` hears of a peer that never answers (it
    died after ``b`` learnt it), then the network runs ``seconds``."""
    net = _Clocked()
    net.run_for(5.0)
    peers = Peers(peers=[net.core("b").me, GHOST])
    net.feed("a", MessageReceived("b", wire_frame("b", peers)))
    assert not net.core("a").directory.peers[GHOST.node_id].confirmed
    net.run_for(seconds)
    return net


def _backs_off(times: list[float]) -> bool:
    """The k-th gap between greetings is at least ``JOIN_RETRY * 2**k``
    (greetings go out at gossip rounds only, so a gap is never shorter)."""
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return all(gap >= JOIN_RETRY * 2**k - 1e-9 for k, gap in enumerate(gaps))


def test_unanswered_greetings_double_their_spacing_until_the_entry_expires() -> None:
    net = _ghost_heard_of(T.peer_expiry + 2 * T.gossip_interval)
    times = net.greeted_at
    assert _backs_off(times), times
    # At most log2(expiry / JOIN_RETRY) + 1 greetings (one per gossip round
    # would be ~120); then the entry expired, and its back-off is forgotten.
    assert 6 <= len(times) <= 12, times
    assert GHOST.node_id not in net.core("a").directory.peers
    assert net.core("a")._greet_spacing == {}


def test_without_the_backoff_a_silent_entry_is_greeted_every_round(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planted: the spacing never grows (the old rule: every round)."""
    real = NodeCore._greetings_due

    def no_backoff(self: NodeCore) -> list[str]:
        due = real(self)
        self._greet_spacing.clear()
        return due

    monkeypatch.setattr(NodeCore, "_greetings_due", no_backoff)
    net = _ghost_heard_of(T.peer_expiry + 2 * T.gossip_interval)
    assert len(net.greeted_at) > 50, net.greeted_at


def test_the_heartbeat_does_not_undo_the_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: the heartbeat says hello to hearsay entries too (every
    heartbeat period, whatever their back-off)."""
    real = NodeCore._heartbeat

    def heartbeat_to_all(self: NodeCore) -> None:
        real(self)
        t = self.config.timings
        due = self.out.now - (t.peer_heartbeat - 1.2 * t.gossip_interval)
        self._say_hellos([p for p in self.directory.unconfirmed() if self._hello_due(p, 0.0)
                          and self._hello_at[p] <= due])

    monkeypatch.setattr(NodeCore, "_heartbeat", heartbeat_to_all)
    net = _ghost_heard_of(T.peer_expiry + 2 * T.gossip_interval)
    assert not _backs_off(net.greeted_at), net.greeted_at


def test_an_answer_ends_the_backoff_and_the_peer_gets_heartbeats() -> None:
    """A hearsay entry that answers (late) is confirmed: no more greetings,
    and from then on the usual heartbeat keeps it."""
    net = _ghost_heard_of(20.0)
    assert len(net.greeted_at) >= 3
    net.feed("a", MessageReceived(GHOST.node_id, wire_frame(GHOST.node_id, Hello(info=GHOST))))
    assert net.core("a").directory.peers[GHOST.node_id].confirmed
    before = len(net.greeted_at)
    net.run_for(T.peer_heartbeat - 1.2 * T.gossip_interval - 5)
    assert net.core("a")._greet_spacing == {}
    assert len(net.greeted_at) == before  # no greeting before its heartbeat is due
    net.feed("a", MessageReceived(GHOST.node_id, wire_frame(GHOST.node_id, Hello(info=GHOST))))
    start = net.now
    net.run_for(4 * T.peer_heartbeat)
    heard = [start, *(t for t in net.hello_at if t > start), net.now]
    assert max(b - a for a, b in itertools.pairwise(heard)) <= T.peer_heartbeat, heard


def test_without_the_confirmation_an_answered_peer_is_still_greeted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planted: every view entry counts as hearsay (greeted on the back-off)."""
    monkeypatch.setattr(Directory, "unconfirmed", lambda self: sorted(self.peers))
    net = _ghost_heard_of(20.0)
    net.feed("a", MessageReceived(GHOST.node_id, wire_frame(GHOST.node_id, Hello(info=GHOST))))
    before = len(net.greeted_at)
    net.run_for(T.peer_heartbeat - 1.2 * T.gossip_interval - 5)
    assert len(net.greeted_at) > before
