"""The trio runtime shell, driven by a scripted core over an in-memory transport.

The real node core is not needed here: these tests pin down the shell's own
contract (ordering, durability, timers, executions, shutdown).  Time is trio's
MockClock with autojump (pytest-trio's ``autojump_clock`` fixture), so waiting
100 s costs nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

import p2pnode.runtime as runtime_module
from p2pnode.blobs import BlobStore
from p2pnode.executor import SleepExecutor, defer_cleanup, install_afterwards
from p2pnode.logcapture import current_output
from p2pnode.runtime import NodeRuntime, NodeStopped
from p2pnode.store import MemoryStore, SqliteStore, StoreError
from p2pnode.transport import Incoming
from protocols.config import ANNOUNCE_TOPIC
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.events import (
    Action,
    CancelJob,
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
    SubmitJob,
    TimerFired,
)

Script = Callable[[Event, float], Sequence[Action]]


# --- fakes ---------------------------------------------------------------------


class ScriptedCore:
    """Answers each event with whatever ``script`` returns; records every call
    in the shared ``log`` and fails if ``handle`` is ever re-entered."""

    def __init__(self, log: list[Any], script: Script | None = None) -> None:
        self.log = log
        self.script = script
        self.calls: list[tuple[Event, float]] = []
        self._inside = False

    def handle(self, event: Event, now: float) -> Sequence[Action]:
        assert not self._inside, "handle() re-entered"
        self._inside = True
        try:
            self.calls.append((event, now))
            self.log.append(("handle", event))
            return list(self.script(event, now)) if self.script else []
        finally:
            self._inside = False

    def seen(self, kind: type) -> list[tuple[Any, float]]:
        return [(e, t) for e, t in self.calls if isinstance(e, kind)]


class FakeTransport:
    """In-memory transport: records what goes out, ``deliver`` feeds frames in.

    Sends to a peer in ``failing`` raise; to a peer in ``hanging`` never return;
    every send/publish takes ``delay`` seconds."""

    def __init__(self, log: list[Any], local_id: str = "me", delay: float = 0.0) -> None:
        self.log = log
        self.local_id = local_id
        self.delay = delay
        self.failing: set[str] = set()
        self.hanging: set[str] = set()
        self.sent: list[tuple[str, bytes]] = []
        self.published: list[tuple[str, bytes]] = []
        self.subscribed: list[str] = []
        self._in_send, self._in_recv = trio.open_memory_channel[Incoming](100)

    async def send(self, peer: str, data: bytes) -> None:
        if peer in self.failing:
            raise OSError(f"connection to {peer} reset")
        if peer in self.hanging:
            await trio.sleep_forever()
        self.log.append(("send-start", peer, data))
        await trio.sleep(self.delay)
        self.sent.append((peer, data))
        self.log.append(("send-end", peer, data))

    async def publish(self, topic: str, data: bytes) -> None:
        await trio.sleep(self.delay)
        self.published.append((topic, data))
        self.log.append(("publish", topic, data))

    async def subscribe(self, topic: str) -> None:
        self.subscribed.append(topic)
        self.log.append(("subscribe", topic))

    async def receive(self) -> Incoming:
        return await self._in_recv.receive()

    def deliver(self, data: bytes, sender: str = "peer", topic: str = "") -> None:
        self._in_send.send_nowait(Incoming(sender, data, topic))


class RecordingStore(MemoryStore):
    def __init__(self, log: list[Any]) -> None:
        super().__init__()
        self.log = log

    def apply(self, batch: Sequence[Persist]) -> None:
        super().apply(batch)  # raises (and logs nothing) when failing
        self.log.append(("apply", [(p.table, p.key) for p in batch]))


class Node:
    """One runtime with its fakes, sharing one event log."""

    def __init__(self, script: Script | None = None, **kwargs: Any) -> None:
        self.log: list[Any] = []
        self.core = ScriptedCore(self.log, script)
        self.transport = FakeTransport(self.log)
        self.store = RecordingStore(self.log)
        self.executor: Any = kwargs.pop("executor", SleepExecutor())
        self.runtime = NodeRuntime(self.core, self.transport, self.store, self.executor, **kwargs)


@asynccontextmanager
async def running(node: Node) -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        await nursery.start(node.runtime.run)
        yield nursery
        nursery.cancel_scope.cancel()


async def wait_until(pred: Callable[[], bool], timeout: float = 1000.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.05)


def on(kind: type, answer: Callable[[Any, float], Sequence[Action]]) -> Script:
    """A script answering events of one type; every other event gets []."""

    def script(event: Event, now: float) -> Sequence[Action]:
        return answer(event, now) if isinstance(event, kind) else []

    return script


def finished(core: ScriptedCore) -> dict[str, tuple[ExecutionFinished, float]]:
    return {e.execution_id: (e, t) for e, t in core.seen(ExecutionFinished)}


def start(eid: str, timeout: float = 100.0, **task: Any) -> StartExecution:
    return StartExecution(eid, job_id="j", slot=0, task=task, env={}, timeout=timeout)


# --- start-up, ordering, durability -----------------------------------------------


async def test_subscribes_then_feeds_started_first(autojump_clock: trio.abc.Clock) -> None:
    node = Node()
    node.transport.deliver(b"early")  # already waiting before the node starts
    async with running(node):
        await wait_until(lambda: len(node.core.calls) == 2)
    assert node.log[0] == ("subscribe", ANNOUNCE_TOPIC)
    # Started carries the wall clock (cron schedules are in wall time).
    first = node.core.calls[0][0]
    assert isinstance(first, Started) and abs(first.wall - time.time()) < 60
    assert node.log[1] == ("handle", first)
    assert node.core.calls[1][0] == MessageReceived("peer", b"early", "")


async def test_a_steps_records_are_one_write_before_any_of_its_effects(
    autojump_clock: trio.abc.Clock,
) -> None:
    """All of a batch's records go to disk in one atomic write, in their order,
    before its first send: a crash between two sends of the batch can never
    leave a prefix of the step's records (e.g. a partition still in flight
    whose batch run already ended)."""

    def script(event: Event, now: float) -> Sequence[Action]:
        return [
            Persist("t", "a", {"v": 1}),
            Persist("t", "b", {"v": 2}),
            Send("p1", b"after-ab"),
            Persist("t", "c", {"v": 3}),
            Persist("t", "a", None),  # a later record of the same key wins
            Publish("topic", b"after-c"),
        ]

    node = Node(on(Started, script))
    async with running(node):
        pass
    assert node.log[2:] == [
        ("apply", [("t", "a"), ("t", "b"), ("t", "c"), ("t", "a")]),
        ("send-start", "p1", b"after-ab"),
        ("send-end", "p1", b"after-ab"),
        ("publish", "topic", b"after-c"),
    ]
    assert node.store.load() == {"t": {"b": {"v": 2}, "c": {"v": 3}}}


async def test_failed_persist_stops_node_before_send(autojump_clock: trio.abc.Clock) -> None:
    node = Node(on(Started, lambda e, t: [Persist("t", "k", {"v": 1}), Send("p", b"x")]))
    node.store.fail_with = "disk full"
    with pytest.raises(StoreError, match="disk full"):
        await node.runtime.run()
    assert node.transport.sent == []
    assert not node.runtime.running


async def test_failed_persist_while_running_raises_from_run(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    def script(event: Event, now: float) -> Sequence[Action]:
        if isinstance(event, Started):
            return [start("e1", seconds=1000)]
        if isinstance(event, MessageReceived):
            return [Persist("t", "k", {"v": 1}), Send("p", b"x")]
        return []

    node = Node(script)

    async def break_disk_then_deliver() -> None:
        await trio.sleep(1)
        node.store.fail_with = "read-only file system"
        node.transport.deliver(b"m")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(break_disk_then_deliver)
        with pytest.raises(StoreError, match="read-only"):
            await node.runtime.run()
    assert node.transport.sent == []
    assert node.executor.cancelled == ["e1"]  # the running execution was stopped too
    assert "could not persist" in caplog.text


async def test_transport_errors_are_logged_and_the_batch_goes_on(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    node = Node(
        on(
            Started,
            lambda e, t: [
                Send("broken", b"1"),
                Send("stuck", b"2"),
                Send("fine", b"3"),
                Publish("t", b"4"),
            ],
        ),
        send_timeout=2.0,
    )
    node.transport.failing.add("broken")
    node.transport.hanging.add("stuck")
    async with running(node):
        t0 = trio.current_time()
    assert node.transport.sent == [("fine", b"3")]
    assert node.transport.published == [("t", b"4")]
    assert "send to broken failed: connection to broken reset" in caplog.text
    assert "send to stuck timed out" in caplog.text
    assert t0 == pytest.approx(2.0, abs=0.01)  # waited the send timeout once


async def test_handle_calls_never_overlap_with_a_batch(autojump_clock: trio.abc.Clock) -> None:
    node = Node(
        on(
            MessageReceived,
            lambda e, t: [Send("p", e.data), Persist("t", e.data.decode(), {}), Send("q", e.data)],
        )
    )
    node.transport.delay = 1.0  # every send takes a while: events pile up meanwhile
    async with running(node):
        for m in (b"m1", b"m2", b"m3"):
            node.transport.deliver(m)
        await wait_until(lambda: len(node.transport.sent) == 6)
    expected: list[Any] = []
    for m in (b"m1", b"m2", b"m3"):
        expected += [
            ("handle", MessageReceived("peer", m, "")),
            ("apply", [("t", m.decode())]),
            ("send-start", "p", m),
            ("send-end", "p", m),
            ("send-start", "q", m),
            ("send-end", "q", m),
        ]
    assert node.log[2:] == expected


async def test_remote_protocol_error_drops_the_frame_only(
    autojump_clock: trio.abc.Clock,
) -> None:
    def script(event: Event, now: float) -> Sequence[Action]:
        if isinstance(event, MessageReceived) and event.data == b"bad":
            raise RemoteProtocolError("undecodable frame")
        return []

    node = Node(script)
    async with running(node):
        node.transport.deliver(b"bad")
        node.transport.deliver(b"good")
        await wait_until(lambda: len(node.core.calls) == 3)
    assert node.core.calls[2][0] == MessageReceived("peer", b"good", "")


async def test_core_bug_stops_the_node_loudly(autojump_clock: trio.abc.Clock) -> None:
    def script(event: Event, now: float) -> Sequence[Action]:
        if isinstance(event, MessageReceived):
            raise KeyError("bug")
        return []

    node = Node(script)
    node.transport.deliver(b"m")
    with pytest.raises(KeyError):
        await node.runtime.run()


# --- timers ----------------------------------------------------------------------------


def fired(core: ScriptedCore) -> list[tuple[Any, float]]:
    return [(e.key, t) for e, t in core.seen(TimerFired)]


async def test_timers_fire_in_deadline_order(autojump_clock: trio.abc.Clock) -> None:
    t0 = trio.current_time()
    node = Node(
        on(
            Started,
            lambda e, now: [
                SetTimer("b", now + 3),
                SetTimer(("lease", "j", 0), now + 1),
                SetTimer("c", now + 2),
                SetTimer("d", now + 2),  # a tie fires in the order it was set
            ],
        )
    )
    async with running(node):
        await trio.sleep(10)
    assert fired(node.core) == [
        (("lease", "j", 0), t0 + 1),
        ("c", t0 + 2),
        ("d", t0 + 2),
        ("b", t0 + 3),
    ]


async def test_set_timer_with_same_key_replaces(autojump_clock: trio.abc.Clock) -> None:
    t0 = trio.current_time()
    node = Node(
        on(
            Started,
            lambda e, now: [
                SetTimer("later", now + 1),
                SetTimer("later", now + 5),  # pushed back: fires once, at +5
                SetTimer("sooner", now + 5),
                SetTimer("sooner", now + 2),  # pulled in: fires once, at +2
            ],
        )
    )
    async with running(node):
        await trio.sleep(10)
    assert fired(node.core) == [("sooner", t0 + 2), ("later", t0 + 5)]


async def test_cancel_timer(autojump_clock: trio.abc.Clock) -> None:
    t0 = trio.current_time()
    node = Node(
        on(
            Started,
            lambda e, now: [
                SetTimer("x", now + 1),
                SetTimer("y", now + 2),
                CancelTimer("x"),
                CancelTimer("never-set"),
            ],
        )
    )
    async with running(node):
        await trio.sleep(10)
    assert fired(node.core) == [("y", t0 + 2)]


async def test_sooner_timer_wakes_the_sleeping_loop(autojump_clock: trio.abc.Clock) -> None:
    t0 = trio.current_time()

    def script(event: Event, now: float) -> Sequence[Action]:
        if isinstance(event, Started):
            return [SetTimer("far", now + 100)]
        if isinstance(event, MessageReceived):
            return [SetTimer("soon", now + 1)]
        return []

    node = Node(script)
    async with running(node):
        await trio.sleep(1)  # the timer loop is now asleep until +100
        node.transport.deliver(b"poke")
        await trio.sleep(200)
    assert fired(node.core) == [("soon", t0 + 2), ("far", t0 + 100)]


async def test_timer_cancelled_or_reset_after_firing_is_not_delivered(
    autojump_clock: trio.abc.Clock,
) -> None:
    t0 = trio.current_time()

    def script(event: Event, now: float) -> Sequence[Action]:
        if isinstance(event, Started):
            return [SetTimer("a", now + 1), SetTimer("b", now + 1), SetTimer("c", now + 1)]
        if event == TimerFired("a"):
            # b and c are already due; the core's later decision must win.
            return [CancelTimer("b"), SetTimer("c", now + 4)]
        return []

    node = Node(script)
    async with running(node):
        await trio.sleep(10)
    assert fired(node.core) == [("a", t0 + 1), ("c", t0 + 5)]


# --- executions ----------------------------------------------------------------------


async def test_execution_result_is_fed_back(autojump_clock: trio.abc.Clock) -> None:
    node = Node(on(Started, lambda e, t: [start("e1", seconds=3, exit_code=2, stdout="hi")]))
    async with running(node):
        await wait_until(lambda: "e1" in finished(node.core))
    result, _ = finished(node.core)["e1"]
    assert (result.status, result.exit_code, result.stdout_tail) == ("failed", 2, "hi")
    assert result.duration_ms == 3000


async def test_stop_execution_cancels_it(autojump_clock: trio.abc.Clock) -> None:
    def script(event: Event, now: float) -> Sequence[Action]:
        if isinstance(event, Started):
            return [start("e1", seconds=50), start("e2", seconds=5)]
        if isinstance(event, MessageReceived):
            return [StopExecution("e1", "owner cancelled the job")]
        return []

    node = Node(script)
    async with running(node):
        await trio.sleep(1)
        node.transport.deliver(b"stop e1")
        await wait_until(lambda: len(finished(node.core)) == 2)
    done = finished(node.core)
    assert done["e1"][0].status == "cancelled"
    assert done["e1"][0].error == "owner cancelled the job"
    assert done["e1"][1] == pytest.approx(1.0, abs=0.02)
    assert done["e2"][0].status == "succeeded"
    assert node.executor.cancelled == ["e1"]


async def test_stop_in_the_same_batch_as_start(autojump_clock: trio.abc.Clock) -> None:
    node = Node(on(Started, lambda e, t: [start("e1", seconds=50), StopExecution("e1", "nah")]))
    async with running(node):
        await wait_until(lambda: "e1" in finished(node.core))
    assert finished(node.core)["e1"][0].status == "cancelled"


async def test_stop_of_an_ended_execution_is_ignored(autojump_clock: trio.abc.Clock) -> None:
    node = Node(on(MessageReceived, lambda e, t: [StopExecution("gone", "late")]))
    async with running(node):
        node.transport.deliver(b"m")
        await wait_until(lambda: len(node.core.calls) == 2)
    assert finished(node.core) == {}


async def test_hard_timeout(autojump_clock: trio.abc.Clock) -> None:
    t0 = trio.current_time()
    node = Node(on(Started, lambda e, t: [start("e1", timeout=2.0, seconds=50)]))
    async with running(node):
        await wait_until(lambda: "e1" in finished(node.core))
    result, at = finished(node.core)["e1"]
    assert result.status == "timeout"
    assert result.duration_ms == 2000
    assert at == t0 + 2.0


class SlowToDieExecutor:
    """Takes 1 s of shielded cleanup (say, killing a container) when cancelled."""

    def __init__(self) -> None:
        self.cleaned_up: list[str] = []

    async def run(self, s: StartExecution) -> ExecutionFinished:
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(1)
                self.cleaned_up.append(s.execution_id)
        raise AssertionError("unreachable")


async def test_hard_timeout_waits_for_executor_cleanup(autojump_clock: trio.abc.Clock) -> None:
    t0 = trio.current_time()
    executor = SlowToDieExecutor()
    node = Node(on(Started, lambda e, t: [start("e1", timeout=2.0)]), executor=executor)
    async with running(node):
        await wait_until(lambda: "e1" in finished(node.core))
    result, at = finished(node.core)["e1"]
    assert (result.status, at, executor.cleaned_up) == ("timeout", t0 + 3.0, ["e1"])


class RaisingExecutor:
    def __init__(self, group: bool = False) -> None:
        self.group = group

    async def run(self, s: StartExecution) -> ExecutionFinished:
        await trio.sleep(1)
        if self.group:

            async def child() -> None:
                raise ValueError("image not found")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(child)
                await trio.sleep_forever()
        raise RuntimeError("boom")


@pytest.mark.parametrize(("group", "message"), [(False, "boom"), (True, "image not found")])
async def test_executor_exception_becomes_status_error(
    autojump_clock: trio.abc.Clock, group: bool, message: str
) -> None:
    node = Node(on(Started, lambda e, t: [start("e1")]), executor=RaisingExecutor(group=group))
    async with running(node):
        await wait_until(lambda: "e1" in finished(node.core))
        node.transport.deliver(b"still alive?")
        await wait_until(lambda: len(node.core.seen(MessageReceived)) == 1)
    result, _ = finished(node.core)["e1"]
    assert (result.status, result.error) == ("error", message)


# --- local API ---------------------------------------------------------------------


async def test_submit_cancel_and_watch(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="p2pnode.events")

    def script(event: Event, now: float) -> Sequence[Action]:
        if isinstance(event, SubmitJob):
            if event.job_id == "dup":
                raise LocalProtocolError("job dup exists")
            return [
                Persist("jobs", event.job_id, event.spec),
                Notify("job.accepted", {"job_id": event.job_id}),
                Publish(ANNOUNCE_TOPIC, b"ask"),
                Notify("job.queued", {"job_id": event.job_id}),
            ]
        if isinstance(event, CancelJob):
            return [Notify("job.stopped", {"job_id": event.job_id, "reason": event.reason})]
        return []

    node = Node(script)
    watcher = node.runtime.watch()
    async with running(node):
        got = await node.runtime.submit("j1", {"kind": "batch"})
        assert got == [
            Notify("job.accepted", {"job_id": "j1"}),
            Notify("job.queued", {"job_id": "j1"}),
        ]
        assert node.store.load() == {"jobs": {"j1": {"kind": "batch"}}}
        with pytest.raises(LocalProtocolError, match="exists"):
            await node.runtime.submit("dup", {})
        assert await node.runtime.cancel("j1") == [
            Notify("job.stopped", {"job_id": "j1", "reason": "stopped by user"})
        ]
        assert node.runtime.core is node.core
    # The watcher saw everything, and its iteration ended with the node.
    kinds = [n.kind async for n in watcher]
    assert kinds == ["job.accepted", "job.queued", "job.stopped"]
    assert "job.accepted {'job_id': 'j1'}" in caplog.text
    with pytest.raises(NodeStopped):
        await node.runtime.submit("j2", {})


async def test_slow_watcher_is_disconnected_not_blocking(
    autojump_clock: trio.abc.Clock,
) -> None:
    node = Node(on(MessageReceived, lambda e, t: [Notify("tick", {})]), watch_buffer=2)
    watcher = node.runtime.watch()
    async with running(node):
        for _ in range(5):
            node.transport.deliver(b"m")
        await wait_until(lambda: len(node.core.calls) == 6)
    assert [n.kind async for n in watcher] == ["tick", "tick"]


async def test_a_job_watcher_sees_its_jobs_notifies_only(
    autojump_clock: trio.abc.Clock,
) -> None:
    """``watch(job_id=...)`` gets exactly what a full watcher filtered by that
    job id gets, in order, and ends with the node."""

    def script(event: Event, now: float) -> Sequence[Action]:
        if isinstance(event, MessageReceived):
            job = event.data.decode()
            return [Notify("a", {"job_id": job}), Notify("other", {}), Notify("b", {"job_id": job})]
        return []

    node = Node(script)
    everything = node.runtime.watch()
    one = node.runtime.watch(job_id="j1")
    two = node.runtime.watch(job_id="j2")
    async with running(node):
        for job in ["j1", "j2", "j1", "j3"]:
            node.transport.deliver(job.encode())
        await wait_until(lambda: len(node.core.seen(MessageReceived)) == 4)
    notes = [n async for n in everything]
    assert len(notes) == 12
    for job, watcher in [("j1", one), ("j2", two)]:
        assert [n async for n in watcher] == [n for n in notes if n.data.get("job_id") == job]


async def test_closed_job_watchers_are_forgotten(autojump_clock: trio.abc.Clock) -> None:
    """A job watcher closed after its job's last notify does not stay in the
    runtime's table: the table stays bounded by the live watchers."""
    node = Node(on(MessageReceived, lambda e, t: []))
    runtime = node.runtime
    async with running(node):
        for i in range(1000):
            with runtime.watch(job_id=f"j{i}"):
                pass
        live = runtime.watch(job_id="live")
        assert len(runtime._job_watchers) <= 2 * runtime_module._JOB_WATCHERS_SWEEP_MIN
        assert runtime._job_watchers["live"]
    assert [n async for n in live] == []


