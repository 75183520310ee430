"""Frames of the ``/p2pnode/frame/1.0.0`` stream protocol.

A stream carries frames, each an unsigned-varint length (as in multistream and
js ``it-length-prefixed``) followed by that many bytes.  A receiver skips (reads
and discards) a frame over its limit, so one oversized frame does not cost the
stream; a claimed length beyond ``max_skip`` is treated as garbage.  Garbage
raises :class:`FrameError`, whose ``reason`` the transport counts against the
sender (``bad_varint``, ``absurd_length``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import trio

from p2pnode.errors import P2PNodeError


class FrameError(P2PNodeError, ValueError):
    """A stream that cannot carry frames any more; ``reason`` names the fault."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def encode_uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if not value:
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


def decode_uvarint(buf: bytes | bytearray) -> tuple[int, int] | None:
    """(value, bytes used), or None if ``buf`` holds only part of it."""
    value = 0
    for i in range(min(len(buf), 10)):
        value |= (buf[i] & 0x7F) << (7 * i)
        if not buf[i] & 0x80:
            return value, i + 1
    if len(buf) >= 10:
        raise FrameError("bad_varint", "varint length prefix longer than 10 bytes")
    return None


def encode_frame(data: bytes) -> bytes:
    return encode_uvarint(len(data)) + data


class FrameDecoder:
    """Incremental decoder: ``feed`` chunks as they are read from a stream."""

    def __init__(self, max_frame: int, max_skip: int = 16 * 1024 * 1024) -> None:
        self.max_frame = max_frame
        self.max_skip = max_skip
        self._buf = bytearray()
        self._skip = 0  # bytes of an oversized frame still to discard

    @property
    def partial(self) -> bool:
        """Whether a frame has begun and not ended (bytes buffered or to skip)."""
        return bool(self._buf) or self._skip > 0

    def feed(self, chunk: bytes) -> tuple[list[bytes], list[int]]:
        """Returns (complete frames, lengths of oversized frames dropped).
        Raises ``FrameError`` on a malformed prefix or an absurd length."""
        if self._skip:
            taken = min(self._skip, len(chunk))
            self._skip -= taken
            chunk = chunk[taken:]
        buf = self._buf
        buf += chunk
        frames: list[bytes] = []
        dropped: list[int] = []
        while buf:
            header = decode_uvarint(buf)
            if header is None:
                break
            length, used = header
            if length > self.max_frame:
                if length > self.max_skip:
                    raise FrameError(
                        "absurd_length", f"frame length {length} beyond {self.max_skip}"
                    )
                dropped.append(length)
                del buf[:used]
                taken = min(length, len(buf))
                del buf[:taken]
                self._skip = length - taken
                continue
            if len(buf) < used + length:
                break
            frames.append(bytes(buf[used : used + length]))
            del buf[: used + length]
        return frames, dropped


async def reset_quietly(stream: Any) -> None:
    """Reset a libp2p stream, ignoring errors (it may already be dead), bounded
    in time and shielded so a cancelled caller still releases the stream."""
    with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(Exception):
        await stream.reset()
