"""The lease watchdog (``p2pnode/watchdog_helper.py``, ``p2pnode/watchdog.py``):
the deadlines it keeps, and the real helper process ending real process
groups.  ``tests/test_real_pauses.py`` runs it inside paused ``serve`` nodes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import trustme

from p2pnode.procfs import group_members, pid_state
from p2pnode.watchdog import FEED_EVERY, IDLE_CHECK, LeaseWatchdog, helper_argv, report
from p2pnode.watchdog_docker import LABEL_EXECUTION, LABEL_NODE, Engine, engine_from_env
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


def _pump(source: socket.socket, sink: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


@contextlib.contextmanager
def _engine_over_tcp(engine_socket: str, tls: ssl.SSLContext | None) -> Iterator[int]:
    """The real engine at ``engine_socket`` served on a loopback TCP port
    (yielded), as dockerd's ``-H tcp://`` serves it: plain, or over TLS with
    ``tls`` (a server context that requires a client certificate)."""
    server = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []

    def relay(client: socket.socket) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            if tls is not None:
                client = tls.wrap_socket(client, server_side=True)
            conns.append(client)
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conns.append(upstream)
            upstream.connect(engine_socket)
            back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
            back.start()
            _pump(client, upstream)
            back.join(timeout=10)
        client.close()

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = server.accept()
                threading.Thread(target=relay, args=(client,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        for conn in conns:
            conn.close()
        thread.join(timeout=5)


def _docker_cert_dir(ca: trustme.CA, client_ca: trustme.CA, where: Path) -> Path:
    """Docker's client layout (``DOCKER_CERT_PATH``): ca.pem (what the engine's
    certificate must chain to), cert.pem and key.pem (ours, from ``client_ca``)."""
    where.mkdir()
    ca.cert_pem.write_to_path(str(where / "ca.pem"))
    client = client_ca.issue_cert("p2pnode-node")
    client.cert_chain_pems[0].write_to_path(str(where / "cert.pem"))
    client.private_key_pem.write_to_path(str(where / "key.pem"))
    return where


def _tls_engine_context(ca: trustme.CA, client_ca: trustme.CA) -> ssl.SSLContext:
    """The engine's side, as ``dockerd --tlsverify``: its certificate from
    ``ca``, and a client certificate from ``client_ca`` required."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    client_ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    return context


@contextlib.contextmanager
def _engine_reached(how: str, tmp_path: Path) -> Iterator[Engine]:
    """The real engine (``DOCKER_HOST`` or the default socket), reached by the
    helper ``how``: over its unix socket, tcp://, or tcp:// with TLS both ways
    (``DOCKER_TLS_VERIFY`` with ``DOCKER_CERT_PATH``)."""
    local = engine_from_env(os.environ)
    assert local is not None and local.url.startswith("unix://")
    if how == "unix socket":
        yield local
        return
    ca = trustme.CA()
    tls = _tls_engine_context(ca, ca) if how == "tcp with tls" else None
    with _engine_over_tcp(local.url[len("unix://") :], tls) as port:
        environ = {"DOCKER_HOST": f"tcp://127.0.0.1:{port}"}
        if tls is not None:
            environ["DOCKER_TLS_VERIFY"] = "1"
            environ["DOCKER_CERT_PATH"] = str(_docker_cert_dir(ca, ca, tmp_path / "certs"))
        engine = engine_from_env(environ)
        assert engine is not None
        yield engine


