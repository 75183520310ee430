"""Raw libp2p baseline: gossipsub hop latency and throughput, p2p frame round trip.

Every host is a separate OS process (this script re-runs itself with
``--worker``), all on 127.0.0.1, configured exactly as the transport configures
them (``p2pnode.net.stack``: Noise + Yamux, gossipsub strict signing, 1 s
heartbeat, spam protection off).  Later benchmarks print ratios against these
numbers.

* gossip latency: host 0 publishes ``--count`` messages paced ``--interval``
  apart on one topic; the other hosts (full mesh, so one hop) record
  publish->delivery time (CLOCK_MONOTONIC is shared by processes on one machine).
* gossip throughput: host 0 publishes ``--burst`` messages back to back;
  msgs/s = messages delivered to a receiver / (its last delivery - first publish).
* p2p round trip: ``Libp2pTransport.send`` ping -> echo -> pong between two
  processes over direct streams.  p2p throughput: ``--frames`` pings echoed
  back with 64 in flight; frames/s counts both directions (median of 3).
  (The removed per-peer gossipsub "inbox" mode measured p50 4.7-5.0 ms /
  p99 66-86 ms against the streams' 1.15 / 1.8 ms, 200 rounds of 256 B,
  before it went.)

Usage: ``python bench/bench_gossip.py [--hosts 2 5] [--count 300] [--burst 2000]``
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TOPIC = "bench/gossip"
HEADER = struct.Struct(">QQ")  # seq, publish time (monotonic ns)


# --- worker (one host per process) ------------------------------------------


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def worker_gossip(index: int, n: int, size: int) -> None:
    import multiaddr
    import trio
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from p2pnode.net.stack import build_host, build_pubsub, running_stack, wait_for_send_room

    stdin = trio.wrap_file(sys.stdin)
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    host = build_host(create_new_key_pair(), listen)
    pubsub, router = build_pubsub(host)
    async with running_stack(host, pubsub, router, listen), trio.open_nursery() as nursery:
        emit({"addr": str(host.get_addrs()[0])})
        peers = json.loads(await stdin.readline())["peers"]
        sub = await pubsub.subscribe(TOPIC)
        infos = [info_from_p2p_addr(multiaddr.Multiaddr(a)) for a in peers]
        for info in infos[:index]:  # each pair dials once: no simultaneous-dial race
            await host.connect(info)
        for j, info in enumerate(infos):
            if j != index:
                await pubsub.wait_for_mesh(info.peer_id, TOPIC, timeout=30)
        latencies: list[float] = []
        received = 0
        first_sent = last_recv = 0

        async def consume() -> None:
            nonlocal received, last_recv
            async for msg in sub:
                now = time.monotonic_ns()
                _seq, sent = HEADER.unpack_from(msg.data)
                latencies.append((now - sent) / 1e6)
                received += 1
                last_recv = now

        if index != 0:
            nursery.start_soon(consume)
        emit({"ready": True})
        while line := await stdin.readline():
            cmd = json.loads(line)
            if cmd["cmd"] == "latency" and index == 0:
                for seq in range(cmd["count"]):
                    await pubsub.publish(TOPIC, pad(seq, size))
                    await trio.sleep(cmd["interval"])
                emit({"done": True})
            elif cmd["cmd"] == "burst" and index == 0:
                t0 = time.monotonic_ns()
                for seq in range(cmd["count"]):
                    # As fast as the per-peer queues drain (what the transport
                    # does): a bare sleep(0) loop loses ~98 % in py-libp2p.
                    if cmd["backpressure"]:
                        await wait_for_send_room(pubsub, timeout=1.0)
                    await pubsub.publish(TOPIC, pad(seq, size))
                    await trio.sleep(0)
                emit({"done": True, "first": t0, "publish_s": (time.monotonic_ns() - t0) / 1e9})
            elif cmd["cmd"] == "report":
                emit({"latencies": latencies, "received": received, "last": last_recv})
                latencies.clear()
                received = 0
            elif cmd["cmd"] == "quit":
                break
        del first_sent
        nursery.cancel_scope.cancel()


def pad(seq: int, size: int) -> bytes:
    head = HEADER.pack(seq, time.monotonic_ns())
    return head + b"\0" * max(0, size - len(head))


async def flood(t: Any, other: str, frames: int, window: int, size: int) -> float:
    """Frames/s between two processes: ``frames`` pings echoed back, at most
    ``window`` in flight (below the transport's 256-frame peer queue, so none
    is dropped); both directions count, as a cluster's frames do."""
    import trio

    payload = b"f" * size
    sent = received = 0
    t0 = time.perf_counter()
    while sent < min(window, frames):
        await t.send(other, payload)
        sent += 1
    while received < frames:
        with trio.fail_after(30):
            await t.receive()
        received += 1
        if sent < frames:
            await t.send(other, payload)
            sent += 1
    return 2 * frames / (time.perf_counter() - t0)


