"""What a notify costs the runtime while many jobs are waited on (issue 16).

``Node.wait`` (each ``job wait`` over the control socket) watches the node's
notifies until its job ends.  With a full watcher (``runtime.watch()``) every
notify wakes every waiter, which drops all but its own job's: with 40 jobs in
flight per owner (``bench_cluster.py --concurrent 200`` over 5 nodes) that is
40 task wake-ups per notify.  ``runtime.watch(job_id=...)`` hands a notify to
its job's waiters only.  This runs the scripted runtime of ``tests/test_runtime.py``
(no network, no disk) with ``--waiters`` waiters, each waiting for its own job,
and prints the CPU per notify both ways.

Usage: ``python bench/bench_waiters.py [--waiters 40] [--notifies 2000] [--repeat 5]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from protocols.events import MessageReceived, Notify  # noqa: E402
from tests.test_runtime import Node, on, running  # noqa: E402


async def one_run(waiters: int, notifies: int, per_job: bool) -> float:
    """CPU microseconds per notify, until every waiter has seen its own."""
    node = Node(
        on(
            MessageReceived,
            lambda e, t: [Notify("job_state", {"job_id": e.data.decode(), "state": "running"})],
        ),
        watch_buffer=notifies + 10,
    )
    seen = 0

    async def waiter(job: str) -> None:
        nonlocal seen
        watch = node.runtime.watch(job_id=job) if per_job else node.runtime.watch()
        with watch as events:
            async for note in events:
                if note.data.get("job_id") == job:  # as Node.wait filters
                    seen += 1

    async with running(node) as nursery:
        for j in range(waiters):
            nursery.start_soon(waiter, f"j{j}")
        await trio.sleep(0.1)
        cpu0 = time.process_time()
        for i in range(notifies):
            node.transport.deliver(f"j{i % waiters}".encode())
            if i % 10 == 9:  # the fake transport's channel is small
                while seen < i + 1:
                    await trio.sleep(0)
        while seen < notifies:
            await trio.sleep(0)
        return (time.process_time() - cpu0) * 1e6 / notifies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--waiters", type=int, default=40)
    parser.add_argument("--notifies", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; {args.waiters} waiters, each on its own job")
    for per_job, label in [(False, "watch() + filter"), (True, "watch(job_id=...)")]:
        runs = [trio.run(one_run, args.waiters, args.notifies, per_job) for _ in range(args.repeat)]
        print(
            f"  {label:20s} {statistics.median(runs):7.1f} us CPU per notify (median; runs "
            + " ".join(f"{r:.1f}" for r in runs)
            + ")"
        )


if __name__ == "__main__":
    main()
