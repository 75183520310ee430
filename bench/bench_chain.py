"""Handover cost: the same stages run as a chain (ownership handed from peer to
peer) and as a linear DAG (one owner orchestrates), in one run.

The cluster: ``--nodes`` (5) ``python -m p2pnode serve --executors process``
processes on 127.0.0.1; node 0 submits both kinds and runs nothing itself
(``--no-compute``), so every stage runs elsewhere and every chain stage after
the first is owned by the node that ran the previous one.  Each stage appends
one line to its input and passes it on (inputs fetched by content id), so the
data path is the same in both; only who orchestrates differs.

Prints, over ``--runs`` (5) alternating runs: submit -> completed of each, the
ratio chain / DAG, and the added latency per handover
(chain - DAG) / (stages - 1).

Usage: ``python bench/bench_chain.py [--stages 5] [--runs 5] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from common import LoopbackCluster, ServeNode, exit_on_sigterm, fmt, print_table

HANDOVER_GOAL = 1.1  # issue 16: chain <= 1.1x the same stages as a one-owner DAG
WORKERS = {"labels": {"role": "worker"}}


def task(i: int) -> dict[str, Any]:
    body = f'{{ cat "$P2PNODE_INPUTS"/*/out.txt 2>/dev/null; echo st{i}; }}'
    return {
        "engine": {
            "type": "process",
            "command": ["sh", "-c", f'{body} > "$P2PNODE_OUTPUTS/out.txt"'],
        },
        "timeout": "1m",
    }


def chain_spec(stages: int) -> dict[str, Any]:
    return {"name": "bench-chain", "type": "chain", "constraints": WORKERS,
            "stages": [{"name": f"st{i}", "task": task(i)} for i in range(stages)]}  # fmt: skip


def dag_spec(stages: int) -> dict[str, Any]:
    tasks = {}
    for i in range(stages):
        tasks[f"st{i}"] = {**task(i), **({"depends_on": [f"st{i - 1}"]} if i else {})}
    return {"name": "bench-dag", "type": "dag", "constraints": WORKERS, "tasks": tasks}


async def run_once(node: ServeNode, spec: dict[str, Any], timeout: float = 120.0) -> float:
    """Submit -> the end of the job as the submitter sees it, waited for with
    the ``wait`` stream (the moment it ends, not at the next poll)."""
    t0 = time.perf_counter()
    job_id = (await node.client.call("submit", spec=spec))["job_id"]
    result: dict[str, Any] = {}
    with trio.fail_after(timeout):
        async for item in node.client.stream("wait", job_id=job_id, timeout=timeout):
            result = item.get("result") or result
    elapsed = time.perf_counter() - t0
    if result.get("state") != "completed":
        raise RuntimeError(f"{spec['type']} job {job_id} {result.get('state')}: {result}")
    return elapsed


def main() -> None:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--stages", type=int, default=5)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="p2pc-"))
    # Node 0 orchestrates only: the stages need the label the others carry.
    labels = ["", *["role=worker"] * (args.nodes - 1)]
    with LoopbackCluster(args.nodes, root=root, labels=labels) as cluster:
        owner = cluster.nodes[0]

        async def run() -> tuple[list[float], list[float]]:
            chains, dags = [], []
            await run_once(owner, dag_spec(args.stages))  # warm-up: dials, streams
            await run_once(owner, chain_spec(args.stages))
            for _ in range(args.runs):
                dags.append(await run_once(owner, dag_spec(args.stages)))
                chains.append(await run_once(owner, chain_spec(args.stages)))
            return chains, dags

        chains, dags = trio.run(run)
    chain50, dag50 = statistics.median(chains), statistics.median(dags)
    per_handover = (chain50 - dag50) / max(args.stages - 1, 1)
    summary = {
        "stages": args.stages,
        "chain_p50_s": chain50,
        "dag_p50_s": dag50,
        "chain_vs_dag": chain50 / dag50,
        "chain_vs_dag_goal": HANDOVER_GOAL,
        "chain_vs_dag_met": chain50 / dag50 <= HANDOVER_GOAL,
        "added_per_handover_ms": per_handover * 1000,
        "chain_runs_s": chains,
        "dag_runs_s": dags,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print_table(
        f"{args.stages} stages, {args.nodes} processes, {args.runs} runs each",
        ["measure", "p50", "ratio"],
        [
            ["linear DAG, one owner (baseline)", fmt(dag50 * 1000, " ms"), "1.00x"],
            [
                "chain, handed over at each stage",
                fmt(chain50 * 1000, " ms"),
                f"{chain50 / dag50:.2f}x (goal <= {HANDOVER_GOAL:g}x)",
            ],
            ["added latency per handover", fmt(per_handover * 1000, " ms"), ""],
        ],
    )


if __name__ == "__main__":
    main()
