"""An abusive peer against a real node, over loopback libp2p.

The node under attack is a real ``open_node`` (transport, store, process
executor); the abuser is a bare ``Libp2pTransport`` written here, opening
``/p2pnode/frame/1.0.0`` streams to the node and writing what no correct peer
writes, and flooding asks for jobs it invented.  An honest owner submits real
jobs to the same node meanwhile.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import attrs
import msgpack
import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.score import ScoreParams

from p2pnode.libp2p_transport import FRAME_PROTOCOL, Libp2pTransport
from p2pnode.net.framing import encode_frame, encode_uvarint
from p2pnode.net.guard import GuardLimits
from p2pnode.node import Node, NodeSettings, open_node
from p2pnode.outputs import BLOB_PROTOCOL
from protocols.askguard import AskLimits
from protocols.codec import encode
from protocols.config import ANNOUNCE_TOPIC, Timings
from protocols.messages import AskForBid, Cancel, Hello, Message, NodeInfo
from tests.test_real_inprocess import process_job, wait_for, wait_job

pytestmark = pytest.mark.slow

TIMINGS = Timings(lease_ttl=2.0, lease_grace=0.5)
FRAME_TIMEOUT = 0.5  # the node's partial-frame bound in these tests (default 10 s)


@asynccontextmanager
async def target_and_owner(
    root: Path, guard: GuardLimits | None = None
) -> AsyncIterator[tuple[Node, Node]]:
    """A compute node under attack, and an honest owner (no compute) that
    submits its jobs there."""
    async with AsyncExitStack() as stack:
        target = await stack.enter_async_context(
            open_node(
                NodeSettings(
                    data_dir=root / "target",
                    executors=("process",),
                    timings=TIMINGS,
                    seed=1,
                    guard=guard or GuardLimits(),
                    asks=AskLimits(threshold=4.0),  # a backoff within seconds
                )
            )
        )
        target.transport.frame_timeout = FRAME_TIMEOUT
        owner = await stack.enter_async_context(
            open_node(
                NodeSettings(
                    data_dir=root / "owner",
                    compute=False,
                    timings=TIMINGS,
                    seed=2,
                    bootstrap=(target.listen_addrs()[0],),
                )
            )
        )
        await wait_for(
            lambda: target.node_id in {p["node_id"] for p in owner.peers()},
            "the owner to know the target",
        )
        yield target, owner


def rejected(node: Node, peer: str) -> dict[str, int]:
    record = node.transport.guard.peers.get(peer)
    return dict(record.rejected) if record else {}


class Abuser:
    def __init__(self, transport: Libp2pTransport, target: Node) -> None:
        self.t = transport
        self.target = target
        self.ids = itertools.count(1)

    def frame(self, message: Message, sender: str = "") -> bytes:
        me = self.t.local_id
        return encode(message, msg_id=f"{me}:1:{next(self.ids)}", sender=sender or me)

    async def write(self, data: bytes, *, close: bool = True) -> Any:
        """Write raw bytes on a new frame stream; returns the stream if kept open."""
        stream = await self.t.open_stream(self.target.node_id, FRAME_PROTOCOL)
        await stream.write(data)
        if close:
            await stream.close()
            return None
        return stream

    async def expect(self, reason: str, count: int = 1) -> None:
        await wait_for(
            lambda: rejected(self.target, self.t.local_id).get(reason, 0) >= count,
            f"{count} {reason} rejection(s) against the abuser "
            f"(got {rejected(self.target, self.t.local_id)})",
        )


def invented_ask(i: int) -> AskForBid:
    return AskForBid(
        job_id=f"j-invented{i:08d}",
        slot=0,
        attempt=1,
        engine="process",
        cpu=0.1,
        memory=2**20,
        bid_window_ms=500,
    )


async def test_abusive_peer_is_counted_banned_and_honest_jobs_complete(tmp_path: Path) -> None:
    guard = GuardLimits(ban=3.0)  # default threshold; a short first ban to see it end
    async with (
        target_and_owner(tmp_path, guard) as (target, owner),
        Libp2pTransport(create_new_key_pair(), max_frame=1024 * 1024) as raw,
    ):
        job_id = await owner.submit(
            process_job("honest", 'sleep 1; echo ok > "$P2PNODE_OUTPUTS/o"', count=3)
        )
        await raw.connect(target.listen_addrs()[0])
        abuser, me = Abuser(raw, target), raw.local_id

        # Every kind of garbage, each counted against the abuser by reason.
        await abuser.write(b"\xff" * 11)  # a varint that never ends
        await abuser.expect("bad_varint")
        await abuser.write(encode_uvarint(2**40))  # a length prefix of a terabyte
        await abuser.expect("absurd_length")
        kept = await abuser.write(encode_uvarint(1000) + b"x" * 10, close=False)  # then idles
        await abuser.expect("idle_partial")
        await abuser.write(encode_frame(b"\xc1 not msgpack"))
        await abuser.expect("undecodable")
        await abuser.write(encode_frame(b"\0" * (300 * 1024)))  # over the node's 256 KiB
        await abuser.expect("oversized")
        forged = Cancel(execution_id="x/0/1", epoch=1, reason="forged")
        await abuser.write(encode_frame(abuser.frame(forged, sender=owner.node_id)))
        await abuser.expect("forged")
        assert not target.transport.banned(me)  # 18 points: below the threshold
        del kept

        # A flood of asks for invented jobs: at most its share is reserved,
        # and once enough expire unused its asks are ignored.
        reserved_peak = 0
        for i in range(200):
            await raw.send(target.node_id, abuser.frame(invented_ask(i)))
            mine = [r for r in target._core.holder.reservations.values() if r.owner == me]
            reserved_peak = max(reserved_peak, len(mine))
            scores = target._core.holder.ask_scores.stats(trio.current_time())
            if scores.get(me, {}).get("backoffs"):
                break
            await trio.sleep(0.05)
        asks = target._core.holder.ask_scores.stats(trio.current_time())[me]
        assert asks["backoffs"] == 1 and asks["over_share"] > 0, asks
        assert 1 <= reserved_peak <= 2, reserved_peak  # half of 4 executions

        # More garbage: over the threshold, banned.
        for _ in range(20):
            if target.transport.banned(me):
                break
            await raw.send(target.node_id, b"\xc1")
            await trio.sleep(0.02)
        await wait_for(lambda: target.transport.banned(me), "the abuser to be banned")
        assert target.transport.stats.bans == 1
        assert ID.from_base58(me) in target.transport._pubsub.blacklisted_peers
        await wait_for(
            lambda: me not in target.transport.connected_peers(), "the abuser to be disconnected"
        )
        # While banned: its connections are closed, its streams refused, its
        # frames never reach the core.
        drops = target._core.dropped.get(me, 0)
        refused = target.transport.guard.refused
        with trio.move_on_after(5), suppress(ConnectionError):
            await abuser.write(encode_frame(b"\xc1"))
        await wait_for(
            lambda: target.transport.guard.refused > refused, "a refused connection or stream"
        )
        assert target._core.dropped.get(me, 0) == drops

        # The ban ends (3 s here): the peer is let back in, and a repeat
        # offence bans it for twice as long.
        await wait_for(lambda: not target.transport.banned(me), "the ban to end")
        await wait_for(
            lambda: ID.from_base58(me) not in target.transport._pubsub.blacklisted_peers,
            "the abuser to leave the gossipsub blacklist",
        )
        await raw.connect(target.listen_addrs()[0])
        for _ in range(10):  # 5 points each: 6 reach the threshold
            await abuser.write(b"\xff" * 11)
            await trio.sleep(0.05)
            if target.transport.banned(me):
                break
        await wait_for(lambda: target.transport.banned(me), "the second ban")
        stats = target.stats()["peers"]
        assert stats["bans_by_peer"][me] == 2
        assert stats["banned"][me] > 3.0  # 6 s, minus what has passed

        # The honest owner was served all along and holds nothing against it.
        view = await wait_job(owner, job_id)
        assert view["state"] == "completed", view
        assert owner.node_id not in target.transport.guard.peers
        assert not target._core.dropped.get(owner.node_id)
        honest_asks = target._core.holder.ask_scores.stats(trio.current_time()).get(owner.node_id)
        assert honest_asks is None or honest_asks["backoffs"] == 0, honest_asks


async def test_without_a_threshold_the_abuser_is_never_banned(tmp_path: Path) -> None:
    """The guard matters: with no threshold the same garbage is only counted."""
    async with (
        target_and_owner(tmp_path, GuardLimits(threshold=math.inf)) as (target, _owner),
        Libp2pTransport(create_new_key_pair()) as raw,
    ):
        await raw.connect(target.listen_addrs()[0])
        for _ in range(40):
            await raw.send(target.node_id, b"\xc1")
        await wait_for(
            lambda: target._core.dropped.get(raw.local_id, 0) >= 40, "40 drops against the peer"
        )
        assert not target.transport.banned(raw.local_id)
        assert raw.local_id in target.transport.connected_peers()
        assert target.transport.stats.bans == 0


async def test_without_the_frame_timeout_a_partial_frame_holds_its_stream(
    tmp_path: Path,
) -> None:
    """The guard matters: with no partial-frame bound, a stream left mid-frame
    is held open and counted against nobody."""
    async with (
        target_and_owner(tmp_path) as (target, _owner),
        Libp2pTransport(create_new_key_pair()) as raw,
    ):
        target.transport.frame_timeout = math.inf
        await raw.connect(target.listen_addrs()[0])
        abuser = Abuser(raw, target)
        stream = await abuser.write(encode_uvarint(1000) + b"x" * 10, close=False)
        await trio.sleep(FRAME_TIMEOUT * 4)  # well past the bound the node would apply
        await stream.write(b"y" * 10)  # still open: the node never reset it
        assert rejected(target, raw.local_id) == {}


async def test_honest_peer_with_cut_frames_is_never_counted(tmp_path: Path) -> None:
    """A connection lost mid-frame (the stream reset after part of a frame) is
    loss, not abuse: counted against nobody, however often it happens."""
    async with (
        target_and_owner(tmp_path) as (target, owner),
        Libp2pTransport(create_new_key_pair()) as peer,
    ):
        job_id = await owner.submit(process_job("honest", 'echo ok > "$P2PNODE_OUTPUTS/o"'))
        await peer.connect(target.listen_addrs()[0])
        for _ in range(40):
            stream = await peer.open_stream(target.node_id, FRAME_PROTOCOL)
            await stream.write(encode_uvarint(1000) + b"x" * 100)
            await stream.reset()
            # One stream at a time, as a sender that lost its connection would.
            await wait_for(
                lambda: peer.local_id not in target.transport._inbound, "the stream to end"
            )
        # A valid frame after all that is still delivered.
        hello = Hello(info=NodeInfo(node_id=peer.local_id, compute=False))
        await peer.send(
            target.node_id, encode(hello, msg_id=f"{peer.local_id}:1:1", sender=peer.local_id)
        )
        await wait_for(
            lambda: peer.local_id in {p["node_id"] for p in target.peers()}, "the peer's hello"
        )
        view = await wait_job(owner, job_id)
        assert view["state"] == "completed", view
        assert rejected(target, peer.local_id) == {}
        assert not target.transport.banned(peer.local_id)


@pytest.mark.parametrize("scoring", [True, False])
async def test_invalid_broadcasts_lower_the_forwarders_gossipsub_score(
    tmp_path: Path, scoring: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Broadcasts the announce validator refuses count as invalid messages (P4)
    in gossipsub's score of the peer that forwarded them; below the publish
    threshold gossipsub drops that peer's messages, even valid ones, before
    our ban threshold is reached.  Without the score parameters, it does not."""
    if not scoring:
        monkeypatch.setattr("p2pnode.libp2p_transport.SCORE_PARAMS", ScoreParams())
    async with (
        target_and_owner(tmp_path) as (target, _owner),
        Libp2pTransport(create_new_key_pair()) as raw,
    ):
        await raw.connect(target.listen_addrs()[0])
        await raw.subscribe(ANNOUNCE_TOPIC)
        await raw.wait_for_mesh(target.node_id, ANNOUNCE_TOPIC, timeout=15)
        abuser = Abuser(raw, target)
        hello = Hello(info=NodeInfo(node_id=raw.local_id, compute=False))
        for _ in range(20):  # a Hello is not allowed on a topic
            await raw.publish(ANNOUNCE_TOPIC, abuser.frame(hello))
        # (With scoring, the gate drops what follows the 11th before validation.)
        await abuser.expect("invalid_broadcast", 11)
        scorer = target.transport._router.scorer
        score = scorer.topic_score(ID.from_base58(raw.local_id), ANNOUNCE_TOPIC)
        assert not target.transport.banned(raw.local_id)  # < 30 points: not our ban

        def bid_received() -> bool:
            with suppress(trio.WouldBlock):
                while True:
                    if raw._in_recv.receive_nowait().sender == target.node_id:
                        return True
            return False

        got_bid = False
        with trio.move_on_after(5):
            for i in itertools.count():  # a valid broadcast ask, now and again
                ask = attrs.evolve(invented_ask(i), broadcast=True)
                await raw.publish(ANNOUNCE_TOPIC, abuser.frame(ask))
                await trio.sleep(0.5)
                if got_bid := bid_received():
                    break
    if scoring:
        assert score < -10, score
        assert not got_bid  # gossipsub's publish gate dropped even the valid asks
    else:
        assert got_bid


