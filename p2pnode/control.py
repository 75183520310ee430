"""The local control endpoint: how the CLI talks to the node serving a data dir.

A unix socket ``<data dir>/control.sock``, mode 0600 inside a 0700 directory,
and the peer's uid checked with ``SO_PEERCRED``: only the node's own user can
submit work through it.  The protocol is JSON lines: one request object
``{"op": ..., ...}`` per connection, answered by zero or more ``{"event": ...}``
lines (progress) and one final line, ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "...", "errors": [...]}``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from p2pnode.blobs import BlobError
from p2pnode.outputs import FetchError, fetch_outputs
from protocols.errors import LocalProtocolError
from protocols.events import Notify
from protocols.spec import SpecValidationError

log = logging.getLogger("p2pnode.control")

SOCKET_NAME = "control.sock"
MAX_REQUEST = 1024 * 1024


class ControlError(Exception):
    """The node answered with an error (``errors`` lists spec problems, if any)."""

    def __init__(self, message: str, errors: list[dict[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or []


class NodeNotRunning(ControlError):
    pass


class ConnectionLost(ControlError):
    """The connection ended before the node's answer: the request may or may
    not have taken effect (the node died or restarted meanwhile)."""


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


# --- server ---------------------------------------------------------------------


Handler = Callable[[dict[str, Any], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[Any]]


async def serve_control(node: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
    """Serve the control socket of ``node`` (a ``p2pnode.node.Node``) until cancelled."""
    path = socket_path(node.settings.data_dir)
    path.unlink(missing_ok=True)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket file is created 0600, never briefly wider
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(64)
    listener = trio.SocketListener(sock)
    ops = _operations(node)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(
                lambda stream: _serve_one(stream, ops), [listener], handler_nursery=nursery
            )
    finally:
        path.unlink(missing_ok=True)


async def _serve_one(stream: trio.SocketStream, ops: dict[str, Handler]) -> None:
    async def reply(obj: dict[str, Any]) -> None:
        await stream.send_all(json.dumps(obj, default=str).encode() + b"\n")

    try:
        if not _same_user(stream):
            await reply({"ok": False, "error": "permission denied: not the node's user"})
            return
        request = await _read_line(stream)
        op = request.get("op")
        handler = ops.get(op if isinstance(op, str) else "")
        if handler is None:
            await reply({"ok": False, "error": f"unknown operation {op!r}"})
            return
        result = await handler(request, lambda event: reply({"event": event}))
        await reply({"ok": True, "result": result})
    except SpecValidationError as exc:
        errors = [{"path": e.path, "message": e.message} for e in exc.errors]
        await _reply_quietly(stream, {"ok": False, "error": "invalid job spec", "errors": errors})
    except (
        LocalProtocolError,
        ControlError,
        FetchError,
        BlobError,
        ValueError,
        KeyError,
        TimeoutError,
        trio.TooSlowError,
        OSError,
    ) as exc:
        await _reply_quietly(stream, {"ok": False, "error": str(exc) or type(exc).__name__})
    except trio.BrokenResourceError:
        pass  # the client went away (e.g. Ctrl-C during a wait)
    finally:
        await stream.aclose()


async def _reply_quietly(stream: trio.SocketStream, obj: dict[str, Any]) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await stream.send_all(json.dumps(obj, default=str).encode() + b"\n")


def _same_user(stream: trio.SocketStream) -> bool:
    creds = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


async def _read_line(stream: trio.SocketStream) -> dict[str, Any]:
    buf = b""
    while b"\n" not in buf:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_REQUEST:
            raise ValueError("request too large")
    request = json.loads(buf.split(b"\n", 1)[0] or b"{}")
    if not isinstance(request, dict):
        raise ValueError("request must be a JSON object")
    return request


def _operations(node: Any) -> dict[str, Handler]:
    async def ping(req: dict[str, Any], emit: Any) -> Any:
        return {"node_id": node.node_id, "addrs": node.listen_addrs()}

    async def submit(req: dict[str, Any], emit: Any) -> Any:
        spec = req.get("spec")
        if not isinstance(spec, (str, dict)):
            raise ValueError("submit needs a spec (YAML/JSON text or an object)")
        key = req.get("idempotency_key")  # the same key: the same job, created once
        _fault_submit("kill-before-store")
        job_id = await node.submit(spec, idempotency_key=key)
        _fault_submit("kill-before-reply")
        return {"job_id": job_id}

    async def update(req: dict[str, Any], emit: Any) -> Any:
        spec = req.get("spec")
        if not isinstance(spec, (str, dict)):
            raise ValueError("update needs a spec (YAML/JSON text or an object)")
        job_id = str(req["job_id"])
        return {"job_id": job_id, "version": await node.update(job_id, spec)}

    async def suspend(req: dict[str, Any], emit: Any) -> Any:
        await node.suspend(str(req["job_id"]))
        return node.describe(str(req["job_id"]))

    async def resume(req: dict[str, Any], emit: Any) -> Any:
        await node.resume(str(req["job_id"]))
        return node.describe(str(req["job_id"]))

    async def runs(req: dict[str, Any], emit: Any) -> Any:
        return node.runs(str(req["job_id"]))

    async def jobs(req: dict[str, Any], emit: Any) -> Any:
        return node.jobs()

    async def describe(req: dict[str, Any], emit: Any) -> Any:
        return node.describe(str(req["job_id"]))

    async def cancel(req: dict[str, Any], emit: Any) -> Any:
        await node.cancel(str(req["job_id"]), str(req.get("reason") or "stopped by user"))
        return node.describe(str(req["job_id"]))

    async def wait(req: dict[str, Any], emit: Callable[[dict[str, Any]], Awaitable[None]]) -> Any:
        send, receive = trio.open_memory_channel[Notify](256)

        async def forward() -> None:
            async for note in receive:
                await emit({"kind": note.kind, **note.data})

        async with trio.open_nursery() as nursery:
            nursery.start_soon(forward)
            timeout = req.get("timeout")
            try:
                view = await node.wait(
                    str(req["job_id"]),
                    timeout=None if timeout is None else float(timeout),
                    on_event=lambda note: _offer(send, note),
                )
            finally:
                send.close()
        return view

    async def peers(req: dict[str, Any], emit: Any) -> Any:
        return node.peers()

    async def stats(req: dict[str, Any], emit: Any) -> Any:
        return node.stats()

    async def get(req: dict[str, Any], emit: Any) -> Any:
        files = await fetch_outputs(node, str(req["job_id"]), Path(str(req["output_dir"])))
        return {"files": files}

    return {
        "ping": ping,
        "submit": submit,
        "update": update,
        "suspend": suspend,
        "resume": resume,
        "runs": runs,
        "jobs": jobs,
        "describe": describe,
        "cancel": cancel,
        "wait": wait,
        "peers": peers,
        "get": get,
        "stats": stats,
    }


FAULT_SUBMIT_ENV = "P2PNODE_FAULT_SUBMIT"


def _fault_submit(point: str) -> None:
    """Fault injection for tests (hidden): SIGKILL this node at ``point`` of a
    submit when ``P2PNODE_FAULT_SUBMIT`` names it (``kill-before-store``: the
    request was read, nothing stored; ``kill-before-reply``: the job is stored,
    its id never sent).  The client sees the connection drop either way."""
    if os.environ.get(FAULT_SUBMIT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)


def _offer(send: trio.MemorySendChannel[Notify], note: Notify) -> None:
    with contextlib.suppress(trio.WouldBlock):  # progress is best effort; the answer is not
        send.send_nowait(note)


# --- client ---------------------------------------------------------------------


class ControlClient:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = socket_path(data_dir)

    async def _connect(self) -> trio.SocketStream:
        try:
            return await trio.open_unix_socket(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NodeNotRunning(
                f"no node is running for data dir {self.data_dir} "
                f"(start one with: python -m p2pnode serve --data-dir {self.data_dir})"
            ) from None

    async def stream(self, op: str, **args: Any) -> AsyncIterator[dict[str, Any]]:
        """Yields progress events; the final result is yielded as ``{"result": ...}``."""
        stream = await self._connect()
        async with stream:
            try:
                await stream.send_all(json.dumps({"op": op, **args}).encode() + b"\n")
            except (trio.BrokenResourceError, ConnectionError) as exc:
                raise ConnectionLost(f"lost the connection to the node: {exc}") from None
            buf = b""
            while True:
                try:
                    chunk = await stream.receive_some(65536)
                except (trio.BrokenResourceError, ConnectionError):
                    chunk = b""
                if not chunk:
                    raise ConnectionLost("the node closed the connection without an answer")
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = json.loads(line)
                    if "event" in msg:
                        yield {"event": msg["event"]}
                        continue
                    if not msg.get("ok"):
                        raise ControlError(msg.get("error", "error"), msg.get("errors"))
                    yield {"result": msg.get("result")}
                    return

    async def call(self, op: str, **args: Any) -> Any:
        async for item in self.stream(op, **args):
            if "result" in item:
                return item["result"]
        raise ControlError("no answer")
