"""At most ``max_dials`` outbound dials at once (issue 16, "Scale on one host").

Real py-libp2p hosts on loopback.  A node that learns many peers at once (a
joiner's first peer exchange) sends each a hello: with every dial started at
once, 100 nodes on 2 cores ran thousands of Noise handshakes side by side,
none finished within its timeout, and all that work was redone.  Dials beyond
``max_dials`` wait their turn; their frames stay queued and all arrive.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from p2pnode.identity import peer_id_of
from p2pnode.libp2p_transport import Libp2pTransport

PEERS = 5


@asynccontextmanager
async def _dialler_and_peers(max_dials: int) -> AsyncIterator[tuple[Libp2pTransport, list[Any]]]:
    async with AsyncExitStack() as stack:
        dialler = await stack.enter_async_context(
            Libp2pTransport(create_new_key_pair(), max_dials=max_dials)
        )
        peers = [
            await stack.enter_async_context(Libp2pTransport(create_new_key_pair()))
            for _ in range(PEERS)
        ]
        yield dialler, peers


async def _most_dials_at_once(max_dials: int) -> tuple[int, Libp2pTransport]:
    """Send one frame to each of ``PEERS`` unconnected peers at once; every
    frame must arrive.  Returns the most dials seen in flight together."""
    async with _dialler_and_peers(max_dials) as (dialler, peers):
        host = dialler._host
        connect = host.connect
        in_flight = most = 0

        async def slow_connect(info: Any) -> None:
            nonlocal in_flight, most
            in_flight += 1
            most = max(most, in_flight)
            try:
                await trio.sleep(0.2)  # a slow handshake on a busy host
                await connect(info)
            finally:
                in_flight -= 1

        host.connect = slow_connect
        for peer in peers:
            dialler.add_addresses(peer.local_id, peer.listen_addrs())
        for i, peer in enumerate(peers):
            await dialler.send(peer.local_id, b"hello %d" % i)
        for i, peer in enumerate(peers):
            with trio.fail_after(20):
                got = await peer.receive()
            assert (got.sender, got.data) == (dialler.local_id, b"hello %d" % i)
        assert dialler.stats.dial_failures == 0
        return most, dialler


async def test_dials_beyond_the_limit_wait_and_their_frames_arrive() -> None:
    most, dialler = await _most_dials_at_once(2)
    assert most == 2
    assert dialler.stats.dials_queued == PEERS - 2


async def test_one_slot_dials_one_at_a_time() -> None:
    most, dialler = await _most_dials_at_once(1)
    assert most == 1
    assert dialler.stats.dials_queued == PEERS - 1


async def test_without_the_limit_every_dial_starts_at_once() -> None:
    """Planted: a limit as large as the peers (the old behaviour)."""
    most, dialler = await _most_dials_at_once(PEERS)
    assert most == PEERS
    assert dialler.stats.dials_queued == 0


async def test_a_peer_connected_while_waiting_is_not_dialled_again() -> None:
    """A dial waiting for a slot finds the connection made meanwhile (the
    peer dialled us: a hello and its answer cross) and skips its own."""
    async with _dialler_and_peers(1) as (dialler, peers):
        first, second = peers[0], peers[1]
        for peer in (first, second):
            dialler.add_addresses(peer.local_id, peer.listen_addrs())
        host = dialler._host
        connect = host.connect
        dialled: list[str] = []

        async def slow_connect(info: Any) -> None:
            dialled.append(info.peer_id.to_base58())
            await trio.sleep(1.5)
            await connect(info)

        host.connect = slow_connect
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dialler.send, first.local_id, b"one")
            await trio.sleep(0.1)  # first holds the only slot
            nursery.start_soon(dialler.send, second.local_id, b"two")
            await second.connect(dialler.listen_addrs()[0])  # second dials us meanwhile
        for peer, data in ((first, b"one"), (second, b"two")):
            with trio.fail_after(20):
                assert (await peer.receive()).data == data
        assert dialled == [first.local_id]


@asynccontextmanager
async def _black_hole() -> AsyncIterator[str]:
    """The address of a peer that is paused (SIGSTOP) or suspended: TCP
    connects (the kernel accepts), but no handshake message ever comes."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)  # never accepted, never answered
        port = sock.getsockname()[1]
        yield f"/ip4/127.0.0.1/tcp/{port}/p2p/{peer_id_of(create_new_key_pair())}"
    finally:
        sock.close()


