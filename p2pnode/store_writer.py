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

**Inline while the disk is fast.**  The thread's round trip (queue, wake-up,
``run_sync_soon`` back) cost more than the commit it carries on this project's
hosts: a runtime commit took 0.72-1.04 ms through the thread against
0.53-0.60 ms inline (``bench/trace_chain.py``), on every commit of a job's
path.  So a batch is written inline, on the event loop, while the recent
commits were fast (each under ``inline_below``, 10 ms by default: well above
an fsync's 0.2-0.4 ms here, well below anything the protocol's timings feel).
A commit that takes longer (a slow or busy disk: the event loop stood still
meanwhile) sends the next ones to the thread, where the loop keeps serving the
network during the fsync, until ``FAST_BEFORE_INLINE`` commits in a row were
fast again.  So a slow disk blocks the loop for one commit, not for every one.
A batch never overtakes another: inline only when no batch is in the thread.
``inline_below=0`` always uses the thread.

Before an inline commit the writer yields a few scheduling rounds: the frames
of the step before are written to their streams by the peers' sender tasks,
and an fsync at once held them back (frame delivery 1.14-1.69 ms against
0.81-1.07 ms, which undid the gain on a chain's handover).
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import outcome
import trio

from p2pnode import tracing
from protocols.events import Persist

_Job = tuple[Sequence[Persist], Callable[[outcome.Outcome[None], float], None]]

# A commit slower than this (seconds) sends the next ones to the thread ...
INLINE_BELOW = 0.01
# ... until this many in a row were fast again.
FAST_BEFORE_INLINE = 16
# Scheduling rounds given to other tasks before an inline commit (see apply).
YIELDS_BEFORE_INLINE = 3


class StoreWriter:
    """Applies batches to ``apply`` (a blocking ``Store.apply``) in a thread of
    its own.  ``start`` from inside ``trio.run``; ``close`` when done."""

    def __init__(
        self,
        apply: Callable[[Sequence[Persist]], None],
        name: str = "store",
        *,
        inline_below: float = INLINE_BELOW,
    ) -> None:
        self._apply = apply
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=f"p2pnode {name} writer")
        self._thread.daemon = True  # never keeps a crashed process alive
        self._token: trio.lowlevel.TrioToken | None = None
        self._inline_below = inline_below
        # Fast commits still needed before writing inline again (inf: never).
        self._fast_needed: float = 0 if inline_below > 0 else math.inf
        self._in_thread = 0  # batches handed to the thread, not yet back
        self.inline_commits = 0
        self.thread_commits = 0

    def start(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._thread.start()

    def close(self) -> None:
        """Stop the thread once the batches queued before are written (none
        can be: every caller waits for its own).  Idempotent."""
        if self._thread.is_alive():
            self._jobs.put(None)
            self._thread.join()

    @property
    def inline(self) -> bool:
        """Whether the next batch is written inline (see the module docstring)."""
        return self._fast_needed == 0 and self._in_thread == 0

    async def apply(self, batch: Sequence[Persist]) -> None:
        """Write ``batch`` (inline or in the writer thread); returns once it is
        written, raises what the store raised."""
        token = self._token
        if token is None or not self._thread.is_alive():
            raise RuntimeError("the store writer is not running")
        if self.inline:
            # Let the tasks the last step woke run first: a step's frames are
            # written to their streams by the peers' sender tasks, which an
            # fsync right now would hold back until it ended.
            for _ in range(YIELDS_BEFORE_INLINE):
                await trio.lowlevel.checkpoint()
            started = time.perf_counter()
            try:
                self._apply(batch)
            finally:
                self._judge(time.perf_counter() - started)
            self.inline_commits += 1
            return
        done = trio.Event()
        result: list[outcome.Outcome[None]] = []

        def finish(written: outcome.Outcome[None], took: float) -> None:
            self._in_thread -= 1
            self._judge(took)
            result.append(written)
            done.set()

        def deliver(written: outcome.Outcome[None], took: float) -> None:
            token.run_sync_soon(finish, written, took)

        self._in_thread += 1
        self._jobs.put((batch, deliver))
        with trio.CancelScope(shield=True):  # written whole or not at all: wait for it
            await done.wait()
        result[0].unwrap()
        self.thread_commits += 1

    def _judge(self, took: float) -> None:
        """Count a commit of ``took`` seconds towards writing inline, or away."""
        if self._inline_below <= 0:
            return
        if took >= self._inline_below:
            self._fast_needed = FAST_BEFORE_INLINE
        elif self._fast_needed > 0:
            self._fast_needed -= 1

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            batch, deliver = job
            if tracing.ON:
                tracing.event("w-apply<", str(len(batch)))
            started = time.perf_counter()
            written: Any = outcome.capture(self._apply, batch)
            took = time.perf_counter() - started
            if tracing.ON:
                tracing.event("w-apply>", str(len(batch)))
            try:
                deliver(written, took)
            except trio.RunFinishedError:  # the run ended meanwhile: nobody waits
                return
