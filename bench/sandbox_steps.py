"""Where the sandboxed child's time goes, component by component.

Runs one trivial job (``true``) through a ``ProcessExecutor`` with
``sandbox="bwrap"`` and, at the moment it spawns (its workdir and cgroup
exist), takes the exact argv and env it uses.  Then it runs that argv and
variants of it with one part taken away or changed, round-robin (``-n``
rounds, the variants in a fresh random order each round, so drift on the
machine hits all alike), and prints, per variant, the median wall time from
fork to reaped exit and the median CPU time of the whole child tree
(``wait4`` rusage: user + system), and their differences to the full argv.

Usage: ``python bench/sandbox_steps.py [-n 40] [--only full,bwrap-only,...]``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script: make the repo's packages importable

import p2pnode.executors.process as process_mod  # noqa: E402
from p2pnode.blobs import BlobStore  # noqa: E402
from p2pnode.executors import ProcessExecutor  # noqa: E402
from protocols.events import StartExecution  # noqa: E402

# bwrap options and how many arguments each takes.
_ARITY = {
    "--unshare-pid": 0, "--unshare-ipc": 0, "--unshare-uts": 0, "--unshare-cgroup-try": 0,
    "--unshare-net": 0, "--unshare-user": 0, "--die-with-parent": 0, "--new-session": 0,
    "--cap-drop": 1, "--cap-add": 1, "--proc": 1, "--dev": 1, "--perms": 1, "--size": 1,
    "--tmpfs": 1, "--dir": 1, "--chdir": 1, "--ro-bind": 2, "--bind": 2, "--symlink": 2,
    "--dev-bind": 2, "--remount-ro": 1, "--setenv": 2, "--unsetenv": 1,
}
PR_SET_CHILD_SUBREAPER = 36
_MODIFIERS = ("--perms", "--size")  # apply to the next operation: kept with it


def _ops(args: list[str]) -> list[list[str]]:
    """bwrap's options grouped into operations (a modifier goes with its op)."""
    ops: list[list[str]] = []
    pending: list[str] = []
    i = 0
    while i < len(args):
        name = args[i]
        n = _ARITY[name]
        op = args[i : i + 1 + n]
        i += 1 + n
        if name in _MODIFIERS:
            pending += op
        else:
            ops.append(pending + op)
            pending = []
    return ops


class Parts:
    """The captured argv cut into its parts."""

    def __init__(self, argv: list[str], bwrap: str) -> None:
        b = argv.index(bwrap)
        # The shell before bwrap (cgroup join; since the wrappers were merged,
        # also the rlimits) and, in older trees, a second one inside (rlimits).
        self.cgroup = argv[:b]
        end = argv.index("--", b)
        self.bwrap = argv[b]
        self.ops = _ops(argv[b + 1 : end])
        rest = argv[end + 1 :]
        self.setpriv: list[str] = []
        if rest and rest[0].endswith("setpriv"):
            k = rest.index("--")
            self.setpriv, rest = rest[: k + 1], rest[k + 1 :]
        self.limits: list[str] = []
        if rest[:2] == ["/bin/sh", "-c"]:
            self.limits, rest = rest[:4], rest[4:]
        self.command = rest

    def build(
        self,
        *,
        cgroup: bool = True,
        limits: bool = True,
        setpriv: bool = True,
        keep: Callable[[list[str]], bool] = lambda op: True,
        command: list[str] | None = None,
    ) -> list[str]:
        args = [self.bwrap] + [a for op in self.ops if keep(op) for a in op] + ["--"]
        return (
            (self.cgroup if cgroup else [])
            + args
            + (self.setpriv if setpriv else [])
            + (self.limits if limits else [])
            + (command or self.command)
        )


