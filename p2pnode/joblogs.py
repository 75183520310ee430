"""``job logs``: a job's output, live while it runs and complete after.

Per slot, its latest execution's output (a retried slot switches to the new
execution as it starts).  Where it comes from:

* while it runs: what the holder streamed to us, the owner
  (``Node.live_output``, ``protocols/logs.py``), lost pieces marked
  ``[N bytes lost]``;
* once it ended: the complete log, a blob manifest (``stdout``, ``stderr``)
  on the holder, fetched and hash-verified like outputs; with ``follow``
  only what the live stream had not shown yet is printed from it;
* failing both (an older holder, a lost execution): the result's tails.

``tail`` keeps the last N lines of each stream of the first look; with
``follow`` everything after it is shown.

A job another peer owns is followed through its owner
(``follow_forwarded``): a forwarded operation answers a snapshot, so the
owner is asked again every ``FORWARD_RECHECK`` seconds and each stream's text
past what was already shown is emitted, until the job has ended.  Each piece is handed to ``emit``
as ``{"kind": "log", "slot", "execution", "stream", "data"}``.
"""

from __future__ import annotations

import codecs
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import attrs
import trio

from p2pnode.blobs import BlobError, BlobStore
from p2pnode.outputs import FetchError, fetch_blob
from p2pnode.views import ExecutionView, JobView
from protocols.events import Notify
from protocols.logs import ExecutionLog
from protocols.messages import LOG_STREAMS
from protocols.states import JOB_TERMINAL

Emit = Callable[[dict[str, Any]], Awaitable[None]]

PIECE = 64 * 1024  # characters per emitted event
RECHECK = 1.0  # seconds between looks while following, notifications aside
FORWARD_RECHECK = 1.0  # seconds between snapshots asked of another peer's job
ENDED = frozenset(state.value for state in JOB_TERMINAL)
Ask = Callable[[dict[str, Any], Emit], Awaitable[Any]]


class LogSource(Protocol):
    """What this module needs of a ``p2pnode.node.Node``."""

    @property
    def transport(self) -> Any: ...
    @property
    def blobs(self) -> BlobStore: ...
    def describe(self, job_id: str) -> JobView: ...
    def live_output(self, execution_id: str) -> ExecutionLog | None: ...
    def watch(self) -> trio.MemoryReceiveChannel[Notify]: ...


@attrs.define
class _Cursor:
    """How far one execution's output was shown."""

    execution_id: str
    piece: int = 0  # the next live piece to show
    offsets: dict[str, int] = attrs.field(factory=lambda: dict.fromkeys(LOG_STREAMS, 0))
    decoders: dict[str, Any] = attrs.field(
        factory=lambda: {s: codecs.getincrementaldecoder("utf-8")("replace") for s in LOG_STREAMS}
    )
    complete: bool = False  # the complete log (or the tails) was shown: nothing more comes


async def job_logs(
    node: LogSource, job_id: str, *, follow: bool, tail: int | None, emit: Emit
) -> dict[str, Any]:
    """Emit the job's output (see the module docstring); the final answer."""
    view = node.describe(job_id)
    cursors: dict[int, _Cursor] = {}
    first = True
    with node.watch() as events:
        while True:
            for slot in view.slots:
                if not slot.executions:
                    continue
                execution = slot.executions[-1]
                cursor = cursors.get(slot.slot)
                if cursor is None or cursor.execution_id != execution.execution_id:
                    cursor = cursors[slot.slot] = _Cursor(execution.execution_id)
                await _show(node, slot.slot, execution, cursor, tail if first else None, emit)
            first = False
            # (Once the job ended, every latest execution has ended: its
            # complete log, or all there will be of it, was shown above.)
            if not follow or view.terminal:
                return {"job_id": view.job_id, "state": view.state}
            await _next_change(events, job_id)
            view = node.describe(job_id)