async def test_a_slow_job_watcher_is_disconnected_not_blocking(
    autojump_clock: trio.abc.Clock,
) -> None:
    node = Node(on(MessageReceived, lambda e, t: [Notify("tick", {"job_id": "j"})]), watch_buffer=2)
    watcher = node.runtime.watch(job_id="j")
    async with running(node):
        for _ in range(5):
            node.transport.deliver(b"m")
        await wait_until(lambda: len(node.core.calls) == 6)
    assert [n.kind async for n in watcher] == ["tick", "tick"]


async def test_planted_bug_job_watchers_fed_every_notify_is_caught(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime that hands job watchers every notify (or none) fails the
    job-watcher check."""
    original = runtime_module.NodeRuntime._notify

    def every_notify(self: runtime_module.NodeRuntime, action: Notify) -> None:
        original(self, action)
        for watchers in self._job_watchers.values():
            self._offer(watchers, action)

    monkeypatch.setattr(runtime_module.NodeRuntime, "_notify", every_notify)
    with pytest.raises(AssertionError):
        await test_a_job_watcher_sees_its_jobs_notifies_only(autojump_clock)

    def no_job_watchers(self: runtime_module.NodeRuntime, action: Notify) -> None:
        saved, self._job_watchers = self._job_watchers, {}
        try:
            original(self, action)
        finally:
            self._job_watchers = saved

    monkeypatch.setattr(runtime_module.NodeRuntime, "_notify", no_job_watchers)
    with pytest.raises(AssertionError):
        await test_a_job_watcher_sees_its_jobs_notifies_only(autojump_clock)


# --- shutdown --------------------------------------------------------------------------


class TaskTracker(trio.abc.Instrument):
    def __init__(self) -> None:
        self.live: set[trio.lowlevel.Task] = set()

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.live.add(task)

    def task_exited(self, task: trio.lowlevel.Task) -> None:
        self.live.discard(task)


async def test_cancelling_the_node_leaves_nothing_running(
    autojump_clock: trio.abc.Clock,
) -> None:
    def script(event: Event, now: float) -> Sequence[Action]:
        if isinstance(event, Started):
            return [start("e1", seconds=1e6), start("e2", seconds=1e6), SetTimer("t", now + 50)]
        if isinstance(event, MessageReceived):
            return [Send("p", b"slow")]  # keeps the consumer busy for 100 s
        return []

    node = Node(script)
    node.transport.delay = 100
    tracker = TaskTracker()
    trio.lowlevel.add_instrument(tracker)
    submit_error: list[BaseException] = []
    watcher = node.runtime.watch()

    async def submit_while_busy() -> None:
        try:
            await node.runtime.submit("j", {})
        except NodeStopped as exc:
            submit_error.append(exc)

    try:
        async with trio.open_nursery() as outer, trio.open_nursery() as nursery:
            await nursery.start(node.runtime.run)
            node.transport.deliver(b"m")
            await trio.sleep(1)
            outer.start_soon(submit_while_busy)
            await trio.sleep(1)
            nursery.cancel_scope.cancel()
        # Every task spawned since the node started (its loops, its executions,
        # the API caller) has exited.
        leftover = set(tracker.live)
    finally:
        trio.lowlevel.remove_instrument(tracker)
    assert leftover == set()
    assert sorted(node.executor.cancelled) == ["e1", "e2"]
    assert TimerFired("t") not in [e for e, _ in node.core.calls]
    assert len(submit_error) == 1  # the waiting caller was told, not left hanging
    assert [n async for n in watcher] == []
    assert not node.runtime.running
    with pytest.raises(RuntimeError, match="runs once"):
        await node.runtime.run()


async def test_stop_method(autojump_clock: trio.abc.Clock) -> None:
    node = Node(on(Started, lambda e, t: [start("e1", seconds=1e6)]))
    async with trio.open_nursery() as nursery:
        await nursery.start(node.runtime.run)
        await trio.sleep(1)
        node.runtime.stop()
    assert node.executor.cancelled == ["e1"]


# --- with the real SQLite store (offloaded to a thread, real clock) -----------------


async def test_sqlite_store_in_worker_thread(tmp_path: Path) -> None:
    log: list[Any] = []
    core = ScriptedCore(
        log, on(Started, lambda e, t: [Persist("t", "k", {"v": 1}), Send("p", b"x")])
    )
    transport = FakeTransport(log)
    with SqliteStore(tmp_path / "node.db") as store:
        runtime = NodeRuntime(core, transport, store, SleepExecutor())
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            nursery.cancel_scope.cancel()
        assert transport.sent == [("p", b"x")]
    with SqliteStore(tmp_path / "node.db") as reopened:
        assert reopened.load() == {"t": {"k": {"v": 1}}}


class ThreadRecordingStore(SqliteStore):
    """A real SQLite store that notes which thread applied each batch."""

    def __init__(self, path: Path, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.threads: list[int] = []

    def apply(self, batch: Sequence[Persist]) -> None:
        self.threads.append(threading.get_ident())
        super().apply(batch)


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.endswith("store writer")]


async def test_sqlite_writes_share_one_writer_thread_that_ends_with_the_run(
    tmp_path: Path,
) -> None:
    """With inline commits off, every batch goes through the same long-lived
    thread (not the event loop, not a thread per write), each written before
    its step's send, and the thread is gone once ``run`` returns.  (Inline
    commits while the disk is fast: tests/test_store_writer.py.)"""
    log: list[Any] = []

    def script(event: Event, now: float) -> Sequence[Action]:
        if isinstance(event, MessageReceived):
            return [Persist("t", event.data.decode(), {"v": 1}), Send("p", event.data)]
        return []

    transport = FakeTransport(log)
    with ThreadRecordingStore(tmp_path / "node.db") as store:
        runtime = NodeRuntime(
            ScriptedCore(log, script), transport, store, SleepExecutor(), inline_commit_below=0
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            assert len(_writer_threads()) == 1
            # One at a time: frames queued together would share one commit
            # (group commit, tests/test_group_commit.py).
            for count, name in enumerate(("a", "b", "c"), start=1):
                transport.deliver(name.encode())
                await wait_until(lambda n=count: len(transport.sent) == n, timeout=30)
            nursery.cancel_scope.cancel()
        assert len(store.threads) == 3 and len(set(store.threads)) == 1
        assert store.threads[0] != threading.get_ident()
        assert store.load() == {"t": {"a": {"v": 1}, "b": {"v": 1}, "c": {"v": 1}}}
    assert _writer_threads() == []


@pytest.mark.parametrize("inline_below", [0, runtime_module.INLINE_BELOW], ids=["thread", "inline"])
async def test_a_failed_write_in_the_writer_thread_stops_the_node_before_send(
    tmp_path: Path, inline_below: float
) -> None:
    """A real SQLite failure (database full) raised in the writer thread, or
    inline, comes back to the consumer: the node stops with StoreError,
    nothing sent."""
    log: list[Any] = []
    big = {"blob": "x" * 200_000}
    core = ScriptedCore(log, on(Started, lambda e, t: [Persist("t", "k", big), Send("p", b"x")]))
    transport = FakeTransport(log)
    with SqliteStore(tmp_path / "node.db", max_pages=16) as store:
        runtime = NodeRuntime(
            core, transport, store, SleepExecutor(), inline_commit_below=inline_below
        )
        with pytest.raises(StoreError, match="not written"):
            await runtime.run()
    assert transport.sent == []
    assert _writer_threads() == []


# --- cleanup deferred until the result has gone out ----------------------------------


class DeferringExecutor:
    """Defers a cleanup (``defer_cleanup``) that takes 5 s, and records when it
    ran; ``seconds`` is how long the execution itself runs."""

    def __init__(self, seconds: float = 1.0) -> None:
        self.seconds = seconds
        self.deferred: list[bool] = []
        self.cleaned_at: dict[str, float] = {}

    async def run(self, s: StartExecution) -> ExecutionFinished:
        async def cleanup() -> None:
            await trio.sleep(5)
            self.cleaned_at[s.execution_id] = trio.current_time()

        self.deferred.append(defer_cleanup(cleanup))
        await trio.sleep(self.seconds)
        return ExecutionFinished(s.execution_id, "succeeded")


async def test_deferred_cleanup_runs_after_the_result_reached_the_core(
    autojump_clock: trio.abc.Clock,
) -> None:
    t0 = trio.current_time()
    executor = DeferringExecutor()
    node = Node(on(Started, lambda e, t: [start("e1")]), executor=executor)
    async with running(node):
        await wait_until(lambda: "e1" in executor.cleaned_at)
    result, at = finished(node.core)["e1"]
    # The result is not held back by the 5 s cleanup, which still runs.
    assert executor.deferred == [True]
    assert (result.status, at) == ("succeeded", t0 + 1.0)
    assert executor.cleaned_at["e1"] == t0 + 6.0


async def test_deferred_cleanup_still_runs_when_the_node_stops(
    autojump_clock: trio.abc.Clock,
) -> None:
    executor = DeferringExecutor(seconds=1e6)
    node = Node(on(Started, lambda e, t: [start("e1")]), executor=executor)
    async with running(node):
        await wait_until(lambda: executor.deferred == [True])
    assert "e1" in executor.cleaned_at  # shielded: run before the node's task ended


async def test_without_a_runtime_an_executor_cleans_up_itself() -> None:
    # Driven directly (no runtime collecting), defer_cleanup says so.
    executor = DeferringExecutor(seconds=0)
    install_afterwards(None)
    await executor.run(start("e1"))
    assert executor.deferred == [False]


class PrintingExecutor:
    """Writes ``text`` to the execution's captured output (as the process
    executor does with what a task prints)."""

    def __init__(self, text: bytes) -> None:
        self.text = text

    async def run(self, s: StartExecution) -> ExecutionFinished:
        sink = current_output()
        if sink is not None and self.text:
            sink.write("stdout", self.text)
        await trio.sleep(0.2 * int(s.execution_id[1:]))  # e1, e2, e3 end in turn
        return ExecutionFinished(s.execution_id, "succeeded")


@pytest.mark.parametrize("text", [b"", b"hello\n"])
async def test_a_silent_executions_log_is_stored_once_then_reused(
    tmp_path: Path, text: bytes
) -> None:
    """Every execution that printed nothing has the same (content-addressed)
    log: stored once; one that printed is stored every time."""
    blobs = BlobStore(tmp_path / "blobs")
    stored: list[Path] = []

    async def store_log(directory: Path) -> str:
        stored.append(directory)
        return await trio.to_thread.run_sync(blobs.store_outputs, directory)

    script = on(Started, lambda e, t: [start("e1"), start("e2"), start("e3")])
    node = Node(
        script, executor=PrintingExecutor(text), log_dir=tmp_path / "logs", store_log=store_log
    )
    async with running(node):
        await wait_until(lambda: len(finished(node.core)) == 3, timeout=60)
    manifests = {r.log_manifest for r, _ in finished(node.core).values()}
    assert len(manifests) == 1 and "" not in manifests
    entries = blobs.read_manifest(manifests.pop())
    assert [(e.path, e.size) for e in entries] == [("stderr", 0), ("stdout", len(text))]
    assert len(stored) == (1 if not text else 3)
    await wait_until(lambda: not any((tmp_path / "logs").iterdir()), timeout=60)
