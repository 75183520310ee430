"""One simulated run of a workload under faults -> a report.

Phases (all in virtual time):

1. *fault phase*, ``[0, duration]``: nodes start at t=0, jobs are submitted
   at seeded times over ``submit_window`` starting at ``warmup``; crashes and
   partitions are injected as Poisson processes.  The phase ends early once
   every job is terminal.
2. *drain*: faults stop, partitions heal, crashed nodes restart; the run goes
   on until every job is terminal or ``drain`` seconds passed (and at least
   ``settle`` seconds, so restarted nodes get to speak).
3. final checks: ownership, lost jobs, hung jobs (see invariants).

Workloads with long-running kinds (``kinds``: daemons, services, cron jobs
that never end by themselves) run differently:

* the last ``joiners`` nodes (default: one in ten, at least one) start late,
  at seeded times in the minute after the submit window: they join running
  daemons;
* nodes are sized so that capacity never blocks a daemon (cpu 16, 32 GiB,
  64 executions): "a matching node" then means a node with the labels;
* the fault phase lasts the whole ``duration`` (it cannot end early);
* the liveness bounds of :mod:`simnet.kind_invariants` are enforced during
  the fault phase only without ``loss`` (with loss they are measured);
* *steady state*: the faults stop, and so do loss, duplication and
  reordering (the network "calms": the bounds are enforced from then on);
  the run goes on for the larger of the daemon / service bounds plus
  ``settle``, then checks the steady state (one daemon execution per
  matching node, N executions per service) and the cron coverage (no
  scheduled time silently skipped);
* *stop*: every daemon, service and cron job is cancelled; the run drains
  until every job is terminal, then checks that no execution runs anywhere
  once TTL + grace passed, and last the ops coverage (O2).

Fault rate units:

* ``crash_rate``: expected crashes **per node per virtual minute**; a crashed
  node restarts after a seeded downtime uniform in ``[5 s, 60 s]``.
* ``partition_rate``: expected partitions **per cluster per virtual minute**;
  a partition isolates a seeded random set of 1..N/2 nodes from the rest for
  a seeded duration uniform in ``[5 s, 60 s]`` (one partition at a time).
* ``frame_crash``: probability that a node sending a handover frame
  (``handover_offer``, ``handover_accept``, ``handover_commit``,
  ``handover_ack``) crashes right before the frame leaves or right after
  (a seeded coin), during the fault phase; it restarts after 2-30 s.  This
  puts crashes at every step of a chain handover.

Harsh modes (all seeded; off by default, and then no extra random draw
happens, so older seeds keep their trace):

* ``latency_tail``: probability that a frame copy is held 1-8 s (past the
  lease grace and a renewal period); ``reorder_delay`` widens reordering;
* ``pause_rate``: expected pauses **per node per virtual minute** (SIGSTOP,
  GC): the node freezes for a seeded 0.5-25 s, then resumes with stale timers
  and a queue of frames;
* ``oneway_rate``: expected one-way link failures **per cluster per virtual
  minute**: frames from one node to another are lost for 5-60 s while the
  other direction works (several may overlap);
* ``clock_skew``: every node's clock runs at its own seeded rate in
  ``1 +- clock_skew``;
* ``byzantine``: share of nodes that lie (:mod:`simnet.byzantine`);
* ``calm_after``: the *calm* mode.  Faults (and loss, duplication,
  reordering, tails, pauses, lies) stop at that virtual time; every healthy
  job must then complete within ``liveness_bound`` (L3 of
  :mod:`simnet.liveness`).  Without it the fault phase ends early once all
  jobs are terminal, and the drain keeps the lossy network.

The ``stream``, ``chain`` and ``dag`` workloads add their checkers' end
checks: a stream job's source must be consumed completely (at-least-once,
:meth:`simnet.stream_invariants.StreamInvariants.finish`) at the steady
state; the chain checker's final log and owner checks run after the drain, and its
progress check (CH5) from the end of the fault phase on.
Their measured numbers (takeover and fencing latencies, duplicates) are in
the report under ``stream`` / ``chain`` / ``dag``.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import itertools
import random
import resource
import time
from collections.abc import Iterator
from typing import Any

import attrs

from simnet.byzantine import Adversary
from simnet.engine import derive_seed
from simnet.harness import Cluster
from simnet.invariants import LONG_RUNNING_KINDS, TERMINAL
from simnet.kind_invariants import default_bounds
from simnet.network import DIRECTORY_TYPES, NetConfig
from simnet.recorder import RunRecorder, attach
from simnet.timings import draw_timings, envelope, every_draw
from simnet.workload import WORKLOADS

DOWNTIME = (5.0, 60.0)
PARTITION_LENGTH = (5.0, 60.0)
HANDOVER_FRAMES = ("handover_offer", "handover_accept", "handover_commit", "handover_ack")


@attrs.frozen(kw_only=True)
class RunOptions:
    nodes: int = 20
    jobs: int = 100
    seed: int = 0
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    crash_rate: float = 0.0  # per node per virtual minute
    partition_rate: float = 0.0  # per cluster per virtual minute
    duration: float = 3600.0  # fault phase, virtual seconds
    warmup: float = 2.0  # directory bootstrap before the first job
    submit_window: float = 60.0
    drain: float = 1800.0
    settle: float = 30.0
    check_interval: float = 30.0  # ownership check period (virtual s)
    # Livelock backstop; None = 20,000 + 2,000 per job and per node.
    max_events: int | None = None
    workload: str = "mixed"  # mixed | plain | kinds | stream | chain | dag (simnet.workload)
    joiners: int | None = None  # nodes starting late; None: 0, or nodes // 10 for kinds
    frame_crash: float = 0.0  # per handover frame: crash its sender (fault phase only)
    timings: str = "uniform"  # uniform | mixed: every node's own Timings (simnet.timings)
    latency_tail: float = 0.0  # per frame copy: held back 1-8 s
    reorder_delay: float = 0.25  # max extra delay of a reordered copy (s)
    pause_rate: float = 0.0  # per node per virtual minute
    clock_skew: float = 0.0  # clock rates in 1 +- clock_skew
    byzantine: float = 0.0  # share of nodes that lie
    oneway_rate: float = 0.0  # one-way link failures per cluster per virtual minute
    calm_after: float | None = None  # calm mode: every fault stops then
    liveness_bound: float = 300.0  # calm mode: healthy jobs complete within this


PAUSE_LENGTH = (0.5, 25.0)  # a pause outlasts a lease TTL + grace now and then


class FaultInjector:
    """Poisson crash / partition processes driven from one seeded RNG."""

    def __init__(self, cluster: Cluster, opts: RunOptions) -> None:
        self.cluster = cluster
        self.opts = opts
        self.rng = random.Random(derive_seed(opts.seed, "faults"))
        self.active = True
        self.crashes = 0
        self.partitions = 0
        self.partitioned_until = -1.0
        n = len(cluster.ids)
        self.crash_per_s = opts.crash_rate * n / 60.0
        self.partition_per_s = opts.partition_rate / 60.0
        self.pause_per_s = opts.pause_rate * n / 60.0
        self.oneway_per_s = opts.oneway_rate / 60.0
        self.oneway = 0
        self.oneway_rng = random.Random(derive_seed(opts.seed, "oneway"))
        self.pauses = 0
        self.pause_rng = random.Random(derive_seed(opts.seed, "pauses"))
        self.horizon = opts.duration if opts.calm_after is None else opts.calm_after
        self.stopped_at: float | None = None  # when stop() ended the fault phase

    def start(self) -> None:
        if self.crash_per_s > 0:
            self._next_crash()
        if self.partition_per_s > 0:
            self._next_partition()
        if self.pause_per_s > 0:
            self._next_pause()
        if self.oneway_per_s > 0:
            self._next_oneway()

    def _next_oneway(self) -> None:
        at = self.cluster.now + self.oneway_rng.expovariate(self.oneway_per_s)
        if at <= self.horizon:
            self.cluster.at(at, self._oneway)

    def _oneway(self) -> None:
        if not self.active:
            return
        ids = self.cluster.ids
        if len(ids) >= 2:
            src, dst = self.oneway_rng.sample(ids, 2)
            self.cluster.block(src, dst, self.oneway_rng.uniform(*PARTITION_LENGTH))
            self.oneway += 1
        self._next_oneway()

    def _next_pause(self) -> None:
        at = self.cluster.now + self.pause_rng.expovariate(self.pause_per_s)
        if at <= self.horizon:
            self.cluster.at(at, self._pause)

    def _pause(self) -> None:
        if not self.active:
            return
        victim = self.pause_rng.choice(self.cluster.ids)
        length = self.pause_rng.uniform(*PAUSE_LENGTH)
        if self.cluster.is_up(victim):
            self.cluster.pause(victim, length)
            self.pauses += 1
        self._next_pause()

    def _next_crash(self) -> None:
        at = self.cluster.now + self.rng.expovariate(self.crash_per_s)
        if at <= self.horizon:
            self.cluster.at(at, self._crash)

    def _crash(self) -> None:
        if not self.active:
            return
        up = [nid for nid in self.cluster.ids if self.cluster.is_up(nid)]
        if up:
            victim = self.rng.choice(up)
            self.cluster.crash(victim)
            self.crashes += 1
            back = self.cluster.now + self.rng.uniform(*DOWNTIME)
            self.cluster.at(back, lambda: self._restart(victim))
        self._next_crash()

    def _restart(self, nid: str) -> None:
        if not self.cluster.is_up(nid):
            self.cluster.restart(nid)

    def _next_partition(self) -> None:
        at = self.cluster.now + self.rng.expovariate(self.partition_per_s)
        if at <= self.horizon:
            self.cluster.at(at, self._partition)

    def _partition(self) -> None:
        if not self.active:
            return
        ids = self.cluster.ids
        if self.cluster.now >= self.partitioned_until and len(ids) >= 2:
            size = self.rng.randint(1, max(1, len(ids) // 2))
            island = sorted(self.rng.sample(ids, size))
            self.cluster.partition(island)
            self.partitions += 1
            length = self.rng.uniform(*PARTITION_LENGTH)
            self.partitioned_until = self.cluster.now + length
            until = self.partitioned_until
            self.cluster.at(until, lambda: self._heal(until))
        self._next_partition()

    def _heal(self, until: float) -> None:
        if self.active and self.partitioned_until == until:
            self.cluster.heal()

    def stop(self) -> None:
        """Drain: no more faults, heal, bring every crashed node back (joiners
        that did not join yet still join at their time)."""
        self.active = False
        self.stopped_at = self.cluster.now
        self.cluster.stop_frame_crashes()
        if self.cluster.adversary is not None:
            self.cluster.adversary.stop()
        self.cluster.heal()
        for nid in self.cluster.ids:
            if nid in self.cluster.ever_started and not self.cluster.is_up(nid):
                self.cluster.restart(nid)


BIG_NODE = {"cpu": 16.0, "memory": 32 * 2**30, "max_executions": 64}
JOIN_SPREAD = 60.0  # joiners start within this many seconds after the submit window
EVENTS_PER_NODE_SECOND = 60  # livelock budget of long-running workloads, per node


def _big_nodes(i: int, fields: dict[str, Any]) -> dict[str, Any]:
    return {**fields, **BIG_NODE}


# The cyclic garbage collector's thresholds during a run.  A run allocates
# millions of short-lived objects (heap entries, frames, events) that reference
# counting frees, while its live state grows with the node count: with the
# default thresholds, each full collection walks all of it (15 of them, ~14 %
# of a 1,000-node run, against ~5 % at 100 nodes).  Young cycles are still
# collected (a larger first generation: fewer, cheaper passes); the full
# collections wait until the run ends.  No effect on a run's outcome.
RUN_GC_THRESHOLDS = (20_000, 20, 1_000_000_000)


@contextlib.contextmanager
def _quiet_gc() -> Iterator[None]:
    before = gc.get_threshold()
    gc.set_threshold(*RUN_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)


def run_scenario(opts: RunOptions) -> dict[str, Any]:
    with _quiet_gc():
        return _run_scenario(opts, None)


def run_recorded(opts: RunOptions) -> tuple[dict[str, Any], RunRecorder]:
    """``run_scenario`` with a :class:`simnet.recorder.RunRecorder` watching
    (for ``--report``): the same run, the same report, plus what it recorded."""
    recorded: list[RunRecorder] = []
    with _quiet_gc():
        report = _run_scenario(opts, recorded)
    return report, recorded[0]


def _units_of_work(spec: dict[str, Any]) -> int:
    return max(1, len(spec.get("stages") or ()), len(spec.get("tasks") or ()))


def _run_scenario(opts: RunOptions, recorded: list[RunRecorder] | None) -> dict[str, Any]:
    wall0 = time.perf_counter()
    net = NetConfig(loss=opts.loss, duplicate=opts.duplicate, reorder=opts.reorder,
                    reorder_delay=opts.reorder_delay, tail=opts.latency_tail)
    wl_rng = random.Random(derive_seed(opts.seed, "workload"))
    times = sorted(opts.warmup + wl_rng.random() * opts.submit_window for _ in range(opts.jobs))
    make_job = WORKLOADS[opts.workload]
    specs = [make_job(wl_rng, i) for i in range(len(times))]
    long = any(spec.get("type") in LONG_RUNNING_KINDS for spec in specs)
    default_joiners = max(1, opts.nodes // 10) if long and opts.nodes >= 3 else 0
    joiners = opts.joiners if opts.joiners is not None else default_joiners
    joiners = max(0, min(joiners, opts.nodes - 1))  # n0000 (everyone's bootstrap) starts
    ids = [f"n{i:04d}" for i in range(opts.nodes)]
    timings = envelope(every_draw(opts.timings, opts.seed, ids))  # the checkers' bounds
    own = functools.partial(draw_timings, opts.timings, opts.seed)
    byzantine = byzantine_nodes(opts)
    cluster = Cluster(opts.nodes, opts.seed, net=net, timings=timings, node_timings=own,
                      check_interval=opts.check_interval, bounds=default_bounds(timings),
                      configure=_big_nodes if long else None, clock_skew=opts.clock_skew,
                      byzantine=byzantine)
    if byzantine:
        cluster.adversary = Adversary(cluster)
        cluster.fanout.observers.append(cluster.adversary)
    bounds = cluster.kinds.bounds
    # Liveness bounds hold on a network that does not lose messages; with loss
    # the latencies are geometric: measured, and enforced once the network calms.
    cluster.kinds.enforce = opts.loss == 0.0
    cluster.kinds.clock_skew = opts.clock_skew
    # (Lies are no excuse: honest nodes must not lose a lease to a liar.)
    cluster.liveness.node_faults = bool(
        opts.crash_rate or opts.partition_rate or opts.pause_rate or opts.oneway_rate
        or opts.frame_crash or opts.latency_tail)
    cluster.liveness.check_expiries = not cluster.liveness.node_faults and opts.loss <= 0.3
    # A chain's stages (a DAG's tasks) each take an auction, a lease and a
    # handover, so the budget counts units of work, not jobs: with jobs alone,
    # 20 chains of 5-20 stages at 30 % loss ran past it (seed 30 needs
    # 114,125 events) with no livelock and no violation.
    budget = 20_000 + 2_000 * (sum(map(_units_of_work, specs)) + opts.nodes)
    if long:
        horizon = opts.duration + 2 * max(bounds.daemon, bounds.service) + opts.drain
        budget += int(EVENTS_PER_NODE_SECOND * opts.nodes * horizon)
    cluster.engine.max_events = opts.max_events if opts.max_events is not None else budget
    recorder = attach(cluster) if recorded is not None else None
    for spec, at in zip(specs, times, strict=True):
        jid = cluster.submit(spec, at=at)
        if recorder is not None:
            recorder.note_submit(jid, at)
    late = cluster.ids[len(cluster.ids) - joiners:] if joiners else []
    cluster.start([nid for nid in cluster.ids if nid not in late])
    join_rng = random.Random(derive_seed(opts.seed, "joiners"))
    first_join = opts.warmup + opts.submit_window
    spread = max(0.0, min(JOIN_SPREAD, opts.duration - first_join))
    for nid in late:
        cluster.at(first_join + join_rng.random() * spread, functools.partial(cluster.join, nid))
    faults = FaultInjector(cluster, opts)
    faults.start()
    if opts.frame_crash > 0:
        cluster.frame_crashes_at({t: opts.frame_crash for t in HANDOVER_FRAMES})
    if cluster.adversary is not None:
        cluster.adversary.start()

    if long:
        _run_long(cluster, faults, opts)
    elif opts.calm_after is not None:
        _run_calm(cluster, faults, opts)
    else:
        cluster.run_until_done(opts.duration)
        faults.stop()
        cluster.chain.calm(cluster.now)  # every running chain must progress from now on
        drain_end = cluster.now + opts.drain
        cluster.run_until_done(drain_end)
        cluster.run_until(min(drain_end, cluster.now + opts.settle))
    if recorder is not None and recorded is not None:
        calm = faults.stopped_at if long or opts.calm_after is not None else None
        recorder.finish(cluster.now, faults.stopped_at, calm)
        recorded.append(recorder)
    if cluster.engine.halted is None:
        lost = cluster.inv.finish(cluster.owned(), cluster.now, cluster.submitted,
                                   cluster.down())
    else:  # stopped at the first violation: report what was unfinished then
        lost = [j for j in cluster.must_end if cluster.state_of(j) not in TERMINAL]
    if cluster.engine.halted is None and cluster.chain.jobs:
        cluster.chain.finish(cluster.now)
    wall = time.perf_counter() - wall0
    report = _report(opts, cluster, faults, lost, wall)
    report["joiners"] = joiners
    report["frame_crashes"] = cluster.frame_crashes
    if long:
        report["kinds"] = cluster.kinds.summary()
    if cluster.stream.jobs:
        report["stream"] = cluster.stream.summary()
    if cluster.chain.jobs:
        report["chain"] = cluster.chain.summary()
    if cluster.dag.jobs:
        report["dag"] = cluster.dag.summary()
    return report


def byzantine_nodes(opts: RunOptions) -> list[int]:
    """Seeded byzantine node indices: a share ``opts.byzantine`` of the nodes,
    never n0000 (everyone's bootstrap) and never all but one."""
    if opts.byzantine <= 0 or opts.nodes < 3:
        return []
    count = min(opts.nodes - 2, max(1, round(opts.byzantine * opts.nodes)))
    rng = random.Random(derive_seed(opts.seed, "byzantine-nodes"))
    return sorted(rng.sample(range(1, opts.nodes), count))


def calm_network(cluster: Cluster) -> None:
    """No more loss, duplication, reordering or latency tails."""
    net = cluster.engine.network
    net.config = attrs.evolve(net.config, loss=0.0, duplicate=0.0, reorder=0.0, tail=0.0)


def _run_calm(cluster: Cluster, faults: FaultInjector, opts: RunOptions) -> None:
    """Calm mode: faults until ``calm_after``, then a healthy network on which
    every healthy job must complete within ``liveness_bound`` (L3)."""
    assert opts.calm_after is not None
    cluster.run_until(opts.calm_after)
    faults.stop()
    calm_network(cluster)
    calm_at = cluster.now
    cluster.chain.calm(calm_at)  # every running chain must progress from now on
    cluster.run_until_done(calm_at + opts.liveness_bound)
    if cluster.engine.halted is None:
        cluster.liveness.check_calm(cluster.now, calm_at)
    drain_end = cluster.now + opts.drain
    cluster.run_until_done(drain_end)
    cluster.run_until(min(drain_end, cluster.now + opts.settle))


def _run_long(cluster: Cluster, faults: FaultInjector, opts: RunOptions) -> None:
    """Fault phase, steady state, then stop every long-running job."""
    cluster.run_until(opts.duration)
    faults.stop()
    # The steady state is after *every* fault: the network stops losing,
    # duplicating and reordering frames too.
    calm_network(cluster)
    cluster.kinds.calm(cluster.now)
    bounds = cluster.kinds.bounds
    settle = max(bounds.daemon, bounds.service) + opts.settle
    cluster.run_until(cluster.now + settle)
    if cluster.engine.halted is not None:
        return
    cluster.kinds.check_steady(cluster.now)
    cluster.kinds.check_cron(cluster.now)
    if cluster.engine.halted is not None:
        return
    cluster.stream.finish(cluster.now)  # every stream's source consumed (at-least-once)
    if cluster.engine.halted is not None:
        return
    for jid in cluster.submitted:
        info = cluster.kinds.jobs.get(jid)
        if info is not None and info.kind in LONG_RUNNING_KINDS:
            cluster.cancel(jid, reason="end of the simulation")
    drain_end = cluster.now + opts.drain
    cluster.run_until_done(drain_end)
    t = cluster.timings
    cluster.run_until(min(drain_end, cluster.now + t.lease_ttl + t.lease_grace + 2.0))
    if cluster.engine.halted is None and cluster.all_done():
        running = sorted(eid for (_, eid) in cluster.engine.executor.running)
        if running:
            cluster.inv.violate(cluster.now, f"{len(running)} execution(s) still run after "
                                             f"every job ended: {', '.join(running[:3])}")
    if cluster.engine.halted is None:
        cluster.kinds.check_ops(cluster.now)  # last: it must not cut the run short


def _report(opts: RunOptions, cluster: Cluster, faults: FaultInjector,
            lost: list[str], wall: float) -> dict[str, Any]:
    stats = cluster.engine.stats
    states: dict[str, int] = {}
    for jid in cluster.submitted:
        st = cluster.state_of(jid) or "unknown"
        states[st] = states.get(st, 0) + 1
    jobs = max(1, opts.jobs)
    directory = stats.directory_delivered()
    job_msgs = stats.delivered - directory
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {
        "seed": opts.seed,
        "nodes": opts.nodes,
        "jobs": opts.jobs,
        "completed": states.get("completed", 0),
        "failed": states.get("failed", 0),
        "stopped": states.get("stopped", 0),
        "lost": len(lost),
        "lost_jobs": lost[:20],
        # Why each failed job failed (the first 20): a failure on a healthy
        # network is worth a look even when no invariant names it.
        "failed_reasons": dict(itertools.islice(
            ((jid, cluster.reason_of(jid)) for jid in cluster.submitted
             if cluster.state_of(jid) == "failed"), 20)),
        "invariant_violations": cluster.violations,
        "messages_sent": stats.sent,
        "messages_delivered": stats.delivered,
        "messages_per_job": round(stats.delivered / jobs, 2),
        "job_messages": job_msgs,
        "job_messages_per_job": round(job_msgs / jobs, 2),
        "directory_messages": directory,
        "sent_by_type": dict(sorted(stats.sent_by_type.items())),
        "delivered_by_type": dict(sorted(stats.delivered_by_type.items())),
        "dropped": {"down": stats.dropped_down, "partition": stats.dropped_partition,
                    "unknown_peer": stats.dropped_unknown},
        "crashes": faults.crashes,
        "partitions": faults.partitions,
        "pauses": faults.pauses,
        "oneway_failures": faults.oneway,
        "byzantine_nodes": sorted(cluster.byzantine),
        "byzantine_frames": sum(cluster.adversary.sent.values()) if cluster.adversary else 0,
        "healthy_failed_by_faults": cluster.liveness.fault_failures,
        "executions": cluster.engine.executor.started,
        "notifications": dict(sorted(cluster.inv.counts.items())),
        "events": stats.events,
        "event_budget": int(cluster.engine.max_events),
        "virtual_seconds": round(cluster.now, 3),
        "wall_seconds": round(wall, 3),
        "peak_memory_mb": round(peak_mb, 1),
        "trace_hash": cluster.engine.trace_hash,
        "options": attrs.asdict(opts),
    }


__all__ = ["DIRECTORY_TYPES", "RunOptions", "run_recorded", "run_scenario"]
