"""``p2pnode.Client`` and ``p2pnode.AsyncClient`` (asyncio and trio) against a
real ``p2pnode serve`` process; their requests, exactly as CONTRACTS name
them, against a recording socket for the verbs another part of the node serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
import trio

import p2pnode
from p2pnode import (
    AsyncClient,
    Client,
    ConnectionLost,
    ControlError,
    ControlNotFound,
    ControlRefused,
    ControlTimeout,
    EventLoopError,
    NodeNotRunning,
    NotFoundError,
    RefusedError,
    WaitTimeoutError,
)
from p2pnode.client import ERROR_CLASSES
from p2pnode.control_request import ERROR_CODES
from p2pnode.version import package_version
from tests.realnet import ServeNode, cluster

pytestmark = pytest.mark.slow

WAIT = 90.0  # bound of every wait: a guard against hangs on a loaded machine


def process_job(name: str, script: str, timeout: str = "1m") -> dict[str, Any]:
    return {
        "name": name,
        "task": {
            "engine": {"type": "process", "command": ["sh", "-c", script]},
            "resources": {"cpu": 0.1, "memory": "64MiB"},
            "timeout": timeout,
        },
    }


HELLO = process_job("hello", "echo hi > $P2PNODE_OUTPUTS/hi.txt; echo done")
LONG = process_job("long", "sleep 60")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeNode]:
    """One serve process for the module (a start costs seconds on a loaded machine)."""
    with cluster(tmp_path_factory.mktemp("client")) as c:
        serve = c.add("a")
        serve.wait_ready()
        yield serve


# --- blocking --------------------------------------------------------------------------


def test_client_runs_a_job_from_submit_to_its_outputs(node: ServeNode, tmp_path: Path) -> None:
    client = Client(node.data_dir)
    pong = client.ping()
    assert pong["node_id"] == node.node_id and pong["version"] == package_version()

    job_id = client.submit(HELLO, idempotency_key="hello-1")
    assert client.submit(HELLO, idempotency_key="hello-1") == job_id  # created once
    view = client.wait(job_id, timeout=WAIT)
    assert isinstance(view, p2pnode.JobView)
    assert view.state == "completed" and view["job_id"] == job_id
    assert client.describe(job_id).to_json()["state"] == "completed"
    listed = client.list()
    assert job_id in [j.job_id for j in listed] and all(
        isinstance(j, p2pnode.JobSummary) for j in listed
    )
    assert {j["owner"] for j in listed} == {node.node_id}  # the rows name their owner
    files = client.get_outputs(job_id, tmp_path / "out")
    assert [f.name for f in files] == ["hi.txt"] and files[0].read_text() == "hi\n"

    [me] = [n for n in client.nodes() if n.is_self]
    assert me.node_id == node.node_id
    assert client.stats().node_id == node.node_id


def test_client_stops_a_job_and_maps_every_error_reply(node: ServeNode, tmp_path: Path) -> None:
    client = Client(node.data_dir)
    job_id = client.submit(LONG)
    # A wait that runs out: a ControlError and a WaitTimeoutError; the job goes on.
    with pytest.raises(WaitTimeoutError) as waited:
        client.wait(job_id, timeout=0.5)
    assert isinstance(waited.value, ControlTimeout) and waited.value.code == "timeout"
    assert client.describe(job_id).state not in ("completed", "failed", "stopped")
    stopped = client.stop(job_id, reason="enough")
    assert stopped.state == "stopped" and "enough" in stopped.reason

    # An unknown job: a refusal in the library's terms (NotFoundError once the
    # node answers not_found), still a ControlError with the reply's code.
    with pytest.raises(RefusedError) as unknown:
        client.describe("j-0000000000000000")
    assert isinstance(unknown.value, ControlError)
    assert unknown.value.code in ("refused", "not_found")
    with pytest.raises(RefusedError):  # a batch job has no runs
        client.runs(job_id)
    with pytest.raises(ControlError) as invalid:
        client.submit({"name": "", "task": {}})
    assert invalid.value.code == "invalid_spec" and invalid.value.errors
    with pytest.raises(ControlError) as unknown_op:
        client.call("no-such-op")
    assert unknown_op.value.code == "unknown_op"

    # No node: NodeNotRunning, naming the data dir.
    with pytest.raises(NodeNotRunning, match=str(tmp_path)):
        Client(tmp_path).ping()
    assert client.ping()["node_id"] == node.node_id  # the node took all of it


def test_client_reads_the_data_dir_from_the_environment(
    node: ServeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("P2PNODE_DATA_DIR", str(node.data_dir))
    assert Client().ping()["node_id"] == node.node_id
    assert AsyncClient().data_dir == node.data_dir


# --- asyncio and trio ------------------------------------------------------------------


async def _async_tour(client: AsyncClient, out: Path) -> dict[str, Any]:
    """What both event loops run: a job to its outputs, a stop, an error, a
    wait cancelled by the caller (its connection closes; the node goes on)."""
    job_id = await client.submit(HELLO)
    view = await client.wait(job_id, timeout=WAIT)
    files = await client.get_outputs(job_id, out)
    long_id = await client.submit(LONG)
    with anyio.move_on_after(0.5) as scope:
        await client.wait(long_id)
    stopped = await client.stop(long_id)
    try:
        await client.describe("j-0000000000000000")
        refused: BaseException | None = None
    except RefusedError as exc:
        refused = exc
    return {
        "state": view.state,
        "files": [f.name for f in files],
        "cancelled": scope.cancelled_caught,
        "stopped": stopped.state,
        "refused": refused,
        "listed": {j.job_id for j in await client.list()},
        "ids": {job_id, long_id},
        "version": (await client.ping())["version"],
    }


def _check_tour(tour: dict[str, Any]) -> None:
    assert tour["state"] == "completed" and tour["files"] == ["hi.txt"]
    assert tour["cancelled"] and tour["stopped"] == "stopped"
    assert isinstance(tour["refused"], ControlError)
    assert tour["ids"] <= tour["listed"]
    assert tour["version"] == package_version()


def test_async_client_under_asyncio(node: ServeNode, tmp_path: Path) -> None:
    tour = asyncio.run(_async_tour(AsyncClient(node.data_dir), tmp_path / "out"))
    _check_tour(tour)


def test_async_client_under_trio(node: ServeNode, tmp_path: Path) -> None:
    tour = trio.run(_async_tour, AsyncClient(node.data_dir), tmp_path / "out")
    _check_tour(tour)


def test_async_client_without_a_node(tmp_path: Path) -> None:
    async def ping() -> None:
        await AsyncClient(tmp_path).ping()

    with pytest.raises(NodeNotRunning):
        asyncio.run(ping())
    with pytest.raises(NodeNotRunning):
        trio.run(ping)


def test_open_node_under_asyncio_says_what_to_use_instead(tmp_path: Path) -> None:
    async def start() -> None:
        async with p2pnode.open_node(p2pnode.NodeSettings(data_dir=tmp_path / "n")):
            pass

    with pytest.raises(EventLoopError, match="AsyncClient") as raised:
        asyncio.run(start())
    assert "trio" in str(raised.value) and isinstance(raised.value, RuntimeError)
    assert not (tmp_path / "n").exists()  # refused before touching anything


# --- the requests, as CONTRACTS name them (a recording socket) ---------------------------


Reply = Callable[[dict[str, Any]], list[dict[str, Any]]]


class RecordingNode:
    """A unix socket in a data dir, served by a thread: records each request
    and answers with the lines ``reply(request)`` gives."""

    def __init__(self, data_dir: Path, reply: Reply) -> None:
        self.requests: list[dict[str, Any]] = []
        self._reply = reply
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(data_dir / "control.sock"))
        self._sock.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rwb") as f:
                request = json.loads(f.readline())
                self.requests.append(request)
                for line in self._reply(request):
                    f.write(json.dumps(line).encode() + b"\n")
                f.flush()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        self._thread.join(timeout=5)


LOG = {"kind": "log", "slot": 0, "execution": "e-1", "stream": "stdout", "data": "hi\n"}
VIEW = {"job_id": "j-1", "name": "x", "type": "batch", "state": "running", "reason": ""}


def scripted(request: dict[str, Any]) -> list[dict[str, Any]]:
    op = request["op"]
    if op == "logs":
        other = {"kind": "job_state", "state": "running"}  # not a log chunk: skipped
        events = [LOG, other, {**LOG, "stream": "stderr", "data": "oops\n"}]
        return [*({"event": e} for e in events), {"ok": True, "result": {"job_id": "j-1"}}]
    if op == "describe" and request["job_id"] == "j-gone":
        return [{"ok": False, "code": "not_found", "error": "no such job: j-gone"}]
    if op == "describe" and request["job_id"] == "j":
        return [{"ok": False, "code": "ambiguous", "error": "j names 2 jobs: j-1, j-2"}]
    if op == "describe" and request["job_id"] == "j-far":
        return [{"ok": False, "code": "unreachable", "error": "job j-far is owned by p"}]
    if op == "jobs":
        return [{"ok": True, "result": [VIEW]}]
    if op == "history":
        return [{"ok": True, "result": [{"at": "t", "at_ms": 1, "event": "submitted"}]}]
    if op == "update":
        return [{"ok": True, "result": {"job_id": "j-1", "version": 2}}]
    if op == "half":  # the node dies mid-answer
        return [{"event": LOG}]
    return [{"ok": True, "result": VIEW}]


@pytest.fixture
def recording(tmp_path: Path) -> Iterator[RecordingNode]:
    server = RecordingNode(tmp_path, scripted)
    try:
        yield server
    finally:
        server.close()


EXPECTED_REQUESTS = [
    {"op": "jobs"},
    {"op": "jobs", "state": ["failed", "stopped"], "type": "batch", "name": "etl", "limit": 5}
    | {"since": 1700000000000, "runs": True},
    {"op": "jobs", "state": "running"},
    {"op": "logs", "job_id": "j-1", "follow": True, "tail": 10},
    {"op": "logs", "job_id": "j-1", "follow": False, "tail": None},
    {"op": "history", "job_id": "j-1"},
    {"op": "cancel", "job_id": "j-1", "reason": "enough"},
    {"op": "cancel", "job_id": "j-1"},
    {"op": "update", "job_id": "j-1", "spec": {"name": "x"}},
    {"op": "suspend", "job_id": "j-1"},
    {"op": "resume", "job_id": "j-1"},
]


def test_client_sends_the_contract_requests(recording: RecordingNode, tmp_path: Path) -> None:
    import datetime

    client = Client(tmp_path)
    assert [j.job_id for j in client.list()] == ["j-1"]
    since = datetime.datetime.fromtimestamp(1700000000, datetime.UTC)
    client.list(state=["failed", "stopped"], type="batch", name="etl", limit=5, since=since,
                runs=True)  # fmt: skip
    client.list(state="running")
    chunks = list(client.logs("j-1", follow=True, tail=10))
    assert [(c["stream"], c["data"]) for c in chunks] == [("stdout", "hi\n"), ("stderr", "oops\n")]
    assert list(client.logs("j-1")) == chunks
    assert client.history("j-1")[0]["event"] == "submitted"
    client.stop("j-1", reason="enough")
    client.stop("j-1")
    assert client.update("j-1", {"name": "x"}) == 2
    client.suspend("j-1")
    client.resume("j-1")
    assert recording.requests == EXPECTED_REQUESTS


async def _async_requests(client: AsyncClient) -> list[dict[str, Any]]:
    import datetime

    await client.list()
    since = datetime.datetime.fromtimestamp(1700000000, datetime.UTC)
    await client.list(state=["failed", "stopped"], type="batch", name="etl", limit=5, since=since,
                      runs=True)  # fmt: skip
    await client.list(state="running")
    chunks = [c async for c in client.logs("j-1", follow=True, tail=10)]
    assert chunks == [c async for c in client.logs("j-1")]
    await client.history("j-1")
    await client.stop("j-1", reason="enough")
    await client.stop("j-1")
    assert await client.update("j-1", {"name": "x"}) == 2
    await client.suspend("j-1")
    await client.resume("j-1")
    return chunks


@pytest.mark.parametrize("loop", ["asyncio", "trio"])
def test_async_client_sends_the_contract_requests(
    recording: RecordingNode, tmp_path: Path, loop: str
) -> None:
    chunks = anyio.run(_async_requests, AsyncClient(tmp_path), backend=loop)
    assert [c["data"] for c in chunks] == ["hi\n", "oops\n"]
    assert recording.requests == EXPECTED_REQUESTS


def test_reply_codes_raise_the_library_errors(recording: RecordingNode, tmp_path: Path) -> None:
    client = Client(tmp_path)
    with pytest.raises(NotFoundError) as gone:
        client.describe("j-gone")
    assert isinstance(gone.value, ControlNotFound) and str(gone.value) == "no such job: j-gone"
    with pytest.raises(RefusedError) as ambiguous:
        client.describe("j")
    assert type(ambiguous.value) is ControlRefused and ambiguous.value.code == "ambiguous"
    with pytest.raises(ControlError) as far:
        client.describe("j-far")
    assert type(far.value) is ControlError and far.value.code == "unreachable"
    with pytest.raises(ConnectionLost):  # the answer never came
        client.call("half")


def test_every_reply_code_has_a_class_or_is_a_plain_control_error() -> None:
    # The codes the server names (control_request.py), and those CONTRACTS add.
    specific = {"not_found", "refused", "ambiguous", "permission_denied", "timeout"}
    plain = {"bad_request", "unknown_op", "invalid_spec", "unavailable", "busy", "internal"}
    assert set(ERROR_CODES) <= specific | plain | {"unreachable"}
    assert set(ERROR_CLASSES) == specific
    assert all(issubclass(cls, ControlError) for cls in ERROR_CLASSES.values())
    assert issubclass(ERROR_CLASSES["not_found"], NotFoundError)
    assert issubclass(ERROR_CLASSES["timeout"], WaitTimeoutError)


def test_a_spec_is_a_mapping_a_path_or_text(tmp_path: Path) -> None:
    from p2pnode.client import spec_argument

    path = tmp_path / "spec.yaml"
    path.write_text("name: x\n")
    assert spec_argument(path) == "name: x\n" and spec_argument(str(path)) == "name: x\n"
    assert spec_argument({"name": "x"}) == {"name": "x"}
    one_line_json = json.dumps({"name": "x" * 400})  # longer than a file name may be
    assert spec_argument(one_line_json) == one_line_json
    assert spec_argument("name: x\ntask: {}\n") == "name: x\ntask: {}\n"
    assert spec_argument("a" * 5000) == "a" * 5000  # not a file: sent as text (the node says why)