async def follow_forwarded(
    ask: Ask, request: dict[str, Any], *, tail: int | None, emit: Emit
) -> dict[str, Any]:
    """``logs --follow`` of a job another peer owns: ``ask`` runs ``logs``
    (without follow) at its owner.  Each answer holds the whole output so far
    of every slot's latest execution; what is new is what lies past the
    characters already shown of that execution's stream."""
    shown: dict[tuple[Any, Any, Any], int] = {}
    first = True
    while True:
        got: list[dict[str, Any]] = []
        snapshot = {k: v for k, v in request.items() if k not in ("follow", "tail")}
        result = await ask(snapshot, _appender(got))
        texts: dict[tuple[Any, Any, Any], str] = {}
        for event in got:
            if event.get("kind") == "log":
                key = (event.get("slot"), event.get("execution"), event.get("stream"))
                texts[key] = texts.get(key, "") + str(event.get("data", ""))
        for key, text in texts.items():
            slot, execution, stream = key
            new = text[shown.get(key, 0) :]
            shown[key] = max(len(text), shown.get(key, 0))
            if first and tail is not None:
                new = "".join(t for _s, t in _last_lines([(str(stream), new)], tail))
            for start in range(0, len(new), PIECE):
                await emit(
                    {
                        "kind": "log",
                        "slot": slot,
                        "execution": execution,
                        "stream": stream,
                        "data": new[start : start + PIECE],
                    }
                )
        first = False
        if not isinstance(result, dict) or result.get("state") in ENDED:
            return result if isinstance(result, dict) else {"state": None}
        await trio.sleep(FORWARD_RECHECK)


def _appender(into: list[dict[str, Any]]) -> Emit:
    async def append(event: dict[str, Any]) -> None:
        into.append(event)

    return append


async def _next_change(events: trio.MemoryReceiveChannel[Notify], job_id: str) -> None:
    """Until something about the job happened (or ``RECHECK`` passed)."""
    with trio.move_on_after(RECHECK):
        async for note in events:
            if note.data.get("job_id") == job_id:
                return


async def _show(
    node: LogSource,
    slot: int,
    execution: ExecutionView,
    cursor: _Cursor,
    tail: int | None,
    emit: Emit,
) -> None:
    if cursor.complete:
        return
    ended = execution.state not in ("granted", "running")
    pieces: list[tuple[str, bytes]] = []
    live = node.live_output(execution.execution_id)
    if live is not None:
        for stream, offset, data in live.since(cursor.piece):
            pieces.append((stream, data))
            cursor.offsets[stream] = offset
        cursor.piece = live.end
    if ended:
        full = await _complete_log(node, execution)
        if full is not None:
            for stream in LOG_STREAMS:
                rest = full.get(stream, b"")[cursor.offsets[stream] :]
                if rest:
                    pieces.append((stream, rest))
                    cursor.offsets[stream] += len(rest)
            cursor.complete = True
        elif execution.state != "running":
            if live is None:  # nothing streamed: the result's tails are all we have
                for stream, text in (
                    ("stdout", execution.stdout_tail),
                    ("stderr", execution.stderr_tail),
                ):
                    if text:
                        pieces.append((stream, text.encode()))
            cursor.complete = True
    texts = [(stream, _decode(cursor, stream, data)) for stream, data in pieces]
    if tail is not None:
        texts = _last_lines(texts, tail)
    for stream, text in texts:
        for start in range(0, len(text), PIECE):
            await emit(
                {
                    "kind": "log",
                    "slot": slot,
                    "execution": execution.execution_id,
                    "stream": stream,
                    "data": text[start : start + PIECE],
                }
            )


def _decode(cursor: _Cursor, stream: str, data: bytes) -> str:
    return str(cursor.decoders[stream].decode(data))


def _last_lines(texts: list[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    """The last ``count`` lines of each stream (a last line without its
    newline counts as a line)."""
    out = []
    for stream in LOG_STREAMS:
        text = "".join(t for s, t in texts if s == stream)
        if not text or count <= 0:
            continue
        lines = text.splitlines(keepends=True)
        out.append((stream, "".join(lines[-count:])))
    return out


async def _complete_log(node: LogSource, execution: ExecutionView) -> dict[str, bytes] | None:
    """The execution's complete output from its holder (None if it has none
    or cannot deliver it now)."""
    manifest_id = execution.log_manifest
    if not manifest_id:
        return None
    try:
        with trio.fail_after(60):
            if not node.blobs.has(manifest_id):
                await fetch_blob(node.transport, node.blobs, execution.node, manifest_id)
            out = {}
            for entry in node.blobs.read_manifest(manifest_id):
                digest = f"sha256:{entry.sha256}"
                await fetch_blob(node.transport, node.blobs, execution.node, digest)
                out[entry.path] = await trio.to_thread.run_sync(node.blobs.read_bytes, digest)
            return out
    except (FetchError, BlobError, ConnectionError, OSError, trio.TooSlowError):
        return None


__all__ = ["LogSource", "follow_forwarded", "job_logs"]
