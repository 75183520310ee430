"""Engine, network, executor and store of simnet, driven by toy cores."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from protocols.config import ANNOUNCE_TOPIC
from protocols.events import (
    Action,
    CancelTimer,
    Event,
    ExecutionFinished,
    MessageReceived,
    Notify,
    Persist,
    Publish,
    Send,
    SetTimer,
    Started,
    StartExecution,
    StopExecution,
    TimerFired,
)
from simnet.engine import Engine, Observer
from simnet.executor import decide
from simnet.network import NetConfig
from simnet.store import Records
from simnet.workload import sim_task

Script = Callable[["Toy", Event, float], list[Action]]


class Toy:
    """A core whose behaviour is a test-provided function."""

    def __init__(self, node_id: str, script: Script, records: Records, incarnation: int) -> None:
        self.node_id = node_id
        self.script = script
        self.records = records
        self.incarnation = incarnation
        self.state: dict[str, Any] = {}

    def handle(self, event: Event, now: float) -> list[Action]:
        return self.script(self, event, now)


class Log(Observer):
    def __init__(self) -> None:
        self.notes: list[tuple[float, str, str, dict[str, Any]]] = []

    def on_notify(self, node: str, kind: str, data: dict[str, Any], now: float) -> None:
        self.notes.append((now, node, kind, data))

    def of(self, kind: str) -> list[tuple[float, str, str, dict[str, Any]]]:
        return [n for n in self.notes if n[2] == kind]


def _factory(nid: str, script: Script) -> Callable[[Records, int], Toy]:
    return lambda records, inc: Toy(nid, script, records, inc)


def make(n: int, script: Script, seed: int = 1, **net: Any) -> tuple[Engine, Log]:
    log = Log()
    eng = Engine(seed, NetConfig(**net), observer=log)
    for i in range(n):
        eng.add_node(f"n{i}", _factory(f"n{i}", script))
    for i in range(n):
        eng.start_node(i)
    return eng, log


def burst(count: int, gap: float = 0.0) -> Script:
    """n0 sends ``count`` numbered frames to n1 (``gap`` seconds apart);
    every node notifies what it receives."""

    def script(core: Toy, ev: Event, now: float) -> list[Action]:
        if isinstance(ev, Started) and core.node_id == "n0":
            if gap == 0:
                return [Send("n1", b"%d" % i) for i in range(count)]
            core.state["i"] = 0
            return [SetTimer("tick", now)]
        if isinstance(ev, TimerFired):
            i = core.state["i"]
            core.state["i"] = i + 1
            out: list[Action] = [Send("n1", b"%d" % i)]
            if i + 1 < count:
                out.append(SetTimer("tick", now + gap))
            return out
        if isinstance(ev, MessageReceived):
            return [Notify("got", {"n": int(ev.data), "from": ev.sender, "topic": ev.topic})]
        return []

    return script


# --- network ------------------------------------------------------------------------


def test_latency_within_link_bounds() -> None:
    eng, log = make(2, burst(200), distance=(0.01, 0.02), jitter=0.005)
    eng.run()
    got = log.of("got")
    assert len(got) == 200
    base = eng.network.distance[0] + eng.network.distance[1]
    assert 0.02 <= base <= 0.04
    for t, node, _, data in got:
        assert node == "n1" and data["from"] == "n0"
        assert base <= t <= base + 0.005


def test_loss_rate_is_statistically_right() -> None:
    eng, log = make(2, burst(10_000), loss=0.3)
    eng.run()
    frac = len(log.of("got")) / 10_000
    assert 0.67 < frac < 0.73
    assert eng.stats.sent == 10_000
    assert eng.stats.delivered == len(log.of("got"))


def test_duplication_delivers_extra_copies() -> None:
    eng, log = make(2, burst(10_000), duplicate=0.2)
    eng.run()
    got = log.of("got")
    assert 11_700 < len(got) < 12_300
    assert len({d["n"] for *_, d in got}) == 10_000  # nothing lost


def _inversions(seq: list[int]) -> int:
    return sum(1 for a, b in itertools.pairwise(seq) if b < a)


def test_reordering() -> None:
    # 20 ms apart with 4 ms jitter: in order unless a copy is delayed.
    eng, log = make(2, burst(500, gap=0.02))
    eng.run()
    assert _inversions([d["n"] for *_, d in log.of("got")]) == 0
    eng, log = make(2, burst(500, gap=0.02), reorder=0.3, reorder_delay=0.25)
    eng.run()
    order = [d["n"] for *_, d in log.of("got")]
    assert sorted(order) == list(range(500))
    assert _inversions(order) > 20


def test_partition_and_heal() -> None:
    eng, log = make(3, burst(100, gap=0.1))
    eng.network.partition([[1]])  # n1 alone; n0, n2 together
    eng.run(until=4.95)  # frames 0..49 sent (t = 0.0 .. 4.9)
    assert log.of("got") == []
    assert eng.stats.dropped_partition == 0  # dropped at send time, never scheduled
    eng.network.heal()
    eng.run()
    assert {d["n"] for *_, d in log.of("got")} == set(range(50, 100))


def test_partition_cuts_frames_in_flight() -> None:
    eng, log = make(2, burst(1), distance=(0.05, 0.05), jitter=0.0)
    eng.network.partition([[0]])
    eng.network.heal()
    eng.run(until=0.01)  # the frame is now in flight
    eng.network.partition([[0]])
    eng.run()
    assert log.of("got") == [] and eng.stats.dropped_partition == 1


def test_publish_reaches_everyone_but_the_publisher() -> None:
    def script(core: Toy, ev: Event, now: float) -> list[Action]:
        if isinstance(ev, Started) and core.node_id == "n0":
            return [Publish(ANNOUNCE_TOPIC, b"7")]
        if isinstance(ev, MessageReceived):
            return [Notify("got", {"n": int(ev.data), "topic": ev.topic})]
        return []

    eng, log = make(5, script)
    eng.run()
    got = log.of("got")
    assert sorted(n for _, n, _, _ in got) == ["n1", "n2", "n3", "n4"]
    assert all(d["topic"] == ANNOUNCE_TOPIC for *_, d in got)


def test_send_to_self_is_delivered() -> None:
    def script(core: Toy, ev: Event, now: float) -> list[Action]:
        if isinstance(ev, Started):
            return [Send(core.node_id, b"1")]
        if isinstance(ev, MessageReceived):
            return [Notify("got", {"from": ev.sender})]
        return []

    eng, log = make(1, script, loss=1.0)
    eng.run()
    assert [(t, d["from"]) for t, _, _, d in log.of("got")] == [(0.0, "n0")]


# --- timers, crash, restart ------------------------------------------------------------------


def test_timer_replace_and_cancel() -> None:
    def script(core: Toy, ev: Event, now: float) -> list[Action]:
        if isinstance(ev, Started):
            return [SetTimer("a", 5.0), SetTimer("a", 2.0), SetTimer("b", 1.0),
                    SetTimer("c", 3.0), CancelTimer("c")]
        if isinstance(ev, TimerFired):
            return [Notify("fired", {"key": ev.key})]
        return []

    eng, log = make(1, script)
    eng.run()
    assert [(t, d["key"]) for t, _, _, d in log.of("fired")] == [(1.0, "b"), (2.0, "a")]


def test_crash_drops_timers_and_messages_restart_reads_store() -> None:
    def script(core: Toy, ev: Event, now: float) -> list[Action]:
        if isinstance(ev, Started):
            boots = int(core.records.get("meta", {}).get("boot", {}).get("n", 0)) + 1
            out: list[Action] = [Persist("meta", "boot", {"n": boots}),
                                 Notify("boot", {"n": boots, "inc": core.incarnation})]
            if core.node_id == "n1":
                out.append(SetTimer("t", now + 10))
            return out
        if isinstance(ev, TimerFired):
            return [Notify("fired", {})]
        if isinstance(ev, MessageReceived):
            return [Notify("got", {})]
        return []

    eng, log = make(2, script)
    eng.run(until=1.0)
    eng.crash_node(1)
    # a frame to the crashed node is dropped on arrival
    eng.inject(0, Started(), 1.0)  # n0 "reboots" its core logic without crashing
    eng.send("n0", "n1", b"x")
    eng.run(until=20.0)
    assert log.of("fired") == [] and log.of("got") == []
    assert eng.stats.dropped_down == 1
    eng.start_node(1)
    eng.run(until=40.0)
    boots = [(n, d["n"]) for _, n, _, d in log.of("boot")]
    assert ("n1", 2) in boots  # the restarted core read its persisted record
    assert len(log.of("fired")) == 1  # the new incarnation's timer fires


def test_store_copies_values() -> None:
    value: dict[str, Any] = {"a": [1, 2]}

    def script(core: Toy, ev: Event, now: float) -> list[Action]:
        if isinstance(ev, Started) and core.incarnation == 1:
            return [Persist("t", "k", value), Persist("t", "gone", {"x": 1}),
                    Persist("t", "gone", None)]
        return []

    eng, _ = make(1, script)
    value["a"].append(3)  # mutating after persisting must not change the store
    assert eng.nodes[0].store.load() == {"t": {"k": {"a": [1, 2]}}}


# --- executor -------------------------------------------------------------------------------


def exec_script(task: dict[str, Any], timeout: float, stop_at: float | None = None) -> Script:
    def script(core: Toy, ev: Event, now: float) -> list[Action]:
        if isinstance(ev, Started):
            out: list[Action] = [StartExecution("j/0/1", "j", 0, task, {}, timeout)]
            if stop_at is not None:
                out.append(SetTimer("stop", stop_at))
            return out
        if isinstance(ev, TimerFired):
            return [StopExecution("j/0/1", "test")]
        if isinstance(ev, ExecutionFinished):
            return [Notify("done", {"status": ev.status, "code": ev.exit_code})]
        return []

    return script


@pytest.mark.parametrize(
    ("task", "timeout", "stop_at", "expect"),
    [
        (sim_task(3000), 60.0, None, (3.0, "succeeded", 0)),
        (sim_task(3000, exit_code=2), 60.0, None, (3.0, "failed", 2)),
        (sim_task(3000, hang=True), 20.0, None, (20.0, "timeout", -1)),
        (sim_task(30_000), 20.0, None, (20.0, "timeout", -1)),
        (sim_task(30_000), 60.0, 4.0, (4.0, "cancelled", -1)),
    ],
)
def test_sim_executor(task: dict[str, Any], timeout: float, stop_at: float | None,
                      expect: tuple[float, str, int]) -> None:
    eng, log = make(1, exec_script(task, timeout, stop_at))
    eng.run()
    assert [(t, d["status"], d["code"]) for t, _, _, d in log.of("done")] == [expect]
    assert eng.executor.running == {}


def test_crash_kills_executions_silently() -> None:
    eng, log = make(1, exec_script(sim_task(5000), 60.0))
    eng.run(until=1.0)
    assert eng.executor.is_running(0, "j/0/1")
    eng.crash_node(0)
    eng.run()
    assert log.of("done") == [] and eng.executor.running == {}


def test_fail_rate() -> None:
    import random

    rng = random.Random(3)
    task = sim_task(1000, fail_rate=0.25)
    fails = sum(decide(task, 60.0, rng).status == "failed" for _ in range(20_000))
    assert 0.23 < fails / 20_000 < 0.27


# --- determinism ----------------------------------------------------------------------------


def chatter(core: Toy, ev: Event, now: float) -> list[Action]:
    """Every node pings a few others on a timer and answers pings."""
    if isinstance(ev, Started):
        return [SetTimer("tick", now + 0.1)]
    if isinstance(ev, TimerFired):
        i = int(core.node_id[1:])
        k = core.state.get("k", 0)
        core.state["k"] = k + 1
        out: list[Action] = [Send(f"n{(i + j + k) % 10}", b"ping %d" % k) for j in (1, 3)]
        if k < 50:
            out.append(SetTimer("tick", now + 0.1))
        return out
    if isinstance(ev, MessageReceived) and ev.data.startswith(b"ping"):
        return [Send(ev.sender, b"pong" + ev.data[4:])]
    return []


def test_same_seed_same_trace_other_seed_other_trace() -> None:
    faults = {"loss": 0.1, "duplicate": 0.1, "reorder": 0.2}
    hashes = []
    for seed in (7, 7, 8):
        eng, _ = make(10, chatter, seed=seed, **faults)
        eng.run()
        hashes.append((eng.trace_hash, eng.stats.delivered))
    assert hashes[0] == hashes[1]
    assert hashes[0][0] != hashes[2][0]


def test_event_budget_halts_a_livelock() -> None:
    def storm(core: Toy, ev: Event, now: float) -> list[Action]:
        return [Send(core.node_id, b"again")]

    eng, _ = make(1, storm)
    eng.max_events = 1000
    eng.run()
    assert eng.halted is not None and "budget" in eng.halted


def test_core_exception_is_reported_not_raised() -> None:
    def broken(core: Toy, ev: Event, now: float) -> list[Action]:
        raise RuntimeError("boom")

    eng, _ = make(1, broken)
    assert eng.halted is not None and "boom" in eng.halted
