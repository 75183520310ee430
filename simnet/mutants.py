"""The mutation catalogue: planted bugs the simulator must find by itself.

Each :class:`Mutation` is one realistic defect of the core, written as an
exact text replacement in one file.  ``python -m simnet.mutants`` (``make
mutants``) applies each in a scratch copy of ``protocols/`` and ``simnet/``,
runs the sweeps chosen for it seed after seed, and stops at the first seed
that reports a violation (or a lost job, or a core error): the mutant is
*killed*.  A mutant that survives its seed budget, or whose text no longer
matches the code (*stale*: re-anchor it), makes the tool exit 1.

Every kill is then replayed on the unmutated code (same sweep, same seed): it
must pass there, else the kill proves nothing (*baseline-fails*, exit 1).

Mutations marked ``pending`` describe today's behaviour, which a fix in
flight changes; they are listed but not run until re-anchored on the fixed
code (``--strict`` counts them as failures).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import attrs

ROOT = Path(__file__).resolve().parent.parent
COPIED = ("protocols", "simnet")

# Sweeps (RunOptions fields).  Small clusters, short runs: a seed costs ~0.1-1 s.
_FAULTS: dict[str, Any] = {"loss": 0.1, "duplicate": 0.05, "crash_rate": 0.2,
                           "partition_rate": 0.5}
_HARSH: dict[str, Any] = {**_FAULTS, "pause_rate": 0.3, "latency_tail": 0.05,
                          "clock_skew": 0.01, "reorder": 0.2, "reorder_delay": 5.0}
SWEEPS: dict[str, dict[str, Any]] = {
    # every harsh mode on a mixed batch workload
    "harsh": {"workload": "mixed", "nodes": 6, "jobs": 20, "duration": 300.0, **_HARSH},
    # crashes only (no network faults): restarts and their persisted state
    "crashes": {"workload": "plain", "nodes": 5, "jobs": 20, "duration": 300.0,
                "crash_rate": 0.5},
    # long latency tails, pauses, frequent partitions and one-way link
    # failures, no loss: lease
    # timing (calm mode: the faults last their whole 200 s)
    "tails": {"workload": "mixed", "nodes": 5, "jobs": 40, "duration": 300.0,
              "latency_tail": 0.3, "pause_rate": 0.6, "reorder": 0.3, "reorder_delay": 5.0,
              "partition_rate": 4.0, "oneway_rate": 6.0, "calm_after": 200.0,
              "submit_window": 180.0},
    # lying peers on a quiet network
    "byzantine": {"workload": "plain", "nodes": 6, "jobs": 20, "duration": 300.0,
                  "byzantine": 0.34},
    # calm mode: faults stop at 120 s, healthy jobs must complete within 300 s
    "calm": {"workload": "plain", "nodes": 5, "jobs": 20, "duration": 300.0, "loss": 0.3,
             "duplicate": 0.05, "calm_after": 120.0, "liveness_bound": 300.0},
    "stream": {"workload": "stream", "nodes": 5, "jobs": 4, "duration": 240.0, **_HARSH},
    "kinds": {"workload": "kinds", "nodes": 6, "jobs": 8, "duration": 240.0,
              "crash_rate": 0.3, "partition_rate": 0.5},
    "chain": {"workload": "chain", "nodes": 4, "jobs": 3, "duration": 240.0,
              "crash_rate": 0.2, "partition_rate": 0.5, "frame_crash": 0.2},
}


@attrs.frozen(kw_only=True)
class Mutation:
    name: str
    file: str  # relative to the repository root
    find: str  # exact text, must occur exactly once
    replace: str
    sweeps: tuple[str, ...]  # tried in order, each up to `seeds` seeds
    seeds: int  # the stated kill budget per sweep
    why: str
    pending: str = ""  # non-empty: not run (the fix that re-anchors it)
    more: tuple[tuple[str, str, str], ...] = ()  # further (file, find, replace) edits


CATALOGUE: tuple[Mutation, ...] = (
    Mutation(
        name="grant-without-persisting-epoch",
        file="protocols/owner/leases.py",
        find="""        # Fencing: the new epoch is durable before any peer can see it.
        self.persist_slot(slot)
