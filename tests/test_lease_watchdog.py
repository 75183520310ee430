"""The lease watchdog (``p2pnode/watchdog_helper.py``, ``p2pnode/watchdog.py``):
the deadlines it keeps, and the real helper process ending real process
groups.  ``tests/test_real_pauses.py`` runs it inside paused ``serve`` nodes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2pnode.procfs import group_members, pid_state
from p2pnode.watchdog import FEED_EVERY, IDLE_CHECK, LeaseWatchdog, helper_argv, report
from p2pnode.watchdog_docker import LABEL_EXECUTION, LABEL_NODE, socket_path
from p2pnode.watchdog_helper import Deadlines, Docker, end_lapsed


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_deadline_is_the_lease_left_plus_the_margin() -> None:
    clock = _Clock()
    deadlines = Deadlines(margin=0.5, clock=clock)
    deadlines.feed(b"job/0/1 1.000\n")
    assert deadlines.wait() == pytest.approx(1.5)
    clock.now += 1.4
    assert deadlines.take_due() == []
    clock.now += 0.2
    assert deadlines.take_due() == ["job/0/1"]
    assert deadlines.wait() is None  # taken once


def test_a_newer_line_moves_the_deadline_and_a_dash_forgets() -> None:
    clock = _Clock()
    deadlines = Deadlines(margin=0.0, clock=clock)
    deadlines.feed(b"a 1\nb 1\n")
    clock.now += 0.9
    deadlines.feed(b"a 1\nb -\n")  # a renewed, b ended
    clock.now += 0.5
    assert deadlines.take_due() == []
    clock.now += 0.5
    assert deadlines.take_due() == ["a"]


def test_lines_split_across_reads_and_malformed_lines() -> None:
    deadlines = Deadlines(margin=0.0, clock=_Clock())
    deadlines.feed(b"a 2")
    assert deadlines.due_at == {}
    deadlines.feed(b".5\nnonsense\nb x\nc 1 2\n\n")
    assert list(deadlines.due_at) == ["a"]


def test_the_node_reports_running_leases_and_what_ended() -> None:
    reported: set[str] = set()
    assert report({"a": 2.0, "b": 0.25}, reported) == [b"a 2.000\n", b"b 0.250\n"]
    assert report({"b": 1.0}, reported) == [b"b 1.000\n", b"a -\n"]
    assert report({}, reported) == [b"b -\n"]
    assert report({}, reported) == []


# --- the real helper ------------------------------------------------------------------


@contextlib.contextmanager
def _groups(work_dir: Path, executions: dict[str, bool]) -> Iterator[dict[str, int]]:
    """A ``sleep`` in a process group of its own per execution id, with a
    pidfile as the process executor writes it; ``executions[id]`` False: the
    group lacks the execution's variable (a recycled group id)."""
    groups = {}
    procs = []
    try:
        for execution_id, marked in executions.items():
            env = dict(os.environ)
            if marked:
                env["P2PNODE_EXECUTION_ID"] = execution_id
            proc = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
            procs.append(proc)
            groups[execution_id] = proc.pid
            pidfile = work_dir / f"{execution_id}.pid"
            pidfile.write_text(json.dumps({"pgid": proc.pid, "execution_id": execution_id}))
        yield groups
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _ignores(pid: int, signum: int) -> bool:
    """Whether process ``pid`` ignores ``signum`` (its SigIgn mask in /proc)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigIgn:"):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def _alive(pgid: int) -> bool:
    return any(pid_state(pid) not in ("Z", "X", None) for pid in group_members(pgid))


def _wait(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_the_helper_ends_only_the_groups_whose_leases_ran_out(tmp_path: Path) -> None:
    with _groups(tmp_path, {"lapsed": True, "renewed": True, "recycled": False}) as groups:
        helper = subprocess.Popen(
            helper_argv(tmp_path, margin=0.2), stdin=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert helper.stdin is not None and helper.stderr is not None
        try:
            helper.stdin.write(b"lapsed 0.1\nrenewed 0.5\nrecycled 0.1\n")
            helper.stdin.flush()
            assert _wait(lambda: not _alive(groups["lapsed"]), timeout=5)
            for _ in range(10):  # 2 s of renewals
                helper.stdin.write(b"renewed 0.5\n")
                helper.stdin.flush()
                time.sleep(0.2)
            assert _alive(groups["renewed"]), "a renewed lease's task was ended"
            assert _alive(groups["recycled"]), "a group without the execution was signalled"
            helper.stdin.write(b"renewed -\n")  # it ended: forgotten
            helper.stdin.flush()
            helper.stdin.close()  # the node exits
            assert helper.wait(timeout=5) == 0
            assert _alive(groups["renewed"])
        finally:
            if helper.poll() is None:
                helper.kill()
                helper.wait()
        said = helper.stderr.read().decode()
    assert "ended the task of lapsed" in said and "renewed" not in said, said


def test_the_helper_ignores_interrupts_and_runs_without_site_packages(tmp_path: Path) -> None:
    argv = helper_argv(tmp_path, margin=0.2)
    assert argv[1:4] == ["-S", "-E", "-s"]
    helper = subprocess.Popen(argv, stdin=subprocess.PIPE)
    try:
        assert _wait(lambda: _ignores(helper.pid, signal.SIGINT), timeout=30)  # started
        helper.send_signal(signal.SIGINT)  # a Ctrl-C meant for the node
        time.sleep(0.2)
        assert helper.poll() is None
    finally:
        assert helper.stdin is not None
        helper.stdin.close()
        assert helper.wait(timeout=5) == 0


# --- Docker tasks -----------------------------------------------------------------


def _container(client: Any, image: str, execution_id: str, node: str) -> Any:
    return client.containers.run(
        image,
        ["sleep", "60"],
        labels={LABEL_EXECUTION: execution_id, LABEL_NODE: node},
        detach=True,
        network_mode="none",
    )


@pytest.mark.docker
def test_the_helper_kills_only_the_lapsed_executions_container(
    tmp_path: Path, docker_client: Any, busybox_image: str
) -> None:
    engine = socket_path(os.environ.get("DOCKER_HOST"))
    assert engine is not None
    containers = {
        "lapsed": _container(docker_client, busybox_image, "job/0/1", "node-a"),
        "renewed": _container(docker_client, busybox_image, "job/1/1", "node-a"),
        # The same execution id on another node's engine labels: not ours.
        "other node": _container(docker_client, busybox_image, "job/0/1", "node-b"),
    }
    helper = subprocess.Popen(
        helper_argv(tmp_path, margin=0.2, docker=(engine, "node-a")),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert helper.stdin is not None and helper.stderr is not None

    def running(name: str) -> bool:
        containers[name].reload()
        return bool(containers[name].status == "running")

    try:
        helper.stdin.write(b"job/0/1 0.1\njob/1/1 0.5\n")
        helper.stdin.flush()
        assert _wait(lambda: not running("lapsed"), timeout=15)
        for _ in range(10):  # 2 s of renewals
            helper.stdin.write(b"job/1/1 0.5\n")
            helper.stdin.flush()
            time.sleep(0.2)
        assert running("renewed"), "a renewed lease's container was killed"
        assert running("other node"), "another node's container was killed"
        helper.stdin.close()
        assert helper.wait(timeout=5) == 0
    finally:
        if helper.poll() is None:
            helper.kill()
            helper.wait()
        for container in containers.values():
            container.remove(force=True)
    said = helper.stderr.read().decode()
    assert said.count("ended the task of job/0/1") == 1 and "job/1/1" not in said, said


# What an engine may answer that the helper cannot use: nothing (no socket),
# an error status, a body that is not JSON, JSON without container ids, a
# response that is not HTTP.
def _http(status: str, body: bytes) -> bytes:
    return f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


BAD_ENGINES = {
    "no engine": None,
    "error status": _http("500 Internal Server Error", b""),
    "not json": _http("200 OK", b"nope!"),
    "no ids": _http("200 OK", b'[{"NoId": 1}]'),
    "not a list": _http("200 OK", b"7"),
    "not http": b"garbage\r\n\r\n",
}


@contextlib.contextmanager
def _engine_answering(path: Path, answer: bytes | None) -> Iterator[None]:
    """A unix socket at ``path`` that answers every request with ``answer``."""
    if answer is None:
        yield
        return
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen()

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.recv(65536)
                    conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(timeout=5)


@pytest.mark.parametrize("engine", sorted(BAD_ENGINES))
def test_an_engine_that_cannot_be_asked_is_reported_and_the_helper_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], engine: str
) -> None:
    sock = tmp_path / "engine.sock"
    with (
        _engine_answering(sock, BAD_ENGINES[engine]),
        _groups(tmp_path, {"lapsed": True}) as groups,
    ):
        ended = end_lapsed(tmp_path, "lapsed", Docker(str(sock), "node-a"))
        assert ended and not _alive(groups["lapsed"])  # the process group still goes
    said = capsys.readouterr().err
    assert "cannot ask Docker about lapsed" in said and "ended the task of lapsed" in said


def test_the_docker_engine_is_found_from_docker_host() -> None:
    assert socket_path(None) == "/var/run/docker.sock"
    assert socket_path("") == "/var/run/docker.sock"
    assert socket_path("unix:///run/user/1000/docker.sock") == "/run/user/1000/docker.sock"
    assert socket_path("tcp://10.0.0.1:2376") is None  # not reachable by the helper


def test_an_idle_node_does_not_wake_for_its_watchdog(tmp_path: Path) -> None:
    """While no task runs, the node reports nothing and does not wake (an
    idle node's CPU is a budget); a spawn starts the reports at once, and
    they stop again once nothing runs."""
    calls: list[float] = []
    leases: dict[str, float] = {}

    def leases_left() -> dict[str, float]:
        calls.append(trio.current_time())
        return dict(leases)

    async def main() -> tuple[int, int, int]:
        watchdog = LeaseWatchdog(leases_left, tmp_path, margin=600.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watchdog.run)
            while not watchdog.helper_running:  # (spawned in a thread: real time)
                await trio.sleep(0.01)
            await trio.sleep(IDLE_CHECK - 5)
            idle = len(calls)
            leases["job/0/1"] = 300.0
            watchdog.before_spawn()
            await trio.sleep(10)
            busy = len(calls) - idle
            leases.clear()
            await trio.sleep(2 * FEED_EVERY)  # (the spawn is older than LINGER)
            mark = len(calls)
            await trio.sleep(IDLE_CHECK - 5)
            nursery.cancel_scope.cancel()
        return idle, busy, len(calls) - mark

    idle, busy, after = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert idle == 1  # the helper's first report, then nothing
    assert busy >= 10  # the spawn's own report, then every FEED_EVERY
    assert after == 0
