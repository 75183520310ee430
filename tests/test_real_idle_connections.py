"""Jobs across connections closed as idle (issue 16): real nodes in one process.

A node holds no connection to most peers it knows; a send redials on demand.
A connection closed while a job runs (grants, renewals and the result in
flight) loses nothing: the transport redials and the protocol retransmits.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from p2pnode.node import Node
from tests.test_real_inprocess import open_cluster, process_job, wait_for, wait_job, wait_running

pytestmark = pytest.mark.slow


async def close_connection(a: Node, b: Node) -> None:
    """Close a's connection to b as the idle closer does (if there is one)."""
    if b.node_id in a.transport.connected_peers():
        await a.transport._close_idle(b.node_id)


async def test_job_reaches_an_unconnected_peer_and_survives_closes_mid_job(
    tmp_path: Path,
) -> None:
    async with open_cluster(tmp_path, 3, labels={2: {"zone": "c"}}) as cluster:
        owner, holder = cluster.nodes[1], cluster.nodes[2]
        # Both learnt each other through node 0 (peer exchange); now the owner
        # holds no connection to the only peer that can run the job.
        await close_connection(owner, holder)
        await wait_for(lambda: holder.node_id not in owner.transport.connected_peers(), "the close")
        job = await owner.submit(
            process_job("zone-c", "sleep 2", constraints={"labels": {"zone": "c"}})
        )
        running = await wait_running(owner, job)
        assert running["node"] == holder.node_id
        # Mid-job, from either side: lease renewals and the result cross new
        # connections.
        for closer, peer in [(owner, holder), (holder, owner), (owner, holder)]:
            await close_connection(closer, peer)
            await trio.sleep(0.3)
        view = await wait_job(owner, job)
        assert view["state"] == "completed"
        closes = owner.transport.stats.idle_connections_closed
        closes += holder.transport.stats.idle_connections_closed
        assert closes >= 2
