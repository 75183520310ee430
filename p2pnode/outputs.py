"""Moving outputs between nodes: the ``/p2pnode/blob/1.0.0`` stream protocol.

Outputs stay on the node that produced them, as content-addressed blobs plus a
manifest (``p2pnode/blobs.py``).  A result carries only the manifest id; whoever
needs the bytes fetches them by id from a node that holds them.  Since a blob's
name is its sha256, the fetcher verifies every byte and needs to trust nobody.

Wire: the client sends one frame, msgpack ``{"digest": "sha256:<hex>"}``; the
server answers one frame ``{"ok": true, "size": n}`` (or ``{"ok": false,
"error": ...}``) followed by the blob in frames of at most 64 KiB.  Frames are
varint-length-prefixed as on the frame protocol.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgpack
import trio
from libp2p.network.stream.exceptions import StreamError

from p2pnode.blobs import BlobError, BlobStore
from p2pnode.errors import FetchError as FetchError  # re-exported
from p2pnode.net.framing import FrameDecoder, FrameError, encode_frame

if TYPE_CHECKING:
    from p2pnode.transport import Transport
    from p2pnode.views import JobView


class Node(Protocol):
    """What fetching outputs needs of a node (``p2pnode.node.Node`` has it;
    a Protocol keeps this module below the node in the import graph)."""

    @property
    def transport(self) -> Transport: ...
    @property
    def blobs(self) -> BlobStore: ...
    def describe(self, job_id: str) -> JobView: ...

log = logging.getLogger("p2pnode.outputs")

BLOB_PROTOCOL = "/p2pnode/blob/1.0.0"
CHUNK = 64 * 1024
MAX_FETCH = 1024**3
FETCH_TIMEOUT = 120.0
REQUEST_TIMEOUT = 10.0  # a client must send its request within this


async def _read_frames(stream: Any, decoder: FrameDecoder) -> list[bytes]:
    while True:
        chunk = await stream.read(CHUNK)
        if not chunk:
            raise FetchError("stream closed early")
        frames, dropped = decoder.feed(chunk)
        if dropped:
            raise FetchError("oversized frame")
        if frames:
            return frames


def blob_server(blobs: BlobStore) -> Any:
    """The handler the transport runs for each inbound blob request."""

    async def serve(sender: str, stream: Any) -> None:
        # A bad request raises FrameError: the transport counts it against the sender.
        decoder = FrameDecoder(4096)
        request = None
        with trio.move_on_after(REQUEST_TIMEOUT):
            try:
                [request, *_] = await _read_frames(stream, decoder)
            except FetchError as exc:
                if str(exc) != "oversized frame":
                    raise  # closed early: the client went away, not abuse
                raise FrameError("oversized", str(exc)) from None
        if request is None:
            raise FrameError("idle_partial", f"no blob request within {REQUEST_TIMEOUT}s")
        try:
            digest = msgpack.unpackb(request).get("digest", "")
        except Exception:  # msgpack raises assorted types; a list has no .get
            raise FrameError("undecodable", "blob request is not a msgpack map") from None
        if not isinstance(digest, str) or not blobs.has(digest):
            await stream.write(encode_frame(msgpack.packb({"ok": False, "error": "no such blob"})))
            return
        path = blobs.path_of(digest)
        size = path.stat().st_size
        await stream.write(encode_frame(msgpack.packb({"ok": True, "size": size})))
        with path.open("rb") as f:
            while chunk := f.read(CHUNK):
                await stream.write(encode_frame(chunk))
        log.debug("served %s (%d bytes) to %s", digest, size, sender)

    return serve


async def fetch_blob(transport: Any, blobs: BlobStore, peer: str, digest: str) -> None:
    """Copy blob ``digest`` from ``peer`` into our store, verifying its hash.

    A stream reset midway (its connection closed as a duplicate or as idle
    at the peer's end meanwhile) is tried once more on a new stream; a
    second one is a ``ConnectionError``, never an internal error."""
    if blobs.has(digest):
        return
    algo, _, want = digest.partition(":")
    if algo != "sha256" or len(want) != 64:
        raise FetchError(f"bad digest {digest!r}")
    for attempt in range(2):
        try:
            await _fetch_once(transport, blobs, peer, digest, want)
            return
        except StreamError as exc:
            if attempt:
                raise ConnectionError(f"blob stream to {peer} broke: {exc!r}") from None


async def _fetch_once(
    transport: Any, blobs: BlobStore, peer: str, digest: str, want: str
) -> None:
    with trio.fail_after(FETCH_TIMEOUT):
        stream = await transport.open_stream(peer, BLOB_PROTOCOL)
        try:
            await stream.write(encode_frame(msgpack.packb({"digest": digest})))
            decoder = FrameDecoder(CHUNK + 16)
            frames = await _read_frames(stream, decoder)
            header = msgpack.unpackb(frames.pop(0))
            if not header.get("ok"):
                raise FetchError(f"{peer} has no blob {digest}: {header.get('error')}")
            size = int(header["size"])
            if size > MAX_FETCH:
                raise FetchError(f"blob {digest} is {size} bytes, over the {MAX_FETCH} limit")
            sha, got = hashlib.sha256(), 0
            with tempfile.NamedTemporaryFile(dir=blobs.root, delete=True) as tmp:
                while True:
                    for chunk in frames:
                        sha.update(chunk)
                        tmp.write(chunk)
                        got += len(chunk)
                    if got >= size:
                        break
                    frames = await _read_frames(stream, decoder)
                if got != size or sha.hexdigest() != want:
                    raise FetchError(f"blob {digest} from {peer} failed verification")
                tmp.flush()
                stored = blobs.put_file(Path(tmp.name))
            if stored != digest:
                raise FetchError(f"stored {stored}, expected {digest}")
        finally:
            await stream.reset()


async def _fetch_manifest(node: Node, manifest_id: str, holder: str, dest: Path) -> list[str]:
    try:
        if not node.blobs.has(manifest_id):
            await fetch_blob(node.transport, node.blobs, holder, manifest_id)
        for entry in node.blobs.read_manifest(manifest_id):
            await fetch_blob(node.transport, node.blobs, holder, f"sha256:{entry.sha256}")
    except (ConnectionError, trio.TooSlowError) as exc:
        raise FetchError(f"cannot fetch {manifest_id} from {holder}: {exc}") from None
    try:
        return [str(dest / p) for p in node.blobs.materialize(manifest_id, dest)]
    except BlobError as exc:
        raise FetchError(str(exc)) from None


async def fetch_outputs(node: Node, job_id: str, output_dir: Path) -> list[str]:
    """Download the outputs of every completed slot of ``job_id`` into ``output_dir``
    (``output_dir/<slot>/...`` when the job has several slots).  A chain: its
    last stage's outputs.  A DAG: each task's, under ``output_dir/<task>/``
    (``<task>/<i>/`` for the instances of a map task).  Returns the paths.
    ``Node.fetch_outputs`` is the same as a method."""
    view = node.describe(job_id)
    if view.type == "chain":
        final: Any = (view.chain or {}).get("final") or ()  # (manifest id, holder)
        if len(final) == 2 and final[0]:
            return await _fetch_manifest(node, final[0], final[1], output_dir)
        return []
    if view.type == "dag":
        written: list[str] = []
        for task in view.tasks:
            for out in task.get("outputs", ()):
                dest = output_dir / out["name"]
                written += await _fetch_manifest(node, out["manifest_id"], out["node"], dest)
        return written
    written = []
    for slot in view.slots:
        done = [e for e in slot.executions if e.state == "succeeded"]
        if not done or not done[-1].manifest_id:
            continue
        dest = output_dir if len(view.slots) == 1 else output_dir / str(slot.slot)
        try:
            written += await _fetch_manifest(node, done[-1].manifest_id, done[-1].node, dest)
        except FetchError as exc:
            raise FetchError(f"outputs of slot {slot.slot}: {exc}") from None
    return written
