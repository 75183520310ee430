"""Helpers for the real-network suites: ``p2pnode serve`` processes and the CLI.

``Cluster`` starts ``serve`` subprocesses, each with its own data dir under the
test's ``tmp_path``, and always cleans up: nodes still running at the end are
SIGKILLed, and process groups of executions that a killed node left behind
(their pidfiles remain in ``<data dir>/work``) are killed too, so a failing test
never leaves a ``sleep 60`` running on the CI machine.

Every wait is bounded and polls (files, the control socket): no fixed sleeps
standing in for "long enough".  When a wait or a CLI call fails, the assertion
message carries the stderr tails of every node, since a real-network failure is
rarely explained by the test's own view.

The CLI costs ~2 s of interpreter start-up per call (it imports py-libp2p), so
the suites call it for what they assert about the CLI itself, and use the
control socket directly (``ServeNode.control``, the same socket and client the
CLI uses) for fast polling.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import trio

from p2pnode import procfs
from p2pnode.control import ControlClient, ControlError

PYTHON = sys.executable  # the venv's interpreter: it has p2pnode installed
READY_TIMEOUT = 30.0  # a node start costs ~2-3 s on a loaded 2-core machine
STOP_TIMEOUT = 20.0
CLI_TIMEOUT = 60.0
TAIL = 3000  # characters of each stderr shown in a failure message

T = TypeVar("T")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("P2PNODE_DATA_DIR", None)  # every call names its data dir explicitly
    env["PYTHONUNBUFFERED"] = "1"  # stdout/stderr files are current when we read them
    return env


@attrs.frozen
class CliResult:
    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def explain(self) -> str:
        return (
            f"$ p2pnode {' '.join(self.args)}\n-> exit {self.returncode}\n"
            f"stdout:\n{self.stdout[-TAIL:]}\nstderr:\n{self.stderr[-TAIL:]}"
        )


def cli_argv(*args: str | os.PathLike[str]) -> list[str]:
    return [PYTHON, "-m", "p2pnode", *map(str, args)]


def run_cli(*args: str | os.PathLike[str], timeout: float = CLI_TIMEOUT) -> CliResult:
    """One CLI invocation (``p2pnode ARGS``), captured."""
    done = subprocess.run(
        cli_argv(*args), capture_output=True, text=True, timeout=timeout, env=_env()
    )
    return CliResult(tuple(map(str, args)), done.returncode, done.stdout, done.stderr)


def spawn_cli(*args: str | os.PathLike[str]) -> subprocess.Popen[str]:
    """One CLI invocation in the background (``communicate()`` it)."""
    return subprocess.Popen(
        cli_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env()
    )


def run_cli_parallel(
    calls: Sequence[Sequence[str | os.PathLike[str]]], timeout: float = CLI_TIMEOUT
) -> list[CliResult]:
    """Several independent CLI invocations at once (each pays the interpreter
    start-up; overlapping them keeps the suite's wall time down)."""
    procs = [
        subprocess.Popen(
            cli_argv(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(),
        )
        for args in calls
    ]
    results = []
    deadline = time.monotonic() + timeout
    try:
        for args, proc in zip(calls, procs, strict=True):
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            results.append(CliResult(tuple(map(str, args)), proc.returncode, out, err))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


# --- processes -------------------------------------------------------------------


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a member that is not a zombie."""
    return any(procfs.pid_state(pid) not in (None, "Z", "X") for pid in procfs.group_members(pgid))


def pids_with_env(marker: str) -> list[int]:
    """Live processes (not zombies) whose environment holds ``marker``
    (``NAME=value``): how the suites find the processes of one execution."""
    wanted = marker.encode()
    return [
        int(name)
        for name in os.listdir("/proc")
        if name.isdigit()
        and procfs.pid_state(int(name)) not in (None, "Z", "X")
        and procfs.has_env(int(name), wanted)
    ]


def execution_pidfiles(data_dir: Path) -> dict[str, int]:
    """Execution id -> process group id, from a node's pidfiles (the files the
    process executor keeps while an execution runs; see executors/process.py)."""
    return procfs.execution_groups(data_dir / "work")


def wait_until(
    predicate: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    explain: Callable[[], str] | None = None,
    interval: float = 0.2,
) -> T:
    """Poll ``predicate`` until it returns something truthy, and return that.
    A bounded guard against hangs, not a timing assertion."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"\n{explain()}" if explain is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")
        time.sleep(interval)


