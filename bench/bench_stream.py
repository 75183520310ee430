"""Stream jobs on a real loopback cluster against a private Redis: consumer
failover after a SIGKILL beside the lease TTL, and consumer throughput through
p2pnode beside the same consumer script run directly against Redis.

The cluster: ``--nodes`` (3) ``python -m p2pnode serve --executors process``
processes on 127.0.0.1 with ``--lease-ttl`` (2 s), as in bench_kinds; node 0
owns the jobs and the consumers run on the others (label ``role=compute``,
so a SIGKILL never hits the owner); Redis is
a private ``redis-server`` on a free loopback port (tests/redisserver.py).
The consumer (``CONSUMER``) XREADs its partition's key after
``$P2PNODE_CHECKPOINT``, RPUSHes each id to ``done:<key>`` (its "work"),
records ``<execution> <unix time> <count>`` per read to ``seen:<key>`` (so all
times are the consumer's own), and prints ``P2PNODE_CHECKPOINT`` every 100
entries or 0.5 s and on SIGTERM.

1. **Failover**: a consume job over ``--partitions`` (4) keys with a long
   ``run_for`` and a producer writing ``--rate`` entries/s per key; SIGKILL a
   non-owner node holding a partition; failover = kill -> the first entry a
   *new* execution processes on that partition.  ``--kills`` (3) times; the
   killed node is restarted in between.  Baseline: the lease TTL (the owner
   waits ttl + grace after the last renewal before it re-grants).
2. **Throughput**: ``--entries`` entries pre-filled in each of three keys; (a)
   the consumer run directly (``P2PNODE_PARTITION`` set by hand) over one before
   the cluster starts and over another after it stops (their mean is the
   baseline), (b) a one-partition consume job (``run_for`` = ``--run-for``, so
   its hand-offs count) over the third.  entries/s from the end of the first
   read to the end of the last, the ratio (b)/(a), and the gap between one
   execution's last read and the next one's first at each ``run_for`` hand-off.

Usage: ``python bench/bench_stream.py [--kills N] [--entries N] [--json]``.
Needs ``redis-server`` (Debian's package).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from common import (
    LoopbackCluster,
    ServeNode,
    exit_on_sigterm,
    fmt,
    print_table,
    stop_process,
)

from tests.redisserver import RedisServer, start_redis

CONSUMER = """\
import os, signal, sys, time
import redis

part = os.environ["P2PNODE_PARTITION"]
eid = os.environ.get("P2PNODE_EXECUTION_ID", "direct")
last = os.environ.get("P2PNODE_CHECKPOINT") or "0-0"
r = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True)
stopping = False


def stop(signum, frame):
    global stopping
    stopping = True


signal.signal(signal.SIGTERM, stop)
since, at = 0, time.monotonic()
while not stopping:
    reply = r.xread({part: last}, count=int(os.environ.get("READ_COUNT", "100")), block=100)
    for _stream, items in reply or []:
        ids = [entry_id for entry_id, _fields in items]
        pipe = r.pipeline(transaction=False)
        pipe.rpush("done:" + part, *ids)
        pipe.rpush("seen:" + part, f"{eid} {time.time()} {len(ids)}")
        pipe.execute()
        last = ids[-1]
        since += len(ids)
    if since >= 100 or time.monotonic() - at >= 0.5:
        print(f"P2PNODE_CHECKPOINT {last}", flush=True)
        since, at = 0, time.monotonic()
