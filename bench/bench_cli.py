"""Wall time of the CLI's one-request commands against a node with 100 jobs.

Starts one ``serve`` process, submits 100 trivial process jobs (a fifth of
them fail), waits until all are done, then times whole CLI invocations
(interpreter start included, as a user waits for them), interleaved with the
baseline: a bare ``python -c pass`` measured in the same run.  Prints medians,
the ratio to the baseline and the issue's target (``job list`` under 0.5 s).

Usage: ``python bench/bench_cli.py [-n 15] [--jobs 100]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the repo's packages importable

from common import LoopbackCluster, child_env, fmt, print_table  # noqa: E402

from p2pnode.client import Client  # noqa: E402

TARGET = 0.5  # seconds: issue 14's bound for `job list --state failed --limit 5`


def job(i: int) -> dict[str, object]:
    command = "false" if i % 5 == 0 else "true"
    return {"name": f"bench-{i}", "task": {"engine": {"type": "process", "command": [command]},
                                           "timeout": "1m"}}  # fmt: skip


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, env=child_env(), check=False)
    elapsed = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{argv} failed ({done.returncode}): {done.stderr.decode()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=15, help="invocations per command")
    parser.add_argument("--jobs", type=int, default=100)
    args = parser.parse_args()
    with LoopbackCluster(1, executors="process") as cluster:
        data_dir = cluster.nodes[0].data_dir
        client = Client(data_dir)
        ids = [client.submit(job(i)) for i in range(args.jobs)]
        for job_id in ids:
            client.wait(job_id, timeout=300)
        cli = [sys.executable, "-m", "p2pnode", "--data-dir", str(data_dir)]
        help_text = subprocess.run([*cli, "job", "list", "--help"], capture_output=True,
                                   text=True, env=child_env()).stdout  # fmt: skip
        commands = {
            "python -c pass (baseline)": [sys.executable, "-c", "pass"],
            "p2pnode --help": [*cli, "--help"],
            "job list -o json": [*cli, "job", "list", "-o", "json"],
            "node list": [*cli, "node", "list"],
        }
        if "--state" in help_text:  # the filters (issue 14's listing part)
            commands["job list --state failed --limit 5"] = [
                *cli, "job", "list", "--state", "failed", "--limit", "5", "-o", "json"
            ]  # fmt: skip
        times: dict[str, list[float]] = {name: [] for name in commands}
        in_process = "Client().call('jobs') (no interpreter start)"
        times[in_process] = []
        for i in range(args.n + 1):
            for name, argv in commands.items():
                elapsed = timed(argv)
                if i:  # the first round warms the page cache
                    times[name].append(elapsed)
            t0 = time.perf_counter()
            client.call("jobs")
            times[in_process].append(time.perf_counter() - t0)
    med = {name: statistics.median(values) for name, values in times.items()}
    base = med["python -c pass (baseline)"]
    print_table(
        f"CLI wall time against a node with {args.jobs} jobs, median of {args.n}",
        ["command", "median", "x baseline", f"< {TARGET:g} s"],
        [
            [name, fmt(m * 1000, "ms"), f"{m / base:.1f}", "yes" if m < TARGET else "NO"]
            for name, m in med.items()
        ],
    )


if __name__ == "__main__":
    main()
