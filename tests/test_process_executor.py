"""ProcessExecutor against real processes (no mocks): limits, groups, outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pnode.blobs import BlobStore
from p2pnode.executor import Cleanup, install_afterwards
from p2pnode.executors import ExecutorError, ProcessExecutor
from p2pnode.executors.common import TailBuffer, safe_name
from protocols.events import ExecutionFinished, StartExecution

MIB = 1024 * 1024
REPO = Path(__file__).resolve().parents[1]


def _task(command: list[str], **extra: Any) -> dict[str, Any]:
    return {"engine": {"type": "process", "command": command}, **extra}


def _start(task: dict[str, Any], eid: str = "exec-1", timeout: float = 30.0) -> StartExecution:
    env = dict(task.get("env", {}))
    return StartExecution(eid, "job-1", 3, task, env, timeout)


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "data")


@pytest.fixture
def executor(tmp_path: Path, blobs: BlobStore) -> ProcessExecutor:
    """The default: tasks run in the bwrap sandbox."""
    return ProcessExecutor(tmp_path / "data", blobs, max_output_bytes=64 * MIB, kill_grace=0.5)


@pytest.fixture
def plain_executor(tmp_path: Path, blobs: BlobStore) -> ProcessExecutor:
    """``--sandbox none``: plain processes, whose pids the host sees as they print them."""
    return ProcessExecutor(
        tmp_path / "data", blobs, max_output_bytes=64 * MIB, kill_grace=0.5, sandbox="none"
    )


def _alive(pid: int) -> bool:
    """Running (a zombie counts as dead: this machine's PID 1 may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False
    return stat[stat.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


async def _wait_for_file(path: Path, timeout: float = 10.0) -> str:
    with trio.fail_after(timeout):
        while True:
            if path.exists() and (text := path.read_text()).endswith("\n"):
                return text.strip()
            await trio.sleep(0.01)


def _workdir(executor: ProcessExecutor, eid: str) -> Path:
    return executor.data_dir / "work" / safe_name(eid)


async def test_success_outputs_round_trip(
    executor: ProcessExecutor, blobs: BlobStore, tmp_path: Path
) -> None:
    script = 'printf "result\\n" > "$P2PNODE_OUTPUTS/r.txt"; mkdir "$P2PNODE_OUTPUTS/d"; ' \
        'head -c 100000 /dev/urandom > "$P2PNODE_OUTPUTS/d/blob"; echo done'
    result = await executor.run(_start(_task(["sh", "-c", script])))
    assert result.status == "succeeded", result
    assert result.exit_code == 0 and result.error == ""
    assert result.stdout_tail == "done\n"
    assert result.duration_ms > 0
    dest = tmp_path / "dest"
    assert blobs.materialize(result.manifest_id, dest) == ["d/blob", "r.txt"]
    assert (dest / "r.txt").read_bytes() == b"result\n"
    assert len((dest / "d" / "blob").read_bytes()) == 100000
    assert not _workdir(executor, "exec-1").exists()  # cleaned up
    assert list((executor.data_dir / "work").iterdir()) == []  # pidfile too


async def test_argv_is_not_parsed_by_a_shell(executor: ProcessExecutor) -> None:
    result = await executor.run(_start(_task(["echo", "$HOME; echo pwned", "*"])))
    assert result.stdout_tail == "$HOME; echo pwned *\n"


async def test_nonzero_exit_fails_with_stderr_tail(executor: ProcessExecutor) -> None:
    script = 'echo "something broke" >&2; echo partial > "$P2PNODE_OUTPUTS/log"; exit 3'
    result = await executor.run(_start(_task(["sh", "-c", script])))
    assert result.status == "failed"
    assert result.exit_code == 3
    assert result.error == "exited with code 3"
    assert result.stderr_tail == "something broke\n"
    assert result.manifest_id  # partial outputs are kept for debugging
    assert not _workdir(executor, "exec-1").exists()


async def test_missing_command_fails(executor: ProcessExecutor) -> None:
    result = await executor.run(_start(_task(["/nonexistent/tool", "x"])))
    assert result.status == "failed"
    assert result.exit_code == 127
    assert "/nonexistent/tool" in result.stderr_tail


async def test_keep_failed_workdirs(tmp_path: Path, blobs: BlobStore) -> None:
    executor = ProcessExecutor(
        tmp_path / "data", blobs, max_output_bytes=MIB, keep_failed_workdirs=True
    )
    await executor.run(_start(_task(["false"]), eid="bad"))
    await executor.run(_start(_task(["true"]), eid="good"))
    assert _workdir(executor, "bad").is_dir()
    assert not _workdir(executor, "good").exists()


@pytest.mark.parametrize("sandbox", ["bwrap", "none"])
async def test_env_is_clean_and_complete(
    tmp_path: Path, blobs: BlobStore, sandbox: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    executor = ProcessExecutor(tmp_path / "data", blobs, max_output_bytes=MIB, sandbox=sandbox)
    monkeypatch.setenv("NODE_SECRET", "must not leak")
    task = _task(["env"], env={"GREETING": "hello"})
    start = _start(task, eid="env/1")
    # The lease env is not validated like the task's: ours must still win.
    start = StartExecution(start.execution_id, start.job_id, start.slot, start.task,
                           {**start.env, "LEASED": "yes", "P2PNODE_SLOT": "spoofed"},
                           start.timeout)
    result = await executor.run(start)
    env = dict(line.split("=", 1) for line in result.stdout_tail.splitlines())
    # Sandboxed, the task sees its workdir at /task; plain, at its host path.
    workdir = "/task" if sandbox == "bwrap" else str(_workdir(executor, "env/1"))
    assert "NODE_SECRET" not in env
    assert env["GREETING"] == "hello"
    assert env["LEASED"] == "yes"
    assert env["HOME"] == workdir
    assert env["PWD"] == workdir
    assert env["LANG"] == "C.UTF-8"
    assert env["PATH"].startswith("/usr/local/sbin:")
    assert env["P2PNODE_INPUTS"] == f"{workdir}/inputs"
    assert env["P2PNODE_OUTPUTS"] == f"{workdir}/outputs"
    assert env["P2PNODE_SLOT"] == "3"  # ours win
    assert env["P2PNODE_EXECUTION_ID"] == "env/1"
    assert env["P2PNODE_JOB_ID"] == "job-1"


async def test_cancel_kills_the_whole_process_group(plain_executor: ProcessExecutor) -> None:
    executor = plain_executor
    # leader -> child -> grandchild `sleep 1000`, each recording its pid.
    script = textwrap.dedent("""
        echo $$ > "$P2PNODE_OUTPUTS/leader"
        sh -c 'sleep 1000 & echo $! > "$P2PNODE_OUTPUTS/grandchild"; wait' &
        echo $! > "$P2PNODE_OUTPUTS/child"
        wait
    """)
    outputs = _workdir(executor, "exec-1") / "outputs"
    pids: dict[str, int] = {}
    t0 = time.monotonic()
    with trio.move_on_after(20) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.run, _start(_task(["sh", "-c", script]), timeout=2))
            for name in ("leader", "child", "grandchild"):
                pids[name] = int(await _wait_for_file(outputs / name))
            assert all(_alive(pid) for pid in pids.values())
            scope.cancel()  # what the runtime does on a timeout
    assert scope.cancelled_caught
    assert time.monotonic() - t0 < 10
    for name, pid in pids.items():
        assert not _alive(pid), f"{name} {pid} survived"
    assert not _workdir(executor, "exec-1").exists()
    assert list((executor.data_dir / "work").iterdir()) == []


async def test_cancel_sigkills_a_group_that_ignores_sigterm(
    plain_executor: ProcessExecutor,
) -> None:
    executor = plain_executor
    script = "trap '' TERM; echo $$ > \"$P2PNODE_OUTPUTS/leader\"; while :; do sleep 0.05; done"
    outputs = _workdir(executor, "exec-1") / "outputs"
    with trio.move_on_after(20) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.run, _start(_task(["sh", "-c", script])))
            leader = int(await _wait_for_file(outputs / "leader"))
            t0 = time.monotonic()
            scope.cancel()
    assert 0.4 < time.monotonic() - t0 < 5  # waited kill_grace, then SIGKILL
    assert not _alive(leader)


async def test_background_leftovers_are_killed_when_the_task_exits(
    plain_executor: ProcessExecutor,
) -> None:
    executor = plain_executor
    # The main process exits at once, leaving a sleeper holding stdout open.
    script = 'sleep 1000 & echo $! > "$P2PNODE_OUTPUTS/bg"; echo bye'
    t0 = time.monotonic()
    result = await executor.run(_start(_task(["sh", "-c", script])))
    assert time.monotonic() - t0 < 5
    assert result.status == "succeeded" and result.stdout_tail == "bye\n"
    # The outputs were stored before the workdir went: read the pid from them.
    dest = executor.data_dir / "check"
    executor.blobs.materialize(result.manifest_id, dest)
    assert not _alive(int((dest / "bg").read_text()))


async def test_huge_stdout_stays_bounded(tmp_path: Path, blobs: BlobStore) -> None:
    executor = ProcessExecutor(tmp_path / "data", blobs, max_output_bytes=MIB, tail_bytes=4096)
    # 170 MB of output on stdout (whole lines), a marker at the very end.
    script = "yes 0123456789abcdef | head -c 170000000; echo THE-END; echo e >&2"
    result = await executor.run(_start(_task(["sh", "-c", script])))
    assert result.status == "succeeded"
    assert result.stdout_tail.endswith("0123456789abcdef\nTHE-END\n")
    assert result.stdout_tail.startswith("[... ")
    body = result.stdout_tail.split("\n", 1)[1]
    assert len(body.encode()) <= 4096
    assert result.stderr_tail == "e\n"


def test_tail_buffer_bounds_memory() -> None:
    tail = TailBuffer(10)
    for _ in range(1000):
        tail.feed(b"abcdefg")
        assert len(tail._buf) <= 20
    assert tail.total == 7000
    assert tail.tail() == b"efgabcdefg"
    tail.feed(b"x" * 50)
    assert tail.tail() == b"x" * 10
    # A cut in the middle of a UTF-8 sequence is not shown as garbage.
    cut = TailBuffer(5)
    cut.feed("ééé".encode())
    assert cut.text().endswith("\néé")


async def test_memory_limit_kills_a_hog(executor: ProcessExecutor) -> None:
    hog = "b = bytearray(2 * 1024**3); print('allocated', len(b))"
    task = _task([sys.executable, "-c", hog], resources={"cpu": 1.0, "memory": 256 * MIB})
    result = await executor.run(_start(task))
    assert result.status == "failed"
    assert result.exit_code != 0
    assert "MemoryError" in result.stderr_tail
    assert "allocated" not in result.stdout_tail
    # The same program within its limit succeeds (the limit is what failed it).
    small = "b = bytearray(16 * 1024**2); print('allocated', len(b))"
    task = _task([sys.executable, "-c", small], resources={"cpu": 1.0, "memory": 256 * MIB})
    assert (await executor.run(_start(task))).status == "succeeded"


async def test_cpu_time_limit(tmp_path: Path, blobs: BlobStore) -> None:
    executor = ProcessExecutor(tmp_path / "data", blobs, max_output_bytes=MIB, min_cpu_seconds=1)
    # timeout 2 s x 0.5 cpu -> 1 s of CPU time, then SIGXCPU.
    task = _task(["sh", "-c", "ulimit -t; while :; do :; done"], resources={"cpu": 0.5,
                                                                           "memory": 256 * MIB})
    t0 = time.monotonic()
    result = await executor.run(_start(task, timeout=2))
    assert time.monotonic() - t0 < 10
    assert result.stdout_tail == "1\n"
    assert result.status == "failed"
    assert result.exit_code == 128 + signal.SIGXCPU
    assert "CPU time limit" in result.error


async def test_outputs_with_escaping_symlink_are_refused(executor: ProcessExecutor) -> None:
    script = 'ln -s /etc/passwd "$P2PNODE_OUTPUTS/passwd"; echo ok > "$P2PNODE_OUTPUTS/ok"'
    result = await executor.run(_start(_task(["sh", "-c", script])))
    assert result.status == "failed"
    assert result.exit_code == 0
    assert result.manifest_id == ""
    assert "outputs refused" in result.error and "escapes the output directory" in result.error


async def test_wrong_engine_is_an_error(executor: ProcessExecutor) -> None:
    task = {"engine": {"type": "docker", "image": "x", "command": None, "workdir": None}}
    with pytest.raises(ExecutorError, match="cannot run a 'docker' task"):
        await executor.run(_start(task))


_NODE_SCRIPT = """
import sys, trio
from p2pnode.blobs import BlobStore
from p2pnode.executors import ProcessExecutor
from protocols.events import StartExecution

data_dir = sys.argv[1]
script = 'echo $$ > "$P2PNODE_OUTPUTS/leader"; ' \\
    'sh -c "sleep 1000" & echo $! > "$P2PNODE_OUTPUTS/child"; wait'
task = {"engine": {"type": "process", "command": ["sh", "-c", script]}}
executor = ProcessExecutor(data_dir, BlobStore(data_dir), max_output_bytes=1 << 20,
                           sandbox="none")
trio.run(executor.run, StartExecution("crashy", "job", 0, task, {}, 600.0))
"""


async def test_reap_stale_kills_groups_left_by_a_crashed_node(
    tmp_path: Path, blobs: BlobStore
) -> None:
    data_dir = tmp_path / "data"
    node = subprocess.Popen(
        [sys.executable, "-c", _NODE_SCRIPT, str(data_dir)], cwd=REPO, start_new_session=False
    )
    decoy = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        outputs = data_dir / "work" / safe_name("crashy") / "outputs"
        leader = int(await _wait_for_file(outputs / "leader", timeout=30))
        child = int(await _wait_for_file(outputs / "child"))
        # The pidfile is written just after the spawn, so the task may get this
        # far first (a crash in between is the documented unrecorded case).
        pidfile = data_dir / "work" / f"{safe_name('crashy')}.pid"
        with trio.fail_after(10):
            while not pidfile.exists():
                await trio.sleep(0.01)
        node.kill()  # the node crashes: no cleanup runs
        node.wait()
        assert _alive(leader) and _alive(child)  # own session: they survive it
        # A pidfile naming a live group that is not ours must not kill it.
        (data_dir / "work" / "other.pid").write_text(
            f'{{"pgid": {decoy.pid}, "execution_id": "other"}}'
        )

        executor = ProcessExecutor(data_dir, blobs, max_output_bytes=MIB, sandbox="none")
        assert executor.reap_stale() == ["crashy"]
        with trio.fail_after(5):
            while _alive(leader) or _alive(child):
                await trio.sleep(0.01)
        assert decoy.poll() is None and _alive(decoy.pid)
        assert list((data_dir / "work").iterdir()) == []  # pidfiles and workdir gone
        assert executor.reap_stale() == []
    finally:
        node.kill()
        decoy.kill()
        decoy.wait()
        for name in ("leader", "child"):
            path = data_dir / "work" / safe_name("crashy") / "outputs" / name
            if path.exists():
                os.kill(int(path.read_text()), signal.SIGKILL)


async def test_result_types(executor: ProcessExecutor) -> None:
    result = await executor.run(_start(_task(["true"])))
    assert isinstance(result, ExecutionFinished)
    assert result.execution_id == "exec-1"


async def test_under_a_runtime_cleanup_comes_after_the_result(
    executor: ProcessExecutor,
) -> None:
    """With a runtime collecting (``install_afterwards``), the workdir, pidfile
    and cgroup are left to the deferred cleanup, which removes them all; the
    task's processes are already gone when the result is returned."""
    afterwards: list[Cleanup] = []
    install_afterwards(afterwards)
    try:
        script = 'echo $$ > "$P2PNODE_OUTPUTS/pid"; (sleep 600 &); echo ok'
        result = await executor.run(_start(_task(["sh", "-c", script])))
    finally:
        install_afterwards(None)
    assert result.status == "succeeded", result
    work = _workdir(executor, "exec-1")
    pidfile = executor.data_dir / "work" / f"{safe_name('exec-1')}.pid"
    assert len(afterwards) == 1 and work.is_dir() and pidfile.exists()
    # Nothing of the task outlives its result (the sandbox's pid namespace is gone).
    assert not any(
        b"P2PNODE_EXECUTION_ID=exec-1" in _environ(pid) for pid in _pids() if pid != os.getpid()
    )
    await afterwards[0]()
    assert not work.exists() and not pidfile.exists()
    if executor.cgroups is not None:
        for _controller, base in executor.cgroups.bases:
            assert [p for p in base.iterdir() if p.is_dir()] == []


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def _environ(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return b""


async def _empty_then_removed(executor: ProcessExecutor, blobs: BlobStore) -> list[str]:
    """Manifest ids of: an empty outputs dir, again, again after its blob was
    removed, and a task that leaves a file."""
    ids = []
    for n in range(3):
        result = await executor.run(_start(_task(["true"]), eid=f"empty-{n}"))
        assert result.status == "succeeded", result
        ids.append(result.manifest_id)
        if n == 1:
            blobs.path_of(result.manifest_id).unlink()  # e.g. a blob store cleaned by hand
    wrote = await executor.run(
        _start(_task(["sh", "-c", 'echo x > "$P2PNODE_OUTPUTS/f"']), eid="full")
    )
    return [*ids, wrote.manifest_id]


async def test_an_empty_outputs_dir_always_gets_a_stored_empty_manifest(
    tmp_path: Path, plain_executor: ProcessExecutor, blobs: BlobStore
) -> None:
    """The empty manifest is recognised without a worker thread once stored,
    but never handed out after its blob is gone; other outputs are unaffected."""
    first, again, after_removal, full = await _empty_then_removed(plain_executor, blobs)
    assert first == again == after_removal
    assert blobs.has(after_removal)
    assert blobs.materialize(after_removal, tmp_path / "empty") == []
    assert blobs.materialize(full, tmp_path / "full") == ["f"]


async def test_a_removed_empty_manifest_handed_out_is_seen(
    plain_executor: ProcessExecutor, blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planted bug for the test above: without the presence check the cached
    id of a removed manifest comes back, and ``has`` says so."""
    stale = {"id": ""}
    real_has = BlobStore.has

    def has_planted(self: BlobStore, digest: str) -> bool:
        return digest == stale["id"] or real_has(self, digest)

    monkeypatch.setattr(BlobStore, "has", has_planted)
    result = await plain_executor.run(_start(_task(["true"]), eid="e-0"))
    stale["id"] = result.manifest_id
    blobs.path_of(result.manifest_id).unlink()
    again = await plain_executor.run(_start(_task(["true"]), eid="e-1"))
    assert again.manifest_id == stale["id"]
    assert not real_has(blobs, again.manifest_id)
