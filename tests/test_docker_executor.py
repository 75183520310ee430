"""DockerExecutor against a real Docker engine and a locally built busybox image.

Skipped without an engine, failed under CI=true (see conftest.py).
"""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest
import trio

from p2pnode.blobs import BlobStore
from p2pnode.executors import ExecutorError, Workdir
from p2pnode.executors.docker import (
    LABEL_EXECUTION,
    LABEL_NODE,
    DockerExecutor,
    DockerUnavailable,
    ImageMissing,
)
from protocols.events import StartExecution

pytestmark = pytest.mark.docker

MIB = 1024 * 1024


def _task(image: str, command: list[str] | None, **extra: Any) -> dict[str, Any]:
    engine = {"type": "docker", "image": image, "command": command, "workdir": None}
    return {"engine": engine, **extra}


def _start(task: dict[str, Any], eid: str | None = None) -> StartExecution:
    eid = eid or f"exec-{uuid.uuid4().hex[:8]}"
    return StartExecution(eid, "job-1", 2, task, dict(task.get("env", {})), 30.0)


@pytest.fixture
def node_id() -> str:
    return f"test-node-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def executor(
    tmp_path: Path, docker_client: Any, busybox_image: str, node_id: str
) -> Iterator[DockerExecutor]:
    executor = DockerExecutor(tmp_path / "data", BlobStore(tmp_path / "data"), node_id=node_id)
    yield executor
    executor.close()
    # Never leave containers behind, even when a test fails.
    for container in docker_client.containers.list(
        all=True, filters={"label": f"{LABEL_NODE}={node_id}"}
    ):
        container.remove(force=True)


def _ours(client: Any, node_id: str) -> list[Any]:
    return list(client.containers.list(all=True, filters={"label": f"{LABEL_NODE}={node_id}"}))


async def _running_container(client: Any, execution_id: str) -> Any:
    with trio.fail_after(20):
        while True:
            found = await trio.to_thread.run_sync(
                lambda: client.containers.list(
                    filters={"label": f"{LABEL_EXECUTION}={execution_id}", "status": "running"}
                )
            )
            if found:
                return found[0]
            await trio.sleep(0.05)


async def test_echo_to_outputs_gives_a_manifest(
    executor: DockerExecutor, busybox_image: str, docker_client: Any, node_id: str,
    tmp_path: Path,
) -> None:
    script = (
        'echo hello > "$P2PNODE_OUTPUTS/greeting.txt"; mkdir /outputs/sub; '
        'echo "$P2PNODE_SLOT $P2PNODE_EXECUTION_ID $P2PNODE_JOB_ID $P2PNODE_INPUTS $GREETING" '
        "> /outputs/sub/env.txt; echo on-stdout; echo on-stderr >&2"
    )
    start = _start(_task(busybox_image, ["sh", "-c", script], env={"GREETING": "hi"}), "e-1")
    result = await executor.run(start)
    assert result.status == "succeeded", result
    assert result.exit_code == 0
    assert result.stdout_tail == "on-stdout\n"
    assert result.stderr_tail == "on-stderr\n"
    dest = tmp_path / "dest"
    assert executor.blobs.materialize(result.manifest_id, dest) == ["greeting.txt", "sub/env.txt"]
    assert (dest / "greeting.txt").read_text() == "hello\n"
    assert (dest / "sub" / "env.txt").read_text() == "2 e-1 job-1 /inputs hi\n"
    assert _ours(docker_client, node_id) == []  # removed
    assert list((executor.data_dir / "work").iterdir()) == []


async def test_image_default_command_and_workdir(
    executor: DockerExecutor, busybox_image: str
) -> None:
    task = _task(busybox_image, ["pwd"])
    task["engine"]["workdir"] = "/tmp"
    assert (await executor.run(_start(task))).stdout_tail == "/tmp\n"
    # command None: the image's CMD ("sh", with stdin closed: exits 0 at once).
    assert (await executor.run(_start(_task(busybox_image, None)))).status == "succeeded"
    # user=None: the image's own user, and it can still write its outputs.
    executor.user = None
    task = _task(busybox_image, ["sh", "-c", "id -un; echo x > /outputs/f"])
    result = await executor.run(_start(task))
    assert result.status == "succeeded" and result.stdout_tail == "root\n"


