"""Cron, daemon, service and ops jobs on real clusters of ``p2pnode serve`` processes.

The same product as test_real_cluster.py runs it (separate interpreters, real
TCP on loopback, the process executor, SIGKILL), for the job kinds beyond
batch.  The exact scenarios on a hand-cranked network are in test_kinds.py.
Waits are bounded and poll (the control socket for speed, the CLI where the
CLI itself is asserted); nothing sleeps "long enough".
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from p2pnode.control import ControlError
from tests.realnet import (
    Cluster,
    ServeNode,
    cluster,
    execution_pidfiles,
    executions,
    is_terminal,
)

pytestmark = pytest.mark.slow


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _start(
    c: Cluster,
    names: list[str],
    *,
    owner_executors: str,
    lease_ttl: float,
    extra: Sequence[str] = (),
) -> list[ServeNode]:
    """The first name is the owner; the others bootstrap through it.  Waits
    until every view lists every node."""
    owner = c.add(names[0], executors=owner_executors, lease_ttl=lease_ttl, extra=extra)
    owner.wait_ready()
    others = [
        c.add(n, lease_ttl=lease_ttl, bootstrap=[owner.addrs[0]], extra=extra) for n in names[1:]
    ]
    for node in others:
        node.wait_ready()
    c.wait_connected([owner, *others])
    return [owner, *others]


def _submit(node: ServeNode, spec: Path) -> str:
    submitted = node.cli("job", "run", spec, "-o", "json")
    assert submitted.returncode == 0, submitted.explain()
    return str(submitted.json()["job_id"])


def _live_slots(view: dict[str, Any]) -> list[dict[str, Any]]:
    """Slots whose current execution runs (as the owner sees it)."""
    return [
        s
        for s in view["slots"]
        if s["state"] == "running" and s["executions"] and s["executions"][-1]["state"] == "running"
    ]


# --- cron: overlap skip, owner SIGKILL and restart --------------------------------------

# Each run logs its start and end (wall ns) to a file shared by every node
# (one machine): the task's own account of when each scheduled time ran.
CRON_SPEC = """\
name: tick
type: cron
schedule:
  every: 2s
  overlap: skip
  history: {{succeeded: 100, failed: 100}}
task:
  engine:
    type: process
    command:
      - sh
      - -c
      - 'echo "start $P2PNODE_JOB_ID $P2PNODE_EXECUTION_ID $(date +%s%N)" >> "$RUNLOG";
        sleep 3;
        echo "end $P2PNODE_JOB_ID $P2PNODE_EXECUTION_ID $(date +%s%N)" >> "$RUNLOG"'
  env: {{RUNLOG: "{runlog}"}}
  resources: {{cpu: 0.1, memory: 64MiB}}
  timeout: 1m
"""
EVERY_MS = 2000
CRON_TTL = 30.0  # see the test
RUNS = 5  # completed runs required, at least 2 of them scheduled after the restart


def _run_log(path: Path) -> dict[int, dict[str, list[Any]]]:
    """scheduled_ms -> {"start": [(ns, execution id)], "end": [...]}, from the task's log."""
    runs: dict[int, dict[str, list[Any]]] = {}
    if not path.exists():
        return runs
    for line in path.read_text().splitlines():
        what, run_id, exec_id, ns = line.split()
        scheduled = int(run_id.rpartition("@")[2])
        runs.setdefault(scheduled, {"start": [], "end": []})[what].append((int(ns), exec_id))
    return runs


