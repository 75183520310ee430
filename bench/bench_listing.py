"""``job list`` on a node that owns 100 jobs, beside the control socket's own
round trip, measured in one run.

One ``python -m p2pnode serve --executors sim`` process owns ``--jobs`` (100)
short sim jobs, a third of them failing, and a cron job with its runs.  Once
every batch job has ended, each figure is the median of ``--repeat`` (20)
calls through ``ControlClient`` (no Python start-up):

* baseline: ``ping``;
* ``jobs`` with ``state=failed, limit=5`` (what ``job list --state failed
  --limit 5`` sends), and ``jobs`` unfiltered;
* ``describe`` by a unique id prefix.

Then the CLI itself, ``job list --state failed --limit 5`` (median of
``--cli-repeat`` runs: Python start-up included), beside ``p2pnode --help``
as its start-up baseline.

Usage: ``python bench/bench_listing.py [--jobs N] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from common import LoopbackCluster, child_env, exit_on_sigterm, fmt, print_table

from p2pnode.control import ControlClient


async def _median_s(repeat: int, call: Callable[[], Awaitable[Any]]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _cli_median_s(repeat: int, args: list[str]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "p2pnode", *args],
            env=child_env(),
            check=True,
            capture_output=True,
        )
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def _fill(client: ControlClient, jobs: int) -> list[str]:
    ids = []
    for i in range(jobs):
        engine = {"type": "sim", "duration": "50ms", "exit_code": 3 if i % 3 == 0 else 0}
        spec = {"name": f"job-{i}", "task": {"engine": engine, "retry": {"attempts": 1}}}
        ids.append((await client.call("submit", spec=spec))["job_id"])
    cron = {"name": "tick", "type": "cron", "schedule": {"every": "1s"},
            "task": {"engine": {"type": "sim", "duration": "50ms"}}}  # fmt: skip
    await client.call("submit", spec=cron)
    for job_id in ids:
        await client.call("wait", job_id=job_id, timeout=300)
    return ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--cli-repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    exit_on_sigterm()
    with LoopbackCluster(1, executors="sim", quiet=True) as cluster:
        node = cluster.nodes[0]
        client = node.client

        async def measure() -> dict[str, float]:
            ids = await _fill(client, args.jobs)
            prefix = ids[0][:8]
            return {
                "ping": await _median_s(args.repeat, lambda: client.call("ping")),
                "list_failed_5": await _median_s(
                    args.repeat, lambda: client.call("jobs", state="failed", limit=5)
                ),
                "list_all": await _median_s(args.repeat, lambda: client.call("jobs")),
                "describe_prefix": await _median_s(
                    args.repeat, lambda: client.call("describe", job_id=prefix)
                ),
            }

        result = trio.run(measure)
        data_dir = str(node.data_dir)
        listing = ["--data-dir", data_dir, "job", "list", "--state", "failed", "--limit", "5"]
        result["cli_list_failed_5"] = _cli_median_s(args.cli_repeat, listing)
        result["cli_help"] = _cli_median_s(args.cli_repeat, ["--help"])
    result["list_failed_5_vs_ping"] = result["list_failed_5"] / result["ping"]
    result["cli_list_vs_help"] = result["cli_list_failed_5"] / result["cli_help"]
    if args.json:
        print(json.dumps(result, indent=2))
        return
    rows = [
        ["ping (baseline)", fmt(result["ping"] * 1000, "ms", 2), "1.0x"],
        ["jobs state=failed limit=5", fmt(result["list_failed_5"] * 1000, "ms", 2),
         f"{result['list_failed_5_vs_ping']:.1f}x"],
        ["jobs (all)", fmt(result["list_all"] * 1000, "ms", 2),
         f"{result['list_all'] / result['ping']:.1f}x"],
        ["describe <prefix>", fmt(result["describe_prefix"] * 1000, "ms", 2),
         f"{result['describe_prefix'] / result['ping']:.1f}x"],
        ["CLI p2pnode --help (baseline)", fmt(result["cli_help"] * 1000, "ms", 0), "1.0x"],
        ["CLI job list --state failed --limit 5", fmt(result["cli_list_failed_5"] * 1000, "ms", 0),
         f"{result['cli_list_vs_help']:.2f}x"],
    ]  # fmt: skip
    print_table(f"job list on a node owning {args.jobs} jobs", ["call", "median", "vs baseline"],
                rows)  # fmt: skip


if __name__ == "__main__":
    main()
