"""Stream jobs in the simulator: partitioned consumers over finite simulated
sources (consume mode) and the owner's simulated connector (micro_batch),
under loss, partitions and crashes.

Every cluster runs all checkers from its first event (simnet.stream_invariants:
ST1 only the newest epoch commits, ST2 checkpoints never move backwards,
ST3 a new consumer resumes from the last commit, ST4 at-least-once after
settling, ST5 a consumer cut off from its owner stops within TTL + grace;
MB1-MB3 for micro-batches).  The last section shows each checker failing on
a hand-made history or a deliberately broken core.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from protocols import codec
from protocols.config import Timings
from protocols.events import StartExecution
from protocols.holder import Holder
from protocols.messages import LeaseRenew
from protocols.states import ExecState, FeedEvent
from protocols.stream import StreamController
from simnet.harness import Cluster
from simnet.runner import BIG_NODE
from simnet.sources import Consumer, SimSource
from simnet.stream_invariants import StreamInvariants
from simnet.workload import micro_batch_spec, stream_spec
from tests.simnetcli import run_simnet

pytest.importorskip("protocols.node")

T = Timings()
TTL_GRACE = T.lease_ttl + T.lease_grace
OWNER = "n0000"


def big(*owners_only: str) -> Callable[[int, dict[str, Any]], dict[str, Any]]:
    def conf(i: int, fields: dict[str, Any]) -> dict[str, Any]:
        return {**fields, **BIG_NODE, "compute": fields["node_id"] not in owners_only}
    return conf


def cluster(nodes: int = 8, seed: int = 1, **kw: Any) -> Cluster:
    c = Cluster(nodes, seed=seed, configure=big(OWNER), record=True, **kw)
    c.start()
    return c


def consumers(c: Cluster, job: str) -> dict[str, tuple[str, str]]:
    """partition -> (node, execution id) of the consumers running now."""
    out = {}
    for (idx, eid), consumer in sorted(c.engine.consumers.items()):
        if consumer.job == job:
            out[consumer.partition] = (c.ids[idx], eid)
    return out


def settle_and_check(c: Cluster, until: float) -> None:
    c.run_until(until)
    c.stream.finish(c.now)
    assert c.violations == [], c.violations[:3]


def stop(c: Cluster, jobs: list[str]) -> None:
    for job in jobs:
        c.cancel(job, reason="test over")
    assert c.run_until_done(c.now + 60)
    c.run_until(c.now + TTL_GRACE + 1.0)
    assert c.violations == [], c.violations[:3]
    assert c.engine.executor.running == {}


# --- consume mode ------------------------------------------------------------------------


def test_consumers_process_every_entry_once_without_faults() -> None:
    c = cluster()
    job = c.submit(stream_spec("s", 3, entries=300, produce_rate=10.0, consume_rate=20.0,
                               run_for_ms=8000), owner=OWNER, at=2.0)
    settle_and_check(c, 60.0)
    for part in ("0", "1", "2"):
        assert c.stream.committed[(job, part)] == 300
    assert sum(c.stream.duplicates().values()) == 0  # graceful run_for ends lose nothing
    rows = c.core(OWNER).describe(job)["partitions"]
    assert [r["checkpoint"] for r in rows] == ["300"] * 3 and all(r["lag"] == 0 for r in rows)
    # Each run_for end rolls over in place: one grant, the runs on its holder.
    grants = [n.data for n in c.notes_of("lease_granted") if n.data["slot"] == 0]
    rolled = [n.data for n in c.notes_of("execution_rolled_over") if n.data["slot"] == 0]
    assert len(grants) == 1 and len(rolled) >= 4
    assert {r["execution_id"] for r in rolled} == {grants[0]["execution_id"]}
    stop(c, [job])


def test_partitioned_consumer_stops_within_ttl_and_its_late_commit_is_refused() -> None:
    c = cluster()
    job = c.submit(stream_spec("s", 2, entries=400, consume_rate=5.0, run_for_ms=60_000),
                   owner=OWNER, at=2.0)
    c.run_until(12.0)
    zombie, old = consumers(c, job)["0"]
    c.partition([zombie])
    cut = c.now
    c.run_until(cut + TTL_GRACE + 3.0)
    assert consumers(c, job)["0"][0] != zombie  # moved to a node the owner reaches
    (latency, _eid, at), = [f for f in c.stream.fencing if f[1] == old]
    assert at == cut and latency <= T.lease_ttl + 0.5  # self-fenced before the owner's grace
    c.heal()
    before = c.stream.committed[(job, "0")]
    epoch = int(old.rsplit("/", 1)[1])
    late = LeaseRenew(execution_id=old, epoch=epoch, seq=99, progress="399")
    c.engine.send(zombie, OWNER, codec.encode(late, msg_id=f"{zombie}:late:1", sender=zombie))
    c.run_until(c.now + 1.0)
    refused = [n.data for n in c.notes_of("checkpoint_refused") if n.data["execution_id"] == old]
    assert refused and "no longer current" in refused[-1]["reason"]
    assert c.stream.committed[(job, "0")] >= before
    assert c.core(OWNER).describe(job)["partitions"][0]["checkpoint"] != "399"
    settle_and_check(c, 150.0)
    stop(c, [job])


def test_owner_crash_and_restart_resumes_from_the_committed_checkpoints() -> None:
    c = cluster()
    job = c.submit(stream_spec("s", 3, entries=300, consume_rate=5.0, run_for_ms=60_000),
                   owner=OWNER, at=2.0)
    c.run_until(15.0)
    committed = dict(c.stream.committed)
    c.crash(OWNER)
    c.run_until(15.0 + TTL_GRACE + 1.0)
    assert consumers(c, job) == {}  # every consumer lost its owner and stopped (ST5)
    c.restart(OWNER)
    settle_and_check(c, 120.0)
    assert all(c.stream.committed[k] >= v for k, v in committed.items())
    assert len(c.stream.fencing) == 3
    assert sum(c.stream.duplicates().values()) > 0  # entries after the last commit, redone
    stop(c, [job])


def test_consumer_crashes_redo_only_what_was_not_committed() -> None:
    c = cluster(seed=2)
    job = c.submit(stream_spec("s", 2, entries=300, consume_rate=10.0, run_for_ms=30_000,
                               checkpoint_every_ms=500), owner=OWNER, at=2.0)
    for t in (8.0, 19.0, 31.0):
        c.run_until(t)
        c.crash(consumers(c, job)["1"][0])
    settle_and_check(c, 120.0)
    dups = c.stream.duplicates()
    assert dups[(job, "0")] == 0 and 0 < dups[(job, "1")] <= 3 * 35  # at most ~ttl/3 of work
    stop(c, [job])


# --- micro_batch ---------------------------------------------------------------------------


def test_micro_batches_cover_every_entry_exactly_once_without_faults() -> None:
    c = cluster()
    job = c.submit(micro_batch_spec("m", 2, entries=200, produce_rate=20.0, max_entries=25,
                                    max_wait_ms=1000), owner=OWNER, at=2.0)
    settle_and_check(c, 60.0)
    assert c.stream.committed[(job, "0")] == c.stream.committed[(job, "1")] == 200
    assert c.stream.batch_duplicates == []
    rows = c.core(OWNER).describe(job)["partitions"]
    assert [r["entries"] for r in rows] == [200, 200]
    assert all(r["batches"] >= 8 for r in rows)
    stop(c, [job])


def test_pipelined_micro_batches_commit_in_order_without_faults() -> None:
    c = cluster()
    job = c.submit(micro_batch_spec("m", 2, entries=200, produce_rate=0.0, max_entries=10,
                                    max_wait_ms=500, batch_ms=2000, max_in_flight=4,
                                    fail_rate=0.3, attempts=10),
                   owner=OWNER, at=2.0)
    peak = 0
    while c.now < 40.0:
        c.run_until(c.now + 0.5)
        running = [eid for (_, eid) in c.engine.executor.running if eid.startswith(job + "~0~")]
        peak = max(peak, len(running))
    settle_and_check(c, 60.0)
    assert peak > 1  # more than one batch of a partition ran at once
    assert c.stream.committed[(job, "0")] == c.stream.committed[(job, "1")] == 200
    assert c.stream.batch_duplicates == []
    stop(c, [job])


def test_out_of_order_micro_batch_commit_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted bug: a pipelined batch commits as soon as it succeeds, before
    an older one in flight; MB1 (contiguous commits) fires."""
    def eager(self: StreamController, parent: Any, feed: Any) -> None:
        for run_id in list(feed.succeeded):
            run = self.ctx.jobs[run_id]
            feed.pipeline.remove(run_id)
            feed.pipeline.insert(0, run_id)
            feed.move(FeedEvent.SUCCEEDED, run_id)
            feed.succeeded.remove(run_id)
            feed.committed = run.env["P2PNODE_BATCH_LAST"]
            self.out.notify("checkpoint_committed", job_id=parent.job_id, partition=feed.name,
                            run_id=run_id, checkpoint=feed.committed)
            self.ctx.forget(run_id)
    monkeypatch.setattr(StreamController, "_commit_in_order", eager)
    c = cluster()
    c.submit(micro_batch_spec("m", 1, entries=200, max_entries=10, max_wait_ms=500,
                              batch_ms=2000, max_in_flight=4, fail_rate=0.3, attempts=10),
             owner=OWNER, at=2.0)
    c.run_until(60.0)
    assert any("MB1" in v for v in c.violations), c.violations


