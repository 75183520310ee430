"""Where a chain handover's time goes, step by step, against a DAG's next stage.

``bench_chain.py`` measures the chain's cost as a whole (issue 16: a chain
<= 1.1x the same stages as a one-owner DAG).  This runs the same two jobs with
``P2PNODE_TRACE`` set (``p2pnode/tracing.py``), merges the processes' traces on
their shared monotonic clock and splits the gap between a stage's result
reaching its owner and the next stage's first ask into its steps:

* DAG: the owner persists the result and asks for the next task (one step);
* chain: the owner persists the result and its offer; the offer frame; the
  node that ran the stage verifies the log and countersigns; the accept
  frame; the owner persists that it let go; the commit frame; the new owner
  persists that it owns the stage, then asks.

What the chain adds is three frames and two durable commits in sequence:
the price of a single accountable owner at every moment (the old owner lets
go on disk before the new one may act).  The table prints each step's median
and the same-run medians of a frame's delivery and a commit, so the floor
(3 frames + 2 commits) reads against the added time.

Usage: ``python bench/trace_chain.py [--nodes 5] [--stages 5] [--runs 10] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# Before anything imports p2pnode.tracing (which reads it once): the children
# inherit it through the environment.
_TRACE_DIR = Path(tempfile.mkdtemp(prefix="p2pnode-trace-chain-"))
os.environ["P2PNODE_TRACE"] = str(_TRACE_DIR / "trace")

import trio  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_chain import chain_spec, dag_spec, run_once  # noqa: E402
from common import LoopbackCluster, exit_on_sigterm, fmt, print_table  # noqa: E402
from trace_job import Event, read_events  # noqa: E402

os.environ["P2PNODE_TRACE"] = str(_TRACE_DIR / "trace")  # trace_job set its own on import

Window = tuple[str, int, int]  # (kind, start ns, end ns) of one job, bench clock

HANDOVER_STEPS = [
    ("owner: persist result + offer, offer out", "send", "handover_offer", "A"),
    ("offer frame to the stage's runner", "item", "recv:handover_offer", "X"),
    ("runner: verify log, countersign, accept out", "send", "handover_accept", "X"),
    ("accept frame to owner", "item", "recv:handover_accept", "A"),
    ("owner: persist letting go, commit out", "send", "handover_commit", "A"),
    ("commit frame to runner", "item", "recv:handover_commit", "X"),
    ("new owner: persist ownership + run, first ask out", "send", "ask_for_bid", "X"),
]


def _next(events: list[Event], i: int, pid: int | None, what: str, detail: str) -> int | None:
    """Index of the first event after ``i`` matching (at ``pid`` if given)."""
    for j in range(i + 1, len(events)):
        _ns, p, w, d = events[j]
        if w == what and d == detail and (pid is None or p == pid):
            return j
    return None


def _last_before(events: list[Event], i: int, pid: int, what: str, detail: str) -> int | None:
    for j in range(i - 1, -1, -1):
        _ns, p, w, d = events[j]
        if p == pid and w == what and d == detail:
            return j
    return None


def handovers(events: list[Event]) -> list[list[float]]:
    """Per handover: the ms of each of HANDOVER_STEPS, from the result's arrival."""
    out = []
    for i, (_ns, a, what, detail) in enumerate(events):
        if (what, detail) != ("send", "handover_offer"):
            continue
        start = _last_before(events, i, a, "item", "recv:execution_result")
        if start is None:
            continue
        pids = {"A": a, "X": None}
        steps, at = [], start
        for _label, w, d, who in HANDOVER_STEPS:
            j = _next(events, at, pids[who], w, d)
            if j is None:
                break
            if who == "X" and pids["X"] is None:
                pids["X"] = events[j][1]
            steps.append((events[j][0] - events[at][0]) / 1e6)
            at = j
        if len(steps) == len(HANDOVER_STEPS):
            out.append(steps)
    return out


