"""The local control endpoint: how the CLI talks to the node serving a data dir.

A unix socket ``<data dir>/control.sock``, mode 0600 inside a 0700 directory,
and the peer's uid checked with ``SO_PEERCRED``: only the node's own user can
submit work through it.  The protocol is JSON lines: one request object
``{"op": ..., ...}`` per connection, answered by zero or more ``{"event": ...}``
lines (progress) and one final line, ``{"ok": true, "result": ...}`` or
``{"ok": false, "code": "...", "error": "...", "errors": [...]}``.

Hardened against any client (``control_request.py`` checks each request):
every failure of a request is an error reply, never the node's end; at most
``MAX_CONNECTIONS`` connections are served at once (more get ``busy``); the
request line must arrive within ``REQUEST_TIMEOUT``; a reply line that a
client does not read within ``SEND_TIMEOUT`` ends the connection; a client
that hangs up ends its request (a wait, say).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import select
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from p2pnode.client import SOCKET_NAME as SOCKET_NAME  # re-exported, as the next four
from p2pnode.client import AsyncClient
from p2pnode.client import socket_path as socket_path
from p2pnode.control_request import (
    BAD_REQUEST,
    BUSY,
    INTERNAL,
    MAX_REQUEST,
    PERMISSION_DENIED,
    REQUEST_FIELDS,
    BadRequest,
    checked_request,
    error_reply,
    parse_request,
)
from p2pnode.errors import ConnectionLost as ConnectionLost
from p2pnode.errors import ControlError as ControlError
from p2pnode.errors import NodeNotRunning as NodeNotRunning
from p2pnode.errors import NotFoundError, RefusedError
from p2pnode.joblogs import follow_forwarded, job_logs
from p2pnode.testing import fault_submit
from p2pnode.version import package_version
from protocols.events import Notify
from protocols.messages import READ_ONLY_OPS

if TYPE_CHECKING:
    from p2pnode.node import Node  # imports py-libp2p: only for the server's types

log = logging.getLogger("p2pnode.control")

# --- server ---------------------------------------------------------------------


Emit = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[dict[str, Any], Emit], Awaitable[Any]]

MAX_CONNECTIONS = 32  # served at once; more are answered "busy" and closed
REQUEST_TIMEOUT = 10.0  # seconds to send the whole request line
SEND_TIMEOUT = 30.0  # seconds a reply line may wait for a client that does not read
HANGUP_POLL = 1.0  # seconds between checks whether a half-closed client is gone


async def serve_control(node: Node, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
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
    ops = operations(node)
    # Peers' queries run the very same operations, but never forward again.
    node.answer_queries_with(operations(node, forward=False))
    slots = trio.CapacityLimiter(MAX_CONNECTIONS)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(
                lambda stream: _serve_one(stream, ops, slots), [listener], handler_nursery=nursery
            )
    finally:
        path.unlink(missing_ok=True)


async def _serve_one(
    stream: trio.SocketStream, ops: dict[str, Handler], slots: trio.CapacityLimiter
) -> None:
    """One connection: one request, its progress events and one final reply.

    Never raises (but Cancelled): whatever the request does, the node goes on.
    """
    try:
        try:
            slots.acquire_nowait()
        except trio.WouldBlock:
            await _send(stream, {"ok": False, "code": BUSY, "error": _busy_message()})
            return
        try:
            await _serve_request(stream, ops)
        finally:
            slots.release()
    except (trio.BrokenResourceError, trio.ClosedResourceError, _ClientStuck):
        pass  # the client went away or stopped reading: nothing to answer
    except Exception:  # a failure while answering: never the node's end
        log.exception("control connection failed")
    finally:
        with trio.CancelScope(shield=True):
            await stream.aclose()


def _busy_message() -> str:
    return f"the node is serving {MAX_CONNECTIONS} control connections already; try again"


async def _serve_request(stream: trio.SocketStream, ops: dict[str, Handler]) -> None:
    async def emit(event: dict[str, Any]) -> None:
        await _send(stream, {"event": event})

    try:
        if not _same_user(stream):
            raise _Denied("permission denied: not the node's user")
        line, rest = b"", None
        with trio.move_on_after(REQUEST_TIMEOUT) as reading:
            line, rest = await _read_line(stream)
        if reading.cancelled_caught:
            message = f"no complete request line within {REQUEST_TIMEOUT:g} s"
            await _send(stream, {"ok": False, "code": BAD_REQUEST, "error": message})
            return
        try:
            request = parse_request(line)
        except BadRequest:
            if rest is None:  # cut off: say so, not "invalid JSON"
                message = f"request line over {MAX_REQUEST // 1024} KiB or not ended by a newline"
                await _send(stream, {"ok": False, "code": BAD_REQUEST, "error": message})
                await _discard_input(stream)
                return
            raise
        op, request = checked_request(request, frozenset(ops))
        result: Any = _HUNG_UP
        async with trio.open_nursery() as nursery:
            # A client that hangs up mid-request (Ctrl-C during a wait) ends it.
            nursery.start_soon(_cancel_on_hangup, stream, nursery.cancel_scope)
            result = await ops[op](request, emit)
            nursery.cancel_scope.cancel()
        if result is _HUNG_UP:
            return
    except _Denied as exc:
        await _send(stream, {"ok": False, "code": PERMISSION_DENIED, "error": str(exc)})
        return
    except Exception as exc:  # every failure of a request is an error reply
        if _client_gone(exc):
            return
        reply, is_bug = error_reply(exc)
        if is_bug:
            log.error("control request failed", exc_info=exc)
        await _send(stream, reply)
        return
    await _send(stream, {"ok": True, "result": result})


class _Denied(Exception):
    pass


class _ClientStuck(Exception):
    """A reply line waited ``SEND_TIMEOUT`` for the client to read it."""


_HUNG_UP = object()  # the handler was cancelled: its client closed the connection


def _client_gone(exc: BaseException) -> bool:
    """Whether ``exc`` only says the client went away (sending to it failed)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_client_gone(e) for e in exc.exceptions)
    return isinstance(exc, (trio.BrokenResourceError, trio.ClosedResourceError, _ClientStuck))


