"""Stream jobs: partitioned consumers with checkpoints the owner commits.

``mode: consume`` — one long-running slot per partition.  Each execution is a
consumer bounded by ``run_for``; it gets ``P2PNODE_PARTITION`` and
``P2PNODE_CHECKPOINT`` (the last committed checkpoint, empty at first) and
prints ``P2PNODE_CHECKPOINT <value>`` (and optionally ``P2PNODE_LAG <n>``)
lines; the holder relays the latest with its lease renewals and its result,
and the owner commits it here.  Commit rules:

* only the execution holding the partition's current epoch commits (a zombie
  whose lease was superseded is refused: fencing), plus the final checkpoint of
  a consumer stopped with the job (no one else can hold the partition then);
* within an epoch, a renewal older than the last one committed is ignored
  (reordering), and a checkpoint that reads as a position (an integer or a
  Redis stream id ``<ms>-<seq>``, or a JSON map of those) never moves
  backwards: such a commit is refused and counted.

At ``run_for`` the holder stops the consumer and rolls over in place: a
renewal with ``rollover`` carries the run's final checkpoint, committed here
like any other, and the next run starts on the same lease from the committed
checkpoint the ack names (``holder.py``).  A run that rolls over while its job
is stopped still commits (``final_commit_allowed``).  A consumer that exits by
itself with success is re-granted at once, to the same node if it bids
(stickiness).  Delivery is at-least-once: a new consumer starts from the last
commit.

``mode: micro_batch`` — no consumer slots.  The owner's runtime reads the
source through a connector (``p2pnode/stream/``), buffers entries into a blob,
and reports a ``SourceBatch``; the owner runs one batch job over it (a "run"
job ``<job>~<partition>~<n>``, retried as batch jobs are).  The partition's
checkpoint advances to the batch's ``last`` position only when that batch
succeeds; up to ``batch.max_in_flight`` batches per partition are in flight
(pipelined: the connector reads after the newest one's ``last``), and their
checkpoints are committed in the order the batches were read: a batch that
succeeds before an older one waits for it.
"""

from __future__ import annotations

import json
import re
from typing import Any

import attrs

from protocols.errors import LocalProtocolError
from protocols.kinds import KindController, OwnerContext, Records
from protocols.messages import ExecutionResult, LeaseGrant, LeaseRelease, LeaseRenew
from protocols.owned import Execution, OwnedJob, OwnedSlot
from protocols.states import FeedEvent, FeedState, check_feed_transition

STREAMS_TABLE = "streams"
_POSITION = re.compile(r"(\d+)(?:-(\d+))?")


def max_in_flight(spec: dict[str, Any]) -> int:
    """How many batches of one partition may run at once (``batch.max_in_flight``)."""
    return int((spec.get("batch") or {}).get("max_in_flight", 1))


def partition_names(spec: dict[str, Any]) -> list[str]:
    """Partition names: the listed ones, or "0".."N-1"."""
    partitions = spec.get("partitions", 1)
    if isinstance(partitions, list):
        return [str(p) for p in partitions]
    return [str(i) for i in range(int(partitions))]


def _position(value: str) -> tuple[int, int] | None:
    match = _POSITION.fullmatch(value)
    if match is None:
        return None
    return int(match.group(1)), int(match.group(2) or 0)


def behind(new: str, old: str) -> bool:
    """True when ``new`` is a position strictly before ``old`` (opaque values
    are never 'behind': only their order of arrival counts)."""
    if not old or not new:
        return False
    a, b = _position(new), _position(old)
    if a is not None and b is not None:
        return a < b
    try:
        new_map, old_map = json.loads(new), json.loads(old)
    except ValueError:
        return False
    if not isinstance(new_map, dict) or not isinstance(old_map, dict):
        return False
    for key, was in old_map.items():
        now = new_map.get(key)
        if now is None:
            return True  # a stream's position vanished
        p, q = _position(str(now)), _position(str(was))
        if p is not None and q is not None and p < q:
            return True
    return False