@pytest.mark.docker
@pytest.mark.parametrize("how", ["unix socket", "tcp", "tcp with tls"])
def test_the_helper_kills_only_the_lapsed_executions_container(
    tmp_path: Path, docker_client: Any, busybox_image: str, how: str
) -> None:
    containers = {
        "lapsed": _container(docker_client, busybox_image, "job/0/1", "node-a"),
        "renewed": _container(docker_client, busybox_image, "job/1/1", "node-a"),
        # The same execution id on another node's engine labels: not ours.
        "other node": _container(docker_client, busybox_image, "job/0/1", "node-b"),
    }

    def running(name: str) -> bool:
        containers[name].reload()
        return bool(containers[name].status == "running")

    try:
        with _engine_reached(how, tmp_path) as engine:
            helper = subprocess.Popen(
                helper_argv(tmp_path, margin=0.2, docker=Docker(engine, "node-a")),
                stdin=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert helper.stdin is not None and helper.stderr is not None
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
    finally:
        for container in containers.values():
            container.remove(force=True)
    said = helper.stderr.read().decode()
    assert said.count("ended the task of job/0/1") == 1 and "job/1/1" not in said, said


@pytest.mark.docker
@pytest.mark.parametrize("wrong", ["engine not trusted", "we are not trusted"])
def test_a_tls_engine_that_fails_the_handshake_is_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], wrong: str
) -> None:
    """An engine whose certificate does not chain to our ca.pem, or that does
    not take our client certificate: no request is made, the failure is
    reported and the process group still goes."""
    local = engine_from_env(os.environ)
    assert local is not None
    engine_ca, our_ca, stranger = trustme.CA(), trustme.CA(), trustme.CA()
    served = _tls_engine_context(engine_ca, our_ca)
    certs = (
        _docker_cert_dir(stranger, our_ca, tmp_path / "certs")
        if wrong == "engine not trusted"
        else _docker_cert_dir(engine_ca, stranger, tmp_path / "certs")
    )
    with (
        _engine_over_tcp(local.url[len("unix://") :], served) as port,
        _groups(tmp_path, {"lapsed": True}) as groups,
    ):
        engine = Engine(f"https://127.0.0.1:{port}", str(certs), verify=True)
        ended = end_lapsed(tmp_path, "lapsed", Docker(engine, "node-a"))
        assert ended and not _alive(groups["lapsed"])
    said = capsys.readouterr().err
    assert "cannot ask Docker about lapsed" in said and "SSL" in said, said


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
        ended = end_lapsed(tmp_path, "lapsed", Docker(Engine(f"unix://{sock}"), "node-a"))
        assert ended and not _alive(groups["lapsed"])  # the process group still goes
    said = capsys.readouterr().err
    assert "cannot ask Docker about lapsed" in said and "ended the task of lapsed" in said


ENVIRONS = {  # what docker.from_env reaches -> where the helper asks
    "unset": ({}, Engine("unix:///var/run/docker.sock")),
    "empty": ({"DOCKER_HOST": ""}, Engine("unix:///var/run/docker.sock")),
    "unix": ({"DOCKER_HOST": "unix:///run/d.sock"}, Engine("unix:///run/d.sock")),
    "tcp": ({"DOCKER_HOST": "tcp://10.0.0.1:2375"}, Engine("http://10.0.0.1:2375")),
    "tcp, TLS_VERIFY empty": (
        {"DOCKER_HOST": "tcp://10.0.0.1:2375", "DOCKER_TLS_VERIFY": ""},
        Engine("http://10.0.0.1:2375"),
    ),
    "tcp, TLS_VERIFY": (
        {"DOCKER_HOST": "tcp://h:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": "/c"},
        Engine("https://h:2376", "/c", verify=True),
    ),
    "tcp, CERT_PATH only": (
        {"DOCKER_HOST": "tcp://h:2376", "DOCKER_CERT_PATH": "/c"},
        Engine("https://h:2376", "/c", verify=False),
    ),
    "tcp, TLS_VERIFY, default certs": (
        {"DOCKER_HOST": "tcp://h:2376", "DOCKER_TLS_VERIFY": "1"},
        Engine("https://h:2376", os.path.expanduser("~/.docker"), verify=True),
    ),
    "ssh": ({"DOCKER_HOST": "ssh://me@h"}, None),
    "no address": ({"DOCKER_HOST": "tcp://"}, None),
}


@pytest.mark.parametrize("name", sorted(ENVIRONS))
def test_the_docker_engine_is_found_as_the_docker_sdk_finds_it(name: str) -> None:
    environ, engine = ENVIRONS[name]
    assert engine_from_env(environ) == engine
    if engine is not None:  # what the helper's command line carries, read back
        assert Engine.from_argv(engine.argv()) == engine
        docker = Docker(engine, "node-a")
        argv = helper_argv(Path("/w"), 1.5, docker)
        assert Docker(Engine.from_argv(argv[-3:]), argv[-4]) == docker


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
