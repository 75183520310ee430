"""The owner's micro-batch feeder: source entries -> blobs -> ``SourceBatch``.

One trio task (``StreamFeeder.run``, in the node's nursery, cancelled when the
node stops) watches the core's ``stream.sources()``: one row per
partition of each live micro-batch stream job this node owns.  For each row it
runs a worker task that loops:

1. wait while the partition has ``batch.max_in_flight`` batches in flight
   (``busy``);
2. ``connector.read(streams, position, max_entries, max_wait)`` — entries after
   the position the core gives (the newest in-flight batch's ``last``, else the
   committed checkpoint);
3. store them as a blob manifest with one file ``entries.jsonl`` (one JSON
   object per line: ``{"stream", "id", "fields"}``), fsynced;
4. hand the core ``SourceBatch(job, partition, manifest, first, last, count)``
   through the runtime; the core runs a batch job over the blob (input
   ``batch``: the task reads ``$P2PNODE_INPUTS/batch/entries.jsonl``) and
   commits ``last`` when it succeeds.

Nothing is committed before the core accepts the batch, so a crash anywhere
here only means reading the same entries again.  A worker whose row disappears
(job stopped or finished) is cancelled.  A source that cannot be read (Redis
down, bad URL) is logged (once per distinct error), shown in ``job describe``
as the partition's ``source_error``, and retried with a backoff capped at
``max_backoff``; it never stops the node.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from p2pnode.blobs import BlobError, BlobStore, ManifestEntry
from p2pnode.runtime import NodeStopped
from p2pnode.stream.connector import Connector, ConnectorError, ReadResult
from p2pnode.stream.sources import open_connector
from protocols.errors import LocalProtocolError
from protocols.events import SourceBatch

__all__ = ["BATCH_FILE", "PartitionStatus", "StreamFeeder"]

log = logging.getLogger("p2pnode.stream")

BATCH_FILE = "entries.jsonl"

Key = tuple[str, str]  # (job id, partition)
Sources = Callable[[], list[dict[str, Any]]]
Dispatch = Callable[[SourceBatch], Awaitable[Any]]
ConnectorFactory = Callable[[str, str], Connector]


@attrs.define
class PartitionStatus:
    """What the feeder knows about one partition (shown by ``job describe``)."""

    source_error: str = ""  # the last read error, "" once a read succeeds again
    errors: int = 0
    reads: int = 0
    batches: int = 0  # batches the core accepted from this feeder run
    entries: int = 0


class StreamFeeder:
    def __init__(
        self,
        sources: Sources,
        dispatch: Dispatch,
        blobs: BlobStore,
        *,
        connector_factory: ConnectorFactory = open_connector,
        poll_interval: float = 0.2,
        idle_poll_interval: float = 5.0,
        min_backoff: float = 0.5,
        max_backoff: float = 10.0,
    ) -> None:
        self.sources = sources
        self.dispatch = dispatch
        self.blobs = blobs
        self.connector_factory = connector_factory
        self.poll_interval = poll_interval
        self.idle_poll_interval = idle_poll_interval
        self.min_backoff = min_backoff
        self.max_backoff = max_backoff
        self.status: dict[Key, PartitionStatus] = {}
        self._workers: dict[Key, trio.CancelScope] = {}
        self._tick = trio.Event()

    # --- for the node ------------------------------------------------------------

    def poke(self) -> None:
        """Look at the sources again now (e.g. a batch just committed)."""
        self._tick.set()

    def annotate(self, view: dict[str, Any]) -> dict[str, Any]:
        """Add each partition's ``source_error`` to a micro-batch job's view."""
        for row in view.get("partitions") or []:
            if "in_flight" not in row:
                continue  # a consume-mode partition: no feeder
            status = self.status.get((view.get("job_id", ""), row["partition"]))
            row["source_error"] = status.source_error if status else ""
        return view

    # --- tasks -------------------------------------------------------------------

    async def run(self) -> None:
        """Run until cancelled."""
        async with trio.open_nursery() as nursery:
            while True:
                rows = self._rows()
                for key in rows.keys() - self._workers.keys():
                    scope = trio.CancelScope()
                    self._workers[key] = scope
                    nursery.start_soon(self._worker, key, scope, name=f"feeder {key[0]}/{key[1]}")
                for key in self._workers.keys() - rows.keys():
                    self._workers.pop(key).cancel()
                    self.status.pop(key, None)
                await self._wait_tick()
                self._tick = trio.Event()

    def _rows(self) -> dict[Key, dict[str, Any]]:
        return {(r["job_id"], r["partition"]): r for r in self.sources()}

    async def _wait_tick(self) -> None:
        # No source to feed (most nodes, most of the time): a poke (a job
        # changed state) is what brings one, so look only rarely; waking five
        # times a second cost every idle node measurable CPU (bench_scale.py).
        interval = self.poll_interval if self._workers else self.idle_poll_interval
        with trio.move_on_after(interval):
            await self._tick.wait()

    async def _worker(self, key: Key, scope: trio.CancelScope) -> None:
        status = self.status.setdefault(key, PartitionStatus())
        connector: Connector | None = None
        backoff = self.min_backoff
        try:
            with scope:
                while True:
                    row = self._rows().get(key)
                    if row is None:
                        return
                    if row["busy"]:
                        await self._wait_tick()
                        continue
                    try:
                        if connector is None:
                            connector = self.connector_factory(row["type"], row["url"])
                        result = await connector.read(
                            row["streams"],
                            row["position"],
                            row["max_entries"],
                            row["max_wait_ms"] / 1000,
                        )
                    except Exception as err:  # ConnectorError, or a connector's bug
                        if not isinstance(err, ConnectorError):
                            log.exception("stream %s partition %s: connector failed", *key)
                        self._failed(key, status, str(err) or repr(err))
                        if connector is not None:
                            await _close_quietly(connector)
                            connector = None  # a fresh client next time
                        await trio.sleep(backoff)
                        backoff = min(self.max_backoff, backoff * 2)
                        continue
                    backoff = self.min_backoff
                    status.reads += 1
                    if status.source_error:
                        log.info("stream %s partition %s: source readable again", *key)
                        status.source_error = ""
                    if result.entries:
                        await self._batch(key, row, result, status)
        finally:
            if connector is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    await _close_quietly(connector)

    def _failed(self, key: Key, status: PartitionStatus, message: str) -> None:
        status.errors += 1
        if message != status.source_error:  # log each distinct problem once
            log.warning(
                "stream %s partition %s: cannot read the source (retrying): %s", *key, message
            )
        status.source_error = message

    async def _batch(
        self, key: Key, row: dict[str, Any], result: ReadResult, status: PartitionStatus
    ) -> None:
        current = self._rows().get(key)
        if current is None or current["busy"] or current["position"] != row["position"]:
            return  # the partition moved on while we read: read again from its position
        data = "".join(entry.to_json() + "\n" for entry in result.entries).encode()
        try:
            manifest_id = await trio.to_thread.run_sync(self._store, data)
        except BlobError as err:  # disk full: the node has bigger problems; retry later
            self._failed(key, status, f"cannot store the batch: {err}")
            await trio.sleep(self.max_backoff)
            return
        batch = SourceBatch(
            job_id=key[0],
            partition=key[1],
            manifest_id=manifest_id,
            first=result.first,
            last=result.position,
            count=len(result.entries),
        )
        try:
            await self.dispatch(batch)
        except LocalProtocolError as err:
            log.info("stream %s partition %s: batch refused: %s", *key, err)
            return
        except NodeStopped:
            await trio.sleep_forever()  # the node is going down; its nursery ends us
        status.batches += 1
        status.entries += batch.count
        log.debug("stream %s partition %s: batch of %d entries", *key, batch.count)

    def _store(self, data: bytes) -> str:
        digest = self.blobs.put_bytes(data)
        entry = ManifestEntry(path=BATCH_FILE, size=len(data), sha256=digest.split(":", 1)[1])
        return self.blobs.put_manifest([entry])


async def _close_quietly(connector: Connector) -> None:
    try:
        await connector.aclose()
    except Exception as err:  # closing a broken client must not hide the real error
        log.debug("closing a connector: %r", err)