@attrs.define
class PartitionFeed:
    """A micro-batch partition: what is committed, read, and in flight."""

    name: str
    streams: list[str]
    committed: str = ""  # position of the last batch that succeeded
    position: str = ""  # position read up to (the in-flight batch's last, else committed)
    in_flight: str = ""  # run id of the oldest batch in flight
    batches: int = 0  # batches created
    entries: int = 0  # entries committed
    pipeline: list[str] = attrs.field(factory=list)  # runs in flight, oldest first
    succeeded: list[str] = attrs.field(factory=list)  # of those: done, waiting for older ones

    def record(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def __attrs_post_init__(self) -> None:
        if self.in_flight and not self.pipeline:  # a record from before pipelining
            self.pipeline = [self.in_flight]

    @property
    def state(self) -> FeedState:
        return FeedState.IN_FLIGHT if self.pipeline else FeedState.IDLE

    def move(self, event: FeedEvent, run_id: str) -> None:
        """The one way a batch starts or ends (checked against the table): a
        new batch joins the pipeline; the oldest one leaves it."""
        check_feed_transition(self.state, event)
        if event is FeedEvent.BATCH:
            self.pipeline.append(run_id)
        else:
            if not self.pipeline or self.pipeline[0] != run_id:
                raise LocalProtocolError(f"batch {run_id} is not the oldest in flight")
            self.pipeline.pop(0)
        self.in_flight = self.pipeline[0] if self.pipeline else ""


class StreamController(KindController):
    describe_key = "partitions"

    def __init__(self, ctx: OwnerContext) -> None:
        super().__init__(ctx)
        self.feeds: dict[str, dict[str, PartitionFeed]] = {}  # job id -> partition -> feed
        self.refused = 0  # commits refused (zombie, backwards)

    # --- consume mode ------------------------------------------------------------

    def slot_count(self, spec: dict[str, Any]) -> int:
        """Consume mode: one long-running slot per partition; micro-batch: none."""
        if spec.get("mode", "consume") == "consume":
            return len(partition_names(spec))
        return 0

    def grant_env(self, job: OwnedJob, slot: OwnedSlot, grant: LeaseGrant) -> LeaseGrant:
        return attrs.evolve(
            grant, env=self.consumer_env(job, slot), run_for_ms=job.spec["run_for"]
        )

    def on_progress(
        self,
        job: OwnedJob,
        slot: OwnedSlot,
        execution: Execution,
        msg: LeaseRenew | LeaseRelease | ExecutionResult,
        *,
        current: bool,
    ) -> None:
        """A consumer's checkpoint (and lag) with a renewal, release or result.
        A release or a late result may still commit: the last checkpoint of a
        consumer stopped with its job (``final_commit_allowed``)."""
        final = 2**32  # a release or result comes after every renewal of its run
        if isinstance(msg, LeaseRelease):
            if msg.progress and self.final_commit_allowed(slot, execution):
                self.commit(job, slot, execution, msg.progress, -1, final)
            return
        if not current:
            # A late result, or the roll-over renewal of a run that ended at
            # run_for: either way the run is over and its checkpoint final.
            ended = isinstance(msg, ExecutionResult) or (
                isinstance(msg, LeaseRenew) and msg.rollover
            )
            if ended and msg.progress and self.final_commit_allowed(slot, execution):
                self.commit(job, slot, execution, msg.progress, msg.lag, final)
                return
            if msg.progress:
                self.refuse(job, slot, execution, "the lease is no longer current")
            return
        if msg.progress or msg.lag >= 0:
            seq = msg.seq if isinstance(msg, LeaseRenew) else final
            self.commit(job, slot, execution, msg.progress, msg.lag, seq)

    def consumer_env(self, job: OwnedJob, slot: OwnedSlot) -> dict[str, str]:
        names = partition_names(job.spec)
        return {
            "P2PNODE_PARTITION": names[slot.index],
            "P2PNODE_CHECKPOINT": slot.checkpoint,
            "P2PNODE_RUN_FOR_MS": str(job.spec["run_for"]),
            "P2PNODE_CHECKPOINT_EVERY_MS": str(job.spec["checkpoint_every"]),
        }

    def final_commit_allowed(self, slot: OwnedSlot, execution: Execution) -> bool:
        """A consumer stopped with its job may still commit its last checkpoint:
        it held the newest epoch, and no other execution can follow it."""
        return slot.terminal and execution.epoch == slot.epoch and execution.state == "cancelled"

    def commit(
        self,
        job: OwnedJob,
        slot: OwnedSlot,
        execution: Execution,
        checkpoint: str,
        lag: int,
        seq: int,
    ) -> None:
        if job.kind != "stream":
            return
        if execution.epoch != slot.epoch:
            self.refuse(job, slot, execution, "not the partition's current epoch")
            return
        if execution.epoch == slot.progress_epoch and seq < slot.progress_seq:
            return  # an older renewal of this run, reordered: its checkpoint is not news
        if checkpoint and behind(checkpoint, slot.checkpoint):
            self.refuse(job, slot, execution, f"{checkpoint!r} is behind {slot.checkpoint!r}")
            return
        slot.progress_seq, slot.progress_epoch = seq, execution.epoch
        if lag >= 0:
            slot.lag = lag
        if not checkpoint or checkpoint == slot.checkpoint:
            return
        slot.checkpoint = checkpoint
        self.ctx.persist_slot(slot)
        self.out.notify(
            "checkpoint_committed",
            job_id=job.job_id,
            partition=partition_names(job.spec)[slot.index],
            epoch=execution.epoch,
            execution_id=execution.execution_id,
            checkpoint=checkpoint,
        )

    def refuse(self, job: OwnedJob, slot: OwnedSlot, execution: Execution, reason: str) -> None:
        """A checkpoint that must not be committed (zombie, backwards): counted."""
        if job.kind != "stream":
            return
        self.refused += 1
        self.out.notify(
            "checkpoint_refused",
            job_id=slot.job_id,
            slot=slot.index,
            epoch=execution.epoch,
            execution_id=execution.execution_id,
            reason=reason,
        )

    # --- micro_batch mode ----------------------------------------------------------

    def start(self, job: OwnedJob) -> None:
        if job.slots:  # consume mode: the owner auctions its partitions
            return
        names = partition_names(job.spec)
        streams = list((job.spec.get("source") or {}).get("streams") or [])
        feeds = {
            name: PartitionFeed(name=name, streams=streams[i :: len(names)])
            for i, name in enumerate(names)
        }
        self.feeds[job.job_id] = feeds
        for feed in feeds.values():
            self._save(job.job_id, feed)
        self.ctx.set_job_state(job, "running", persist=False, notify=True)

    def restore(self, records: Records) -> None:
        for key, rec in records.get(STREAMS_TABLE, {}).items():
            job_id, _, name = key.rpartition("~")
            self.feeds.setdefault(job_id, {})[name] = PartitionFeed(**rec)
        for job_id in self.feeds:
            job = self.ctx.jobs.get(job_id)
            if job is not None and not job.terminal:
                self.ctx.set_job_state(job, "running", persist=False, notify=False)

    def _save(self, job_id: str, feed: PartitionFeed) -> None:
        self.out.persist(STREAMS_TABLE, f"{job_id}~{feed.name}", feed.record())

    def on_batch(self, batch: Any) -> None:
        job = self.ctx.jobs.get(batch.job_id)
        if job is None or job.kind != "stream" or job.terminal:
            raise LocalProtocolError(f"no running micro-batch stream job {batch.job_id}")
        feed = self.feeds.get(job.job_id, {}).get(batch.partition)
        if feed is None:
            raise LocalProtocolError(f"job {job.job_id} has no partition {batch.partition!r}")
        limit = max_in_flight(job.spec)
        if len(feed.pipeline) >= limit:
            raise LocalProtocolError(
                f"partition {batch.partition} already has {len(feed.pipeline)} batch(es) in "
                f"flight (batch.max_in_flight {limit}), the oldest {feed.in_flight}"
            )
        if behind(batch.last, feed.position) or batch.last == feed.position:
            raise LocalProtocolError(
                f"batch ends at {batch.last!r}, not after the partition's position "
                f"{feed.position!r}"
            )
        feed.batches += 1
        run_id = f"{job.job_id}~{feed.name}~{feed.batches}"
        feed.move(FeedEvent.BATCH, run_id)
        feed.position = batch.last
        self._save(job.job_id, feed)
        self.ctx.create_job(
            run_id,
            job.spec,
            kind="run",
            version=job.version,
            parent=job.job_id,
            inputs=[("batch", batch.manifest_id, self.ctx.config.node_id)],
            env={
                "P2PNODE_PARTITION": feed.name,
                "P2PNODE_BATCH_FIRST": batch.first,
                "P2PNODE_BATCH_LAST": batch.last,
                "P2PNODE_BATCH_COUNT": str(batch.count),
            },
        )

    def on_run_finished(self, run: OwnedJob) -> None:
        parent = self.ctx.jobs.get(run.parent)
        name = run.env.get("P2PNODE_PARTITION", "")
        feed = self.feeds.get(run.parent, {}).get(name)
        if parent is None or feed is None or run.job_id not in feed.pipeline:
            return
        if run.state == "completed":
            if run.job_id not in feed.succeeded:
                feed.succeeded.append(run.job_id)
            self._commit_in_order(parent, feed)
            return
        # The batch failed for good (its retries are spent): fail fast and loud;
        # the checkpoint stays before it, so nothing is lost.  (Younger batches
        # in flight are cancelled with the job; none of them commits.)
        feed.pipeline.remove(run.job_id)
        feed.pipeline.insert(0, run.job_id)
        feed.move(FeedEvent.FAILED, run.job_id)
        feed.position = feed.committed
        self._save(parent.job_id, feed)
        if not parent.terminal:
            self.ctx.fail(
                parent, f"partition {name}: batch {run.job_id} {run.state}: {run.reason}"
            )

    def _commit_in_order(self, parent: OwnedJob, feed: PartitionFeed) -> None:
        """Commit the batches that succeeded, oldest first, up to the first one
        still running: a checkpoint never skips a batch that has not succeeded."""
        while feed.pipeline and feed.pipeline[0] in feed.succeeded:
            run_id = feed.pipeline[0]
            run = self.ctx.jobs[run_id]
            feed.move(FeedEvent.SUCCEEDED, run_id)
            feed.succeeded.remove(run_id)
            feed.committed = run.env["P2PNODE_BATCH_LAST"]
            feed.entries += int(run.env.get("P2PNODE_BATCH_COUNT", "0"))
            self.out.notify(
                "checkpoint_committed",
                job_id=parent.job_id,
                partition=feed.name,
                run_id=run_id,
                checkpoint=feed.committed,
            )
            self.ctx.forget(run_id)  # its record is no longer needed
        self._save(parent.job_id, feed)

    def on_stop(self, job: OwnedJob, reason: str) -> None:
        for feed in self.feeds.get(job.job_id, {}).values():
            for run_id in feed.pipeline:
                if run_id not in feed.succeeded:
                    self.ctx.cancel(run_id, f"stream job stopped: {reason}")

    def sources(self) -> list[dict[str, Any]]:
        """What the owner's connector should read: one row per partition of a
        live micro-batch job, ``busy`` while a batch is in flight."""
        rows = []
        for job_id, feeds in self.feeds.items():
            job = self.ctx.jobs.get(job_id)
            if job is None or job.terminal:
                continue
            source = job.spec.get("source") or {}
            batch = job.spec.get("batch") or {}
            for feed in feeds.values():
                rows.append(
                    {
                        "job_id": job_id,
                        "partition": feed.name,
                        "type": source.get("type", ""),
                        "url": source.get("url", ""),
                        "streams": list(feed.streams),
                        "position": feed.position,
                        "busy": len(feed.pipeline) >= max_in_flight(job.spec),
                        "max_entries": int(batch.get("max_entries", 1000)),
                        "max_wait_ms": int(batch.get("max_wait", 5000)),
                    }
                )
        return rows

    # --- queries -----------------------------------------------------------------

    def describe(self, job: OwnedJob) -> list[dict[str, Any]]:
        names = partition_names(job.spec)
        if job.slots:
            rows = []
            for slot, name in zip(job.slots, names, strict=False):
                current = slot.current
                rows.append(
                    {
                        "partition": name,
                        "state": slot.state.value,
                        "holder": current.node if current and slot.leased else "",
                        "epoch": slot.epoch,
                        "checkpoint": slot.checkpoint,
                        "lag": slot.lag if slot.lag >= 0 else None,
                    }
                )
            return rows
        return [
            {
                "partition": feed.name,
                "streams": feed.streams,
                "checkpoint": feed.committed,
                "position": feed.position,
                "in_flight": feed.in_flight,
                "batches": feed.batches,
                "entries": feed.entries,
            }
            for feed in self.feeds.get(job.job_id, {}).values()
        ]
