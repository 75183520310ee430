"""Job kinds on the hand-cranked network: ops, daemon, service and cron.

Exact scenarios (which node runs what, when an execution ends); the same
properties under random faults at scale are in test_simnet_kinds.py, over
real libp2p in test_real_kinds.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from protocols.config import ANNOUNCE_TOPIC, Timings
from protocols.events import CancelJob, SubmitJob, SuspendJob, UpdateJob
from protocols.messages import CENSUS_SLOT, AskForBid
from protocols.owner.base import NO_MATCH_ROUNDS, OPS_QUIET_ROUNDS
from protocols.owner.census import CENSUS_ECHO_AT
from tests.protonet import LATENCY, WALL_EPOCH, Frame, ProtoNet, sim_task

FAST = Timings(lease_ttl=3.0, lease_grace=1.0, bid_window=0.2, daemon_scan=2.0)


def spec(kind: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    task = extra.pop("task", None) or sim_task()
    doc: dict[str, Any] = {
        "name": "k",
        "type": kind,
        "constraints": {"labels": labels or {}},
        "task": task,
        "queue_timeout": None,
    }
    doc.update(extra)
    return doc


def running_on(net: ProtoNet, job_id: str) -> dict[str, list[str]]:
    """node -> execution ids of ``job_id`` running there (per the executors)."""
    out: dict[str, list[str]] = {}
    for node, execs in net.running.items():
        for exec_id, start in execs.items():
            if start.job_id == job_id:
                out.setdefault(node, []).append(exec_id)
    return out


# --- ops ---------------------------------------------------------------------------


def test_ops_runs_once_on_every_matching_node_and_completes() -> None:
    labels = {"a": {}, "b": {"zone": "x"}, "c": {"zone": "x"}, "d": {"zone": "y"}}
    net = ProtoNet(["a", "b", "c", "d"], labels=labels, timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("ops1", spec("ops", {"zone": "x"})))
    net.run_until(lambda: len(running_on(net, "ops1")) == 2, limit=10)
    assert sorted(running_on(net, "ops1")) == ["b", "c"]
    for node, execs in running_on(net, "ops1").items():
        net.finish(node, execs[0])
    net.run_until(lambda: net.job_state("a", "ops1") == "completed", limit=20)
    described = net.core("a").describe("ops1")
    assert sorted(s["node"] for s in described["slots"]) == ["b", "c"]


def test_ops_fails_naming_the_node_that_failed() -> None:
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    task = sim_task(retry={"attempts": 1, "backoff": 1000})
    net.feed("a", SubmitJob("ops2", spec("ops", task=task)))
    net.run_until(lambda: len(running_on(net, "ops2")) == 2, limit=10)
    net.finish("b", running_on(net, "ops2")["b"][0], status="failed", exit_code=3)
    net.run_for(1.0)
    assert net.job_state("a", "ops2") == "running"  # c still runs
    net.finish("c", running_on(net, "ops2")["c"][0])
    net.run_until(lambda: net.job_state("a", "ops2") == "failed", limit=20)
    reason = net.core("a").owner.jobs["ops2"].reason
    assert "1 of 2 nodes" in reason and "b:" in reason and "c:" not in reason


def test_ops_without_matching_node_fails_fast() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    sent = _census_broadcasts(net, "a")
    net.feed("a", SubmitJob("ops3", spec("ops", {"gpu": "yes"})))
    net.run_until(lambda: net.job_state("a", "ops3") == "failed", limit=30)
    assert "no node matches" in net.core("a").owner.jobs["ops3"].reason
    assert sorted(sent) == list(range(1, NO_MATCH_ROUNDS + 1))  # no more rounds than that



def _census_broadcasts(net: ProtoNet, owner: str) -> dict[int, list[float]]:
    """Record, by census round, when ``owner``'s broadcast census asks went out."""
    sent: dict[int, list[float]] = {}

    def record(frame: Frame) -> bool:
        msg = frame.message
        if (frame.sender == owner and frame.topic == ANNOUNCE_TOPIC
                and isinstance(msg, AskForBid) and msg.slot == CENSUS_SLOT):
            sent.setdefault(msg.attempt, [])
            if frame.dest == "b":  # one copy per publish (each peer gets one)
                sent[msg.attempt].append(round(frame.at - LATENCY, 6))
        return False

    net.drop = record
    return sent