def test_micro_batch_owner_crash_mid_batch_lands_every_entry() -> None:
    c = cluster()
    job = c.submit(micro_batch_spec("m", 2, entries=200, produce_rate=10.0, max_entries=20,
                                    batch_ms=3000), owner=OWNER, at=2.0)
    c.run_until(30.0, stop=lambda: any("~" in eid for (_, eid) in c.engine.executor.running))
    assert any(r["busy"] for r in c.core(OWNER).stream.sources())
    c.crash(OWNER)  # a batch execution runs: its result will find no owner
    c.run_until(c.now + 16.0)
    c.restart(OWNER)
    settle_and_check(c, 120.0)
    assert c.stream.committed[(job, "0")] == c.stream.committed[(job, "1")] == 200
    # The batch running at the crash committed once (MB1); if it ran twice, the
    # duplicate was reported, and allowed: the crash touched it (MB3).
    first = min(r for r in c.stream.batches if r.startswith(f"{job}~0~"))
    assert first in c.stream.batch_commits
    stop(c, [job])


# --- sweeps and determinism ------------------------------------------------------------------

SWEEP = ("--workload", "stream", "--nodes", "10", "--jobs", "6", "--duration", "3m",
         "--crash-rate", "0.1", "--partition-rate", "0.5", "--duplicate", "0.05",
         "--reorder", "0.1", "--output", "json")


