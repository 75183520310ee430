"""Connections cut under the muxer over real libp2p (``Faults(reset_every=...)``,
``serve --fault-reset``): a NAT that forgets a mapping, a broken path.

The lossy link (``test_real_lossy``) drops frames above libp2p and keeps its
streams and connections healthy.  A real network also cuts connections: every
frame in flight either way is lost, a stream the sender still holds is dead,
and the next send must notice and redial.  Here each of four nodes cuts one of
its connections about every second, beneath yamux (no GO_AWAY, no stream
reset), while batch jobs are held over several renewals, a chain hands over,
an ops job runs on every node and a service's three replicas are held.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from p2pnode.libp2p_transport import Libp2pTransport
from p2pnode.net.framing import encode_frame
from p2pnode.testing import Faults
from tests.test_real_inprocess import WAIT, open_cluster, process_job
from tests.test_real_lossy import (
    EXECUTIONS,
    NODES,
    _lapses,
    _run_workload,
    assert_workload_completed,
    run_faulty_serves,
)

pytestmark = pytest.mark.slow

RESET_EVERY = 1.0


def _resetting(index: int) -> Faults:
    return Faults(reset_every=RESET_EVERY, loss_seed=index)


SERVICE_REPLICAS = 3
SERVICE_HELD = 10.0  # seconds: 15 renewals of each replica's 2 s lease


async def test_jobs_and_a_chain_complete_while_connections_are_cut(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, NODES, faults=_resetting) as cluster:
        owner = cluster.nodes[0]
        since = trio.current_time()
        service = await owner.submit(
            process_job("cut-svc", "sleep 3600", type="service", count=SERVICE_REPLICAS)
        )
        views = await _run_workload(cluster)
        await trio.sleep_until(since + SERVICE_HELD)
        replicas = owner.describe(service).to_json()
        lapses = _lapses(cluster.nodes)
        started = cluster.all_started()
        cuts = sum(node.transport.stats.connections_reset_by_fault for node in cluster.nodes)

    assert_workload_completed(views)
    # The cuts were real and many (about 25 in a run of 6 s); the protocol's
    # retransmission and the sender's redial hid them: leases held, nothing
    # re-ran beyond a lost placement.  (Measured: 0 lapses and exactly the
    # 13 executions in every run, also with a cut every 0.1 s per node.)
    assert cuts >= 10, cuts
    assert lapses <= 1, lapses
    assert len(started) <= EXECUTIONS + SERVICE_REPLICAS + 2, started
    # The service's replicas were held throughout: not one was replaced.
    running = [slot for slot in replicas["slots"] if slot["state"] == "running"]
    assert len(running) == SERVICE_REPLICAS, replicas
    assert sum(eid.startswith(service) for eid in started) == SERVICE_REPLICAS, started


GAVE_UP = 50  # frames a planted sender gives up on, at the least


def _dropped(nodes: list[Any]) -> int:
    """Frames the nodes' senders gave up on (the peer unreachable)."""
    return sum(node.transport.stats.dropped_unreachable for node in nodes)


async def _transmit_on_a_dead_stream(self: Libp2pTransport, peer: str, frames: list[bytes]) -> bool:
    """Planted: a sender that assumes a connection lasts: a frame stream that
    broke stays cached, so every later frame to that peer fails on it."""
    stream = self._streams.get(peer)
    if stream is None:
        stream = await self._open_frame_stream(peer)
        if stream is None:
            return False
        self._streams[peer] = stream
    try:
        with trio.fail_after(self._dial_timeout):
            await stream.write(b"".join(encode_frame(data) for data in frames))
    except Exception:
        return False
    return True


async def test_planted_sender_that_never_redials_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Libp2pTransport, "_transmit", _transmit_on_a_dead_stream)
    try:
        # (Four in-process nodes converge within a second or two.)
        async with open_cluster(
            tmp_path, NODES, faults=_resetting, converge_within=WAIT / 3
        ) as cluster:
            views = await _run_workload(cluster, wait=WAIT / 3)
            lapses = _lapses(cluster.nodes)
            started = cluster.all_started()
            dropped = _dropped(cluster.nodes)
    except BaseExceptionGroup as group:
        # Caught before any job: a node's hellos died on a broken stream and
        # the cluster never formed (in about one run of three).
        never_formed, _ = group.split(
            lambda exc: isinstance(exc, AssertionError) and "to know every other" in str(exc)
        )
        if never_formed is None:
            raise
        return
    unfinished = [v["name"] for v in views.values() if v["state"] != "completed"]
    # Its senders give up on every frame to a peer once their stream to it
    # broke.  Measured: 155-309 frames given up, 2-3 lapses and 13-16
    # executions (of 13) in three runs; the real sender gave up on 0, 0 and 7
    # in the healthy test's runs.  (The lapses alone missed it in one CI run
    # of about ten: 1 lapse and 13 executions.)
    caught = lapses > 1 or len(started) > EXECUTIONS + 2 or unfinished or dropped > GAVE_UP
    assert caught, (lapses, started, dropped)


def test_serve_fault_reset_cuts_connections_and_jobs_still_complete(tmp_path: Path) -> None:
    """The hidden ``serve --fault-reset`` flag, end to end over real processes:
    three nodes each cutting a connection about every half second still run
    a chain and a few jobs, and ``node stats`` counts the cuts."""
    views, stats = run_faulty_serves(tmp_path, ["--fault-reset", "0.5"])
    assert [v["state"] for v in views] == ["completed"] * len(views), views
    assert views[0]["chain"]["log_verified"] == "ok", views[0]
    cuts = sum(s["transport"]["connections_reset_by_fault"] for s in stats)
    assert cuts >= 3, [s["transport"] for s in stats]
    assert sum(s["leases"].get("lapses", 0) for s in stats) <= 1, stats
