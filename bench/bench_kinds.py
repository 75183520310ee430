"""Job kinds on a real loopback cluster: how late cron runs start, how fast a
service recovers from a holder's SIGKILL, how soon a joining node gets its
daemon, each beside a baseline measured in the same run.

The cluster: ``--nodes`` (3) ``python -m p2pnode serve --executors process``
processes on 127.0.0.1 with ``--lease-ttl`` (2 s), as in bench_cluster.  Tasks
append ``<job id> <scheduled ms> <start ns>`` to a file, so start times are the
task's own, not a notification's.

1. **Cron lateness**: a cron job ``every: 1s`` (``overlap: allow``); lateness =
   task start - scheduled time, over ``--runs`` runs.  Baseline: a batch job's
   submit -> task start on the same cluster (auction + grant + spawn), i.e.
   what any run costs once its time has come.
2. **Service recovery**: a ``count: 2`` service; SIGKILL one holder; time from
   the kill until the owner reports 2 live executions again.  Baseline: the
   lease bound ttl + grace, the time the owner must wait before re-granting.
3. **Daemon joiner**: a daemon on the running nodes; start one more node; time
   from its listen address appearing until the owner reports its daemon live.
   Baseline: ``daemon_scan`` (5 s), the census period that bounds it.

Usage: ``python bench/bench_kinds.py [--runs N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from common import LoopbackCluster, ServeNode, exit_on_sigterm, fmt, percentile, print_table

from protocols.config import Timings

GRACE = Timings().lease_grace


def stamp_task(log: Path, sleep: str = "0") -> dict[str, Any]:
    line = f'echo "$P2PNODE_JOB_ID ${{P2PNODE_SCHEDULED_MS:-0}} $(date +%s%N)" >> {log}'
    return {
        "engine": {"type": "process", "command": ["sh", "-c", f"{line}; sleep {sleep}"]},
        "timeout": "1m",
    }


def starts(log: Path) -> list[tuple[str, int, int]]:
    rows = []
    if log.exists():
        for line in log.read_text().splitlines():
            job, sched, ns = line.split()
            rows.append((job, int(sched), int(ns)))
    return rows


async def describe(node: ServeNode, job_id: str) -> dict[str, Any]:
    result: dict[str, Any] = await node.client.call("describe", job_id=job_id)
    return result


async def poll(cond: Any, timeout: float, interval: float = 0.02) -> float:
    """Seconds until ``await cond()`` is true."""
    t0 = time.monotonic()
    with trio.fail_after(timeout):
        while not await cond():
            await trio.sleep(interval)
    return time.monotonic() - t0


async def batch_baseline(node: ServeNode, log: Path, count: int) -> list[float]:
    out = []
    for _ in range(count):
        before = len(starts(log))
        t0 = time.time_ns()
        spec = {"name": "base", "task": stamp_task(log)}
        await node.client.call("submit", spec=spec)

        async def started(before: int = before) -> bool:
            return len(starts(log)) > before

        await poll(started, 30)
        out.append((starts(log)[-1][2] - t0) / 1e6)
    return out


async def cron_lateness(node: ServeNode, log: Path, runs: int) -> list[float]:
    spec = {
        "name": "tick",
        "type": "cron",
        "schedule": {"every": "1s", "overlap": "allow"},
        "task": stamp_task(log),
    }
    job_id = (await node.client.call("submit", spec=spec))["job_id"]

    async def enough() -> bool:
        return sum(1 for j, _, _ in starts(log) if j.startswith(job_id + "@")) >= runs + 1

    await poll(enough, runs * 3 + 30, interval=0.2)
    await node.client.call("cancel", job_id=job_id)
    rows = [(s, ns) for j, s, ns in starts(log) if j.startswith(job_id + "@")][1:]  # 1st: warm-up
    return [(ns / 1e6 - s) for s, ns in rows]


async def service_recovery(cluster: LoopbackCluster, log: Path) -> float:
    owner = cluster.nodes[0]
    spec = {"name": "svc", "type": "service", "count": 2, "task": stamp_task(log, "3600")}
    job_id = (await owner.client.call("submit", spec=spec))["job_id"]

    async def live(n: int) -> bool:
        return (await describe(owner, job_id)).get("live") == n

    await poll(lambda: live(2), 60)
    view = await describe(owner, job_id)
    holders = {s["node"] for s in view["slots"] if s["state"] == "running"}
    ids = {n.index: n for n in cluster.nodes}
    victim = next(
        n
        for n in ids.values()
        if n.index != 0 and any(a.endswith(h) for a in n.addrs for h in holders)
    )
    assert victim.proc is not None
    t0 = time.monotonic()
    os.killpg(victim.proc.pid, signal.SIGKILL)

    async def recovered() -> bool:
        view = await describe(owner, job_id)
        running = [s for s in view["slots"] if s["state"] == "running"]
        return len(running) == 2 and all(
            not any(a.endswith(s["node"]) for a in victim.addrs) for s in running
        )

    await poll(recovered, 120)
    elapsed = time.monotonic() - t0
    await owner.client.call("cancel", job_id=job_id)
    return elapsed


async def daemon_joiner(cluster: LoopbackCluster, log: Path) -> float:
    owner = cluster.nodes[0]
    spec = {"name": "dmn", "type": "daemon", "task": stamp_task(log, "3600")}
    job_id = (await owner.client.call("submit", spec=spec))["job_id"]
    up = sum(1 for n in cluster.nodes if n.proc is not None and n.proc.poll() is None)

    async def live(n: int) -> bool:
        return (await describe(owner, job_id)).get("live") == n

    await poll(lambda: live(up), 60)
    joiner = ServeNode(
        len(cluster.nodes), cluster.root / f"node{len(cluster.nodes)}", "", "process"
    )
    cluster.nodes.append(joiner)
    cluster._spawn(joiner, owner.addrs[:1])
    cluster._await_addrs([joiner])
    t0 = time.monotonic()
    await poll(lambda: live(up + 1), 60)
    elapsed = time.monotonic() - t0
    await owner.client.call("cancel", job_id=job_id)
    return elapsed


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ttl = args.lease_ttl
    root = Path(tempfile.mkdtemp(prefix="p2pk-"))
    log = root / "starts.log"
    with LoopbackCluster(args.nodes, extra_args=["--lease-ttl", str(ttl)], root=root) as cluster:

        async def run() -> dict[str, Any]:
            base = await batch_baseline(cluster.nodes[0], log, max(args.runs // 2, 5))
            late = await cron_lateness(cluster.nodes[0], log, args.runs)
            recovery = await service_recovery(cluster, log)
            joiner = await daemon_joiner(cluster, log)
            return {
                "baseline_ms": base,
                "lateness_ms": late,
                "recovery_s": recovery,
                "joiner_s": joiner,
            }

        r = trio.run(run)
    base50, late50 = statistics.median(r["baseline_ms"]), statistics.median(r["lateness_ms"])
    bound = ttl + GRACE
    summary = {
        "cron_lateness_p50_ms": late50,
        "cron_lateness_p99_ms": percentile(r["lateness_ms"], 0.99),
        "batch_submit_to_start_p50_ms": base50,
        "cron_vs_batch": late50 / base50,
        "service_recovery_s": r["recovery_s"],
        "lease_bound_s": bound,
        "recovery_vs_bound": r["recovery_s"] / bound,
        "daemon_joiner_s": r["joiner_s"],
        "daemon_scan_s": Timings().daemon_scan,
        "joiner_vs_scan": r["joiner_s"] / Timings().daemon_scan,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print_table(
        f"job kinds, {args.nodes} processes, lease ttl {ttl:g}s",
        ["measure", "value", "baseline", "ratio"],
        [
            [
                "cron start lateness p50",
                fmt(late50, " ms"),
                f"batch submit->start {fmt(base50, ' ms')}",
                f"{late50 / base50:.2f}x",
            ],
            ["cron start lateness p99", fmt(summary["cron_lateness_p99_ms"], " ms"), "", ""],
            [
                "service recovery after SIGKILL",
                fmt(r["recovery_s"], " s", 2),
                f"ttl+grace {bound:g} s",
                f"{summary['recovery_vs_bound']:.2f}x",
            ],
            [
                "daemon on a joining node",
                fmt(r["joiner_s"], " s", 2),
                f"daemon_scan {Timings().daemon_scan:g} s",
                f"{summary['joiner_vs_scan']:.2f}x",
            ],
        ],
    )


if __name__ == "__main__":
    main()
