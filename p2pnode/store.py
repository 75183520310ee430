"""Durable node state: the records the core persists through ``Persist`` actions.

The core sees its state as ``table -> key -> value`` (a ``dict`` of plain data).
On start the runtime ``load()``s every record and builds the core from them;
while running it ``apply()``s each run of consecutive ``Persist`` actions as one
atomic batch, and only then performs the actions that follow (a ``Send`` that
announces an epoch must never leave before the epoch is on disk).

Two implementations:

* ``SqliteStore``: one SQLite file per node, WAL, ``synchronous=FULL``.
* ``MemoryStore``: the simulator's store; it outlives a simulated crash because
  the harness keeps the object.

Both encode values with msgpack, so both accept exactly the same values and
give back the same shapes (tuples come back as lists): a value that would fail
on disk fails in simulation too.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, Protocol

import msgpack

from p2pnode.errors import StoreError as StoreError  # re-exported
from protocols.events import Persist

Records = dict[str, dict[str, dict[str, Any]]]
"""table -> key -> value."""

SCHEMA_VERSION = 1


class Store(Protocol):
    def load(self) -> Records:
        """Every stored record, freshly decoded (the caller may mutate it)."""
        ...

    def apply(self, batch: Sequence[Persist]) -> None:
        """Write ``batch`` atomically: all of it or none of it.  ``value=None``
        deletes the record.  Later entries for the same (table, key) win."""
        ...

    def close(self) -> None:
        """Release the store; idempotent."""
        ...


def _encode(value: dict[str, Any]) -> bytes:
    return msgpack.packb(value, use_bin_type=True)  # type: ignore[no-any-return]


def _decode(blob: bytes) -> dict[str, Any]:
    # strict_map_key=False: nested maps may have int keys, which msgpack
    # otherwise refuses on the way back in.
    value = msgpack.unpackb(blob, raw=False, strict_map_key=False)
    if not isinstance(value, dict):
        raise ValueError(f"record is a {type(value).__name__}, not a map")
    return value


def _prepare(batch: Iterable[Persist]) -> dict[tuple[str, str], bytes | None]:
    """Validate and encode a whole batch before touching storage, so a bad
    value can never leave a half-written batch behind.  Returns the final
    effect per (table, key) in first-seen order (later entries win)."""
    effects: dict[tuple[str, str], bytes | None] = {}
    for p in batch:
        if not isinstance(p.table, str) or not isinstance(p.key, str):
            raise StoreError(f"table and key must be str, got {p.table!r}/{p.key!r}")
        if p.value is None:
            effects[(p.table, p.key)] = None
            continue
        if not isinstance(p.value, dict):
            raise StoreError(
                f"value of {p.table}/{p.key} must be a dict or None, not {type(p.value).__name__}"
            )
        try:
            effects[(p.table, p.key)] = _encode(p.value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise StoreError(f"cannot encode value of {p.table}/{p.key}: {exc}") from exc
    return effects


class MemoryStore:
    """In-memory ``Store`` for the simulator and tests.

    Values are kept msgpack-encoded: that is the deep copy (later mutation of
    the caller's dicts cannot leak in, and ``load()`` hands out fresh objects),
    and it makes the simulator reject exactly what SQLite would reject.

    ``fail_with``: when set, every ``apply`` raises ``StoreError(fail_with)``
    and writes nothing (fault injection: a disk that stopped accepting writes).
    """

    blocking: ClassVar[bool] = False

    def __init__(self, records: Records | None = None) -> None:
        self._data: dict[tuple[str, str], bytes] = {}
        self._closed = False
        self.fail_with: str | None = None
        self.applied_batches = 0
        if records:
            self.apply([Persist(t, k, v) for t, rows in records.items() for k, v in rows.items()])
            self.applied_batches = 0

    def load(self) -> Records:
        self._check_open()
        out: Records = {}
        for (table, key), blob in self._data.items():
            out.setdefault(table, {})[key] = _decode(blob)
        return out

    def apply(self, batch: Sequence[Persist]) -> None:
        self._check_open()
        if self.fail_with is not None:
            raise StoreError(self.fail_with)
        effects = _prepare(batch)
        for tk, blob in effects.items():
            if blob is None:
                self._data.pop(tk, None)
            else:
                self._data[tk] = blob
        self.applied_batches += 1

    def close(self) -> None:
        # Closing is only bookkeeping: a simulated restart reopens the same
        # object with ``reopen()``.
        self._closed = True

    def reopen(self) -> MemoryStore:
        """Make a closed store usable again (the simulated node restarted)."""
        self._closed = False
        return self

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("memory store is closed")


class SqliteStore:
    """One SQLite file per node.

    * WAL + ``synchronous=FULL``: a committed batch is on disk when ``apply``
      returns, which is what lets the runtime send after persisting.
    * ``locking_mode=EXCLUSIVE``: the file is locked for as long as the store is
      open, so two node processes can never share (and split) one node's state.
    * Schema version in ``PRAGMA user_version``; a newer version is refused.

    ``max_pages`` caps the database size (``PRAGMA max_page_count``): a quota,
    and how the tests simulate a full disk.  ``lock_timeout`` is how long to
    wait for another process to release the file before giving up.

    The connection may be used from a worker thread (the runtime offloads
    ``apply`` so an fsync does not stall the event loop); calls are serialized
    by a lock.
    """

    blocking: ClassVar[bool] = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_pages: int | None = None,
        lock_timeout: float = 2.0,
    ) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            # isolation_level=None: no implicit transactions; we issue BEGIN
            # ourselves so a batch is exactly one transaction.
            conn = sqlite3.connect(
                self.path,
                timeout=lock_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open: {exc}") from exc
        try:
            self._setup(conn, max_pages)
        except BaseException:
            conn.close()
            raise
        self._conn = conn

    def _setup(self, conn: sqlite3.Connection, max_pages: int | None) -> None:
        try:
            # Must precede the switch to WAL: in exclusive mode the WAL index
            # lives in process memory, not in a shared -shm file.
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot enable WAL (journal_mode={mode})")
            conn.execute("PRAGMA synchronous=FULL")
            if max_pages is not None:
                conn.execute(f"PRAGMA max_page_count={int(max_pages)}")
            # Take the exclusive lock now, not at the first write, so a second
            # process opening the same file fails here with a clear message.
            conn.execute("BEGIN EXCLUSIVE")
            conn.execute("COMMIT")
            check = [row[0] for row in conn.execute("PRAGMA quick_check")]
            if check != ["ok"]:
                raise StoreError(f"{self.path}: database is corrupt: {'; '.join(check[:5])}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path}: schema version {version} is newer than this "
                    f"p2pnode supports ({SCHEMA_VERSION})"
                )
            if version < SCHEMA_VERSION:
                self._migrate(conn, version)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreError(
                    f"{self.path}: in use by another process (one node per store file)"
                ) from exc
            raise StoreError(f"{self.path}: cannot open: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: cannot open: {exc}") from exc

    @staticmethod
    def _migrate(conn: sqlite3.Connection, version: int) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version < 1:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS records ("
                    " tbl TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
                    " PRIMARY KEY (tbl, key)) WITHOUT ROWID"
                )
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"{self.path}: store is closed")
        return self._conn

    def load(self) -> Records:
        with self._lock:
            conn = self._connection()
            out: Records = {}
            try:
                rows = conn.execute("SELECT tbl, key, value FROM records").fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: cannot read records: {exc}") from exc
            for table, key, blob in rows:
                try:
                    out.setdefault(table, {})[key] = _decode(blob)
                except Exception as exc:
                    raise StoreError(f"{self.path}: corrupt record {table}/{key}: {exc}") from exc
            return out

    def apply(self, batch: Sequence[Persist]) -> None:
        effects = _prepare(batch)
        if not effects:
            return
        upserts = [(t, k, v) for (t, k), v in effects.items() if v is not None]
        deletes = [(t, k) for (t, k), v in effects.items() if v is None]
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                if upserts:
                    conn.executemany(
                        "INSERT OR REPLACE INTO records (tbl, key, value) VALUES (?, ?, ?)",
                        upserts,
                    )
                if deletes:
                    conn.executemany("DELETE FROM records WHERE tbl = ? AND key = ?", deletes)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback(conn)
                raise StoreError(
                    f"{self.path}: batch of {len(effects)} not written: {exc}"
                ) from exc
            except BaseException:
                self._rollback(conn)
                raise

    def _rollback(self, conn: sqlite3.Connection) -> None:
        # SQLite may already have rolled back by itself (e.g. on SQLITE_FULL).
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            # The transaction could not even be rolled back: stop using this
            # connection; SQLite's journal restores the file on next open.
            self._conn = None
            conn.close()

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None:
                conn.close()

    def __enter__(self) -> SqliteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
