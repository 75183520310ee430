"""Capturing a running task's output: live to the core, complete to a blob.

The runtime installs an :class:`OutputCapture` for each execution (a context
variable of the execution's task, like the progress sink of
``p2pnode/executor.py``); an executor hands it what the task writes with
``current_output().write(stream, data)`` (synchronous, never blocks).

* **Complete log.**  Every byte goes to ``<log dir>/stdout`` / ``stderr``
  (at most ``MAX_LOG_FILE`` bytes each; the rest is counted and noted at the
  end of the file); when the execution ends the runtime stores the directory
  as a blob manifest on this node: its id travels in the result
  (``execution_result.log_manifest``) and ``job logs`` fetches it.
* **Live output.**  ``pump`` hands the core ``ExecutionOutput`` events, at most
  one per stream per ``interval`` and at most ``rate`` bytes per stream per
  second; at most ``MAX_PENDING`` bytes wait per stream, what comes on top is
  dropped and counted (``ExecutionOutput.skipped``), so a task printing
  without pause cannot flood the owner.  What is pending when the execution
  ends is delivered before its ``ExecutionFinished``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from pathlib import Path
from typing import BinaryIO, Protocol

import trio

from protocols.events import ExecutionOutput
from protocols.messages import LOG_STREAMS

MAX_PENDING = 64 * 1024  # bytes per stream waiting for the core
DEFAULT_RATE = 128 * 1024  # bytes per stream per second handed to the core
MAX_LOG_FILE = 256 * 1024 * 1024  # bytes of one stream kept in the complete log


class OutputSink(Protocol):
    def write(self, stream: str, data: bytes) -> None:
        """``data`` written by the task to ``stream`` ("stdout"/"stderr")."""
        ...


_OUTPUT: ContextVar[OutputSink | None] = ContextVar("p2pnode_output", default=None)


def current_output() -> OutputSink | None:
    """The output sink of the execution running in this task, if any."""
    return _OUTPUT.get()


def install_output(sink: OutputSink | None) -> None:
    _OUTPUT.set(sink)


class OutputCapture:
    """The runtime's ``OutputSink`` for one execution (see the module docstring).
    ``log_dir`` None: no complete log is kept (live output only)."""

    def __init__(
        self,
        execution_id: str,
        log_dir: Path | None,
        *,
        interval: float = 0.25,
        rate: int = DEFAULT_RATE,
    ) -> None:
        self.execution_id = execution_id
        self.log_dir = log_dir
        self.interval = interval
        self.per_round = max(1, int(rate * interval))
        self.written = dict.fromkeys(LOG_STREAMS, 0)  # bytes the task wrote
        self.skipped_total = dict.fromkeys(LOG_STREAMS, 0)
        self._pending = {name: bytearray() for name in LOG_STREAMS}
        self._skipped = dict.fromkeys(LOG_STREAMS, 0)
        self._files: dict[str, BinaryIO] = {}
        self._wake = trio.Event()
        self._closed = trio.Event()
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            for name in LOG_STREAMS:
                self._files[name] = open(log_dir / name, "wb")  # noqa: SIM115 (closed in finish)

    def write(self, stream: str, data: bytes) -> None:
        if stream not in self._pending or not data:
            return
        file = self._files.get(stream)
        if file is not None:
            room = MAX_LOG_FILE - self.written[stream]
            if room > 0:
                file.write(data[:room])
        self.written[stream] += len(data)
        pending = self._pending[stream]
        room = MAX_PENDING - len(pending)
        if room < len(data):
            # Drop the oldest pending bytes: what is live matters most.
            overflow = len(pending) + len(data) - MAX_PENDING
            cut = min(overflow, len(pending))
            if cut:
                del pending[:cut]
                self._count_skip(stream, cut)
            if len(data) > MAX_PENDING:
                self._count_skip(stream, len(data) - MAX_PENDING)
                data = data[-MAX_PENDING:]
        pending += data
        self._wake.set()

    def _count_skip(self, stream: str, count: int) -> None:
        # Skipped bytes come *before* what is pending: only valid while the
        # pending buffer is being cut from its front (see ``write``).
        self._skipped[stream] += count
        self.skipped_total[stream] += count

    def take(self) -> list[ExecutionOutput]:
        """Up to the per-round budget of each stream's pending output."""
        events = []
        for name in LOG_STREAMS:
            pending = self._pending[name]
            if not pending and not self._skipped[name]:
                continue
            data = bytes(pending[: self.per_round])
            del pending[: self.per_round]
            events.append(ExecutionOutput(self.execution_id, name, data, self._skipped[name]))
            self._skipped[name] = 0
        return events

    def close(self) -> None:
        self._closed.set()
        self._wake.set()

    async def pump(self, deliver: Callable[[ExecutionOutput], Awaitable[None]]) -> None:
        """Deliver output until closed, then what is still pending."""
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            events = self.take()
            for event in events:
                await deliver(event)
            if self._closed.is_set():
                if not any(self._pending.values()) and not any(self._skipped.values()):
                    return
                self._wake.set()  # the rest, round after round, without pauses
                continue
            if any(self._pending.values()):
                self._wake.set()  # more than one round's budget: go on after the pause
            with trio.move_on_after(self.interval):
                await self._closed.wait()  # the pause ends early when the execution ends

    def finish(self) -> Path | None:
        """Close the complete log's files; the directory to store (or None)."""
        for name, file in self._files.items():
            over = self.written[name] - MAX_LOG_FILE
            if over > 0:
                file.write(f"\n[{over} more bytes not kept]\n".encode())
            file.close()
        self._files.clear()
        return self.log_dir