async def test_nonzero_exit_fails_with_stderr(executor: DockerExecutor, busybox_image: str) -> None:
    result = await executor.run(_start(_task(busybox_image, ["sh", "-c", "echo bad >&2; exit 7"])))
    assert result.status == "failed"
    assert result.exit_code == 7
    assert result.error == "exited with code 7"
    assert result.stderr_tail == "bad\n"


async def test_no_network_by_default(executor: DockerExecutor, busybox_image: str) -> None:
    # Probe the host's side of the default bridge (or 172.17.0.1 with no route).
    probe = (
        "ls /sys/class/net; "
        "gw=$(ip route | awk '/default/ {print $3}'); "
        'nc -w 2 "${gw:-172.17.0.1}" 9 </dev/null 2>&1; ping -c 1 -W 1 "${gw:-172.17.0.1}" 2>&1'
    )
    result = await executor.run(_start(_task(busybox_image, ["sh", "-c", probe])))
    lines = result.stdout_tail.splitlines()
    assert lines[0] == "lo", result.stdout_tail  # the only interface
    assert "nc: can't connect to remote host (172.17.0.1): Network is unreachable" in lines
    assert "ping: sendto: Network is unreachable" in lines
    # Control: the same probe reaches the host on a bridged network (connection
    # refused by the host, ping answered), so the assertions above mean something.
    executor.network_mode = "bridge"
    bridged = await executor.run(_start(_task(busybox_image, ["sh", "-c", probe])))
    assert "eth0" in bridged.stdout_tail.split()
    assert "Connection refused" in bridged.stdout_tail
    assert "1 packets received" in bridged.stdout_tail


async def test_network_host_only_when_the_task_asks(
    executor: DockerExecutor, busybox_image: str
) -> None:
    probe = ["sh", "-c", "ls /sys/class/net"]
    boxed = await executor.run(_start(_task(busybox_image, probe)))
    assert boxed.stdout_tail.split() == ["lo"]
    host = await executor.run(_start(_task(busybox_image, probe, network="host")))
    assert len(host.stdout_tail.split()) > 1, host.stdout_tail  # the host's interfaces


async def test_the_container_never_sees_the_data_dir(
    executor: DockerExecutor, busybox_image: str
) -> None:
    secret = executor.data_dir / "node.key"
    secret.write_text("not for tasks")
    probe = "find / -path /proc -prune -o -path /sys -prune -o -name node.key -print; echo end"
    result = await executor.run(_start(_task(busybox_image, ["sh", "-c", probe])))
    assert result.stdout_tail == "end\n", result


async def test_limits_labels_mounts_and_cancel_removes_the_container(
    executor: DockerExecutor, busybox_image: str, docker_client: Any, node_id: str
) -> None:
    task = _task(busybox_image, ["sleep", "1000"], resources={"cpu": 0.5, "memory": 64 * MIB})
    start = _start(task)
    with trio.move_on_after(30) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.run, start)
            container = await _running_container(docker_client, start.execution_id)
            host = container.attrs["HostConfig"]
            assert host["Memory"] == 64 * MIB
            assert host["MemorySwap"] == 64 * MIB
            assert host["NanoCpus"] == 500_000_000
            assert host["NetworkMode"] == "none"
            assert host["Init"] is True
            assert host["PidsLimit"] == 1024
            assert "no-new-privileges" in host["SecurityOpt"]
            binds = {b.split(":")[1]: b for b in host["Binds"]}
            assert set(binds) == {"/inputs", "/outputs"}  # nothing else of the host
            assert binds["/inputs"].endswith(":ro") and binds["/outputs"].endswith(":rw")
            labels = container.labels
            assert labels[LABEL_EXECUTION] == start.execution_id
            assert labels[LABEL_NODE] == node_id
            t0 = time.monotonic()
            scope.cancel()  # the runtime stops the execution
    assert scope.cancelled_caught
    assert time.monotonic() - t0 < 10
    assert _ours(docker_client, node_id) == []
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(container.id)