""",
        replace="",
        sweeps=("crashes", "harsh"), seeds=60,
        why="an owner restarted after a grant re-grants the same epoch to another holder",
    ),
    Mutation(
        name="no-retransmission",
        file="protocols/outbox.py",
        find="""        self.send(pending.to, pending.message)
        pending.delay = min(pending.delay * 2, self.timings.retransmit_max)""",
        replace="""        pending.delay = min(pending.delay * 2, self.timings.retransmit_max)""",
        more=(("protocols/holder.py", """        held.renew_delay = min(
            max(held.renew_delay * 2, self.t.retransmit_base), self._renew_interval(held)
        )""", """        held.renew_delay = self._renew_interval(held)"""),),
        sweeps=("calm",), seeds=40,
        why="reliable sends go once, renewals only every ttl/3: leases expire under loss",
    ),
    Mutation(
        name="stream-checkpoint-backwards",
        file="protocols/stream.py",
        find="""        if execution.epoch == slot.progress_epoch and seq < slot.progress_seq:
            return  # an older renewal of this run, reordered: its checkpoint is not news
        if checkpoint and behind(checkpoint, slot.checkpoint):
            self.refuse(job, slot, execution, f"{checkpoint!r} is behind {slot.checkpoint!r}")
            return
""",
        replace="",
        sweeps=("stream",), seeds=40,
        why="a reordered older renewal commits an older checkpoint",
    ),
    Mutation(
        name="lease-extended-from-ack-receipt",
        file="protocols/holder.py",
        find="held.valid_until = max(held.valid_until, sent + held.ttl)",
        replace="held.valid_until = max(held.valid_until, self.out.now + held.ttl)",
        sweeps=("tails", "harsh"), seeds=120,
        why="a late ack stretches the holder's lease past the owner's TTL + grace",
    ),
    Mutation(
        name="result-from-any-sender",
        file="protocols/owner/leases.py",
        find="""        if execution.node != sender:
            raise RemoteProtocolError(f"{sender} does not hold the lease of {exec_id}")
""",
        replace="",
        sweeps=("byzantine",), seeds=20,
        why="a peer that does not hold the lease reports (or releases) its execution",
    ),
    Mutation(
        name="holder-restart-consumes-retries",
        file="protocols/holder.py",
        find="""                    status=LOST,
                    exit_code=-1,
                    error="node restarted; the execution was lost",""",
        replace="""                    status="failed",
                    exit_code=-1,
                    error="node restarted; the execution was lost",""",
        sweeps=("crashes",), seeds=40,
        why="a holder's restart reports its lost execution as failed (uses an attempt)",
    ),
    Mutation(
        name="stale-epoch-accepted",
        file="protocols/owner/leases.py",
        find="""        return execution.epoch == slot.epoch and slot.leased""",
        replace="""        return slot.leased""",
        sweeps=("tails", "harsh"), seeds=60,
        why="a superseded holder's renewal or result is taken as current",
    ),
    Mutation(
        name="no-self-fence",
        file="protocols/holder.py",
        find=("        self._stop(held, ExecEvent.LAPSED, "
              "\"lease lost: no renewal acknowledged within ttl\")\n"),
        replace="""        return
