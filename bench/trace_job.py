"""Where a trivial job's time goes, step by step, across the processes.

Starts ``--nodes`` (3) ``p2pnode serve`` processes with ``P2PNODE_TRACE`` set
(``p2pnode/tracing.py``), runs ``--jobs`` (30) trivial jobs one at a time
through node 0 (the owner) after ``--warmup`` untimed ones, merges the
per-process trace files on their shared monotonic clock and prints, for each
step of the path, the median time it took and the median time from submit at
which it ended.  Then the same trivial task through a ``ProcessExecutor`` in
this process (traced the same way), so that the executor's steps in ``serve``
can be read against the same code run outside it.

A step is the time from one milestone to the next, each the first matching
event after the one before (so a step absent from a job, such as the frames
of a lease the owner granted to itself, is folded into the next one).

Usage: ``python bench/trace_job.py [--nodes 3] [--jobs 30] [--keep DIR]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

# Before anything imports p2pnode.tracing (which reads it once).
_TRACE_DIR = Path(tempfile.mkdtemp(prefix="p2pnode-trace-"))
os.environ["P2PNODE_TRACE"] = str(_TRACE_DIR / "trace")

import trio  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cluster import executor_baseline, run_job  # noqa: E402
from common import LoopbackCluster, exit_on_sigterm  # noqa: E402

# (label of the step ending here, whose event: "owner"/"holder", event, detail prefix);
# a detail ending in "*": the last such event before the next milestone (the
# owner's own bid comes back at once, the remote one later)
MILESTONES: list[tuple[str, str, str, str]] = [
    ("owner: validate, persist, asks out", "owner", "send", "ask"),
    ("bids in (the last one: remote round trip)", "owner", "item", "recv:bid*"),
    ("owner: persist, grant out", "owner", "send", "lease_grant"),
    ("grant frame to holder", "holder", "item", "recv:lease_grant"),
    ("holder: persist, accept out", "holder", "send", "lease_accept"),
    ("accept frame to owner", "owner", "item", "recv:lease_accept"),
    ("owner: persist, renew_ack out", "owner", "send", "renew_ack"),
    ("renew_ack to holder, execution starts", "holder", "exec-start", ""),
    ("executor: workdir + cgroup (thread trip)", "holder", "x-prep>", ""),
    ("executor: fork/exec of the wrapper", "holder", "x-spawned", ""),
    ("child runs: sh (cgroup, rlimits), bwrap, setpriv, true", "holder", "x-waited", ""),
    ("executor: pipes closed, outputs", "holder", "x-outputs", ""),
    ("runtime: log manifest, stats", "holder", "exec-end", ""),
    ("holder: result frame out", "holder", "send", "execution_result"),
    ("result frame to owner", "owner", "item", "recv:execution_result"),
    ("owner: persist, result_ack out", "owner", "send", "result_ack"),
    ("result_ack to holder", "holder", "item", "recv:result_ack"),
    ("holder: persist of the ack", "holder", "persist>", ""),
]

Event = tuple[int, int, str, str]  # (ns, pid, event, detail)


def read_events(directory: Path) -> list[Event]:
    events: list[Event] = []
    for path in directory.glob("trace.*"):
        for line in path.read_text().splitlines():
            ns, pid, what, *rest = line.split(" ", 3)
            events.append((int(ns), int(pid), what, rest[0] if rest else ""))
    events.sort()
    return events


def job_steps(window: list[Event], owner: int) -> dict[str, tuple[float, float]] | None:
    """{step label: (step ms, ms from submit)} of one job's events."""
    t0 = window[0][0]
    holder = next((pid for _ns, pid, what, _d in window if what == "exec-start"), None)
    if holder is None:
        return None
    steps: dict[str, tuple[float, float]] = {}
    i, last = 0, t0
    for n, (label, role, what, detail) in enumerate(MILESTONES):
        found = _find(window, i, {"owner": owner, "holder": holder}[role], what, detail)
        if found is not None and detail.endswith("*") and n + 1 < len(MILESTONES):
            _l, next_role, next_what, next_detail = MILESTONES[n + 1]
            pid = {"owner": owner, "holder": holder}[next_role]
            end = _find(window, found + 1, pid, next_what, next_detail)
            while end is not None:
                later = _find(window[:end], found + 1, owner if role == "owner" else holder,
                              what, detail)
                if later is None:
                    break
                found = later
        if found is not None:
            ns = window[found][0]
            steps[label] = ((ns - last) / 1e6, (ns - t0) / 1e6)
            i, last = found + 1, ns
    return steps