def dag_gaps(events: list[Event], windows: list[Window]) -> list[float]:
    """ms from a DAG stage's result reaching the owner to the next stage's ask."""
    gaps = []
    for kind, lo, hi in windows:
        if kind != "dag":
            continue
        inside = [e for e in events if lo <= e[0] <= hi]
        for i, (ns, pid, what, detail) in enumerate(inside):
            if (what, detail) == ("item", "recv:execution_result"):
                j = _next(inside, i, pid, "send", "ask_for_bid")
                if j is not None:
                    gaps.append((inside[j][0] - ns) / 1e6)
    return gaps


def frame_deliveries(events: list[Event]) -> list[float]:
    """ms from a handover frame's send to its receipt (the three kinds)."""
    out = []
    for i, (ns, _pid, what, detail) in enumerate(events):
        if what == "send" and detail in ("handover_offer", "handover_accept", "handover_commit"):
            j = _next(events, i, None, "item", f"recv:{detail}")
            if j is not None:
                out.append((events[j][0] - ns) / 1e6)
    return out


def commits(events: list[Event]) -> list[float]:
    """ms of each runtime persist (hand-off to the writer, SQLite commit, back)."""
    out, begun = [], {}
    for ns, pid, what, _detail in events:
        if what == "persist<":
            begun[pid] = ns
        elif what == "persist>" and pid in begun:
            out.append((ns - begun.pop(pid)) / 1e6)
    return out


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    labels = ["", *["role=worker"] * (args.nodes - 1)]
    windows: list[Window] = []
    with LoopbackCluster(args.nodes, root=_TRACE_DIR / "nodes", labels=labels) as cluster:
        owner = cluster.nodes[0]

        async def run() -> None:
            await run_once(owner, dag_spec(args.stages))  # warm-up: dials, streams
            await run_once(owner, chain_spec(args.stages))
            for _ in range(args.runs):
                for kind, spec in (("dag", dag_spec), ("chain", chain_spec)):
                    lo = time.monotonic_ns()
                    await run_once(owner, spec(args.stages))
                    windows.append((kind, lo, time.monotonic_ns()))

        trio.run(run)
    events = read_events(_TRACE_DIR)
    first = min(lo for _k, lo, _h in windows)
    events = [e for e in events if e[0] >= first]  # not the warm-up
    per = handovers(events)
    if not per:
        raise SystemExit(f"no complete handover in the traces ({_TRACE_DIR})")
    steps = [statistics.median(s[k] for s in per) for k in range(len(HANDOVER_STEPS))]
    handover = statistics.median(sum(s) for s in per)
    dag = statistics.median(dag_gaps(events, windows) or [float("nan")])
    frame = statistics.median(frame_deliveries(events) or [float("nan")])
    commit = statistics.median(commits(events) or [float("nan")])
    result = {
        "nodes": args.nodes,
        "stages": args.stages,
        "runs": args.runs,
        "handovers": len(per),
        "handover_steps_ms": dict(zip([s[0] for s in HANDOVER_STEPS], steps, strict=False)),
        "handover_ms": handover,
        "dag_next_stage_ms": dag,
        "added_per_handover_ms": handover - dag,
        "frame_delivery_ms": frame,
        "commit_ms": commit,
        "floor_3_frames_2_commits_ms": 3 * frame + 2 * commit,
        "trace_dir": str(_TRACE_DIR),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    rows = [[f"  {label}", fmt(ms, " ms", 2)] for label, ms in result["handover_steps_ms"].items()]
    print_table(
        f"chain handover vs DAG next stage: {len(per)} handovers, {args.nodes} processes",
        ["step (median)", "time"],
        [
            ["chain: result in -> next stage's first ask", fmt(handover, " ms", 2)],
            *rows,
            ["DAG: result in -> next task's first ask", fmt(dag, " ms", 2)],
            ["added per handover", fmt(handover - dag, " ms", 2)],
            ["  a handover frame's delivery (median)", fmt(frame, " ms", 2)],
            ["  a runtime commit (median)", fmt(commit, " ms", 2)],
            ["  floor: 3 frames + 2 commits", fmt(3 * frame + 2 * commit, " ms", 2)],
        ],
    )
    print(f"traces kept in {_TRACE_DIR}")


if __name__ == "__main__":
    main()
