"""Stream jobs on the hand-cranked network: checkpoints, fencing, stickiness,
micro-batches.  (Random faults at scale: test_simnet_stream.py; real Redis:
test_real_stream.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from protocols.config import Timings
from protocols.errors import LocalProtocolError
from protocols.events import CancelJob, ExecutionProgress, SourceBatch, SubmitJob
from protocols.messages import ExecutionResult, LeaseRenew
from tests.protonet import ProtoNet, sim_task

FAST = Timings(lease_ttl=3.0, lease_grace=1.0, bid_window=0.2)


def stream_spec(partitions: Any = 2, run_for: int = 20_000, **extra: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": "st",
        "type": "stream",
        "constraints": {"labels": {}},
        "queue_timeout": None,
        "partitions": partitions,
        "run_for": run_for,
        "checkpoint_every": 1000,
        "mode": "consume",
        "task": sim_task(timeout=run_for + 10_000),
    }
    doc.update(extra)
    return doc


def consumers(net: ProtoNet, job: str) -> dict[str, tuple[str, dict[str, str]]]:
    """partition -> (node, env) of the consumers running now."""
    out = {}
    for node, execs in net.running.items():
        for start in execs.values():
            if start.job_id == job:
                out[start.env["P2PNODE_PARTITION"]] = (node, dict(start.env))
    return out


def run_id_of(net: ProtoNet, job: str, partition: str) -> tuple[str, str]:
    for node, execs in net.running.items():
        for exec_id, start in execs.items():
            if start.job_id == job and start.env["P2PNODE_PARTITION"] == partition:
                return node, exec_id
    raise AssertionError(f"no consumer of {partition}")


def test_consumers_get_partition_and_checkpoint_and_commits_flow() -> None:
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("s1", stream_spec(partitions=["p0", "p1"])))
    net.run_until(lambda: len(consumers(net, "s1")) == 2, limit=10)
    assert {env["P2PNODE_CHECKPOINT"] for _, env in consumers(net, "s1").values()} == {""}
    node, exec_id = run_id_of(net, "s1", "p0")
    net.feed(node, ExecutionProgress(exec_id, "1700-3", lag=7))
    net.run_for(FAST.lease_ttl)  # a renewal carries it
    described = net.core("a").describe("s1")["partitions"]
    p0 = next(p for p in described if p["partition"] == "p0")
    assert p0["checkpoint"] == "1700-3" and p0["lag"] == 7 and p0["holder"] == node
    assert net.core("a").owner.jobs["s1"].slots[0].record()["checkpoint"] == "1700-3"


def test_run_for_end_rolls_over_in_place_from_the_committed_checkpoint() -> None:
    """At run_for the consumer is stopped (SIGTERM) and the next run starts on
    the same node under the same lease (no re-auction, no new grant), once the
    owner has committed the last run's checkpoint; its timeout starts again."""
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("s2", stream_spec(partitions=1, run_for=6000)))
    net.run_until(lambda: len(consumers(net, "s2")) == 1, limit=10)
    node, exec_id = run_id_of(net, "s2", "0")
    started = net.now
    net.feed(node, ExecutionProgress(exec_id, "42"))
    net.run_until(lambda: run_id_of_safe(net, "s2")[1] not in ("", exec_id), limit=net.now + 10)
    new_node, new_run = run_id_of(net, "s2", "0")
    assert new_node == node and new_run == exec_id + "#1"  # the same lease, run 2
    assert consumers(net, "s2")["0"][1]["P2PNODE_CHECKPOINT"] == "42"
    slot = net.core("a").owner.jobs["s2"].slots[0]
    assert [e.execution_id for e in slot.executions] == [exec_id] and slot.epoch == 1
    assert slot.checkpoint == "42" and slot.failures == 0
    rolled = net.notes_of("execution_rolled_over")
    assert [(n["run"], n["checkpoint"]) for n in rolled] == [(1, "42")]
    # Runs go on rolling over, each from the newest commit, past the task's
    # timeout (run_for + 10 s): the owner's deadline moves with each run.
    net.feed(node, ExecutionProgress(new_run, "43"))
    net.run_until(lambda: run_id_of_safe(net, "s2")[1] == exec_id + "#3", limit=net.now + 30)
    assert net.now - started > 16.0
    assert consumers(net, "s2")["0"][1]["P2PNODE_CHECKPOINT"] == "43"
    assert slot.current is not None and slot.current.state == "running"


