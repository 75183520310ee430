"""The ``/api/v1`` endpoints: the control operations over HTTP.

Every endpoint runs the very handler the control socket runs
(``p2pnode.control.operations``), on a request checked by the same
``checked_request``, so a body is byte for byte the control answer's
``result`` (JSON as the socket writes it).  A failure is the control error
reply without ``ok`` (``{"code", "error", "errors"?}``) under the HTTP status
of its code (``STATUS``); a bug is a 500 whose body names no more than the
control reply does (never a traceback).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
from typing import TYPE_CHECKING, Any

import trio
from starlette.requests import Request
from starlette.responses import Response

from p2pnode.control import Handler, operations
from p2pnode.control_request import (
    AMBIGUOUS,
    BadRequest,
    checked_request,
    error_reply,
    parse_request,
)
from p2pnode.web.sse import EventStream, Sink, encode

if TYPE_CHECKING:
    from p2pnode.node import Node

log = logging.getLogger("p2pnode.web")

# The HTTP status of each control error code (docs/http.md).
STATUS = {
    "bad_request": 400,
    "invalid_spec": 400,
    "unknown_op": 400,
    "not_found": 404,
    "ambiguous": 409,
    "refused": 409,
    "permission_denied": 403,
    "unreachable": 502,
    "timeout": 504,
    "busy": 503,
    "unavailable": 503,
    "internal": 500,
}
NODES_EVERY = 2.0  # seconds between looks at the peer table on /api/v1/events
COALESCE = 0.25  # seconds: job changes arriving together are sent together
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")
TRUE, FALSE = ("true", "1", "yes"), ("false", "0", "no", "")


async def _ignore(event: dict[str, Any]) -> None:
    pass


class Api:
    """The endpoints of one node (routes in ``p2pnode.web.app``)."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.ops: dict[str, Handler] = operations(node)
        self.streams: set[EventStream] = set()  # SSE streams open now

    async def call(self, op: str, args: dict[str, Any], emit: Any = _ignore) -> Any:
        """Run control operation ``op`` as the control socket would."""
        name, request = checked_request({**args, "op": op}, frozenset(self.ops))
        return await self.ops[name](request, emit)

    # --- endpoints -----------------------------------------------------------------

    async def healthz(self, request: Request) -> Response:
        try:
            ping = await self.call("ping", {})
        except Exception as exc:
            return error_response(exc)
        return json_response({"ok": True, "node_id": ping["node_id"], "version": ping["version"]})

    async def list_jobs(self, request: Request) -> Response:
        return await self._answer("jobs", lambda: list_filters(request))

    async def submit(self, request: Request) -> Response:
        try:
            body = await request.body()
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            spec: str | dict[str, Any]
            if kind in YAML_TYPES:
                try:
                    spec = body.decode("utf-8")
                except UnicodeDecodeError:
                    raise BadRequest("the YAML spec is not UTF-8 text") from None
            elif not body.strip():
                raise BadRequest(
                    "the body must be the job spec: a JSON object, or YAML text sent as"
                    " Content-Type: application/yaml"
                )
            else:
                spec = parse_request(body)  # the control socket's JSON checks
            args: dict[str, Any] = {"spec": spec}
            key = request.headers.get("idempotency-key")
            if key is not None:
                args["idempotency_key"] = key
            return json_response(await self.call("submit", args), status=201)
        except Exception as exc:
            return error_response(exc)

    async def describe(self, request: Request) -> Response:
        return await self._answer("describe", lambda: _job(request))

    async def stop(self, request: Request) -> Response:
        try:
            body = await request.body()
            args = _job(request)
            if body.strip():
                sent = parse_request(body)
                if "reason" in sent:
                    args["reason"] = sent["reason"]
            return json_response(await self.call("cancel", args))
        except Exception as exc:
            return error_response(exc)

    async def history(self, request: Request) -> Response:
        return await self._answer("history", lambda: _job(request))

    async def runs(self, request: Request) -> Response:
        return await self._answer("runs", lambda: _job(request))

    async def nodes(self, request: Request) -> Response:
        return await self._answer("peers", dict)

    async def stats(self, request: Request) -> Response:
        return await self._answer("stats", dict)

    async def logs(self, request: Request) -> Response | EventStream:
        try:
            args = _job(request)
            tail = request.query_params.get("tail")
            if tail is not None:
                args["tail"] = _integer("tail", tail)
            follow = _flag("follow", request.query_params.get("follow"))
            streamed = follow or "text/event-stream" in request.headers.get("accept", "")
        except Exception as exc:
            return error_response(exc)
        if streamed:
            return self._stream(self._follow_logs(args), f"logs {args['job_id']}")
        chunks: list[dict[str, Any]] = []

        async def collect(event: dict[str, Any]) -> None:
            chunks.append(event)

        try:
            answer = await self.call("logs", args, collect)
        except Exception as exc:
            return error_response(exc)
        return json_response({**answer, "chunks": chunks})

    async def events(self, request: Request) -> Response | EventStream:
        try:
            filters = list_filters(request)
            checked_request({**filters, "op": "jobs"}, frozenset(self.ops))
        except Exception as exc:
            return error_response(exc)
        return self._stream(self._job_events(filters), "events")

    async def metrics(self, request: Request) -> Response:
        try:  # the metrics module may be missing from a build: then say so
            from p2pnode.web.metrics import render_metrics  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            body = {"code": "unavailable", "error": "metrics are not available in this build"}
            return json_response(body, status=503)
        try:
            data, content_type = render_metrics(self.node)
        except Exception as exc:
            return error_response(exc)
        return Response(data, media_type=content_type)

    # --- helpers ---------------------------------------------------------------------

    async def _answer(self, op: str, args: Any) -> Response:
        try:
            return json_response(await self.call(op, args()))
        except Exception as exc:
            return error_response(exc)

    def _stream(self, produce: Any, what: str) -> EventStream:
        return EventStream(produce, error_body=error_body, live=self.streams, what=what)

    def _follow_logs(self, args: dict[str, Any]) -> Any:
        async def produce(sink: Sink) -> None:
            async def emit(event: dict[str, Any]) -> None:
                await sink.event("log", event)

            answer = await self.call("logs", {**args, "follow": True}, emit)
            await sink.event("end", answer)

        return produce

    def _job_events(self, filters: dict[str, Any]) -> Any:
        """The ``/api/v1/events`` producer: a snapshot, then each change."""

        async def produce(sink: Sink) -> None:
            # Subscribed before the snapshot: no change slips in between.
            with self.node.watch() as notes:
                jobs = await self.call("jobs", filters)
                nodes = await self.call("peers", {})
                await sink.event("snapshot", {"jobs": jobs, "nodes": nodes})
                seen = {job["job_id"]: job for job in jobs}
                seen_nodes = _nodes_key(nodes)
                wake_send, wake = trio.open_memory_channel[None](1)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_signal_changes, notes, wake_send, nursery.cancel_scope)
                    while True:
                        with trio.move_on_after(NODES_EVERY):
                            await wake.receive()
                            await trio.sleep(COALESCE)
                        listed = await self.call("jobs", filters)
                        for job in listed:
                            if seen.get(job["job_id"]) != job:
                                seen[job["job_id"]] = job
                                await sink.event("job", job)
                        # Out of the filter now (a state filter, a limit's
                        # window) or forgotten: said once, so a client
                        # drops the row instead of showing a stale state.
                        for job_id in seen.keys() - {job["job_id"] for job in listed}:
                            del seen[job_id]
                            await sink.event("left", {"job_id": job_id})
                        nodes = await self.call("peers", {})
                        if _nodes_key(nodes) != seen_nodes:
                            seen_nodes = _nodes_key(nodes)
                            await sink.event("nodes", nodes)

        return produce


