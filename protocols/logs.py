"""Live task output: the holder's sending side and the owner's receiving side.

A running execution's stdout and stderr travel to the owner as ``log_chunk``
messages (docs/protocol.md, "Live output"), one numbered sequence per
(execution, stream):

* **Bounded.**  A chunk carries at most ``MAX_LOG_CHUNK`` bytes; the holder
  keeps at most ``MAX_UNACKED`` bytes of unacknowledged chunks per stream (the
  oldest go first); the owner keeps at most ``MAX_KEPT`` bytes per execution
  for readers and ``MAX_PENDING`` out-of-order chunks per stream.  The driver
  rate-limits what reaches the holder (``ExecutionOutput.skipped`` counts what
  it dropped); the complete output is kept apart, as a blob on the holder.
* **Ordered, deduplicated.**  The owner delivers chunks in ``seq`` order;
  a ``seq`` already delivered is a duplicate and ignored.
* **Gaps.**  A missing chunk is waited for while the holder still keeps it
  (``first_seq`` says which it keeps; it retransmits unacknowledged chunks
  with its renewals); once the holder has let it go, or the offsets show
  bytes the driver dropped, the owner delivers ``[N bytes lost]`` instead.
* **Fenced.**  The owner takes chunks only from the holder of the execution
  and only for the slot's current epoch (``protocols/owner/logs.py``).

Pure: no clock, no I/O; the cores own one ``LogSender`` per held execution
and stream, and one ``ExecutionLog`` per owned execution that sent output.
"""

from __future__ import annotations

from collections import OrderedDict, deque

import attrs

from protocols.messages import LOG_STREAMS, MAX_LOG_CHUNK, LogChunk

MAX_UNACKED = 64 * 1024  # holder: unacknowledged bytes kept per stream for retransmission
MAX_PENDING = 64  # owner: out-of-order chunks held per stream while waiting for a gap
MAX_KEPT = 1024 * 1024  # owner: bytes of output kept per execution for readers
MAX_LOGGED_EXECUTIONS = 64  # owner: executions whose live output is kept


def lost_marker(count: int) -> bytes:
    return f"\n[{count} bytes lost]\n".encode()


@attrs.define
class LogSender:
    """The holder's side of one (execution, stream)."""

    execution_id: str
    epoch: int
    stream: str
    next_seq: int = 1
    offset: int = 0  # bytes of the stream so far (sent, dropped or skipped)
    unacked: deque[LogChunk] = attrs.field(factory=deque)
    unacked_bytes: int = 0

    def write(self, data: bytes, skipped: int = 0) -> list[LogChunk]:
        """New output (after ``skipped`` bytes the driver dropped): the chunks to send."""
        self.offset += skipped
        chunks = []
        for start in range(0, len(data), MAX_LOG_CHUNK):
            piece = data[start : start + MAX_LOG_CHUNK]
            chunk = LogChunk(
                execution_id=self.execution_id,
                epoch=self.epoch,
                stream=self.stream,
                seq=self.next_seq,
                first_seq=self.next_seq,  # set below, once the buffer is trimmed
                offset=self.offset,
                data=piece,
            )
            self.next_seq += 1
            self.offset += len(piece)
            self.unacked.append(chunk)
            self.unacked_bytes += len(piece)
            chunks.append(chunk)
        while self.unacked_bytes > MAX_UNACKED and len(self.unacked) > 1:
            self.unacked_bytes -= len(self.unacked.popleft().data)
        floor = self.first_seq
        return [attrs.evolve(c, first_seq=floor) for c in chunks if c.seq >= floor]

    @property
    def first_seq(self) -> int:
        return self.unacked[0].seq if self.unacked else self.next_seq

    def acked(self, seq: int) -> None:
        while self.unacked and self.unacked[0].seq <= seq:
            self.unacked_bytes -= len(self.unacked.popleft().data)

    def retransmit(self) -> list[LogChunk]:
        """Every chunk not acknowledged yet, with the current floor."""
        floor = self.first_seq
        return [attrs.evolve(c, first_seq=floor) for c in self.unacked]


