"""Invariant checkers for the job kinds beyond batch: cron, daemon, service, ops.

Fed like :mod:`simnet.invariants`: the cores' ``Notify`` actions, the
simulated executor's ground truth (which execution really runs where, from
``StartExecution`` to the executor's end report: a cancelled or fenced
execution counts as running until the executor says it ended), node starts
and crashes, and the harness's fault events.  Checkpoint checks ask a
:class:`World` (labels, partitions) and never a core.

Definitions (``B_x`` are the :class:`Bounds`; all times virtual seconds; a
*fault* is a crash, a restart, a partition, a heal or a node joining; a node
*matches* a job when it computes and carries every label of the job's
constraints -- the kinds workload sizes nodes so that capacity never blocks):

Cron (job ``J``, owner ``o``, schedule times ``t`` in wall ms, converted to
virtual time by ``SIM_WALL_EPOCH``):

* **C1 one run per time**: over the whole run (owner crashes and restarts
  included) at most one ``cron_run_started`` per ``(J, t)``, at most one run
  job ``J@t`` accepted, and at most one history entry per ``(J, t)`` (a
  ``missed`` entry covers the times of its range, ``first_scheduled_ms`` to
  ``scheduled_ms``, and its ``count`` is the number of scheduled times in
  it); a run never starts before its time, nor after ``J`` ended; every
  execution of a run belongs to a started run.
* **C2 no silent skip**: ``t`` is *required* when the owner is up at ``t`` and
  stays up until ``t + margin``, or is down at ``t`` and comes back (to stay
  up for ``margin``) at ``s <= t + max(catch_up, 2 s) - margin`` with no later
  scheduled time by ``s + margin`` (a catch-up runs only the newest due time);
  and ``J`` was not stopped by then.  Every required ``t`` (submitted ``< t
  <=`` the end of the check) has a history entry that is a run (``queued``),
  ``buffered``, or ``skipped`` with a legitimate reason; never ``missed`` and
  never absent.
  Legitimate skips: ``run X still active`` while run ``X`` of ``J`` was
  indeed started and not yet terminal, ``a run is already waiting`` while a
  ``buffered`` time of ``J`` was pending, ``the schedule is suspended`` while
  ``J`` was suspended, ``the cron job was stopped``.
* **C3 no overlap**: with ``overlap: skip`` (and ``buffer_one``) no execution
  of a run of ``J`` starts while an execution of *another* run of ``J`` is
  running anywhere (executor ground truth).
* **C4 newest only**: a time ``t`` is handled (a run, ``buffered`` or
  ``skipped``) only while it is the newest scheduled time due: a catch-up
  after downtime starts at most one run, whatever the overlap policy.

Daemon (job ``D``) and service (job ``S``, count ``N``) -- *deficit
episodes*: ``D`` is short while its owner is down or an up matching node
connected to the owner runs no execution of ``D``; ``S`` is short while fewer
than ``N`` of its executions run.  An episode's *reference* is the later of
its start and the latest fault.

* **D1 / S1 recovery**: every episode ends within ``B_daemon`` /
  ``B_service`` of its reference.  The worst measured recovery (end minus
  reference) is reported.
* **D2 joiners**: a matching node that starts for the first time after ``D``
  was accepted runs ``D`` within ``B_join`` of its start, unless ``D``'s
  owner was down or partitioned from it at the start, or a crash, restart,
  partition or heal happened meanwhile.
* **Steady state** (:meth:`KindInvariants.check_steady`, called by the
  harness after the faults stopped and the bounds passed): exactly one
  execution of ``D`` on every up matching node connected to its owner and
  never two on a node (two on one node are also a violation after
  ``lease_ttl + lease_grace + slack`` at any time); exactly ``N`` executions
  of ``S``.

The bounds hold on a network that does not lose messages (crashes,
partitions, joins, duplication and reordering allowed): with loss, a lost ask
or bid costs a retry round, so latencies are geometric, not bounded.  The
harness sets :attr:`KindInvariants.enforce` accordingly; unenforced latencies
are still measured, and :meth:`KindInvariants.calm` (the network stopped
losing messages: a fault event) enforces them from then on.

All long-running kinds (daemon, service, cron):

* **L1** they never end by themselves: ``completed`` is always a violation,
  ``failed`` / ``stopped`` only after the harness cancelled them (streams are
  long-running too; one may fail by itself *with a reason*: a micro-batch
  whose retries were spent fails its stream).
* **L2** once any job is terminal, its executions end within
  ``lease_ttl + lease_grace + slack`` (of the end, or of their start if a
  late grant started one afterwards).

Ops (job ``P``):

* **O1** every execution runs on a matching node; at most one accepted result
  per node.
* **O2** a ``completed`` ops job ran (an accepted result) on every node that
  matched it, was up and connected to its owner when the owner accepted it,
  and stayed up for the census round (``bid_window + slack``), provided no
  fault happened in that round.  Reported by :meth:`KindInvariants.check_ops`
  (at the end, so that a run goes on checking everything else).
* **O3** on a run with no node fault (no crash, restart, pause or partition;
  loss, duplication and joiners allowed) and no byzantine peer, an ops job
  never fails because a node "did not answer": every node is up, so only lost
  frames could make it silent, and asks repeat until answered.

Every execution of any job also runs on a node matching its labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import attrs

from protocols.config import Timings
from protocols.cron import LATE_SLACK_MS
from protocols.events import StartExecution
from protocols.owner import PINNED_RETRY_MAX, RESTART_BACKOFF_MAX
from protocols.schedule import ScheduledTimes
from simnet.checker import Checker, handles
from simnet.engine import SIM_WALL_EPOCH
from simnet.invariants import LONG_RUNNING_KINDS, TERMINAL

CRON_LATE_SLACK = LATE_SLACK_MS / 1000  # the smallest catch-up window (seconds)


class World(Protocol):
    """What the checkers may ask the harness at a checkpoint."""

    def matches(self, node: str, labels: Mapping[str, str]) -> bool: ...

    def connected(self, a: str, b: str) -> bool: ...


@attrs.frozen(kw_only=True)
class Bounds:
    """Liveness bounds (virtual seconds); see the module docstring.

    :func:`default_bounds` derives them from the timings and the protocol
    constants (``protocols.owner``): a daemon slot whose node was away waits
    at most ``PINNED_RETRY_MAX`` x 1.5 (jitter) = 45 s for its next ask; a
    daemon or service slot whose execution failed backs off at most
    ``RESTART_BACKOFF_MAX`` = 60 s; a lost holder is noticed ``ttl + grace`` =
    12 s after its last renewal; plus an auction (two bid windows and 2 s of
    retries and RTTs) and 5 s of slack.  With the default timings: daemon and
    service 60 + 3 + 5 = 68 s; a joiner ``daemon_scan + 2 x bid_window + 2`` =
    8 s (the next census, its window, the pinned auction, the grant)."""

    daemon: float = 68.0
    service: float = 68.0
    join: float = 8.0
    cron_margin: float = 0.5
    slack: float = 1.0


def default_bounds(t: Timings) -> Bounds:
    auction = 2 * t.bid_window + 2.0  # census/auction windows + a retry round + RTTs
    lost = t.lease_ttl + t.lease_grace
    daemon = max(RESTART_BACKOFF_MAX, 1.5 * PINNED_RETRY_MAX, lost) + auction + 5.0
    service = max(RESTART_BACKOFF_MAX, lost) + auction + 5.0
    # A joiner: the next census (<= daemon_scan), its window, the pinned
    # auction's window, the grant and a few RTTs.
    join = t.daemon_scan + 2 * t.bid_window + 2.0
    return Bounds(daemon=daemon, service=service, join=join)


def parse_run_id(run_id: str) -> tuple[str, int, int, int] | None:
    """Executor id ``"{job}/{slot}/{epoch}[#{restart}]"`` -> (job, slot, epoch,
    restart); None if malformed."""
    base, _, restart = run_id.partition("#")
    parts = base.rsplit("/", 2)
    if len(parts) != 3:
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2]), int(restart) if restart else 0
    except ValueError:
        return None


def run_parent(job_id: str) -> tuple[str, int] | None:
    """``"{cron}@{scheduled_ms}"`` -> (cron job, ms); None for other ids."""
    parent, sep, ms = job_id.rpartition("@")
    if not sep or not ms.isdigit():
        return None
    return parent, int(ms)


def wall_ms(now: float) -> int:
    return round((SIM_WALL_EPOCH + now) * 1000)


def virtual(ms: int) -> float:
    return ms / 1000 - SIM_WALL_EPOCH


class JobInfo:
    __slots__ = ("accepted_at", "cancelled", "census", "count", "ended_at", "kind", "labels",
                 "owner", "schedule", "state")

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.labels: dict[str, str] = {}
        self.schedule: dict[str, Any] = {}
        self.count = 1
        self.owner = ""
        self.accepted_at: float | None = None
        self.state = "queued"
        self.cancelled = False
        self.ended_at: float | None = None
        self.census: list[str] = []  # ops: matching nodes reachable at acceptance


class CronEntry:
    __slots__ = ("outcome", "reason", "run_id", "t")

    def __init__(self, t: float, run_id: str, outcome: str, reason: str) -> None:
        self.t, self.run_id, self.outcome, self.reason = t, run_id, outcome, reason


class KindInvariants(Checker):
    def __init__(
        self,
        timings: Timings,
        schedule: Callable[[float, Callable[[], None]], None],
        world: World,
        violate: Callable[[float, str], None],
        bounds: Bounds | None = None,
    ) -> None:
        super().__init__(violate)
        self.t = timings
        self._schedule = schedule
        self.world = world
        self.bounds = bounds or default_bounds(timings)
        # The liveness bounds (D1, D2, S1) are enforced only on a network that
        # does not lose messages; else they are measured (see calm()).
        self.enforce = True
        self.clock_skew = 0.0  # the nodes' clock rates are within 1 +- this (cron timing slack)
        self.jobs: dict[str, JobInfo] = {}
        self._long: list[str] = []  # accepted daemons and services, in acceptance order
        # Every job ever said to be a daemon, and each job's place in self.jobs:
        # a node's first start looks at these only, not at every job (which
        # made starting N nodes with J jobs cost N x J).
        self._daemons: set[str] = set()
        self._position: dict[str, int] = {}
        # ground truth: job -> {(node, run id): started at}
        self.live: dict[str, dict[tuple[str, str], float]] = {}
        self.live_runs: dict[str, set[str]] = {}  # cron job -> its runs executing now
        self.cron_active: dict[str, set[str]] = {}  # cron job -> runs started, not ended
        self.cron_concurrency: dict[str, int] = {}  # cron job -> most runs executing at once
        self.up: dict[str, bool] = {}
        self.intervals: dict[str, list[list[float]]] = {}  # node -> [[up, down], ...]
        self.last_fault = 0.0
        self.faults = 0
        self.fault_times: list[float] = []
        self.node_faults = 0  # crashes, restarts, pauses, partitions (not joins): O3
        self.strangers: frozenset[str] = frozenset()  # byzantine nodes (set by the harness)
        # cron
        self.cron_started: dict[tuple[str, int], tuple[float, str]] = {}
        self.cron_entries: dict[tuple[str, int], CronEntry] = {}
        self.cron_outcomes: dict[str, int] = {}  # outcome -> count (as first recorded)
        # cron job -> the range (first, newest scheduled ms) of each missed entry
        self.missed: dict[str, list[tuple[int, int]]] = {}
        self.buffered: dict[str, int] = {}  # cron job -> buffered time
        self.suspended: set[str] = set()
        self.ops_results: dict[tuple[str, str], str] = {}  # (ops job, node) -> execution
        self.ops_gaps: list[tuple[float, str, list[str]]] = []  # (completed at, job, skipped)
        # deficit episodes of daemons and services: job -> since
        self.deficit_since: dict[str, float] = {}
        self.deficits: list[float] = []  # durations of deficit episodes
        # (seconds from max(episode start, last fault) to recovery, job, time)
        self.service_recovery: list[tuple[float, str, float]] = []
        self.daemon_recovery: list[tuple[float, str, float]] = []
        # joiners: (daemon, node) -> [join time, no fault since]
        self.join_pending: dict[tuple[str, str], list[Any]] = {}
        self.join_latencies: list[float] = []  # joins with a quiet window
        self.join_latencies_all: list[float] = []  # every join (faults meanwhile too)
        self.checkpoints = 0
        self.cron_required = 0  # scheduled times C2 found required (and checked)

    # --- reporting ----------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Measured numbers (virtual seconds; the worst recovery with its job and time)."""
        def top(xs: list[float]) -> float | None:
            return round(max(xs), 3) if xs else None

        return {
            "join_latency_max": top(self.join_latencies),
            "joins_quiet": len(self.join_latencies),
            "join_latency_max_any": top(self.join_latencies_all),
            "joins": len(self.join_latencies_all),
            "deficit_max": top(self.deficits),
            "deficits": len(self.deficits),
            "service_recovery_max": max(self.service_recovery, default=None),
            "daemon_recovery_max": max(self.daemon_recovery, default=None),
            "cron_runs_started": len(self.cron_started),
            "cron_outcomes": dict(sorted(self.cron_outcomes.items())),
            "cron_concurrency_max": max(self.cron_concurrency.values(), default=0),
            "checkpoints": self.checkpoints,
            "cron_required_checked": self.cron_required,
            "enforced": self.enforce,
            "bounds": attrs.asdict(self.bounds),
        }

    # --- what the harness tells us ----------------------------------------------------

    def expect(self, job_id: str, spec: Mapping[str, Any]) -> None:
        """A job the harness submits (its spec: kind, labels, schedule, count)."""
        info = self._job(job_id, str(spec.get("type", "batch")))
        info.kind = str(spec.get("type", "batch"))
        if info.kind == "daemon":
            self._daemons.add(job_id)
        info.labels = dict((spec.get("constraints") or {}).get("labels") or {})
        info.schedule = dict(spec.get("schedule") or {})
        info.count = int(spec.get("count") or 1)

    def cancelled(self, job_id: str) -> None:
        info = self.jobs.get(job_id)
        if info is not None:
            info.cancelled = True
            self.deficit_since.pop(job_id, None)

    def on_fault(self, now: float, what: str = "") -> None:
        """A crash, restart, partition, heal or join (or the network calming
        down): every open deficit episode gets its bound again from now."""
        self.last_fault = now
        self.faults += 1
        self.fault_times.append(now)
        if what not in ("join", "calm"):
            self.node_faults += 1
        if what != "join":  # a fault inside a join window voids its bound (still measured)
            for pending in self.join_pending.values():
                pending[1] = False
        self._recount(now)  # may open episodes (armed from now already)
        for jid, since in self.deficit_since.items():
            if since < now:
                self._arm_episode(jid, since, now)

    def calm(self, now: float) -> None:
        """The network stopped losing messages: enforce the bounds from now on."""
        self.enforce = True
        self.on_fault(now, "calm")

    # --- node lifecycle ---------------------------------------------------------------

    def on_start(self, node: str, now: float) -> None:
        first = node not in self.intervals
        self.up[node] = True
        self.intervals.setdefault(node, []).append([now, float("inf")])
        if first:
            self._joined(node, now)
        self._recount(now)

    def on_pause(self, node: str, now: float, until: float) -> None:
        """A frozen node answers nothing: for cron coverage and census it is
        down until it resumes (its executions run on)."""
        spans = self.intervals.get(node)
        if spans and spans[-1][1] == float("inf"):
            spans[-1][1] = now
            spans.append([until, float("inf")])

    def on_crash(self, node: str, now: float) -> None:
        self.up[node] = False
        spans = self.intervals.get(node)
        if spans:
            spans[-1][1] = now
        for jid, runs in list(self.live.items()):
            for key in [k for k in runs if k[0] == node]:
                self._live_remove(jid, key)
        self._recount(now)

    def _job(self, jid: str, kind: str) -> JobInfo:
        """The job's record, made (and placed) on first sight."""
        info = self.jobs.get(jid)
        if info is None:
            info = self.jobs[jid] = JobInfo(kind)
            self._position[jid] = len(self._position)
            if kind == "daemon":
                self._daemons.add(jid)
        return info

    def _joined(self, node: str, now: float) -> None:
        for jid in sorted(self._daemons, key=self._position.__getitem__):
            info = self.jobs[jid]
            if (info.kind == "daemon" and info.accepted_at is not None
                    and info.state not in TERMINAL and not info.cancelled
                    and self.world.matches(node, info.labels)):
                reachable = bool(self.up.get(info.owner)) and self.world.connected(info.owner,
                                                                                   node)
                self.join_pending[(jid, node)] = [now, reachable]
                self._schedule(now + self.bounds.join, self._join_check(jid, node, now))

    def _join_check(self, jid: str, node: str, joined: float) -> Callable[[], None]:
        def check() -> None:
            pending = self.join_pending.get((jid, node))
            info = self.jobs[jid]
            if (pending is None or pending[0] != joined or not pending[1] or info.cancelled
                    or not self.enforce):
                return  # served, voided by a fault, or not enforced (lossy network)
            self.violate(joined + self.bounds.join,
                         f"daemon {jid}: joiner {node} (started t={joined:.3f}s) has no "
                         f"execution after {self.bounds.join:g}s (owner {info.owner})")
        return check

    # --- notify stream ------------------------------------------------------------------


    @handles("job_submitted")
    def _job_submitted(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        kind = str(d.get("job_type") or "batch")
        info = self.jobs.get(jid)
        if info is None:
            info = self._job(jid, kind)
            parent = run_parent(jid) if kind == "run" else None
            if parent is not None and parent[0] in self.jobs:
                info.labels = dict(self.jobs[parent[0]].labels)
        if kind == "run" and "~" not in jid:  # a cron run (DAG, chain, batch runs have ~)
            if info.accepted_at is not None:
                self.violate(now, f"cron run {jid} accepted twice (first at "
                                  f"t={info.accepted_at:.3f}s)")
            if run_parent(jid) is None:
                self.violate(now, f"cron run id {jid!r} is not <cron job>@<scheduled ms>")
        if info.accepted_at is None:
            info.accepted_at = now
            info.owner = node
            info.kind = kind
            if kind == "daemon":
                self._daemons.add(jid)
            if kind in ("daemon", "service"):
                self._long.append(jid)
                self._count_changed(jid, now)
            elif kind == "ops" and self.up.get(node):
                info.census = self._reachable(info)

    @handles("job_state")
    def _job_state(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        state = str(d.get("state"))
        info = self.jobs.get(jid)
        if info is None:
            return
        if info.kind == "cron":
            if state == "suspended":
                self.suspended.add(jid)
            elif state == "scheduled":
                self.suspended.discard(jid)
        if info.state in TERMINAL:
            return
        info.state = state
        if state not in TERMINAL:
            return
        info.ended_at = now
        # A stream may fail by itself with a reason (a micro-batch failed for good).
        stream_failed = info.kind == "stream" and state == "failed" and d.get("reason")
        if (info.kind in LONG_RUNNING_KINDS and not stream_failed
                and (state == "completed" or not info.cancelled)):
            self.violate(now, f"{info.kind} job {jid} ended {state} "
                              f"({d.get('reason') or 'no reason'}) without being stopped")
        if info.kind == "cron":
            self.buffered.pop(jid, None)
        elif info.kind == "ops" and state == "completed":
            self._ops_completed(jid, info, now)
        elif info.kind == "ops" and state == "failed":
            self._ops_failed(jid, str(d.get("reason") or ""), now)
        parent = run_parent(jid) if info.kind == "run" else None
        if parent is not None:
            self.cron_active.get(parent[0], set()).discard(jid)
        deadline = now + self.t.lease_ttl + self.t.lease_grace + self.bounds.slack
        self._schedule(deadline, lambda: self._check_stopped(jid, now, deadline))

    def _check_stopped(self, jid: str, ended: float, at: float) -> None:
        runs = self.live.get(jid)
        if runs:
            stale = [(n, r) for (n, r), started in runs.items() if started <= ended]
            if stale:
                n, r = stale[0]
                self.violate(at, f"{n} still runs {r} {at - ended:.1f}s after job {jid} "
                                 f"ended (bound: TTL + grace)")

    @handles("cron_run")
    def _cron_run(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        ms = int(d.get("scheduled_ms", 0))
        outcome = str(d.get("outcome"))
        reason = str(d.get("reason") or "")
        key = (jid, ms)
        self.cron_outcomes[outcome] = self.cron_outcomes.get(outcome, 0) + 1
        if outcome == "missed":  # one entry for a run of missed times
            self._cron_missed(jid, int(d.get("first_scheduled_ms", ms)), ms,
                              int(d.get("count", 1)), now)
            return
        prev = self.cron_entries.get(key)
        if prev is not None:
            self.violate(now, f"cron {jid}: time {ms} handled twice ({prev.outcome} at "
                              f"t={prev.t:.3f}s, then {outcome})")
            return
        if any(a <= ms <= b for a, b in self.missed.get(jid, [])):
            self.violate(now, f"cron {jid}: time {ms} handled ({outcome}) after it was "
                              f"recorded missed")
            return
        info = self.jobs.get(jid)
        if info is not None and info.schedule:
            later = ScheduledTimes(info.schedule).next_after(ms)
            if later <= wall_ms(now) - 1:
                self.violate(now, f"cron {jid}: time {ms} handled ({outcome}) although the "
                                  f"later time {later} was already due (C4: newest only)")
        self.cron_entries[key] = CronEntry(now, str(d.get("run_id") or ""), outcome, reason)
        # A node reads the wall clock when it starts, then counts on its own
        # monotonic clock: with rate skew its idea of the wall drifts by up
        # to skew x the time since (the runner's --clock-skew).
        if ms > wall_ms(now) + 1 + self.clock_skew * now * 1000:
            self.violate(now, f"cron {jid}: time {ms} handled {virtual(ms) - now:.3f}s early")
        if outcome == "buffered":
            self.buffered[jid] = ms
        elif outcome == "skipped":
            self._check_skip(jid, ms, reason, now)

    def _cron_missed(self, jid: str, first: int, newest: int, count: int, now: float) -> None:
        """C1 for a missed entry: its range holds ``count`` scheduled times,
        none of them handled otherwise (before or, see _cron_run, after)."""
        info = self.jobs.get(jid)
        if info is not None and info.schedule:
            due = ScheduledTimes(info.schedule).due(first - 1, newest)
            if due is None or (due.first_ms, due.newest_ms, due.count) != (first, newest, count):
                self.violate(now, f"cron {jid}: missed entry {first}..{newest} counts {count} "
                                  f"times, the schedule has {due.count if due else 0}")
        clash = [t for (j, t) in self.cron_entries if j == jid and first <= t <= newest]
        clash += [b for a, b in self.missed.get(jid, []) if a <= newest and first <= b]
        if clash:
            self.violate(now, f"cron {jid}: missed entry {first}..{newest} covers time "
                              f"{min(clash)} already handled")
        if newest > wall_ms(now) + 1:
            self.violate(now, f"cron {jid}: time {newest} recorded missed before it was due")
        self.missed.setdefault(jid, []).append((first, newest))

    def _check_skip(self, jid: str, ms: int, reason: str, now: float) -> None:
        if "still active" in reason:
            if not self.cron_active.get(jid):
                self.violate(now, f"cron {jid}: time {ms} skipped ({reason}) but no run of "
                                  f"{jid} is active")
        elif "already waiting" in reason:
            if self.buffered.get(jid) is None:
                self.violate(now, f"cron {jid}: time {ms} skipped ({reason}) with no "
                                  f"buffered time")
        elif "suspended" in reason:
            if jid not in self.suspended:
                self.violate(now, f"cron {jid}: time {ms} skipped as suspended but the job "
                                  f"is not suspended")
        elif "cron job was stopped" not in reason:
            self.violate(now, f"cron {jid}: time {ms} skipped for an unknown reason {reason!r}")

    @handles("cron_run_started")
    def _cron_run_started(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        ms = int(d.get("scheduled_ms", 0))
        run_id = str(d.get("run_id"))
        key = (jid, ms)
        prev = self.cron_started.get(key)
        if prev is not None:
            self.violate(now, f"cron {jid}: second run {run_id} for time {ms} (first "
                              f"{prev[1]} at t={prev[0]:.3f}s)")
            return
        self.cron_started[key] = (now, run_id)
        if run_id != f"{jid}@{ms}":
            self.violate(now, f"cron {jid}: run id {run_id!r} does not name time {ms}")
        # A node reads the wall clock when it starts, then counts on its own
        # monotonic clock: with rate skew its idea of the wall drifts by up
        # to skew x the time since (the runner's --clock-skew).
        if ms > wall_ms(now) + 1 + self.clock_skew * now * 1000:
            self.violate(now, f"cron {jid}: run {run_id} started "
                              f"{virtual(ms) - now:.3f}s before its time")
        info = self.jobs.get(jid)
        if info is not None and info.state in TERMINAL:
            self.violate(now, f"cron {jid}: run {run_id} started after the job ended "
                              f"{info.state}")
        if self.buffered.get(jid) == ms:
            self.buffered.pop(jid, None)
        self.cron_active.setdefault(jid, set()).add(run_id)
        entry = self.cron_entries.get(key)
        if entry is None or entry.outcome not in ("queued", "buffered"):
            got = entry.outcome if entry else "no history entry"
            self.violate(now, f"cron {jid}: run {run_id} started but time {ms} is {got}")

    @handles("result_accepted")
    def _result_accepted(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        info = self.jobs.get(jid)
        if info is None or info.kind != "ops":
            return
        holder = str(d.get("holder"))
        eid = str(d.get("execution_id"))
        prev = self.ops_results.get((jid, holder))
        if prev is not None and prev != eid:
            self.violate(now, f"ops {jid}: second accepted result on {holder} ({eid}, "
                              f"first {prev})")
        self.ops_results[(jid, holder)] = eid

    def _ops_completed(self, jid: str, info: JobInfo, now: float) -> None:
        """O2: remember the nodes a completed ops job skipped (see check_ops)."""
        start = info.accepted_at if info.accepted_at is not None else now
        end = start + self.t.bid_window + self.bounds.slack
        if any(start <= t <= end for t in self.fault_times):
            return  # a crash or partition during the census: who should have run is unclear
        stayed = [n for n in info.census
                  if any(s <= start and end <= e for s, e in self.intervals.get(n, []))]
        skipped = sorted(n for n in stayed if (jid, n) not in self.ops_results)
        if skipped:
            self.ops_gaps.append((now, jid, skipped))

    def _ops_failed(self, jid: str, reason: str, now: float) -> None:
        """O3: no node fault and no liar, so no node can be gone or silent."""
        if "did not answer" in reason and not self.node_faults and not self.strangers:
            self.violate(now, f"ops {jid} failed ({reason}) although every node was up and "
                              f"no node fault happened (O3)")

    def check_ops(self, now: float) -> None:
        """O2, reported at the end of a run (the run went on checking the rest)."""
        for at, jid, skipped in self.ops_gaps[:1]:
            census = self.jobs[jid].census
            self.violate(now, f"ops {jid} completed at t={at:.3f}s without running on "
                              f"{', '.join(skipped)} (matching, up and connected to its owner "
                              f"throughout its census; census nodes: {', '.join(census)})")

    # --- executor ground truth ------------------------------------------------------------

    def on_exec_start(self, node: str, action: StartExecution, now: float) -> None:
        parsed = parse_run_id(action.execution_id)
        if parsed is None:
            return  # simnet.invariants reports malformed ids
        jid = parsed[0]
        info = self.jobs.get(jid)
        runs = self.live.setdefault(jid, {})
        if info is not None:
            if info.labels and not self.world.matches(node, info.labels):
                self.violate(now, f"{node} runs {action.execution_id} but does not match "
                                  f"{info.kind} job {jid}'s labels {info.labels}")
            if info.kind == "daemon":
                mine = [r for (n, r) in runs if n == node]
                if mine:
                    self._watch_double(jid, node, now)
                pending = self.join_pending.pop((jid, node), None)
                if pending is not None:
                    self.join_latencies_all.append(now - pending[0])
                    if pending[1]:
                        self.join_latencies.append(now - pending[0])
            if info.state in TERMINAL:  # a late grant's copy: it must stop all the same
                self._check_late_start(jid, node, action.execution_id, now)
        parent = run_parent(jid)
        if parent is not None:
            self._check_overlap(parent[0], jid, node, action.execution_id, now)
            if parent not in self.cron_started:
                self.violate(now, f"{node} runs {action.execution_id} of cron run {jid} "
                                  f"that was never started")
            executing = self.live_runs.setdefault(parent[0], set())
            executing.add(jid)
            if len(executing) > self.cron_concurrency.get(parent[0], 0):
                self.cron_concurrency[parent[0]] = len(executing)
        runs[(node, action.execution_id)] = now
        if info is not None and info.kind in ("daemon", "service"):
            self._count_changed(jid, now)

    def _check_late_start(self, jid: str, node: str, eid: str, now: float) -> None:
        at = now + self.t.lease_ttl + self.t.lease_grace + self.bounds.slack

        def check() -> None:
            if self.live.get(jid, {}).get((node, eid)) == now:
                self.violate(at, f"{node} still runs {eid} of ended job {jid} past "
                                 f"TTL + grace after its start")
        self._schedule(at, check)

    def _watch_double(self, jid: str, node: str, now: float) -> None:
        at = now + self.t.lease_ttl + self.t.lease_grace + self.bounds.slack

        def check() -> None:
            mine = [r for (n, r) in self.live.get(jid, {}) if n == node]
            if len(mine) > 1:
                self.violate(at, f"daemon {jid}: {node} runs {len(mine)} executions "
                                 f"({', '.join(sorted(mine))}) for longer than TTL + grace")
        self._schedule(at, check)

    def _check_overlap(self, cron: str, run: str, node: str, eid: str, now: float) -> None:
        info = self.jobs.get(cron)
        if info is None or info.schedule.get("overlap", "skip") not in ("skip", "buffer_one"):
            return
        for other in sorted(self.live_runs.get(cron, ())):
            if other != run:
                (n2, e2), _ = next(iter(self.live[other].items()))
                self.violate(now, f"cron {cron} (overlap {info.schedule.get('overlap')}): "
                                  f"{node} starts {eid} while {n2} still runs {e2}")
                return

    def on_exec_end(self, node: str, execution_id: str, status: str, now: float) -> None:
        parsed = parse_run_id(execution_id)
        if parsed is not None and self._live_remove(parsed[0], (node, execution_id)):
            self._count_changed(parsed[0], now)

    def _live_remove(self, jid: str, key: tuple[str, str]) -> bool:
        runs = self.live.get(jid)
        if runs is None or runs.pop(key, None) is None:
            return False
        if not runs:
            del self.live[jid]
            parent = run_parent(jid)
            if parent is not None:
                self.live_runs.get(parent[0], set()).discard(jid)
        return True

    # --- deficit episodes of daemons and services (D1, S1) ------------------------------------

    def _count_changed(self, jid: str, now: float) -> None:
        """Deficit episodes of a service (fewer than N executions) or a daemon
        (a reachable matching up node without an execution, or its owner
        down).  D1/S1: an episode ends within its bound of the later of its
        start and the last fault."""
        info = self.jobs.get(jid)
        if info is None or info.accepted_at is None or info.state in TERMINAL or info.cancelled:
            return
        if info.kind == "service":
            short = len(self.live.get(jid, {})) < info.count
        elif info.kind == "daemon":
            short = bool(self._uncovered(jid, info))
        else:
            return
        if short:
            if jid not in self.deficit_since:
                self.deficit_since[jid] = now
                self._arm_episode(jid, now, max(now, self.last_fault))
        elif jid in self.deficit_since:
            since = self.deficit_since.pop(jid)
            self.deficits.append(now - since)
            rec = (round(now - max(since, self.last_fault), 3), jid, round(now, 3))
            (self.service_recovery if info.kind == "service" else self.daemon_recovery).append(rec)

    def _bound(self, kind: str) -> float:
        return self.bounds.daemon if kind == "daemon" else self.bounds.service

    def _arm_episode(self, jid: str, since: float, ref: float) -> None:
        info = self.jobs[jid]
        at = ref + self._bound(info.kind)

        def check() -> None:
            if (not self.enforce or self.deficit_since.get(jid) != since
                    or max(since, self.last_fault) != ref or info.cancelled):
                return  # ended, re-armed by a later fault, or not enforced
            if not self.up.get(info.owner):
                return  # nothing can recover it; the owner's restart re-arms the check
            if info.kind == "service" and not self._reachable(info):
                return  # no matching node on the owner's side of a partition
            what = ", ".join(self._uncovered(jid, info)[:4]) if info.kind == "daemon" else (
                f"{len(self.live.get(jid, {}))} of {info.count} executions")
            self.violate(at, f"{info.kind} {jid} short since t={since:.3f}s "
                             f"({what}), still {at - ref:.1f}s after "
                             f"{'the last fault' if ref > since else 'that'}")
        self._schedule(at, check)

    def _uncovered(self, jid: str, info: JobInfo) -> list[str]:
        """Up matching nodes connected to the owner without an execution of the
        daemon (["owner down"] while its owner is down)."""
        if not self.up.get(info.owner):
            return [f"owner {info.owner} down"]
        have = {n for (n, _) in self.live.get(jid, {})}
        return [n for n in self._reachable(info) if n not in have]

    def _reachable(self, info: JobInfo) -> list[str]:
        return [n for n, up in self.up.items()
                if up and self.world.connected(info.owner, n)
                and self.world.matches(n, info.labels)]

    def _recount(self, now: float) -> None:
        for jid in self._long:
            self._count_changed(jid, now)

    # --- checkpoints ---------------------------------------------------------------------------

    def check_steady(self, now: float) -> None:
        """The steady state at ``now`` (the harness calls it once faults stopped
        and the bounds passed): each daemon runs exactly once on every up
        matching node connected to its owner and nowhere twice; each service
        runs exactly N executions."""
        self.checkpoints += 1
        nodes = sorted(n for n, up in self.up.items() if up)
        for jid in sorted(self.jobs):
            info = self.jobs[jid]
            if (info.kind not in ("daemon", "service") or info.state in TERMINAL
                    or info.cancelled or info.accepted_at is None):
                continue
            if not self.up.get(info.owner):
                self.violate(now, f"{info.kind} {jid}: owner {info.owner} is down in the "
                                  f"steady state")
                return
            reach = [n for n in nodes if self.world.connected(info.owner, n)
                     and self.world.matches(n, info.labels)]
            runs = self.live.get(jid, {})
            if info.kind == "daemon":
                per_node: dict[str, list[str]] = {}
                for (n, r) in runs:
                    per_node.setdefault(n, []).append(r)
                missing = [n for n in reach if n not in per_node]
                extra = {n: rs for n, rs in per_node.items() if len(rs) > 1}
                if missing or extra:
                    what = (f"no execution on {', '.join(missing[:5])}" if missing
                            else f"several on {sorted(extra.items())[:2]}")
                    self.violate(now, f"daemon {jid} in the steady state: {what} "
                                      f"({len(reach)} matching up nodes)")
                    return
            elif reach and len(runs) != info.count:
                self.violate(now, f"service {jid} in the steady state: {len(runs)} "
                                  f"executions, want {info.count}")
                return

    # --- end of run --------------------------------------------------------------------------

    def finish(self, now: float) -> None:
        """End-of-run checks: the steady state, the cron coverage (C2) of every
        scheduled time up to ``now - margin``, and the ops coverage (O2)."""
        self.check_steady(now)
        self.check_cron(now)
        self.check_ops(now)

    def required_times(self, jid: str, until: float) -> list[int]:
        info = self.jobs[jid]
        if info.accepted_at is None or not info.schedule:
            return []
        sched = info.schedule
        margin = self.bounds.cron_margin
        window = max(float(sched.get("catch_up") or 0) / 1000, CRON_LATE_SLACK)
        end = until if info.ended_at is None else min(until, info.ended_at)
        # (An owner whose clock runs fast thinks it was accepted later; one
        # whose clock runs slow handles a time up to skew x now late.)
        accepted = info.accepted_at * (1 + self.clock_skew)
        last = end - margin - self.clock_skew * end
        times, _ = ScheduledTimes(sched).between(wall_ms(accepted), wall_ms(last), 1_000_000)
        spans = self.intervals.get(info.owner, [])
        out = []
        for ms in times:
            t = virtual(ms)
            back = self._back_up(spans, t)
            if back is None:
                continue
            start, stop = back
            if start - t > window - margin or stop < start + margin:
                continue
            if start > t and virtual(ScheduledTimes(sched).next_after(ms)) <= start + margin:
                continue  # a later time came due by the restart: only that one runs
            if info.ended_at is not None and start + margin > info.ended_at:
                continue
            out.append(ms)
        return out

    @staticmethod
    def _back_up(spans: list[list[float]], t: float) -> tuple[float, float] | None:
        """The up span covering ``t`` (from ``t``) or the first one after it."""
        for s, e in spans:
            if s <= t < e:
                return t, e
            if s > t:
                return s, e
        return None

    def check_cron(self, now: float) -> None:
        for jid in sorted(self.jobs):
            info = self.jobs[jid]
            if info.kind != "cron" or info.accepted_at is None:
                continue
            for ms in self.required_times(jid, now):
                self.cron_required += 1
                entry = self.cron_entries.get((jid, ms))
                if entry is not None:
                    continue
                if any(a <= ms <= b for a, b in self.missed.get(jid, [])):
                    self.violate(now, f"cron {jid}: time {ms} (t={virtual(ms):.3f}s) recorded "
                                      f"missed although its owner {info.owner} was up within "
                                      f"catch_up of it")
                else:
                    self.violate(now, f"cron {jid}: time {ms} (t={virtual(ms):.3f}s) was "
                                      f"never handled although its owner {info.owner} was up")
                return
