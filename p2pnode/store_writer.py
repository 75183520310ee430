"""One long-lived thread that applies a blocking store's batches.

``trio.to_thread.run_sync`` per write pays its machinery on every record batch
(a capacity limiter, a context copy, a cached worker looked up or a new thread
started when several are busy at once); the runtime writes one batch per core
step, so under load that dominated the write itself (issue 16: 231-267 us of
CPU per commit against 80-95 us inline).  Here one thread, started with the
runtime and joined when it stops, takes batches from a queue in order and
hands each result back to trio through the run's token.

Semantics are those of ``await trio.to_thread.run_sync(store.apply, batch)``
with the default ``abandon_on_cancel=False``: the caller waits for the batch,
shielded from cancellation, so a batch is written whole or not at all and
never runs on behind a stopped node; the store's exception is re-raised in the
caller.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import outcome
import trio

from p2pnode import tracing
from protocols.events import Persist

_Job = tuple[Sequence[Persist], Callable[[outcome.Outcome[None]], None]]


class StoreWriter:
    """Applies batches to ``apply`` (a blocking ``Store.apply``) in a thread of
    its own.  ``start`` from inside ``trio.run``; ``close`` when done."""

    def __init__(self, apply: Callable[[Sequence[Persist]], None], name: str = "store") -> None:
        self._apply = apply
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"p2pnode {name} writer")
        self._thread.daemon = True  # never keeps a crashed process alive
        self._token: trio.lowlevel.TrioToken | None = None

    def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread.start()

    def close(self) -> None:
        """Stop the thread once the batches queued before are written (none
        can be: every caller waits for its own).  Idempotent."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    async def apply(self, batch: Sequence[Persist]) -> None:
        """Write ``batch`` in the writer thread; returns once it is written,
        raises what the store raised."""
        token = self._token
        if token is None or not self._thread.is_alive():
            raise RuntimeError("the store writer is not running")
        done = trio.Event()
        result: list[outcome.Outcome[None]] = []

        def finish(written: outcome.Outcome[None]) -> None:
            result.append(written)
            done.set()

        def deliver(written: outcome.Outcome[None]) -> None:
            token.run_sync_soon(finish, written)

        self._jobs.put((batch, deliver))
        with trio.CancelScope(shield=True):  # written whole or not at all: wait for it
            await done.wait()
        result[0].unwrap()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch, deliver = job
            if tracing.ON:
                tracing.event("w-apply<", str(len(batch)))
            written: Any = outcome.capture(self._apply, batch)
            if tracing.ON:
                tracing.event("w-apply>", str(len(batch)))
            try:
                deliver(written)
            except trio.RunFinishedError:  # the run ended meanwhile: nobody waits
                return
