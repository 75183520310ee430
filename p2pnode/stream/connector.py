"""The source connector interface of micro-batch stream jobs.

A connector reads entries of a partition's streams *after a position* and
returns them with the position just after the last one it returns.  It keeps
no position of its own: the owner's core keeps the committed and in-flight
positions (``protocols/stream.py``) and the feeder passes the one to read
after on every call, so a restarted owner, or a batch that failed and is read
again, simply reads from where the core says.

Positions are strings, opaque to the feeder but comparable by the core
(``protocols.stream.behind``): for Redis a canonical JSON map
``{"<stream>": "<last id read>"}`` with sorted keys and no spaces, ``""`` for
"from the start".  A position never drops a stream it once named.

Writing a connector for another source (Kafka, NATS, files, ...) means
implementing :class:`Connector`, mapping the source's offsets onto such a map
(an integer or a ``<ms>-<seq>`` id per key keeps the core's never-backwards
check meaningful), and adding it to :func:`p2pnode.stream.sources.open_connector`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

import attrs

from p2pnode.errors import ConnectorError as ConnectorError  # re-exported

__all__ = [
    "Connector",
    "ConnectorError",
    "Entry",
    "ReadResult",
    "decode_position",
    "encode_position",
]


@attrs.frozen
class Entry:
    """One source entry: its stream (key), its id there, and its fields."""

    stream: str
    id: str
    fields: dict[str, str]

    def to_json(self) -> str:
        return json.dumps(
            {"stream": self.stream, "id": self.id, "fields": self.fields},
            ensure_ascii=False,
            separators=(",", ":"),
        )


@attrs.frozen
class ReadResult:
    """What one read returned: entries in source order (per stream), and the
    position after the last of them (the given one when there are none)."""

    entries: list[Entry]
    position: str

    @property
    def first(self) -> str:
        """The position map of the first entry of each stream in the result."""
        firsts: dict[str, str] = {}
        for entry in self.entries:
            firsts.setdefault(entry.stream, entry.id)
        return encode_position(firsts)


class Connector(Protocol):
    """Reads a source for the owner's feeder (one connector per partition).

    ``read`` returns as soon as it has ``max_entries`` entries, or after
    ``max_wait`` seconds with what it has (maybe nothing); it must honour trio
    cancellation within about a second (a blocking client runs in a worker
    thread abandoned on cancel: its result is simply dropped, since nothing is
    committed before the core accepts a batch).  Errors are ``ConnectorError``.
    ``aclose`` releases connections; the connector is not used after it.
    """

    async def read(
        self, streams: Sequence[str], position: str, max_entries: int, max_wait: float
    ) -> ReadResult: ...

    async def aclose(self) -> None: ...


def encode_position(ids: dict[str, str]) -> str:
    """The canonical position string: JSON, sorted keys, no spaces; ``""``
    for an empty map."""
    return json.dumps(ids, sort_keys=True, separators=(",", ":")) if ids else ""


def decode_position(position: str) -> dict[str, str]:
    """Inverse of ``encode_position``; raises ``ConnectorError`` on junk."""
    if not position:
        return {}
    try:
        value: Any = json.loads(position)
    except ValueError:
        raise ConnectorError(f"position {position[:80]!r} is not a JSON map") from None
    if not isinstance(value, dict):
        raise ConnectorError(f"position {position[:80]!r} is not a JSON map")
    return {str(k): str(v) for k, v in value.items()}
