"""P2PNODE_TRACE: off by default, one timeline line per step when set."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# A trivial task through the process executor (no sandbox: any host), as serve runs it.
RUN_ONE = """
import tempfile, trio
from p2pnode import tracing
from p2pnode.blobs import BlobStore
from p2pnode.executors.process import ProcessExecutor
from protocols.events import StartExecution

async def main():
    with tempfile.TemporaryDirectory() as root:
        executor = ProcessExecutor(root, BlobStore(root), max_output_bytes=1 << 20, sandbox="none")
        task = {"engine": {"type": "process", "command": ["true"]}, "timeout": 30_000}
        result = await executor.run(StartExecution("e/0/1", "e", 0, task, {}, 30))
        assert result.status == "succeeded", result
    print(tracing.ON)

trio.run(main)
"""


def _run(env_extra: dict[str, str], cwd: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k != "P2PNODE_TRACE"}
    env["PYTHONPATH"] = str(REPO)
    env.update(env_extra)
    done = subprocess.run(
        [sys.executable, "-c", RUN_ONE], env=env, cwd=cwd, capture_output=True, text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_unset_nothing_is_written(tmp_path: Path) -> None:
    assert _run({}, tmp_path) == "False"
    assert list(tmp_path.iterdir()) == []


def test_set_each_step_is_a_line_on_the_shared_clock(tmp_path: Path) -> None:
    prefix = tmp_path / "trace"
    assert _run({"P2PNODE_TRACE": str(prefix)}, tmp_path) == "True"
    (path,) = tmp_path.glob("trace.*")
    pid = int(path.name.split(".")[1])
    lines = [line.split(" ", 3) for line in path.read_text().splitlines()]
    events = [fields[2] for fields in lines]
    # The executor's steps, in the order they happen.
    steps = ["x-prep<", "x-prep>", "x-spawn<", "x-spawned", "x-waited", "x-exit", "x-outputs"]
    assert [e for e in events if e in steps] == steps, events
    assert {int(fields[1]) for fields in lines} == {pid}
    stamps = [int(fields[0]) for fields in lines]
    assert stamps == sorted(stamps)
    assert abs(stamps[-1] - time.monotonic_ns()) < 600 * 10**9  # CLOCK_MONOTONIC, not wall