async def worker_p2p(index: int, rounds: int, size: int, frames: int = 0) -> None:
    import trio
    from libp2p.crypto.ed25519 import create_new_key_pair

    from p2pnode.libp2p_transport import Libp2pTransport

    stdin = trio.wrap_file(sys.stdin)
    async with Libp2pTransport(create_new_key_pair()) as t:
        emit({"addr": t.listen_addrs()[0]})
        peers = json.loads(await stdin.readline())["peers"]
        if index == 1:  # echo server
            emit({"ready": True})
            while True:
                frame = await t.receive()
                await t.send(frame.sender, frame.data)
        other = await t.connect(peers[1])
        payload = b"p" * size
        rtts = []
        cpu_rounds = 0.0
        for i in range(rounds + 20):
            if i == 20:
                cpu_rounds = _cpu_s()
            t0 = time.perf_counter()
            await t.send(other, payload)
            with trio.fail_after(10):
                await t.receive()
            if i >= 20:  # warm-up: first dial, stream setup
                rtts.append((time.perf_counter() - t0) * 1000)
        # One frame in flight: every frame pays a whole wake-up, read and
        # decrypt of its own, as a sparse cluster's frames do.
        cpu_rounds = (_cpu_s() - cpu_rounds) * 1000 / max(1, rounds)
        cpu0 = _cpu_s()
        rates = [await flood(t, other, frames, 64, size) for _ in range(3 if frames else 0)]
        # Per echoed frame this process sends one and receives one, as the
        # echo server does: its CPU per frame is what one frame costs both
        # ends of the stack together (send + receive), with no p2pnode core.
        cpu_per_frame = (_cpu_s() - cpu0) * 1000 / (3 * frames) if rates else None
        emit(
            {
                "rtts": rtts,
                "frames_per_s": statistics.median(rates) if rates else None,
                "cpu_ms_per_frame": cpu_per_frame,
                "cpu_ms_per_frame_alone": cpu_rounds,
            }
        )


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- coordinator ------------------------------------------------------------


