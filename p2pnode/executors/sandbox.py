"""The process executor's sandbox: bubblewrap (``bwrap``) around every task.

What a sandboxed task sees
--------------------------
* New pid, mount, ipc and uts namespaces, and a new network namespace (only
  ``lo``, down) unless the task asks for ``network: host``.  Abstract unix
  sockets belong to the network namespace, so ``network: none`` also cuts
  those off.
* A root of its own: the host's system directories (``/usr``, ``/bin``,
  ``/sbin``, ``/lib*``, ``/etc``, ``/opt``) and the node's Python installation
  (``sys.prefix``, ``sys.base_prefix``: tasks often run ``python``) bound
  read-only, plus ``ro_paths`` chosen by the operator; a fresh ``/proc`` (its
  own pid namespace: the node's processes are not in it), a minimal ``/dev``,
  and a private, writable ``/tmp`` and ``/dev/shm`` (tmpfs, 1777, each as
  large as the task's ``memory``).  Nothing else of the host exists in there: not ``/home``,
  ``/root``, ``/run`` (so no Docker socket), nor the node's data dir, which is
  also covered by an empty tmpfs in case it lies under one of the bound paths.
* Its workdir at ``/task`` (``TASK_WORKDIR``; also cwd and ``HOME``):
  read-write (scratch space, ``outputs/``) with ``inputs/`` re-mounted
  read-only over it; ``P2PNODE_INPUTS``/``P2PNODE_OUTPUTS`` say
  ``/task/inputs`` and ``/task/outputs``.  Not at its host path: bwrap would
  create the data dir's path above it, and nothing of the data dir (not even
  its location) belongs in there.
* ``--die-with-parent``: when the node dies, even by SIGKILL, the kernel kills
  bwrap, and with it the pid namespace: every process in it, detached
  (``setsid``, double fork, ``nohup``) or not.  The parent-death signal fires
  when the *thread* that spawned bwrap exits, so the executor spawns it from
  the trio thread itself, never from a worker thread (trio's
  ``open_process`` would).
* ``--new-session``: the task cannot push input into a terminal (TIOCSTI).

Which uid
---------
The uid a task has *outside* its namespaces is what the kernel checks on
everything it could still reach, so it matters more than the uid it sees.

* Node running as root: bwrap runs as root (it needs no user namespace then)
  with every capability dropped but ``CAP_SETUID``/``CAP_SETGID``, and the
  first thing in the sandbox is ``setpriv`` switching to a real, unprivileged
  uid and gid, no supplementary groups, no capabilities.  The uid is picked
  per execution from ``TASK_UID_BASE .. +TASK_UID_SPAN`` (a hash of the
  execution id), a range no distribution hands out, so concurrent tasks do
  not share a uid (nor its process-count limit) and files a task creates are
  owned by nobody else.  The workdir and its inputs are chowned to it (inputs
  stay read-only: the mount is).  Why not bwrap's own ``--uid`` in a user
  namespace: as root, that namespace maps the task's uid back to root outside.
  Why not run bwrap itself as the task uid: it could not reach the workdir,
  which lies in the data dir (0700).
* Node running as an ordinary user: bwrap creates a user namespace (needs
  unprivileged user namespaces, which Debian enables), and the task's uid
  outside is the node's own: the namespaces, not the uid, keep it from the
  node's files.

Limits
------
Always rlimits, set by the ``/bin/sh`` wrapper that execs bwrap and
inherited through bwrap and setpriv (see ``process.py``): memory
(``RLIMIT_AS``), CPU time (``RLIMIT_CPU``), core files, and, when the task
has a uid of its own (root node), the number of processes (``RLIMIT_NPROC`` =
``pids_limit``; it counts per uid, so it is only a per-task limit when the
uid is the task's own).  Where the node may
create cgroups (``cgroups.py``: v1, or v2 from the root cgroup or a
delegated one), also a cgroup per execution: pids and memory (tmpfs pages
included).
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import attrs

from p2pnode.errors import SandboxUnavailable as SandboxUnavailable  # re-exported

__all__ = [
    "SANDBOX_MODES",
    "TASK_UID_BASE",
    "TASK_UID_SPAN",
    "TASK_WORKDIR",
    "BwrapSandbox",
    "SandboxUnavailable",
    "open_sandbox",
    "task_uid",
]

SANDBOX_MODES = ("bwrap", "none")
TASK_UID_BASE = 0x50000  # 327680: above the ranges useradd and subuid hand out
TASK_UID_SPAN = 0x10000
TASK_WORKDIR = "/task"  # where a sandboxed task sees its workdir
SYSTEM_RO_PATHS = (
    "/usr",
    "/bin",
    "/sbin",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/etc",
    "/opt",
)


def task_uid(execution_id: str) -> int:
    digest = hashlib.sha256(execution_id.encode("utf-8", "surrogatepass")).digest()
    return TASK_UID_BASE + int.from_bytes(digest[:4], "big") % TASK_UID_SPAN


@attrs.frozen
class BwrapSandbox:
    bwrap: str  # absolute path of the bwrap binary
    data_dir: Path  # hidden from every task
    ro_paths: tuple[str, ...]  # bound read-only at the same path (existing ones)
    setpriv: str | None  # set when the node is root: tasks switch to their own uid

    @property
    def own_uid(self) -> bool:
        """Each task runs under a uid of its own (the node is root)."""
        return self.setpriv is not None

    def prepare(self, root: Path, uid: int) -> None:
        """Hand the workdir to the task's uid (root node only); blocking."""
        if not self.own_uid:
            return
        # bwrap, still root but without CAP_DAC_OVERRIDE, must enter it (--chdir).
        os.chmod(root, 0o711)
        for dirpath, dirnames, filenames in os.walk(root):
            os.chown(dirpath, uid, uid, follow_symlinks=False)
            for name in (*dirnames, *filenames):
                os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)

    def argv(
        self,
        *,
        workdir: Path,
        inputs: Path,
        network: str,
        uid: int,
        command: Sequence[str],
        tmp_bytes: int = 64 * 1024 * 1024,
    ) -> list[str]:
        """``tmp_bytes``: the size of the private /tmp (a tmpfs is RAM that
        RLIMIT_AS does not count: the executor passes the task's memory)."""
        args = [
            self.bwrap,
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--die-with-parent",
            "--new-session",
        ]
        if network != "host":
            args.append("--unshare-net")
        if self.own_uid:
            # Real root: no user namespace; keep only what setpriv needs.
            args += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            args.append("--unshare-user")
        # /tmp first: an operator's --sandbox-ro path may lie under it.
        args += ["--proc", "/proc", "--dev", "/dev"]
        for scratch in ("/tmp", "/dev/shm"):
            args += ["--perms", "1777", "--size", str(tmp_bytes), "--tmpfs", scratch]
        args += _read_only_args(self.ro_paths, self.data_dir)
        inside = f"{TASK_WORKDIR}/{inputs.relative_to(workdir)}"
        args += ["--bind", str(workdir), TASK_WORKDIR, "--ro-bind", str(inputs), inside]
        args += ["--chdir", TASK_WORKDIR, "--"]
        if self.setpriv is not None:
            args += [
                self.setpriv,
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--inh-caps=-all",
                "--",
            ]
        return args + list(command)


