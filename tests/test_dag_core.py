"""DAG jobs on the hand-cranked network: ordering, inputs, fan-out and fan-in,
``when``, cancellation on failure, caching, owner restart."""

from __future__ import annotations

from typing import Any

from protocols.config import Timings
from protocols.events import ExecutionFinished, ItemsRead, ReadItems, SubmitJob
from tests.protonet import ProtoNet, sim_task

FAST = Timings(lease_ttl=3.0, lease_grace=1.0, bid_window=0.2)


def dag_spec(tasks: dict[str, dict[str, Any]], cache: bool = False) -> dict[str, Any]:
    full = {}
    for name, extra in tasks.items():
        task = sim_task(retry={"attempts": 1, "backoff": 1000})
        full[name] = {
            **task,
            "depends_on": sorted(extra.get("depends_on", [])),
            "map": extra.get("map"),
            "when": extra.get("when", "succeeded"),
        }
    return {
        "name": "d",
        "type": "dag",
        "constraints": {"labels": {}},
        "queue_timeout": None,
        "tasks": full,
        "cache": cache,
    }


def running(net: ProtoNet, job: str) -> dict[str, tuple[str, Any]]:
    """run job id -> (node, StartExecution) for runs of ``job`` executing now."""
    out = {}
    for node, execs in net.running.items():
        for start in execs.values():
            if start.job_id.startswith(job + "~"):
                out[start.job_id] = (node, start)
    return out


def finish(net: ProtoNet, run_id: str, status: str = "succeeded", manifest: str = "") -> None:
    node, start = running(net, run_id.split("~")[0])[run_id]
    net.running[node].pop(start.execution_id)
    manifest = manifest or "sha256:" + format(abs(hash(run_id)), "x").rjust(64, "0")[:64]
    net.feed(node, ExecutionFinished(start.execution_id, status, manifest_id=manifest))


def answer_reads(net: ProtoNet, items: dict[str, list[str]]) -> list[ReadItems]:
    """Answer every ReadItems the owner asked (task -> the lines)."""
    asked = [a for _, acts in net.actions for a in acts if isinstance(a, ReadItems)]
    for read in asked:
        if read.task in items:
            net.feed("a", ItemsRead(read.job_id, read.task, tuple(items.pop(read.task))))
    return asked


def state(net: ProtoNet, job: str) -> dict[str, str]:
    return {t["task"]: t["state"] for t in net.core("a").describe(job)["tasks"]}


def test_tasks_run_in_dependency_order_with_their_parents_outputs() -> None:
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    spec = dag_spec(
        {"fetch": {}, "clean": {"depends_on": ["fetch"]}, "load": {"depends_on": ["clean"]}}
    )
    net.feed("a", SubmitJob("g1", spec))
    net.run_until(lambda: "g1~fetch" in running(net, "g1"), limit=10)
    assert list(running(net, "g1")) == ["g1~fetch"]
    finish(net, "g1~fetch", manifest="sha256:" + "f" * 64)
    net.run_until(lambda: "g1~clean" in running(net, "g1"), limit=net.now + 10)
    _node, start = running(net, "g1")["g1~clean"]
    fetch_node = next(
        e["node"]
        for t in net.core("a").describe("g1")["tasks"]
        if t["task"] == "fetch"
        for r in t["runs"]
        for e in r["executions"]
    )
    assert start.inputs == (("fetch", "sha256:" + "f" * 64, fetch_node),)
    finish(net, "g1~clean")
    net.run_until(lambda: "g1~load" in running(net, "g1"), limit=net.now + 10)
    finish(net, "g1~load")
    net.run_until(lambda: net.job_state("a", "g1") == "completed", limit=net.now + 10)
    assert state(net, "g1") == {"fetch": "succeeded", "clean": "succeeded", "load": "succeeded"}


def test_fan_out_over_lines_and_fan_in_of_every_output() -> None:
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    spec = dag_spec(
        {
            "split": {},
            "work": {"depends_on": ["split"], "map": {"over": "split", "as": "item"}},
            "reduce": {"depends_on": ["work"]},
        }
    )
    net.feed("a", SubmitJob("g2", spec))
    net.run_until(lambda: "g2~split" in running(net, "g2"), limit=10)
    finish(net, "g2~split")
    net.run_until(
        lambda: any(isinstance(a, ReadItems) for _, acts in net.actions for a in acts),
        limit=net.now + 5,
    )
    asked = answer_reads(net, {"work": [f"line {i}" for i in range(20)]})
    assert asked[0].refs[0][0].startswith("sha256:")
    for _ in range(20_000):
        for run_id, (_node, start) in running(net, "g2").items():
            if "~work~" in run_id:
                assert start.env["ITEM"] == f"line {start.env['P2PNODE_MAP_INDEX']}"
                finish(net, run_id)
        if "g2~reduce" in running(net, "g2"):
            break
        net.step()
    _node, reduce_start = running(net, "g2")["g2~reduce"]
    names = sorted(name for name, _, _ in reduce_start.inputs)
    assert names == sorted(f"work/{i}" for i in range(20))
    finish(net, "g2~reduce")
    net.run_until(lambda: net.job_state("a", "g2") == "completed", limit=net.now + 10)