_simnet = run_simnet


def test_stream_sweep_with_loss() -> None:
    summary = _simnet("sweep", "--seeds", "0..29", "--loss", "0.1", *SWEEP)
    assert summary["failures"] == [], json.dumps(summary["failures"][:3], indent=1)
    worst = summary["kinds_worst"]
    assert worst["fencing_max"]["value"] <= TTL_GRACE


def test_stream_sweep_lossless_exactly_once_batches() -> None:
    summary = _simnet("sweep", "--seeds", "100..119", *SWEEP)
    assert summary["failures"] == [], json.dumps(summary["failures"][:3], indent=1)


def test_stream_same_seed_same_trace() -> None:
    args = ("run", "--seed", "7", "--loss", "0.1", *SWEEP)
    a = _simnet(*args, hashseed="1")
    b = _simnet(*args, hashseed="2")
    assert a["trace_hash"] == b["trace_hash"] and a["stream"] == b["stream"]
    assert a["invariant_violations"] == [] and a["stream"]["commits"] > 50


# --- the checkers can fail: hand-made histories -------------------------------------------


class Fake:
    def __init__(self, lossy: bool = False) -> None:
        self.group: dict[str, int] = {}
        self.checks: list[tuple[float, Callable[[], None]]] = []
        self.violations: list[str] = []
        self.inv = StreamInvariants(T, lambda at, fn: self.checks.append((at, fn)), self,
                                    lambda t, text: self.violations.append(f"t={t:.3f}s: {text}"))
        self.inv.lossy = lossy
        for n in ("o", "a", "b"):
            self.inv.on_start(n, 0.0)

    def connected(self, a: str, b: str) -> bool:
        return self.group.get(a, 0) == self.group.get(b, 0)

    def run(self, until: float) -> None:
        for at, fn in sorted(self.checks, key=lambda c: c[0]):
            if at <= until:
                fn()
        self.checks = [c for c in self.checks if c[0] > until]

    def note(self, kind: str, t: float, **data: Any) -> None:
        self.inv.on_notify("o", kind, data, t)

    def submit(self, spec: dict[str, Any], job: str = "s1") -> None:
        self.inv.expect(job, spec)
        self.note("job_submitted", 1.0, job_id=job, job_type="stream")

    def consume(self, node: str, eid: str, start: str, t: float, upto: int,
                partition: str = "0") -> Consumer:
        env = {"P2PNODE_PARTITION": partition, "P2PNODE_CHECKPOINT": start,
               "P2PNODE_CHECKPOINT_EVERY_MS": "1000", "SIM_STREAM_ENTRIES": "100"}
        self.inv.on_exec_start(node, StartExecution(eid, "s1", 0, {}, env, 60.0), t)
        consumer = Consumer("s1", env, t)
        self.inv.on_consumed(node, eid, consumer, int(start or 0), upto, t + 1)
        return consumer

    def has(self, text: str) -> bool:
        return any(text in v for v in self.violations)


