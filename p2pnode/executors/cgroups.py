"""cgroup limits for sandboxed tasks, where the node may create cgroups.

A cgroup per execution, under the node's own cgroup, holds bwrap and
everything the task starts:

* ``pids``: at most ``pids_limit`` processes and threads, whatever the uid
  (``RLIMIT_NPROC`` counts per uid, so it is only a per-task limit for a root
  node's per-task uid);
* ``memory``: ``resources.memory`` of resident memory, page cache and tmpfs
  pages included (``RLIMIT_AS`` bounds address space only);

No CPU quota: ``resources.cpu`` is what the auction reserves (0.1 core by
default) and a hard quota that low makes an interpreter's start-up take
seconds; ``RLIMIT_CPU`` (timeout x cpu of CPU time) bounds the total instead.

cgroup v1 (one hierarchy per controller) and v2 are both handled.  On v2 a
non-root cgroup cannot both hold processes and delegate controllers to
children, so unless the node runs in the root cgroup (as in many containers)
or was given a delegated subtree it has no say: :func:`detect` then returns
``None`` and the rlimits alone apply.  The rlimits apply in every case.

A task joins its cgroup before bwrap starts: the spawned command is the
executor's ``/bin/sh`` wrapper, which moves itself into each cgroup
(:meth:`TaskCgroup.join_commands`), sets the rlimits and then execs bwrap
(race-free: nothing is forked before it has moved).  On v1 it writes ``0`` (the writing
thread itself) to ``tasks``, not its pid to ``cgroup.procs``: the kernel moves
a whole thread group under a global lock whose write side waits for an RCU
grace period (measured 11-12 ms per task on a 2-core host, about half of a
trivial sandboxed task's executor time), while a thread moving itself takes no
such lock.  The shell has one thread, so it is the same move.  (v2 has no such
file: a thread can only move within its process's domain.)
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
from pathlib import Path

import attrs

__all__ = ["CgroupLimits", "TaskCgroup", "detect"]

log = logging.getLogger(__name__)

ROOT = Path("/sys/fs/cgroup")
CONTROLLERS = ("pids", "memory")
GROUP = "p2pnode"  # <own cgroup>/p2pnode/<node key>/<execution>


@attrs.frozen
class TaskCgroup:
    """The cgroup directories of one execution (one per v1 hierarchy)."""

    dirs: tuple[Path, ...]
    version: int = 2  # 1: join through ``tasks`` (see the module doc)

    def join_commands(self) -> str:
        """Shell commands that move the shell running them into the cgroups
        (``a && b``: false as soon as one move fails)."""
        join = "echo 0 > {}/tasks" if self.version == 1 else "echo $$ > {}/cgroup.procs"
        return " && ".join(join.format(shlex.quote(str(d))) for d in self.dirs)

    def out_of_memory(self) -> bool:
        for d in self.dirs:
            for name, key in (("memory.events", "oom_kill"), ("memory.oom_control", "oom_kill")):
                with contextlib.suppress(OSError, ValueError):
                    for line in (d / name).read_text().splitlines():
                        field, _, value = line.partition(" ")
                        if field == key and int(value) > 0:
                            return True
        return False

    def remove(self) -> None:
        """rmdir each cgroup (its processes are gone by then); never raises."""
        for d in self.dirs:
            try:
                d.rmdir()
            except OSError as err:
                log.warning("cannot remove cgroup %s: %s", d, err)


@attrs.frozen
class CgroupLimits:
    """Where this node creates its tasks' cgroups."""

    version: int  # 1 or 2
    bases: tuple[tuple[str, Path], ...]  # (controller, the node's p2pnode/ dir)

    def ensure_bases(self) -> None:
        """(Re)create the node's subtree: another node may have swept it while idle."""
        for _controller, base in self.bases:
            base.mkdir(exist_ok=True)
            if self.version == 2:
                enable = " ".join(f"+{c}" for c in CONTROLLERS)
                (base / "cgroup.subtree_control").write_text(enable)

    def create(self, name: str, *, pids: int, memory: int) -> TaskCgroup:
        """A fresh cgroup per hierarchy with the limits written; raises OSError."""
        try:
            return self._create(name, pids=pids, memory=memory)
        except FileNotFoundError:  # our idle subtree swept meanwhile: once more
            return self._create(name, pids=pids, memory=memory)

    def _create(self, name: str, *, pids: int, memory: int) -> TaskCgroup:
        dirs: list[Path] = []
        self.ensure_bases()
        try:
            for controller, base in self.bases:
                path = base / name
                if path not in dirs:
                    if path.exists():  # left by a crashed run: empty by now
                        path.rmdir()
                    path.mkdir()
                    dirs.append(path)
                _write_limit(self.version, controller, path, pids=pids, memory=memory)
        except OSError:
            TaskCgroup(tuple(dirs)).remove()
            raise
        return TaskCgroup(tuple(dirs), self.version)


def _write_limit(version: int, controller: str, path: Path, *, pids: int, memory: int) -> None:
    if version == 2:
        values = {
            "pids": {"pids.max": str(pids)},
            "memory": {"memory.max": str(memory), "memory.swap.max": "0"},
        }[controller]
    else:
        values = {
            "pids": {"pids.max": str(pids)},
            "memory": {"memory.limit_in_bytes": str(memory)},
        }[controller]
    for name, value in values.items():
        file = path / name
        if name == "memory.swap.max" and not file.exists():
            continue  # no swap accounting: nothing to forbid
        file.write_text(value)


def _own_paths() -> dict[str, str]:
    """controller (v1) or "" (v2) -> this process's cgroup path."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _id, controllers, path = line.split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                paths[controller] = path
    return paths


def detect(node_key: str = "") -> CgroupLimits | None:
    """The cgroup setup this node can use, or ``None`` (rlimits only).
    ``node_key`` names the node's own subtree (several nodes may share a
    host and a cgroup): ``<own cgroup>/p2pnode/<node_key>/<execution>``."""
    try:
        limits = _detect()
        if limits is None or not node_key:
            return limits
        # Other nodes' subtrees are left alone (one empty directory per data
        # dir that ever ran tasks): removing an idle one races with its node.
        node = CgroupLimits(
            limits.version, tuple((c, base / node_key) for c, base in limits.bases)
        )
        node.ensure_bases()
        return node
    except OSError as err:
        log.info("cgroup limits unavailable (%s): rlimits only", err)
        return None


def _detect() -> CgroupLimits | None:
    own = _own_paths()
    if (ROOT / "cgroup.controllers").exists():  # unified (v2) hierarchy
        base = ROOT / own.get("", "/").lstrip("/")
        available = set((base / "cgroup.controllers").read_text().split())
        if not set(CONTROLLERS) <= available:
            return None
        if base != ROOT and (base / "cgroup.procs").read_text().strip():
            return None  # processes here: controllers cannot be delegated (no delegation)
        group = base / GROUP
        group.mkdir(exist_ok=True)
        enable = " ".join(f"+{c}" for c in CONTROLLERS)
        (base / "cgroup.subtree_control").write_text(enable)
        (group / "cgroup.subtree_control").write_text(enable)
        return CgroupLimits(2, tuple((c, group) for c in CONTROLLERS))
    bases = []
    for controller in CONTROLLERS:
        mount = ROOT / controller
        if controller not in own or not (mount / "cgroup.procs").exists():
            return None
        group = mount / own[controller].lstrip("/") / GROUP
        group.mkdir(exist_ok=True)
        if not os.access(group, os.W_OK):
            return None
        bases.append((controller, group))
    return CgroupLimits(1, tuple(bases))
