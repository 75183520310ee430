"""Reading the items a DAG ``map`` fans out over (the ``ReadItems`` action).

The owner asks for the lines of a parent task's outputs: every output
manifest is made local (fetched by content id from the node holding it, with
the inputs machinery), then every file of it is read in path order and every
non-empty line becomes one item.  Bounded: at most ``MAX_ITEMS`` items and
``MAX_ITEMS_BYTES`` read per manifest; beyond that the map fails with a clear
error rather than fanning out without limit.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from p2pnode.blobs import BlobError, BlobStore
from p2pnode.errors import P2PNodeError
from p2pnode.inputs import InputError, InputFetcher

MAX_ITEMS = 10_000
MAX_ITEMS_BYTES = 16 * 2**20


class ItemsError(P2PNodeError):
    """The items could not be read (fetch failed, too many, not text)."""


def _lines(blobs: BlobStore, manifest_id: str) -> list[str]:
    lines: list[str] = []
    budget = MAX_ITEMS_BYTES
    for entry in sorted(blobs.read_manifest(manifest_id), key=lambda e: e.path):
        if entry.size > budget:
            raise ItemsError(f"outputs of {manifest_id} exceed {MAX_ITEMS_BYTES} bytes")
        budget -= entry.size
        data = blobs.read_bytes(f"sha256:{entry.sha256}", max_bytes=entry.size)
        lines += [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
        if len(lines) > MAX_ITEMS:
            raise ItemsError(f"more than {MAX_ITEMS} items")
    return lines


async def read_items(
    fetcher: InputFetcher, blobs: BlobStore, refs: Sequence[tuple[str, str]]
) -> tuple[str, ...]:
    items: list[str] = []
    for manifest_id, node in refs:
        try:
            await fetcher.fetch([("items", manifest_id, node)])
            items += await trio.to_thread.run_sync(_lines, blobs, manifest_id)
        except (InputError, BlobError) as err:
            raise ItemsError(str(err)) from None
        if len(items) > MAX_ITEMS:
            raise ItemsError(f"more than {MAX_ITEMS} items")
    return tuple(items)
