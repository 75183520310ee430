"""Gossipsub control churn on an idle network (``p2pnode/net/gossip.py``), on
real libp2p hosts over loopback TCP.

py-libp2p 0.8.1's router keeps grafting and pruning while nothing is
published; p2pnode's ``P2pGossipSub`` does not, and its mesh still forms and
heals.  Small degrees (D 2-3) let a handful of hosts show what 0.8.1 does at
dozens of peers with D 6/4/12.  Each fix has a planted-bug test that restores
0.8.1's own method and sees the churn (or the wrong state) come back.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub

from p2pnode.libp2p_transport import Libp2pTransport
from p2pnode.net.gossip import P2pGossipSub
from protocols.config import ANNOUNCE_TOPIC

TOPIC = ANNOUNCE_TOPIC


async def _serve(t: Libp2pTransport, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    with trio.CancelScope() as scope:
        async with t:
            task_status.started(scope)
            await trio.sleep_forever()


@asynccontextmanager
async def meshed(
    n: int, degree: int, low: int, high: int, back_off: int = 60
) -> AsyncIterator[tuple[list[Libp2pTransport], list[trio.CancelScope]]]:
    """``n`` hosts, all connected to all, subscribed with the given degrees
    and prune back-off (s); returns them with the cancel scope that stops each."""
    nodes = [Libp2pTransport(create_new_key_pair(), idle_connection_timeout=0) for _ in range(n)]
    async with trio.open_nursery() as nursery:
        scopes = [await nursery.start(_serve, t) for t in nodes]
        for t in nodes:
            t._router.degree, t._router.degree_low, t._router.degree_high = degree, low, high
            t._router.prune_back_off = back_off
        for i, a in enumerate(nodes):
            for b in nodes[i + 1 :]:
                await a.connect(b.listen_addrs()[0])
        for t in nodes:
            await t.subscribe(TOPIC)
        try:
            yield nodes, scopes
        finally:
            nursery.cancel_scope.cancel()


def mesh(t: Libp2pTransport) -> set[ID]:
    return set(t._router.mesh.get(TOPIC, ()))


def total(nodes: list[Libp2pTransport], key: str) -> int:
    return sum(t.gossip_stats()[f"gossip_{key}"] for t in nodes)


async def wait_until(predicate: Any, what: str, timeout: float = 20.0) -> None:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(0.1)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def settled(nodes: list[Libp2pTransport], timeout: float = 30.0) -> None:
    """Wait until no mesh and no control count changed for a second (GRAFTs
    in flight have landed), at most ``timeout`` (0.8.1's router never settles)."""

    def state() -> list[Any]:
        return [(mesh(t), t.gossip_stats()) for t in nodes]

    with trio.move_on_after(timeout):
        last = state()
        while True:
            await trio.sleep(1)
            now = state()
            if now == last:
                return
            last = now


async def idle_churn(nodes: list[Libp2pTransport], window: float = 8.0) -> dict[str, int]:
    """GRAFTs and PRUNEs sent, and GRAFTs refused, by all ``nodes`` over an
    idle ``window`` once every mesh holds ``degree_low`` peers.  The callers'
    3 s prune back-off (60 s in use) lets the window see back-offs end:
    0.8.1 then grafts those peers again, p2pnode's router does not."""
    low = nodes[0]._router.degree_low
    await wait_until(lambda: all(len(mesh(t)) >= low for t in nodes), "meshes of degree_low")
    # Grafts in flight land and the heartbeat prunes any surplus (0.8.1's
    # router never settles: it is measured after the timeout).
    await settled(nodes, timeout=10)
    keys = ("grafts_sent", "prunes_sent", "grafts_refused")
    before = {k: total(nodes, k) for k in keys}
    await trio.sleep(window)
    return {k: total(nodes, k) - before[k] for k in keys}


async def test_an_idle_mesh_sends_no_control_messages() -> None:
    async with meshed(6, degree=2, low=1, high=3, back_off=3) as (nodes, _):
        churn = await idle_churn(nodes)
        assert churn == {"grafts_sent": 0, "prunes_sent": 0, "grafts_refused": 0}
        assert all(len(mesh(t)) >= 1 for t in nodes)


def plant_stock(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    for name in names:
        monkeypatch.setattr(P2pGossipSub, name, getattr(GossipSub, name))


async def test_stock_opportunistic_grafting_churn_is_seen(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: 0.8.1's opportunistic grafting (every heartbeat, any peer
    scoring 0): the meshes keep growing past degree_high and being pruned."""
    plant_stock(monkeypatch, "_perform_opportunistic_grafting")
    async with meshed(6, degree=2, low=1, high=3, back_off=3) as (nodes, _):
        churn = await idle_churn(nodes)
        assert churn["grafts_sent"] > 0
        assert churn["prunes_sent"] > 0


async def test_stock_router_refuses_grafts_while_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: all of 0.8.1's behaviour: on top of the churn, peers it
    pruned (and that hold it in back-off) are grafted again and refuse."""
    plant_stock(
        monkeypatch,
        "_perform_opportunistic_grafting",
        "mesh_heartbeat",
        "_check_back_off",
        "_emit_control_msgs",
    )
    async with meshed(6, degree=2, low=1, high=3, back_off=3) as (nodes, _):
        churn = await idle_churn(nodes)
        assert churn["grafts_refused"] > 0


@pytest.mark.parametrize("planted", [False, True])
async def test_each_grafted_peer_gets_one_graft(
    monkeypatch: pytest.MonkeyPatch, planted: bool
) -> None:
    """One heartbeat grafting three peers sends each exactly one GRAFT.
    Planted bug: 0.8.1's shared lists send the k-th peer k GRAFTs."""
    if planted:
        plant_stock(monkeypatch, "_emit_control_msgs")
    async with meshed(4, degree=8, low=4, high=12) as (nodes, _):
        a, rest = nodes[0], nodes[1:]
        await wait_until(lambda: all(len(mesh(t)) == 3 for t in nodes), "full meshes")
        await settled(nodes)
        before = [t.gossip_stats()["gossip_grafts_received"] for t in rest]
        peers = {ID.from_base58(t.local_id): [TOPIC] for t in rest}
        await a._router._emit_control_msgs(peers, {}, {})
        await wait_until(
            lambda: all(
                t.gossip_stats()["gossip_grafts_received"] > b
                for t, b in zip(rest, before, strict=True)
            ),
            "the GRAFTs",
        )
        await trio.sleep(0.5)
        got = [
            t.gossip_stats()["gossip_grafts_received"] - b
            for t, b in zip(rest, before, strict=True)
        ]
        if planted:
            assert got == [1, 2, 3]
        else:
            assert got == [1, 1, 1]


@pytest.mark.parametrize("planted", [False, True])
async def test_peers_the_heartbeat_prunes_are_backed_off_both_ways(
    monkeypatch: pytest.MonkeyPatch, planted: bool
) -> None:
    """Five peers graft a hub whose degree_high is 3: its heartbeat prunes
    them down to 2, and both ends of each prune hold a back-off, so neither
    grafts the other again for prune_back_off.  Planted bug: 0.8.1's
    heartbeat, which leaves the hub without a back-off for them."""
    if planted:
        plant_stock(monkeypatch, "mesh_heartbeat")
    async with meshed(6, degree=8, low=6, high=12) as (nodes, _):
        hub, spokes = nodes[0], nodes[1:]
        await wait_until(lambda: len(mesh(hub)) == 5, "every spoke in the hub's mesh")
        router = hub._router
        router.degree, router.degree_low, router.degree_high = 2, 1, 3
        await wait_until(lambda: len(mesh(hub)) == 2, "the hub's prune")
        pruned = [t for t in spokes if ID.from_base58(t.local_id) not in mesh(hub)]
        assert len(pruned) == 3
        hub_id = ID.from_base58(hub.local_id)
        for t in pruned:
            await wait_until(lambda t=t: t._router._check_back_off(hub_id, TOPIC), "the PRUNE")
        held = [router._check_back_off(ID.from_base58(t.local_id), TOPIC) for t in pruned]
        assert held == [not planted] * 3


@pytest.mark.parametrize("planted", [False, True])
async def test_a_graft_is_sent_after_the_slack_but_accepted_at_the_backoff_end(
    monkeypatch: pytest.MonkeyPatch, planted: bool
) -> None:
    """A back-off that ended a second ago: we still do not graft that peer
    (its own back-off of us may end a second later), but a GRAFT it sends is
    accepted.  Planted bug: 0.8.1's exact check, which grafts it at once."""
    if planted:
        plant_stock(monkeypatch, "_check_back_off")
    async with meshed(2, degree=2, low=1, high=3) as ((a, b), _):
        b_id, a_id = ID.from_base58(b.local_id), ID.from_base58(a.local_id)
        await wait_until(lambda: b_id in mesh(a) and a_id in mesh(b), "the mesh")
        a._router.mesh[TOPIC].discard(b_id)
        a._router.back_off.setdefault(TOPIC, {})[b_id] = int(time.time()) - 1
        assert a._router._check_back_off(b_id, TOPIC) is not planted

        a._router.back_off[TOPIC][b_id] = int(time.time()) - 1
        refused = a.gossip_stats()["gossip_grafts_refused"]
        await b._router.emit_graft(TOPIC, a_id)
        await wait_until(lambda: b_id in mesh(a), "the GRAFT accepted")
        assert a.gossip_stats()["gossip_grafts_refused"] == refused


@pytest.mark.parametrize("planted", [False, True])
async def test_the_mesh_forms_and_heals_after_peers_leave(
    monkeypatch: pytest.MonkeyPatch, planted: bool
) -> None:
    """Seven hosts form meshes of at least degree_low; when every mesh peer of
    one host leaves, the heartbeat grafts it to the others again.  Planted
    bug: the heartbeat finds no candidate to graft (no repair)."""
    async with meshed(7, degree=3, low=2, high=12) as (nodes, scopes):
        await wait_until(lambda: all(len(mesh(t)) >= 2 for t in nodes), "meshes formed")
        await settled(nodes)
        x = min(nodes, key=lambda t: len(mesh(t)))
        leaving_ids = set(mesh(x))
        leaving = [i for i, t in enumerate(nodes) if _id(t) in leaving_ids]
        assert 2 <= len(leaving) <= 4
        if planted:
            monkeypatch.setattr(
                P2pGossipSub, "_get_in_topic_gossipsub_peers_from_minus", lambda *args: []
            )
        for i in leaving:  # a leaver closes its connections, then stops
            with trio.move_on_after(10):
                for peer in nodes[i].connected_peers():
                    await nodes[i]._host.disconnect(ID.from_base58(peer))
            scopes[i].cancel()
        await wait_until(
            lambda: not mesh(x) & leaving_ids, "the leavers gone from x's mesh", timeout=60
        )
        healed = True
        try:
            await wait_until(lambda: len(mesh(x)) >= 2, "the mesh healed", timeout=10)
        except AssertionError:
            healed = False
        assert healed is not planted
        assert not mesh(x) & leaving_ids


def _id(t: Libp2pTransport) -> ID:
    return ID.from_base58(t.local_id)


async def _replacement_checks(nodes: list[Libp2pTransport], window: float) -> list[int]:
    """How often each router considered swapping a mesh peer over ``window``
    idle seconds (0.8.1 scores every peer of the topic each time)."""
    counts = [0] * len(nodes)
    for i, t in enumerate(nodes):
        real = t._router._consider_peer_replacement

        async def counting(topic: str, i: int = i, real: Any = real) -> None:
            counts[i] += 1
            await real(topic)

        t._router._consider_peer_replacement = counting
    await trio.sleep(window)
    return counts


@pytest.mark.parametrize("planted", [False, True], ids=["p2pnode", "planted-stock"])
async def test_mesh_quality_maintenance_runs_on_the_opportunistic_ticks_only(
    monkeypatch: pytest.MonkeyPatch, planted: bool
) -> None:
    """Once every ``opportunistic_graft_ticks`` (60) heartbeats, not at each
    one.  Planted bug: 0.8.1's ``_maintain_mesh_quality`` (every heartbeat)."""
    if planted:
        plant_stock(monkeypatch, "_maintain_mesh_quality")
    # (0.8.1 maintains meshes of 3 peers or more only.)
    async with meshed(6, degree=3, low=3, high=5) as (nodes, _):
        await wait_until(lambda: all(len(mesh(t)) >= 3 for t in nodes), "meshes of 3")
        counts = await _replacement_checks(nodes, window=5.0)  # ~5 heartbeats
        if planted:
            assert min(counts) >= 3, counts
        else:
            assert max(counts) <= 1, counts
