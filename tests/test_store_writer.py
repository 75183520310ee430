"""Commits inline while the disk is fast, in the writer thread while it is slow
(p2pnode/store_writer.py), through the real runtime and a real SQLite file.

A ``SlowStore`` commits batches whose key starts with "slow" slowly: either
after a fixed sleep, or only once the event loop itself has set an event,
which proves the loop kept running while the commit was in the thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

import p2pnode.store_writer as store_writer
from p2pnode.executor import SleepExecutor
from p2pnode.runtime import NodeRuntime
from p2pnode.store import SqliteStore
from protocols.events import Action, Event, MessageReceived, Persist, Send
from tests.test_runtime import FakeTransport, ScriptedCore, wait_until

LOOP_PROOF_WAIT = 5.0  # how long a "slow-loop" commit waits for the event loop


class SlowStore(SqliteStore):
    """Notes the thread of every batch.  A "slow..." batch sleeps past the
    inline bound; a "slow-loop" batch waits until ``loop_ran`` is set (from the
    event loop) and records whether it was."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.threads: list[tuple[str, int]] = []
        self.loop_ran = threading.Event()
        self.saw_loop: list[bool] = []

    def apply(self, batch: Sequence[Persist]) -> None:
        keys = [p.key for p in batch]
        self.threads.append((",".join(keys), threading.get_ident()))
        if "slow-loop" in keys:
            self.saw_loop.append(self.loop_ran.wait(LOOP_PROOF_WAIT))
        elif any(k.startswith("slow") for k in keys):
            time.sleep(3 * store_writer.INLINE_BELOW)
        super().apply(batch)


def _script(event: Event, now: float) -> Sequence[Action]:
    if isinstance(event, MessageReceived):
        return [Persist("t", event.data.decode(), {"v": 1}), Send("p", event.data)]
    return []


def _where(store: SlowStore, key: str) -> str:
    """"inline" or "thread": where the batch of ``key`` was written."""
    ident = next(i for keys, i in store.threads if keys == key)
    return "inline" if ident == threading.get_ident() else "thread"


async def _deliver(runtime: NodeRuntime, transport: FakeTransport, key: str) -> None:
    """One frame, alone (no group), and wait for its send (after its commit)."""
    sent = len(transport.sent)
    transport.deliver(key.encode())
    await wait_until(lambda: len(transport.sent) == sent + 1, timeout=30)


async def _run(tmp_path: Path, body: Any, **kwargs: Any) -> tuple[SlowStore, NodeRuntime]:
    log: list[Any] = []
    transport = FakeTransport(log)
    store = SlowStore(tmp_path / "node.db")
    runtime = NodeRuntime(ScriptedCore(log, _script), transport, store, SleepExecutor(), **kwargs)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(runtime.run)
            await body(runtime, transport, store)
            nursery.cancel_scope.cancel()
        assert set(store.load()["t"]) == {keys for keys, _ in store.threads if keys}
    finally:
        store.close()
    return store, runtime


async def test_fast_commits_are_written_inline_before_their_sends(tmp_path: Path) -> None:
    async def body(runtime: NodeRuntime, transport: FakeTransport, store: SlowStore) -> None:
        for key in ("a", "b", "c"):
            await _deliver(runtime, transport, key)

    store, runtime = await _run(tmp_path, body)
    assert [_where(store, k) for k in ("a", "b", "c")] == ["inline"] * 3
    assert runtime.store_commits["inline"] == runtime.store_commits["commits"] >= 3
    assert runtime.store_commits["in_thread"] == 0


async def test_a_slow_commit_sends_the_next_ones_to_the_thread_until_fast_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first slow commit is inline (nothing told the writer yet); the next
    ones go to the thread, where the event loop runs on during the commit;
    after FAST_BEFORE_INLINE fast ones in a row, commits are inline again."""
    monkeypatch.setattr(store_writer, "FAST_BEFORE_INLINE", 3)
    fast = ["f1", "f2", "f3"]

    async def body(runtime: NodeRuntime, transport: FakeTransport, store: SlowStore) -> None:
        await _deliver(runtime, transport, "slow1")
        await _deliver(runtime, transport, "after")
        # Set from the event loop while "slow-loop" waits in its commit: only
        # possible if the commit does not hold the loop.
        transport.deliver(b"slow-loop")
        await wait_until(lambda: any(k == "slow-loop" for k, _ in store.threads), 30)
        store.loop_ran.set()
        await wait_until(lambda: len(transport.sent) == 3, timeout=30)
        await _deliver(runtime, transport, "slow2")  # slow again: the count restarts
        for key in [*fast, "inline-again"]:
            await _deliver(runtime, transport, key)

    store, runtime = await _run(tmp_path, body)
    assert _where(store, "slow1") == "inline"
    assert [_where(store, k) for k in ("after", "slow-loop", "slow2", *fast)] == ["thread"] * 6
    assert store.saw_loop == [True]
    assert _where(store, "inline-again") == "inline"
    assert runtime.store_commits["in_thread"] == 6


async def test_inline_commit_below_zero_always_uses_the_thread(tmp_path: Path) -> None:
    async def body(runtime: NodeRuntime, transport: FakeTransport, store: SlowStore) -> None:
        for key in ("a", "b"):
            await _deliver(runtime, transport, key)

    store, runtime = await _run(tmp_path, body, inline_commit_below=0)
    assert [_where(store, k) for k in ("a", "b")] == ["thread", "thread"]
    assert runtime.store_commits["inline"] == 0


async def test_planted_writer_that_stays_inline_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that never leaves inline mode holds the event loop through a
    slow commit: the "slow-loop" commit never sees the loop run."""
    monkeypatch.setattr(store_writer.StoreWriter, "_judge", lambda self, took: None)

    async def body(runtime: NodeRuntime, transport: FakeTransport, store: SlowStore) -> None:
        await _deliver(runtime, transport, "slow1")
        transport.deliver(b"slow-loop")
        await wait_until(lambda: any(k == "slow-loop" for k, _ in store.threads), 30)
        store.loop_ran.set()
        await wait_until(lambda: len(transport.sent) == 2, timeout=30)

    store, _ = await _run(tmp_path, body)
    assert _where(store, "slow-loop") == "inline"
    assert store.saw_loop == [False]  # what the real test asserts True
