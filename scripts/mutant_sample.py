"""A random sample of mutants of the protocol core, each run against tests.

``simnet/mutants.py`` is a catalogue of realistic defects, chosen by hand, that
the simulator must find.  This is its blind complement: it mutates the core
mechanically (a comparison flipped, ``and``/``or`` swapped, a condition
negated, a call or an increment deleted, a boolean return inverted), draws a
seeded sample of those mutants, and runs a test selection against each in a
scratch copy of the repository.  A mutant no test kills is a behaviour no test
holds: read it, then write the test (or see that it is equivalent).

Session 20 ran two samples of 40 (seeds 1 and 2) against the core suites: the
survivors led to ten new tests and two real bugs (a ``job stop`` refused for a
chain in its first stage and for a micro-batch stream with a batch in flight).

Usage: ``python scripts/mutant_sample.py [--seed 1] [--count 40] [--workers 2]
[--output json] [TEST ...]`` (default tests: ``CORE_TESTS``).  Slow: a
surviving mutant costs a full run of the tests (minutes); not run in CI.
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parent.parent
CORE_TESTS = [
    "tests/test_machines.py", "tests/test_machines_stateful.py", "tests/test_kinds.py",
    "tests/test_simnet_invariants.py", "tests/test_simnet_scenarios.py",
    "tests/test_simnet_kinds.py", "tests/test_simnet_ops_census.py", "tests/test_chain_core.py",
    "tests/test_dag_core.py", "tests/test_stream_core.py", "tests/test_stop_mid_run.py",
    "tests/test_outbox_retries.py", "tests/test_simnet_renewals.py",
    "tests/test_simnet_late_grant.py", "tests/test_reporting_after_lapse.py",
    "tests/test_timings_core.py", "tests/test_simnet_chain.py", "tests/test_simnet_dag.py",
    "tests/test_simnet_timings.py", "tests/test_codec.py", "tests/test_askguard.py",
    "tests/test_peer_guard.py", "tests/test_directory_health.py",
    "tests/test_directory_fill.py", "tests/test_cron_catchup.py", "tests/test_core_caches.py",
    "tests/test_hostile_frames.py",
]
SWAPS = {ast.Lt: ("<", "<="), ast.LtE: ("<=", "<"), ast.Gt: (">", ">="),
         ast.GtE: (">=", ">"), ast.Eq: ("==", "!="), ast.NotEq: ("!=", "==")}


class Mutant(NamedTuple):
    file: str  # relative to ROOT
    start: int  # byte offsets of the replaced text
    end: int
    text: str  # what replaces it
    what: str  # file:line and the change, for people

    def apply(self, source: bytes) -> bytes:
        return source[: self.start] + self.text.encode() + source[self.end :]


def mutants_of(file: str) -> list[Mutant]:
    """Every mutant of ``file`` (one change each)."""
    source = (ROOT / file).read_bytes()
    tree = ast.parse(source)
    line_at = [0]
    for line in source.splitlines(keepends=True):
        line_at.append(line_at[-1] + len(line))

    def at(lineno: int, col: int) -> int:  # (ast columns are byte offsets)
        return line_at[lineno - 1] + col

    docstrings = {
        id(node.body[0]) for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found: list[Mutant] = []
    for node in ast.walk(tree):
        where = f"{file}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Compare) and len(node.ops) == 1 and type(node.ops[0]) in SWAPS:
            old, new = SWAPS[type(node.ops[0])]
            gap_start = at(node.left.end_lineno or 0, node.left.end_col_offset or 0)
            gap = source[gap_start : at(node.comparators[0].lineno,
                                         node.comparators[0].col_offset)].decode()
            if gap.count(old) == 1:
                start = gap_start + len(gap[: gap.index(old)].encode())
                found.append(Mutant(file, start, start + len(old), new, f"{where} {old} -> {new}"))
        elif isinstance(node, ast.BoolOp) and len(node.values) == 2:
            old, new = ("and", "or") if isinstance(node.op, ast.And) else ("or", "and")
            gap_start = at(node.values[0].end_lineno or 0, node.values[0].end_col_offset or 0)
            gap = source[gap_start : at(node.values[1].lineno, node.values[1].col_offset)].decode()
            if f" {old} " in gap:
                start = gap_start + len(gap[: gap.index(f" {old} ") + 1].encode())
                found.append(Mutant(file, start, start + len(old), new, f"{where} {old} -> {new}"))
        elif isinstance(node, (ast.If, ast.While)):
            test = node.test
            start, end = at(test.lineno, test.col_offset), at(test.end_lineno or 0,
                                                              test.end_col_offset or 0)
            negated = f"not ({source[start:end].decode()})"
            found.append(Mutant(file, start, end, negated, f"{where} condition negated"))
        elif (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
              and id(node) not in docstrings and node.lineno == node.end_lineno) or (
                isinstance(node, ast.AugAssign) and isinstance(node.op, ast.Add)
                and isinstance(node.value, ast.Constant) and node.value.value == 1):
            start, end = at(node.lineno, node.col_offset), at(node.end_lineno or 0,
                                                              node.end_col_offset or 0)
            found.append(Mutant(file, start, end, "pass",
                                f"{where} deleted `{source[start:end].decode()[:60]}`"))
        elif (isinstance(node, ast.Return) and isinstance(node.value, ast.Constant)
              and isinstance(node.value.value, bool)):
            value = node.value
            start, end = at(value.lineno, value.col_offset), at(value.end_lineno or 0,
                                                                value.end_col_offset or 0)
            flipped = str(not value.value)
            found.append(Mutant(file, start, end, flipped, f"{where} return {flipped}"))
    return found


def core_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "protocols").rglob("*.py")
                  if "docgen" not in p.name)


def run_sample(mutants: list[Mutant], tests: list[str], workers: int) -> list[dict[str, object]]:
    """Run ``tests`` against each mutant, ``workers`` at a time, each worker in
    its own scratch copy of the repository; returns one row per mutant."""
    scratch = Path(tempfile.mkdtemp(prefix="p2pnode-mutants-"))
    ignore = shutil.ignore_patterns(".venv", ".git", "__pycache__", "*.egg-info", ".*_cache",
                                    ".hypothesis")
    copies = [shutil.copytree(ROOT, scratch / f"w{i}", ignore=ignore) for i in range(workers)]
    todo = list(mutants)
    running: dict[Path, tuple[subprocess.Popen[bytes], Mutant, float]] = {}
    rows: list[dict[str, object]] = []
    try:
        while todo or running:
            for copy in copies:
                if copy not in running and todo:
                    mutant = todo.pop(0)
                    target = copy / mutant.file
                    target.write_bytes(mutant.apply((ROOT / mutant.file).read_bytes()))
                    argv = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                            *tests]
                    proc = subprocess.Popen(argv, cwd=copy, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL)
                    running[copy] = (proc, mutant, time.monotonic())
            time.sleep(0.5)
            for copy, (proc, mutant, started) in list(running.items()):
                if proc.poll() is None:
                    continue
                (copy / mutant.file).write_bytes((ROOT / mutant.file).read_bytes())
                verdict = {0: "survived", 1: "killed"}.get(proc.returncode, "error")
                rows.append({"mutant": mutant.what, "verdict": verdict,
                             "seconds": round(time.monotonic() - started, 1)})
                print(f"{verdict:9s} {rows[-1]['seconds']:6.1f}s {mutant.what}",
                      file=sys.stderr, flush=True)
                del running[copy]
    finally:
        for proc, _, _ in running.values():
            proc.kill()
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tests", nargs="*", default=CORE_TESTS)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--output", choices=("table", "json"), default="table")
    parser.add_argument("--list", action="store_true", help="list the sample, run nothing")
    args = parser.parse_args(argv)
    every = [m for f in core_files() for m in mutants_of(f)]
    sample = random.Random(args.seed).sample(every, min(args.count, len(every)))
    if args.list:
        for mutant in sample:
            print(mutant.what)
        return 0
    rows = run_sample(sample, args.tests, args.workers)
    survived = [r for r in rows if r["verdict"] != "killed"]
    if args.output == "json":
        print(json.dumps({"mutants": len(every), "sampled": len(rows), "rows": rows}, indent=1))
    else:
        print(f"{len(every)} mutants; {len(rows)} sampled (seed {args.seed}); "
              f"{len(rows) - len(survived)} killed, {len(survived)} not:")
        for row in survived:
            print(f"  {row['verdict']:9s} {row['mutant']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