class ServeNode:
    """One ``p2pnode serve`` process; restartable on the same data dir."""

    def __init__(self, name: str, data_dir: Path, log_dir: Path, args: Sequence[str]) -> None:
        self.name = name
        self.data_dir = data_dir
        self.log_dir = log_dir
        self.args = list(args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.node_id = ""
        self.addrs: list[str] = []

    # --- lifecycle ----------------------------------------------------------------

    @property
    def addrs_file(self) -> Path:
        return self.data_dir / "addrs"

    @property
    def control_socket(self) -> Path:
        return self.data_dir / "control.sock"

    @property
    def stderr_path(self) -> Path:
        return self.log_dir / f"{self.name}.{self.starts}.stderr"

    @property
    def stdout_path(self) -> Path:
        return self.log_dir / f"{self.name}.{self.starts}.stdout"

    def start(
        self, args: Sequence[str] | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        """Spawn ``serve`` (``args`` replace the previous flags if given; ``env``
        adds variables for this start only, e.g. a fault injection)."""
        assert not self.running, f"{self.name} is already running"
        if args is not None:
            self.args = list(args)
        # A SIGKILLed node leaves its addrs file behind; remove it so that
        # readiness means *this* start wrote it (same port = same content).
        self.addrs_file.unlink(missing_ok=True)
        self.starts += 1
        argv = cli_argv("serve", "--data-dir", self.data_dir, *self.args)
        environ = {**_env(), **(env or {})}
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=environ)

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> list[str]:
        """Wait for the addrs file (written once the node serves); returns the addrs."""

        def ready() -> list[str] | None:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode} before it was ready\n"
                    + self.explain()
                )
            try:
                lines = self.addrs_file.read_text().split()
            except FileNotFoundError:
                return None
            return lines or None

        self.addrs = wait_until(
            ready, timeout=timeout, what=f"{self.name}'s addrs file", explain=self.explain
        )
        self.node_id = self.addrs[0].rpartition("/p2p/")[2]
        return self.addrs

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def tcp_port(self) -> int:
        """The TCP port of the first listen address (for a same-port restart)."""
        parts = self.addrs[0].split("/")
        return int(parts[parts.index("tcp") + 1])

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = STOP_TIMEOUT) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit within {timeout:.0f} s\n{self.explain()}"
            ) from None

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM and wait; returns the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def kill(self) -> None:
        """SIGKILL and reap: the node gets no chance to clean anything up."""
        if self.running:
            self.signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=STOP_TIMEOUT)

    # --- talking to it ------------------------------------------------------------

    def cli(self, *args: str | os.PathLike[str], timeout: float = CLI_TIMEOUT) -> CliResult:
        return run_cli("--data-dir", self.data_dir, *args, timeout=timeout)

    def cli_args(self, *args: str | os.PathLike[str]) -> list[str | os.PathLike[str]]:
        return ["--data-dir", self.data_dir, *args]

    def control(self, op: str, **args: Any) -> Any:
        """One request on the node's control socket (what the CLI sends)."""
        client = ControlClient(self.data_dir)
        return trio.run(functools.partial(client.call, op, **args))

    def describe(self, job_id: str) -> dict[str, Any]:
        return dict(self.control("describe", job_id=job_id))

    def peer_ids(self) -> set[str]:
        return {p["node_id"] for p in self.control("peers")}

    def explain(self) -> str:
        lines = [f"--- {self.name} ({self.data_dir}) starts={self.starts}"]
        if self.proc is not None:
            lines.append(f"returncode: {self.proc.poll()}")
        for n in range(1, self.starts + 1):
            path = self.log_dir / f"{self.name}.{n}.stderr"
            with contextlib.suppress(OSError):
                text = path.read_text(errors="replace")
                lines.append(f"stderr of start {n}:\n{text[-TAIL:]}")
        return "\n".join(lines)


