"""How the runtime runs the work a node won: the ``Executor`` interface.

The runtime owns time bounds and cancellation: it runs ``executor.run(start)``
inside a cancel scope per execution and a hard ``move_on_after(start.timeout)``,
and maps trio cancellation to ``ExecutionFinished(status="cancelled")`` or
``"timeout"`` itself.  An executor therefore only has to (1) run the task and
report how it ended, and (2) let trio cancellation through, cleaning up (kill
the container/process) in a shielded block if it needs to await for that.
An exception raised by ``run`` becomes ``status="error"``; it never crashes the
node.
"""

from __future__ import annotations

from typing import Protocol

import trio

from protocols.events import ExecutionFinished, StartExecution


class Executor(Protocol):
    async def run(self, start: StartExecution) -> ExecutionFinished:
        """Run ``start.task`` to completion and report it.

        Status is ``succeeded`` (exit code 0) or ``failed``; ``cancelled`` and
        ``timeout`` are the runtime's to decide.  Must not swallow
        ``trio.Cancelled``.
        """
        ...


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
