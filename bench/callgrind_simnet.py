"""Instructions per delivered message of the simnet core, by callgrind.

Callgrind counts instructions deterministically, so this measure holds on a
shared, loaded machine where wall and CPU time do not. Each figure is the
instruction count of a whole process under ``valgrind --tool=callgrind`` minus
that of a start-up-only process (same interpreter, same imports), divided by
the messages the run delivered:

* core: ``python -m simnet run --nodes N --jobs J --loss 0.1 --workload W``
  (100 x 300 by default; the final checks and the report are included);
* null core: the do-nothing relay of ``bench_simnet.raw_engine_baseline`` over
  the same engine and network model (1,000 relays), as the difference of a
  run of 2n and one of n messages over n: its set-up (1,000 relays) cancels
  out.  (The start-up-subtracted run of n messages alone is printed too; it
  counts the set-up in.)

Usage: ``python bench/callgrind_simnet.py [--workload plain mixed] [--nodes 100]
[--jobs 300] [--null-messages 30000] [--keep DIR]`` (``--keep`` leaves the
callgrind.out files there, for ``callgrind_annotate``). It takes a few minutes:
valgrind runs Python about 50x slower.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_STARTUP_CORE = "import simnet.cli"
_STARTUP_NULL = ("import sys; sys.path.insert(0, 'bench'); import bench_simnet; "
                 "import protocols.events, simnet.engine, simnet.network")
_NULL_RUN = ("import sys, json; sys.path.insert(0, 'bench'); import bench_simnet; "
             "from simnet.engine import Engine; "
             "n = int(sys.argv[1]); bench_simnet.raw_engine_baseline_cpu(n); print(json.dumps(n))")


def _callgrind(argv: list[str], out: Path) -> tuple[int, str]:
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    m = re.search(r"Collected : (\d+)", proc.stderr)
    if m is None:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return int(m.group(1)), proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", nargs="*", default=["plain", "mixed"],
                    choices=["plain", "mixed"])
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--jobs", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--null-messages", type=int, default=30_000,
                    help="messages the null core delivers (0: skip it)")
    ap.add_argument("--keep", default=None, help="folder to keep callgrind.out files in")
    args = ap.parse_args()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cg-simnet-"))
    folder.mkdir(parents=True, exist_ok=True)
    py = sys.executable

    start_core, _ = _callgrind([py, "-c", _STARTUP_CORE], folder / "callgrind.out.startup")
    print(f"start-up (import simnet.cli): {start_core:,} instructions")
    for workload in args.workload:
        total, stdout = _callgrind(
            [py, "-m", "simnet", "run", "--nodes", str(args.nodes), "--jobs", str(args.jobs),
             "--seed", str(args.seed), "--loss", "0.1", "--workload", workload,
             "--output", "json"],
            folder / f"callgrind.out.{workload}")
        report = json.loads(stdout)
        delivered = int(report["messages_delivered"])
        per = (total - start_core) / delivered
        print(f"core {workload} {args.nodes}x{args.jobs}: {total:,} instructions, "
              f"{delivered} delivered, {per / 1000:.1f}k instructions per message "
              f"(trace {str(report.get('trace_hash', ''))[:16]})", flush=True)
    if args.null_messages:
        n = args.null_messages
        start_null, _ = _callgrind([py, "-c", _STARTUP_NULL], folder / "callgrind.out.startup-null")
        one, _ = _callgrind([py, "-c", _NULL_RUN, str(n)], folder / "callgrind.out.null")
        two, _ = _callgrind([py, "-c", _NULL_RUN, str(2 * n)], folder / "callgrind.out.null2")
        print(f"null core: {(two - one) / n / 1000:.1f}k instructions per message "
              f"({2 * n} - {n} messages; {(one - start_null) / n / 1000:.1f}k with the "
              f"set-up of {n} messages counted in)")
    print(f"callgrind.out files: {folder}")


if __name__ == "__main__":
    main()
