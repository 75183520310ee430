"""Group commit: items already queued when the consumer gets to them share one
store commit, written before any of their effects (p2pnode/runtime.py,
``_process_group``).  Real SQLite files, the runtime's real writer thread.

How a group is formed deterministically: the first frame's commit is held in
the writer thread (``GatedStore``) while the test queues more items; once they
are all in the runtime's queue the gate opens, and the consumer takes them
together.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pnode.executor import SleepExecutor
from p2pnode.runtime import NodeRuntime, NodeStopped, _Step
from p2pnode.store import SqliteStore, StoreError
from protocols.errors import LocalProtocolError
from protocols.events import (
    Action,
    CancelTimer,
    Event,
    MessageReceived,
    Notify,
    Persist,
    Send,
    SetTimer,
    Started,
    SubmitJob,
    TimerFired,
)
from tests.test_runtime import FakeTransport, ScriptedCore, wait_until


class GatedStore(SqliteStore):
    """A real SQLite store that logs each batch it commits (in the shared log,
    from the writer thread) and holds the batch holding key ``gate`` until
    ``release`` is set."""

    def __init__(self, path: Path, log: list[Any], **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self.log = log
        self.entered = threading.Event()
        self.release = threading.Event()

    def apply(self, batch: Sequence[Persist]) -> None:
        if any(p.key == "gate" for p in batch):
            self.entered.set()
            self.release.wait(timeout=60)
        super().apply(batch)  # raises StoreError (and logs nothing) when it fails
        self.log.append(("commit", [p.key for p in batch]))


def _script(event: Event, now: float) -> Sequence[Action]:
    """A frame or a submit writes a record named after it (frames "free...":
    none), then sends it and notifies; a submit of job "refused" is refused."""
    if isinstance(event, MessageReceived):
        name = event.data.decode()
        if name.startswith("free"):  # writes nothing
            return [Send("p", event.data), Notify("seen", {"n": name})]
        return [Persist("t", name, {"v": 1}), Send("p", event.data), Notify("seen", {"n": name})]
    if isinstance(event, SubmitJob):
        if event.job_id == "refused":
            raise LocalProtocolError("refused by the core")
        return [Persist("t", event.job_id, {"v": 1}), Notify("submitted", {"n": event.job_id})]
    return []


def _queued(runtime: NodeRuntime) -> int:
    assert runtime._queue is not None
    return runtime._queue.statistics().current_buffer_used


async def _run_group(
    tmp_path: Path, frames: Sequence[str], jobs: Sequence[str] = (), **kwargs: Any
) -> tuple[list[Any], NodeRuntime, GatedStore, dict[str, Any]]:
    """Deliver frame "gate", hold its commit, queue ``frames`` then submits of
    ``jobs``, open the gate and let everything finish.  Returns the shared log,
    the runtime, the (closed) store and each job's reply (notifies or error)."""
    log: list[Any] = []
    transport = FakeTransport(log)
    replies: dict[str, Any] = {}
    tmp_path.mkdir(exist_ok=True)
    store = GatedStore(tmp_path / "node.db", log)
    # Commits in the writer thread (never inline): the gate holds the thread,
    # not the event loop that queues the group.
    kwargs.setdefault("inline_commit_below", 0)
    runtime = NodeRuntime(ScriptedCore(log, _script), transport, store, SleepExecutor(), **kwargs)

    async def submit(job: str) -> None:
        try:
            replies[job] = await runtime.submit(job, {})
        except (LocalProtocolError, NodeStopped) as exc:
            replies[job] = exc

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            transport.deliver(b"gate")
            await trio.to_thread.run_sync(store.entered.wait, 30)
            for name in frames:
                transport.deliver(name.encode())
            await wait_until(lambda: _queued(runtime) == len(frames), timeout=30)
            for queued, job in enumerate(jobs, start=len(frames) + 1):  # in this order
                nursery.start_soon(submit, job)
                await wait_until(lambda n=queued: _queued(runtime) == n)
            store.release.set()
            await wait_until(lambda: len(replies) == len(jobs) and not _queued(runtime), 30)
            await wait_until(lambda: len(transport.sent) == 1 + len(frames), timeout=30)
            nursery.cancel_scope.cancel()
    finally:
        store.release.set()
        store.close()
    return log, runtime, store, replies


_COMMIT_OR_SEND = ("commit", "send-start")


