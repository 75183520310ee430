"""The lease watchdog: a small process beside each compute node that ends the
tasks whose leases ran out while their node could not end them.

A holder ends its task when its lease lapses (``Holder.on_lapse_timer``), but
only while its own process runs.  A node paused by SIGSTOP, a debugger, a
descheduled VM or a swap storm leaves its tasks running: they do not share its
process (SIGKILL ends them through the sandbox's ``--die-with-parent``; a pause
does not).  Meanwhile the owner re-runs the work elsewhere, so a frozen
holder's task ran on beside its re-run for as long as the pause lasted
(``tests/test_real_pauses.py`` measured it).

The node (``p2pnode/watchdog.py``) starts this helper in a session of its own,
so a signal to the node's process group does not stop it too, and every
``FEED_EVERY`` writes on its stdin one line per running execution::

    <execution id> <seconds its lease has left>
    <execution id> -          (it ended: forget it)

The helper keeps each deadline, on its own monotonic clock, plus a margin (the
node's kill grace and a second: a node that is running fences first, and its
SIGTERM gets its grace).  When a deadline passes with no newer line, the node
has said nothing for longer than the lease, and the helper ends the task:

* a process task: it SIGKILLs that execution's process group, found by the
  executor's pidfile, after checking that the group still holds a process of
  that execution (a recycled group id is never signalled);
* a Docker task, when the node runs the docker executor: it kills the running
  containers labelled with that execution and node, through the Engine API
  (``p2pnode/watchdog_docker.py``: a unix socket, or tcp:// with or without
  TLS).

A wasm task needs neither: it runs in a thread of the node's own process, and
is paused with it.  End of input (the node exited) ends the helper.

Standard library only, and started without site-packages (``-S``): it costs a
few MB and no import time.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from p2pnode.procfs import execution_groups, runs_execution
from p2pnode.watchdog_docker import Engine, kill_containers


class Deadlines:
    """What the helper knows: each execution's deadline, and the kills due."""

    def __init__(self, margin: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.margin = margin
        self.clock = clock
        self.due_at: dict[str, float] = {}
        self._partial = b""

    def feed(self, data: bytes) -> None:
        """Lines from the node; a malformed one is ignored (it can only come
        from the node itself, and losing one line costs one FEED_EVERY)."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        now = self.clock()
        for line in lines:
            parts = line.decode("utf-8", "replace").split()
            if len(parts) != 2:
                continue
            execution_id, left = parts
            if left == "-":
                self.due_at.pop(execution_id, None)
                continue
            try:
                self.due_at[execution_id] = now + float(left) + self.margin
            except ValueError:
                continue

    def take_due(self) -> list[str]:
        now = self.clock()
        due = [eid for eid, at in self.due_at.items() if at <= now]
        for eid in due:
            del self.due_at[eid]
        return due

    def wait(self) -> float | None:
        """Seconds until the next deadline (None: none is kept)."""
        if not self.due_at:
            return None
        return max(0.0, min(self.due_at.values()) - self.clock())


class Docker(NamedTuple):
    """Where the node's containers are: the engine, and the node id its
    containers are labelled with."""

    engine: Engine
    node_id: str

    def argv(self) -> list[str]:
        """The helper's command-line words for it (``main`` reads them)."""
        return [self.node_id, *self.engine.argv()]


def _say(text: str) -> None:
    print(f"p2pnode lease watchdog: {text}", file=sys.stderr, flush=True)


def end_lapsed(work_dir: Path, execution_id: str, docker: Docker | None = None) -> bool:
    """End the task of ``execution_id`` if it still runs: its process group,
    and its containers; returns whether something was ended."""
    ended = _end_group(work_dir, execution_id)
    if docker is not None:
        try:
            ended = bool(kill_containers(docker.engine, docker.node_id, execution_id)) or ended
        except Exception as exc:  # engine down, or an answer we cannot read:
            # report it and go on (the helper keeps every other deadline).
            _say(f"cannot ask Docker about {execution_id}: {exc!r}")
    if ended:
        _say(f"ended the task of {execution_id}: its lease ran out while its node was silent")
    return ended


def _end_group(work_dir: Path, execution_id: str) -> bool:
    pgid = execution_groups(work_dir).get(execution_id)
    if pgid is None or not runs_execution(pgid, execution_id):
        return False
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def serve(fd: int, work_dir: Path, margin: float, docker: Docker | None = None) -> None:
    deadlines = Deadlines(margin)
    while True:
        for execution_id in deadlines.take_due():
            end_lapsed(work_dir, execution_id, docker)
        ready, _, _ = select.select([fd], [], [], deadlines.wait())
        if ready:
            data = os.read(fd, 65536)
            if not data:
                return  # the node is gone
            deadlines.feed(data)


def main() -> None:
    """argv: work_dir margin [node_id engine_url cert_dir verify] (``Docker.argv``)"""
    work_dir, margin = Path(sys.argv[1]), float(sys.argv[2])
    docker = None
    if len(sys.argv) >= 5:
        docker = Docker(Engine.from_argv(sys.argv[4:]), sys.argv[3])
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node decides when we stop
    serve(sys.stdin.fileno(), work_dir, margin, docker)


if __name__ == "__main__":
    main()
