"""The node store: SQLite on real files, and the simulator's in-memory twin."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from p2pnode.store import MemoryStore, SqliteStore, Store, StoreError
from protocols.events import Persist

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "memory"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """A factory that (re)opens the same store: a file, or the same memory object."""
    opened: list[Store] = []
    memory = MemoryStore()

    def make() -> Store:
        store: Store = (
            SqliteStore(tmp_path / "node.db") if request.param == "sqlite" else memory.reopen()
        )
        opened.append(store)
        return store

    yield make
    for s in opened:
        s.close()


def test_round_trip(make_store: Callable[[], Store]) -> None:
    store = make_store()
    assert store.load() == {}
    value: dict[str, Any] = {
        "epoch": 3,
        "spec": {"kind": "batch", "count": 2, "labels": {"gpu": "no"}},
        "blob": b"\x00\xff",
        "ratio": 0.5,
        "tags": ["a", "b"],
        "none": None,
        "by_slot": {0: "x", 1: "y"},
    }
    store.apply([Persist("jobs", "j1", value), Persist("leases", "j1/0", {"epoch": 1})])
    assert store.load() == {"jobs": {"j1": value}, "leases": {"j1/0": {"epoch": 1}}}


def test_tuples_come_back_as_lists(make_store: Callable[[], Store]) -> None:
    store = make_store()
    store.apply([Persist("t", "k", {"pair": (1, 2)})])
    assert store.load() == {"t": {"k": {"pair": [1, 2]}}}


def test_overwrite_and_delete(make_store: Callable[[], Store]) -> None:
    store = make_store()
    store.apply([Persist("t", "a", {"v": 1}), Persist("t", "b", {"v": 2})])
    store.apply([Persist("t", "a", {"v": 10}), Persist("t", "b", None)])
    assert store.load() == {"t": {"a": {"v": 10}}}
    store.apply([Persist("t", "missing", None)])  # deleting nothing is fine
    # Within one batch the later entry for a key wins.
    store.apply([Persist("t", "c", {"v": 1}), Persist("t", "c", None), Persist("t", "a", None)])
    assert store.load() == {}


def test_unencodable_value_leaves_nothing_half_written(make_store: Callable[[], Store]) -> None:
    store = make_store()
    store.apply([Persist("t", "old", {"v": 1})])
    bad = [
        Persist("t", "new1", {"v": 2}),
        Persist("t", "old", None),
        Persist("t", "new2", {"v": object()}),
    ]
    with pytest.raises(StoreError, match="cannot encode value of t/new2"):
        store.apply(bad)
    assert store.load() == {"t": {"old": {"v": 1}}}
    with pytest.raises(StoreError, match="must be a dict"):
        store.apply([Persist("t", "x", [1, 2])])  # type: ignore[arg-type]
    assert store.load() == {"t": {"old": {"v": 1}}}


def test_caller_mutation_does_not_leak(make_store: Callable[[], Store]) -> None:
    store = make_store()
    value: dict[str, Any] = {"list": [1], "inner": {"n": 1}}
    store.apply([Persist("t", "k", value)])
    value["list"].append(2)
    value["inner"]["n"] = 99
    loaded = store.load()
    assert loaded == {"t": {"k": {"list": [1], "inner": {"n": 1}}}}
    loaded["t"]["k"]["list"].append(3)  # nor does mutation of what load() returned
    assert store.load() == {"t": {"k": {"list": [1], "inner": {"n": 1}}}}


def test_reopen_after_close(make_store: Callable[[], Store]) -> None:
    store = make_store()
    store.apply([Persist("t", "a", {"v": 1})])
    store.apply([Persist("u", "b", {"v": 2})])
    store.close()
    store.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        store.apply([Persist("t", "c", {"v": 3})])
    again = make_store()
    assert again.load() == {"t": {"a": {"v": 1}}, "u": {"b": {"v": 2}}}


def test_memory_store_fault_injection() -> None:
    store = MemoryStore({"t": {"a": {"v": 1}}})
    store.fail_with = "disk on fire"
    with pytest.raises(StoreError, match="disk on fire"):
        store.apply([Persist("t", "b", {"v": 2})])
    store.fail_with = None
    assert store.load() == {"t": {"a": {"v": 1}}}


def test_sqlite_schema_and_pragmas(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "node.db"
    with SqliteStore(path) as store:
        store.apply([Persist("t", "k", {"v": 1})])
        assert store._connection().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
        cols = [r[1] for r in conn.execute("PRAGMA table_info(records)")]
        assert cols == ["tbl", "key", "value"]
        conn.execute("PRAGMA user_version=99")
    finally:
        conn.close()
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        SqliteStore(path)


def test_sqlite_refuses_second_opener(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    with SqliteStore(path), pytest.raises(StoreError, match="in use by another process"):
        SqliteStore(path, lock_timeout=0.05)
    with SqliteStore(path) as again:  # released on close
        assert again.load() == {}


def test_sqlite_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    path.write_bytes(b"this is not a database" * 200)
    with pytest.raises(StoreError, match=r"node\.db"):
        SqliteStore(path)
    assert path.read_bytes() == b"this is not a database" * 200  # left alone


def test_sqlite_disk_full_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = SqliteStore(path, max_pages=16)  # 64 KiB at the default 4 KiB page
    store.apply([Persist("t", f"k{i}", {"i": i}) for i in range(10)])
    before = store.load()
    big = [Persist("t", "small", {"v": 1}), Persist("t", "big", {"pad": b"x" * 200_000})]
    with pytest.raises(StoreError, match="full"):
        store.apply(big)
    assert store.load() == before
    # Still usable for what fits.
    store.apply([Persist("t", "after", {"v": 2})])
    store.close()
    with SqliteStore(path) as reopened:
        assert reopened.load() == {"t": {**before["t"], "after": {"v": 2}}}


WRITER = textwrap.dedent(
    """
    import sys
    from p2pnode.store import SqliteStore
    from protocols.events import Persist

    store = SqliteStore(sys.argv[1])
    i = 0
    while True:
        # One batch = three records that must always agree, plus a delete.
        store.apply([
            Persist("a", f"k{i}", {"i": i, "pad": "x" * 500}),
            Persist("b", f"k{i}", {"i": i}),
            Persist("a", f"k{i - 3}", None),
            Persist("meta", "last", {"i": i}),
        ])
        print(i, flush=True)  # acknowledged only once apply() returned
        i += 1
    """
)


def test_sqlite_sigkill_leaves_consistent_prefix(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert proc.stdout is not None
    acked = -1
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 60:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert acked >= 60, "writer died before writing"
    with SqliteStore(path) as store:
        records = store.load()
    last = records["meta"]["last"]["i"]
    assert last >= acked  # every acknowledged batch is durable
    # Exactly the batches 0..last, each complete: a consistent prefix.
    assert set(records["b"]) == {f"k{i}" for i in range(last + 1)}
    assert set(records["a"]) == {f"k{i}" for i in range(max(0, last - 2), last + 1)}
    assert all(v["i"] == int(k[1:]) for k, v in records["b"].items())
