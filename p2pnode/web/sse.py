"""Server-Sent Events responses that end with their client or their node.

An ``EventStream`` is an ASGI response running a producer (``produce(sink)``)
in its own nursery beside two helpers: one that waits for the client's
``http.disconnect`` and then cancels the lot, one that writes a ``:
keepalive`` comment every ``KEEPALIVE`` seconds.  The node's own cancel scope
(``serve_http`` runs in the node's nursery) cancels them too: no stream task
outlives its client or its node.  ``live`` holds the streams now open (the
tests count them, with the tasks named ``TASK_PREFIX ...``).

The response starts lazily: a producer that fails before writing anything
(an unknown job, say) gets an ordinary JSON error response with its status;
one that fails later gets ``event: error`` and the stream ends.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2pnode.web.auth import Receive, Scope, Send

KEEPALIVE = 15.0  # seconds between keepalive comments
START_AFTER = 0.1  # seconds: a producer that neither wrote nor failed by then gets its headers
TASK_PREFIX = "p2pnode http sse"

Produce = Callable[["Sink"], Awaitable[None]]
ErrorBody = Callable[[BaseException], tuple[int, dict[str, Any]]]


def encode(value: Any) -> str:
    """JSON as the control socket writes it (``default=str``)."""
    return json.dumps(value, default=str)


class Sink:
    """Where a producer writes its events (one writer at a time)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self._lock = trio.Lock()
        self.started = False
        self.closed = False

    async def event(self, name: str, data: Any) -> None:
        lines = "".join(f"data: {line}\n" for line in encode(data).split("\n"))
        await self._write(f"event: {name}\n{lines}\n".encode())

    async def comment(self, text: str) -> None:
        await self._write(f": {text}\n\n".encode())

    async def start(self) -> None:
        async with self._lock:
            await self._start()

    async def _start(self) -> None:
        if self.started:
            return
        self.started = True
        headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-store"),
            (b"x-accel-buffering", b"no"),
        ]
        await self._send({"type": "http.response.start", "status": 200, "headers": headers})

    async def _write(self, data: bytes) -> None:
        async with self._lock:
            await self._start()
            await self._send(_body(data))

    async def fail(self, status: int, body: dict[str, Any]) -> None:
        """The error: a JSON response with ``status`` if nothing was sent yet,
        else an ``error`` event."""
        async with self._lock:
            if self.started:
                await self._send(_body(f"event: error\ndata: {encode(body)}\n\n".encode()))
                return
            self.started = self.closed = True
            data = encode(body).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ]
            await self._send({"type": "http.response.start", "status": status, "headers": headers})
            await self._send({"type": "http.response.body", "body": data})

    async def close(self) -> None:
        async with self._lock:
            if self.closed:
                return
            await self._start()
            self.closed = True
            await self._send({"type": "http.response.body", "body": b"", "more_body": False})


class EventStream:
    """The ASGI response of one SSE stream (see the module docstring)."""

    def __init__(
        self,
        produce: Produce,
        *,
        error_body: ErrorBody,
        live: set[EventStream],
        what: str,
        keepalive: float = KEEPALIVE,
    ) -> None:
        self._produce = produce
        self._error_body = error_body
        self._live = live
        self._what = what
        self._keepalive = keepalive

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        sink = Sink(send)
        self._live.add(self)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    end_on_disconnect, receive, nursery.cancel_scope,
                    name=f"{TASK_PREFIX} {self._what}: disconnect",
                )  # fmt: skip
                nursery.start_soon(
                    self._keep_alive, sink, name=f"{TASK_PREFIX} {self._what}: keepalive"
                )
                nursery.start_soon(
                    self._run, sink, nursery.cancel_scope, name=f"{TASK_PREFIX} {self._what}"
                )
        finally:
            self._live.discard(self)

    async def _run(self, sink: Sink, scope: trio.CancelScope) -> None:
        try:
            await self._produce(sink)
        except Exception as exc:
            await sink.fail(*self._error_body(exc))
        await sink.close()
        scope.cancel()

    async def _keep_alive(self, sink: Sink) -> None:
        await trio.sleep(START_AFTER)
        await sink.start()
        while True:
            await trio.sleep(self._keepalive)
            await sink.comment("keepalive")


async def end_on_disconnect(receive: Receive, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` once the client has gone (``http.disconnect``)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            scope.cancel()
            return


def _body(data: bytes) -> dict[str, Any]:
    return {"type": "http.response.body", "body": data, "more_body": True}


__all__ = ["KEEPALIVE", "TASK_PREFIX", "EventStream", "Sink", "encode", "end_on_disconnect"]
