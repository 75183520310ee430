"""Cron jobs: the owner keeps the schedule and starts one run per scheduled time.

A run is an owned batch-like job whose id is ``<cron job>@<scheduled unix ms>``.
Two guards make "one run per scheduled time" hold whatever happens:

* ``last_ms``, the newest scheduled time already handled (run, skipped or
  missed), only grows and is persisted in the same batch as the run it starts,
  so a fired timer, a duplicated timer or a restart never handles a time twice;
* the run id is derived from the time, and the owner refuses a job id it
  already has.

Catch-up (the Kubernetes CronJob rule): when the timer finds several times
due at once (the owner was down, or its timer late), only the newest of them
is handled, and only if it is at most ``catch_up`` (and a small slack for
timer lateness) old; every other due time is *missed*, recorded as one
history entry with their ``count`` and range (``first_scheduled_ms`` ..
``scheduled_ms``).  So a catch-up starts at most one run, whatever the
overlap policy.  Missed entries are trimmed apart from skipped ones (a long
run of skips never pushes the record of an outage out of the history).
Overlap, when a run of this job is still active:
``skip`` records the time as skipped, ``allow`` starts it anyway, ``replace``
stops the active runs first, ``buffer_one`` keeps one time waiting for the
active run to end (a further one is skipped).

Wall time comes from the outbox's ``wall_offset`` (set when the node starts);
nothing here reads a clock.
"""

from __future__ import annotations

import datetime
from typing import Any

import attrs

from protocols.errors import LocalProtocolError
from protocols.kinds import KindController, OwnerContext, Records, TimerHandler
from protocols.owned import OwnedJob
from protocols.schedule import Due, ScheduledTimes
from protocols.timers import JobTimer

CRON_TABLE = "cron"
LATE_SLACK_MS = 2_000  # a timer that fires this late still counts as on schedule
KEEP_SKIPPED = 50  # skipped entries kept in the history
KEEP_MISSED = 20  # missed entries (one per catch-up) kept in the history, apart from skips
ACTIVE = ("queued", "running", "buffered")


@attrs.define
class CronState:
    job_id: str
    last_ms: int  # newest scheduled time handled
    suspended: bool = False
    buffered_ms: int | None = None
    # History, oldest first: {run_id, scheduled_ms, version, outcome, reason}
    # (+ executions once a run ended; + count, first_scheduled_ms when missed).
    entries: list[dict[str, Any]] = attrs.field(factory=list)
    next_ms: int = 0  # volatile: the time the timer is armed for

    def record(self) -> dict[str, Any]:
        return {
            "last_ms": self.last_ms,
            "suspended": self.suspended,
            "buffered_ms": self.buffered_ms,
            "entries": self.entries,
        }


