"""The control socket answers every bad request with an error reply (a code and
one clear message) and never stops for it; its limits (connections, request
time, hang-ups) hold.  The requests of issue 12 that used to stop the node
are sent to a real ``serve`` process; the limits are shrunk on a node run in
a thread of the test (tests/controlnode.py)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pnode import control
from tests.controlfuzz import SIM_LONG, SIM_SHORT, exchange
from tests.controlnode import ThreadNode, node_in_thread
from tests.realnet import cluster, run_cli

pytestmark = pytest.mark.slow

LONG_SPEC = """\
name: long
task:
  engine: {type: sim, duration: 1h}
  timeout: 2h
"""


def ask(path: Path, payload: bytes, patience: float = 30.0) -> dict[str, Any]:
    """The final reply to ``payload`` (raw bytes, sent as is)."""
    lines, timed_out = exchange(path, payload, patience=patience)
    assert not timed_out, (payload[:200], lines)
    final = json.loads([line for line in lines if line.strip()][-1])
    assert isinstance(final, dict)
    return final


def test_requests_that_stopped_the_node_get_error_replies(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        node = c.add("a", executors="sim")
        node.wait_ready()
        sock = node.control_socket
        deep = b"[" * 200_000 + b"]" * 200_000 + b"\n"
        deep_object = b'{"a":' * 200_000 + b"1" + b"}" * 200_000 + b"\n"
        cases = [
            (b'{"op":"wait","job_id":"nope"}\n', "not_found", "no such job: nope"),
            (b'{"op":"wait","job_id":"nope","timeout":[1]}\n', "bad_request", "timeout must be"),
            (deep, "bad_request", "nested deeper than 32 levels"),
            (deep_object, "bad_request", "request line over 1024 KiB"),
            (b'{"op":"wait","job_id":"x","timeout":NaN}\n', "bad_request", "NaN is not"),
            (b'{"op":"wait","job_id":"x","timeout":1e999}\n', "bad_request", "timeout must be"),
            (b'{"op":"describe","job_id":7}\n', "bad_request", "job_id must be a non-empty"),
            (b'{"op":"describe"}\n', "bad_request", "describe needs the field 'job_id'"),
            (b'{"op":"get","job_id":"x","output_dir":"rel"}\n', "bad_request", "absolute path"),
            (b'{"op":"submit","spec":5}\n', "bad_request", "spec must be"),
            (b'{"op":"submit","spec":{"name":"x"}}\n', "invalid_spec", "invalid job spec"),
            (b'{"op":"explode"}\n', "unknown_op", "unknown operation 'explode'"),
            (b'{"op":["ping"]}\n', "bad_request", "op must be a string"),
            (b"[1,2]\n", "bad_request", "must be a JSON object"),
            (b"\xff\xfe\x00\n", "bad_request", "not valid JSON"),
            (b"\n", "bad_request", "empty request"),
            (b'{"op":"ping"', "bad_request", "not ended by a newline"),
            (b'{"op":"cancel","job_id":"nope"}\n', "not_found", "no such job: nope"),
        ]
        for payload, code, message in cases:
            reply = ask(sock, payload)
            assert reply["ok"] is False and reply["code"] == code, (payload[:80], reply)
            assert message in reply["error"], (payload[:80], reply)
            assert "\n" not in reply["error"]
        assert ask(sock, b'{"op":"ping"}\n')["result"]["node_id"] == node.node_id

        # The CLI's wait bound: exit 4, the job still running, the node untouched.
        spec = tmp_path / "long.yaml"
        spec.write_text(LONG_SPEC)
        waited = node.cli("job", "run", spec, "--wait", "--timeout", "2")
        assert waited.returncode == 4, waited.explain()
        job_id = waited.stdout.split()[0]
        assert waited.stderr.splitlines()[-1].startswith(f"p2pnode: job {job_id} still "), (
            waited.explain()
        )
        assert "not stopped" in waited.stderr, waited.explain()
        assert node.describe(job_id)["state"] in ("queued", "running"), node.describe(job_id)
        assert node.running and node.control("ping")["node_id"] == node.node_id

        as_json = node.cli("-o", "json", "job", "run", spec, "--wait", "--timeout", "1")
        assert as_json.returncode == 4, as_json.explain()
        assert as_json.json()["state"] in ("queued", "running"), as_json.explain()
        assert "Traceback" not in node.stderr_path.read_text(), node.explain()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--timeout", "2"], "--timeout needs --wait"),
        (["--wait", "--timeout", "nan"], "'nan' is out of range"),
        (["--wait", "--timeout", "-1"], "'-1' is out of range"),
    ],
)
def test_a_bad_wait_timeout_is_a_usage_error(tmp_path: Path, args: list[str], message: str) -> None:
    spec = tmp_path / "long.yaml"
    spec.write_text(LONG_SPEC)
    result = run_cli("--data-dir", tmp_path / "none", "job", "run", spec, *args)
    assert result.returncode == 2, result.explain()
    assert result.stderr.startswith("p2pnode: ") and message in result.stderr, result.explain()
    assert len(result.stderr.splitlines()) == 1, result.explain()


# --- limits, on a node in a thread ------------------------------------------------------


@pytest.fixture
def small_limits(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(control, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(control, "REQUEST_TIMEOUT", 1.0)
    monkeypatch.setattr(control, "HANGUP_POLL", 0.05)
    yield


def _connect(node: ThreadNode) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(node.socket))
    return sock


def _read_reply(sock: socket.socket) -> dict[str, Any]:
    buf = b""
    while chunk := sock.recv(65536):
        buf += chunk
    reply = json.loads(buf.splitlines()[-1])
    assert isinstance(reply, dict)
    return reply


def test_connection_limit_and_request_timeout(tmp_path: Path, small_limits: None) -> None:
    with node_in_thread(tmp_path / "n") as node:
        idle = [_connect(node), _connect(node)]  # connected, never sending
        try:
            # The slots are taken: one more is told so at once, and closed.
            extra = _connect(node)
            busy = _read_reply(extra)
            assert busy["code"] == "busy" and "2 control connections" in busy["error"], busy
            # The idle clients are dropped after the request timeout...
            for sock in idle:
                reply = _read_reply(sock)
                assert reply["code"] == "bad_request", reply
                assert "no complete request line within 1 s" in reply["error"], reply
        finally:
            for sock in idle:
                sock.close()
        # ... which frees their slots.
        assert node.call("ping")["node_id"]


def test_a_client_that_hangs_up_ends_its_wait(tmp_path: Path, small_limits: None) -> None:
    with node_in_thread(tmp_path / "n") as node:
        long = node.call("submit", spec=SIM_LONG)["job_id"]
        for _ in range(5):  # more waits than slots: each must free its slot
            sock = _connect(node)
            sock.sendall(json.dumps({"op": "wait", "job_id": long}).encode() + b"\n")
            sock.close()  # Ctrl-C during `job run --wait`
            second = _connect(node)  # a half-closing client (nc -N) still gets its answer
            second.sendall(json.dumps({"op": "wait", "job_id": long, "timeout": 0.2}).encode())
            second.sendall(b"\n")
            second.shutdown(socket.SHUT_WR)
            reply = _read_reply(second)
            second.close()
            assert reply["code"] == "timeout" and long in reply["error"], reply
        assert node.call("ping")["node_id"]


def test_an_unexpected_failure_is_an_internal_error_reply(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A planted bug in a handler: the client learns it, the node goes on."""
    with node_in_thread(tmp_path / "n") as node:
        assert node.node is not None
        job = node.call("submit", spec=SIM_SHORT)["job_id"]

        def broken(job_id: str) -> dict[str, Any]:
            raise ZeroDivisionError("planted")

        monkeypatch.setattr(node.node, "describe", broken)
        for op in ("describe", "wait"):  # wait: from inside the handler's nursery
            reply = ask(node.socket, json.dumps({"op": op, "job_id": job}).encode() + b"\n")
            assert reply["code"] == "internal", reply
            assert "ZeroDivisionError: planted" in reply["error"], reply
        monkeypatch.undo()
        assert node.call("describe", job_id=job)["job_id"] == job


async def test_a_client_that_never_reads_cannot_pin_a_reply(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reply line waits at most SEND_TIMEOUT for its reader (a lockstep
    stream: every send blocks until the other end reads, which it never does)."""
    import trio.testing

    monkeypatch.setattr(control, "SEND_TIMEOUT", 0.2)
    ours, _never_read = trio.testing.lockstep_stream_pair()
    with pytest.raises(control._ClientStuck), trio.fail_after(30):
        await control._send(ours, {"ok": True, "result": "x" * 1000})  # type: ignore[arg-type]
