"""Every workload swept in the harsh modes: the CI sweep and ``make soak``.

``python -m simnet.soak --seeds 0..199`` runs ``python -m simnet sweep`` once
per profile below (each a workload with every harsh mode it passes) and
prints one line per profile; exit 1 when any seed of any profile fails, with
the failing seeds' reproduce lines.  CI runs 200 seeds per profile, 100 of
``loaded`` (tests/test_simnet_harsh_sweeps.py); ``make soak`` runs 0..9999 of
each.

Sizes are small on purpose: what finds bugs is the number of seeds and the
harshness of each, not the size of one run.  The exception is ``loaded``: a
node whose capacity is full behaves differently (late grants given back,
renewals racing short leases), and only many jobs per node get there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence

# Every harsh mode: heterogeneous peers (each node its own Timings), loss,
# duplication, wide reordering, latency tails, clock skew, pauses, crashes,
# partitions, one-way link failures.
HARSH = ["--timings", "mixed", "--loss", "0.1", "--duplicate", "0.05", "--reorder", "0.2",
         "--reorder-delay", "5s", "--latency-tail", "0.05", "--clock-skew", "0.01",
         "--pause-rate", "0.5", "--crash-rate", "0.3", "--partition-rate", "1",
         "--oneway-rate", "1"]
# Chains also get crashes around every handover frame.
CHAIN_FAULTS = ["--frame-crash", "0.1"]

PROFILES: dict[str, list[str]] = {
    "plain": ["--workload", "plain", "--nodes", "4", "--jobs", "5", "--duration", "2m",
              "--byzantine", "0.25", *HARSH],
    "mixed": ["--workload", "mixed", "--nodes", "4", "--jobs", "5", "--duration", "2m",
              "--byzantine", "0.25", *HARSH],
    # faults stop at 90 s, then every healthy job completes within 300 s (L3)
    "calm": ["--workload", "mixed", "--nodes", "4", "--jobs", "6", "--duration", "5m",
             "--calm-after", "90s", "--byzantine", "0.25", *HARSH],
    "kinds": ["--workload", "kinds", "--nodes", "4", "--jobs", "3", "--duration", "90s",
              "--byzantine", "0.25", *HARSH],
    "stream": ["--workload", "stream", "--nodes", "4", "--jobs", "2", "--duration", "90s",
               "--byzantine", "0.25", *HARSH],
    "dag": ["--workload", "dag", "--nodes", "4", "--jobs", "1", "--duration", "2m",
            "--byzantine", "0.25", *HARSH],
    "chain": ["--workload", "chain", "--nodes", "4", "--jobs", "1", "--duration", "2m",
              "--byzantine", "0.25", *HARSH, *CHAIN_FAULTS],
    # Load: 30 jobs per node keep capacity full, so grants come late and find no
    # room, and 1 s leases (mixed timings) renew through 30 % loss.  No node
    # fault, so L1 and L4 hold strictly.  The small profiles above never fill a
    # node; this one found two defects (tests/test_simnet_renewals.py).
    "loaded": ["--workload", "plain", "--nodes", "10", "--jobs", "300", "--timings", "mixed",
               "--loss", "0.3", "--duplicate", "0.05", "--reorder", "0.2"],
}


def sweep(profile: str, seeds: str, workers: int) -> dict[str, object]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "simnet", "sweep", "--seeds", seeds,
                           "--workers", str(workers), "--output", "json", *PROFILES[profile]],
                          capture_output=True, text=True, check=False)
    wall = round(time.perf_counter() - t0, 1)
    try:
        summary: dict[str, object] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"profile": profile, "seeds": 0, "failed": -1, "error": last, "wall": wall}
    summary.update(profile=profile, wall=wall)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simnet.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="0..199", help="seed range A..B per profile")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--only", action="append", choices=sorted(PROFILES), default=[])
    parser.add_argument("--output", choices=("table", "json"), default="table")
    args = parser.parse_args(argv)
    rows = [sweep(p, args.seeds, args.workers) for p in (args.only or list(PROFILES))]
    bad = [r for r in rows if r.get("failed") != 0]
    if args.output == "json":
        print(json.dumps({"profiles": rows, "failed": len(bad)}))
    else:
        for r in rows:
            print(f"{r['profile']:8} seeds={r.get('seeds')} failed={r.get('failed')} "
                  f"wall={r['wall']}s {r.get('error', '')}")
            for f in r.get("failures", []) or []:  # type: ignore[attr-defined]
                print(f"  FAIL seed {f['seed']}: {(f['violations'] or ['lost'])[0][:200]}")
                print(f"    reproduce: {f['reproduce']}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