def _variants(p: Parts, env: dict[str, str]) -> dict[str, tuple[list[str], dict[str, str]]]:
    def without(*names: str) -> Callable[[list[str]], bool]:
        return lambda op: not any(n in op for n in names)

    true = ["/usr/bin/true"]
    sh = ["/bin/sh", "-c", 'exec "$@"', "x", "/usr/bin/true"]

    def minimal(op: list[str]) -> bool:  # /usr and the merged-/usr symlinks only
        return (op[-2:] == ["/usr", "/usr"] or "--symlink" in op
                or op[0].startswith("--unshare") or op[0] in ("--die-with-parent",
                "--new-session", "--cap-drop", "--cap-add")) and "--bind" not in op
    v: dict[str, tuple[list[str], dict[str, str]]] = {
        "full": (p.build(), env),
        "bare true": (true, env),
        "one sh + true": (sh, env),
        "sh before bwrap + true": (p.cgroup + true, env),
        "setpriv + true": (p.setpriv + true, env),
        "setpriv + true, LC_ALL=C": (p.setpriv + true, {**env, "LC_ALL": "C"}),
        "full - sh before bwrap": (p.build(cgroup=False), env),
        "full - setpriv": (p.build(setpriv=False), env),
        "full, LC_ALL=C": (p.build(), {**env, "LC_ALL": "C"}),
        "bwrap only": (p.build(cgroup=False, limits=False, setpriv=False, command=true), env),
        "bwrap - unshare-net": (p.build(cgroup=False, limits=False, setpriv=False,
                                        command=true, keep=without("--unshare-net")), env),
        "bwrap - unshare-pid": (p.build(cgroup=False, limits=False, setpriv=False,
                                        command=true, keep=without("--unshare-pid")), env),
        "bwrap - unshare ipc, uts, cgroup": (p.build(
            cgroup=False, limits=False, setpriv=False, command=true,
            keep=without("--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try")), env),
        "bwrap - proc": (p.build(cgroup=False, limits=False, setpriv=False, command=true,
                                 keep=without("--proc")), env),
        "bwrap - dev": (p.build(cgroup=False, limits=False, setpriv=False, command=true,
                                keep=without("--dev")), env),
        "bwrap - tmpfs x2": (p.build(cgroup=False, limits=False, setpriv=False, command=true,
                                     keep=without("--tmpfs")), env),
        "bwrap - dirs": (p.build(cgroup=False, limits=False, setpriv=False, command=true,
                                 keep=without("--dir")), env),
        "bwrap - workdir binds": (p.build(cgroup=False, limits=False, setpriv=False,
                                          command=true, keep=without("--bind", "/task/inputs",
                                                                     "--chdir")), env),
        "bwrap - ro-binds but /usr": (p.build(
            cgroup=False, limits=False, setpriv=False, command=true,
            keep=lambda op: "--ro-bind" not in op or op[-1] in ("/usr", "/task/inputs")), env),
        "bwrap minimal (/usr, symlinks)": (p.build(cgroup=False, limits=False, setpriv=False,
                                                   command=true, keep=minimal), env),
    }
    v["bwrap, no namespaces, --bind / /"] = (
        [p.bwrap, "--bind", "/", "/", "--", "/usr/bin/true"], env)
    if p.setpriv:  # the same uid switch by util-linux unshare (no NSS lookup)
        uid = next(a for a in p.setpriv if a.startswith("--reuid=")).split("=")[1]
        unshare = ["/usr/bin/unshare", "--setgid", uid, "--setuid", uid, "--"]
        v["unshare -S -G instead of setpriv"] = (
            p.build(setpriv=False, command=unshare + p.limits + p.command), env)
    if p.limits:  # the older chain: a second shell inside, after setpriv
        v["sh in the sandbox + true"] = (p.limits + true, env)
        v["full - sh in the sandbox"] = (p.build(limits=False), env)
    return v


def _run_once(
    argv: list[str], env: dict[str, str], cwd: str, name: str = ""
) -> tuple[float, float]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    assert proc.stderr is not None
    err = proc.stderr.read()
    _pid, status, usage = os.wait4(proc.pid, 0)
    cpu = usage.ru_utime + usage.ru_stime
    while True:  # orphans (bwrap's sandbox init) come to us: we are a subreaper
        try:
            _pid, _status, more = os.wait4(-1, 0)
        except ChildProcessError:
            break
        cpu += more.ru_utime + more.ru_stime
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{name}: {argv}... exited {proc.returncode}: {err.decode()[-300:]}")
    return wall, cpu


def _bench(argv: list[str], env: dict[str, str], cwd: str, bwrap: str, n: int,
           only: set[str] | None) -> None:
    parts = Parts(argv, bwrap)
    variants = _variants(parts, env)
    if only:
        variants = {k: v for k, v in variants.items() if k in only or k == "full"}
    walls: dict[str, list[float]] = {k: [] for k in variants}
    cpus: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for name in names:  # warm-up (page cache, first-use costs)
        _run_once(*variants[name], cwd, name)
    for _ in range(n):
        random.shuffle(names)
        for name in names:
            wall, cpu = _run_once(*variants[name], cwd, name)
            walls[name].append(wall)
            cpus[name].append(cpu)
    full_w = statistics.median(walls["full"])
    full_c = statistics.median(cpus["full"])
    print(f"load average: {os.getloadavg()}   rounds: {n}")
    print(f"{'variant':34} {'wall ms':>8} {'Δ full':>7} {'cpu ms':>7} {'Δ full':>7}")
    for name in variants:
        w, c = statistics.median(walls[name]), statistics.median(cpus[name])
        print(f"{name:34} {w * 1e3:8.2f} {(w - full_w) * 1e3:+7.2f} "
              f"{c * 1e3:7.2f} {(c - full_c) * 1e3:+7.2f}")


def main() -> None:
    # Orphaned descendants are reparented to us, so their CPU time is counted.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=40)
    ap.add_argument("--only", default="", help="comma-separated variant names (and full)")
    ap.add_argument("--print-argv", action="store_true")
    a = ap.parse_args()
    only = set(a.only.split(",")) if a.only else None
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        executor = ProcessExecutor(data, BlobStore(data), max_output_bytes=1 << 20,
                                   sandbox="bwrap")
        assert executor.sandbox is not None
        bwrap = executor.sandbox.bwrap
        original = process_mod.spawn

        def spy(argv, *, cwd, env, **kw):  # type: ignore[no-untyped-def]
            if a.print_argv:
                print(argv)
            _bench(list(argv), dict(env), str(cwd), bwrap, a.n, only)
            return original(argv, cwd=cwd, env=env, **kw)

        process_mod.spawn = spy  # type: ignore[assignment]

        async def one() -> None:
            task = {"engine": {"type": "process", "command": ["true"]}}
            result = await executor.run(StartExecution("steps-1", "steps", 0, task, {}, 60.0))
            assert result.status == "succeeded", result

        trio.run(one)


if __name__ == "__main__":
    main()
