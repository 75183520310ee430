"""The Redis Streams connector (``source: {type: redis, url, streams}``).

Reads with ``XREAD`` (``COUNT``, ``BLOCK``) after the ids of the position map
``{"<stream>": "<last id read>"}``; a stream the map does not name yet is read
from its start (``0-0``).  The blocking redis-py client runs in worker threads
(``trio.to_thread``), one ``XREAD`` at a time, each blocking for at most
``slice_ms`` so that a cancelled read's abandoned thread ends soon after.

Entries are returned with their fields decoded as UTF-8 (bytes that are not
UTF-8 become U+FFFD).  Redis errors (refused connection, unknown host, auth,
a key of the wrong type) become ``ConnectorError`` with the URL (password
hidden) and Redis's own message.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import trio

from p2pnode.stream.connector import (
    ConnectorError,
    Entry,
    ReadResult,
    decode_position,
    encode_position,
)

__all__ = ["RedisConnector", "redact_url"]

_USERINFO = re.compile(r"^([a-z]+://)[^@/]*@")


def redact_url(url: str) -> str:
    """``url`` without its credentials (for logs and ``job describe``)."""
    return _USERINFO.sub(r"\1***@", url)


class RedisConnector:
    slice_ms = 1000  # longest single blocking XREAD

    def __init__(self, url: str, *, connect_timeout: float = 3.0) -> None:
        import redis

        self.url = url
        self.shown_url = redact_url(url)
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)
        try:
            self._client: Any = redis.Redis.from_url(
                url,
                socket_connect_timeout=connect_timeout,
                # Above the longest BLOCK: a silent server is an error, not a hang.
                socket_timeout=self.slice_ms / 1000 + 10.0,
            )
        except ValueError as err:
            raise ConnectorError(f"bad redis URL {self.shown_url!r}: {err}") from None

    def _fail(self, err: BaseException) -> ConnectorError:
        return ConnectorError(f"redis {self.shown_url}: {err or type(err).__name__}")

    async def read(
        self, streams: Sequence[str], position: str, max_entries: int, max_wait: float
    ) -> ReadResult:
        ids = decode_position(position)
        entries: list[Entry] = []
        if not streams or max_entries <= 0:
            return ReadResult(entries, position)
        deadline = trio.current_time() + max_wait
        block: int | None = None  # the first read does not wait
        while len(entries) < max_entries:
            got = await self._xread(streams, ids, max_entries - len(entries), block)
            for entry in got:
                entries.append(entry)
                ids[entry.stream] = entry.id
            if got:
                block = None  # there may be more right away
                continue
            remaining = deadline - trio.current_time()
            if remaining <= 0:
                break
            block = max(1, int(min(remaining * 1000, self.slice_ms)))
        return ReadResult(entries, encode_position(ids) if entries else position)

    async def _xread(
        self, streams: Sequence[str], ids: dict[str, str], count: int, block: int | None
    ) -> list[Entry]:
        request = {stream: ids.get(stream, "0-0") for stream in streams}

        def call() -> Any:
            return self._client.xread(request, count=count, block=block)

        try:
            reply = await _abandonable(call)
        except self._errors as err:
            raise self._fail(err) from None
        return _entries(reply, count)

    async def xrange(self, stream: str, after: str = "0-0", count: int = 100) -> list[Entry]:
        """Up to ``count`` entries of one stream after id ``after`` (not
        blocking): a convenience for tools and tests."""

        def call() -> Any:
            return self._client.xrange(stream, min=f"({after}", count=count)

        try:
            reply = await _abandonable(call)
        except self._errors as err:
            raise self._fail(err) from None
        return [_entry(stream, entry_id, fields) for entry_id, fields in reply]

    async def aclose(self) -> None:
        client = self._client
        await _abandonable(client.close)


async def _abandonable(fn: Callable[[], Any]) -> Any:
    """``fn()`` in a worker thread that a cancelled caller leaves behind (its
    result is dropped).  Through ``Any``: the trio stubs that py-libp2p brings
    in predate ``abandon_on_cancel``."""
    run_sync: Any = trio.to_thread.run_sync
    return await run_sync(fn, abandon_on_cancel=True)


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _entry(stream: Any, entry_id: Any, fields: Any) -> Entry:
    pairs = (fields or {}).items()
    return Entry(_text(stream), _text(entry_id), {_text(k): _text(v) for k, v in pairs})


def _entries(reply: Any, limit: int) -> list[Entry]:
    """XREAD's reply (RESP2 list or RESP3 map) -> at most ``limit`` entries,
    stream by stream in source order (COUNT applies per stream)."""
    if not reply:
        return []
    pairs = reply.items() if isinstance(reply, dict) else reply
    out: list[Entry] = []
    for stream, items in pairs:
        for item in items:
            if len(out) >= limit:
                return out
            entry_id, fields = item[0], item[1]
            out.append(_entry(stream, entry_id, fields))
    return out
