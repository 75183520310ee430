"""The HTTP API in the node's own trio process (``open_node`` + ``serve_http``
over loopback HTTP), where a test can look inside: event streams leave no
task behind when their client goes or their node stops, and the auth checker
of tests/httpapi.py fires on a planted hole."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import trio

import p2pnode.web.sse
from p2pnode.node import NodeSettings, open_node
from p2pnode.web import serve_http
from p2pnode.web.auth import TokenAuth, read_token
from p2pnode.web.sse import TASK_PREFIX
from tests.httpapi import ROUTES, unguarded_routes

pytestmark = pytest.mark.slow

WAIT = 30.0  # bound of every wait: a guard against hangs, not a performance claim


def stream_tasks() -> list[str]:
    """Names of the live tasks of event streams, anywhere in this trio run."""
    names = []
    pending = [trio.lowlevel.current_root_task()]
    while pending:
        task = pending.pop()
        if task.name.startswith(TASK_PREFIX):
            names.append(task.name)
        for nursery in task.child_nurseries:
            pending.extend(nursery.child_tasks)
    return names


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    with trio.move_on_after(WAIT):
        while not predicate():
            await trio.sleep(0.05)
        return
    raise AssertionError(f"timed out waiting for {what}")


@asynccontextmanager
async def serving(tmp_path: Path) -> AsyncIterator[tuple[str, str, trio.Nursery]]:
    """(base url, token, the nursery serve_http runs in) of a node with HTTP."""
    settings = NodeSettings(data_dir=tmp_path / "n", executors=("sim",), seed=1)
    async with open_node(settings) as node, trio.open_nursery() as nursery:
        url = await nursery.start(serve_http, node, "127.0.0.1:0")
        assert node.http_url == url
        yield url, read_token(tmp_path / "n" / "http-token"), nursery
        nursery.cancel_scope.cancel()
    assert node.http_url is None


async def open_events(url: str, token: str) -> trio.SocketStream:
    """A raw HTTP/1.1 client of /api/v1/events, once its snapshot arrived."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    request = (
        f"GET /api/v1/events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    await stream.send_all(request.encode())
    received = b""
    with trio.fail_after(WAIT):
        while b"event: snapshot" not in received:
            chunk = await stream.receive_some(65536)
            assert chunk, received
            received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    return stream


async def test_a_client_leaving_an_event_stream_leaves_no_task_behind(tmp_path: Path) -> None:
    async with serving(tmp_path) as (url, token, _):
        assert stream_tasks() == []
        streams = [await open_events(url, token) for _ in range(2)]
        assert len(stream_tasks()) == 6  # producer, keepalive, disconnect watch, each
        for stream in streams:
            await stream.aclose()
        await wait_for(lambda: stream_tasks() == [], "the streams' tasks to end")


async def test_the_task_check_sees_a_stream_that_misses_its_clients_leaving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def deaf(receive: object, scope: object) -> None:
        await trio.sleep_forever()  # the planted bug: never notices the disconnect

    monkeypatch.setattr(p2pnode.web.sse, "end_on_disconnect", deaf)
    async with serving(tmp_path) as (url, token, _):
        stream = await open_events(url, token)
        await stream.aclose()
        await trio.sleep(3)  # what the real test waits for happens in ms
        assert len(stream_tasks()) == 3


async def test_stopping_the_node_ends_its_event_streams(tmp_path: Path) -> None:
    async with serving(tmp_path) as (url, token, nursery):
        stream = await open_events(url, token)
        assert len(stream_tasks()) == 3
        nursery.cancel_scope.cancel()  # what serve does on SIGTERM
    assert stream_tasks() == []
    with trio.fail_after(WAIT):  # the client sees its stream end
        while await stream.receive_some(65536):
            pass
    await stream.aclose()


async def test_the_auth_check_fires_when_the_token_check_is_planted_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with serving(tmp_path) as (url, _token, _):

        def check() -> list[str]:
            with httpx.Client(base_url=url, timeout=WAIT) as client:
                return unguarded_routes(client)

        assert await trio.to_thread.run_sync(check) == []
        monkeypatch.setattr(TokenAuth, "allows", lambda self, given: True)
        leaks = await trio.to_thread.run_sync(check)
        assert len(leaks) == len(ROUTES), leaks