""",
        sweeps=("tails", "harsh"), seeds=60,
        why="a holder whose lease lapsed keeps running beside the new holder",
    ),
    Mutation(
        name="cron-run-id-from-wall-time",
        file="protocols/cron.py",
        find='''        run_id = f"{job.job_id}@{t}"''',
        replace='''        run_id = f"{job.job_id}@{self._wall_ms()}"''',
        sweeps=("kinds",), seeds=30,
        why="run ids stop naming their scheduled time: a re-handled time is not recognised",
    ),
    Mutation(
        name="cron-refire-after-restart",
        file="protocols/cron.py",
        find="""        self._trim(job, state)
        self._save(state)
        self._arm(job, state)""",
        replace="""        self._trim(job, state)
        self._arm(job, state)""",
        sweeps=("kinds",), seeds=30,
        why="the handled times are not persisted: a restarted owner fires them again",
    ),
    Mutation(
        name="chain-accept-window-too-long",
        file="protocols/chain.py",
        find="        window = msg.valid_ms / 1000\n",
        replace="        window = 4 * self.t.lease_ttl\n",
        sweeps=("chain",), seeds=40,
        why="a commit accepted after the offering owner's ownership ended races a takeover",
    ),
    Mutation(
        name="owner-forgets-active-jobs-on-restart",
        file="protocols/owner/__init__.py",
        find="""        for job_id, rec in records.get(JOBS_TABLE, {}).items():
            unit = WorkUnit.for_job(rec["spec"])""",
        replace="""        for job_id, rec in records.get(JOBS_TABLE, {}).items():
            if rec["state"] not in ("completed", "failed", "stopped"):
                continue
            unit = WorkUnit.for_job(rec["spec"])""",
        sweeps=("crashes",), seeds=20,
        why="an owner restarts without its unfinished jobs: they are lost",
    ),
    Mutation(
        name="epoch-not-incremented-on-regrant",
        file="protocols/owner/leases.py",
        find="""        slot.epoch += 1
""",
        replace="""        slot.epoch = max(slot.epoch, 1)
""",
        sweeps=("harsh",), seeds=20,
        why="a re-grant reuses the fencing token of the lease it replaces",
    ),
    Mutation(
        name="cancel-from-any-sender",
        file="protocols/holder.py",
        find="""        if held.owner != sender:
            raise RemoteProtocolError(f"{sender} did not grant {exec_id}")
""",
        replace="",
        sweeps=("byzantine",), seeds=30,
        why="a holder obeys cancels and renew acks from peers that did not grant its lease",
    ),
    Mutation(
        name="failure-budget-counts-lost-leases",
        file="protocols/owner/outcomes.py",
        find="""        slot.lost += 1
        if slot.lost > MAX_LOST_LEASES and not self.policy(job).long_running:
            self._slot_failed(job, slot, event, f"{reason}; {slot.lost} leases lost")""",
        replace="""        slot.lost += 1
        slot.failures += 1
        if slot.failures >= job.unit.attempts and not self.policy(job).long_running:
            self._slot_failed(
                job, slot, event, f"{reason} (attempt {slot.failures} of {job.unit.attempts})"
            )""",
        sweeps=("crashes", "harsh"), seeds=80,
        why="lost leases (network trouble) use up the user's retries",
    ),
)


# --- running one mutant ------------------------------------------------------------------------

_DRIVER = """
import json, sys
from simnet.runner import RunOptions, run_scenario
plan = json.loads(sys.argv[1])
for name, opts, seeds in plan:
    for seed in range(seeds):
        try:
            r = run_scenario(RunOptions(seed=seed, **opts))
            bad = r["invariant_violations"] or (["lost %d job(s)" % r["lost"]] if r["lost"] else [])
        except Exception as exc:  # a crash of the core under test is a kill too
            bad = ["raised %r" % (exc,)]
        if bad:
            print(json.dumps({"sweep": name, "seed": seed, "violation": bad[0][:300]}))
            sys.exit(0)
    print(json.dumps({"sweep": name, "seed": None, "seeds": seeds}), flush=True)