def test_a_cancel_during_a_roll_over_still_commits_the_final_checkpoint() -> None:
    """Between a run's end at run_for and the next run's start there is no run:
    the job stopped then still commits the final checkpoint, and nothing starts."""
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("s9", stream_spec(partitions=1, run_for=2000)))
    net.run_until(lambda: len(consumers(net, "s9")) == 1, limit=10)
    node, exec_id = run_id_of(net, "s9", "0")
    net.feed(node, ExecutionProgress(exec_id, "7"))
    net.run_for(1.5)  # a renewal acknowledged: the lease holds until ~4 s in
    net.partition("a", node)  # the roll-over renewal cannot reach the owner
    net.run_until(lambda: exec_id not in net.running[node], limit=net.now + 1)
    assert not net.notes_of("execution_fenced")  # it ended at run_for
    net.feed("a", CancelJob("s9"))
    net.heal()
    net.run_for(FAST.lease_ttl + FAST.lease_grace + 2)
    assert not consumers(net, "s9")
    slot = net.core("a").owner.jobs["s9"].slots[0]
    assert slot.checkpoint == "7"


def test_a_lapse_during_a_roll_over_reports_the_ended_run() -> None:
    """Cut off between two runs, the holder starts nothing; at its lapse it
    offers the ended run's result (a graceful end with its final checkpoint),
    as it did before roll-overs, and the owner, once it hears it, commits it
    if the lease is still current."""
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("s8", stream_spec(partitions=1, run_for=2000)))
    net.run_until(lambda: len(consumers(net, "s8")) == 1, limit=10)
    node, exec_id = run_id_of(net, "s8", "0")
    net.feed(node, ExecutionProgress(exec_id, "11"))
    net.run_for(1.5)
    net.partition("a", node)
    net.run_until(lambda: exec_id not in net.running[node], limit=net.now + 1)
    held = net.core(node).holder.held[exec_id]
    net.run_until(lambda: held.result is not None, limit=net.now + FAST.lease_ttl + 1)
    assert held.result is not None
    assert held.result.status == "succeeded" and held.result.progress == "11"
    assert not net.running[node]  # no run started without the owner's answer


def test_a_zombie_consumer_stops_within_ttl_and_its_commits_are_refused() -> None:
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("s3", stream_spec(partitions=1)))
    net.run_until(lambda: len(consumers(net, "s3")) == 1, limit=10)
    zombie, old_exec = run_id_of(net, "s3", "0")
    net.feed(zombie, ExecutionProgress(old_exec, "10"))
    net.run_for(FAST.lease_ttl)
    cut_at = net.now
    net.partition("a", zombie)
    # The zombie fences itself within ttl (+ one renewal interval of slack).
    net.run_until(lambda: old_exec not in net.running[zombie], limit=cut_at + FAST.lease_ttl + 1.5)
    net.run_until(lambda: run_id_of_safe(net, "s3")[1] not in ("", old_exec), limit=net.now + 10)
    # A late commit from the old epoch (e.g. a delayed renewal) is refused.
    owner = net.core("a").owner
    slot = owner.jobs["s3"].slots[0]
    net.heal()
    epoch = int(old_exec.rsplit("/", 1)[1])
    late = LeaseRenew(execution_id=old_exec, epoch=epoch, seq=99, progress="999")
    net.feed("a", _frame(net, zombie, late))
    assert slot.checkpoint == "10"
    assert net.core("a").stream.refused == 1
    result = ExecutionResult(execution_id=old_exec, epoch=epoch, progress="1000")
    net.feed("a", _frame(net, zombie, result))
    assert slot.checkpoint == "10"
    assert net.core("a").stream.refused == 2
    assert all("no longer current" in n["reason"] for n in net.notes_of("checkpoint_refused"))


def run_id_of_safe(net: ProtoNet, job: str) -> tuple[str, str]:
    try:
        return run_id_of(net, job, "0")
    except AssertionError:
        return "", ""


def _frame(net: ProtoNet, sender: str, message: Any) -> Any:
    from protocols import codec
    from protocols.events import MessageReceived

    net._seq += 1
    data = codec.encode(message, msg_id=f"{sender}:forged:{net._seq}", sender=sender)
    return MessageReceived(sender, data)


def test_checkpoints_never_move_backwards() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("s4", stream_spec(partitions=1)))
    net.run_until(lambda: len(consumers(net, "s4")) == 1, limit=10)
    node, exec_id = run_id_of(net, "s4", "0")
    net.feed(node, ExecutionProgress(exec_id, "1700-5"))
    net.run_for(FAST.lease_ttl)
    net.feed(node, ExecutionProgress(exec_id, "1700-2"))
    net.run_for(FAST.lease_ttl)
    slot = net.core("a").owner.jobs["s4"].slots[0]
    assert slot.checkpoint == "1700-5"
    assert any("behind" in n["reason"] for n in net.notes_of("checkpoint_refused"))


