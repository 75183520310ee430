"""Invariant checkers, fed continuously by the engine's observer hooks.

They read only what the protocol exposes (the cores' ``Notify`` actions and
``owned_jobs()``) plus the simulated executor's ground truth (what is really
running where).  The first violation halts the run; every violation is kept
as ``"t=<virtual s>: <description>"``.

1. no (job, slot) ever has two ``result_accepted``; an accepted result
   carries the newest epoch granted for its slot, and comes from the holder
   that epoch was granted to;
2. one (job, slot, epoch) is granted to one holder only (a re-announce
   names the same holder); epochs strictly increase per (job, slot); at most one unexpired lease per
   (job, slot) in the owner's view; a holder whose lease was superseded stops
   its execution by the time the newer grant is made when its lease expired
   (plus a slack for clock rates), or one TTL after it started when its grant
   came late (the holder
   counts its lease from the renewals it *sent*; the owner from their receipt
   plus the grace); within TTL + grace when the owner ended it (a cancel);
   a frozen holder gets its frozen time on top; every window is the grant's
   own ttl and its owner's grace (peers may run different Timings);
3. every submitted job is owned by exactly one node (up, or down with its
   store), and at the end is terminal or reported ``lost``;
4. every execution ends within its timeout + grace (executor ground truth);
5. at the end of the drain period no job hangs: it completed, or failed /
   stopped with a reason.

Long-running kinds (daemon, service, cron, stream) never complete: 3 and 5 expect
them to end only once they were cancelled (:meth:`Invariants.cancelled`).  A
finished cron run may be forgotten by its owner (history trimming): it is
then owned by nobody, which 3 accepts.  A daemon restarted in place runs
under ``"{execution_id}#{n}"``.  The kind-specific properties are in
:mod:`simnet.kind_invariants`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any

from protocols.config import Timings
from protocols.events import StartExecution
from simnet.checker import Checker, handles

TERMINAL = frozenset({"completed", "failed", "stopped"})
# End only when stopped (a micro-batch stream may also fail: see kind_invariants L1).
LONG_RUNNING_KINDS = frozenset({"daemon", "service", "cron", "stream"})
SlotKey = tuple[str, int]


def split_execution_id(execution_id: str) -> tuple[str, int, int] | None:
    """``"{job_id}/{slot}/{epoch}"`` (or a daemon's restart in place,
    ``"...#{n}"``) -> (job_id, slot, epoch), None if malformed."""
    base, sep, restart = execution_id.partition("#")
    if sep and not restart.isdigit():
        return None
    parts = base.rsplit("/", 2)
    if len(parts) != 3:
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2])
    except ValueError:
        return None


def _seconds(value: Any, default: float) -> float:
    """Notify durations: accept seconds (float) or milliseconds (int > 1000)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return default
    return float(value) / 1000.0 if isinstance(value, int) and value > 1000 else float(value)


class JobTrack:
    __slots__ = ("kind", "owner", "reason", "slots", "state", "submitted_at")

    def __init__(self, owner: str, slots: int, now: float, kind: str = "batch") -> None:
        self.owner = owner
        self.slots = slots
        self.state = "queued"
        self.reason = ""
        self.submitted_at = now
        self.kind = kind


