"""A client for a running node: ``Client`` (blocking) and ``AsyncClient``
(asyncio or trio, through anyio).

    from p2pnode import Client

    with Client() as node:                      # the node serving the default data dir
        job_id = node.submit("spec.yaml")
        view = node.wait(job_id)
        print(view.state)

Both speak the node's control socket (``<data dir>/control.sock``, JSON lines;
``p2pnode/control.py`` serves it): one connection per request, answered by
progress events and one final line.  The methods are the CLI's verbs and have
the same names on both classes; ``AsyncClient``'s are awaited, its ``logs``
async-iterated.  Views are the typed views ``Node`` returns in process
(``JobView``, ``JobSummary``, ...; each also a read-only mapping of the JSON).
``call(op, **args)`` and ``stream(op, **args)`` send any request as is.

An error reply raises a ``ControlError`` whose ``code`` is the reply's, of the
class that also says what happened in the library's terms: ``ControlNotFound``
(a ``NotFoundError``) for an unknown job, ``ControlRefused`` (a
``RefusedError``) for a refusal, ``ControlTimeout`` (a ``WaitTimeoutError``)
for a wait that ran out.  ``NodeNotRunning``: nothing serves the socket;
``ConnectionLost``: the node went away mid-request (the outcome is unknown).

This module imports neither trio nor py-libp2p (``Client`` starts no event
loop at all); ``anyio`` is imported by ``AsyncClient`` when first used.
"""

from __future__ import annotations

import builtins
import datetime
import json
import os
import socket
from collections.abc import AsyncIterator, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from p2pnode.datadir import default_data_dir
from p2pnode.errors import (
    ConnectionLost,
    ControlError,
    ControlNotFound,
    ControlRefused,
    ControlTimeout,
    NodeNotRunning,
)
from p2pnode.views import JobSummary, JobView, NodeStats, PeerView, RunView

__all__ = ["SOCKET_NAME", "AsyncClient", "Client", "socket_path"]

SOCKET_NAME = "control.sock"
RECEIVE_SIZE = 65536

# Reply codes (p2pnode/control_request.py names them) -> the class raised.
# Codes not listed raise ControlError itself (bad_request, busy, unavailable, ...).
ERROR_CLASSES: dict[str, type[ControlError]] = {
    "not_found": ControlNotFound,
    "refused": ControlRefused,
    "ambiguous": ControlRefused,  # an id prefix naming several jobs
    "permission_denied": ControlRefused,
    "timeout": ControlTimeout,
}


def socket_path(data_dir: Path) -> Path:
    return data_dir / SOCKET_NAME


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """``data_dir``, else ``$P2PNODE_DATA_DIR``, else the CLI's default."""
    if data_dir is not None:
        return Path(data_dir)
    from_env = os.environ.get("P2PNODE_DATA_DIR")
    return Path(from_env) if from_env else default_data_dir()


# --- the wire: pure helpers both clients share ------------------------------------


def request_line(op: str, args: Mapping[str, Any]) -> bytes:
    return json.dumps({"op": op, **args}).encode() + b"\n"


def error_from_reply(reply: Mapping[str, Any]) -> ControlError:
    """The exception for an error reply ``{"ok": false, "code", "error", "errors"}``."""
    code = str(reply.get("code", ""))
    cls = ERROR_CLASSES.get(code, ControlError)
    errors = reply.get("errors")
    return cls(str(reply.get("error", "error")), errors if isinstance(errors, list) else None, code)


class ReplyReader:
    """Splits received bytes into reply lines: ``{"event": ...}`` items, then
    one ``{"result": ...}`` (``done`` is set); an error reply raises."""

    def __init__(self) -> None:
        self._buffer = b""
        self.done = False

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if not data:
            raise ConnectionLost("the node closed the connection without an answer")
        self._buffer += data
        items: list[dict[str, Any]] = []
        while b"\n" in self._buffer and not self.done:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
            except ValueError:
                raise ConnectionLost(f"the node sent an unreadable line: {line[:80]!r}") from None
            if "event" in message:
                items.append({"event": message["event"]})
                continue
            if not message.get("ok"):
                raise error_from_reply(message)
            items.append({"result": message.get("result")})
            self.done = True
        return items


def not_running(data_dir: Path) -> NodeNotRunning:
    return NodeNotRunning(
        f"no node is running for data dir {data_dir} "
        f"(start one with: python -m p2pnode serve --data-dir {data_dir})"
    )


def spec_argument(spec: str | os.PathLike[str] | Mapping[str, Any]) -> str | dict[str, Any]:
    """What ``submit``/``update`` send: a mapping as is, a path's text, or YAML/JSON text.

    A ``str`` is a path when it is one line naming a file; otherwise the text.
    """
    if isinstance(spec, Mapping):
        return dict(spec)
    if isinstance(spec, os.PathLike) or _names_a_file(spec):
        return Path(spec).read_text(encoding="utf-8-sig")
    return spec


def _names_a_file(text: str) -> bool:
    if "\n" in text or text.lstrip().startswith("{"):  # YAML or JSON text
        return False
    try:
        return Path(text).is_file()
    except (OSError, ValueError):  # too long for a name, a NUL: text, not a path
        return False


