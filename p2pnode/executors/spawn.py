"""Spawn a child process from the trio thread itself.

``trio.lowlevel.open_process`` forks from a worker thread.  prctl(2) says a
parent-death signal (bwrap's ``--die-with-parent``) is sent when the *thread*
that forked the child exits, and trio's idle worker threads exit after ten
seconds.  (The kernel this was tested on did not send it while another thread
of the process lived, but that is not a promise.)  So the executor forks here,
from the trio thread (a few milliseconds: CPython uses vfork where it can), and
waits for the exit through a pidfd.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import trio

__all__ = ["Child", "spawn"]


class Child:
    """A running child: its pid, its stdout/stderr as trio streams, and an
    awaitable exit.  ``returncode`` follows subprocess (``-N``: signal N)."""

    def __init__(
        self, popen: subprocess.Popen[bytes], stdout: trio.lowlevel.FdStream,
        stderr: trio.lowlevel.FdStream,
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.stdout = stdout
        self.stderr = stderr
        self._pidfd: int | None = os.pidfd_open(popen.pid)

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen.returncode is None else self._popen.returncode

    async def wait(self) -> int:
        while self._popen.returncode is None:
            if self._pidfd is not None:
                await trio.lowlevel.wait_readable(self._pidfd)
                trio.lowlevel.notify_closing(self._pidfd)
                os.close(self._pidfd)
                self._pidfd = None
            self._popen.wait()
        return self._popen.returncode

    def close_pidfd(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None


def spawn(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], new_session: bool = True
) -> Child:
    """Start ``argv`` with stdin from /dev/null and stdout/stderr piped."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        popen = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            close_fds=True,
            start_new_session=new_session,
        )
    except BaseException:
        for fd in (out_r, err_r):
            os.close(fd)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    return Child(popen, trio.lowlevel.FdStream(out_r), trio.lowlevel.FdStream(err_r))