def _find(window: list[Event], start: int, pid: int, what: str, detail: str) -> int | None:
    """Index of the first event ``what`` of ``pid`` from ``start`` whose detail
    starts with ``detail`` (without its "*")."""
    prefix = detail.rstrip("*")
    for j in range(start, len(window)):
        _ns, p, ev, det = window[j]
        if p == pid and ev == what and det.startswith(prefix):
            return j
    return None


def breakdown(events: list[Event], owner: int) -> tuple[list[dict[str, tuple[float, float]]], int]:
    submits = [k for k, e in enumerate(events) if e[2] == "submit" and e[1] == owner]
    jobs, remote = [], 0
    for n, start in enumerate(submits):
        end = submits[n + 1] if n + 1 < len(submits) else len(events)
        steps = job_steps(events[start:end], owner)
        if steps is not None:
            jobs.append(steps)
            holder = next(pid for _n, pid, what, _d in events[start:end] if what == "exec-start")
            remote += holder != owner
    return jobs, remote


def print_table(jobs: list[dict[str, tuple[float, float]]]) -> None:
    print(f"{'step (median over jobs that had it)':<46} {'ms':>7} {'at ms':>7} {'jobs':>5}")
    for label, *_ in MILESTONES:
        seen = [s[label] for s in jobs if label in s]
        if seen:
            step = statistics.median(x for x, _ in seen)
            at = statistics.median(y for _, y in seen)
            print(f"{label:<46} {step:7.2f} {at:7.2f} {len(seen):5d}")


def executor_steps(events: list[Event]) -> dict[str, float]:
    """Median ms of each executor step of this process's in-process runs."""
    pid = os.getpid()
    mine = [e for e in events if e[1] == pid]
    spans: dict[str, list[float]] = {}
    pairs = [("x-prep<", "x-prep>"), ("x-spawn<", "x-spawned"), ("x-spawned", "x-waited")]
    pairs += [("x-waited", "x-outputs")]
    for a, b in pairs:
        start = None
        for ns, _pid, what, _d in mine:
            if what == a:
                start = ns
            elif what == b and start is not None:
                spans.setdefault(f"{a} -> {b}", []).append((ns - start) / 1e6)
                start = None
    return {k: statistics.median(v[3:] or v) for k, v in spans.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="copy the trace files here")
    args = parser.parse_args()
    exit_on_sigterm()
    with LoopbackCluster(args.nodes, executors="process") as cluster:
        client = cluster.nodes[0].client

        async def jobs() -> None:
            for _ in range(args.warmup):
                await run_job(client)
            for f in _TRACE_DIR.glob("trace.*"):  # the warm-up is not measured
                f.write_text("")
            for _ in range(args.jobs):
                await run_job(client)

        trio.run(jobs)
        owner = cluster.nodes[0].proc.pid  # type: ignore[union-attr]
    trio.run(executor_baseline, "bwrap", args.jobs)
    events = read_events(_TRACE_DIR)
    jobs_seen, remote = breakdown(events, owner)
    print(f"{len(jobs_seen)} jobs traced over {args.nodes} nodes ({remote} run by another node)")
    print_table(jobs_seen)
    totals = [s[MILESTONES[-3][0]][1] for s in jobs_seen if MILESTONES[-3][0] in s]
    if totals:
        print(f"submit -> owner's result_ack: median {statistics.median(totals):.2f} ms")
    print("\nthe same task through a ProcessExecutor in this process:")
    for label, ms in executor_steps(events).items():
        print(f"  {label:<30} {ms:7.2f} ms")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        for f in _TRACE_DIR.glob("trace.*"):
            (args.keep / f.name).write_text(f.read_text())
        print(f"trace files in {args.keep} (merge: sort -n {args.keep}/trace.*)")


if __name__ == "__main__":
    main()