@functools.lru_cache(maxsize=16)
def _read_only_args(ro_paths: tuple[str, ...], data_dir: Path) -> list[str]:
    """The read-only part of the mounts: the same for every task of a node, so
    worked out once (pathlib and a stat per path cost more than bwrap's flags
    are worth on every spawn).  Callers copy it (``args += ...``)."""
    args: list[str] = []
    # bwrap creates missing parents 0700, which the task's uid could not
    # cross: make them 0755 (they are empty, on bwrap's own tmpfs).
    for parent in _parents_to_create(ro_paths):
        args += ["--perms", "0755", "--dir", parent]
    for path in ro_paths:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        else:
            args += ["--ro-bind", path, path]
    if any(Path(p) == data_dir or Path(p) in data_dir.parents for p in ro_paths):
        args += ["--tmpfs", str(data_dir)]  # under a bound path: cover it
    return args


def _parents_to_create(ro_paths: Sequence[str]) -> list[str]:
    def covered(path: str) -> bool:
        return any(path == bound or path.startswith(bound.rstrip("/") + "/") for bound in ro_paths)

    parents: list[str] = []
    for path in ro_paths:
        for parent in reversed(Path(path).parents):
            name = str(parent)
            if name != "/" and not covered(name) and name not in parents:
                parents.append(name)
    return parents


def _ro_paths(data_dir: Path, extra: Sequence[str]) -> tuple[str, ...]:
    candidates = [*SYSTEM_RO_PATHS, sys.prefix, sys.base_prefix, sys.exec_prefix, *extra]
    seen: list[str] = []
    for raw in candidates:
        path = os.path.abspath(raw)
        if not os.path.lexists(path) or path in seen:
            continue
        resolved = Path(os.path.realpath(path))
        if resolved == data_dir or data_dir in resolved.parents:
            raise SandboxUnavailable(f"sandbox path {raw} is inside the data dir {data_dir}")
        if path == TASK_WORKDIR or path.startswith(TASK_WORKDIR + "/"):
            raise SandboxUnavailable(f"sandbox path {raw} clashes with the tasks' {TASK_WORKDIR}")
        seen.append(path)
    return tuple(seen)


def open_sandbox(
    mode: str, data_dir: Path, *, ro_paths: Sequence[str] = (), path: str | None = None
) -> BwrapSandbox | None:
    """The sandbox for ``mode`` (``None`` for ``"none"``), checked by running
    it once: raises ``SandboxUnavailable`` with one line saying what is
    missing.  ``path``: where to look for bwrap (default ``$PATH``)."""
    if mode == "none":
        return None
    if mode != "bwrap":
        raise SandboxUnavailable(f"unknown sandbox {mode!r}; choose from {list(SANDBOX_MODES)}")
    bwrap = shutil.which("bwrap", path=path)
    if bwrap is None:
        raise SandboxUnavailable(
            "bwrap (bubblewrap) not found on PATH: install it (apt-get install bubblewrap), "
            "or run tasks unsandboxed with --sandbox none"
        )
    setpriv = None
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv", path=path) or shutil.which("setpriv")
        if setpriv is None:
            raise SandboxUnavailable("setpriv (util-linux) not found: needed to drop root in tasks")
    data_dir = Path(os.path.realpath(data_dir))
    sandbox = BwrapSandbox(bwrap, data_dir, _ro_paths(data_dir, ro_paths), setpriv)
    probe = data_dir / "work" / ".sandbox-probe"
    (probe / "inputs").mkdir(parents=True, exist_ok=True)
    try:
        uid = TASK_UID_BASE
        sandbox.prepare(probe, uid)
        argv = sandbox.argv(workdir=probe, inputs=probe / "inputs", network="none", uid=uid,
                            command=["/bin/sh", "-c", "exit 0"])
        try:
            result = subprocess.run(argv, capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise SandboxUnavailable(f"bwrap does not work here: {err}") from None
        if result.returncode != 0:
            why = result.stderr.decode("utf-8", "replace").strip().splitlines()
            raise SandboxUnavailable(
                f"bwrap does not work here: {why[-1] if why else f'exit {result.returncode}'}"
            )
    finally:
        shutil.rmtree(probe, ignore_errors=True)
    return sandbox