def test_stop_commits_each_consumers_final_checkpoint() -> None:
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("s5", stream_spec(partitions=2)))
    net.run_until(lambda: len(consumers(net, "s5")) == 2, limit=10)
    for partition in ("0", "1"):
        node, exec_id = run_id_of(net, "s5", partition)
        net.feed(node, ExecutionProgress(exec_id, f"{partition}00"))  # not yet renewed
    net.feed("a", CancelJob("s5"))
    net.run_for(2.0)
    assert consumers(net, "s5") == {}
    slots = net.core("a").owner.jobs["s5"].slots
    assert [s.checkpoint for s in slots] == ["000", "100"]
    assert net.job_state("a", "s5") == "stopped"


# --- micro_batch ---------------------------------------------------------------------


def micro_spec(partitions: int = 2) -> dict[str, Any]:
    return stream_spec(
        partitions=partitions,
        mode="micro_batch",
        source={"type": "redis", "url": "redis://127.0.0.1:6379/0", "streams": ["s0", "s1"]},
        batch={"max_entries": 100, "max_wait": 1000},
        task=sim_task(),
    )


def test_micro_batch_runs_one_batch_at_a_time_and_commits_on_success() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("m1", micro_spec()))
    stream = net.core("a").stream
    rows = {r["partition"]: r for r in stream.sources()}
    assert rows["0"]["streams"] == ["s0"] and rows["1"]["streams"] == ["s1"]
    net.feed("a", SourceBatch("m1", "0", "sha256:" + "0" * 64, "1-0", "5-0", 5))
    with pytest.raises(LocalProtocolError, match="in flight"):
        net.feed("a", SourceBatch("m1", "0", "sha256:" + "1" * 64, "6-0", "9-0", 4))
    assert {r["partition"]: r["busy"] for r in stream.sources()} == {"0": True, "1": False}
    net.run_until(lambda: bool(net.running["b"]), limit=net.now + 5)
    ((exec_id, start),) = net.running["b"].items()
    assert start.inputs == (("batch", "sha256:" + "0" * 64, "a"),)
    assert start.env["P2PNODE_BATCH_LAST"] == "5-0" and start.env["P2PNODE_PARTITION"] == "0"
    assert stream.describe(net.core("a").owner.jobs["m1"])[0]["checkpoint"] == ""
    net.finish("b", exec_id)
    net.run_until(lambda: not stream.sources()[0]["busy"], limit=net.now + 5)
    p0 = stream.describe(net.core("a").owner.jobs["m1"])[0]
    assert p0["checkpoint"] == "5-0" and p0["entries"] == 5
    with pytest.raises(LocalProtocolError, match="not after"):
        net.feed("a", SourceBatch("m1", "0", "sha256:" + "2" * 64, "2-0", "5-0", 1))


def pipelined_spec(max_in_flight: int) -> dict[str, Any]:
    spec = micro_spec(partitions=1)
    spec["batch"] = {**spec["batch"], "max_in_flight": max_in_flight}
    return spec


def test_micro_batches_pipeline_and_commit_in_the_order_they_were_read() -> None:
    """batch.max_in_flight 3: three batches of one partition run at once; a
    fourth is refused; a younger batch that succeeds first waits for the older
    one, so the checkpoint moves over succeeded batches only, in order."""
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("m5", pipelined_spec(3)))
    stream = net.core("a").stream
    ranges = [("1-0", "5-0", 5), ("6-0", "9-0", 4), ("10-0", "12-0", 3)]
    for i, (first, last, n) in enumerate(ranges):
        assert not stream.sources()[0]["busy"]
        net.feed("a", SourceBatch("m5", "0", "sha256:" + str(i) * 64, first, last, n))
    assert stream.sources()[0]["busy"] and stream.sources()[0]["position"] == "12-0"
    with pytest.raises(LocalProtocolError, match="3 batch"):
        net.feed("a", SourceBatch("m5", "0", "sha256:" + "3" * 64, "13-0", "14-0", 2))

    def running() -> dict[str, tuple[str, str]]:  # batch last -> (node, execution)
        return {
            start.env["P2PNODE_BATCH_LAST"]: (node, exec_id)
            for node, execs in net.running.items()
            for exec_id, start in execs.items()
        }

    net.run_until(lambda: len(running()) == 3, limit=net.now + 10)
    job = net.core("a").owner.jobs["m5"]
    net.finish(*running()["9-0"])  # the second batch ends first: nothing to commit yet
    net.finish(*running()["12-0"])
    net.run_for(1.0)
    p0 = stream.describe(job)[0]
    assert p0["checkpoint"] == "" and p0["in_flight"] == "m5~0~1"
    assert net.notes_of("checkpoint_committed") == []
    net.finish(*running()["5-0"])  # the oldest: all three commit, in order
    net.run_until(lambda: not stream.sources()[0]["busy"], limit=net.now + 5)
    commits = [n["checkpoint"] for n in net.notes_of("checkpoint_committed")]
    assert commits == ["5-0", "9-0", "12-0"]
    p0 = stream.describe(job)[0]
    assert p0["checkpoint"] == "12-0" and p0["entries"] == 12 and p0["in_flight"] == ""


