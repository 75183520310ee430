"""A blob stream reset midway (over real libp2p hosts on loopback).

The holder's end may reset a blob stream while it sends: its connection was
closed as a duplicate or as idle meanwhile.  ``fetch_blob`` opens one more
stream; if that one breaks too the caller gets a ``ConnectionError`` (which
``job logs``, output and input fetching turn into their own clear errors),
never libp2p's ``StreamReset`` as an internal error.  CI once failed
``job logs`` this way."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import msgpack
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from p2pnode.blobs import BlobStore
from p2pnode.libp2p_transport import Libp2pTransport
from p2pnode.net.framing import FrameDecoder, encode_frame
from p2pnode.outputs import BLOB_PROTOCOL, CHUNK, _fetch_once, blob_server, fetch_blob


def flaky_server(store: BlobStore, resets: int) -> tuple[Any, list[str]]:
    """Serves ``store``, but the first ``resets`` requests get the header and
    one chunk, then a reset stream.  Returns the handler and a log of what
    each request got."""
    honest = blob_server(store)
    served: list[str] = []

    async def serve(sender: str, stream: Any) -> None:
        if len(served) >= resets:
            served.append("whole")
            await honest(sender, stream)
            return
        served.append("reset")
        [request] = (FrameDecoder(4096).feed(await stream.read(4096)))[0]
        digest = msgpack.unpackb(request)["digest"]
        data = store.path_of(digest).read_bytes()
        await stream.write(encode_frame(msgpack.packb({"ok": True, "size": len(data)})))
        await stream.write(encode_frame(data[:CHUNK]))
        await stream.reset()

    return serve, served


async def fetch_through(
    tmp_path: Path, resets: int, fetch: Any = fetch_blob
) -> tuple[BlobStore, str, list[str], Any]:
    holder_store = BlobStore(tmp_path / "holder", fsync=False)
    digest = holder_store.put_bytes(os.urandom(5 * CHUNK + 123))
    fetcher_store = BlobStore(tmp_path / "fetcher", fsync=False)
    handler, served = flaky_server(holder_store, resets)
    holder = Libp2pTransport(create_new_key_pair())
    holder.set_stream_handler(BLOB_PROTOCOL, handler)
    outcome: Any = None
    async with holder, Libp2pTransport(create_new_key_pair()) as fetcher:
        await fetcher.connect(holder.listen_addrs()[0])
        try:
            with trio.fail_after(30):
                await fetch(fetcher, fetcher_store, holder.local_id, digest)
        except Exception as exc:  # the test inspects what escaped
            outcome = exc
    return fetcher_store, digest, served, outcome


async def test_one_reset_midway_is_fetched_again_whole(tmp_path: Path) -> None:
    store, digest, served, outcome = await fetch_through(tmp_path, resets=1)
    assert outcome is None, f"the fetch failed: {outcome!r}"
    assert served == ["reset", "whole"]
    assert store.has(digest)
    assert len(store.path_of(digest).read_bytes()) == 5 * CHUNK + 123


async def test_two_resets_are_a_connection_error_and_store_nothing(tmp_path: Path) -> None:
    store, digest, served, outcome = await fetch_through(tmp_path, resets=2)
    assert served == ["reset", "reset"]
    assert isinstance(outcome, ConnectionError), f"got {outcome!r}"
    assert "broke" in str(outcome)
    assert not store.has(digest)
    # The partial copies were temporary files: nothing is left in the store.
    leftovers = [p for p in (tmp_path / "fetcher").rglob("*") if p.is_file()]
    assert not [p for p in leftovers if p.stat().st_size >= CHUNK], leftovers


async def test_planted_no_retry_lets_the_reset_escape(tmp_path: Path) -> None:
    """The planted bug (one stream only, as before the fix) fails the first
    test: the reset escapes as libp2p's own error, not a ConnectionError."""

    async def fetch_once(transport: Any, blobs: BlobStore, peer: str, digest: str) -> None:
        await _fetch_once(transport, blobs, peer, digest, digest.partition(":")[2])

    store, digest, served, outcome = await fetch_through(tmp_path, resets=1, fetch=fetch_once)
    assert served == ["reset"]
    assert outcome is not None and not isinstance(outcome, ConnectionError), outcome
    assert not store.has(digest)