async def _send(stream: trio.SocketStream, obj: dict[str, Any]) -> None:
    """One reply line, bounded in time: a client that never reads cannot pin us."""
    try:
        data = json.dumps(obj, default=str).encode() + b"\n"
    except (TypeError, ValueError, RecursionError) as exc:  # a result we cannot encode
        log.error("cannot encode a control reply: %s", exc)
        data = json.dumps({"ok": False, "code": INTERNAL, "error": "unencodable reply"}).encode()
        data += b"\n"
    with trio.move_on_after(SEND_TIMEOUT) as sending:
        await stream.send_all(data)
    if sending.cancelled_caught:
        raise _ClientStuck("the client does not read its replies")


def _same_user(stream: trio.SocketStream) -> bool:
    creds = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.getuid())


async def _read_line(stream: trio.SocketStream) -> tuple[bytes, bytes | None]:
    """(the request line, what followed it); ``None`` if the line never ended
    (end of stream, or over ``MAX_REQUEST``: never buffered beyond it)."""
    buf = bytearray()
    while True:
        newline = buf.find(b"\n")
        if newline >= 0:
            return bytes(buf[:newline]), bytes(buf[newline + 1 :])
        if len(buf) > MAX_REQUEST:
            return bytes(buf), None
        chunk = await stream.receive_some(65536)
        if not chunk:
            return bytes(buf), None
        buf += chunk


async def _discard_input(stream: trio.SocketStream) -> None:
    """Read (bounded) what a client still sends after a refused request: a
    unix socket closed with unread data resets the connection, and the client
    would lose the reply it has not read yet."""
    left = 8 * MAX_REQUEST
    with trio.move_on_after(2):
        while left > 0:
            chunk = await stream.receive_some(65536)
            if not chunk:
                return
            left -= len(chunk)