class Cluster:
    """The ``serve`` processes of one test, cleaned up by ``close``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.nodes: dict[str, ServeNode] = {}

    def add(
        self,
        name: str,
        *,
        executors: str = "process",
        bootstrap: Sequence[str] = (),
        lease_ttl: float = 2.0,
        listen: str = "/ip4/127.0.0.1/tcp/0",
        extra: Sequence[str] = (),
    ) -> ServeNode:
        """Start node ``name`` (not waiting for it: start several, then wait)."""
        args = ["--listen", listen, "--lease-ttl", str(lease_ttl), *extra]
        if executors:
            args += ["--executors", executors]
        for addr in bootstrap:
            args += ["--bootstrap", addr]
        node = ServeNode(name, self.root / name, self.log_dir, args)
        self.nodes[name] = node
        node.start()
        return node

    def explain(self) -> str:
        return "\n".join(node.explain() for node in self.nodes.values())

    def wait_until(
        self, predicate: Callable[[], T | None], *, timeout: float, what: str, interval: float = 0.2
    ) -> T:
        return wait_until(
            predicate, timeout=timeout, what=what, explain=self.explain, interval=interval
        )

    def wait_connected(self, nodes: Sequence[ServeNode], timeout: float = 30.0) -> None:
        """Until every node's view lists every other node (peer exchange done)."""
        everyone = {n.node_id for n in nodes}

        def joined() -> bool:
            try:
                return all(everyone <= n.peer_ids() for n in nodes)
            except ControlError:  # control socket not up yet
                return False

        self.wait_until(joined, timeout=timeout, what="every node to know every other")

    def wait_job(
        self,
        node: ServeNode,
        job_id: str,
        predicate: Callable[[dict[str, Any]], object],
        *,
        timeout: float,
        what: str,
    ) -> dict[str, Any]:
        """Poll ``describe`` on the owner until ``predicate(view)``; returns the view."""

        def check() -> dict[str, Any] | None:
            try:
                view = node.describe(job_id)
            except ControlError:  # node (re)starting: socket not there yet
                return None
            return view if predicate(view) else None

        return self.wait_until(check, timeout=timeout, what=f"job {job_id}: {what}")

    def close(self) -> None:
        for node in self.nodes.values():
            with contextlib.suppress(Exception):
                node.kill()
        # Executions a SIGKILLed node left running: their groups outlive it
        # (own session) until the node restarts and reaps them; do it here.
        for node in self.nodes.values():
            for pgid in execution_pidfiles(node.data_dir).values():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pgid, signal.SIGKILL)


@contextlib.contextmanager
def cluster(root: Path) -> Iterator[Cluster]:
    c = Cluster(root)
    try:
        yield c
    except BaseException:
        # pytest shows captured output of failing tests: the nodes' stderr is
        # usually what explains a real-network failure.
        print(c.explain())
        raise
    finally:
        c.close()


def executions(view: dict[str, Any]) -> list[dict[str, Any]]:
    """Every execution of a job view, with its slot, oldest first per slot."""
    return [{"slot": s["slot"], **e} for s in view["slots"] for e in s["executions"]]


def running_execution(view: dict[str, Any]) -> dict[str, Any] | None:
    """The first execution the owner has seen start (``running``), if any."""
    return next((e for e in executions(view) if e["state"] == "running"), None)


TERMINAL = frozenset({"completed", "failed", "stopped"})


def is_terminal(view: dict[str, Any]) -> bool:
    return view["state"] in TERMINAL


__all__ = [
    "TERMINAL",
    "CliResult",
    "Cluster",
    "ServeNode",
    "cluster",
    "execution_pidfiles",
    "executions",
    "group_alive",
    "is_terminal",
    "pids_with_env",
    "run_cli",
    "run_cli_parallel",
    "running_execution",
    "wait_until",
]
