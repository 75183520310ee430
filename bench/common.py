"""Helpers shared by the benchmarks and the demo: a loopback cluster of real
``python -m p2pnode serve`` processes, percentiles and a plain result table.

The cluster is driven from *outside* trio (``with LoopbackCluster(...)``) on
purpose: whatever happens inside the measurement (an exception, Ctrl-C, a
SIGTERM turned into ``SystemExit`` by :func:`exit_on_sigterm`), the ``with``
block's exit stops every node: SIGTERM first, so each node shuts down cleanly
and removes its control socket, then SIGKILL for any that does not stop in time.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import attrs

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: make the repo's packages importable
    sys.path.insert(0, str(REPO))

from p2pnode.control import ControlClient, ControlError  # noqa: E402

ADDRS_FILE = "addrs"  # written by `serve` once its control socket answers


class ClusterError(RuntimeError):
    """A node did not start, or the nodes did not find each other in time."""


def child_env() -> dict[str, str]:
    """The environment of child processes: the repo importable even when the
    project is not installed, and no buffering so their logs are complete."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def exit_on_sigterm() -> None:
    """Make SIGTERM unwind like Ctrl-C does, so ``finally``/``with`` cleanup runs
    (the default action kills the process and would orphan the nodes)."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


# --- processes ------------------------------------------------------------------


@attrs.define
class ServeNode:
    """One ``p2pnode serve`` child process and where to reach it."""

    index: int
    data_dir: Path
    labels: str
    executors: str
    proc: subprocess.Popen[bytes] | None = None
    addrs: list[str] = attrs.field(factory=list)

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def client(self) -> ControlClient:
        return ControlClient(self.data_dir)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def stop_process(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, wait up to ``grace`` seconds, then SIGKILL.  Only this pid."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=5)


class LoopbackCluster:
    """``n`` nodes on 127.0.0.1, each a separate ``python -m p2pnode serve``.

    Node 0 starts first; the others bootstrap from it and find each other by
    peer exchange.  ``__enter__`` returns once every node's view holds all the
    others (so measurements never include discovery), and ``__exit__`` stops
    every process whatever happened.  Logs go to ``<root>/nodeN.log``.
    """

    def __init__(
        self,
        n: int,
        *,
        executors: str = "process",
        labels: Sequence[str] | None = None,
        root: Path | None = None,
        extra_args: Sequence[str] = (),
        start_timeout: float = 60.0,
        quiet: bool = False,
    ) -> None:
        if labels is not None and len(labels) != n:
            raise ValueError("labels needs one entry per node")
        self._own_root = root is None
        # A short temp root: the control socket path must fit in sun_path (108 bytes).
        self.root = root or Path(tempfile.mkdtemp(prefix="p2pnode-cluster-"))
        self.extra_args = list(extra_args)
        self.start_timeout = start_timeout
        self.quiet = quiet
        self.nodes = [
            ServeNode(i, self.root / f"node{i}", (labels or [""] * n)[i], executors)
            for i in range(n)
        ]

    def __enter__(self) -> LoopbackCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _spawn(self, node: ServeNode, bootstrap: Sequence[str]) -> None:
        node.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        (node.data_dir / ADDRS_FILE).unlink(missing_ok=True)  # a stale one would lie
        cmd = [sys.executable, "-m", "p2pnode", "serve", "--data-dir", str(node.data_dir)]
        cmd += ["--executors", node.executors]
        if node.labels:
            cmd += ["--labels", node.labels]
        for addr in bootstrap:
            cmd += ["--bootstrap", addr]
        cmd += self.extra_args
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=str(REPO),
                # Own session: a Ctrl-C in the terminal reaches only us, and we
                # stop the nodes in order instead of racing their own handlers.
                start_new_session=True,
            )

    def _await_addrs(self, nodes: Sequence[ServeNode]) -> None:
        deadline = time.monotonic() + self.start_timeout
        for node in nodes:
            path = node.data_dir / ADDRS_FILE
            while not path.exists():
                assert node.proc is not None
                if node.proc.poll() is not None:
                    raise ClusterError(
                        f"node{node.index} exited with {node.proc.returncode}:\n{node.log_tail()}"
                    )
                if time.monotonic() > deadline:
                    raise ClusterError(f"node{node.index} did not start:\n{node.log_tail()}")
                time.sleep(0.05)
            node.addrs = [a for a in path.read_text().splitlines() if a]

    def start(self) -> None:
        first, *rest = self.nodes
        self._spawn(first, ())
        self._await_addrs([first])
        for node in rest:  # in parallel: Python start-up dominates
            self._spawn(node, first.addrs[:1])
        self._await_addrs(rest)
        self.wait_connected()

    def wait_connected(self) -> None:
        """Block until every node's view holds every other node."""
        import trio

        want = {n.index for n in self.nodes}
        deadline = time.monotonic() + self.start_timeout

        async def views() -> list[int]:
            sizes = []
            for node in self.nodes:
                try:
                    peers = await node.client.call("peers")
                except ControlError:
                    peers = []
                sizes.append(len(peers))
            return sizes

        while True:
            sizes = trio.run(views)
            if all(s >= len(want) for s in sizes):
                return
            for node in self.nodes:
                assert node.proc is not None
                if node.proc.poll() is not None:
                    raise ClusterError(f"node{node.index} died:\n{node.log_tail()}")
            if time.monotonic() > deadline:
                raise ClusterError(f"nodes did not discover each other (view sizes {sizes})")
            time.sleep(0.2)

    def stop(self) -> None:
        """Stop every node: all get SIGTERM at once, then each is waited for
        (SIGKILL after the grace period).  Safe to call twice."""
        live = [n.proc for n in self.nodes if n.proc is not None and n.proc.poll() is None]
        for proc in live:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in live:
            stop_process(proc)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)


# --- statistics and output --------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1): a value that was really measured,
    never an interpolation; NaN for no values.  (Use ``statistics.median`` for
    p50, as bench_gossip does, so the ratios compare like with like.)"""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(len(ordered), rank) - 1]


def fmt(value: float, unit: str = "", digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}{(' ' + unit) if unit else ''}"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain aligned table (first column left, the others right-aligned)."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    print(title)
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


if __name__ == "__main__":  # `make bench` runs every bench/*.py, this one included
    print("bench/common.py holds shared helpers; nothing to measure")