async def test_timeout_kills_and_removes_the_container(
    executor: DockerExecutor, busybox_image: str, docker_client: Any, node_id: str
) -> None:
    t0 = time.monotonic()
    # A shell that ignores SIGTERM: the kill must not depend on the task.
    script = "trap '' TERM; while :; do sleep 1; done"
    with trio.move_on_after(2) as deadline:  # the runtime's hard timeout
        await executor.run(_start(_task(busybox_image, ["sh", "-c", script])))
    assert deadline.cancelled_caught
    assert time.monotonic() - t0 < 8
    assert _ours(docker_client, node_id) == []


async def test_memory_limit_oom(executor: DockerExecutor, busybox_image: str) -> None:
    # The shell keeps the whole 100 MB substitution in memory: over 16 MiB.
    script = 'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo "${#x}"'
    task = _task(busybox_image, ["sh", "-c", script], resources={"cpu": 1.0, "memory": 16 * MIB})
    result = await executor.run(_start(task))
    assert result.status == "failed"
    assert result.exit_code == 137
    assert result.error == f"killed: out of memory (limit {16 * MIB} bytes)"
    assert result.stdout_tail == ""
    # Within its limit the same kind of work succeeds.
    script = 'x=$(head -c 1000000 /dev/zero | tr "\\0" a); echo "${#x}"'
    task["engine"]["command"] = ["sh", "-c", script]
    assert (await executor.run(_start(task))).stdout_tail == "1000000\n"


async def test_inputs_are_read_only(executor: DockerExecutor, busybox_image: str) -> None:
    script = "touch /inputs/x && echo wrote || echo refused"
    result = await executor.run(_start(_task(busybox_image, ["sh", "-c", script])))
    assert result.stdout_tail == "refused\n"


async def test_escaping_symlink_in_outputs_refused(
    executor: DockerExecutor, busybox_image: str
) -> None:
    script = "ln -s /etc/passwd /outputs/passwd; ln -s ../../../.. /outputs/root"
    result = await executor.run(_start(_task(busybox_image, ["sh", "-c", script])))
    assert result.status == "failed"
    assert "escapes the output directory" in result.error
    assert result.manifest_id == ""


async def test_missing_image_fails_fast_without_pulling(tmp_path: Path, docker_client: Any) -> None:
    pulls: list[Any] = []

    def factory(**kwargs: Any) -> Any:
        client = docker.from_env(**kwargs)

        def no_pull(*args: Any, **kw: Any) -> None:
            pulls.append(args)
            raise AssertionError("p2pnode must never pull")

        client.api.pull = no_pull
        return client

    executor = DockerExecutor(tmp_path, BlobStore(tmp_path), client_factory=factory)
    t0 = time.monotonic()
    with pytest.raises(ImageMissing) as info:
        await executor.run(_start(_task("p2pnode-no-such-image:1.0", ["true"])))
    assert time.monotonic() - t0 < 3
    assert str(info.value) == (
        "image 'p2pnode-no-such-image:1.0' is not present locally; p2pnode never pulls"
    )
    assert pulls == []
    assert list((tmp_path / "work").iterdir()) == []
    executor.close()


async def test_unreachable_engine_is_a_clear_error_quickly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/dead.sock")
    executor = DockerExecutor(tmp_path, BlobStore(tmp_path))
    t0 = time.monotonic()
    with pytest.raises(DockerUnavailable, match=r"^Docker engine unreachable: "):
        await executor.run(_start(_task("p2pnode-busybox:latest", ["true"])))
    assert time.monotonic() - t0 < 3
    with pytest.raises(DockerUnavailable):
        await executor.reap_stale("any")


