"""Cost of the process executor's bwrap sandbox per trivial job.

Runs ``true`` N times three ways, interleaved so drift on the machine hits all
alike: (a) a raw ``subprocess.run(["true"])`` (the baseline), (b) through
``ProcessExecutor`` with ``sandbox="none"`` (workdir, limits wrapper, output
manifest) and (c) the same with ``sandbox="bwrap"`` (namespaces, mounts, and
on a root node the per-task uid: chown + setpriv).  Prints medians and the
ratios b/a, c/a and c/b (the sandbox's own cost).

Usage: ``python bench/bench_sandbox.py [-n 30]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the repo's packages importable

from common import fmt, print_table  # noqa: E402

from p2pnode.blobs import BlobStore  # noqa: E402
from p2pnode.executors import ProcessExecutor  # noqa: E402
from protocols.events import StartExecution  # noqa: E402


def _raw() -> float:
    t0 = time.perf_counter()
    subprocess.run(["true"], check=True)
    return time.perf_counter() - t0


async def _job(executor: ProcessExecutor, i: int) -> float:
    task = {"engine": {"type": "process", "command": ["true"]}}
    start = StartExecution(f"bench-{i}", "bench", 0, task, {}, 60.0)
    t0 = time.perf_counter()
    result = await executor.run(start)
    elapsed = time.perf_counter() - t0
    assert result.status == "succeeded", result
    return elapsed


async def _main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        executors = {}
        for mode in ("none", "bwrap"):
            data = Path(tmp) / mode
            executors[mode] = ProcessExecutor(
                data, BlobStore(data), max_output_bytes=1 << 20, sandbox=mode
            )
        times: dict[str, list[float]] = {"raw": [], "none": [], "bwrap": []}
        for i in range(n + 2):
            raw = _raw()
            plain = await _job(executors["none"], i)
            boxed = await _job(executors["bwrap"], i)
            if i >= 2:  # warm-up
                times["raw"].append(raw)
                times["none"].append(plain)
                times["bwrap"].append(boxed)
    med = {k: statistics.median(v) for k, v in times.items()}
    print_table(
        f"trivial job (`true`), median of {n}",
        ["way", "median", "x raw"],
        [
            ["raw subprocess.run", fmt(med["raw"] * 1000, "ms", 2), "1.00"],
            ["executor --sandbox none", fmt(med["none"] * 1000, "ms", 2),
             f"{med['none'] / med['raw']:.2f}"],
            ["executor --sandbox bwrap", fmt(med["bwrap"] * 1000, "ms", 2),
             f"{med['bwrap'] / med['raw']:.2f}"],
        ],
    )
    print(f"sandbox cost per job: +{(med['bwrap'] - med['none']) * 1000:.2f} ms "
          f"(bwrap / none = {med['bwrap'] / med['none']:.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30, help="jobs per way")
    args = parser.parse_args()
    trio.run(_main, args.n)


if __name__ == "__main__":
    main()
