"""Lost leases of simnet runs, counted per seed (no timing): compare two checkouts.

Runs ``simnet run`` over a seed range (default: 3 nodes, 20 plain jobs, a
50 % latency tail of 1-8 s) and counts, from the owners' job histories:

* seeds with a lost lease, lost leases, and why (the owner waited the lease
  out: ``expired``; the holder gave it back: ``released``);
* of the lost leases, those never accepted (no ``started``: the grant was
  not taken) and those lost while running (every renewal came late);
* remote leases started (a lease an owner gives itself never crosses the
  network), and ``hello`` / ``peers`` frames per seed.

A seed reproduces exactly, but one random stream feeds every frame's fate:
a change that sends other frames (directory traffic) reshuffles every later
draw, so compare rates over hundreds of seeds, not single seeds.

Usage: ``python bench/lease_losses.py --seeds 0..399 [--jobs 20] [--nodes 3]
[--latency-tail 0.5] [--workload plain]``.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import simnet.runner as runner

WALL0_MS = 1_800_000_000_000  # simnet's wall clock at virtual time 0


def counted_run(opts: runner.RunOptions) -> tuple[dict[str, Any], Counter[str]]:
    """One run; its report and its lease counts (read from the owners' cores)."""
    seen: dict[str, Any] = {}
    report_of = runner._report

    def keep_cluster(*args: Any) -> dict[str, Any]:
        seen["cluster"] = args[1]
        return report_of(*args)

    runner._report = keep_cluster  # type: ignore[assignment]
    try:
        report = runner.run_scenario(opts)
    finally:
        runner._report = report_of
    cluster = seen["cluster"]
    counts: Counter[str] = Counter()
    for node in cluster.ids:
        core = cluster.core(node)
        if core is None:
            continue
        for events in core.owner.history.values():
            leased: dict[int, str] = {}  # slot -> its latest execution id
            started: set[str] = set()
            for e in events:
                if e["event"] == "leased":
                    leased[e["slot"]] = e["detail"].split(", ")[-1]
                elif e["event"] == "started":
                    started.add(e["detail"])
                    counts["remote leases started" if e["node"] != node else "own leases"] += 1
                elif e["event"] == "lost":
                    cause = "released" if e["detail"].startswith("released") else "expired"
                    counts[f"lost: {cause}"] += 1
                    running = leased.get(e["slot"]) in started
                    counts["lost while running" if running else "lost, never accepted"] += 1
    return report, counts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0..99", help="A..B (inclusive)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--latency-tail", type=float, default=0.5)
    parser.add_argument("--workload", default="plain")
    args = parser.parse_args()
    first, last = (int(x) for x in args.seeds.split(".."))
    totals: Counter[str] = Counter()
    for seed in range(first, last + 1):
        opts = runner.RunOptions(seed=seed, nodes=args.nodes, jobs=args.jobs,
                                 latency_tail=args.latency_tail, workload=args.workload)
        report, counts = counted_run(opts)
        lost = counts["lost: expired"] + counts["lost: released"]
        totals["seeds with a lost lease"] += lost > 0
        totals["invariant violations"] += len(report["invariant_violations"])
        totals["lost jobs"] += report["lost"]
        for kind in ("hello", "peers"):
            totals[f"{kind} frames"] += report["sent_by_type"].get(kind, 0)
        totals.update(counts)
    seeds = last - first + 1
    lost = totals["lost: expired"] + totals["lost: released"]
    print(f"seeds {args.seeds}: {totals['seeds with a lost lease']}/{seeds} with a lost lease, "
          f"{lost} lost leases ({lost / max(1, totals['remote leases started']):.2%} "
          f"of remote leases)")
    for key in sorted(totals):
        value = totals[key]
        per = f"  ({value / seeds:.2f}/seed)" if key.endswith("frames") else ""
        print(f"  {key}: {value}{per}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