def test_each_census_round_broadcasts_again_halfway_through_its_window() -> None:
    """The broadcast is the only way to a node the owner has not heard of, and
    nothing acknowledges it: it goes twice per round, the second copy at
    ``CENSUS_ECHO_AT`` of the window, and never after its round closed."""
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    sent = _census_broadcasts(net, "a")
    net.feed("a", SubmitJob("ops4", spec("ops")))
    net.run_until(lambda: len(running_on(net, "ops4")) == 2, limit=10)
    for node, execs in running_on(net, "ops4").items():
        net.finish(node, execs[0])
    net.run_until(lambda: net.job_state("a", "ops4") == "completed", limit=30)
    assert len(sent) >= 1 + OPS_QUIET_ROUNDS  # the first round, then quiet ones
    for attempt, times in sent.items():
        assert len(times) == 2, (attempt, times)
        assert times[1] - times[0] == pytest.approx(FAST.bid_window * CENSUS_ECHO_AT), times



def test_a_daemon_census_is_not_echoed() -> None:
    """A daemon re-counts every ``daemon_scan``, so a node one round missed is
    found by the next: its rounds broadcast once (no steady-state cost)."""
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    sent = _census_broadcasts(net, "a")
    net.feed("a", SubmitJob("d0", spec("daemon")))
    net.run_for(3 * FAST.daemon_scan)
    assert len(sent) >= 3
    assert all(len(times) == 1 for times in sent.values()), sent


# --- daemon ------------------------------------------------------------------------


def test_daemon_reaches_every_matching_node_including_a_joiner() -> None:
    net = ProtoNet(
        ["a", "b", "c", "j"], timings=FAST, owners_only=frozenset("a"), absent=frozenset("j")
    )
    net.run_for(1.0)
    net.feed("a", SubmitJob("d1", spec("daemon")))
    net.run_until(lambda: sorted(running_on(net, "d1")) == ["b", "c"], limit=10)
    net.start("j")
    joined = net.now
    net.run_until(lambda: "j" in running_on(net, "d1"), limit=joined + 3 * FAST.daemon_scan)
    net.run_for(3 * FAST.lease_ttl)  # steady state: one each, leases renewed
    assert {n: len(e) for n, e in running_on(net, "d1").items()} == {"b": 1, "c": 1, "j": 1}
    assert net.core("a").describe("d1")["live"] == 3


def test_a_joiner_gets_its_daemon_on_its_hello_not_at_the_next_scan() -> None:
    """A new peer's hello makes a daemon job re-count within a bid window, so
    the joiner runs the daemon in seconds even when scans are a minute apart."""
    slow_scan = Timings(lease_ttl=3.0, lease_grace=1.0, bid_window=0.2, daemon_scan=60.0)
    net = ProtoNet(
        ["a", "b", "j"], timings=slow_scan, owners_only=frozenset("a"), absent=frozenset("j")
    )
    net.run_for(1.0)
    net.feed("a", SubmitJob("d2", spec("daemon")))
    net.run_until(lambda: "b" in running_on(net, "d2"), limit=10)
    net.run_for(5.0)  # the census is over; the next scan is about a minute away
    net.start("j")
    joined = net.now
    net.run_until(lambda: "j" in running_on(net, "d2"), limit=joined + 5)


def test_failed_daemon_restarts_in_place_then_is_regranted() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    task = sim_task(retry={"attempts": 3, "backoff": 500})
    net.feed("a", SubmitJob("d2", spec("daemon", task=task)))
    net.run_until(lambda: "b" in running_on(net, "d2"), limit=10)
    first = running_on(net, "d2")["b"][0]
    net.finish("b", first, status="failed", exit_code=1)
    net.run_until(lambda: "b" in running_on(net, "d2"), limit=net.now + 5)
    again = running_on(net, "d2")["b"][0]
    assert again == f"{first}#1"  # same lease, restarted in place
    assert net.notes_of("execution_restarted")[-1]["restarts"] == 1
    net.finish("b", again, status="failed", exit_code=1)
    net.run_until(lambda: "b" in running_on(net, "d2"), limit=net.now + 5)
    net.finish("b", f"{first}#2", status="failed", exit_code=1)
    # Restarts exhausted: the holder reports, the owner re-grants a new epoch to b.
    net.run_until(
        lambda: any(not e.startswith(first) for e in running_on(net, "d2").get("b", [])),
        limit=net.now + 10,
    )
    slot = net.core("a").owner.jobs["d2"].slots[0]
    assert slot.epoch == 2 and slot.pinned == "b"


