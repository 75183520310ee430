"""Fetching a task's inputs before it runs.

A grant may name inputs: ``(name, manifest_id, node)`` triples
(``StartExecution.inputs``), e.g. the blob of a micro-batch stream's batch, or
later a DAG task's upstream outputs.  Before the executor runs the task, the
engine router makes sure each manifest and every blob it lists is in the local
blob store: taken from it when present, else fetched from ``node`` over the
``/p2pnode/blob/1.0.0`` protocol (``outputs.fetch_blob``, which verifies every
byte against its hash).  The executor then lays the files out under
``<workdir>/inputs/<name>/`` (``executors.common.lay_out_inputs``), which the
task sees as ``$P2PNODE_INPUTS/<name>/``.

A failure (the holder is gone, does not have the blob, the transfer times
out) raises ``InputError`` naming the input; the router turns it into an
execution ``error`` with that message, and the owner retries the job as it
retries any failed execution.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import trio

from p2pnode.blobs import BlobError, BlobStore
from p2pnode.errors import InputError as InputError  # re-exported
from p2pnode.outputs import FetchError, fetch_blob

log = logging.getLogger("p2pnode.inputs")

InputRef = tuple[str, str, str]  # (name, manifest id, node holding it)


class InputFetcher:
    """Makes inputs local.  ``transport`` needs ``open_stream`` and
    ``local_id`` (the libp2p transport); ``None`` means local blobs only."""

    attempts = 3  # a transfer cut by a passing hiccup is tried again
    retry_delay = 0.5

    def __init__(self, blobs: BlobStore, transport: Any = None) -> None:
        self.blobs = blobs
        self.transport = transport
        self.fetched = 0  # blobs copied from other nodes (for tests and stats)

    async def fetch(self, inputs: Sequence[InputRef]) -> None:
        for name, manifest_id, node in inputs:
            try:
                await self._fetch_one(manifest_id, node)
            except InputError as err:
                raise InputError(f"input {name!r} ({manifest_id} from {node}): {err}") from None

    async def fetch_blob(self, digest: str, node: str) -> None:
        """One blob (a wasm module), from the local store or from ``node``."""
        await self._blob(digest, node)

    async def _fetch_one(self, manifest_id: str, node: str) -> None:
        await self._blob(manifest_id, node)
        try:
            entries = await trio.to_thread.run_sync(self.blobs.read_manifest, manifest_id)
        except BlobError as err:
            raise InputError(f"bad manifest: {err}") from None
        for entry in entries:
            await self._blob(f"sha256:{entry.sha256}", node)

    async def _blob(self, digest: str, node: str) -> None:
        try:
            if await trio.to_thread.run_sync(self.blobs.has, digest):
                return
        except BlobError as err:  # not a digest at all
            raise InputError(str(err)) from None
        local = getattr(self.transport, "local_id", None)
        if self.transport is None or not node or node == local:
            raise InputError(f"blob {digest} is not in the local store")
        problem = ""
        for attempt in range(self.attempts):
            if attempt:
                await trio.sleep(self.retry_delay * attempt)
            try:
                await fetch_blob(self.transport, self.blobs, node, digest)
            except (FetchError, BlobError, ConnectionError, OSError) as err:
                problem = str(err) or type(err).__name__
            except trio.TooSlowError:
                problem = "timed out"
            except Exception as err:  # the transport's own errors (libp2p raises its types)
                problem = repr(err)
            else:
                self.fetched += 1
                log.debug("fetched input blob %s from %s", digest, node)
                return
            log.info("fetching %s from %s (attempt %d): %s", digest, node, attempt + 1, problem)
        raise InputError(f"cannot fetch {digest} from {node}: {problem}")
