"""Gossipsub control churn on an idle network (issue 16, "Scale").

Starts ``--nodes`` real ``Libp2pTransport`` hosts in this one process (trio,
loopback TCP), each subscribed to the announce topic and connected to
``--degree`` random others (all, by default), lets the meshes form for
``--settle`` s, then counts gossipsub control entries over ``--window`` s with
nothing published.  Prints, per node and minute, GRAFTs / PRUNEs / IHAVEs sent
and GRAFTs refused (answered with a PRUNE), plus the process's CPU.

``--router stock`` runs py-libp2p 0.8.1's own GossipSub logic (with the same
counters) instead of ``p2pnode.net.gossip.P2pGossipSub``, for A/B runs.

Usage: ``python bench/bench_gossip_churn.py --nodes 20 --window 60 [--router stock]``
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import time
from contextlib import AsyncExitStack
from typing import Any

import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.pubsub.gossipsub import GossipSub

import p2pnode.net.stack as stack_module
from p2pnode.libp2p_transport import Libp2pTransport
from p2pnode.net.gossip import P2pGossipSub
from protocols.config import ANNOUNCE_TOPIC


class StockCountingGossipSub(P2pGossipSub):
    """0.8.1's behaviour, with P2pGossipSub's counters."""

    _perform_opportunistic_grafting = GossipSub._perform_opportunistic_grafting
    _check_back_off = GossipSub._check_back_off
    _emit_control_msgs = GossipSub._emit_control_msgs

    def mesh_heartbeat(self) -> Any:
        return GossipSub.mesh_heartbeat(self)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def totals(nodes: list[Libp2pTransport]) -> list[dict[str, int]]:
    return [t.gossip_stats() for t in nodes]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.router == "stock":
        stack_module.P2pGossipSub = StockCountingGossipSub  # type: ignore[misc]
    rng = random.Random(args.seed)
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                Libp2pTransport(create_new_key_pair(), idle_connection_timeout=0)
            )
            for _ in range(args.nodes)
        ]
        for t in nodes:
            await t.subscribe(ANNOUNCE_TOPIC)
        pairs = set()
        for i in range(len(nodes)):
            others = [j for j in range(len(nodes)) if j != i]
            for j in rng.sample(others, min(args.degree, len(others))):
                pairs.add((min(i, j), max(i, j)))
        for i, j in sorted(pairs):
            await nodes[i].connect(nodes[j].listen_addrs()[0])
        await trio.sleep(args.settle)
        before, cpu0, t0 = totals(nodes), cpu_s(), time.monotonic()
        await trio.sleep(args.window)
        after, cpu1, t1 = totals(nodes), cpu_s(), time.monotonic()
        minutes = (t1 - t0) / 60
        keys = list(after[0])
        per_node = {
            k: statistics.median(
                (a[k] - b[k]) / minutes for a, b in zip(after, before, strict=True)
            )
            for k in keys
        }
        mesh = [len(t._router.mesh.get(ANNOUNCE_TOPIC, ())) for t in nodes]
        conns = [len(t.connected_peers()) for t in nodes]
        return {
            "router": args.router,
            "nodes": args.nodes,
            "window_s": round(t1 - t0, 1),
            "per_node_per_minute_median": {k: round(v, 1) for k, v in per_node.items()},
            "mesh_sizes": sorted(mesh),
            "connections_median": statistics.median(conns),
            "process_cpu_pct_of_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 2),
            "loadavg": open("/proc/loadavg").read().split()[:3],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--degree", type=int, default=1_000, help="peers each node dials")
    parser.add_argument("--settle", type=float, default=10.0)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--router", choices=["p2pnode", "stock"], default="p2pnode")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(trio.run(run, args)))


if __name__ == "__main__":
    main()
