"""Any node answers: control operations on jobs another peer owns.

The asking half (``JobForwarder.ask``) feeds a ``QueryJob`` to the core, which
sends ``job_query`` to the job's owner (or to its whole view when it knows no
owner, docs/protocol.md section 8, "Job queries"), waits for the core's
``job_query_done`` and turns the answers into the operation's answer or one
clear error: ``NotFoundError`` ("no such job: X"), ``UnreachableError`` ("job
X is owned by <peer>, not reachable"), ``AmbiguousJobError``.

The answering half runs the operation a peer asked for exactly as the control
socket runs it locally (``ops``: the control socket's own handlers, once it
serves), collects its progress events and result into one bounded answer and
hands it back to the core.  Generic: any read-only operation the control
socket has (``protocols.queries.READ_ONLY_OPS``) rides along.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2pnode.errors import (
    AmbiguousJobError,
    FetchError,
    NodeStoppedError,
    NotFoundError,
    P2PNodeError,
    RefusedError,
    UnreachableError,
)
from p2pnode.runtime import NodeRuntime
from protocols.errors import LocalProtocolError
from protocols.events import AnswerQuery, Notify, QueryJob
from protocols.messages import MAX_ANSWER_BYTES
from protocols.node import NodeCore
from protocols.queries import Answer

log = logging.getLogger("p2pnode.forwarding")

Emit = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[dict[str, Any], Emit], Awaitable[Any]]

OWNER_TIMEOUT = 5.0  # seconds to wait for the owner a hint names
VIEW_TIMEOUT = 3.0  # seconds to wait for the peers of the view (no hint)
ANSWER_TIMEOUT = 10.0  # seconds an operation run for a peer may take
MAX_EVENTS = 10_000  # progress events kept in one answer (the byte bound applies too)


class QueryFailed(FetchError):
    """The owner answered, but with an error (busy, too large, failed): the
    control socket's code ``unavailable``."""


class JobForwarder:
    def __init__(self, runtime: NodeRuntime, core: NodeCore, ops: dict[str, Handler]) -> None:
        self._runtime = runtime
        self._core = core
        self.ops = ops  # the operations peers may have run here
        self._closed: dict[str, trio.Event] = {}
        self._send: trio.MemorySendChannel[Notify] | None = None

    def on_notify(self, note: Notify) -> None:
        """A runtime listener (synchronous, in action order)."""
        if note.kind == "job_query_done":
            event = self._closed.get(str(note.data["query_id"]))
            if event is not None:
                event.set()
        elif note.kind == "job_query" and self._send is not None:
            try:
                self._send.send_nowait(note)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                # The core bounds what it serves: only a stuck or stopping driver.
                # The asker's timeout answers for us; the core forgets it at SERVE_TIMEOUT.
                log.warning("dropped a job query from %s: not answering now", note.data["peer"])

    async def run(self) -> None:
        """Answer the queries peers send until cancelled."""
        send, receive = trio.open_memory_channel[Notify](64)
        self._send = send
        async with trio.open_nursery() as nursery:
            async for note in receive:
                nursery.start_soon(self._serve, note)

    # --- asking -------------------------------------------------------------------

    async def ask(self, op: str, job: str, args: dict[str, Any], emit: Emit) -> Any:
        """Run ``op`` on ``job`` (an id or unique id prefix this node does not
        know) at its owner; replays the owner's progress events through
        ``emit`` and returns its result."""
        _job_id, owner = self._core.queries.owner_of(job)
        query_id = f"q-{secrets.token_hex(8)}"
        closed = self._closed[query_id] = trio.Event()
        try:
            query = QueryJob(
                query_id=query_id,
                op=op,
                job=job,
                args=json.dumps(args),
                timeout=OWNER_TIMEOUT if owner else VIEW_TIMEOUT,
            )
            try:
                await self._runtime.query(query)
            except LocalProtocolError as exc:  # the core refused: too many queries in flight
                if isinstance(exc, P2PNodeError):
                    raise
                raise RefusedError(str(exc)) from exc
            # The core's timer closes the query; this bound only guards a node
            # that stops meanwhile (its timers no longer fire).
            with trio.move_on_after(query.timeout + 5.0):
                await closed.wait()
        finally:
            del self._closed[query_id]
        if not closed.is_set():
            raise NodeStoppedError("the node stopped while asking the job's owner")
        try:
            answers, hinted, silent = self._core.queries.take(query_id)
        except KeyError:  # evicted: MAX_PENDING other queries closed before we looked
            raise QueryFailed(f"the answers about job {job} were dropped; try again") from None
        answer = _decide(job, answers, hinted, silent)
        for event in answer.get("events", []):
            await emit(event)
        return answer.get("result")

    # --- answering ----------------------------------------------------------------

    async def _serve(self, note: Notify) -> None:
        data = note.data
        peer, query_id, op = str(data["peer"]), str(data["query_id"]), str(data["op"])
        job_id = str(data["job_id"])
        status, detail, body = "ok", "", b""
        try:
            body = await self._run(op, job_id, dict(data["args"]))
        except Exception as exc:
            status, detail = _status_of(exc), str(exc) or type(exc).__name__
            if status == "error":
                log.warning("job query %s on %s from %s failed: %s", op, job_id, peer, detail)
        answer = AnswerQuery(
            peer=peer, query_id=query_id, status=status, job_id=job_id, detail=detail, answer=body
        )
        try:
            await self._runtime.answer_query(answer)
        except NodeStoppedError:
            pass  # the node stops: nobody to answer
        except Exception:  # never the node's end: a peer's query is best effort
            log.exception("could not answer job query %s from %s", query_id, peer)

    async def _run(self, op: str, job_id: str, args: dict[str, Any]) -> bytes:
        # (imported here: the control request checks import the outputs and blobs modules)
        from p2pnode.control_request import checked_request

        handler = self.ops.get(op)
        if handler is None:
            raise QueryFailed(f"node {self._core.node_id} does not answer {op!r}")
        # Checked as a control request from this node's own user would be; a
        # follow would hold the answer open: a forwarded operation is a snapshot.
        _op, request = checked_request({**args, "op": op, "job_id": job_id}, frozenset(self.ops))
        if "follow" in request:
            request["follow"] = False
        events: list[dict[str, Any]] = []
        size = 0

        async def collect(event: dict[str, Any]) -> None:
            nonlocal size
            size += len(json.dumps(event, default=str))
            if len(events) >= MAX_EVENTS or size > MAX_ANSWER_BYTES:
                raise QueryFailed(f"the answer is over {MAX_ANSWER_BYTES // 1024} KiB")
            events.append(event)

        with trio.move_on_after(ANSWER_TIMEOUT) as scope:
            result = await handler(request, collect)
        if scope.cancelled_caught:
            raise QueryFailed(f"{op} took longer than {ANSWER_TIMEOUT:g} s")
        return json.dumps({"events": events, "result": result}, default=str).encode()