async def _cancel_on_hangup(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    """Cancel ``scope`` once the client has closed its end.

    End of stream alone may be a half-close (``shutdown(SHUT_WR)``, as
    ``nc -N`` does) by a client still reading: then poll for the hang-up
    (POLLHUP: both directions closed).  Bytes after the request are ignored.
    """
    try:
        while await stream.receive_some(65536):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        scope.cancel()
        return
    poller = select.poll()
    poller.register(stream.socket.fileno(), select.POLLHUP)
    while not poller.poll(0):
        await trio.sleep(HANGUP_POLL)
    scope.cancel()


def operations(node: Node, *, forward: bool = True) -> dict[str, Handler]:
    """The control operations of ``node``, op name -> handler: what the control
    socket serves, and the HTTP API (``p2pnode/web``) too, so that both answer
    alike.  Each takes a request checked by ``checked_request`` and an ``emit``
    for progress events.  ``forward``: a job another peer owns is asked of its
    owner (``_resolving``)."""
    return _resolving(node, _operations(node), forward=forward)


def _operations(node: Node) -> dict[str, Handler]:
    async def ping(req: dict[str, Any], emit: Any) -> Any:
        return {
            "node_id": node.node_id,
            "addrs": node.listen_addrs(),
            "version": package_version(),
            "http": node.http_url,  # the HTTP API's address, or None (p2pnode/web)
        }

    async def submit(req: dict[str, Any], emit: Any) -> Any:
        spec = req.get("spec")
        if not isinstance(spec, (str, dict)):
            raise ValueError("submit needs a spec (YAML/JSON text or an object)")
        key = req.get("idempotency_key")  # the same key: the same job, created once
        fault_submit("kill-before-store")
        job_id = await node.submit(spec, idempotency_key=key)
        fault_submit("kill-before-reply")
        return {"job_id": job_id}

    async def update(req: dict[str, Any], emit: Any) -> Any:
        spec = req.get("spec")
        if not isinstance(spec, (str, dict)):
            raise ValueError("update needs a spec (YAML/JSON text or an object)")
        job_id = str(req["job_id"])
        return {"job_id": job_id, "version": await node.update(job_id, spec)}

    async def suspend(req: dict[str, Any], emit: Any) -> Any:
        await node.suspend(str(req["job_id"]))
        return node.describe(str(req["job_id"])).to_json()

    async def resume(req: dict[str, Any], emit: Any) -> Any:
        await node.resume(str(req["job_id"]))
        return node.describe(str(req["job_id"])).to_json()

    async def runs(req: dict[str, Any], emit: Any) -> Any:
        return [run.to_json() for run in node.runs(str(req["job_id"]))]

    async def jobs(req: dict[str, Any], emit: Any) -> Any:
        listed = node.jobs(
            state=req.get("state"),
            type=req.get("type"),
            name=req.get("name"),
            limit=req.get("limit"),
            since_ms=req.get("since"),
            runs=bool(req.get("runs", False)),
        )
        return [job.to_json() for job in listed]

    async def describe(req: dict[str, Any], emit: Any) -> Any:
        return node.describe(str(req["job_id"])).to_json()

    async def cancel(req: dict[str, Any], emit: Any) -> Any:
        await node.cancel(str(req["job_id"]), str(req.get("reason") or "stopped by user"))
        return node.describe(str(req["job_id"])).to_json()

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
        return view.to_json()

    async def peers(req: dict[str, Any], emit: Any) -> Any:
        return [peer.to_json() for peer in node.peers()]

    async def stats(req: dict[str, Any], emit: Any) -> Any:
        return node.stats().to_json()

    async def logs(req: dict[str, Any], emit: Callable[[dict[str, Any]], Awaitable[None]]) -> Any:
        return await job_logs(
            node,
            str(req["job_id"]),
            follow=bool(req.get("follow")),
            tail=req.get("tail"),
            emit=emit,
        )

    async def history(req: dict[str, Any], emit: Any) -> Any:
        return node.history(str(req["job_id"]))

    async def get(req: dict[str, Any], emit: Any) -> Any:
        files = await node.fetch_outputs(str(req["job_id"]), Path(str(req["output_dir"])))
        return {"files": [str(path) for path in files]}

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
        "logs": logs,
        "history": history,
    }


def _resolving(node: Node, ops: dict[str, Handler], *, forward: bool) -> dict[str, Handler]:
    """Every operation on a job takes a unique id prefix too, resolved here
    (``Node.resolve_job_id``).  A job this node does not know: a read-only
    operation is forwarded to the job's owner (``Node.forward``); a stop is
    refused (only the node that submitted a job stops it, and that node owns
    it); others say "no such job"."""

    def wrap(op: str, handler: Handler) -> Handler:
        async def run(req: dict[str, Any], emit: Emit) -> Any:
            text = str(req["job_id"])
            try:
                job_id = node.resolve_job_id(text)
            except NotFoundError:
                if not forward:
                    raise
                if op in READ_ONLY_OPS:
                    if req.get("follow"):  # (logs): the owner is asked again and again
                        return await follow_forwarded(
                            lambda args, emit: node.forward(op, args, emit),
                            req,
                            tail=req.get("tail"),
                            emit=emit,
                        )
                    return await node.forward(op, req, emit)
                if op == "cancel":
                    await node.forward("describe", req, _ignore)  # whose is it, if anyone's?
                    owner = node.owner_hint(text) or "another peer"
                    raise RefusedError(
                        f"job {text} is owned by {owner}: only the node that submitted it"
                        " can stop it"
                    ) from None
                owner = node.owner_hint(text)
                if owner:  # whose it is, as far as this node knows: say so
                    raise RefusedError(
                        f"job {text} is owned by {owner}: {op} works on that node only"
                    ) from None
                raise
            return await handler({**req, "job_id": job_id}, emit)

        return run

    return {
        op: wrap(op, handler) if "job_id" in REQUEST_FIELDS.get(op, {}) else handler
        for op, handler in ops.items()
    }


async def _ignore(event: dict[str, Any]) -> None:
    pass


def _offer(send: trio.MemorySendChannel[Notify], note: Notify) -> None:
    with contextlib.suppress(trio.WouldBlock):  # progress is best effort; the answer is not
        send.send_nowait(note)


# --- client ---------------------------------------------------------------------


class ControlClient(AsyncClient):
    """The name the CLI and the tests have used: ``p2pnode.AsyncClient``."""