def test_restarted_node_gets_its_daemon_back() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("d3", spec("daemon")))
    net.run_until(lambda: "b" in running_on(net, "d3"), limit=10)
    net.crash("b")
    net.run_for(2.0)
    net.start("b")
    net.run_until(lambda: "b" in running_on(net, "d3"), limit=net.now + 40)
    assert net.core("a").owner.jobs["d3"].slots[0].epoch == 2


def test_daemon_update_rolls_out_one_node_at_a_time() -> None:
    ids = ["a", "b", "c", "d"]
    net = ProtoNet(ids, timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("d4", spec("daemon")))
    net.run_until(lambda: len(running_on(net, "d4")) == 3, limit=10)
    net.run_for(1.0)
    new = spec("daemon", task=sim_task(env={"V": "2"}))
    net.feed("a", UpdateJob("d4", new))
    updated = net.now
    job = net.core("a").owner.jobs["d4"]
    worst = 0
    for _ in range(20_000):
        if all(
            s.current and s.current.version == 2 and s.state.value == "running" for s in job.slots
        ):
            break
        down = sum(1 for s in job.slots if s.state.value != "running")
        worst = max(worst, down)
        if not net.step():
            break
    assert all(s.current.version == 2 for s in job.slots if s.current)
    assert worst == 1
    # Each node's turn begins once the previous one's new version holds its
    # lease, not at that lease's next renewal: all three within one renewal.
    assert net.now - updated < FAST.renew_interval


# --- service -----------------------------------------------------------------------