def _status_of(exc: BaseException) -> str:
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, NotFoundError):
        return "not_found"
    if isinstance(exc, (RefusedError, AmbiguousJobError)):
        return "refused"
    return "error"


def _decide(job: str, answers: list[Answer], hinted: str, silent: list[str]) -> dict[str, Any]:
    """The owner's answer among the peers' answers, or the error that says why not."""
    oks: dict[str, Answer] = {}
    for a in answers:
        if a.status != "ok":
            continue
        if a.job_id in oks:  # two peers claim one job: one of them lies
            raise QueryFailed(
                f"job {a.job_id}: conflicting answers from {oks[a.job_id].peer} and {a.peer}"
            )
        oks[a.job_id] = a
    if len(oks) > 1:
        raise AmbiguousJobError(f"job id prefix {job!r} names several jobs: {', '.join(oks)}")
    if oks:
        answer: dict[str, Any] = json.loads(next(iter(oks.values())).answer)
        return answer
    for a in answers:
        if a.status == "ambiguous":
            raise AmbiguousJobError(f"job id prefix {job!r} names several jobs: {a.detail}")
    for a in answers:
        if a.status == "refused":
            raise RefusedError(a.detail or f"job {job}: refused by its owner {a.peer}")
        if a.status == "not_found" and a.job_id:  # the owner: the operation's own not-found
            raise NotFoundError(a.detail or f"no such job: {job}")
    for a in answers:
        if a.status in ("busy", "error", "too_large"):
            raise QueryFailed(f"job {a.job_id or job} (owner {a.peer}): {a.detail or a.status}")
    answered = {a.peer for a in answers}
    owners = [hinted] if hinted else []
    owners += [a.owner for a in answers if a.owner and a.owner not in answered]
    if owners:
        if hinted and hinted in answered:  # the owner we knew of no longer has it
            raise NotFoundError(f"no such job: {job}")
        raise UnreachableError(f"job {job} is owned by {owners[0]}, not reachable")
    del silent  # peers that did not answer know nothing we could tell
    raise NotFoundError(f"no such job: {job}")