async def test_bad_blob_requests_count_against_the_sender(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("p2pnode.outputs.REQUEST_TIMEOUT", FRAME_TIMEOUT)
    async with (
        target_and_owner(tmp_path) as (target, _owner),
        Libp2pTransport(create_new_key_pair()) as raw,
    ):
        await raw.connect(target.listen_addrs()[0])
        abuser = Abuser(raw, target)
        garbage = await raw.open_stream(target.node_id, BLOB_PROTOCOL)
        await garbage.write(encode_frame(b"\xc1"))
        await abuser.expect("undecodable")
        silent = await raw.open_stream(target.node_id, BLOB_PROTOCOL)  # never asks
        await abuser.expect("idle_partial")
        await garbage.close()
        await silent.close()
        # An honest request for a blob the node lacks is answered, not counted.
        before = rejected(target, raw.local_id)
        honest = await raw.open_stream(target.node_id, BLOB_PROTOCOL)
        await honest.write(encode_frame(msgpack.packb({"digest": "sha256:" + "0" * 64})))
        with trio.fail_after(10):
            answer = await honest.read(4096)
        assert b"no such blob" in answer
        assert rejected(target, raw.local_id) == before


@pytest.mark.parametrize("bounded", [True, False])
async def test_a_flood_of_idle_streams_is_bounded(tmp_path: Path, bounded: bool) -> None:
    async with (
        target_and_owner(tmp_path) as (target, _owner),
        Libp2pTransport(create_new_key_pair()) as raw,
    ):
        limit = 8
        target.transport.max_inbound_streams = limit if bounded else 1000
        await raw.connect(target.listen_addrs()[0])
        streams = []
        for _ in range(limit + 3):  # each opened, never written to
            with suppress(ConnectionError):  # those over the limit may fail to open
                streams.append(await raw.open_stream(target.node_id, FRAME_PROTOCOL))
        if bounded:
            await Abuser(raw, target).expect("too_many_streams", 3)
            assert target.transport._inbound[raw.local_id] == limit
        else:  # the guard matters: every idle stream is held, counted against nobody
            await wait_for(
                lambda: target.transport._inbound.get(raw.local_id) == limit + 3,
                "every stream to be held",
            )
            assert rejected(target, raw.local_id) == {}
        for stream in streams:
            await stream.reset()
        await wait_for(lambda: raw.local_id not in target.transport._inbound, "streams to end")