def list_arguments(
    *,
    state: str | list[str] | None,
    type: str | None,
    name: str | None,
    limit: int | None,
    since: int | datetime.datetime | None,
    runs: bool,
) -> dict[str, Any]:
    """The ``jobs`` request's filters: only those given are sent."""
    args: dict[str, Any] = {}
    if state is not None:
        args["state"] = state if isinstance(state, str) else list(state)
    if type is not None:
        args["type"] = type
    if name is not None:
        args["name"] = name
    if limit is not None:
        args["limit"] = limit
    if since is not None:
        args["since"] = (
            int(since.timestamp() * 1000) if isinstance(since, datetime.datetime) else int(since)
        )
    if runs:
        args["runs"] = True
    return args


def stop_arguments(job_id: str, reason: str | None) -> dict[str, Any]:
    return {"job_id": job_id} if reason is None else {"job_id": job_id, "reason": reason}


def log_chunks(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [i["event"] for i in items if "event" in i and i["event"].get("kind") == "log"]


# --- blocking -------------------------------------------------------------------------


class Client:
    """A blocking client of the node serving ``data_dir`` (default: as the CLI).

    No event loop: usable from any script or thread.  A context manager only
    for symmetry (each request has its own connection; nothing stays open).
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        self.data_dir = resolve_data_dir(data_dir)
        self.path = socket_path(self.data_dir)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            raise not_running(self.data_dir) from None
        except BaseException:
            sock.close()
            raise
        return sock

    def stream(self, op: str, **args: Any) -> Iterator[dict[str, Any]]:
        """Progress events as ``{"event": ...}``, then ``{"result": ...}``.
        Closing the iterator early hangs up: the node ends the request."""
        sock = self._connect()
        try:
            try:
                sock.sendall(request_line(op, args))
            except OSError as exc:
                raise ConnectionLost(f"lost the connection to the node: {exc}") from None
            reader = ReplyReader()
            while not reader.done:
                try:
                    data = sock.recv(RECEIVE_SIZE)
                except OSError:
                    data = b""
                yield from reader.feed(data)
        finally:
            sock.close()

    def call(self, op: str, **args: Any) -> Any:
        """The result of one request (progress events are dropped)."""
        for item in self.stream(op, **args):
            if "result" in item:
                return item["result"]
        raise ConnectionLost("no answer")  # pragma: no cover (stream ends on its result)

    # --- the verbs ------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        """``{node_id, addrs, version}`` of the node."""
        return dict(self.call("ping"))

    def submit(
        self,
        spec: str | os.PathLike[str] | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> str:
        """Submit a spec (a mapping, YAML/JSON text or a file's path); its job id.
        The same ``idempotency_key`` again returns the same job."""
        args: dict[str, Any] = {"spec": spec_argument(spec)}
        if idempotency_key is not None:
            args["idempotency_key"] = idempotency_key
        return str(self.call("submit", **args)["job_id"])

    def wait(self, job_id: str, timeout: float | None = None) -> JobView:
        """Until the job ends (``ControlTimeout`` after ``timeout`` s; the job goes on)."""
        return JobView.from_json(self.call("wait", job_id=job_id, timeout=timeout))

    def describe(self, job_id: str) -> JobView:
        return JobView.from_json(self.call("describe", job_id=job_id))

    def list(
        self,
        *,
        state: str | builtins.list[str] | None = None,
        type: str | None = None,
        name: str | None = None,
        limit: int | None = None,
        since: int | datetime.datetime | None = None,
        runs: bool = False,
    ) -> builtins.list[JobSummary]:
        """The node's jobs, oldest first; ``since`` is epoch ms or a datetime."""
        args = list_arguments(
            state=state, type=type, name=name, limit=limit, since=since, runs=runs
        )
        return [JobSummary.from_json(row) for row in self.call("jobs", **args)]

    def logs(
        self, job_id: str, *, follow: bool = False, tail: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Log chunks ``{kind: "log", slot, execution, stream, data}`` in order;
        with ``follow`` until the job ends."""
        for item in self.stream("logs", job_id=job_id, follow=follow, tail=tail):
            yield from log_chunks([item])

    def history(self, job_id: str) -> builtins.list[dict[str, Any]]:
        """The job's events, oldest first: ``{at, at_ms, event, node, slot, detail}``."""
        return list(self.call("history", job_id=job_id))

    def get_outputs(
        self, job_id: str, output_dir: str | os.PathLike[str]
    ) -> builtins.list[Path]:
        """Fetch the job's outputs (hash-verified) into ``output_dir``; the files written."""
        target = str(Path(output_dir).resolve())
        return [Path(f) for f in self.call("get", job_id=job_id, output_dir=target)["files"]]

    def stop(self, job_id: str, reason: str | None = None) -> JobView:
        return JobView.from_json(self.call("cancel", **stop_arguments(job_id, reason)))

    def runs(self, job_id: str) -> builtins.list[RunView]:
        return [RunView.from_json(row) for row in self.call("runs", job_id=job_id)]

    def update(self, job_id: str, spec: str | os.PathLike[str] | Mapping[str, Any]) -> int:
        """Give a daemon, service or cron job a new spec; its new version."""
        return int(self.call("update", job_id=job_id, spec=spec_argument(spec))["version"])

    def suspend(self, job_id: str) -> JobView:
        return JobView.from_json(self.call("suspend", job_id=job_id))

    def resume(self, job_id: str) -> JobView:
        return JobView.from_json(self.call("resume", job_id=job_id))

    def nodes(self) -> builtins.list[PeerView]:
        """The node itself and the peers in its view."""
        return [PeerView.from_json(row) for row in self.call("peers")]

    def stats(self) -> NodeStats:
        return NodeStats.from_json(self.call("stats"))


# --- asyncio or trio ------------------------------------------------------------------


class AsyncClient:
    """The same verbs as ``Client``, awaited: works under asyncio and trio (anyio).

    A request cancelled (a timeout, a cancel scope) closes its connection,
    and the node ends the request (a ``wait``, a followed ``logs``).
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None) -> None:
        self.data_dir = resolve_data_dir(data_dir)
        self.path = socket_path(self.data_dir)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        pass

    async def stream(self, op: str, **args: Any) -> AsyncIterator[dict[str, Any]]:
        """Progress events as ``{"event": ...}``, then ``{"result": ...}``."""
        import anyio  # here: the blocking client and the CLI's quick commands never need it

        try:
            connection = await anyio.connect_unix(str(self.path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise not_running(self.data_dir) from None
        async with connection:
            try:
                await connection.send(request_line(op, args))
            except (anyio.BrokenResourceError, OSError) as exc:
                raise ConnectionLost(f"lost the connection to the node: {exc}") from None
            reader = ReplyReader()
            while not reader.done:
                try:
                    data = await connection.receive(RECEIVE_SIZE)
                except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    data = b""
                for item in reader.feed(data):
                    yield item

    async def call(self, op: str, **args: Any) -> Any:
        """The result of one request (progress events are dropped)."""
        async for item in self.stream(op, **args):
            if "result" in item:
                return item["result"]
        raise ConnectionLost("no answer")  # pragma: no cover (stream ends on its result)

    # --- the verbs (documented on Client) ------------------------------------------

    async def ping(self) -> dict[str, Any]:
        return dict(await self.call("ping"))

    async def submit(
        self,
        spec: str | os.PathLike[str] | Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> str:
        args: dict[str, Any] = {"spec": spec_argument(spec)}
        if idempotency_key is not None:
            args["idempotency_key"] = idempotency_key
        return str((await self.call("submit", **args))["job_id"])

    async def wait(self, job_id: str, timeout: float | None = None) -> JobView:
        return JobView.from_json(await self.call("wait", job_id=job_id, timeout=timeout))

    async def describe(self, job_id: str) -> JobView:
        return JobView.from_json(await self.call("describe", job_id=job_id))

    async def list(
        self,
        *,
        state: str | builtins.list[str] | None = None,
        type: str | None = None,
        name: str | None = None,
        limit: int | None = None,
        since: int | datetime.datetime | None = None,
        runs: bool = False,
    ) -> builtins.list[JobSummary]:
        args = list_arguments(
            state=state, type=type, name=name, limit=limit, since=since, runs=runs
        )
        return [JobSummary.from_json(row) for row in await self.call("jobs", **args)]

    async def logs(
        self, job_id: str, *, follow: bool = False, tail: int | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        async for item in self.stream("logs", job_id=job_id, follow=follow, tail=tail):
            for chunk in log_chunks([item]):
                yield chunk

    async def history(self, job_id: str) -> builtins.list[dict[str, Any]]:
        return list(await self.call("history", job_id=job_id))

    async def get_outputs(
        self, job_id: str, output_dir: str | os.PathLike[str]
    ) -> builtins.list[Path]:
        target = str(Path(output_dir).resolve())
        answer = await self.call("get", job_id=job_id, output_dir=target)
        return [Path(f) for f in answer["files"]]

    async def stop(self, job_id: str, reason: str | None = None) -> JobView:
        return JobView.from_json(await self.call("cancel", **stop_arguments(job_id, reason)))

    async def runs(self, job_id: str) -> builtins.list[RunView]:
        return [RunView.from_json(row) for row in await self.call("runs", job_id=job_id)]

    async def update(self, job_id: str, spec: str | os.PathLike[str] | Mapping[str, Any]) -> int:
        answer = await self.call("update", job_id=job_id, spec=spec_argument(spec))
        return int(answer["version"])

    async def suspend(self, job_id: str) -> JobView:
        return JobView.from_json(await self.call("suspend", job_id=job_id))

    async def resume(self, job_id: str) -> JobView:
        return JobView.from_json(await self.call("resume", job_id=job_id))

    async def nodes(self) -> builtins.list[PeerView]:
        return [PeerView.from_json(row) for row in await self.call("peers")]

    async def stats(self) -> NodeStats:
        return NodeStats.from_json(await self.call("stats"))