print(f"P2PNODE_CHECKPOINT {last}", flush=True)
"""


THROUGHPUT_GOAL = 0.9  # issue 16: p2pnode consumer >= 0.9x the same consumer run directly


def grace_of(ttl: float) -> float:
    return max(0.5, ttl / 5)  # what `serve --lease-ttl` sets


def consume_spec(
    script: Path, url: str, keys: list[str], run_for: str, read_count: int
) -> dict[str, Any]:
    return {
        "name": "bench-consume",
        "type": "stream",
        "partitions": keys,
        "run_for": run_for,
        "checkpoint_every": "500ms",
        "constraints": {"labels": {"role": "compute"}},  # never on the owner (node 0)
        "task": {
            # Inline (a sandboxed task sees no host file but the system's and
            # Python's), on the host network: it talks to Redis.
            "engine": {"type": "process", "command": [sys.executable, "-c", script.read_text()]},
            "network": "host",
            "env": {"REDIS_URL": url, "READ_COUNT": str(read_count)},
            "resources": {"cpu": 0.5, "memory": "512MiB"},
            "timeout": "10m",
        },
    }


def seen(redis: Any, key: str) -> list[tuple[str, float, int]]:
    rows = []
    for line in redis.lrange(f"seen:{key}", 0, -1):
        eid, at, n = line.split()
        rows.append((eid, float(at), int(n)))
    return rows


async def describe(node: ServeNode, job_id: str) -> dict[str, Any]:
    result: dict[str, Any] = await node.client.call("describe", job_id=job_id)
    return result


async def poll(cond: Any, timeout: float, interval: float = 0.05) -> None:
    with trio.fail_after(timeout):
        while not await cond():
            await trio.sleep(interval)


# --- 1. failover ---------------------------------------------------------------------


class Producer(threading.Thread):
    def __init__(self, server: RedisServer, keys: list[str], rate: float) -> None:
        super().__init__(daemon=True)
        self.server, self.keys, self.rate = server, keys, rate
        self.stopping = threading.Event()

    def run(self) -> None:
        client = self.server.client()
        tick = 0.05
        while not self.stopping.is_set():
            pipe = client.pipeline(transaction=False)
            for key in self.keys:
                for _ in range(max(1, round(self.rate * tick))):
                    pipe.xadd(key, {"v": "x"})
            pipe.execute()
            time.sleep(tick)


async def failover(
    cluster: LoopbackCluster, server: RedisServer, script: Path, args: argparse.Namespace
) -> list[float]:
    owner = cluster.nodes[0]
    redis = server.client()
    keys = [f"f{i}" for i in range(args.partitions)]
    spec = consume_spec(script, server.url, keys, "5m", 100)
    job_id = (await owner.client.call("submit", spec=spec))["job_id"]
    producer = Producer(server, keys, args.rate)
    producer.start()
    samples = []
    try:
        owner_id = owner.addrs[0].rpartition("/")[2]
        for _ in range(args.kills):
            # A partition on a live non-owner node, consuming right now.
            chosen: list[tuple[str, str]] = []  # (key, holder)

            async def placed(chosen: list[tuple[str, str]] = chosen) -> bool:
                view = await describe(owner, job_id)
                for p in view["partitions"]:
                    rows = seen(redis, p["partition"])
                    live = bool(rows) and time.time() - rows[-1][1] < 1.0
                    if p["holder"] and p["holder"] != owner_id and live:
                        chosen[:] = [(p["partition"], p["holder"])]
                        return True
                return False

            await poll(placed, 120, interval=0.2)
            key, holder = chosen[0]
            victim = next(n for n in cluster.nodes if n.addrs[0].endswith(holder))
            before = {eid for eid, _, _ in seen(redis, key)}
            assert victim.proc is not None
            killed = time.time()
            os.killpg(victim.proc.pid, signal.SIGKILL)
            victim.proc.wait()

            def new_rows(
                before: set[str] = before, key: str = key, killed: float = killed
            ) -> list[float]:
                return [t for e, t, _ in seen(redis, key) if e not in before and t > killed]

            async def resumed() -> bool:
                return bool(new_rows())

            await poll(resumed, 60)
            samples.append(min(new_rows()) - killed)
            # Back to full strength before the next kill.
            cluster._spawn(victim, owner.addrs[:1])
            cluster._await_addrs([victim])
            await trio.to_thread.run_sync(cluster.wait_connected)
    finally:
        producer.stopping.set()
        producer.join(timeout=10)
        await owner.client.call("cancel", job_id=job_id)
    return samples


# --- 2. throughput -------------------------------------------------------------------


def prefill(server: RedisServer, key: str, n: int) -> None:
    client = server.client()
    for start in range(0, n, 1000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + 1000)):
            pipe.xadd(key, {"n": str(i), "payload": "x" * 64})
        pipe.execute()


def rate_of(rows: list[tuple[str, float, int]], n: int) -> tuple[float, int]:
    """entries/s from the end of the first read to the end of the one that
    completed ``n`` entries; and how many executions did it."""
    total, first = 0, rows[0]
    for _eid, at, count in rows:
        total += count
        if total >= n:
            return (total - first[2]) / (at - first[1]), len({e for e, _, _ in rows})
    raise AssertionError(f"only {total} of {n} entries processed")


def handoff_gaps(rows: list[tuple[str, float, int]]) -> list[float]:
    """Seconds between an execution's last read and the next one's first."""
    gaps = []
    for (eid, at, _), (next_eid, next_at, _) in itertools.pairwise(rows):
        if next_eid != eid:
            gaps.append(next_at - at)
    return gaps


def direct_rate(server: RedisServer, script: Path, key: str, n: int, count: int) -> float:
    redis = server.client()
    env = {
        **os.environ,
        "P2PNODE_PARTITION": key,
        "REDIS_URL": server.url,
        "READ_COUNT": str(count),
    }
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, str(script)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 300
            while redis.llen(f"done:{key}") < n:
                if proc.poll() is not None or time.monotonic() > deadline:
                    out.seek(0)
                    raise RuntimeError(f"direct consumer stopped: {out.read()[-2000:]!r}")
                time.sleep(0.05)
        finally:
            stop_process(proc)
    return rate_of(seen(redis, key), n)[0]


async def p2pnode_rate(
    owner: ServeNode, server: RedisServer, script: Path, key: str, args: argparse.Namespace
) -> tuple[float, int, list[float]]:
    redis = server.client()
    spec = consume_spec(script, server.url, [key], args.run_for, args.read_count)
    job_id = (await owner.client.call("submit", spec=spec))["job_id"]

    async def done() -> bool:
        return int(redis.llen(f"done:{key}")) >= args.entries

    try:
        await poll(done, 300, interval=0.05)
    finally:
        await owner.client.call("cancel", job_id=job_id)
    rows = seen(redis, key)
    rate, executions = rate_of(rows, args.entries)
    return rate, executions, handoff_gaps(rows)


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--lease-ttl", type=float, default=2.0)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--rate", type=float, default=200.0, help="entries/s per key (failover)")
    parser.add_argument("--entries", type=int, default=200_000, help="backlog (throughput)")
    parser.add_argument("--read-count", type=int, default=500, help="XREAD COUNT (throughput)")
    parser.add_argument("--run-for", default="2s", help="run_for of the throughput job")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ttl = args.lease_ttl
    root = Path(tempfile.mkdtemp(prefix="p2ps-"))
    script = root / "consumer.py"
    script.write_text(CONSUMER)
    server = start_redis(root / "redis")
    try:
        for key in ("direct1", "viap2p", "direct2"):
            prefill(server, key, args.entries)
        # Direct runs before and after the cluster's: the machine's drift hits both.
        directs = [direct_rate(server, script, "direct1", args.entries, args.read_count)]
        labels = ["role=owner"] + ["role=compute"] * (args.nodes - 1)
        with LoopbackCluster(
            args.nodes, labels=labels, extra_args=["--lease-ttl", str(ttl)], root=root / "cluster"
        ) as cluster:

            async def run() -> dict[str, Any]:
                via, executions, gaps = await p2pnode_rate(
                    cluster.nodes[0], server, script, "viap2p", args
                )
                return {
                    "via": via,
                    "executions": executions,
                    "gaps": gaps,
                    "failover": await failover(cluster, server, script, args),
                }

            r = trio.run(run)
        directs.append(direct_rate(server, script, "direct2", args.entries, args.read_count))
    finally:
        server.stop()
    direct = statistics.mean(directs)
    bound = ttl + grace_of(ttl)
    fail50 = statistics.median(r["failover"])
    summary = {
        "failover_s": r["failover"],
        "failover_p50_s": fail50,
        "lease_ttl_s": ttl,
        "failover_vs_ttl": fail50 / ttl,
        "re_grant_bound_s": bound,
        "direct_entries_per_s": direct,
        "direct_runs_entries_per_s": directs,
        "run_for_handoff_gaps_s": r["gaps"],
        "p2pnode_entries_per_s": r["via"],
        "p2pnode_executions": r["executions"],
        "p2pnode_vs_direct": r["via"] / direct,
        "p2pnode_vs_direct_goal": THROUGHPUT_GOAL,
        "p2pnode_vs_direct_met": r["via"] / direct >= THROUGHPUT_GOAL,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print_table(
        f"stream jobs, {args.nodes} processes, lease ttl {ttl:g}s, redis on loopback",
        ["measure", "value", "baseline", "ratio"],
        [
            [
                f"consumer failover after SIGKILL (p50 of {len(r['failover'])})",
                fmt(fail50, "s", 2),
                f"lease ttl {ttl:g} s (re-grant after ttl+grace {bound:g} s)",
                f"{fail50 / ttl:.2f}x",
            ],
            [
                "  each",
                ", ".join(fmt(x, "s", 2) for x in r["failover"]),
                "",
                "",
            ],
            [
                f"consumer throughput ({args.entries} entries, run_for {args.run_for})",
                fmt(r["via"], "entries/s", 0),
                f"direct {fmt(direct, 'entries/s', 0)}",
                f"{r['via'] / direct:.2f}x (goal >= {THROUGHPUT_GOAL:g}x)",
            ],
            [
                "  runs that did it (rolled over in place at run_for)",
                str(r["executions"]),
                "direct runs " + ", ".join(fmt(d, "", 0) for d in directs),
                "",
            ],
            [
                "  run_for hand-off gap p50",
                fmt(statistics.median(r["gaps"]), "s", 2) if r["gaps"] else "n/a",
                "",
                "",
            ],
        ],
    )


if __name__ == "__main__":
    main()
