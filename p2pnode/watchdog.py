"""The node's side of the lease watchdog (``p2pnode/watchdog_helper.py`` says
why it exists): start the helper, and tell it how long the lease of each
running execution has left: every ``FEED_EVERY`` while a task runs, and just
before each task is spawned (an idle node does not wake for it).  While the
node runs, it ends its own lapsed tasks first; the helper acts only when the
node has been silent for longer than a lease (paused, stopped in a debugger,
starved)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import trio

from p2pnode.watchdog_helper import Docker

log = logging.getLogger(__name__)

FEED_EVERY = 1.0  # seconds between two reports to the helper while a task runs
# While no task runs the node does not wake for the watchdog (an idle node's
# CPU is a budget: issue 16), only on a spawn, or this often to see that the
# helper is alive; and it keeps reporting for LINGER after a spawn even if
# nothing is reported yet.
IDLE_CHECK = 30.0
LINGER = 5.0
RESTART_AFTER = 5.0  # a helper that died is started again after this long
# Run with -S -E -s: no site-packages, no PYTHON* variables, no user site.  The
# package's root comes first on the command line (popped before main reads it).
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from p2pnode.watchdog_helper import main; main()"
)

# Execution id -> seconds its lease has left, for each execution whose task runs.
LeasesLeft = Callable[[], Mapping[str, float]]


def helper_argv(work_dir: Path, margin: float, docker: Docker | None = None) -> list[str]:
    """The helper's command line; ``docker`` says where the node's containers
    are when it runs Docker tasks."""
    root = str(Path(__file__).resolve().parent.parent)  # holds the p2pnode package
    argv = [sys.executable, "-S", "-E", "-s", "-c", _BOOT, root, str(work_dir), str(margin)]
    return argv + (docker.argv() if docker else [])


def report(leases: Mapping[str, float], reported: set[str]) -> list[bytes]:
    """The lines that bring the helper up to date with ``leases`` (and forget
    what ended since ``reported``, which is updated)."""
    lines = [f"{eid} {left:.3f}\n" for eid, left in sorted(leases.items())]
    lines += [f"{eid} -\n" for eid in sorted(reported - leases.keys())]
    reported.clear()
    reported.update(leases)
    return [line.encode() for line in lines]


class LeaseWatchdog:
    """Runs the helper (``run``, a task of the node's nursery) and reports to it."""

    def __init__(
        self,
        leases_left: LeasesLeft,
        work_dir: Path,
        margin: float,
        docker: Docker | None = None,
    ) -> None:
        self.leases_left = leases_left
        self.work_dir = work_dir
        self.margin = margin
        self.docker = docker  # the node runs Docker tasks: where they are
        self._fd: int | None = None  # the helper's stdin, non-blocking
        self._reported: set[str] = set()
        self._spawned_at = -float("inf")
        self._spawned = trio.Event()  # set by a spawn, renewed once seen

    @property
    def helper_running(self) -> bool:
        return self._fd is not None

    def before_spawn(self) -> None:
        """The executors' hook (synchronous, on the trio thread, just before a
        task starts): report now, and wake the reporting loop."""
        self._spawned_at = trio.current_time()
        self._spawned.set()
        self.report_now()

    def report_now(self) -> None:
        """Report every running lease now, synchronously (the executor calls
        it just before a spawn).  Each line is written alone: a pipe write of
        at most PIPE_BUF bytes is atomic, so a full pipe drops whole lines
        (sent again within FEED_EVERY), never half of one."""
        if self._fd is None:
            return
        for line in report(self.leases_left(), self._reported):
            try:
                os.write(self._fd, line)
            except BlockingIOError:
                return
            except OSError:  # the helper is gone: run() restarts it
                return

    async def run(self) -> None:
        """Run the helper for as long as the node runs; one that dies is
        logged and started again.  Nothing here may stop the node."""
        while True:
            try:
                await self._run_one_helper()
            except OSError as exc:
                log.warning("lease watchdog helper failed: %s; restarting it", exc)
            except Exception:  # a bug here loses the backstop, not the node
                log.exception("lease watchdog failed; restarting it")
            else:
                log.warning("lease watchdog helper exited; restarting it")
            await trio.sleep(RESTART_AFTER)

    async def _run_one_helper(self) -> None:
        process = await trio.lowlevel.open_process(
            helper_argv(self.work_dir, self.margin, self.docker),
            stdin=subprocess.PIPE,
            start_new_session=True,
        )
        stdin = process.stdin
        assert isinstance(stdin, trio.lowlevel.FdStream)  # (FdStream: non-blocking)
        try:
            self._fd = stdin.fileno()
            self._reported = set()
            while process.returncode is None:
                self.report_now()
                if self._reported or trio.current_time() - self._spawned_at < LINGER:
                    await trio.sleep(FEED_EVERY)
                else:  # nothing runs: sleep until a spawn
                    self._spawned = trio.Event()
                    with trio.move_on_after(IDLE_CHECK):
                        await self._spawned.wait()
        finally:
            self._fd = None
            with trio.CancelScope(shield=True):
                await stdin.aclose()  # end of input: the helper exits
                with trio.move_on_after(2):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
                    await process.wait()