def test_st1_commit_from_a_superseded_epoch_fires() -> None:
    f = Fake()
    f.submit(stream_spec("s", 1, entries=100))
    f.note("lease_granted", 2.0, job_id="s1", slot=0, epoch=1, execution_id="s1/0/1")
    f.consume("a", "s1/0/1", "", 2.0, 30)
    f.note("lease_granted", 20.0, job_id="s1", slot=0, epoch=2, execution_id="s1/0/2")
    f.note("checkpoint_committed", 21.0, job_id="s1", partition="0", epoch=1,
           execution_id="s1/0/1", checkpoint="30")
    assert f.has("committed from s1/0/1 (epoch 1) but the newest lease is s1/0/2 (ST1")


def test_st2_backwards_and_unreached_commits_fire() -> None:
    f = Fake()
    f.submit(stream_spec("s", 1, entries=100))
    f.note("lease_granted", 2.0, job_id="s1", slot=0, epoch=1, execution_id="s1/0/1")
    f.consume("a", "s1/0/1", "", 2.0, 50)
    for value in ("50", "30"):
        f.note("checkpoint_committed", 5.0, job_id="s1", partition="0", epoch=1,
               execution_id="s1/0/1", checkpoint=value)
    assert f.has("checkpoint moved backwards from 50 to 30 (ST2)")
    f.note("checkpoint_committed", 6.0, job_id="s1", partition="0", epoch=1,
           execution_id="s1/0/1", checkpoint="70")
    assert f.has("checkpoint 70 committed for s1/0/1, which only reached 50 (ST2)")


def test_st3_resume_elsewhere_than_the_last_commit_fires() -> None:
    f = Fake()
    f.submit(stream_spec("s", 1, entries=100))
    f.note("lease_granted", 2.0, job_id="s1", slot=0, epoch=1, execution_id="s1/0/1")
    f.consume("a", "s1/0/1", "", 2.0, 40)
    f.note("checkpoint_committed", 5.0, job_id="s1", partition="0", epoch=1,
           execution_id="s1/0/1", checkpoint="40")
    f.note("lease_granted", 10.0, job_id="s1", slot=0, epoch=2, execution_id="s1/0/2")
    f.consume("b", "s1/0/2", "60", 10.0, 70)
    assert f.has("(the newest epoch) starts from 60, the last committed checkpoint is 40")
    assert f.has("entries 41..60 were never processed (ST3)")


def test_st4_unprocessed_entries_after_settling_fire() -> None:
    f = Fake()
    f.submit(stream_spec("s", 1, entries=100))
    f.note("lease_granted", 2.0, job_id="s1", slot=0, epoch=1, execution_id="s1/0/1")
    f.consume("a", "s1/0/1", "", 2.0, 100)
    f.note("checkpoint_committed", 5.0, job_id="s1", partition="0", epoch=1,
           execution_id="s1/0/1", checkpoint="100")
    f.inv.finish(50.0)
    assert f.violations == []
    g = Fake()
    g.submit(stream_spec("s", 1, entries=100))
    g.note("lease_granted", 2.0, job_id="s1", slot=0, epoch=1, execution_id="s1/0/1")
    g.consume("a", "s1/0/1", "", 2.0, 60)
    g.inv.finish(50.0)
    assert g.has("checkpoint 0 of 100 entries; entries 61..100 never processed (ST4/MB2)")