async def test_wedged_engine_is_bounded_by_the_api_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A socket that accepts connections and never answers.
    path = f"/tmp/p2pnode-wedged-{uuid.uuid4().hex[:8]}.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)
    try:
        monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
        executor = DockerExecutor(tmp_path, BlobStore(tmp_path), api_timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(DockerUnavailable, match=r"^Docker engine unreachable: "):
            await executor.run(_start(_task("p2pnode-busybox:latest", ["true"])))
        assert time.monotonic() - t0 < 4
    finally:
        listener.close()
        Path(path).unlink()


async def test_wrong_engine_is_an_error(tmp_path: Path) -> None:
    executor = DockerExecutor(tmp_path, BlobStore(tmp_path))
    with pytest.raises(ExecutorError, match="cannot run a 'process' task"):
        await executor.run(_start({"engine": {"type": "process", "command": ["true"]}}))


async def test_reap_stale_removes_only_this_nodes_containers(
    executor: DockerExecutor, busybox_image: str, docker_client: Any, node_id: str
) -> None:
    def leftover(node: str, eid: str) -> Any:
        return docker_client.containers.run(
            busybox_image, ["sleep", "1000"], detach=True, init=True, network_mode="none",
            labels={LABEL_NODE: node, LABEL_EXECUTION: eid},
        )

    stale = [leftover(node_id, "old-1"), leftover(node_id, "old-2")]
    stale[1].kill()  # a stopped one too
    other = leftover(f"{node_id}-other", "theirs")
    workdir = Workdir.create(executor.data_dir, "old-1").root  # its workdir, left behind too
    try:
        reaped = await executor.reap_stale()
        assert sorted(reaped) == ["old-1", "old-2"]
        assert _ours(docker_client, node_id) == []
        other.reload()
        assert other.status == "running"
        assert not workdir.exists()
    finally:
        other.remove(force=True)


class _Reports:
    def __init__(self) -> None:
        self.checkpoints: list[str] = []
        self.lags: list[int] = []

    def report(self, checkpoint: str = "", lag: int = -1) -> None:
        if checkpoint:
            self.checkpoints.append(checkpoint)
        if lag >= 0:
            self.lags.append(lag)


async def test_progress_lines_and_the_last_words_after_sigterm(
    executor: DockerExecutor, busybox_image: str, docker_client: Any, node_id: str
) -> None:
    """A stream consumer in a container: its checkpoint lines are read while it
    runs, and a stop is SIGTERM first, so the checkpoint its trap prints is
    delivered before the execution ends (the stream executor contract)."""
    from p2pnode.executor import install_progress

    sink = _Reports()
    install_progress(sink)
    script = (
        "trap 'echo P2PNODE_CHECKPOINT 9-final; exit 0' TERM; "
        "echo P2PNODE_CHECKPOINT 9-1; echo P2PNODE_LAG 3; while :; do sleep 0.1; done"
    )
    with trio.move_on_after(30) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.run, _start(_task(busybox_image, ["sh", "-c", script])))
            while not sink.checkpoints:
                await trio.sleep(0.05)
            t0 = time.monotonic()
            nursery.cancel_scope.cancel()  # the runtime's StopExecution (run_for)
    assert not scope.cancelled_caught
    assert time.monotonic() - t0 < 10
    assert sink.checkpoints == ["9-1", "9-final"] and sink.lags == [3]
    assert _ours(docker_client, node_id) == []


async def test_live_output_of_both_streams_reaches_the_capture(
    executor: DockerExecutor, busybox_image: str, tmp_path: Path
) -> None:
    """Live logs: what the container writes reaches the execution's output
    capture while it runs (stdout and stderr apart), and all of it."""
    from p2pnode.logcapture import OutputCapture, install_output

    capture = OutputCapture("exec-live", tmp_path / "live")
    install_output(capture)
    script = "echo out-1; echo err-1 >&2; seq 1 2000; echo out-end"
    result = await executor.run(_start(_task(busybox_image, ["sh", "-c", script])))
    assert result.status == "succeeded", result
    capture.finish()
    expected = "out-1\n" + "".join(f"{i}\n" for i in range(1, 2001)) + "out-end\n"
    assert (tmp_path / "live" / "stdout").read_text() == expected
    assert (tmp_path / "live" / "stderr").read_text() == "err-1\n"
    events = capture.take()
    assert {e.stream for e in events} == {"stdout", "stderr"}
