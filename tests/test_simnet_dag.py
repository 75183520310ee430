"""DAG jobs in the simulator: fan-out over the lines of a parent's output
(``ReadItems`` answered by the engine from the sim task's ``SIM_OUTPUT_LINES``),
fan-in, ``when: failed | always``, under loss, partitions and crashes.

Every cluster runs all checkers (simnet.dag_invariants: DG1 a run is created
only once its dependencies ended, exactly one run per item, fan-in of every
output; DG2 when-semantics and task states; DG3 each run created and ended
once; DG4 the job ends with a reason).  A core bug found here (cache: true
reported tasks that ran as "cached") is fixed; a test re-creates it to show
the checker catches it, and the last section shows each checker failing.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest

from protocols.dag import DagController
from protocols.events import ReadItems, StartExecution
from simnet.dag_invariants import DagInvariants
from simnet.harness import Cluster
from simnet.runner import RunOptions, run_scenario
from simnet.sources import sim_manifest
from simnet.workload import dag_spec, dag_task, sim_task, with_env
from tests.simnetcli import run_simnet

pytest.importorskip("protocols.node")

OWNER = "n0000"


def owner_only(i: int, fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, "compute": fields["node_id"] != OWNER}


def task(ms: int = 1000, **kw: Any) -> dict[str, Any]:
    return sim_task(ms, timeout_ms=30_000, **kw)


def fan(lines: int = 20, *, reduce_exit: int = 0, cache: bool = False) -> dict[str, Any]:
    return dag_spec("d", {
        "fetch": dag_task(task()),
        "split": dag_task(with_env(task(), SIM_OUTPUT_LINES=lines), ["fetch"]),
        "work": dag_task(task(2000), ["split"], map_over="split"),
        "reduce": dag_task(task(exit_code=reduce_exit), ["work"]),
        "notify": dag_task(task(500), ["reduce"], when="failed"),
        "publish": dag_task(task(500), ["reduce"]),
        "cleanup": dag_task(task(500), ["reduce"], when="always"),
    }, cache=cache)


def states(c: Cluster, job: str) -> dict[str, str]:
    return {t["task"]: t["state"] for t in c.core(OWNER).describe(job)["tasks"]}


def finish(c: Cluster, limit: float = 300.0) -> None:
    assert c.run_until_done(limit), c.violations[:3]
    assert c.violations == [], c.violations[:3]
    assert c.inv.finish(c.owned(), c.now, c.submitted) == []


def test_fan_out_of_20_and_fan_in_over_20_nodes() -> None:
    c = Cluster(20, seed=1, configure=owner_only, record=True)
    c.start()
    job = c.submit(fan(20), owner=OWNER, at=2.0)
    finish(c)
    assert c.state_of(job) == "completed"
    assert states(c, job) == {"fetch": "succeeded", "split": "succeeded", "work": "succeeded",
                              "reduce": "succeeded", "notify": "skipped",
                              "publish": "succeeded", "cleanup": "succeeded"}
    work = c.dag.jobs[job].tasks["work"]
    assert work.items == 20 and sorted(work.runs) == sorted(f"{job}~work~{i}" for i in range(20))
    holders = {n.data["holder"] for n in c.notes_of("lease_granted")
               if "~work~" in n.data["job_id"]}
    assert len(holders) >= 10  # spread over the nodes
    assert c.dag.fan_out_max == 20


def test_a_failed_reduce_runs_the_failure_handler_and_fails_the_job() -> None:
    c = Cluster(8, seed=2, configure=owner_only)
    c.start()
    job = c.submit(fan(5, reduce_exit=3), owner=OWNER, at=2.0)
    finish(c)
    assert c.state_of(job) == "failed" and "task reduce failed" in c.reason_of(job)
    assert states(c, job) == {"fetch": "succeeded", "split": "succeeded", "work": "succeeded",
                              "reduce": "failed", "notify": "succeeded", "publish": "skipped",
                              "cleanup": "succeeded"}


def test_owner_crash_while_the_map_runs_resumes_the_dag() -> None:
    c = Cluster(12, seed=3, configure=owner_only)
    c.start()
    job = c.submit(fan(12), owner=OWNER, at=2.0)
    c.run_until(60.0, stop=lambda: bool(c.dag.jobs[job].tasks["work"].runs))
    c.run_until(c.now + 1.0)
    c.crash(OWNER)
    c.run_until(c.now + 20.0)
    c.restart(OWNER)
    finish(c)
    assert c.state_of(job) == "completed"
    assert len(c.dag.jobs[job].tasks["work"].runs) == 12  # none created twice (DG3)


def test_owner_crash_while_reading_items_asks_again() -> None:
    c = Cluster(8, seed=4, configure=owner_only)
    c.start()
    job = c.submit(fan(6), owner=OWNER, at=2.0)
    c.run_until(60.0, stop=lambda: c.dag.jobs[job].tasks["work"].reading)
    c.crash(OWNER)  # the ItemsRead answer (50 ms later) finds the owner down
    c.run_until(c.now + 5.0)
    c.restart(OWNER)
    finish(c)
    assert c.state_of(job) == "completed" and c.dag.jobs[job].tasks["work"].items == 6


def test_unreachable_output_fails_the_map_with_a_reason() -> None:
    c = Cluster(8, seed=5, configure=owner_only)
    c.start()
    job = c.submit(fan(6), owner=OWNER, at=2.0)
    c.run_until(60.0, stop=lambda: c.dag.jobs[job].tasks["split"].runs.get(f"{job}~split")
                == "completed")  # the owner asks for the items now; the answer comes later
    (split_exec,) = [e for t in c.core(OWNER).describe(job)["tasks"] if t["task"] == "split"
                     for r in t["runs"] for e in r["executions"] if e["state"] == "succeeded"]
    c.crash(split_exec["node"])  # the only copy of split's output is gone
    finish(c)
    assert c.state_of(job) == "failed"
    assert "could not read the items to map over" in c.reason_of(job)
    got = states(c, job)
    assert (got["work"], got["reduce"], got["notify"], got["cleanup"]) == (
        "failed", "skipped", "skipped", "succeeded")  # notify waits on reduce, which was skipped


# --- cache: a task that ran is "succeeded", one reused from the cache "cached" ---------------
#
# This file found the bug (fixed in protocols/dag.py since): with cache: true,
# _check_task called a task whose runs had just put their own results in the
# cache "cached" instead of "succeeded".


def cached_twice() -> tuple[Cluster, str, str]:
    c = Cluster(6, seed=6, configure=owner_only)
    c.start()
    spec = dag_spec("d", {"fetch": dag_task(task()), "use": dag_task(task(), ["fetch"])},
                    cache=True)
    first = c.submit(spec, owner=OWNER, at=2.0)
    c.run_until_done(100.0)
    second = c.submit(spec, owner=OWNER, at=c.now + 1.0)
    c.run_until_done(c.now + 100.0)
    return c, first, second


def test_cache_reports_tasks_that_ran_as_succeeded_and_reuses_them() -> None:
    c, first, second = cached_twice()
    assert c.violations == [] and c.state_of(second) == "completed"
    assert states(c, first) == {"fetch": "succeeded", "use": "succeeded"}
    assert states(c, second) == {"fetch": "cached", "use": "cached"}
    assert c.dag.jobs[second].tasks["use"].runs == {}


def test_the_old_cache_bug_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    def old_check_task(self: DagController, job: Any, state: Any) -> None:
        if state.state != "running":
            self._save(job.job_id, state)
            return
        runs = [self.ctx.jobs.get(r) for r in state.runs]
        if not [r for r in runs if r is not None and not r.terminal]:
            cached = all(k and k in self.cache for k in state.cache_keys) and state.cache_keys
            self._end_task(job, state, "cached" if cached else "succeeded", "")
            return
        self._save(job.job_id, state)
    monkeypatch.setattr(DagController, "_check_task", old_check_task)
    c, _, _ = cached_twice()
    assert "task fetch is cached but 1 run(s) exist (DG2)" in c.violations[0]


# --- sweeps and determinism ----------------------------------------------------------------

SWEEP = dict(nodes=20, jobs=6, duration=600.0, crash_rate=0.1, partition_rate=0.5, loss=0.1,
             duplicate=0.05, reorder=0.1, workload="dag")


def _one(seed: int) -> dict[str, Any]:
    report = run_scenario(RunOptions(seed=seed, **SWEEP))  # type: ignore[arg-type]
    return {"seed": seed, "violations": report["invariant_violations"][:2],
            "lost": report["lost"], "dag": report["dag"], "completed": report["completed"],
            "failed": report["failed"], "crashes": report["crashes"]}


def test_dag_sweep_under_faults() -> None:
    with multiprocessing.get_context("fork").Pool(2) as pool:
        results = pool.map(_one, range(60), chunksize=2)
    bad = [r for r in results if r["violations"] or r["lost"]]
    assert bad == [], bad[:2]
    assert sum(r["completed"] + r["failed"] for r in results) == 360
    assert sum(r["failed"] for r in results) >= 30  # failing reduces, unreadable items
    assert sum(r["crashes"] for r in results) > 100
    assert sum(r["dag"]["dag_runs"] for r in results) > 5000


def test_dag_same_seed_same_trace() -> None:
    args = ["run", "--seed", "3", "--nodes", "20", "--jobs", "6", "--workload", "dag",
            "--loss", "0.1", "--crash-rate", "0.1", "--partition-rate", "0.5",
            "--duration", "10m", "--output", "json"]
    runs = [run_simnet(*args, hashseed=h, timeout=120) for h in ("1", "2")]
    a, b = runs
    assert a["trace_hash"] == b["trace_hash"] and a["dag"] == b["dag"]
    assert a["invariant_violations"] == b["invariant_violations"]


# --- the checkers can fail: hand-made histories -------------------------------------------


class Fake:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.violations: list[str] = []
        self.inv = DagInvariants(lambda t, text: self.violations.append(f"t={t:.3f}s: {text}"))
        self.inv.expect("g", spec)
        self.note("job_submitted", 1.0, job_id="g", job_type="dag")

    def note(self, kind: str, t: float, **data: Any) -> None:
        self.inv.on_notify("o", kind, data, t)

    def run(self, run_id: str, t: float, state: str = "completed") -> None:
        self.note("job_submitted", t, job_id=run_id, job_type="run")
        self.inv.on_exec_start("a", StartExecution(f"{run_id}/0/1", run_id, 0, {}, {}, 30.0), t)
        self.inv.on_exec_end("a", f"{run_id}/0/1", "succeeded" if state == "completed"
                             else "failed", t + 1)
        self.note("job_state", t + 1, job_id=run_id, state=state, reason="")

    def task(self, name: str, state: str, t: float) -> None:
        self.note("dag_task", t, job_id="g", task=name, state=state, reason="")

    def has(self, text: str) -> bool:
        return any(text in v for v in self.violations)


def two(when: str = "succeeded") -> dict[str, Any]:
    return dag_spec("d", {"a": dag_task(task()), "b": dag_task(task(), ["a"], when=when)})


def test_dg1_run_before_its_dependency_ended_fires() -> None:
    f = Fake(two())
    f.note("job_submitted", 2.0, job_id="g~a", job_type="run")
    f.note("job_submitted", 2.5, job_id="g~b", job_type="run")
    assert f.has("dag run g~b created before its dependency a ended (DG1)")


def test_dg1_map_instances_and_fan_in_fire() -> None:
    f = Fake(fan(3))
    f.run("g~fetch", 2.0)
    f.task("fetch", "succeeded", 3.0)
    f.run("g~split", 3.0)
    f.task("split", "succeeded", 4.0)
    f.inv.on_items("o", ReadItems("g", "work", (("m", "a"),)), 3, "", 4.0)
    for i in range(4):  # one instance too many
        f.run(f"g~work~{i}", 5.0)
    assert f.has("instance 3 of a map over 3 item(s) (DG1)")
    f.task("work", "succeeded", 7.0)
    f.note("job_submitted", 7.0, job_id="g~reduce", job_type="run")
    inputs = tuple((f"work/{i}", sim_manifest(f"g~work~{i}/0/1"), "a") for i in range(2))
    f.inv.on_exec_start("a", StartExecution("g~reduce/0/1", "g~reduce", 0, {}, {}, 30.0,
                                            inputs=inputs), 7.5)
    assert f.has("lacks input work/2 (the output of g~work~2) (DG1 fan-in)")


def test_dg2_when_semantics_and_states_fire() -> None:
    f = Fake(two("failed"))
    f.run("g~a", 2.0)
    f.task("a", "succeeded", 3.0)
    f.run("g~b", 3.0)  # runs although nothing failed
    f.task("b", "succeeded", 4.0)
    f.note("job_state", 4.0, job_id="g", state="completed", reason="")
    assert f.has("task b (when: failed, dependencies {'a': 'succeeded'}) ran (succeeded) (DG2)")
    g = Fake(two())
    g.run("g~a", 2.0, state="failed")
    g.task("a", "succeeded", 3.0)  # reported succeeded, its run failed
    g.task("b", "skipped", 3.0)
    g.note("job_state", 3.0, job_id="g", state="completed", reason="")
    assert g.has("task a is succeeded but runs ended ['failed'] (DG2)")
    k = Fake(two())
    k.run("g~a", 2.0)
    k.task("a", "succeeded", 3.0)
    k.task("b", "skipped", 3.0)
    k.note("job_state", 3.0, job_id="g", state="completed", reason="")
    assert k.has("(when: succeeded, dependencies {'a': 'succeeded'}) did not run (skipped)")
    h = Fake(two())
    h.run("g~a", 2.0, state="failed")
    h.task("a", "failed", 3.0)
    h.task("b", "skipped", 3.0)
    h.note("job_state", 3.0, job_id="g", state="completed", reason="")
    assert h.has("dag g ended completed, want failed")


def test_dg3_run_created_twice_and_task_reported_twice_fire() -> None:
    f = Fake(two())
    f.run("g~a", 2.0)
    f.note("job_submitted", 4.0, job_id="g~a", job_type="run")
    assert f.has("dag g~a: run created twice (DG3)")
    f.task("a", "succeeded", 5.0)
    f.task("a", "failed", 6.0)
    assert f.has("task a reported failed after succeeded (DG3)")


# --- the checkers can fail: broken cores --------------------------------------------------


def test_core_ignoring_dependencies_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = DagController._advance_once

    def eager(self: DagController, job: Any) -> None:
        saved = {n: t.get("depends_on") for n, t in job.spec["tasks"].items()}
        try:
            for t in job.spec["tasks"].values():
                t["depends_on"] = []
            original(self, job)
        finally:
            for n, deps in saved.items():
                job.spec["tasks"][n]["depends_on"] = deps
    monkeypatch.setattr(DagController, "_advance_once", eager)
    c = Cluster(6, seed=7, configure=owner_only)
    c.start()
    c.submit(fan(4), owner=OWNER, at=2.0)
    c.run_until(60.0)
    assert any("before its dependency" in v for v in c.violations), c.violations


def test_core_dropping_a_fan_in_input_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = DagController._inputs
    monkeypatch.setattr(DagController, "_inputs",
                        lambda self, job, name: original(self, job, name)[:-1])
    c = Cluster(6, seed=8, configure=owner_only)
    c.start()
    c.submit(fan(4), owner=OWNER, at=2.0)
    c.run_until(120.0)
    assert any("(DG1 fan-in)" in v for v in c.violations), c.violations


def test_core_losing_an_item_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = DagController.on_items
    monkeypatch.setattr(DagController, "on_items", lambda self, event: original(
        self, type(event)(event.job_id, event.task, event.items[:-1], event.error)))
    c = Cluster(6, seed=9, configure=owner_only)
    c.start()
    c.submit(fan(4), owner=OWNER, at=2.0)
    c.run_until(120.0)
    assert any("3 runs for 4 items (DG2)" in v for v in c.violations), c.violations
