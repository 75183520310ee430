"""Yamux receive credit on frame streams (``p2pnode/net/credit.py``), on real
hosts over loopback: no WINDOW_UPDATE per frame read, and a transfer of many
windows still flows (credit does come back)."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.stream_muxer.yamux import yamux as yamux_module

import p2pnode.libp2p_transport as transport_module
from p2pnode.libp2p_transport import Libp2pTransport
from p2pnode.net.credit import credit_per_half_window


@asynccontextmanager
async def pair() -> AsyncIterator[tuple[Libp2pTransport, Libp2pTransport]]:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(Libp2pTransport(create_new_key_pair()))
        b = await stack.enter_async_context(Libp2pTransport(create_new_key_pair()))
        await a.connect(b.listen_addrs()[0])
        yield a, b


def _record_yamux_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int]]:
    """Every yamux frame written by any host of this process: (connection id,
    type, stream id)."""
    written: list[tuple[int, int, int]] = []
    write = yamux_module.Yamux._write_frame

    async def recording(self: Any, data: bytes) -> None:
        _version, kind, _flags, stream_id, _length = struct.unpack(
            yamux_module.YAMUX_HEADER_FORMAT, data[: yamux_module.HEADER_SIZE]
        )
        written.append((id(self), kind, stream_id))
        await write(self, data)

    monkeypatch.setattr(yamux_module.Yamux, "_write_frame", recording)
    return written


async def test_small_frames_read_send_no_window_update_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    written = _record_yamux_writes(monkeypatch)
    async with pair() as (a, b):
        await a.send(b.local_id, b"first")
        with trio.fail_after(10):
            await b.receive()
        stream_id = a._streams[b.local_id].muxed_stream.stream_id
        receiver_conn = next(iter(b._host.get_network().connections.values()))[0]
        b_muxer = id(receiver_conn.muxed_conn)
        # The stream's opening (SYN, ACK, the negotiation's reads) is py-libp2p's.
        del written[:]
        for i in range(40):
            await a.send(b.local_id, b"%d" % i * 50)
            with trio.fail_after(10):
                assert (await b.receive()).data == b"%d" % i * 50
        updates = [w for w in written if w == (b_muxer, yamux_module.TYPE_WINDOW_UPDATE, stream_id)]
        data_in = [w for w in written if w[1] == yamux_module.TYPE_DATA and w[2] == stream_id]
        assert len(data_in) >= 40  # the frames did cross this stream
        assert updates == []


async def _bulk_transfer(timeout: float) -> None:
    """Frames one way, none read back by the sender, well beyond the window
    (256 KiB, auto-tuned to about 2 MiB while the stream is negotiated): all
    arrive, in order, intact."""
    frames = [bytes([i]) * (200 * 1024) for i in range(24)]  # 4.7 MiB
    async with pair() as (a, b):
        await a.send(b.local_id, b"open")
        with trio.fail_after(10):
            await b.receive()
        stream = a._streams[b.local_id]
        for data in frames:
            await a.send(b.local_id, data)
        got = []
        with trio.fail_after(timeout):
            while len(got) < len(frames):
                got.append((await b.receive()).data)
        assert got == frames
        assert a.stats.dropped_unreachable == 0
        # Never stalled: a sender out of window for 5 s breaks its stream, and
        # _transmit would resend on a new one.
        assert a._streams[b.local_id] is stream


async def test_a_transfer_of_many_windows_flows() -> None:
    await _bulk_transfer(timeout=30)


def test_a_stream_that_is_not_yamux_is_left_alone() -> None:
    class Plain:
        muxed_stream = object()

    assert credit_per_half_window(Plain()) is False
    assert credit_per_half_window(object()) is False


# --- planted bugs: the checks above catch a reader that breaks the credit rule -------


async def test_planted_bug_credit_per_read_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that returns credit after every read fails the no-update check."""
    monkeypatch.setattr(
        transport_module,
        "credit_per_half_window",
        lambda stream: credit_per_half_window(stream, threshold=1),
    )
    with pytest.raises(AssertionError):
        await test_small_frames_read_send_no_window_update_back(monkeypatch)


async def test_planted_bug_credit_never_returned_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A reader that never returns credit stalls the sender after one window:
    the transfer does not complete."""
    monkeypatch.setattr(
        transport_module,
        "credit_per_half_window",
        lambda stream: credit_per_half_window(stream, threshold=1 << 62),
    )
    with pytest.raises((trio.TooSlowError, AssertionError)):
        await _bulk_transfer(timeout=8)
