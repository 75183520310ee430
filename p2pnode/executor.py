"""How the runtime runs the work a node won: the ``Executor`` interface.

The runtime owns time bounds and cancellation: it runs ``executor.run(start)``
inside a cancel scope per execution and a hard ``move_on_after(start.timeout)``,
and maps trio cancellation to ``ExecutionFinished(status="cancelled")`` or
``"timeout"`` itself.  An executor therefore only has to (1) run the task and
report how it ended, and (2) let trio cancellation through, cleaning up (kill
the container/process) in a shielded block if it needs to await for that.
An exception raised by ``run`` becomes ``status="error"``; it never crashes the
node.

Progress (stream consumers)
---------------------------
While a task runs, an executor may report its progress to the core through
:func:`current_progress`: the runtime installs a :class:`ProgressSink` for each
execution (a context variable of the execution's task, so it reaches the
executor through any wrapper, and the tasks the executor starts inherit it).
``sink.report(checkpoint, lag)`` never blocks: the runtime coalesces bursts
(the latest checkpoint and the latest lag win) and hands the core at most one
``ExecutionProgress`` per ``progress_interval``, and it delivers what is still
pending *before* the execution's ``ExecutionFinished``, so a task's last words
(printed after SIGTERM at ``run_for``) are not lost.  The process executor
parses the task's stdout lines ``P2PNODE_CHECKPOINT <value>`` and
``P2PNODE_LAG <n>`` into reports (see ``executors/common.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Protocol

import trio

from protocols.events import ExecutionFinished, ExecutionProgress, StartExecution


class ProgressSink(Protocol):
    def report(self, checkpoint: str = "", lag: int = -1) -> None:
        """A checkpoint (``""``: none in this report) and/or a lag (``-1``: none).
        Synchronous and non-blocking; the latest report wins."""
        ...


_PROGRESS: ContextVar[ProgressSink | None] = ContextVar("p2pnode_progress", default=None)


def current_progress() -> ProgressSink | None:
    """The progress sink of the execution running in this task, if any (none
    when an executor is driven directly, e.g. in tests, without one)."""
    return _PROGRESS.get()


def install_progress(sink: ProgressSink | None) -> None:
    """Make ``sink`` the current task's progress sink (the runtime calls this
    at the top of each execution's own task; tests may too)."""
    _PROGRESS.set(sink)


# Cleanup an executor may leave until its result has been handed on (see
# ``defer_cleanup``): the runtime's list for the execution running in this task.
Cleanup = Callable[[], Awaitable[None]]
_AFTERWARDS: ContextVar[list[Cleanup] | None] = ContextVar("p2pnode_afterwards", default=None)


def defer_cleanup(cleanup: Cleanup) -> bool:
    """Ask the runtime to run ``cleanup`` right after this execution's result
    has gone to the core (still in the execution's own task, shielded, before
    the execution's task ends): work that does not change the result (removing
    a workdir, a drained cgroup) then adds nothing to the job's latency.
    False when no runtime collects it (an executor driven directly): the
    caller runs it itself, before returning."""
    pending = _AFTERWARDS.get()
    if pending is None:
        return False
    pending.append(cleanup)
    return True


def install_afterwards(pending: list[Cleanup] | None) -> None:
    """Collect this task's deferred cleanups in ``pending`` (the runtime runs
    them after the result; ``None``: executors clean up before returning)."""
    _AFTERWARDS.set(pending)


class Executor(Protocol):
    async def run(self, start: StartExecution) -> ExecutionFinished:
        """Run ``start.task`` to completion and report it.

        Status is ``succeeded`` (exit code 0) or ``failed``; ``cancelled`` and
        ``timeout`` are the runtime's to decide.  Must not swallow
        ``trio.Cancelled``.
        """
        ...


class ProgressMailbox:
    """The runtime's ``ProgressSink`` for one execution: keeps the latest
    checkpoint and lag, and ``pump`` delivers them as ``ExecutionProgress``
    events, at most one per ``interval`` seconds however fast reports come.
    ``close`` ends the pump once what is pending has been delivered."""

    def __init__(self, execution_id: str, interval: float = 0.1) -> None:
        self.execution_id = execution_id
        self.interval = interval
        self.reports = 0  # reports received
        self.delivered = 0  # events handed on
        self._checkpoint = ""
        self._lag = -1
        self._pending = False
        self._wake = trio.Event()
        self._closed = trio.Event()

    def report(self, checkpoint: str = "", lag: int = -1) -> None:
        if not checkpoint and lag < 0:
            return
        self.reports += 1
        if checkpoint:
            self._checkpoint = checkpoint
        if lag >= 0:
            self._lag = lag
        self._pending = True
        self._wake.set()

    def close(self) -> None:
        self._closed.set()
        self._wake.set()

    def take(self) -> ExecutionProgress | None:
        """The pending progress, if any (then nothing is pending)."""
        if not self._pending:
            return None
        self._pending = False
        return ExecutionProgress(self.execution_id, self._checkpoint, self._lag)

    async def pump(self, deliver: Callable[[ExecutionProgress], Awaitable[None]]) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            event = self.take()
            if event is not None:
                self.delivered += 1
                await deliver(event)
            if self._closed.is_set():
                if not self._pending:
                    return
                continue  # reported while delivering: flush it now, no pause
            with trio.move_on_after(self.interval):
                await self._closed.wait()  # the pause ends early when the execution ends


class SleepExecutor:
    """A stand-in executor for tests, demos and the simulator's trio mode.

    Task fields: ``seconds`` (float, default ``default_seconds``) to sleep,
    ``exit_code`` (int, default 0), ``stdout`` (str) reported as the tail, and
    ``raise`` (str): raise ``RuntimeError`` with that message instead of
    finishing, to exercise the error path.

    It records what happened, for assertions: ``started``, ``finished`` and
    ``cancelled`` (execution ids that observed cancellation).
    """

    def __init__(self, default_seconds: float = 0.0) -> None:
        self.default_seconds = default_seconds
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []

    async def run(self, start: StartExecution) -> ExecutionFinished:
        eid = start.execution_id
        self.started.append(eid)
        t0 = trio.current_time()
        try:
            await trio.sleep(float(start.task.get("seconds", self.default_seconds)))
        except trio.Cancelled:
            self.cancelled.append(eid)
            raise
        if "raise" in start.task:
            raise RuntimeError(str(start.task["raise"]))
        exit_code = int(start.task.get("exit_code", 0))
        self.finished.append(eid)
        return ExecutionFinished(
            execution_id=eid,
            status="succeeded" if exit_code == 0 else "failed",
            exit_code=exit_code,
            stdout_tail=str(start.task.get("stdout", "")),
            duration_ms=int((trio.current_time() - t0) * 1000),
        )