def test_a_failed_batch_in_a_pipeline_commits_nothing_after_it() -> None:
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    spec = pipelined_spec(2)
    spec["task"] = sim_task(retry={"attempts": 1, "backoff": 1000})
    net.feed("a", SubmitJob("m6", spec))
    net.feed("a", SourceBatch("m6", "0", "sha256:" + "0" * 64, "1-0", "5-0", 5))
    net.feed("a", SourceBatch("m6", "0", "sha256:" + "1" * 64, "6-0", "9-0", 4))
    net.run_until(lambda: len(net.running_anywhere()) == 2, limit=net.now + 10)
    by_last = {
        start.env["P2PNODE_BATCH_LAST"]: (node, exec_id)
        for node, execs in net.running.items()
        for exec_id, start in execs.items()
    }
    net.finish(*by_last["9-0"])
    net.finish(*by_last["5-0"], status="failed", exit_code=2)
    net.run_until(lambda: net.job_state("a", "m6") == "failed", limit=net.now + 5)
    stream = net.core("a").stream
    p0 = stream.describe(net.core("a").owner.jobs["m6"])[0]
    assert p0["checkpoint"] == "" and net.notes_of("checkpoint_committed") == []


def test_micro_batch_failure_keeps_the_checkpoint_and_fails_the_job() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    spec = micro_spec()
    spec["task"] = sim_task(retry={"attempts": 1, "backoff": 1000})
    net.feed("a", SubmitJob("m2", spec))
    net.feed("a", SourceBatch("m2", "1", "sha256:" + "0" * 64, "1-0", "3-0", 3))
    net.run_until(lambda: bool(net.running["b"]), limit=net.now + 5)
    ((exec_id, _),) = net.running["b"].items()
    net.finish("b", exec_id, status="failed", exit_code=2)
    net.run_until(lambda: net.job_state("a", "m2") == "failed", limit=net.now + 5)
    stream = net.core("a").stream
    assert stream.describe(net.core("a").owner.jobs["m2"])[1]["checkpoint"] == ""
    assert "partition 1" in net.core("a").owner.jobs["m2"].reason


def test_micro_batch_survives_an_owner_restart_with_a_batch_in_flight() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("m3", micro_spec()))
    net.feed("a", SourceBatch("m3", "0", "sha256:" + "0" * 64, "1-0", "4-0", 4))
    net.run_until(lambda: bool(net.running["b"]), limit=net.now + 5)
    net.crash("a")
    net.run_for(1.0)
    net.start("a")
    stream = net.core("a").stream
    row = next(r for r in stream.sources() if r["partition"] == "0")
    assert row["busy"] and row["position"] == "4-0"  # the connector reads after it
    # The old holder lapsed (no renewals answered); the batch is re-run and commits once.
    for _ in range(2000):
        for node in ("b",):
            for exec_id in list(net.running[node]):
                net.finish(node, exec_id)
        if not stream.sources()[0]["busy"]:
            break
        net.step()
    p0 = stream.describe(net.core("a").owner.jobs["m3"])[0]
    assert p0["checkpoint"] == "4-0" and p0["entries"] == 4 and p0["batches"] == 1


def test_renewal_checkpoints_of_later_runs_still_commit() -> None:
    """A run's final commit (seq 2**32) must not shadow the next run's renewals."""
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("s6", stream_spec(partitions=1, run_for=5000)))
    net.run_until(lambda: len(consumers(net, "s6")) == 1, limit=10)
    _, first = run_id_of(net, "s6", "0")
    net.feed("b", ExecutionProgress(first, "10"))
    net.run_until(lambda: run_id_of_safe(net, "s6")[1] not in ("", first), limit=net.now + 10)
    _, second = run_id_of(net, "s6", "0")
    net.feed("b", ExecutionProgress(second, "20"))
    net.run_for(FAST.lease_ttl / 2)  # one renewal, well before run_for ends
    assert net.core("a").owner.jobs["s6"].slots[0].checkpoint == "20"