async def _signal_changes(
    notes: trio.MemoryReceiveChannel[Any], wake: trio.MemorySendChannel[None], scope: Any
) -> None:
    """A wake-up per job notification (at most one pending); the stream ends
    with the node (its notifications end)."""
    async for note in notes:
        if note.data.get("job_id"):
            with contextlib.suppress(trio.WouldBlock):  # a look is due anyway
                wake.send_nowait(None)
    scope.cancel()


def _nodes_key(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The peer table without what changes every second (``last_seen_s``)."""
    return [{k: v for k, v in peer.items() if k != "last_seen_s"} for peer in nodes]


# --- requests and answers -------------------------------------------------------------


def json_response(value: Any, status: int = 200) -> Response:
    return Response(encode(value), status_code=status, media_type="application/json")


def error_body(exc: BaseException) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON body of a failed request."""
    reply, is_bug = error_reply(exc)
    if is_bug:
        log.error("HTTP request failed", exc_info=exc)
    body = {k: v for k, v in reply.items() if k != "ok"}
    if body["code"] == AMBIGUOUS:
        body["candidates"] = _candidates(exc, str(body["error"]))
    return STATUS.get(str(body["code"]), 500), body


def error_response(exc: BaseException) -> Response:
    status, body = error_body(exc)
    return json_response(body, status=status)


def _candidates(exc: BaseException, message: str) -> list[str]:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    known = getattr(exc, "candidates", None)
    if known:
        return list(known)
    # A peer's refusal (forwarded) says them in its message only.
    _, found, listed = message.partition("names several jobs: ")
    return [c.strip() for c in listed.split(",") if c.strip()] if found else []


def _job(request: Request) -> dict[str, Any]:
    return {"job_id": request.path_params["job_id"]}


def list_filters(request: Request) -> dict[str, Any]:
    """The ``jobs`` request of ``?state=S&state=S2&type=T&name=N&limit=N&since=..&runs=``."""
    query = request.query_params
    args: dict[str, Any] = {}
    states = query.getlist("state")
    if states:
        args["state"] = states
    for field in ("type", "name"):
        if field in query:
            args[field] = query[field]
    if "limit" in query:
        args["limit"] = _integer("limit", query["limit"])
    if "since" in query:
        args["since"] = _since(query["since"])
    if _flag("runs", query.get("runs")):
        args["runs"] = True
    return args


def _integer(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {text[:40]!r}") from None


def _flag(name: str, text: str | None) -> bool:
    if text is None or text.lower() in FALSE:
        return False
    if text.lower() in TRUE:
        return True
    raise BadRequest(f"{name} must be true or false, got {text[:40]!r}")


def _since(text: str) -> int:
    """Unix milliseconds, or an ISO-8601 time (UTC unless it says otherwise)."""
    if text.strip().isdigit():
        return int(text)
    try:
        moment = datetime.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"since must be unix milliseconds or an ISO-8601 time, got {text[:40]!r}"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return max(0, round(moment.timestamp() * 1000))


__all__ = ["STATUS", "Api", "error_body", "error_response", "json_response", "list_filters"]