class Invariants(Checker):
    def __init__(
        self,
        timings: Timings,
        schedule: Callable[[float, Callable[[], None]], None],
        is_running: Callable[[str, str], bool],
        on_violation: Callable[[str], None] | None = None,
        slack: float = 1.0,
    ) -> None:
        super().__init__(self._record)
        self.timings = timings
        self._schedule = schedule
        # Deadline checks about one node (the harness: not counting its frozen time).
        self.schedule_for: Callable[[float, Callable[[], None], str], None] = (
            lambda at, fn, node: schedule(at, fn))
        self._is_running = is_running
        self._on_violation = on_violation
        self.slack = slack  # network latency allowance on top of protocol bounds
        self.violations: list[str] = []
        self.jobs: dict[str, JobTrack] = {}
        self.terminal = 0
        self.accepted: dict[SlotKey, tuple[int, str, float]] = {}
        self.newest: dict[SlotKey, tuple[int, str, float]] = {}  # epoch, exec id, granted at
        self.window: dict[SlotKey, float] = {}  # the newest grant's ttl + its owner's grace
        self.holders: dict[tuple[str, int, int], str] = {}  # (job, slot, epoch) -> holder
        self.ttl_of: dict[str, float] = {}  # execution id -> its lease ttl (s)
        self.by_eid: dict[str, SlotKey] = {}  # execution id -> (job, slot)
        self.expired: set[str] = set()  # leases the owner saw expire (silence)
        self.started_at: dict[tuple[str, str], float] = {}  # running (node, exec id) -> start
        self.active: dict[SlotKey, dict[str, tuple[int, float]]] = {}
        # executor ground truth: (job, slot) -> {(node, execution id): epoch}
        self.running: dict[SlotKey, dict[tuple[str, str], int]] = {}
        self.by_node: dict[str, dict[str, SlotKey]] = {}
        self.counts: dict[str, int] = {}
        self.stopping: set[str] = set()  # jobs the harness cancelled
        self.now = 0.0

    # --- reporting -------------------------------------------------------------

    def _record(self, now: float, text: str) -> None:
        """Every checker's violations end here (the others get ``violate``)."""
        msg = f"t={now:.3f}s: {text}"
        self.violations.append(msg)
        if self._on_violation is not None:
            self._on_violation(msg)

    # --- notify stream -------------------------------------------------------------

    def on_notify(self, node: str, kind: str, data: dict[str, Any], now: float) -> None:
        self.now = now
        self.counts[kind] = self.counts.get(kind, 0) + 1  # every kind, handled or not
        super().on_notify(node, kind, data, now)

    @handles("job_submitted")
    def _job_submitted(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        track = self.jobs.get(jid)
        if track is None:
            self.jobs[jid] = JobTrack(node, int(d.get("slots", 1) or 1), now,
                                      str(d.get("job_type") or "batch"))
        elif track.owner != node:
            self.violate(now, f"job {jid} accepted by {node} but already owned by {track.owner}")

    @handles("job_state")
    def _job_state(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        state = str(d.get("state"))
        track = self.jobs.get(jid)
        if track is None:
            track = self.jobs[jid] = JobTrack(node, 1, now)
        if track.owner != node:
            self.violate(now, f"job {jid}: state {state} reported by {node}, "
                              f"owner is {track.owner}")
        if track.state in TERMINAL:
            if state != track.state:
                self.violate(now, f"job {jid} left terminal state {track.state} for {state}")
            return
        track.state = state
        track.reason = str(d.get("reason") or "")
        if state in TERMINAL:
            self.terminal += 1
            if state != "completed" and not track.reason:
                self.violate(now, f"job {jid} ended {state} without a reason")

    @handles("lease_granted")
    def _lease_granted(self, node: str, d: dict[str, Any], now: float) -> None:
        key: SlotKey = (str(d.get("job_id")), int(d.get("slot", 0)))
        epoch = int(d.get("epoch", 0))
        eid = str(d.get("execution_id"))
        holder = str(d.get("holder"))
        first = self.holders.setdefault((key[0], key[1], epoch), holder)
        if first != holder:
            self.violate(now, f"{key[0]}#{key[1]}: epoch {epoch} granted to {holder}, "
                              f"already granted to {first} (one holder per fencing token)")
        prev = self.newest.get(key)
        if prev is not None:
            if prev[1] == eid:
                return  # re-announced after a restart: the same lease
            if epoch <= prev[0]:
                self.violate(now, f"{key[0]}#{key[1]}: epoch {epoch} granted after epoch "
                                  f"{prev[0]} (fencing tokens must increase)")
        active = self.active.setdefault(key, {})
        if active:
            others = ", ".join(sorted(active))
            self.violate(now, f"{key[0]}#{key[1]}: lease {eid} granted while {others} unexpired")
        active[eid] = (epoch, now)
        self.newest[key] = (epoch, eid, now)
        # The grant's own window (its ttl, its owner's grace), not a cluster-wide
        # setting: peers may run different Timings (--timings mixed).
        ttl = _seconds(d.get("ttl"), self.timings.lease_ttl)
        grace = _seconds(d.get("grace"), self.timings.lease_grace)
        self.ttl_of[eid] = ttl
        self.by_eid[eid] = key
        self.window[key] = ttl + grace
        for (holder, old_eid), old_epoch in self.running.get(key, {}).items():
            if old_epoch < epoch:
                # The old holder counts its lease from the renewals it sent,
                # the owner from their receipt plus a grace: by the time the
                # owner re-grants, the old lease lapsed on the holder's clock
                # too -- unless it was granted late (counted from its start).
                base = old_eid.partition("#")[0]
                started = self.started_at.get((holder, old_eid), now)
                old_ttl = self.ttl_of.get(base, self.timings.lease_ttl)
                deadline = max(now, started + old_ttl) + self.slack
                if base not in self.expired:  # the owner ended it (cancel): TTL + grace
                    deadline = now + ttl + grace + self.slack
                self._watch_superseded(holder, old_eid, epoch, deadline)

    def _watch_expired(self, eid: str, now: float) -> None:
        """The owner saw the lease expire (ttl + grace of silence): its holder,
        counting from the renewals it sent, stopped already (a late grant:
        one ttl after it started).  Only the holder's clock rate and frozen
        time stand between the two."""
        key = self.by_eid.get(eid)
        for (holder, run_id) in list(self.running.get(key, {})) if key else []:
            if run_id.partition("#")[0] != eid:
                continue
            started = self.started_at.get((holder, run_id), now)
            deadline = max(now, started + self.ttl_of.get(eid, self.timings.lease_ttl))
            deadline += self.slack

            def check(holder: str = holder, run_id: str = run_id, deadline: float = deadline,
                      ) -> None:
                if self._is_running(holder, run_id):
                    self.violate(deadline, f"{holder} still runs {run_id} after its owner saw "
                                           f"the lease expire at t={now:.3f}s (its own lease "
                                           f"ends first; plus its frozen time)")
            self.schedule_for(deadline, check, holder)

    def _watch_superseded(self, holder: str, eid: str, epoch: int, deadline: float) -> None:
        def check() -> None:
            if self._is_running(holder, eid):
                self.violate(deadline, f"{holder} still runs {eid} past its own lease (due to "
                                       f"stop by then, plus its frozen time) after epoch "
                                       f"{epoch} was granted")
        self.schedule_for(deadline, check, holder)

    @handles("lease_ended", "result_ignored")
    def _lease_ended(self, node: str, d: dict[str, Any], now: float) -> None:
        if d.get("cause") == "expired":
            eid = str(d.get("execution_id"))
            self.expired.add(eid)
            self._watch_expired(eid, now)
        key: SlotKey = (str(d.get("job_id")), int(d.get("slot", 0)))
        eid = str(d.get("execution_id"))
        active = self.active.get(key)
        if active:
            active.pop(eid, None)

    @handles("result_accepted")
    def _result_accepted(self, node: str, d: dict[str, Any], now: float) -> None:
        key: SlotKey = (str(d.get("job_id")), int(d.get("slot", 0)))
        epoch = int(d.get("epoch", 0))
        eid = str(d.get("execution_id"))
        prev = self.accepted.get(key)
        if prev is not None:
            self.violate(now, f"{key[0]}#{key[1]}: second accepted result {eid} "
                              f"(first {prev[1]} at t={prev[2]:.3f}s)")
        else:
            self.accepted[key] = (epoch, eid, now)
        newest = self.newest.get(key)
        if newest is not None and epoch < newest[0]:
            self.violate(now, f"{key[0]}#{key[1]}: accepted {eid} of epoch {epoch} although "
                              f"epoch {newest[0]} was granted")
        granted_to = self.holders.get((key[0], key[1], epoch))
        holder = d.get("holder")
        if granted_to is not None and holder is not None and str(holder) != granted_to:
            self.violate(now, f"{key[0]}#{key[1]}: result of {eid} accepted from {holder}, "
                              f"the lease was granted to {granted_to}")
        self._lease_ended(node, d, now)

    # --- executor ground truth ---------------------------------------------------------

    def on_exec_start(self, node: str, action: StartExecution, now: float) -> None:
        parsed = split_execution_id(action.execution_id)
        if parsed is None:
            self.violate(now, f"{node} started malformed execution id {action.execution_id!r}")
            return
        job, slot, epoch = parsed
        key = (job, slot)
        eid = action.execution_id
        self.running.setdefault(key, {})[(node, eid)] = epoch
        self.started_at[(node, eid)] = now
        self.by_node.setdefault(node, {})[eid] = key
        newest = self.newest.get(key)
        if newest is not None and newest[0] > epoch:  # started an already-stale lease
            window = self.window.get(key, self.timings.lease_ttl + self.timings.lease_grace)
            self._watch_superseded(node, eid, newest[0], now + window + self.slack)
        deadline = now + float(action.timeout) + self.timings.timeout_grace

        def check_timeout() -> None:
            if self._is_running(node, eid):
                self.violate(deadline, f"{node} execution {eid} outlived its timeout "
                                       f"{action.timeout}s + grace")
        self.schedule_for(deadline, check_timeout, node)

    def on_exec_end(self, node: str, execution_id: str, status: str, now: float) -> None:
        key = self.by_node.get(node, {}).pop(execution_id, None)
        self.started_at.pop((node, execution_id), None)
        if key is not None:
            runs = self.running.get(key)
            if runs is not None:
                runs.pop((node, execution_id), None)
                if not runs:
                    del self.running[key]

    def on_crash(self, node: str, now: float) -> None:
        for eid in list(self.by_node.get(node, {})):
            self.on_exec_end(node, eid, "crashed", now)

    # --- ownership -----------------------------------------------------------------------

    def check_ownership(self, owned: Mapping[str, Mapping[str, str]], now: float) -> None:
        """``owned``: node -> owned_jobs() for every node (down nodes: their
        last view, since their store still holds the jobs)."""
        owners: dict[str, list[str]] = {}
        for node in sorted(owned):
            for jid, state in owned[node].items():
                owners.setdefault(jid, []).append(node)
                track = self.jobs.get(jid)
                if track is not None and track.state in TERMINAL and state != track.state:
                    self.violate(now, f"job {jid}: owner {node} says {state}, "
                                      f"it was reported {track.state}")
        for jid in sorted(self.jobs):
            holders = owners.get(jid, [])
            track = self.jobs[jid]
            if not holders and track.kind == "run" and track.state in TERMINAL:
                continue  # a finished cron run its owner forgot (history trimming)
            if len(holders) != 1:
                who = ", ".join(holders) or "nobody"
                self.violate(now, f"job {jid} owned by {who} (must be exactly one node)")

    def cancelled(self, job_id: str) -> None:
        """The harness stopped ``job_id``: from now on it must end, whatever its kind."""
        self.stopping.add(job_id)

    def must_end(self, job_id: str) -> bool:
        track = self.jobs.get(job_id)
        return track is None or track.kind not in LONG_RUNNING_KINDS or job_id in self.stopping

    def unfinished(self) -> list[str]:
        """Jobs that should have ended and did not (running daemons, services
        and cron jobs are not unfinished: they never end unless stopped)."""
        return sorted(j for j, t in self.jobs.items()
                      if t.state not in TERMINAL and self.must_end(j))

    def _orphaned_stage_runs(self, down: Collection[str]) -> set[str]:
        """Stage runs (``J~s<k>~r<n>~<m>``) of an ended chain whose owner is
        down for good: the chain, not the run, is accountable, and it ended
        (by a takeover); the run's owner lets it go if it ever restarts."""
        orphans = set()
        for jid, track in self.jobs.items():
            parts = jid.split("~")
            chain = self.jobs.get(parts[0])
            if (track.kind == "run" and len(parts) == 4 and parts[1].startswith("s")
                    and track.owner in down and chain is not None
                    and chain.state in TERMINAL):
                orphans.add(jid)
        return orphans

    def finish(self, owned: Mapping[str, Mapping[str, str]], now: float,
               expected: list[str], down: Collection[str] = ()) -> list[str]:
        """End-of-drain checks; returns the lost job ids.  ``down``: the nodes
        down at the end."""
        missing = sorted(set(expected) - set(self.jobs))
        for jid in missing[:5]:
            self.violate(now, f"job {jid} was submitted but never accepted by its owner")
        self.check_ownership(owned, now)
        lost = sorted((set(self.unfinished()) - self._orphaned_stage_runs(down)) | set(missing))
        if lost:
            sample = ", ".join(f"{j}({self.jobs[j].state})" if j in self.jobs else j
                               for j in lost[:5])
            self.violate(now, f"{len(lost)} job(s) never reached a terminal state: {sample}")
        return lost
