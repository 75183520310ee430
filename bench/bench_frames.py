"""py-libp2p's own cost per frame, apart from p2pnode's: two ``Libp2pTransport``
hosts in this one process, one frame each way per round trip, sequential.

Prints per round trip the wall time, this process's CPU time (both hosts: it
is everything the round trip costs, no other process is involved) and the
yamux frames written by type.  A round trip carries two frames of ``--size``
bytes; anything beyond two DATA frames is py-libp2p's flow control.

``--raw`` runs the same round trips over a bare py-libp2p stream (an echo
handler, no framing, outbound queue, sender task or receive channel of
p2pnode's): the difference between the two is p2pnode's transport's share.

``--py-libp2p-credit`` keeps py-libp2p 0.8.1's own receive-credit rule on the
frame streams (a WINDOW_UPDATE for every other small frame read) instead of
``p2pnode/net/credit.py``'s one per half window, to measure the difference.

Usage: ``python bench/bench_frames.py [--rounds 2000] [--size 200] [--repeat 3] [--raw]``.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import struct
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.stream_muxer.yamux import yamux as yamux_module

import p2pnode.libp2p_transport as transport_module
from p2pnode.libp2p_transport import Libp2pTransport

KINDS = {0: "data", 1: "window_update", 2: "ping", 3: "go_away"}
written: collections.Counter[str] = collections.Counter()


def _count_yamux_writes() -> None:
    write = yamux_module.Yamux._write_frame

    async def counting(self: Any, data: bytes) -> None:
        kind = struct.unpack(yamux_module.YAMUX_HEADER_FORMAT, data[:12])[1]
        written[KINDS.get(kind, str(kind))] += 1
        await write(self, data)

    yamux_module.Yamux._write_frame = counting  # type: ignore[method-assign]


RAW_PROTOCOL = "/p2pnode-bench/echo/1.0.0"


async def _echo(sender: str, stream: Any) -> None:
    transport_module.credit_per_half_window(stream)
    while True:
        data = await stream.read(64 * 1024)
        if not data:
            return
        await stream.write(data)


async def _read_exactly(stream: Any, size: int) -> None:
    got = 0
    while got < size:
        got += len(await stream.read(size - got))


async def one_run(rounds: int, size: int, raw: bool) -> dict[str, Any]:
    b = Libp2pTransport(create_new_key_pair())
    b.set_stream_handler(RAW_PROTOCOL, _echo)
    async with Libp2pTransport(create_new_key_pair()) as a, b:
        await a.connect(b.listen_addrs()[0])
        ping, pong = b"x" * size, b"y" * size
        stream = None
        if raw:
            stream = await a.open_stream(b.local_id, RAW_PROTOCOL)
            transport_module.credit_per_half_window(stream)

        async def round_trip() -> None:
            if stream is not None:
                await stream.write(ping)
                await _read_exactly(stream, size)
                return
            await a.send(b.local_id, ping)
            await b.receive()
            await b.send(a.local_id, pong)
            await a.receive()

        for _ in range(50):  # streams open, windows tuned
            await round_trip()
        written.clear()
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            await round_trip()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    return {
        "wall_ms": wall * 1000 / rounds,
        "cpu_ms": cpu * 1000 / rounds,
        "frames": {k: v / rounds for k, v in sorted(written.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--py-libp2p-credit", action="store_true")
    parser.add_argument("--raw", action="store_true", help="a bare py-libp2p stream")
    args = parser.parse_args()
    if args.py_libp2p_credit:
        transport_module.credit_per_half_window = lambda stream: False  # type: ignore[assignment]
    _count_yamux_writes()
    runs = [trio.run(one_run, args.rounds, args.size, args.raw) for _ in range(args.repeat)]
    credit = "py-libp2p's" if args.py_libp2p_credit else "per half window (p2pnode)"
    path = "a bare py-libp2p stream (echo)" if args.raw else "Libp2pTransport.send/receive"
    print(f"load average {os.getloadavg()[0]:.2f}; {path}; receive credit: {credit}")
    for r in runs:
        frames = ", ".join(f"{k} {v:.3f}" for k, v in r["frames"].items())
        print(f"  round trip: {r['wall_ms']:.3f} ms wall, {r['cpu_ms']:.3f} ms CPU; yamux {frames}")
    print(
        f"median: {statistics.median(r['wall_ms'] for r in runs):.3f} ms wall, "
        f"{statistics.median(r['cpu_ms'] for r in runs):.3f} ms CPU per round trip (2 frames)"
    )


if __name__ == "__main__":
    main()