def _check_cron_history(
    cron: str,
    rows: list[dict[str, Any]],
    logged: dict[int, dict[str, list[Any]]],
    compute: set[str],
    context: str,
) -> None:
    """What the cron test asserts about `job runs` and the task's own log."""
    started = [r for r in rows if r["run_id"]]
    # One entry per scheduled time, none lost: consecutive multiples of 2 s (a
    # missed row stands for `count` times, first_scheduled_ms..scheduled_ms:
    # the owner's catch-up after its restart handles only the newest due time).
    times = []
    for r in rows:
        first, count = r["first_scheduled_ms"], r["count"]
        assert r["scheduled_ms"] - first == (count - 1) * EVERY_MS, context
        times += range(first, r["scheduled_ms"] + 1, EVERY_MS)
    assert times == list(range(times[0], times[-1] + EVERY_MS, EVERY_MS)), context
    # Run ids: unique, derived from the time.
    assert len({r["run_id"] for r in started}) == len(started), context
    assert all(r["run_id"] == f"{cron}@{r['scheduled_ms']}" for r in started), context
    # Every run started was one lease, on a compute node, that completed.
    assert all(r["outcome"] == "completed" for r in started), context
    assert all(len(r["executions"]) == 1 for r in started), context
    assert all(r["executions"][0]["state"] == "succeeded" for r in started), context
    assert {r["executions"][0]["node"] for r in started} <= compute, context
    assert len(started) >= RUNS, context

    # Overlap skip: a run lasts 3 s, longer than the 2 s period, so the time
    # after each run was skipped, naming the run still active.
    for run, nxt in itertools.pairwise(started):
        between = [r for r in rows if run["scheduled_ms"] < r["scheduled_ms"] < nxt["scheduled_ms"]]
        assert between and all(r["outcome"] in ("skipped", "missed") for r in between), context
        skipped = [r for r in between if r["outcome"] == "skipped"]
        missed = [r for r in between if r["outcome"] == "missed"]
        assert len(missed) <= 1, context  # one per catch-up, and there was one restart
        assert skipped or missed, context
        if skipped:
            assert skipped[0]["reason"] == f"run {run['run_id']} still active", context

    # The task's own log: each started time ran exactly once (one start, one
    # end, the execution the owner recorded), never before its time, and no
    # two runs overlapped.
    assert sorted(logged) == [r["scheduled_ms"] for r in started], context
    spans = []
    for r in started:
        entry = logged[r["scheduled_ms"]]
        exec_id = r["executions"][0]["execution_id"]
        assert [e for _, e in entry["start"]] == [exec_id], context
        assert [e for _, e in entry["end"]] == [exec_id], context
        begin, end = entry["start"][0][0], entry["end"][0][0]
        assert begin >= r["scheduled_ms"] * 1_000_000, context
        spans.append((begin, end))
    for (_, end), (begin, _) in itertools.pairwise(spans):
        assert begin > end, f"runs overlap\n{context}"


def test_cron_skips_overlaps_and_survives_an_owner_restart(tmp_path: Path) -> None:
    runlog = tmp_path / "runs.log"
    spec = _write(tmp_path / "cron.yaml", CRON_SPEC.format(runlog=runlog))
    with cluster(tmp_path) as c:
        # The owner does not compute (a run on the owner would die with it and
        # be run again).  The lease must outlive the owner's downtime (SIGKILL
        # to serving again: ~3 s, ~7 s on a loaded 2-core machine), or the
        # holder of the run in flight fences itself, drops its result, and
        # the owner re-grants that scheduled time: a second execution allowed
        # by the protocol (at-least-once execution, exactly-once result), which
        # this test is written to rule out.  With a 30 s ttl the holder renews
        # every 10 s, so its lease has >= 20 s left when the owner dies.
        # --sandbox none: every run appends to one host file (the run log),
        # which the sandbox rightly forbids.
        owner, b, _ = _start(
            c, ["a", "b", "c"], owner_executors="", lease_ttl=CRON_TTL, extra=["--sandbox", "none"]
        )
        cron = _submit(owner, spec)

        def runs() -> list[dict[str, Any]]:
            return list(owner.control("runs", job_id=cron))

        def completed() -> list[dict[str, Any]]:
            return [r for r in runs() if r["outcome"] == "completed"]

        c.wait_until(lambda: len(completed()) >= 2, timeout=30, what="2 completed runs")
        # Kill the owner while a run is in flight on its holder.
        c.wait_until(
            lambda: any(
                r["outcome"] == "running"
                and r["executions"]
                and r["executions"][-1]["state"] == "running"
                for r in runs()
            ),
            timeout=15,
            what="a run executing",
        )
        port = owner.tcp_port
        owner.kill()
        killed_ms, killed_at = int(time.time() * 1000), time.monotonic()
        owner.start(
            [
                *("--listen", f"/ip4/127.0.0.1/tcp/{port}", "--lease-ttl", str(CRON_TTL)),
                *("--bootstrap", b.addrs[0], "--sandbox", "none"),
            ]
        )
        owner.wait_ready()
        down_s = time.monotonic() - killed_at

        def enough() -> bool:
            try:
                done = completed()
            except ControlError:  # the restarted owner's control socket is not up yet
                return False
            after = [r for r in done if r["scheduled_ms"] > killed_ms]
            return len(done) >= RUNS and len(after) >= 2

        c.wait_until(enough, timeout=40, what=f"{RUNS} completed runs, 2 after the restart")

        # Suspend (through the CLI): no new run starts; the one going finishes.
        suspended = owner.cli("job", "suspend", cron, "-o", "json")
        assert suspended.returncode == 0, suspended.explain()
        assert suspended.json()["state"] == "suspended"
        c.wait_job(
            owner,
            cron,
            lambda v: not v["schedule"]["active_runs"],
            timeout=20,
            what="no active run",
        )
        listed = owner.cli("job", "runs", cron, "--output", "json")
        assert listed.returncode == 0, listed.explain()
        rows = listed.json()
        logged = _run_log(runlog)
        context = f"owner down {down_s:.1f} s (SIGKILL to ready again)\nruns: {rows}\nlog: {logged}"
        compute = {n.node_id for n in c.nodes.values() if n is not owner}
        _check_cron_history(cron, rows, logged, compute, context)