def test_service_replaces_a_lost_holder_and_an_exit() -> None:
    net = ProtoNet(["a", "b", "c", "d"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("s1", spec("service", count=2)))
    net.run_until(lambda: sum(map(len, running_on(net, "s1").values())) == 2, limit=10)
    victim = sorted(running_on(net, "s1"))[0]
    net.crash(victim)
    net.run_until(
        lambda: sum(len(v) for n, v in running_on(net, "s1").items() if n != victim) == 2,
        limit=net.now + 3 * FAST.lease_ttl,
    )
    node, execs = next(iter(running_on(net, "s1").items()))
    net.finish(node, execs[0], status="succeeded")  # an exit is a failure for a service
    net.run_until(
        lambda: (
            net.core("a").describe("s1")["live"] == 2
            and sum(map(len, running_on(net, "s1").values())) == 2
        ),
        limit=net.now + 10,
    )
    epochs = [s.epoch for s in net.core("a").owner.jobs["s1"].slots]
    assert sorted(epochs) == [2, 2]  # both slots were re-granted once
    assert net.job_state("a", "s1") == "running"


# --- cron --------------------------------------------------------------------------


def cron_spec(overlap: str = "skip", every: int | None = 2000, **sched: Any) -> dict[str, Any]:
    schedule = {
        "cron": None,
        "every": every,
        "time_zone": "UTC",
        "overlap": overlap,
        "catch_up": 60_000,
        "history": {"succeeded": 10, "failed": 5},
        "suspended": False,
    }
    schedule.update(sched)
    return spec("cron", count=1, schedule=schedule)


def finish_runs_after(net: ProtoNet, job: str, seconds: float, until: float) -> None:
    """Drive the net; every run of ``job`` ends ``seconds`` after it started."""
    started: dict[str, float] = {}
    while net.now < until:
        for node, execs in net.running.items():
            for exec_id, start in list(execs.items()):
                if start.job_id.startswith(job + "@"):
                    started.setdefault(exec_id, net.now)
                    if net.now - started[exec_id] >= seconds:
                        net.finish(node, exec_id)
        if not net.step():
            break


def test_cron_skip_runs_one_at_a_time_and_records_skips() -> None:
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c1", cron_spec("skip")))
    finish_runs_after(net, "c1", 3.0, until=net.now + 20)
    runs = net.core("a").runs("c1")
    started = [r for r in runs if r["run_id"]]
    skipped = [r for r in runs if r["outcome"] == "skipped"]
    assert len(started) >= 4 and len(skipped) >= 3
    assert all(r["run_id"] == f"c1@{r['scheduled_ms']}" for r in started)
    assert len({r["scheduled_ms"] for r in runs}) == len(runs)  # one entry per time
    assert all(r["scheduled_ms"] % 2000 == 0 for r in runs)


def test_cron_owner_restart_never_runs_a_time_twice_and_catches_up() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c2", cron_spec("allow")))
    finish_runs_after(net, "c2", 0.5, until=net.now + 7)
    before = {r["scheduled_ms"] for r in net.core("a").runs("c2") if r["run_id"]}
    net.crash("a")
    net.run_for(5.0)  # ~2 scheduled times pass while the owner is down
    net.start("a")
    finish_runs_after(net, "c2", 0.5, until=net.now + 3)
    runs = net.core("a").runs("c2")
    times = [r["scheduled_ms"] for r in runs if r["run_id"]]
    assert len(times) == len(set(times))
    assert before <= set(times)
    # The catch-up ran the newest time missed while down; the one before it is
    # recorded missed (inside catch_up, but a catch-up starts one run).
    (missed,) = [r for r in runs if r["outcome"] == "missed"]
    assert missed["count"] == 1 and missed["first_scheduled_ms"] == missed["scheduled_ms"]
    handled = sorted([*times, missed["scheduled_ms"]])
    assert handled == list(range(min(times), max(times) + 1, 2000))
    assert missed["scheduled_ms"] + 2000 in times


def test_cron_suspend_and_resume() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c3", cron_spec("allow")))
    net.feed("a", SuspendJob("c3", True))
    finish_runs_after(net, "c3", 0.5, until=net.now + 5)
    assert net.job_state("a", "c3") == "suspended"
    runs = net.core("a").runs("c3")
    assert runs and all(r["outcome"] == "skipped" for r in runs)
    net.feed("a", SuspendJob("c3", False))
    finish_runs_after(net, "c3", 0.5, until=net.now + 5)
    assert any(r["outcome"] == "completed" for r in net.core("a").runs("c3"))


def test_cron_update_applies_to_later_runs() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c4", cron_spec("allow")))
    finish_runs_after(net, "c4", 0.5, until=net.now + 4)
    net.feed("a", UpdateJob("c4", cron_spec("allow")))
    finish_runs_after(net, "c4", 0.5, until=net.now + 4)
    versions = [r["version"] for r in net.core("a").runs("c4") if r["run_id"]]
    assert versions[0] == 1 and versions[-1] == 2 and versions == sorted(versions)


def test_cron_update_to_a_sooner_schedule_is_armed_at_once() -> None:
    """From every 20 s to every 1 s: the next run follows the new schedule,
    not the time the old one had armed."""
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c5", cron_spec("allow", every=20_000)))
    finish_runs_after(net, "c5", 0.5, until=net.now + 21)
    old_next = net.core("a").cron.describe(net.core("a").owner.jobs["c5"])["next_ms"]
    updated_ms = WALL_EPOCH * 1000 + net.now * 1000
    assert old_next - updated_ms > 5_000  # the old schedule's next run is far off
    net.feed("a", UpdateJob("c5", cron_spec("allow", every=1_000)))
    finish_runs_after(net, "c5", 0.5, until=net.now + 3)
    later = [r for r in net.core("a").runs("c5") if r["version"] == 2 and r["run_id"]]
    assert later and later[0]["scheduled_ms"] < old_next, later


def test_a_cron_run_knows_its_cron_job_and_its_scheduled_time() -> None:
    """docs/protocol.md: cron runs get P2PNODE_CRON_JOB and
    P2PNODE_SCHEDULED_MS (ms since the epoch) in their environment; other
    jobs' tasks do not."""
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c6", cron_spec("allow", every=2000)))
    net.feed("a", SubmitJob("b6", spec("batch")))
    net.run_until(lambda: len(net.running["b"]) == 2, limit=net.now + 5)
    starts = {s.job_id.split("@")[0]: s for s in net.running["b"].values()}
    (run,) = net.core("a").runs("c6")
    assert starts["c6"].env["P2PNODE_CRON_JOB"] == "c6"
    assert starts["c6"].env["P2PNODE_SCHEDULED_MS"] == str(run["scheduled_ms"])
    assert "P2PNODE_CRON_JOB" not in starts["b6"].env
    assert "P2PNODE_SCHEDULED_MS" not in starts["b6"].env


def test_stopping_a_daemon_between_two_local_restarts_ends_cleanly() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    task = sim_task(retry={"attempts": 3, "backoff": 5000})  # long backoff: stop inside it
    net.feed("a", SubmitJob("d5", spec("daemon", task=task)))
    net.run_until(lambda: "b" in running_on(net, "d5"), limit=10)
    first = running_on(net, "d5")["b"][0]
    net.finish("b", first, status="failed", exit_code=1)
    net.run_for(1.0)
    assert running_on(net, "d5") == {}  # waiting for the restart backoff
    net.feed("a", CancelJob("d5"))
    net.run_for(10.0)
    assert running_on(net, "d5") == {}  # the pending restart was dropped
    assert net.core("b").holder.held == {}
    assert net.job_state("a", "d5") == "stopped"


def test_a_daemon_holder_keeps_its_lease_while_restarting_in_place() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    task = sim_task(retry={"attempts": 2, "backoff": 2000})
    net.feed("a", SubmitJob("d6", spec("daemon", task=task)))
    net.run_until(lambda: "b" in running_on(net, "d6"), limit=10)
    first = running_on(net, "d6")["b"][0]
    net.finish("b", first, status="failed", exit_code=1)
    net.run_for(3 * FAST.lease_ttl)  # longer than a lease: renewals went on meanwhile
    assert running_on(net, "d6") == {"b": [f"{first}#1"]}
    slot = net.core("a").owner.jobs["d6"].slots[0]
    assert slot.epoch == 1 and slot.state.value == "running"


def test_daemon_slot_retires_when_its_node_stops_matching() -> None:
    labels = {"b": {"role": "edge"}}
    net = ProtoNet(["a", "b"], labels=labels, timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("d7", spec("daemon", {"role": "edge"})))
    net.run_until(lambda: "b" in running_on(net, "d7"), limit=10)
    net.crash("b")
    net.labels["b"] = {"role": "core"}  # restarted with other labels
    net.start("b")
    net.run_for(40.0)
    job = net.core("a").owner.jobs["d7"]
    assert running_on(net, "d7") == {}
    assert job.slots[0].state.value == "cancelled" and "no longer matches" in job.slots[0].reason


def test_ops_slot_fails_when_its_node_stops_matching() -> None:
    """An ops job's node restarts with other labels while the job runs: its
    slot cannot run anywhere else, so it fails, naming the node and the
    mismatch, and the job fails with it (rather than waiting for good)."""
    labels = {"b": {"role": "edge"}, "c": {"role": "edge"}}
    net = ProtoNet(["a", "b", "c"], labels=labels, timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("o7", spec("ops", {"role": "edge"})))
    net.run_until(lambda: sorted(running_on(net, "o7")) == ["b", "c"], limit=10)
    net.crash("b")
    net.labels["b"] = {"role": "core"}  # restarted with other labels
    net.start("b")
    for exec_id in running_on(net, "o7")["c"]:
        net.finish("c", exec_id)
    net.run_until(lambda: net.job_state("a", "o7") == "failed", limit=net.now + 60)
    job = net.core("a").owner.jobs["o7"]
    (slot,) = [s for s in job.slots if s.pinned == "b"]
    assert slot.state.value == "failed" and "no longer matches" in slot.reason
    assert "b: " in job.reason and "no longer matches" in job.reason


def test_update_refused_for_batch_and_type_change() -> None:
    import pytest

    from protocols.errors import LocalProtocolError
    from tests.protonet import batch_spec

    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.feed("a", SubmitJob("b1", batch_spec()))
    with pytest.raises(LocalProtocolError, match="only daemon, service and cron"):
        net.feed("a", UpdateJob("b1", batch_spec()))
    net.feed("a", SubmitJob("s9", spec("service")))
    with pytest.raises(LocalProtocolError, match="cannot make it"):
        net.feed("a", UpdateJob("s9", spec("daemon")))
    with pytest.raises(LocalProtocolError, match="only cron jobs"):
        net.feed("a", SuspendJob("s9", True))
    with pytest.raises(LocalProtocolError, match="not owned"):
        net.feed("a", UpdateJob("nope", spec("service")))


def test_a_service_that_keeps_exiting_is_replaced_after_a_growing_backoff() -> None:
    """A service task that exits (even with 0) is restarted, but after the
    task's backoff, doubled for each exit in a row: an instant exit must not
    become a restart storm.  (Only a stream consumer's graceful end, its
    run_for, is re-granted at once.)"""
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("s3", spec("service", count=1)))  # backoff 1 s
    gaps = []
    for _ in range(3):
        net.run_until(lambda: bool(running_on(net, "s3")), limit=net.now + 30)
        (exec_id,) = running_on(net, "s3")["b"]
        net.finish("b", exec_id)  # exits at once, status 0
        ended = net.now
        net.run_until(lambda: bool(running_on(net, "s3")), limit=net.now + 30)
        gaps.append(net.now - ended)
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0 and gaps[2] >= 4.0, gaps