def test_st5_consumer_running_on_past_ttl_after_its_cut_fires() -> None:
    f = Fake()
    f.submit(stream_spec("s", 1, entries=100))
    f.consume("a", "s1/0/1", "", 2.0, 10)
    f.group["a"] = 1
    f.inv.on_fault(10.0, "partition")
    f.run(10.0 + TTL_GRACE + 0.5)
    assert f.violations == []
    f.run(10.0 + TTL_GRACE + 1.5)
    assert f.has("a still runs s1/0/1 13s after it lost its owner o at t=10.000s (ST5")
    g = Fake()  # healed in time: no cut any more
    g.submit(stream_spec("s", 1, entries=100))
    g.consume("a", "s1/0/1", "", 2.0, 10)
    g.group["a"] = 1
    g.inv.on_fault(10.0, "partition")
    g.group["a"] = 0
    g.inv.on_fault(12.0, "heal")
    g.run(40.0)
    assert g.violations == []


def micro_start(f: Fake, run: str, eid: str, node: str, first: int, last: int, t: float) -> None:
    env = {"P2PNODE_PARTITION": "0", "P2PNODE_BATCH_FIRST": str(first),
           "P2PNODE_BATCH_LAST": str(last), "P2PNODE_BATCH_COUNT": str(last - first + 1)}
    f.inv.on_exec_start(node, StartExecution(eid, run, 0, {}, env, 60.0), t)


def test_mb1_and_mb3_fire() -> None:
    f = Fake()
    f.submit(micro_batch_spec("m", 1, entries=40))
    f.note("job_submitted", 2.0, job_id="s1~0~1", job_type="run")
    micro_start(f, "s1~0~1", "s1~0~1/0/1", "a", 1, 20, 2.0)
    f.inv.on_exec_end("a", "s1~0~1/0/1", "succeeded", 3.0)
    micro_start(f, "s1~0~1", "s1~0~1/0/2", "b", 1, 20, 3.0)
    f.inv.on_exec_end("b", "s1~0~1/0/2", "succeeded", 4.0)
    f.note("checkpoint_committed", 4.0, job_id="s1", partition="0", run_id="s1~0~1",
           checkpoint="20")
    micro_start(f, "s1~0~2", "s1~0~2/0/1", "a", 25, 40, 5.0)  # skips 21..24
    f.inv.on_exec_end("a", "s1~0~2/0/1", "succeeded", 6.0)
    f.note("checkpoint_committed", 6.0, job_id="s1", partition="0", run_id="s1~0~2",
           checkpoint="40")
    assert f.has("batch s1~0~2 covers 25..40 but the checkpoint was 20 and becomes 40 (MB1")
    f.inv.finish(10.0)
    assert f.has("entries 1..20 landed in 2 successful executions of batch s1~0~1 although "
                 "no fault touched it (MB3)")
    lossy = Fake(lossy=True)  # on a lossy network a re-run batch is an expected duplicate
    lossy.submit(micro_batch_spec("m", 1, entries=20))
    for eid, node in (("s1~0~1/0/1", "a"), ("s1~0~1/0/2", "b")):
        micro_start(lossy, "s1~0~1", eid, node, 1, 20, 2.0)
        lossy.inv.on_exec_end(node, eid, "succeeded", 3.0)
    lossy.note("checkpoint_committed", 4.0, job_id="s1", partition="0", run_id="s1~0~1",
               checkpoint="20")
    lossy.inv.finish(10.0)
    assert lossy.violations == [] and lossy.inv.summary()["micro_duplicate_entries"] == 20


# --- the checkers can fail: broken cores --------------------------------------------------


def test_commit_without_fencing_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = StreamController.commit

    def unfenced(self: StreamController, job: Any, slot: Any, execution: Any, *rest: Any) -> None:
        epoch = slot.epoch
        slot.epoch = execution.epoch  # pretend the zombie holds the newest epoch
        try:
            original(self, job, slot, execution, *rest)
        finally:
            slot.epoch = epoch
    monkeypatch.setattr(StreamController, "commit", unfenced)
    monkeypatch.setattr(StreamController, "refuse", lambda self, *a: unfenced(self, *a[:3],
                                                                              "399", -1, 2**31))
    c = cluster()
    job = c.submit(stream_spec("s", 1, entries=400, consume_rate=5.0, run_for_ms=60_000),
                   owner=OWNER, at=2.0)
    c.run_until(12.0)
    zombie, old = consumers(c, job)["0"]
    c.partition([zombie])
    c.run_until(c.now + TTL_GRACE + 3.0)
    c.heal()
    late = LeaseRenew(execution_id=old, epoch=int(old.rsplit("/", 1)[1]), seq=99, progress="399")
    c.engine.send(zombie, OWNER, codec.encode(late, msg_id=f"{zombie}:late:1", sender=zombie))
    c.run_until(c.now + 1.0)
    assert any("(ST1" in v for v in c.violations), c.violations


