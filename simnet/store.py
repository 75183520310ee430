"""Per-node durable records for simulated nodes.

Values are kept msgpack-encoded: that is a cheap deep copy (a core can never
mutate what it persisted through a shared reference, which would hide bugs a
real disk would expose) and it rejects values a real store could not encode.
A crash loses the core, never the store.
"""

from __future__ import annotations

from typing import Any

import msgpack

Records = dict[str, dict[str, dict[str, Any]]]

# One packer for every store (packb builds one per call); the simulator is
# single-threaded.  Same bytes as ``msgpack.packb(value, use_bin_type=True)``.
_pack = msgpack.Packer(use_bin_type=True).pack


class SimStore:
    def __init__(self) -> None:
        self._tables: dict[str, dict[str, bytes]] = {}
        self.writes = 0

    def put(self, table: str, key: str, value: dict[str, Any] | None) -> None:
        self.writes += 1
        if value is None:
            rows = self._tables.get(table)
            if rows is not None:
                rows.pop(key, None)
            return
        self._tables.setdefault(table, {})[key] = _pack(value)

    def load(self) -> Records:
        """A fresh copy of every record (what a restarted node reads)."""
        return {
            table: {
                key: msgpack.unpackb(blob, raw=False, strict_map_key=False)
                for key, blob in rows.items()
            }
            for table, rows in self._tables.items()
        }

    def size(self) -> int:
        return sum(len(rows) for rows in self._tables.values())