def test_when_failed_runs_only_after_a_failure_and_the_job_fails() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    spec = dag_spec(
        {
            "reduce": {},
            "notify": {"depends_on": ["reduce"], "when": "failed"},
            "publish": {"depends_on": ["reduce"]},
            "always": {"depends_on": ["reduce"], "when": "always"},
        }
    )
    net.feed("a", SubmitJob("g3", spec))
    net.run_until(lambda: "g3~reduce" in running(net, "g3"), limit=10)
    finish(net, "g3~reduce", status="failed")
    net.run_until(lambda: {"g3~notify", "g3~always"} <= set(running(net, "g3")), limit=net.now + 10)
    finish(net, "g3~notify")
    finish(net, "g3~always")
    net.run_until(lambda: net.job_state("a", "g3") == "failed", limit=net.now + 10)
    assert state(net, "g3") == {
        "reduce": "failed",
        "notify": "succeeded",
        "publish": "skipped",
        "always": "succeeded",
    }
    assert "task reduce failed" in net.core("a").owner.jobs["g3"].reason


def test_a_failure_cancels_the_running_rest() -> None:
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    spec = dag_spec({"left": {}, "right": {}, "join": {"depends_on": ["left", "right"]}})
    net.feed("a", SubmitJob("g4", spec))
    net.run_until(lambda: len(running(net, "g4")) == 2, limit=10)
    finish(net, "g4~left", status="failed")
    net.run_until(lambda: net.job_state("a", "g4") == "failed", limit=net.now + 10)
    net.run_for(1.0)
    assert running(net, "g4") == {}  # right was cancelled on its holder
    assert state(net, "g4") == {"left": "failed", "right": "cancelled", "join": "skipped"}


def test_cache_reuses_an_earlier_result_with_the_same_inputs() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    spec = dag_spec({"fetch": {}, "use": {"depends_on": ["fetch"]}}, cache=True)
    net.feed("a", SubmitJob("g5", spec))
    net.run_until(lambda: "g5~fetch" in running(net, "g5"), limit=10)
    finish(net, "g5~fetch", manifest="sha256:" + "1" * 64)
    net.run_until(lambda: "g5~use" in running(net, "g5"), limit=net.now + 10)
    finish(net, "g5~use", manifest="sha256:" + "2" * 64)
    net.run_until(lambda: net.job_state("a", "g5") == "completed", limit=net.now + 10)
    net.feed("a", SubmitJob("g6", spec))
    net.run_until(lambda: net.job_state("a", "g6") == "completed", limit=net.now + 5)
    assert running(net, "g6") == {}
    assert state(net, "g6") == {"fetch": "cached", "use": "cached"}
    use = next(t for t in net.core("a").describe("g6")["tasks"] if t["task"] == "use")
    assert use["outputs"][0]["manifest_id"] == "sha256:" + "2" * 64


def test_an_owner_restart_resumes_the_dag_where_it_stood() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    spec = dag_spec({"one": {}, "two": {"depends_on": ["one"]}})
    net.feed("a", SubmitJob("g7", spec))
    net.run_until(lambda: "g7~one" in running(net, "g7"), limit=10)
    finish(net, "g7~one")
    net.run_until(lambda: "g7~two" in running(net, "g7"), limit=net.now + 10)
    net.crash("a")
    net.run_for(2.0)
    net.start("a")
    assert state(net, "g7") == {"one": "succeeded", "two": "running"}
    finish(net, "g7~two")
    net.run_until(lambda: net.job_state("a", "g7") == "completed", limit=net.now + 20)


def test_a_dag_job_starts_with_its_first_task_and_keeps_its_times_across_a_restart() -> None:
    # The job itself has no lease: its started_at is its first task's, so its
    # listing and describe show a start and a duration like any job's.
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("g1", dag_spec({"fetch": {}, "load": {"depends_on": ["fetch"]}})))
    assert net.core("a").describe("g1")["started_at"] is None
    net.run_until(lambda: "g1~fetch" in running(net, "g1"), limit=10)
    net.run_until(lambda: net.core("a").describe("g1~fetch")["started_at"], limit=net.now + 10)
    fetch_started = net.core("a").describe("g1~fetch")["started_ms"]
    assert net.core("a").describe("g1")["started_ms"] == fetch_started
    net.run_for(2.0)
    finish(net, "g1~fetch")
    net.run_until(lambda: "g1~load" in running(net, "g1"), limit=net.now + 10)
    net.run_for(1.0)
    finish(net, "g1~load")
    net.run_until(lambda: net.job_state("a", "g1") == "completed", limit=net.now + 10)
    net.crash("a")
    net.start("a")
    view = net.core("a").describe("g1")
    assert view["started_ms"] == fetch_started  # the first task's, not the second's
    assert view["duration_s"] is not None and view["duration_s"] >= 3.0, view