class CronController(KindController):
    describe_key = "schedule"

    def __init__(self, ctx: OwnerContext) -> None:
        super().__init__(ctx)
        self.states: dict[str, CronState] = {}

    # --- clocks ------------------------------------------------------------------

    def _wall_ms(self) -> int:
        return round((self.out.now + self.out.wall_offset) * 1000)

    def _arm(self, job: OwnedJob, state: CronState) -> None:
        times = ScheduledTimes(job.spec["schedule"])
        state.next_ms = times.next_after(state.last_ms)
        at = state.next_ms / 1000 - self.out.wall_offset
        self.out.timer(JobTimer("cron", job.job_id), max(at, self.out.now))

    def _save(self, state: CronState) -> None:
        self.out.persist(CRON_TABLE, state.job_id, state.record())

    # --- lifecycle ---------------------------------------------------------------

    def start(self, job: OwnedJob) -> None:
        """A new cron job: times after now are due (none before the submit)."""
        state = CronState(
            job_id=job.job_id,
            last_ms=self._wall_ms(),
            suspended=bool(job.spec["schedule"].get("suspended")),
        )
        self.states[job.job_id] = state
        self._save(state)
        self._sync_state(job, state)
        self._arm(job, state)

    def restore(self, records: Records) -> None:
        for job_id, rec in records.get(CRON_TABLE, {}).items():
            self.states[job_id] = CronState(
                job_id=job_id,
                last_ms=rec["last_ms"],
                suspended=rec["suspended"],
                buffered_ms=rec["buffered_ms"],
                entries=list(rec["entries"]),
            )

    def resume_job(self, job: OwnedJob) -> None:
        """After an owner restart: wake now, so times missed while down are
        handled by the catch-up policy."""
        state = self.states.get(job.job_id)
        if state is None:  # the job record was written, the cron record not
            self.start(job)
            return
        self.out.timer(JobTimer("cron", job.job_id), self.out.now)

    def on_stop(self, job: OwnedJob, reason: str) -> None:
        self.out.cancel_timer(JobTimer("cron", job.job_id))
        state = self.states.get(job.job_id)
        if state is None:
            return
        state.buffered_ms = None
        for entry in state.entries:
            if entry["outcome"] == "buffered":
                entry["outcome"], entry["reason"] = "skipped", "the cron job was stopped"
        for run_id in self._active_runs(state):
            self.ctx.cancel(run_id, f"cron job stopped: {reason}")
        self._save(state)

    def on_update(self, job: OwnedJob) -> None:
        state = self.states[job.job_id]
        state.suspended = bool(job.spec["schedule"].get("suspended"))
        self._save(state)
        self._sync_state(job, state)
        self._arm(job, state)  # the schedule itself may have changed

    def on_suspend(self, job: OwnedJob, suspended: bool) -> None:
        state = self.states[job.job_id]
        if state.suspended == suspended:
            return
        # Scheduled times that pass while suspended are recorded as skipped
        # (the timer keeps running): resuming never starts a burst of old runs.
        state.suspended = suspended
        self._save(state)
        self._sync_state(job, state)

    def _sync_state(self, job: OwnedJob, state: CronState) -> None:
        new = "suspended" if state.suspended else "scheduled"
        if job.state != new:
            self.ctx.set_job_state(job, new, persist=True, notify=True)

    # --- the schedule ------------------------------------------------------------

    def timers(self) -> dict[str, TimerHandler]:
        return {"cron": self._on_cron_timer}

    def _on_cron_timer(self, job_id: str) -> None:
        job = self.ctx.jobs.get(job_id)
        if job is not None and not job.terminal:
            self.on_timer(job)

    def on_timer(self, job: OwnedJob) -> None:
        state = self.states[job.job_id]
        schedule = job.spec["schedule"]
        now_ms = self._wall_ms()
        times = ScheduledTimes(schedule)
        due = times.due(state.last_ms, now_ms + 1)  # +1: the timer's float rounding
        if due is not None:
            window = max(int(schedule.get("catch_up") or 0), LATE_SLACK_MS)
            on_time = due.newest_ms >= now_ms - window
            # Every due time but the newest, and the newest too if stale.
            missed = due.count - 1 if on_time else due.count
            if missed:
                last = times.latest_until(due.newest_ms - 1) if on_time else due.newest_ms
                missed_times = attrs.evolve(due, newest_ms=last, count=missed)
                self._add_missed(job, state, missed_times, ran=on_time)
            if on_time:
                self._fire(job, state, due.newest_ms)
            state.last_ms = max(state.last_ms, due.newest_ms)
        self._trim(job, state)
        self._save(state)
        self._arm(job, state)

    def _add_missed(self, job: OwnedJob, state: CronState, missed: Due, *, ran: bool) -> None:
        """One history entry for the ``missed`` times (``ran``: the newest due
        time, after them, was handled)."""
        counted = str(missed.count) if missed.exact else f"{missed.count} or more"
        first, newest = missed.first_ms, missed.newest_ms
        window = job.spec["schedule"].get("catch_up", 0) // 1000
        why = (
            "a catch-up runs only the newest due time"
            if ran
            else f"older than catch_up ({window}s)"
        )
        self._add_entry(
            state,
            {
                "run_id": "",
                "scheduled_ms": newest,
                "version": job.version,
                "outcome": "missed",
                "reason": f"{counted} scheduled time(s) from {_iso(first)} to {_iso(newest)} "
                f"were not run: {why}",
                "count": missed.count,
                "first_scheduled_ms": first,
            },
        )

    def _fire(self, job: OwnedJob, state: CronState, t: int) -> None:
        run_id = f"{job.job_id}@{t}"
        if self._handled(state, run_id, t):
            return  # belt and braces: last_ms already guards this
        entry = {
            "run_id": run_id,
            "scheduled_ms": t,
            "version": job.version,
            "outcome": "queued",
            "reason": "",
        }
        if state.suspended:
            entry.update(outcome="skipped", reason="the schedule is suspended", run_id="")
            self._add_entry(state, entry)
            return
        active = self._active_runs(state)
        policy = job.spec["schedule"].get("overlap", "skip")
        if active and policy == "skip":
            entry.update(outcome="skipped", reason=f"run {active[-1]} still active", run_id="")
            self._add_entry(state, entry)
            return
        if active and policy == "buffer_one":
            if state.buffered_ms is not None:
                entry.update(
                    outcome="skipped", reason="a run is already waiting (buffer_one)", run_id=""
                )
            else:
                state.buffered_ms = t
                entry.update(outcome="buffered", reason=f"waiting for run {active[-1]}")
            self._add_entry(state, entry)
            return
        if active and policy == "replace":
            for old in active:
                self.ctx.cancel(old, f"replaced by run {run_id}")
        self._add_entry(state, entry)
        self._start_run(job, entry)

    def _handled(self, state: CronState, run_id: str, t: int) -> bool:
        """Time ``t`` already has a run job or a history entry."""
        return run_id in self.ctx.jobs or any(e["scheduled_ms"] == t for e in state.entries)

    def _start_run(self, job: OwnedJob, entry: dict[str, Any]) -> None:
        entry["outcome"], entry["version"] = "queued", job.version
        self.ctx.create_job(
            entry["run_id"],
            job.spec,
            kind="run",
            version=job.version,
            parent=job.job_id,
            scheduled_ms=entry["scheduled_ms"],
        )
        self.out.notify(
            "cron_run_started",
            job_id=job.job_id,
            run_id=entry["run_id"],
            scheduled_ms=entry["scheduled_ms"],
            version=job.version,
        )

    def on_run_finished(self, run: OwnedJob) -> None:
        state = self.states.get(run.parent)
        parent = self.ctx.jobs.get(run.parent)
        if state is None or parent is None:
            return
        for entry in state.entries:
            if entry["run_id"] == run.job_id:
                entry["outcome"], entry["reason"] = run.state, run.reason
                entry["executions"] = _executions(run)
        if state.buffered_ms is not None and not parent.terminal and not self._active_runs(state):
            t, state.buffered_ms = state.buffered_ms, None
            for entry in state.entries:
                if entry["scheduled_ms"] == t and entry["outcome"] == "buffered":
                    if state.suspended:
                        entry.update(outcome="skipped", reason="the schedule is suspended")
                    else:
                        self._start_run(parent, entry)
        self._trim(parent, state)
        self._save(state)

    # --- history -----------------------------------------------------------------

    def _active_runs(self, state: CronState) -> list[str]:
        active = []
        for entry in state.entries:
            if entry["outcome"] in ("queued", "running"):
                run = self.ctx.jobs.get(entry["run_id"])
                if run is not None and not run.terminal:
                    active.append(entry["run_id"])
        return active

    def _add_entry(self, state: CronState, entry: dict[str, Any]) -> None:
        state.entries.append(entry)
        self.out.notify(
            "cron_run",
            job_id=state.job_id,
            run_id=entry["run_id"],
            scheduled_ms=entry["scheduled_ms"],
            outcome=entry["outcome"],
            reason=entry["reason"],
            count=entry.get("count", 1),
            first_scheduled_ms=entry.get("first_scheduled_ms", entry["scheduled_ms"]),
        )

    def _trim(self, job: OwnedJob, state: CronState) -> None:
        """Keep the newest ``history.succeeded`` completed and ``history.failed``
        failed or stopped runs, the newest skipped entries and, counted apart,
        the newest missed entries; forget the rest (their run jobs too)."""
        history = job.spec["schedule"].get("history") or {}
        limits = {
            "completed": int(history.get("succeeded", 10)),
            "failed": int(history.get("failed", 5)),
            "skipped": KEEP_SKIPPED,
            "missed": KEEP_MISSED,
        }
        seen = dict.fromkeys(limits, 0)
        keep: list[dict[str, Any]] = []
        for entry in reversed(state.entries):
            group = "failed" if entry["outcome"] == "stopped" else entry["outcome"]
            if group in limits:
                seen[group] += 1
                if seen[group] > limits[group]:
                    if entry["run_id"]:
                        self.ctx.forget(entry["run_id"])
                    continue
            keep.append(entry)
        keep.reverse()
        state.entries = keep

    # --- queries -----------------------------------------------------------------

    def runs(self, job_id: str) -> list[dict[str, Any]]:
        state = self.states.get(job_id)
        if state is None:
            raise LocalProtocolError(f"job {job_id} is not a cron job owned by this node")
        listed = []
        for entry in state.entries:
            row = dict(entry)
            run = self.ctx.jobs.get(entry["run_id"]) if entry["run_id"] else None
            if run is not None:
                if not run.terminal:
                    row["outcome"] = run.state
                row["executions"] = _executions(run)
            row.setdefault("executions", [])
            row.setdefault("count", 1)
            row.setdefault("first_scheduled_ms", row["scheduled_ms"])
            listed.append(row)
        return listed

    def describe(self, job: OwnedJob) -> dict[str, Any]:
        state = self.states.get(job.job_id)
        if state is None:
            return {}
        return {
            "suspended": state.suspended,
            "last_scheduled_ms": state.last_ms,
            "next_ms": state.next_ms,
            "buffered_ms": state.buffered_ms,
            "active_runs": self._active_runs(state),
            "overlap": job.spec["schedule"].get("overlap", "skip"),
        }


def _iso(ms: int) -> str:
    """Unix ms as ISO-8601 UTC (for reasons; pure, no clock)."""
    at = datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC)
    return at.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _executions(run: OwnedJob) -> list[dict[str, Any]]:
    return [
        {"execution_id": e.execution_id, "node": e.node, "state": e.state}
        for slot in run.slots
        for e in slot.executions
    ]
