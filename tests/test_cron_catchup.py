"""Cron after downtime: the Kubernetes CronJob rule, as a case table.

Modelled on the Kubernetes CronJob controller's ``getNextScheduleTime`` /
``syncCronJob`` test table (downtime shorter and longer than the starting
window, deadline exceeded, each concurrency policy, suspended, a restart in
the middle): after the owner was down past many scheduled times, at most one
run starts, for the newest time due (if it is within ``catch_up``), and the
others are recorded as one ``missed`` history entry with their count and range.

Every case: an hourly cron job on owner ``a`` (owns, never computes) with one
holder ``b``.  The run for hour 1 is started; it has ended (``prev: done``) or
still runs (``prev: active``) when both nodes go down at hour 1 + 30 s; they
come back after ``down`` seconds.  Hourly times on a week of downtime: 168 due.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from protocols.events import SubmitJob, SuspendJob
from tests.protonet import WALL_EPOCH, ProtoNet
from tests.test_kinds import FAST, cron_spec, running_on

HOUR = 3600
WEEK = 7 * 24 * HOUR
CRASH_AT = HOUR + 30.0  # 30 s after the first scheduled time (hour 1)


def hour_ms(h: int) -> int:
    return round((WALL_EPOCH + h * HOUR) * 1000)


@attrs.frozen
class Case:
    overlap: str = "allow"
    catch_up_s: int = WEEK
    prev: str = "done"  # the run of hour 1 at the crash: "done" or "active"
    suspended: bool = False
    down: float = WEEK
    cron: str | None = None  # a cron expression instead of `every: 1h`
    # expected at the restart:
    starts: bool = True  # the newest due time starts a run
    missed: int = 167  # count of the one missed entry (0: no entry)
    newest: str | None = "queued"  # history outcome of the newest due time (None: none due)
    replaced: bool = False  # the run of hour 1 is stopped, replaced


CASES = {
    # downtime shorter than a period: nothing due, nothing missed
    "down 30 min, nothing due": Case(down=1800, starts=False, missed=0, newest=None),
    # one time passed while down, inside the window: it runs
    "down 1 h, inside window": Case(down=HOUR, catch_up_s=2 * HOUR, missed=0),
    # a week down: only the newest of 168 times runs, whatever the policy
    "down 1 week, window 7 d, allow": Case(),
    "down 1 week, window 7 d, skip": Case(overlap="skip"),
    "down 1 week, window 7 d, replace": Case(overlap="replace"),
    "down 1 week, window 7 d, buffer_one": Case(overlap="buffer_one"),
    "down 1 week, window 2 h, allow": Case(catch_up_s=2 * HOUR),
    "down 1 week, window 2 h, replace": Case(overlap="replace", catch_up_s=2 * HOUR),
    "down 1 week, cron expression": Case(cron="0 * * * *"),
    # deadline exceeded: the newest due time is 30 s old, the window 10 s
    "down 1 week, deadline exceeded": Case(
        catch_up_s=10, starts=False, missed=168, newest=None
    ),
    "down 1 h, deadline exceeded": Case(
        down=HOUR, catch_up_s=10, starts=False, missed=1, newest=None
    ),
    # a run still active at the restart
    "still active, skip": Case(overlap="skip", prev="active", starts=False, newest="skipped"),
    "still active, allow": Case(prev="active"),
    "still active, replace": Case(overlap="replace", prev="active", replaced=True),
    "still active, buffer_one": Case(
        overlap="buffer_one", prev="active", starts=False, newest="buffered"
    ),
    # suspended during the downtime: nothing runs
    "suspended, down 1 week": Case(suspended=True, starts=False, newest="skipped"),
}


def started_runs(net: ProtoNet, since: int) -> list[int]:
    return [n.data["scheduled_ms"] for _, n in net.notes[since:] if n.kind == "cron_run_started"]


def boot(case: Case) -> ProtoNet:
    """Submit the cron job; its first run (hour 1) started on b; then per
    ``case.prev`` it ended or still runs; both nodes crash at CRASH_AT."""
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    every = None if case.cron else HOUR * 1000
    spec = cron_spec(case.overlap, every, cron=case.cron, catch_up=case.catch_up_s * 1000)
    net.feed("a", SubmitJob("c", spec))
    net.run_until(lambda: "b" in running_on(net, "c@" + str(hour_ms(1))), limit=HOUR + 5)
    if case.prev == "done":
        net.finish("b", running_on(net, f"c@{hour_ms(1)}")["b"][0])
        net.run_until(lambda: net.job_state("a", f"c@{hour_ms(1)}") == "completed", HOUR + 10)
    if case.suspended:
        net.feed("a", SuspendJob("c", True))
    net.run_for(CRASH_AT - net.now)
    net.crash("a")
    net.crash("b")
    return net


def restart(net: ProtoNet, down: float) -> int:
    """Both nodes come back after ``down`` seconds; returns the notes mark."""
    net.run_for(down)
    mark = len(net.notes)
    net.start("b")
    net.start("a")
    net.run_for(5.0)
    return mark


def missed_entries(net: ProtoNet) -> list[dict[str, Any]]:
    return [r for r in net.core("a").runs("c") if r["outcome"] == "missed"]


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_catch_up_case_table(case: Case) -> None:
    net = boot(case)
    mark = restart(net, case.down)
    restarted_ms = round((WALL_EPOCH + CRASH_AT + case.down) * 1000)
    due_hours = [h for h in range(2, 400) if hour_ms(h) <= restarted_ms]
    newest = hour_ms(due_hours[-1]) if due_hours else None

    started = started_runs(net, mark)
    assert started == ([newest] if case.starts else []), (started, newest)

    missed = missed_entries(net)
    if case.missed:
        assert len(missed) == 1, missed
        (entry,) = missed
        assert entry["count"] == case.missed
        assert entry["first_scheduled_ms"] == hour_ms(2)
        last_missed = due_hours[-1] if case.newest is None else due_hours[-2]
        assert entry["scheduled_ms"] == hour_ms(last_missed)
        assert entry["run_id"] == "" and entry["executions"] == []
        assert f"{case.missed} scheduled time(s)" in entry["reason"]
    else:
        assert missed == []

    history = {r["scheduled_ms"]: r for r in net.core("a").runs("c") if r["outcome"] != "missed"}
    if case.newest is None:  # handled only as (the end of) the missed range, if due at all
        assert newest is None or newest not in history
    else:
        assert newest is not None
        assert history[newest]["outcome"] in (
            ("queued", "running") if case.newest == "queued" else (case.newest,)
        )
    first = history[hour_ms(1)]
    if case.replaced:
        assert first["outcome"] == "stopped" and "replaced by run" in first["reason"]
    else:
        still = ("completed",) if case.prev == "done" else ("queued", "running")
        assert first["outcome"] in still
    # Never more than one run per scheduled time; at most one new run at all.
    all_started = started_runs(net, 0)
    assert len(all_started) == len(set(all_started)) <= 2


def test_a_buffered_catch_up_time_starts_when_the_active_run_ends() -> None:
    case = CASES["still active, buffer_one"]
    net = boot(case)
    mark = restart(net, case.down)
    newest = hour_ms(169)
    assert net.core("a").describe("c")["schedule"]["buffered_ms"] == newest
    first = f"c@{hour_ms(1)}"
    # The run of hour 1 lost its execution with b; it is granted again: end it.
    net.run_until(lambda: "b" in running_on(net, first), limit=net.now + 60)
    net.finish("b", running_on(net, first)["b"][0])
    net.run_until(lambda: started_runs(net, mark) == [newest], limit=net.now + 30)
    assert missed_entries(net)[0]["count"] == 167


def test_a_restart_in_the_middle_of_the_downtime_catches_up_twice() -> None:
    """Down 3.5 days, up for 5 s, down 3.5 days: two catch-ups, one run each;
    the two missed ranges and the two runs cover every due time exactly once."""
    net = boot(Case())
    half = WEEK / 2
    first_mark = restart(net, half)  # back at hour 85 + 30 s
    net.crash("a")
    net.crash("b")
    restart(net, half)  # back at hour 169 + 35 s
    assert started_runs(net, first_mark) == [hour_ms(85), hour_ms(169)]
    ranges = [(e["first_scheduled_ms"], e["scheduled_ms"], e["count"]) for e in missed_entries(net)]
    assert ranges == [(hour_ms(2), hour_ms(84), 83), (hour_ms(86), hour_ms(168), 83)]


def test_a_restart_right_after_a_catch_up_neither_reruns_nor_records_again() -> None:
    net = boot(Case())
    mark = restart(net, WEEK)
    history = net.core("a").runs("c")
    net.crash("a")
    net.run_for(1.0)
    net.start("a")
    net.run_for(5.0)
    assert started_runs(net, mark) == [hour_ms(169)]
    again = net.core("a").runs("c")
    assert [(r["scheduled_ms"], r["outcome"]) for r in again if r["outcome"] == "missed"] == [
        (r["scheduled_ms"], r["outcome"]) for r in history if r["outcome"] == "missed"
    ]


def test_the_next_time_after_a_catch_up_runs_on_schedule() -> None:
    net = boot(Case())
    mark = restart(net, WEEK)
    net.finish("b", running_on(net, f"c@{hour_ms(169)}")["b"][0])
    net.run_until(lambda: len(started_runs(net, mark)) == 2, limit=170 * HOUR + 5)
    assert started_runs(net, mark) == [hour_ms(169), hour_ms(170)]
    assert len(missed_entries(net)) == 1


def test_the_missed_record_outlives_later_skips() -> None:
    """Overlap skip with a run that never ends: far more skips than the
    history keeps (50) follow the catch-up; the missed record stays."""
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c", cron_spec("skip", every=2000, catch_up=60_000)))
    net.run_until(lambda: bool(net.running_anywhere()), limit=5)  # never finished
    net.crash("a")
    net.run_for(20.0)  # 10 times pass
    net.start("a")
    net.run_for(1.0)
    (missed,) = missed_entries(net)
    net.run_for(150.0)  # ~75 skips
    runs = net.core("a").runs("c")
    assert sum(r["outcome"] == "skipped" for r in runs) == 50  # trimmed to KEEP_SKIPPED
    assert missed_entries(net) == [missed]


# --- the scheduled times due at a wake-up ----------------------------------------------------


def test_due_times_summed_up_for_intervals_and_cron_expressions() -> None:
    from protocols.schedule import ScheduledTimes

    base = hour_ms(0)
    every = ScheduledTimes({"every": HOUR * 1000})
    hourly = ScheduledTimes({"cron": "0 * * * *", "time_zone": "Europe/Paris"})
    for times in (every, hourly):
        assert times.due(base, base + HOUR * 1000 - 1) is None
        due = times.due(base, base + WEEK * 1000 + 30_000)
        assert due is not None and due.exact
        assert (due.first_ms, due.newest_ms, due.count) == (hour_ms(1), hour_ms(168), 168)
        assert times.latest_until(hour_ms(5)) == hour_ms(5)
        assert times.latest_until(hour_ms(5) - 1) == hour_ms(4)


def test_due_times_of_a_cron_expression_are_counted_up_to_a_cap(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from protocols import schedule

    monkeypatch.setattr(schedule, "COUNT_CAP", 10)
    due = schedule.ScheduledTimes({"cron": "0 * * * *"}).due(hour_ms(0), hour_ms(100))
    assert due is not None and due.newest_ms == hour_ms(100)
    assert due.count == 10 and not due.exact


def test_a_capped_count_is_shown_as_a_lower_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    from protocols import schedule

    monkeypatch.setattr(schedule, "COUNT_CAP", 10)
    net = boot(Case(cron="0 * * * *"))
    restart(net, WEEK)
    (entry,) = missed_entries(net)
    assert entry["reason"].startswith("9 or more scheduled time(s)")