# --- daemon: a node that joins later gets it; then an ops job over the 3 nodes -------

DAEMON_SPEC = """\
name: agent
type: daemon
task:
  engine: {type: process, command: [sleep, "600"]}
  resources: {cpu: 0.1, memory: 64MiB}
  timeout: 20m
"""

OPS_SPEC = """\
name: inventory
type: ops
task:
  engine:
    type: process
    command: [sh, -c, 'echo "$P2PNODE_EXECUTION_ID" > "$P2PNODE_OUTPUTS/ran.txt"']
  resources: {cpu: 0.1, memory: 64MiB}
  timeout: 1m
"""


def test_daemon_reaches_a_late_joiner_and_ops_runs_once_per_node(tmp_path: Path) -> None:
    daemon_spec = _write(tmp_path / "daemon.yaml", DAEMON_SPEC)
    ops_spec = _write(tmp_path / "ops.yaml", OPS_SPEC)
    with cluster(tmp_path) as c:
        a, b = _start(c, ["a", "b"], owner_executors="process", lease_ttl=2)
        daemon = _submit(a, daemon_spec)
        view = c.wait_job(
            a, daemon, lambda v: v.get("live") == 2, timeout=30, what="the daemon on a and b"
        )
        assert {s["node"] for s in _live_slots(view)} == {a.node_id, b.node_id}, view

        late = c.add("c", lease_ttl=2, bootstrap=[a.addrs[0]])
        late.wait_ready()
        view = c.wait_job(
            a,
            daemon,
            lambda v: v.get("live") == 3 and v.get("desired") == 3,
            timeout=30,
            what="the daemon on the late node too",
        )
        [joined] = [s for s in _live_slots(view) if s["node"] == late.node_id]
        eid = joined["executions"][-1]["execution_id"]
        # The late node really runs it: its executor keeps a pidfile while it runs.
        c.wait_until(
            lambda: any(e.startswith(eid) for e in execution_pidfiles(late.data_dir)),
            timeout=10,
            what=f"the pidfile of {eid} on c",
        )
        assert view["state"] == "running" and view["type"] == "daemon", view
        assert {s["node"] for s in _live_slots(view)} == {a.node_id, b.node_id, late.node_id}

        # An ops job over the same 3 nodes: one execution on each, then completed.
        c.wait_connected([a, b, late])
        ops = _submit(a, ops_spec)
        view = c.wait_job(a, ops, is_terminal, timeout=40, what="the ops job to end")
        assert view["state"] == "completed", view
        assert sorted(s["node"] for s in view["slots"]) == sorted(
            [a.node_id, b.node_id, late.node_id]
        ), view
        execs = executions(view)
        assert len(execs) == 3 and all(e["state"] == "succeeded" for e in execs), execs
        assert {e["node"] for e in execs} == {a.node_id, b.node_id, late.node_id}, execs
        # The daemon is untouched by all this.
        assert a.describe(daemon)["live"] == 3


# --- service: a killed holder's slot is re-placed -----------------------------------------

SERVICE_SPEC = """\
name: web
type: service
count: 2
task:
  engine: {type: process, command: [sleep, "600"]}
  resources: {cpu: 0.1, memory: 64MiB}
  timeout: 20m
"""


def test_service_slot_moves_after_its_holder_is_killed(tmp_path: Path) -> None:
    spec = _write(tmp_path / "service.yaml", SERVICE_SPEC)
    with cluster(tmp_path) as c:
        # The owner does not compute, so killing a holder never kills the owner.
        owner, *compute = _start(c, ["a", "b", "c", "d"], owner_executors="", lease_ttl=2)
        service = _submit(owner, spec)
        view = c.wait_job(
            owner, service, lambda v: v.get("live") == 2, timeout=30, what="2 live slots"
        )
        holders = {s["node"] for s in _live_slots(view)}
        victim = next(n for n in compute if n.node_id in holders)
        victim.kill()
        survivors = {n.node_id for n in compute if n is not victim}

        def replaced(v: dict[str, Any]) -> bool:
            live = _live_slots(v)
            return (
                v.get("live") == 2 and len(live) == 2 and all(s["node"] in survivors for s in live)
            )

        # ttl + grace (2.5 s) for the owner to give up on the victim, then an auction.
        view = c.wait_job(owner, service, replaced, timeout=30, what="2 live slots on survivors")
        assert view["state"] == "running" and view["desired"] == 2, view
        moved = [s for s in view["slots"] if s["epoch"] > 1]
        assert len(moved) == 1, view
        [lost] = [e for e in moved[0]["executions"] if e["node"] == victim.node_id]
        assert lost["state"] == "expired", view
