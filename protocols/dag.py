"""DAG jobs: the owner runs the graph.

Each task becomes one "run" job (``<job>~<task>``), or one per item for a
``map`` task (``<job>~<task>~<i>``), auctioned and leased like any batch job
with the task's own retry policy.  Rules:

* **Ready** when every ``depends_on`` task has ended.  ``when: succeeded``
  (default) runs if all of them succeeded, ``failed`` if at least one failed
  (or was cancelled), ``always`` in any case; otherwise the task is *skipped*.
* **Inputs**: every output manifest of a parent is an input of the child,
  named ``<parent>`` (``<parent>/<i>`` for a map parent's instances), fetched by
  content id from the node that holds it and laid out under
  ``$P2PNODE_INPUTS/<name>/``.
* **Fan-out**: a ``map: {over: P, as: item}`` task asks its runtime to read
  P's output files (``ReadItems``) and runs once per non-empty line, with the
  line in ``$ITEM`` (the ``as`` name upper-cased) and ``$P2PNODE_MAP_INDEX``.
  **Fan-in**: a child of a map task gets every instance's outputs.
* **Failure**: a task fails when one of its runs fails (its retries spent); the
  tasks still running are then cancelled and the waiting ones can run only if
  they say ``when: failed`` or ``always``.  The job fails if any task failed or
  was cancelled, and completes otherwise.
* **Cache** (``cache: true``): a task whose key — the hash of its canonical
  spec, its item and its input manifest ids — matches an earlier success of
  this owner reuses that success's outputs instead of running.
* **Restart**: task states and the cache are persisted; child runs are owned
  jobs like any other and resume with the owner; a pending ``ReadItems`` is
  asked again.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import attrs

from protocols.errors import LocalProtocolError
from protocols.kinds import KindController, OwnerContext, Records
from protocols.owned import OwnedJob
from protocols.spec.task import TASK_KEYS
from protocols.states import DagTaskState, check_task_transition

if TYPE_CHECKING:
    from protocols.events import ItemsRead

DAGS_TABLE = "dags"
CACHE_TABLE = "dag_cache"
MAX_MAP_ITEMS = 10_000
MAX_CACHE_ENTRIES = 10_000
ENDED = ("succeeded", "failed", "skipped", "cancelled", "cached")
GOOD = ("succeeded", "cached")
BAD = ("failed", "cancelled")


@attrs.define
class TaskState:
    name: str
    state: DagTaskState = attrs.field(default=DagTaskState.WAITING, converter=DagTaskState)
    runs: list[str] = attrs.field(factory=list)  # child run ids, in instance order
    outputs: list[list[str]] = attrs.field(factory=list)  # [input name, manifest id, node]
    reason: str = ""
    cache_keys: list[str] = attrs.field(factory=list)  # per run, "" when not cached

    def record(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "state": self.state.value}

    def move(self, new: str, reason: str | None = None) -> None:
        """The one way a task changes state (checked against the table)."""
        self.state = check_task_transition(self.state, new)
        if reason is not None:
            self.reason = reason


def run_task(dag_task: dict[str, Any]) -> dict[str, Any]:
    """The plain task of a DAG node (without its edges), as a run executes it."""
    return {key: dag_task[key] for key in TASK_KEYS if key in dag_task}


def order(tasks: dict[str, Any]) -> list[str]:
    """Topological order, ties by name (the spec validator refused cycles)."""
    done: list[str] = []
    placed: set[str] = set()
    while len(done) < len(tasks):
        ready = sorted(
            name
            for name, task in tasks.items()
            if name not in placed and all(d in placed for d in task.get("depends_on", []))
        )
        if not ready:
            raise LocalProtocolError("the DAG has a cycle")
        done += ready
        placed.update(ready)
    return done


class DagController(KindController):
    describe_key = "tasks"

    def __init__(self, ctx: OwnerContext) -> None:
        super().__init__(ctx)
        self.states: dict[str, dict[str, TaskState]] = {}
        self.cache: dict[str, list[list[str]]] = {}
        # Re-entrancy: ending a run can cancel others, whose ends call back in.
        self._advancing: set[str] = set()
        self._again: set[str] = set()
        self._stopping: set[str] = set()

    def start(self, job: OwnedJob) -> None:
        tasks = job.spec["tasks"]
        self.states[job.job_id] = {name: TaskState(name) for name in order(tasks)}
        for state in self.states[job.job_id].values():
            self._save(job.job_id, state)
        self.ctx.set_job_state(job, "running", persist=False, notify=True)
        self._advance(job)

    def restore(self, records: Records) -> None:
        cache = records.get(CACHE_TABLE, {})
        for key, rec in records.get(DAGS_TABLE, {}).items():
            job_id, _, name = key.rpartition("~")
            self.states.setdefault(job_id, {})[name] = TaskState(**rec)
        self.cache = {key: rec["outputs"] for key, rec in cache.items()}

    def resume_job(self, job: OwnedJob) -> None:
        self.ctx.set_job_state(job, "running", persist=False, notify=False)
        for state in self.states.get(job.job_id, {}).values():
            if state.state == "reading":
                self._read_items(job, state)
        self._advance(job)

    def _save(self, job_id: str, state: TaskState) -> None:
        self.out.persist(DAGS_TABLE, f"{job_id}~{state.name}", state.record())

    # --- scheduling --------------------------------------------------------------

    def _advance(self, job: OwnedJob) -> None:
        """Start what is ready, skip what cannot run, finish the job when all
        tasks ended.  Re-entrant calls (a cancelled run ending inside) only ask
        the running pass to go round once more."""
        if job.terminal or job.job_id in self._stopping:
            return
        if job.job_id in self._advancing:
            self._again.add(job.job_id)
            return
        self._advancing.add(job.job_id)
        try:
            while True:
                self._again.discard(job.job_id)
                self._advance_once(job)
                if job.job_id not in self._again or job.terminal:
                    break
        finally:
            self._advancing.discard(job.job_id)

    def _advance_once(self, job: OwnedJob) -> None:
        tasks, states = job.spec["tasks"], self.states[job.job_id]
        for name, state in states.items():
            if state.state != "waiting":
                continue
            deps = [states[d] for d in tasks[name].get("depends_on", [])]
            if any(d.state not in ENDED for d in deps):
                continue
            when = tasks[name].get("when", "succeeded")
            good = all(d.state in GOOD for d in deps)
            failed = [d.name for d in deps if d.state in BAD]
            if when == "succeeded" and not good:
                self._end_task(
                    job, state, "skipped", f"dependency {_first_not_good(deps)} did not succeed"
                )
            elif when == "failed" and not failed:
                self._end_task(job, state, "skipped", "no dependency failed")
            elif tasks[name].get("map"):
                self._read_items(job, state)
            else:
                self._start_runs(job, state, [None])
        if all(s.state in ENDED for s in states.values()):
            self._finish(job)

    def _read_items(self, job: OwnedJob, state: TaskState) -> None:
        over = job.spec["tasks"][state.name]["map"]["over"]
        refs = [(m, node) for _, m, node in self.states[job.job_id][over].outputs]
        state.move("reading")
        self._save(job.job_id, state)
        if not refs:  # the parent left no output: nothing to map over
            self._start_runs(job, state, [])
            return
        self.out.read_items(job.job_id, state.name, refs)

    def on_items(self, event: ItemsRead) -> None:
        job = self.ctx.jobs.get(event.job_id)
        state = self.states.get(event.job_id, {}).get(event.task)
        if job is None or state is None or state.state != "reading" or job.terminal:
            return  # a stale answer (job stopped, or asked twice around a restart)
        if event.error:
            self._end_task(
                job, state, "failed", f"could not read the items to map over: {event.error}"
            )
        elif len(event.items) > MAX_MAP_ITEMS:
            self._end_task(
                job,
                state,
                "failed",
                f"{len(event.items)} items to map over; the limit is {MAX_MAP_ITEMS}",
            )
        else:
            self._start_runs(job, state, list(event.items))
        self._advance(job)

    def _inputs(self, job: OwnedJob, name: str) -> list[tuple[str, str, str]]:
        states = self.states[job.job_id]
        inputs = []
        for dep in job.spec["tasks"][name].get("depends_on", []):
            inputs += [(n, m, node) for n, m, node in states[dep].outputs]
        return inputs

    def _start_runs(self, job: OwnedJob, state: TaskState, items: list[str | None]) -> None:
        dag_task = job.spec["tasks"][state.name]
        task = run_task(dag_task)
        inputs = self._inputs(job, state.name)
        spec = {
            "name": job.spec.get("name", "dag"),
            "type": "batch",
            "count": 1,
            "constraints": job.spec.get("constraints") or {"labels": {}},
            "queue_timeout": job.spec.get("queue_timeout"),
            "task": task,
        }
        state.move("running")
        state.runs, state.cache_keys, state.outputs = [], [], []
        mapped = bool(dag_task.get("map"))
        if not items:
            state.move("succeeded", "nothing to map over")
        for index, item in enumerate(items):
            run_id = f"{job.job_id}~{state.name}" + (f"~{index}" if mapped else "")
            env = {"P2PNODE_DAG_TASK": state.name}
            if mapped:
                env[dag_task["map"]["as"].upper()] = str(item)
                env["P2PNODE_MAP_INDEX"] = str(index)
            key = _cache_key(task, item, inputs) if job.spec.get("cache") else ""
            state.runs.append(run_id)
            state.cache_keys.append(key)
            if key and key in self.cache:
                continue  # reused below, once every run id is listed
            self.ctx.create_job(
                run_id,
                spec,
                kind="run",
                version=job.version,
                parent=job.job_id,
                inputs=inputs,
                env=env,
            )
        self._save(job.job_id, state)
        for run_id, key in zip(state.runs, state.cache_keys, strict=True):
            if key and key in self.cache and run_id not in self.ctx.jobs:
                state.outputs += [self._output_name(state, run_id, n) for n in self.cache[key]]
        self._check_task(job, state)

    def _output_name(self, state: TaskState, run_id: str, out: list[str]) -> list[str]:
        suffix = run_id.rsplit("~", 1)[1] if run_id.count("~") >= 2 else ""
        name = f"{state.name}/{suffix}" if suffix else state.name
        return [name, out[1], out[2]]

    def on_run_finished(self, run: OwnedJob) -> None:
        job = self.ctx.jobs.get(run.parent)
        name = run.env.get("P2PNODE_DAG_TASK", "")
        state = self.states.get(run.parent, {}).get(name)
        if job is None or state is None or run.job_id not in state.runs:
            return
        if run.state == "completed":
            outputs = []
            for slot in run.slots:
                done = [e for e in slot.executions if e.state == "succeeded" and e.manifest_id]
                if done:
                    outputs.append(["", done[-1].manifest_id, done[-1].node])
            state.outputs += [self._output_name(state, run.job_id, o) for o in outputs]
            key = state.cache_keys[state.runs.index(run.job_id)]
            if key:
                self._remember(key, outputs)
        self._check_task(job, state)
        self._advance(job)

    def _check_task(self, job: OwnedJob, state: TaskState) -> None:
        if state.state != "running":
            self._save(job.job_id, state)
            return
        runs = [self.ctx.jobs.get(r) for r in state.runs]
        live = [r for r in runs if r is not None and not r.terminal]
        bad = [r for r in runs if r is not None and r.terminal and r.state != "completed"]
        if bad:
            self._end_task(
                job, state, "failed", f"{bad[0].job_id}: {bad[0].state}: {bad[0].reason}"
            )
            return
        if not live:
            # Cached: every run was a cache hit (none became a job).  A run that
            # really ran has just put its own result in the cache: not a hit.
            cached = bool(state.runs) and all(r not in self.ctx.jobs for r in state.runs)
            self._end_task(job, state, "cached" if cached else "succeeded", "")
            return
        self._save(job.job_id, state)

    def _end_task(self, job: OwnedJob, state: TaskState, outcome: str, reason: str) -> None:
        state.move(outcome, reason)
        self._save(job.job_id, state)
        self.out.notify(
            "dag_task", job_id=job.job_id, task=state.name, state=outcome, reason=reason
        )
        if outcome == "failed":
            self._cancel_running(job, f"task {state.name} failed")

    def _cancel_running(self, job: OwnedJob, reason: str) -> None:
        for other in self.states[job.job_id].values():
            if other.state in ("running", "reading"):
                other.move("cancelled", reason)
                self._save(job.job_id, other)
                for run_id in other.runs:
                    run = self.ctx.jobs.get(run_id)
                    if run is not None and not run.terminal:
                        self.ctx.cancel(run_id, reason)

    def _finish(self, job: OwnedJob) -> None:
        if job.terminal:
            return
        states = self.states[job.job_id].values()
        failed = [s for s in states if s.state in BAD]
        if failed:
            first = failed[0]
            self.ctx.set_terminal(
                job, "failed", f"task {first.name} {first.state}: {first.reason}"
            )
        else:
            self.ctx.set_terminal(job, "completed", "")

    def _remember(self, key: str, outputs: list[list[str]]) -> None:
        self.cache[key] = outputs
        self.out.persist(CACHE_TABLE, key, {"outputs": outputs})
        while len(self.cache) > MAX_CACHE_ENTRIES:
            old = next(iter(self.cache))
            del self.cache[old]
            self.out.persist(CACHE_TABLE, old, None)

    def on_stop(self, job: OwnedJob, reason: str) -> None:
        self._stopping.add(job.job_id)
        try:
            self._cancel_running(job, reason)
        finally:
            self._stopping.discard(job.job_id)

    def describe(self, job: OwnedJob) -> list[dict[str, Any]]:
        rows = []
        for state in self.states.get(job.job_id, {}).values():
            runs = []
            for run_id in state.runs:
                run = self.ctx.jobs.get(run_id)
                executions = [e.record() for s in run.slots for e in s.executions] if run else []
                runs.append(
                    {
                        "run_id": run_id,
                        "state": run.state if run else "cached",
                        "executions": executions,
                    }
                )
            rows.append(
                {
                    "task": state.name,
                    "state": state.state,
                    # The graph's edges, so a reader (the dashboard) can draw it.
                    "depends_on": list(job.spec["tasks"][state.name].get("depends_on", [])),
                    "reason": state.reason,
                    "runs": runs,
                    "outputs": [
                        {"name": n, "manifest_id": m, "node": node} for n, m, node in state.outputs
                    ],
                }
            )
        return rows


def _first_not_good(deps: list[TaskState]) -> str:
    return next(d.name for d in deps if d.state not in GOOD)


def _cache_key(task: dict[str, Any], item: str | None, inputs: list[tuple[str, str, str]]) -> str:
    """Hash of what determines a task's result: its spec, its item, its inputs'
    content ids (not where they live)."""
    material = json.dumps(
        {"task": task, "item": item, "inputs": sorted((n, m) for n, m, _ in inputs)},
        sort_keys=True,
        separators=(",", ":"),
    )
    return "sha256:" + hashlib.sha256(material.encode()).hexdigest()