async def _live_dial_while_dialling(dialler: Libp2pTransport, live: Any, dead: str) -> bool:
    """Dial ``dead`` (a black hole), then ``live``: True if the live dial
    finished while the dead one was still waiting for its handshake."""
    waiting = True

    async def dial_dead() -> None:
        nonlocal waiting
        with pytest.raises(ConnectionError):
            await dialler.connect(dead)
        waiting = False

    async with trio.open_nursery() as nursery:
        nursery.start_soon(dial_dead)
        await trio.sleep(0.2)  # the dial to the dead peer is waiting for its handshake
        await dialler.connect(live.listen_addrs()[0])
        return waiting


async def _live_dial_while_a_dead_peer_is_redialled(dialler: Libp2pTransport, live: Any) -> bool:
    """Dial a black hole (it fails after ``dial_timeout``), then redial it
    while dialling ``live`` (``_live_dial_while_dialling``)."""
    async with _black_hole() as dead:
        with pytest.raises(ConnectionError):
            await dialler.connect(dead)  # the first dial: it held the only slot
        assert dialler.stats.dial_failures == 1
        return await _live_dial_while_dialling(dialler, live, dead)


async def test_a_dead_peers_redial_does_not_hold_up_dials_to_live_peers() -> None:
    """A peer whose dial failed (down or paused) is redialled in slots of its
    own: with one slot, a live peer is still dialled at once, not after the
    dead peer's ``dial_timeout``."""
    async with (
        Libp2pTransport(create_new_key_pair(), max_dials=1, dial_timeout=3.0) as dialler,
        Libp2pTransport(create_new_key_pair()) as live,
    ):
        assert await _live_dial_while_a_dead_peer_is_redialled(dialler, live)
        assert live.local_id in dialler.connected_peers()
        assert dialler.stats.dial_failures == 2  # both dials to the dead peer, no other


async def test_planted_one_pool_for_all_dials_holds_up_the_live_peer() -> None:
    """Planted: redials share the slots (the old behaviour): the live peer is
    dialled only after the dead peer's redial timed out."""
    async with (
        Libp2pTransport(create_new_key_pair(), max_dials=1, dial_timeout=3.0) as dialler,
        Libp2pTransport(create_new_key_pair()) as live,
    ):
        dialler._redial_slots = dialler._dial_slots
        assert not await _live_dial_while_a_dead_peer_is_redialled(dialler, live)


async def _live_dial_while_a_fresh_dead_peer_is_dialled(dialler: Libp2pTransport,
                                                        live: Any) -> bool:
    """A black hole never dialled before (a peer paused since we last heard
    of it) holds the only shared slot while ``live`` is dialled."""
    async with _black_hole() as dead:
        return await _live_dial_while_dialling(dialler, live, dead)


async def test_a_slow_first_dial_frees_its_shared_slot() -> None:
    """A first dial still waiting after ``slow_dial`` moves to a redial slot:
    with one slot, a live peer is dialled then, not after the dead peer's whole
    ``dial_timeout``."""
    async with (
        Libp2pTransport(create_new_key_pair(), max_dials=1, dial_timeout=4.0) as dialler,
        Libp2pTransport(create_new_key_pair()) as live,
    ):
        assert dialler.slow_dial == 1.0
        assert await _live_dial_while_a_fresh_dead_peer_is_dialled(dialler, live)
        assert live.local_id in dialler.connected_peers()
        assert dialler.stats.dials_moved == 1
        assert dialler.stats.dial_failures == 1
        # Both slots are free again: a dial to another live peer goes at once.
        assert dialler._dial_slots.value == 1 and dialler._redial_slots.value == 1


async def test_a_fast_dial_keeps_its_slot_and_frees_it() -> None:
    """A dial that connects before ``slow_dial`` is never moved, and its
    slot is free afterwards."""
    async with _dialler_and_peers(1) as (dialler, peers):
        for peer in peers:
            await dialler.connect(peer.listen_addrs()[0])
        assert dialler.stats.dials_moved == 0
        assert dialler._dial_slots.value == 1 and dialler._redial_slots.value == 1


async def test_planted_slow_first_dial_keeps_the_shared_slot() -> None:
    """Planted: a slow first dial is never moved (the old behaviour): the live
    peer waits for the dead peer's whole ``dial_timeout``."""
    async with (
        Libp2pTransport(create_new_key_pair(), max_dials=1, dial_timeout=4.0) as dialler,
        Libp2pTransport(create_new_key_pair()) as live,
    ):
        dialler.slow_dial = float("inf")
        assert not await _live_dial_while_a_fresh_dead_peer_is_dialled(dialler, live)