def test_consumer_started_past_the_commit_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = StreamController.consumer_env

    def ahead(self: StreamController, job: Any, slot: Any) -> dict[str, str]:
        env = original(self, job, slot)
        env["P2PNODE_CHECKPOINT"] = str(int(env["P2PNODE_CHECKPOINT"] or 0) + 10)
        return env
    monkeypatch.setattr(StreamController, "consumer_env", ahead)
    c = cluster()
    c.submit(stream_spec("s", 1, entries=100), owner=OWNER, at=2.0)
    c.run_until(10.0)
    assert any("were never processed (ST3)" in v for v in c.violations), c.violations


def test_roll_over_from_a_stale_checkpoint_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A holder that rolls a consumer over from its grant's checkpoint instead
    of the one the owner committed re-reads what the last run did (ST3)."""
    original = Holder._roll_on

    def stale(self: Holder, held: Any, checkpoint: str) -> None:
        assert held.start is not None
        original(self, held, held.start.env.get("P2PNODE_CHECKPOINT", ""))
    monkeypatch.setattr(Holder, "_roll_on", stale)
    c = cluster()
    c.submit(stream_spec("s", 1, entries=300, produce_rate=10.0, consume_rate=20.0,
                         run_for_ms=4000), owner=OWNER, at=2.0)
    c.run_until(20.0)
    assert any("(the newest epoch) starts from" in v and "(ST3)" in v
               for v in c.violations), c.violations


def test_roll_over_without_waiting_for_the_commit_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A holder that starts the next run at once, before the owner committed
    the last run's checkpoint, starts past the commit (ST3)."""
    def eager(self: Holder, held: Any, event: Any) -> None:
        held.state = ExecState.RUNNING
        held.run_for_reached, held.restarted = False, held.restarted + 1
        self._roll_on(held, held.progress)
    monkeypatch.setattr(Holder, "_roll_over", eager)
    c = cluster()
    c.submit(stream_spec("s", 1, entries=300, produce_rate=10.0, consume_rate=20.0,
                         run_for_ms=4000), owner=OWNER, at=2.0)
    c.run_until(20.0)
    assert any("(ST3)" in v for v in c.violations), c.violations


def test_holder_that_never_fences_itself_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Holder, "on_lapse_timer", lambda self, exec_id: None)
    c = cluster()
    job = c.submit(stream_spec("s", 1, entries=400, consume_rate=5.0, run_for_ms=60_000),
                   owner=OWNER, at=2.0)
    c.run_until(12.0)
    c.partition([consumers(c, job)["0"][0]])
    c.run_until(40.0)
    # The stream checker (ST5) or, first since issue 11, the lease checker
    # (a superseded holder stops by the re-grant) catches it.
    assert any("(ST5: TTL + grace)" in v or "past its own lease" in v
               or "after its owner saw the lease expire" in v
               for v in c.violations), c.violations


def test_connector_position_not_advanced_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    original = StreamController.on_batch

    def forgetful(self: StreamController, batch: Any) -> None:
        feed = self.feeds[batch.job_id][batch.partition]
        before = feed.position
        original(self, batch)
        feed.position = before  # the next batch re-reads the same entries
    monkeypatch.setattr(StreamController, "on_batch", forgetful)
    c = cluster()
    c.submit(micro_batch_spec("m", 1, entries=100, max_entries=20), owner=OWNER, at=2.0)
    c.run_until(30.0)
    assert any("(MB1" in v for v in c.violations), c.violations


def test_source_model() -> None:
    src = SimSource(entries=100, rate=10.0, start=5.0, consume=4.0)
    assert [src.available(t) for t in (0.0, 5.0, 6.0, 14.99, 20.0)] == [0, 0, 10, 99, 100]
    assert src.complete_at() == 15.0
    env = {"P2PNODE_PARTITION": "p", "P2PNODE_CHECKPOINT": "7",
           "P2PNODE_CHECKPOINT_EVERY_MS": "500", "SIM_STREAM_ENTRIES": "20",
           "SIM_CONSUME_RATE": "4"}
    consumer = Consumer("j", env, 0.0)
    assert consumer.advance(1.0) == (7, 11, 20) and consumer.advance(10.0) == (11, 20, 20)