def _commits(log: list[Any]) -> list[list[str]]:
    return [entry[1] for entry in log if entry[0] == "commit"]


def _assert_commit_before_effects(log: list[Any], names: Sequence[str]) -> None:
    """The group's one commit is logged before every send of its items."""
    commit_at = next(i for i, e in enumerate(log) if e[0] == "commit" and e[1] != ["gate"])
    sends = [i for i, e in enumerate(log) if e[0] == "send-start" and e[2] != b"gate"]
    assert sends and all(commit_at < i for i in sends), log
    assert [log[i][2].decode() for i in sends] == list(names)  # in queue order


async def test_queued_items_share_one_commit_before_any_of_their_effects(
    tmp_path: Path,
) -> None:
    frames = ["a", "b", "c", "d", "e"]
    log, runtime, store, replies = await _run_group(tmp_path, frames, jobs=["j1"])
    assert _commits(log) == [["gate"], [*frames, "j1"]]  # one commit for six items
    assert runtime.commits == 2
    _assert_commit_before_effects(log, frames)
    assert [n.data for n in replies["j1"]] == [{"n": "j1"}]
    with SqliteStore(store.path) as reopened:
        assert set(reopened.load()["t"]) == {"gate", *frames, "j1"}


async def test_record_less_items_at_the_head_of_a_group_go_out_before_its_commit(
    tmp_path: Path,
) -> None:
    """Items that write nothing, with nothing before them waiting for a
    commit, run at once as item by item; from the first item with records on,
    the rest of the group waits for the group's one commit."""
    log, _, _, _ = await _run_group(tmp_path, ["free1", "free2", "a", "free3", "b"])
    assert _commits(log) == [["gate"], ["a", "b"]]
    order = [e[0] if e[0] == "commit" else e[2].decode() for e in log if e[0] in _COMMIT_OR_SEND]
    assert order == ["commit", "gate", "free1", "free2", "commit", "a", "free3", "b"]


async def test_a_group_is_at_most_group_limit_items(tmp_path: Path) -> None:
    frames = ["a", "b", "c", "d", "e"]
    log, runtime, _, _ = await _run_group(tmp_path, frames, group_limit=2)
    assert _commits(log) == [["gate"], ["a", "b"], ["c", "d"], ["e"]]
    assert runtime.commits == 4


async def test_group_limit_one_commits_item_by_item(tmp_path: Path) -> None:
    frames = ["a", "b", "c"]
    log, _, _, _ = await _run_group(tmp_path, frames, group_limit=1)
    assert _commits(log) == [["gate"], ["a"], ["b"], ["c"]]
    with pytest.raises(ValueError, match="group_limit"):
        NodeRuntime(ScriptedCore([]), FakeTransport([]), None, SleepExecutor(), group_limit=0)  # type: ignore[arg-type]


async def test_a_refused_request_in_a_group_gets_its_error_and_the_others_succeed(
    tmp_path: Path,
) -> None:
    log, _, _, replies = await _run_group(tmp_path, ["a", "b"], jobs=["j1", "refused", "j2"])
    assert _commits(log) == [["gate"], ["a", "b", "j1", "j2"]]
    assert isinstance(replies["refused"], LocalProtocolError)
    assert [n.data for n in replies["j1"]] == [{"n": "j1"}]
    assert [n.data for n in replies["j2"]] == [{"n": "j2"}]
    _assert_commit_before_effects(log, ["a", "b"])