"""


def apply(mutation: Mutation, root: Path) -> bool:
    """Apply ``mutation`` under ``root``; False if its text does not match exactly once."""
    edits = [(mutation.file, mutation.find, mutation.replace), *mutation.more]
    texts: dict[Path, str] = {}
    for file, find, replace in edits:
        path = root / file
        text = texts.get(path, path.read_text())
        if text.count(find) != 1:
            return False
        texts[path] = text.replace(find, replace)
    for path, text in texts.items():
        path.write_text(text)
    return True


def _scratch(tmp: Path) -> Path:
    for name in COPIED:
        shutil.copytree(ROOT / name, tmp / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return tmp


def _drive(root: Path, plan: list[tuple[str, dict[str, Any], int]],
           timeout: float) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "0"}
    proc = subprocess.run([sys.executable, "-c", _DRIVER, json.dumps(plan)], cwd=root,
                          env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return [{"sweep": "?", "seed": None, "error": tail}]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def run_mutant(mutation: Mutation, seed_scale: float = 1.0,
               timeout: float = 1800.0) -> dict[str, Any]:
    """Apply, sweep until the first kill, replay the kill on clean code."""
    row: dict[str, Any] = {"mutation": mutation.name, "file": mutation.file,
                           "sweeps": list(mutation.sweeps), "budget": mutation.seeds,
                           "why": mutation.why}
    if mutation.pending:
        return {**row, "status": "pending", "pending": mutation.pending}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutant-") as tmp:
        root = _scratch(Path(tmp))
        if not apply(mutation, root):
            return {**row, "status": "stale"}
        seeds = max(1, round(mutation.seeds * seed_scale))
        plan = [(name, SWEEPS[name], seeds) for name in mutation.sweeps]
        try:
            results = _drive(root, plan, timeout)
        except subprocess.TimeoutExpired:
            return {**row, "status": "timeout", "wall_seconds": round(time.perf_counter() - t0)}
    kill = next((r for r in results if r.get("seed") is not None), None)
    error = next((r["error"] for r in results if "error" in r), "")
    row["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if kill is None:
        return {**row, "status": "error" if error else "survived", "error": error}
    row.update(status="killed", killed_by=kill["sweep"], seed=kill["seed"],
               seeds_to_kill=kill["seed"] + 1, violation=kill["violation"])
    # The same seed on the unmutated code must pass, or the kill proves nothing.
    clean = _drive(ROOT, [(kill["sweep"], {**SWEEPS[kill["sweep"]]}, kill["seed"] + 1)],
                   timeout)
    if any(r.get("seed") == kill["seed"] for r in clean):
        row["status"] = "baseline-fails"
    return row


# --- the command line --------------------------------------------------------------------------

OK = frozenset({"killed"})


def _table(rows: Sequence[dict[str, Any]]) -> str:
    head = f"{'mutation':38} {'status':15} {'sweep':10} {'seeds to kill':>13} {'budget':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        kill = str(r.get("seeds_to_kill", "-"))
        lines.append(f"{r['mutation']:38} {r['status']:15} {r.get('killed_by', '-'):10} "
                     f"{kill:>13} {r['budget']:>6}")
        if r.get("violation"):
            lines.append(f"    {r['violation'].splitlines()[0][:150]}")
        if r.get("pending"):
            lines.append(f"    pending: {r['pending']}")
        if r.get("error"):
            lines.append(f"    error: {r['error'][:150]}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simnet.mutants", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[],
                        help="run only this mutation (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the catalogue and exit")
    parser.add_argument("--workers", type=int, default=2, help="mutants run in parallel")
    parser.add_argument("--seed-scale", type=float, default=1.0,
                        help="scale every seed budget (a quick look: 0.5)")
    parser.add_argument("--strict", action="store_true",
                        help="pending mutations count as failures")
    parser.add_argument("--output", choices=("table", "json"), default="table")
    args = parser.parse_args(argv)
    chosen = [m for m in CATALOGUE if not args.only or m.name in args.only]
    unknown = set(args.only) - {m.name for m in CATALOGUE}
    if unknown:
        print(f"unknown mutation(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.name:38} {m.file:22} {','.join(m.sweeps):16} {m.seeds:>4}  {m.why}")
        return 0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max(1, args.workers)) as pool:
        rows = list(pool.map(lambda m: run_mutant(m, args.seed_scale), chosen))
    ok = OK | ({"pending"} if not args.strict else set())
    failed = [r for r in rows if r["status"] not in ok]
    if args.output == "json":
        print(json.dumps({"mutations": rows, "failed": len(failed),
                          "wall_seconds": round(time.perf_counter() - t0, 1)}, indent=1))
    else:
        print(_table(rows))
        print(f"{len(rows)} mutations, {sum(r['status'] == 'killed' for r in rows)} killed, "
              f"{len(failed)} failing, {time.perf_counter() - t0:.0f}s wall")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