def test_service_scale_up_and_down_by_update() -> None:
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("s2", spec("service", count=1)))
    net.run_until(lambda: net.core("a").describe("s2")["live"] == 1, limit=10)
    net.feed("a", UpdateJob("s2", spec("service", count=3)))
    net.run_until(lambda: net.core("a").describe("s2")["live"] == 3, limit=net.now + 20)
    net.feed("a", UpdateJob("s2", spec("service", count=2)))
    net.run_until(
        lambda: (
            sum(map(len, running_on(net, "s2").values())) == 2
            and net.core("a").describe("s2")["live"] == 2
        ),
        limit=net.now + 20,
    )
    described = net.core("a").describe("s2")
    assert described["desired"] == 2 and described["live"] == 2 and described["version"] == 3


def test_cron_buffer_one_waits_for_the_active_run_and_drops_the_rest() -> None:
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c5", cron_spec("buffer_one")))
    finish_runs_after(net, "c5", 5.0, until=net.now + 21)
    runs = net.core("a").runs("c5")
    started = [r for r in runs if r["run_id"]]
    dropped = [r for r in runs if r["outcome"] == "skipped"]
    assert dropped and all("buffer_one" in r["reason"] for r in dropped)
    # Never two runs at once: each run was granted only after the previous ended.
    active = [r for r in started if r["outcome"] in ("queued", "running")]
    assert len(active) <= 1
    assert len(started) >= 3
    assert all(r["outcome"] in ("completed", "queued", "running", "buffered") for r in started)