async def test_a_failed_group_commit_lets_no_effect_of_the_group_out(tmp_path: Path) -> None:
    """A real SQLite failure (database full) on the group's commit: the node
    stops with StoreError, no send of any grouped item reached the transport,
    no notify came out, the waiting request is told the node stopped, and
    none of the group's records is on disk."""
    log: list[Any] = []
    transport = FakeTransport(log)
    big = {"blob": "x" * 30_000}  # each fits alone; five together do not

    def script(event: Event, now: float) -> Sequence[Action]:
        if isinstance(event, MessageReceived):
            name = event.data.decode()
            value = {"v": 1} if name == "gate" else big
            return [Persist("t", name, value), Send("p", event.data), Notify("seen", {"n": name})]
        if isinstance(event, SubmitJob):
            return [Persist("t", event.job_id, {"v": 1}), Notify("submitted", {})]
        return []

    tmp_path.mkdir(exist_ok=True)
    store = GatedStore(tmp_path / "node.db", log, max_pages=16)
    runtime = NodeRuntime(
        ScriptedCore(log, script), transport, store, SleepExecutor(), inline_commit_below=0
    )
    notified: list[str] = []
    runtime.add_listener(lambda n: notified.append(n.data["n"]) if n.kind == "seen" else None)
    replies: list[BaseException] = []

    async def submit() -> None:
        try:
            await runtime.submit("j1", {})
        except NodeStopped as exc:
            replies.append(exc)

    failures: list[StoreError] = []

    async def run(cancel_scope: trio.CancelScope) -> None:
        try:
            await runtime.run()
        except StoreError as exc:
            failures.append(exc)
        cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, nursery.cancel_scope)
            await wait_until(lambda: runtime.running, timeout=30)
            transport.deliver(b"gate")
            await trio.to_thread.run_sync(store.entered.wait, 30)
            for name in "abcde":
                transport.deliver(name.encode())
            await wait_until(lambda: _queued(runtime) == 5, timeout=30)
            nursery.start_soon(submit)
            await wait_until(lambda: _queued(runtime) == 6, timeout=30)
            store.release.set()
            await trio.sleep_forever()
        assert len(failures) == 1 and "not written" in str(failures[0])
        assert transport.sent == [("p", b"gate")]
        assert notified == ["gate"]
        assert len(replies) == 1
        assert _commits(log) == [["gate"]]
        assert set(store.load()["t"]) == {"gate"}
    finally:
        store.release.set()
        store.close()


async def test_timer_staleness_is_judged_at_the_items_turn_in_a_group(tmp_path: Path) -> None:
    """A frame that cancels timer "k", queued before that timer's firing: in
    one group the timer is already stale at its turn, as item by item."""
    log: list[Any] = []
    transport = FakeTransport(log)

    def script(event: Event, now: float) -> Sequence[Action]:
        if isinstance(event, Started):
            return [SetTimer("k", now + 0.3)]
        if isinstance(event, MessageReceived):
            name = event.data.decode()
            cancel = [CancelTimer("k")] if name == "cancel" else []
            return [Persist("t", name, {"v": 1}), *cancel, Send("p", event.data)]
        return []

    core = ScriptedCore(log, script)
    store = GatedStore(tmp_path / "node.db", log)
    runtime = NodeRuntime(core, transport, store, SleepExecutor(), inline_commit_below=0)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            transport.deliver(b"gate")
            await trio.to_thread.run_sync(store.entered.wait, 30)
            transport.deliver(b"cancel")
            await wait_until(lambda: _queued(runtime) == 1, timeout=30)
            await wait_until(lambda: "k" in runtime._due, timeout=30)  # fired, queued after
            assert _queued(runtime) == 2
            store.release.set()
            await wait_until(lambda: len(transport.sent) == 2 and not _queued(runtime), 30)
            await trio.sleep(0.1)
            nursery.cancel_scope.cancel()
    finally:
        store.release.set()
        store.close()
    assert core.seen(TimerFired) == []
    assert _commits(log) == [["gate"], ["cancel"]]


# --- planted bugs: the checks above catch a runtime that breaks the rules -------------


async def test_planted_bug_effects_before_the_group_commit_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A variant that runs each step's effects before writing the group's
    records fails the persist-before-send check."""

    async def effects_first(self: NodeRuntime, steps: Sequence[_Step]) -> None:
        for step in steps:
            if step.error is None:
                notifies = await self._run_actions(step.actions)
                if step.reply is not None:
                    step.reply.resolve(notifies)
        records = [a for s in steps for a in s.actions if isinstance(a, Persist)]
        await self._persist_records(records)

    monkeypatch.setattr(NodeRuntime, "_finish", effects_first)
    frames = ["a", "b", "c"]
    log, _, _, _ = await _run_group(tmp_path / "order", frames)
    with pytest.raises(AssertionError):
        _assert_commit_before_effects(log, frames)
    with pytest.raises(AssertionError):  # the failed commit let sends out
        await test_a_failed_group_commit_lets_no_effect_of_the_group_out(tmp_path / "failed")


async def test_planted_bug_timers_applied_late_in_a_group_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without applying timer actions at each item's turn, a timer cancelled
    earlier in the group would fire: the staleness test catches it."""
    monkeypatch.setattr(NodeRuntime, "_apply_timers", lambda self, actions: tuple(actions))
    with pytest.raises(AssertionError):
        await test_timer_staleness_is_judged_at_the_items_turn_in_a_group(tmp_path)
