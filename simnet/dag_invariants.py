"""Invariant checkers for DAG jobs (the owner runs the graph).

Fed like the other checkers: notifications (``job_submitted`` / ``job_state``
of the DAG and of its runs ``J~<task>`` and ``J~<task>~<i>``, ``dag_task``),
the engine's ``ReadItems`` answers (:meth:`simnet.engine.Observer.on_items`:
how many items a map task fans out over) and the executor's ground truth.

A task ``T`` *started* when its first run was created, its items were asked
(a map), or it was reported ``cached``.  A task ``D`` *has ended* once the
owner reported it (``dag_task``), or it started and none of its runs is
unfinished and all of them exist (1, or one per item of a map), or it
started before another task of the job failed and none of its runs is
unfinished (the owner cancelled it).

* **DG1 order**: a run of ``T`` is created only when every dependency of
  ``T`` has ended; every execution belongs to a created run; a map task
  creates exactly one run per item (``J~T~0 .. J~T~<N-1>``); a run fed by a
  succeeded dependency gets every output of it as inputs (fan-in: one per
  instance of a map), each the output of a succeeded execution.
* **DG2 when-semantics** (checked when the DAG ends): with ``good`` =
  succeeded or cached and ``bad`` = failed or cancelled, ``T`` runs iff
  ``when: succeeded`` and all its dependencies are good, ``when: failed`` and
  one is bad, or ``when: always``; otherwise it is ``skipped`` without a run.
  A task's reported state matches its runs (``succeeded``: all its runs
  completed; ``failed``: a run failed or its items could not be read;
  ``skipped``/``cached``: no run).  Every task was decided; the job is
  ``failed`` iff a task failed or was cancelled, ``completed`` otherwise.
* **DG3 once**: every run is created once and ends once; every task is
  reported ended at most once (one accepted result per run slot is checked
  by :mod:`simnet.invariants`).
* **DG4** the job ends ``completed`` or ``failed`` with a reason once the
  faults stop (the batch checker's end checks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocols.events import ReadItems, StartExecution
from simnet.checker import Checker, Violate, handles
from simnet.invariants import TERMINAL
from simnet.sources import sim_manifest

ENDED = ("succeeded", "failed", "skipped", "cancelled", "cached")
GOOD = ("succeeded", "cached")
BAD = ("failed", "cancelled")


class Task:
    __slots__ = ("deps", "ended", "items", "items_error", "map_over", "name", "notified",
                 "reading", "runs", "started_seq", "when")

    def __init__(self, name: str, spec: Mapping[str, Any]) -> None:
        self.name = name
        self.deps: list[str] = list(spec.get("depends_on") or [])
        self.when = str(spec.get("when") or "succeeded")
        self.map_over = str((spec.get("map") or {}).get("over") or "")
        self.notified = ""  # state reported by dag_task
        self.ended = 0  # notify sequence number of the report
        self.items: int | None = None  # items answered to its ReadItems
        self.items_error = ""
        self.reading = False
        self.runs: dict[str, str] = {}  # run id -> state ("" while unfinished)
        self.started_seq = 0


class DagJob:
    __slots__ = ("failed_seq", "owner", "reason", "state", "tasks")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.tasks = {name: Task(name, t) for name, t in (spec.get("tasks") or {}).items()}
        self.owner = ""
        self.state = "queued"
        self.reason = ""
        self.failed_seq = 0  # when a task of the job was first reported failed


def split_run(run_id: str) -> tuple[str, str, int | None] | None:
    """``J~T`` / ``J~T~i`` -> (J, T, i); None for other ids."""
    parts = run_id.split("~")
    if len(parts) == 2:
        return parts[0], parts[1], None
    if len(parts) == 3 and parts[2].isdigit():
        return parts[0], parts[1], int(parts[2])
    return None


class DagInvariants(Checker):
    def __init__(self, violate: Violate) -> None:
        super().__init__(violate)
        self.jobs: dict[str, DagJob] = {}
        self.seq = 0  # notification counter: "before" within one virtual instant
        self.outputs: dict[str, str] = {}  # manifest -> run id of its succeeded execution
        self.exec_run: dict[tuple[str, str], str] = {}  # (node, eid) -> run
        self.runs_created = 0
        self.fan_out_max = 0

    def summary(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for job in self.jobs.values():
            for task in job.tasks.values():
                states[task.notified or "unreported"] = states.get(task.notified
                                                                   or "unreported", 0) + 1
        return {"dag_jobs": len(self.jobs), "dag_runs": self.runs_created,
                "fan_out_max": self.fan_out_max, "task_states": dict(sorted(states.items()))}

    def expect(self, job_id: str, spec: Mapping[str, Any]) -> None:
        if spec.get("type") == "dag":
            self.jobs[job_id] = DagJob(spec)

    # --- the rules ---------------------------------------------------------------------

    def _run_of(self, run_id: str) -> tuple[DagJob, Task, int | None] | None:
        parsed = split_run(run_id)
        if parsed is None:
            return None
        job = self.jobs.get(parsed[0])
        if job is None:
            return None
        task = job.tasks.get(parsed[1])
        return (job, task, parsed[2]) if task is not None else None

    def _started(self, task: Task) -> bool:
        return bool(task.runs) or task.reading or task.notified == "cached"

    def _expected_runs(self, task: Task) -> int | None:
        if not task.map_over:
            return 1
        return task.items

    def has_ended(self, job: DagJob, task: Task) -> bool:
        if task.notified in ENDED:
            return True
        if not self._started(task) or any(s == "" for s in task.runs.values()):
            return False
        expected = self._expected_runs(task)
        if expected is not None and len(task.runs) >= expected:
            return True
        return bool(job.failed_seq) and task.started_seq < job.failed_seq

    def outcome(self, job: DagJob, task: Task) -> str:
        """The task's final state as the evidence says (the job ended)."""
        if task.notified:
            return task.notified
        if not self._started(task):
            return "undecided"
        states = set(task.runs.values())
        expected = self._expected_runs(task)
        if states <= {"completed"} and expected is not None and len(task.runs) == expected:
            return "succeeded"  # e.g. a map with nothing to map over (not notified)
        return "cancelled"

    # --- notify stream -------------------------------------------------------------------------

    def noticed(self, now: float) -> None:
        self.seq += 1

    @handles("job_submitted")
    def _job_submitted(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        job = self.jobs.get(jid)
        if job is not None:
            job.owner = job.owner or node
            return
        found = self._run_of(jid)
        if found is None:
            return
        job, task, index = found
        if jid in task.runs:
            self.violate(now, f"dag {jid}: run created twice (DG3)")
            return
        self.runs_created += 1
        task.runs[jid] = ""
        if not task.started_seq:
            task.started_seq = self.seq
        if (index is None) != (not task.map_over):
            self.violate(now, f"dag run {jid}: the id does not fit task {task.name}")
        if index is not None and (task.items is None or not 0 <= index < task.items):
            self.violate(now, f"dag run {jid}: instance {index} of a map over "
                              f"{task.items} item(s) (DG1)")
        for dep in task.deps:
            if not self.has_ended(job, job.tasks[dep]):
                self.violate(now, f"dag run {jid} created before its dependency {dep} ended "
                                  f"(DG1)")
                return

    @handles("job_state")
    def _job_state(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        state = str(d.get("state"))
        job = self.jobs.get(jid)
        if job is not None:
            if job.state not in TERMINAL and state in TERMINAL:
                job.state, job.reason = state, str(d.get("reason") or "")
                self._ended(jid, job, now)
            return
        found = self._run_of(jid)
        if found is None or state not in TERMINAL:
            return
        _, task, _ = found
        if jid not in task.runs:
            self.violate(now, f"dag run {jid} ended {state} but was never created")
            return
        if task.runs[jid]:
            self.violate(now, f"dag run {jid} ended twice ({task.runs[jid]}, then {state}) "
                              f"(DG3)")
        task.runs[jid] = state

    @handles("dag_task")
    def _dag_task(self, node: str, d: dict[str, Any], now: float) -> None:
        job = self.jobs.get(str(d.get("job_id")))
        task = job.tasks.get(str(d.get("task"))) if job is not None else None
        if job is None or task is None:
            return
        state = str(d.get("state"))
        if task.notified:
            self.violate(now, f"dag {d.get('job_id')}: task {task.name} reported {state} after "
                              f"{task.notified} (DG3)")
            return
        task.notified, task.ended = state, self.seq
        if state == "failed" and not job.failed_seq:
            job.failed_seq = self.seq
        if state == "cached" and not task.started_seq:
            task.started_seq = self.seq

    def on_items(self, node: str, action: ReadItems, items: int, error: str,
                 now: float) -> None:
        job = self.jobs.get(action.job_id)
        task = job.tasks.get(action.task) if job is not None else None
        if job is None or task is None:
            return
        if not task.map_over:
            self.violate(now, f"dag {action.job_id}: items read for {task.name}, not a map")
        if not task.reading:
            task.reading = True
            self.seq += 1
            task.started_seq = task.started_seq or self.seq
            for dep in task.deps:
                if not self.has_ended(job, job.tasks[dep]):
                    self.violate(now, f"dag {action.job_id}: map {task.name} reads its items "
                                      f"before its dependency {dep} ended (DG1)")
        task.items, task.items_error = (None, error) if error else (items, "")
        self.fan_out_max = max(self.fan_out_max, items)

    # --- executor ground truth ------------------------------------------------------------------

    def on_exec_start(self, node: str, action: StartExecution, now: float) -> None:
        found = self._run_of(action.job_id)
        if found is None:
            return
        job, task, _ = found
        if action.job_id not in task.runs:
            self.violate(now, f"{node} runs {action.execution_id} of a dag run never created")
            return
        self.exec_run[(node, action.execution_id)] = action.job_id
        names = {name: manifest for name, manifest, _ in action.inputs}
        for dep_name in task.deps:
            dep = job.tasks[dep_name]
            if dep.notified != "succeeded" or not dep.runs:
                continue  # cached (outputs from another job) or not good: nothing to count
            want = sorted(dep.runs)
            for run in want:
                suffix = run.rsplit("~", 1)[1] if dep.map_over else ""
                name = f"{dep_name}/{suffix}" if suffix else dep_name
                manifest = names.get(name)
                if manifest is None or self.outputs.get(manifest) != run:
                    self.violate(now, f"dag {action.job_id}: {action.execution_id} lacks input "
                                      f"{name} (the output of {run}) (DG1 fan-in)")
                    return

    def on_exec_end(self, node: str, execution_id: str, status: str, now: float) -> None:
        run = self.exec_run.pop((node, execution_id), None)
        if run is not None and status == "succeeded":
            self.outputs[sim_manifest(execution_id)] = run

    def on_crash(self, node: str, now: float) -> None:
        for key in [k for k in self.exec_run if k[0] == node]:
            del self.exec_run[key]

    # --- the end ----------------------------------------------------------------------------------

    def _ended(self, jid: str, job: DagJob, now: float) -> None:
        """DG2 when the DAG job reached its terminal state."""
        if job.state == "stopped":
            return  # stopped by the user: the rest was cancelled wherever it stood
        outcomes = {name: self.outcome(job, t) for name, t in job.tasks.items()}
        for name, task in job.tasks.items():
            out = outcomes[name]
            if out == "undecided":
                self.violate(now, f"dag {jid} ended {job.state} but task {name} was never "
                                  f"decided (DG2)")
                return
            deps = [outcomes[d] for d in task.deps]
            if task.when == "succeeded":
                should = all(o in GOOD for o in deps)
            elif task.when == "failed":
                should = any(o in BAD for o in deps)
            else:
                should = True
            ran = self._started(task)
            if should != ran:
                self.violate(now, f"dag {jid}: task {name} (when: {task.when}, dependencies "
                                  f"{dict(zip(task.deps, deps, strict=True))}) "
                                  f"{'ran' if ran else 'did not run'} ({out}) (DG2)")
                return
            states = set(task.runs.values())
            bad = ""
            if out == "succeeded" and not states <= {"completed"}:
                bad = f"runs ended {sorted(states)}"
            elif out == "succeeded" and task.map_over and len(task.runs) != task.items:
                bad = f"{len(task.runs)} runs for {task.items} items"
            elif out == "failed" and "failed" not in states and not task.items_error:
                bad = "no run failed and its items were read"
            elif out in ("skipped", "cached") and task.runs:
                bad = f"{len(task.runs)} run(s) exist"
            if bad:
                self.violate(now, f"dag {jid}: task {name} is {out} but {bad} (DG2)")
                return
        failed = [n for n, o in outcomes.items() if o in BAD]
        want = "failed" if failed else "completed"
        if job.state != want:
            self.violate(now, f"dag {jid} ended {job.state}, want {want} (task outcomes "
                              f"{outcomes}) (DG2)")
