"""Invariant checkers for stream jobs (consume and micro_batch modes).

Fed like the other checkers: the cores' ``Notify`` actions, the simulated
executor's ground truth (which execution runs where, what a consumer really
processed: :meth:`simnet.engine.Observer.on_consumed`), node starts and
crashes and the harness's fault events; the :class:`World` answers who can
reach whom.  Positions are entry counts (:mod:`simnet.sources`): checkpoint
``c`` of a partition means its entries ``1..c`` are processed.

Consume mode (job ``J``, partition ``p`` = slot ``s``, owner ``o``):

* **ST1 fencing**: every ``checkpoint_committed`` of ``(J, p)`` names the
  execution holding the newest epoch granted for ``(J, s)`` at that moment:
  a commit from a superseded execution never lands.
* **ST2 monotonic**: the committed checkpoints of ``(J, p)``, over the whole
  run (owner crashes and restarts included), are integers that never
  decrease; and never exceed what the committing execution reported (a
  commit is a position its consumer actually reached).
* **ST3 resume**: an execution holding the newest epoch of ``(J, s)`` starts
  from the last checkpoint committed for ``p`` (``P2PNODE_CHECKPOINT``);
  in particular it never starts past an entry nobody processed.
* **ST4 at-least-once** (:meth:`StreamInvariants.finish`, once the faults
  stopped and the run settled): every entry ``1..N`` of every partition was
  processed by some consumer and the committed checkpoint is ``N``;
  duplicates (entries processed more than once) are counted and reported.
* **ST5 cut-off consumers stop**: an execution of ``J`` whose node cannot
  reach ``o`` (``o`` down, or a partition between them) continuously from
  ``t`` has ended (executor truth) by ``t + lease_ttl + lease_grace +
  slack``.  The fencing latency (end minus ``t``) is measured.  Its later
  commits are rejected by ST1 (a new epoch was granted meanwhile).

Micro-batch mode (batch runs ``J~p~n`` over entries ``first..last``):

* **MB1 exactly-once commits**: the batches committed for ``(J, p)`` are
  contiguous and disjoint: each starts right after the previous one's last
  entry (the first at entry 1), its ``checkpoint`` is its last entry, and no
  run is committed twice.
* **MB2 at-least-once** (finish): every entry ``1..N`` is in a committed
  batch, and in at least one *successful* batch execution (executor truth),
  unless the stream failed with a reason.
* **MB3 exactly once when no fault touched it**: an entry in two successful
  batch executions is a duplicate; duplicates are allowed only when a fault
  (crash, restart, partition, heal, or a lossy network) happened between the
  batch's creation and its commit.  Every duplicate is counted and reported.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from protocols.config import Timings
from protocols.events import StartExecution
from protocols.stream import partition_names
from simnet.checker import Checker, handles
from simnet.invariants import TERMINAL, split_execution_id
from simnet.sources import Consumer, SimSource, position, source_of_spec


class World(Protocol):
    def connected(self, a: str, b: str) -> bool: ...


class StreamJob:
    __slots__ = ("accepted_at", "cancelled", "mode", "owner", "partitions", "source", "state")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.mode = str(spec.get("mode", "consume"))
        self.partitions = partition_names(dict(spec))
        self.source: SimSource = source_of_spec(spec)
        self.owner = ""
        self.state = "queued"
        self.accepted_at: float | None = None
        self.cancelled = False


class Live:
    """A running execution of a stream job (consumer or batch)."""

    __slots__ = ("cut_since", "epoch", "job", "node", "partition", "reported", "slot",
                 "start_pos", "started")

    def __init__(self, node: str, job: str, slot: int, epoch: int, partition: str,
                 start_pos: int, now: float) -> None:
        self.node, self.job, self.slot, self.epoch = node, job, slot, epoch
        self.partition = partition
        self.start_pos = start_pos
        self.reported = start_pos  # the highest position it reported
        self.started = now
        self.cut_since: float | None = None


def _merge(intervals: list[list[int]], lo: int, hi: int) -> None:
    """Add [lo, hi) to a sorted list of disjoint intervals."""
    out: list[list[int]] = []
    placed = False
    for a, b in intervals:
        if b < lo:
            out.append([a, b])
        elif hi < a:
            if not placed:
                out.append([lo, hi])
                placed = True
            out.append([a, b])
        else:
            lo, hi = min(lo, a), max(hi, b)
    if not placed:
        out.append([lo, hi])
    intervals[:] = sorted(out)


class StreamInvariants(Checker):
    def __init__(
        self,
        timings: Timings,
        schedule: Callable[[float, Callable[[], None]], None],
        world: World,
        violate: Callable[[float, str], None],
        slack: float = 1.0,
    ) -> None:
        super().__init__(violate)
        self.t = timings
        self._schedule = schedule
        self.world = world
        self.slack = slack
        self.lossy = False  # the network loses frames: every batch counts as touched
        self.jobs: dict[str, StreamJob] = {}
        self.up: dict[str, bool] = {}
        self.fault_times: list[float] = []
        # consume mode
        self.newest: dict[tuple[str, int], tuple[int, str]] = {}  # (job, slot) -> epoch, eid
        self.committed: dict[tuple[str, str], int] = {}  # (job, partition) -> position
        self.commits = 0
        self.refused = 0
        self.processed: dict[tuple[str, str], list[list[int]]] = {}  # [lo, hi) of entries-1
        self.processed_total: dict[tuple[str, str], int] = {}
        self.live: dict[tuple[str, str], Live] = {}  # (node, execution id) -> live
        self.fencing: list[tuple[float, str, float]] = []  # (latency, execution, cut at)
        # micro-batch mode: run id -> (job, partition, first, last, created at)
        self.batches: dict[str, tuple[str, str, int, int, float]] = {}
        self.batch_ok: dict[str, int] = {}  # run id -> successful executions
        self.batch_commits: dict[str, float] = {}  # run id -> committed at
        self.batch_duplicates: list[str] = []  # runs with > 1 successful execution
        self._reported_ended: dict[str, int] = {}  # ended execution -> highest position
        self.run_created: dict[str, float] = {}  # micro-batch run -> created at

    # --- reporting -------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        consume_dups = sum(self.duplicates().values())
        return {
            "stream_jobs": len(self.jobs),
            "commits": self.commits,
            "refused": self.refused,
            "fencing_max": max(self.fencing, default=None),
            "fencing_mean": (round(sum(f[0] for f in self.fencing) / len(self.fencing), 3)
                             if self.fencing else None),
            "fencings": len(self.fencing),
            "fencing_bound": self.t.lease_ttl + self.t.lease_grace,
            "consume_duplicates": consume_dups,
            "micro_batches": len(self.batches),
            "micro_duplicate_batches": len(self.batch_duplicates),
            "micro_duplicate_entries": sum(self.batches[r][3] - self.batches[r][2] + 1
                                           for r in self.batch_duplicates),
        }

    def duplicates(self) -> dict[tuple[str, str], int]:
        """Entries processed more than once, per consume-mode partition."""
        out = {}
        for key, total in self.processed_total.items():
            unique = sum(b - a for a, b in self.processed.get(key, []))
            out[key] = total - unique
        return out

    # --- what the harness tells us ----------------------------------------------------

    def expect(self, job_id: str, spec: Mapping[str, Any]) -> None:
        if spec.get("type") == "stream":
            self.jobs[job_id] = StreamJob(spec)

    def cancelled(self, job_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None:
            job.cancelled = True

    def on_fault(self, now: float, what: str = "") -> None:
        self.fault_times.append(now)
        self._recut(now)

    def on_start(self, node: str, now: float) -> None:
        self.up[node] = True

    def on_crash(self, node: str, now: float) -> None:
        self.up[node] = False
        for key in [k for k in self.live if k[0] == node]:
            self._ended(key, now)

    # --- notify stream -------------------------------------------------------------------


    @handles("job_submitted")
    def _job_submitted(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        if "~" in jid and jid.partition("~")[0] in self.jobs:
            self.run_created.setdefault(jid, now)  # a micro-batch run
            return
        job = self.jobs.get(jid)
        if job is not None and job.accepted_at is None:
            job.owner, job.accepted_at = node, now

    @handles("job_state")
    def _job_state(self, node: str, d: dict[str, Any], now: float) -> None:
        job = self.jobs.get(str(d.get("job_id")))
        if job is not None and job.state not in TERMINAL:
            job.state = str(d.get("state"))

    @handles("lease_granted")
    def _lease_granted(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        if jid not in self.jobs:
            return
        key = (jid, int(d.get("slot", 0)))
        epoch = int(d.get("epoch", 0))
        prev = self.newest.get(key)
        if prev is None or epoch > prev[0]:
            self.newest[key] = (epoch, str(d.get("execution_id")))

    @handles("checkpoint_committed")
    def _committed(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        job = self.jobs.get(jid)
        if job is None:
            return
        self.commits += 1
        part = str(d.get("partition"))
        value = str(d.get("checkpoint"))
        pos = position(value)
        key = (jid, part)
        if node != job.owner:
            self.violate(now, f"stream {jid}: {node} committed {value!r} for partition {part}, "
                              f"the owner is {job.owner}")
        if pos is None:
            self.violate(now, f"stream {jid}/{part}: committed checkpoint {value!r} is not a "
                              f"position")
            return
        before = self.committed.get(key, 0)
        if pos < before:
            self.violate(now, f"stream {jid}/{part}: checkpoint moved backwards from {before} "
                              f"to {pos} (ST2)")
        if job.mode == "micro_batch":
            self._batch_committed(jid, part, str(d.get("run_id")), pos, before, now)
        else:
            self._consumer_committed(jid, job, part, d, pos, now)
        self.committed[key] = max(before, pos)

    def _consumer_committed(self, jid: str, job: StreamJob, part: str, d: dict[str, Any],
                            pos: int, now: float) -> None:
        eid = str(d.get("execution_id"))
        epoch = int(d.get("epoch", -1))
        slot = job.partitions.index(part) if part in job.partitions else -1
        newest = self.newest.get((jid, slot))
        if newest is None or newest != (epoch, eid):
            self.violate(now, f"stream {jid}/{part}: checkpoint {pos} committed from {eid} "
                              f"(epoch {epoch}) but the newest lease is "
                              f"{newest[1] if newest else 'none'} (ST1: a superseded "
                              f"execution's commit landed)")
        # Its runs (``<execution>#<n>`` once rolled over at run_for) reached this far.
        reached = max((lv.reported for (n, e), lv in self.live.items()
                       if e.partition("#")[0] == eid), default=None)
        if reached is None:
            reached = self._reported_ended.get(eid)
        if reached is not None and pos > reached:
            self.violate(now, f"stream {jid}/{part}: checkpoint {pos} committed for {eid}, "
                              f"which only reached {reached} (ST2)")

    def _batch_committed(self, jid: str, part: str, run: str, pos: int, before: int,
                         now: float) -> None:
        batch = self.batches.get(run)
        if run in self.batch_commits:
            self.violate(now, f"stream {jid}/{part}: batch {run} committed twice (MB1)")
            return
        self.batch_commits[run] = now
        if batch is None:
            self.violate(now, f"stream {jid}/{part}: committed batch {run} never executed")
            return
        _, _, first, last, _ = batch
        if first != before + 1 or last != pos:
            self.violate(now, f"stream {jid}/{part}: batch {run} covers {first}..{last} but "
                              f"the checkpoint was {before} and becomes {pos} (MB1: batches "
                              f"must be contiguous and disjoint)")
        if self.batch_ok.get(run, 0) < 1:
            self.violate(now, f"stream {jid}/{part}: batch {run} committed without a "
                              f"successful execution (MB2)")

    @handles("checkpoint_refused")
    def _refused(self, node: str, d: dict[str, Any], now: float) -> None:
        if str(d.get("job_id")) in self.jobs:
            self.refused += 1

    # --- executor ground truth --------------------------------------------------------------

    def on_exec_start(self, node: str, action: StartExecution, now: float) -> None:
        parsed = split_execution_id(action.execution_id)
        if parsed is None:
            return
        jid, slot, epoch = parsed
        env = action.env
        job = self.jobs.get(jid)
        if job is not None:  # a consumer
            part = env.get("P2PNODE_PARTITION", "")
            value = env.get("P2PNODE_CHECKPOINT", "")
            start = position(value)
            if start is None:
                self.violate(now, f"stream {jid}/{part}: {action.execution_id} starts from "
                                  f"{value!r}, not a position")
                start = 0
            self._check_resume(jid, slot, epoch, part, start, action.execution_id, now)
            self._track(node, action.execution_id, jid, slot, epoch, part, start, now)
            return
        parent, sep, _ = jid.partition("~")
        job = self.jobs.get(parent) if sep else None
        if job is None or "P2PNODE_BATCH_LAST" not in env:
            return
        part = env.get("P2PNODE_PARTITION", "")
        first = position(env.get("P2PNODE_BATCH_FIRST", ""))
        last = position(env.get("P2PNODE_BATCH_LAST", ""))
        if first is None or last is None or first > last:
            self.violate(now, f"stream {parent}/{part}: batch {jid} has a bad range "
                              f"{env.get('P2PNODE_BATCH_FIRST')!r}..{env.get('P2PNODE_BATCH_LAST')!r}")
            return
        known = self.batches.get(jid)
        if known is not None and known[2:4] != (first, last):
            self.violate(now, f"stream {parent}/{part}: batch {jid} covered {known[2]}..{known[3]}"
                              f", now {first}..{last}")
        if known is None:
            self.batches[jid] = (parent, part, first, last, self.run_created.get(jid, now))
        self._track(node, action.execution_id, parent, slot, epoch, part, first - 1, now)

    def _check_resume(self, jid: str, slot: int, epoch: int, part: str, start: int,
                      eid: str, now: float) -> None:
        committed = self.committed.get((jid, part), 0)
        newest = self.newest.get((jid, slot))
        # A run rolled over in place (``<execution>#<n>``) holds its execution's epoch.
        if newest is not None and newest[1] == eid.partition("#")[0] and start != committed:
            self.violate(now, f"stream {jid}/{part}: {eid} (the newest epoch) starts from "
                              f"{start}, the last committed checkpoint is {committed} (ST3)")
        covered = self._prefix((jid, part))
        if start > covered:
            self.violate(now, f"stream {jid}/{part}: {eid} starts after entry {start} but "
                              f"entries {covered + 1}..{start} were never processed (ST3)")

    def _prefix(self, key: tuple[str, str]) -> int:
        intervals = self.processed.get(key)
        if not intervals or intervals[0][0] > 0:
            return 0
        return intervals[0][1]

    def _track(self, node: str, eid: str, jid: str, slot: int, epoch: int, part: str,
               start: int, now: float) -> None:
        live = Live(node, jid, slot, epoch, part, start, now)
        self.live[(node, eid)] = live
        self._check_cut((node, eid), live, now)

    def on_consumed(self, node: str, execution_id: str, consumer: Consumer,
                    first: int, last: int, now: float) -> None:
        key = (consumer.job, consumer.partition)
        if consumer.job not in self.jobs:
            return
        if last > first:
            _merge(self.processed.setdefault(key, []), first, last)
            self.processed_total[key] = self.processed_total.get(key, 0) + last - first
        live = self.live.get((node, execution_id))
        if live is not None:
            live.reported = max(live.reported, last)

    def on_exec_end(self, node: str, execution_id: str, status: str, now: float) -> None:
        parsed = split_execution_id(execution_id)
        if parsed is not None and status == "succeeded" and parsed[0] in self.batches:
            run = parsed[0]
            self.batch_ok[run] = self.batch_ok.get(run, 0) + 1
            if self.batch_ok[run] == 2:
                self.batch_duplicates.append(run)
        self._ended((node, execution_id), now)

    def _ended(self, key: tuple[str, str], now: float) -> None:
        live = self.live.pop(key, None)
        if live is None:
            return
        base = key[1].partition("#")[0]
        self._reported_ended[base] = max(live.reported, self._reported_ended.get(base, 0))
        if live.cut_since is not None:
            self.fencing.append((round(now - live.cut_since, 3), key[1], live.cut_since))

    # --- cut-off executions (ST5) ---------------------------------------------------------------

    def _cut(self, live: Live) -> bool:
        job = self.jobs.get(live.job)
        if job is None or not job.owner:
            return False
        return not self.up.get(job.owner, False) or not self.world.connected(live.node,
                                                                                job.owner)

    def _check_cut(self, key: tuple[str, str], live: Live, now: float) -> None:
        if not self._cut(live):
            live.cut_since = None
            return
        if live.cut_since is not None:
            return
        live.cut_since = since = now
        bound = self.t.lease_ttl + self.t.lease_grace + self.slack

        def check() -> None:
            current = self.live.get(key)
            if current is live and live.cut_since == since:
                owner = self.jobs[live.job].owner
                self.violate(since + bound, f"stream {live.job}: {key[0]} still runs {key[1]} "
                                            f"{bound:g}s after it lost its owner {owner} at "
                                            f"t={since:.3f}s (ST5: TTL + grace)")
        self._schedule(since + bound, check)

    def _recut(self, now: float) -> None:
        for key, live in list(self.live.items()):
            self._check_cut(key, live, now)

    # --- end of run ------------------------------------------------------------------------------

    def finish(self, now: float) -> None:
        """ST4 / MB2 / MB3 once the faults stopped and the run settled."""
        for run in self.batch_duplicates:
            parent, part, first, last, created = self.batches[run]
            end = self.batch_commits.get(run, now)
            if self.lossy or any(created <= t <= end for t in self.fault_times):
                continue
            self.violate(now, f"stream {parent}/{part}: entries {first}..{last} landed in "
                              f"{self.batch_ok[run]} successful executions of batch {run} "
                              f"although no fault touched it (MB3)")
            return
        for jid in sorted(self.jobs):
            job = self.jobs[jid]
            if job.accepted_at is None or (job.state == "failed" and job.mode == "micro_batch"):
                continue
            n = job.source.entries
            for part in job.partitions:
                key = (jid, part)
                committed = self.committed.get(key, 0)
                if job.mode == "micro_batch":
                    missing = self._missing_batches(jid, part, n)
                else:
                    covered = self._prefix(key)
                    missing = f"entries {covered + 1}..{n} never processed" if covered < n else ""
                if committed != n or missing:
                    self.violate(now, f"stream {jid}/{part} ({job.mode}) after settling: "
                                      f"checkpoint {committed} of {n} entries"
                                      f"{'; ' + missing if missing else ''} (ST4/MB2)")
                    return

    def _missing_batches(self, jid: str, part: str, n: int) -> str:
        ranges = sorted((b[2], b[3]) for r, b in self.batches.items()
                        if b[0] == jid and b[1] == part and self.batch_ok.get(r, 0) > 0)
        reached = 0
        for first, last in ranges:
            if first > reached + 1:
                break
            reached = max(reached, last)
        return f"entries {reached + 1}..{n} in no successful batch" if reached < n else ""