def test_cron_replace_stops_the_active_run() -> None:
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c6", cron_spec("replace")))
    finish_runs_after(net, "c6", 5.0, until=net.now + 9)
    runs = net.core("a").runs("c6")
    stopped = [r for r in runs if r["outcome"] == "stopped"]
    assert len(stopped) >= 2 and all("replaced by run c6@" in r["reason"] for r in stopped)
    assert len([r for r in runs if r["outcome"] in ("queued", "running")]) == 1


def test_cron_catch_up_skips_times_older_than_the_window() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c7", cron_spec("allow", catch_up=5_000)))
    finish_runs_after(net, "c7", 0.5, until=net.now + 3)
    net.crash("a")
    net.run_for(30.0)
    down_until = net.now
    net.start("a")
    finish_runs_after(net, "c7", 0.5, until=net.now + 0.5)
    runs = net.core("a").runs("c7")
    missed = [r for r in runs if r["outcome"] == "missed"]
    assert len(missed) == 1 and "were not run" in missed[0]["reason"]
    caught = [
        r for r in runs if r["run_id"] and r["scheduled_ms"] > (WALL_EPOCH + down_until - 30) * 1000
    ]
    # Only the newest time (inside the 5 s window) ran; the 14 before it are missed.
    assert len(caught) == 1 and missed[0]["count"] == 14
    assert caught[0]["scheduled_ms"] >= (WALL_EPOCH + down_until - 2) * 1000
    assert missed[0]["scheduled_ms"] == caught[0]["scheduled_ms"] - 2000


def test_cron_history_is_trimmed_and_old_runs_forgotten() -> None:
    net = ProtoNet(["a", "b"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    net.feed("a", SubmitJob("c8", cron_spec("allow", history={"succeeded": 2, "failed": 1})))
    finish_runs_after(net, "c8", 0.5, until=net.now + 13)
    runs = net.core("a").runs("c8")
    completed = [r for r in runs if r["outcome"] == "completed"]
    assert len(completed) == 2
    owned_runs = [j for j in net.core("a").owner.jobs if j.startswith("c8@")]
    assert len(owned_runs) <= 3  # the 2 kept + at most one still running
    assert not any(k.startswith("c8@") for k in net.stores["a"]["jobs"] if k not in owned_runs)