class Cluster:
    def __init__(self, n: int, worker_args: list[str]) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        self.procs = [
            subprocess.Popen(
                [sys.executable, __file__, "--worker", str(i), *worker_args],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for i in range(n)
        ]
        addrs = [self.read(i)["addr"] for i in range(n)]
        for i in range(n):
            self.write(i, {"peers": addrs})

    def read(self, i: int) -> dict[str, Any]:
        stdout = self.procs[i].stdout
        assert stdout is not None
        line = stdout.readline()
        if not line:
            raise RuntimeError(f"worker {i} exited ({self.procs[i].wait()})")
        return json.loads(line)  # type: ignore[no-any-return]

    def write(self, i: int, obj: dict[str, Any]) -> None:
        stdin = self.procs[i].stdin
        assert stdin is not None
        stdin.write(json.dumps(obj) + "\n")
        stdin.flush()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def bench_gossip(n: int, args: argparse.Namespace) -> dict[str, float]:
    cluster = Cluster(n, ["--kind", "gossip", "--n", str(n), "--size", str(args.size)])
    try:
        for i in range(n):
            cluster.read(i)  # ready
        cluster.write(0, {"cmd": "latency", "count": args.count, "interval": args.interval})
        cluster.read(0)
        time.sleep(1.0)  # stragglers
        latencies: list[float] = []
        delivered = 0
        for i in range(1, n):
            cluster.write(i, {"cmd": "report"})
            report = cluster.read(i)
            latencies += report["latencies"]
            delivered += report["received"]
        cluster.write(0, {"cmd": "burst", "count": args.burst, "backpressure": True})
        done = cluster.read(0)
        time.sleep(2.0)
        rates, burst_delivered = [], 0
        for i in range(1, n):
            cluster.write(i, {"cmd": "report"})
            report = cluster.read(i)
            burst_delivered += report["received"]
            if report["received"]:
                rates.append(report["received"] / ((report["last"] - done["first"]) / 1e9))
        for i in range(n):
            cluster.write(i, {"cmd": "quit"})
    finally:
        cluster.close()
    receivers = n - 1
    return {
        "hop_p50_ms": statistics.median(latencies) if latencies else float("nan"),
        "hop_p99_ms": pct(latencies, 0.99),
        "latency_delivery": delivered / (args.count * receivers),
        "msgs_per_s": statistics.mean(rates) if rates else 0.0,
        "publish_per_s": args.burst / done["publish_s"],
        "burst_delivery": burst_delivered / (args.burst * receivers),
    }


def bench_p2p(args: argparse.Namespace) -> dict[str, float]:
    """Frame round trip; with ``args.frames`` > 0 also ``frames_per_s`` (the
    median of 3 floods of that many echoed frames, 64 in flight)."""
    frames = getattr(args, "frames", 0)
    sizes = ["--rounds", str(args.count), "--size", str(args.size), "--frames", str(frames)]
    cluster = Cluster(2, ["--kind", "p2p", *sizes])
    try:
        cluster.read(1)  # echo ready
        report = cluster.read(0)
    finally:
        cluster.close()
    rtts = report["rtts"]
    out = {
        "rtt_p50_ms": statistics.median(rtts),
        "rtt_p99_ms": pct(rtts, 0.99),
        "cpu_ms_per_frame_alone": report["cpu_ms_per_frame_alone"],
    }
    if report["frames_per_s"] is not None:
        out["frames_per_s"] = report["frames_per_s"]
        out["cpu_ms_per_frame"] = report["cpu_ms_per_frame"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--kind", default="gossip", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=300, help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--hosts", type=int, nargs="+", default=[2, 5])
    parser.add_argument("--count", type=int, default=300, help="latency samples")
    parser.add_argument("--interval", type=float, default=0.05, help="latency pacing (s)")
    parser.add_argument("--burst", type=int, default=2000, help="throughput messages")
    parser.add_argument("--size", type=int, default=256, help="payload bytes")
    parser.add_argument("--frames", type=int, default=2000, help="p2p flood frames (0: none)")
    parser.add_argument("--json", action="store_true", help="print results as JSON")
    args = parser.parse_args()

    if args.worker is not None:
        import logging

        import trio

        logging.disable(logging.WARNING)  # py-libp2p logs on shutdown; keep stdout JSON
        if args.kind == "gossip":
            trio.run(worker_gossip, args.worker, args.n, args.size)
        else:
            trio.run(worker_p2p, args.worker, args.rounds, args.size, args.frames)
        return

    results: dict[str, dict[str, float]] = {}
    print(f"raw gossipsub, one process per host, {args.size}-byte payloads, loopback")
    for n in args.hosts:
        r = results[f"gossip_{n}"] = bench_gossip(n, args)
        print(
            f"  {n} hosts: hop p50 {r['hop_p50_ms']:.2f} ms  p99 {r['hop_p99_ms']:.2f} ms"
            f"  (delivered {r['latency_delivery']:.1%})  |  burst: {r['msgs_per_s']:.0f} msg/s"
            f" per receiver, delivered {r['burst_delivery']:.1%},"
            f" publisher {r['publish_per_s']:.0f} msg/s"
        )
    print("p2p frame round trip (Libp2pTransport.send, 2 processes)")
    r = results["p2p_stream"] = bench_p2p(args)
    print(
        f"  stream: p50 {r['rtt_p50_ms']:.2f} ms  p99 {r['rtt_p99_ms']:.2f} ms,"
        f" {r['cpu_ms_per_frame_alone']:.3f} ms CPU per frame (send + receive, one in flight)"
    )
    if "frames_per_s" in r:
        print(
            f"  stream throughput: {r['frames_per_s']:.0f} frames/s (64 in flight, echoed),"
            f" {r['cpu_ms_per_frame']:.3f} ms CPU per frame (send + receive)"
        )
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