@attrs.define
class StreamReceiver:
    """The owner's side of one (execution, stream): in-order delivery."""

    next_seq: int = 1
    next_offset: int = 0
    pending: dict[int, LogChunk] = attrs.field(factory=dict)
    floor: int = 1  # the holder's highest first_seq seen
    lost: int = 0  # bytes reported lost

    def receive(self, chunk: LogChunk) -> list[tuple[bytes, int]]:
        """What can be delivered in order now (lost markers included), each
        with the stream offset it brings the reader to."""
        self.floor = max(self.floor, chunk.first_seq)
        if chunk.seq >= self.next_seq and chunk.seq not in self.pending:
            if len(self.pending) >= MAX_PENDING:
                # Too far ahead: treat the oldest missing chunks as lost now.
                self.floor = max(self.floor, min(self.pending))
            self.pending[chunk.seq] = chunk
        out: list[tuple[bytes, int]] = []
        while True:
            ready = self.pending.pop(self.next_seq, None)
            if ready is None:
                if self.next_seq >= self.floor or not self.pending:
                    return out
                # The holder no longer has the chunks before ``floor``: jump to
                # the oldest chunk we hold (its offset measures the gap).
                self.next_seq = min(self.pending)
                continue
            if ready.offset > self.next_offset:
                gap = ready.offset - self.next_offset
                self.lost += gap
                out.append((lost_marker(gap), ready.offset))
                self.next_offset = ready.offset
            end = ready.offset + len(ready.data)
            if end > self.next_offset:
                out.append((ready.data[self.next_offset - ready.offset :], end))
                self.next_offset = end
            self.next_seq = ready.seq + 1

    @property
    def acked_seq(self) -> int:
        """Every chunk up to here is delivered or given up."""
        return self.next_seq - 1


@attrs.define
class ExecutionLog:
    """What the owner keeps of one execution's live output: the delivered
    pieces in arrival order, each numbered (``first`` is the number of the
    oldest still kept: readers resume from a number), bounded to ``MAX_KEPT``."""

    streams: dict[str, StreamReceiver] = attrs.field(
        factory=lambda: {name: StreamReceiver() for name in LOG_STREAMS}
    )
    pieces: deque[tuple[str, int, bytes]] = attrs.field(factory=deque)  # (stream, offset, data)
    first: int = 0
    kept: int = 0

    def receive(self, chunk: LogChunk) -> int:
        """Take a chunk; returns how many pieces it made deliverable."""
        receiver = self.streams[chunk.stream]
        added = 0
        for data, offset in receiver.receive(chunk):
            self.pieces.append((chunk.stream, offset, data))
            self.kept += len(data)
            added += 1
        while self.kept > MAX_KEPT and len(self.pieces) > 1:
            self.kept -= len(self.pieces.popleft()[2])
            self.first += 1
        return added

    @property
    def end(self) -> int:
        """The number the next piece will get."""
        return self.first + len(self.pieces)

    def since(self, number: int) -> list[tuple[str, int, bytes]]:
        """Pieces from ``number`` on: (stream, stream offset after it, data)."""
        skip = max(0, number - self.first)
        return list(self.pieces)[skip:]


class LogBook:
    """The owner's live output of the executions it owns, bounded in count
    (the least recently written goes first)."""

    def __init__(self, capacity: int = MAX_LOGGED_EXECUTIONS) -> None:
        self.capacity = capacity
        self.logs: OrderedDict[str, ExecutionLog] = OrderedDict()

    def get(self, execution_id: str) -> ExecutionLog | None:
        return self.logs.get(execution_id)

    def receive(self, chunk: LogChunk) -> tuple[int, int]:
        """(pieces made deliverable, acknowledged seq of the chunk's stream)."""
        log = self.logs.get(chunk.execution_id)
        if log is None:
            log = self.logs[chunk.execution_id] = ExecutionLog()
            while len(self.logs) > self.capacity:
                self.logs.popitem(last=False)
        else:
            self.logs.move_to_end(chunk.execution_id)
        added = log.receive(chunk)
        return added, log.streams[chunk.stream].acked_seq

    def forget(self, execution_ids: list[str]) -> None:
        for exec_id in execution_ids:
            self.logs.pop(exec_id, None)
