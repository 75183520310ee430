"""The content-addressed blob store and output manifests (real files)."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import Any, BinaryIO

import msgpack
import pytest

from p2pnode.blobs import (
    BlobError,
    BlobStore,
    ManifestEntry,
    OutputRejected,
    decode_manifest,
    encode_manifest,
)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _blob_files(store: BlobStore) -> list[Path]:
    return _files(store.objects)


def test_put_bytes_layout_and_dedupe(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put_bytes(b"hello")
    hexd = hashlib.sha256(b"hello").hexdigest()
    assert digest == f"sha256:{hexd}"
    assert store.path_of(digest) == tmp_path / "blobs" / "sha256" / hexd[:2] / hexd
    assert store.has(digest)
    assert store.read_bytes(digest) == b"hello"
    with store.open(digest) as file:
        assert file.read() == b"hello"
    assert store.put_bytes(b"hello") == digest  # same content, same blob
    assert _blob_files(store) == [store.path_of(digest)]
    assert list(store.tmp.iterdir()) == []  # no temp file left behind


def test_put_file_streams_and_refuses_symlinks(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data")
    source = tmp_path / "big.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    source.write_bytes(payload)
    digest = store.put_file(source)
    assert store.read_bytes(digest) == payload
    link = tmp_path / "link"
    link.symlink_to(source)
    with pytest.raises(BlobError, match="cannot read"):
        store.put_file(link)


def test_missing_and_malformed_digests(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    missing = "sha256:" + "0" * 64
    assert not store.has(missing)
    with pytest.raises(BlobError, match="not in the store"):
        store.open(missing)
    for bad in ("sha256:../../etc/passwd", "md5:abc", "0" * 64, "sha256:" + "A" * 64):
        with pytest.raises(BlobError, match="not a sha256 digest"):
            store.path_of(bad)


def test_per_file_limit_stores_nothing(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data", max_blob_bytes=1000)
    with pytest.raises(OutputRejected, match="over the limit"):
        store.put_bytes(b"x" * 1001)
    source = tmp_path / "f"
    source.write_bytes(b"y" * 5000)
    with pytest.raises(OutputRejected, match="over the limit"):
        store.put_file(source)
    assert _blob_files(store) == []
    assert list(store.tmp.iterdir()) == []


class _FullDisk:
    """A temp-file opener whose file fails with ENOSPC after ``room`` bytes."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.opened: list[Path] = []

    def __call__(self, path: Path) -> BinaryIO:
        self.opened.append(path)
        real = open(path, "xb")  # noqa: SIM115 - closed by the wrapper
        room = self

        class File:
            def write(self, data: bytes) -> int:
                if len(data) > room.room:
                    real.write(data[: room.room])  # a partial write really lands
                    room.room = 0
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                room.room -= len(data)
                return real.write(data)

            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def __enter__(self) -> File:
                return self

            def __exit__(self, *exc: object) -> None:
                real.close()

        return File()  # type: ignore[return-value]


def test_disk_full_gives_blob_error_and_no_partial_blob(tmp_path: Path) -> None:
    opener = _FullDisk(room=100_000)
    store = BlobStore(tmp_path / "data", opener=opener)
    source = tmp_path / "f"
    source.write_bytes(os.urandom(2 * 1024 * 1024))
    with pytest.raises(BlobError, match="disk full") as info:
        store.put_file(source)
    assert not isinstance(info.value, OutputRejected)  # the node's problem, not the task's
    assert opener.opened and not opener.opened[0].exists()  # the partial temp is gone
    assert _blob_files(store) == []
    assert list(store.tmp.iterdir()) == []
    # store_outputs: nothing half-stored, in particular no manifest.
    outputs = tmp_path / "out"
    outputs.mkdir()
    (outputs / "a").write_bytes(b"small")
    (outputs / "b").write_bytes(os.urandom(500_000))
    opener.room = 1000
    with pytest.raises(BlobError, match="disk full"):
        store.store_outputs(outputs)
    assert all(store.read_bytes(f"sha256:{p.name}") for p in _blob_files(store))  # all whole
    assert len(_blob_files(store)) <= 1  # at most "a", complete; no "b", no manifest


def test_leftover_temp_files_are_cleared_on_open(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    (store.tmp / "crashed.part").write_bytes(b"half")
    BlobStore(tmp_path)
    assert list(store.tmp.iterdir()) == []


def _make_outputs(root: Path) -> dict[str, bytes]:
    files = {
        "result.txt": b"42\n",
        "nested/deeper/data.bin": os.urandom(70_000),
        "nested/empty": b"",
        "z-last": b"z",
        "ünïcode name.txt": "ökay".encode(),  # non-ASCII name and content
    }
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "empty-dir").mkdir()
    return files


def test_store_outputs_and_materialize_round_trip(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data")
    outputs = tmp_path / "out"
    outputs.mkdir()
    files = _make_outputs(outputs)
    manifest_id = store.store_outputs(outputs)
    assert manifest_id.startswith("sha256:")
    raw = store.read_bytes(manifest_id)
    assert hashlib.sha256(raw).hexdigest() == manifest_id.split(":")[1]
    entries = msgpack.unpackb(raw)
    assert [e["path"] for e in entries] == sorted(files)
    assert all(list(e) == ["path", "sha256", "size"] for e in entries)
    assert {e["path"]: e["size"] for e in entries} == {k: len(v) for k, v in files.items()}

    # Same content, same manifest id (canonical), wherever it lives.
    other = tmp_path / "out2"
    other.mkdir()
    _make_outputs(other)
    for rel, data in files.items():
        (other / rel).write_bytes(data)
    assert store.store_outputs(other) == manifest_id

    dest = tmp_path / "dest"
    written = store.materialize(manifest_id, dest)
    assert written == sorted(files)
    for rel, data in files.items():
        assert (dest / rel).read_bytes() == data
    assert not any(p.name.endswith(".part") for p in dest.rglob("*"))


def test_empty_outputs_have_a_manifest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data")
    (tmp_path / "out").mkdir()
    manifest_id = store.store_outputs(tmp_path / "out")
    assert store.read_manifest(manifest_id) == []
    assert store.materialize(manifest_id, tmp_path / "dest") == []


def test_materialize_verifies_hashes(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data")
    outputs = tmp_path / "out"
    outputs.mkdir()
    (outputs / "good").write_bytes(b"good data")
    (outputs / "victim").write_bytes(b"original content")
    manifest_id = store.store_outputs(outputs)
    victim = store.path_of("sha256:" + hashlib.sha256(b"original content").hexdigest())
    victim.chmod(0o644)
    victim.write_bytes(b"tampered content")  # same size, other bytes
    with pytest.raises(BlobError, match="corrupt"):
        store.materialize(manifest_id, tmp_path / "dest")
    assert not (tmp_path / "dest" / "victim").exists()
    assert [p.name for p in (tmp_path / "dest").iterdir()] == ["good"]  # no partial file
    victim.write_bytes(b"original")  # truncated
    with pytest.raises(BlobError, match="corrupt"):
        store.materialize(manifest_id, tmp_path / "dest2")
    victim.write_bytes(b"original content, and more")  # grown
    with pytest.raises(BlobError, match="corrupt"):
        store.materialize(manifest_id, tmp_path / "dest3")
    # A corrupt manifest blob is caught too.
    store.path_of(manifest_id).write_bytes(b"\x91\xc0")
    with pytest.raises(BlobError, match="corrupt"):
        store.materialize(manifest_id, tmp_path / "dest4")


@pytest.mark.parametrize(
    "path", ["../escape", "/etc/passwd", "a/../../b", "a//b", "./a", "a/.", "", "a\x00b"]
)
def test_manifest_path_traversal_rejected(tmp_path: Path, path: str) -> None:
    store = BlobStore(tmp_path / "data")
    digest = store.put_bytes(b"payload")
    entry = {"path": path, "sha256": digest.split(":")[1], "size": 7}
    evil = store.put_bytes(msgpack.packb([entry], use_bin_type=True))
    with pytest.raises(BlobError, match="bad manifest path"):
        store.materialize(evil, tmp_path / "dest")
    with pytest.raises(BlobError, match="bad manifest path"):
        store.put_manifest([ManifestEntry(path, 7, digest.split(":")[1])])
    assert not (tmp_path / "escape").exists()


def test_materialize_does_not_follow_symlinks_in_dest(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data")
    outputs = tmp_path / "out"
    (outputs / "sub").mkdir(parents=True)
    (outputs / "sub" / "f").write_bytes(b"x")
    manifest_id = store.store_outputs(outputs)
    dest = tmp_path / "dest"
    dest.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (dest / "sub").symlink_to(elsewhere)
    with pytest.raises(BlobError, match="not a plain directory"):
        store.materialize(manifest_id, dest)
    assert list(elsewhere.iterdir()) == []


def test_manifest_decoding_is_strict() -> None:
    good = [ManifestEntry("b", 1, "1" * 64), ManifestEntry("a", 2, "2" * 64)]
    data = encode_manifest(good)
    assert [e.path for e in decode_manifest(data)] == ["a", "b"]
    unsorted = msgpack.packb([e.to_wire() for e in good], use_bin_type=True)
    with pytest.raises(BlobError, match="canonical"):
        decode_manifest(unsorted)
    with pytest.raises(BlobError, match="duplicate"):
        encode_manifest([good[0], good[0]])
    for bad in (b"\xc1", msgpack.packb({"a": 1}), msgpack.packb([{"path": "a"}])):
        with pytest.raises(BlobError):
            decode_manifest(bad)
    with pytest.raises(BlobError, match="bad size"):
        decode_manifest(msgpack.packb([{"path": "a", "sha256": "1" * 64, "size": -1}]))


def test_outputs_with_escaping_symlink_refused(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data")
    secret = tmp_path / "secret"
    secret.write_bytes(b"node private key")
    outputs = tmp_path / "out"
    outputs.mkdir()
    (outputs / "ok").write_bytes(b"fine")
    (outputs / "leak").symlink_to(secret)
    with pytest.raises(OutputRejected, match="escapes the output directory"):
        store.store_outputs(outputs)
    # Relative escapes and escapes via a symlinked directory too.
    (outputs / "leak").unlink()
    (outputs / "leak").symlink_to("../secret")
    with pytest.raises(OutputRejected, match="escapes"):
        store.store_outputs(outputs)
    (outputs / "leak").unlink()
    (outputs / "dir").symlink_to(tmp_path)
    with pytest.raises(OutputRejected, match="escapes"):
        store.store_outputs(outputs)
    assert _blob_files(store) == []  # refused before anything was stored


def test_outputs_inner_symlink_stored_as_copy(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data")
    outputs = tmp_path / "out"
    outputs.mkdir()
    (outputs / "real").write_bytes(b"content")
    (outputs / "alias").symlink_to("real")
    (outputs / "dangling").symlink_to("nowhere")
    with pytest.raises(OutputRejected, match="dangling"):
        store.store_outputs(outputs)
    (outputs / "dangling").unlink()
    entries = store.read_manifest(store.store_outputs(outputs))
    assert [(e.path, e.size) for e in entries] == [("alias", 7), ("real", 7)]


def test_outputs_special_files_and_limits(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data", max_blob_bytes=100, max_manifest_bytes=150, max_files=3)
    outputs = tmp_path / "out"
    outputs.mkdir()
    os.mkfifo(outputs / "fifo")
    with pytest.raises(OutputRejected, match="not a regular file"):
        store.store_outputs(outputs)
    (outputs / "fifo").unlink()
    (outputs / "a").write_bytes(b"a" * 101)
    with pytest.raises(OutputRejected, match="per-file limit"):
        store.store_outputs(outputs)
    (outputs / "a").write_bytes(b"a" * 100)
    (outputs / "b").write_bytes(b"b" * 60)
    with pytest.raises(OutputRejected, match="total more than 150"):
        store.store_outputs(outputs)
    assert store.store_outputs(outputs, max_total_bytes=1000)  # a per-call limit
    for name in "cde":
        (outputs / name).write_bytes(b"")
    with pytest.raises(OutputRejected, match="more than 3 files"):
        store.store_outputs(outputs, max_total_bytes=1000)


def test_outputs_names_must_be_utf8(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "data")
    outputs = tmp_path / "out"
    outputs.mkdir()
    with open(os.path.join(os.fsencode(outputs), b"bad\xff"), "wb") as file:
        file.write(b"x")
    with pytest.raises(OutputRejected, match="UTF-8"):
        store.store_outputs(outputs)


def test_content_already_stored_is_not_written_or_fsynced_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every trivial job stores the same empty outputs and logs: a small blob
    that exists is recognised by its hash before any temp file or fsync."""
    store = BlobStore(tmp_path / "data")
    fsyncs: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    first = store.put_file(empty)
    assert fsyncs  # new content: written and fsynced (file and directory)
    fsyncs.clear()
    assert store.put_file(empty) == first
    assert store.put_bytes(b"") == first
    assert store.put_manifest([]) == store.put_manifest([])
    fsyncs.clear()
    assert store.put_manifest([]) and fsyncs == []
    assert list(store.tmp.iterdir()) == []
    # New content, large or small, is still written durably.
    assert store.put_bytes(b"new") == f"sha256:{hashlib.sha256(b'new').hexdigest()}"
    assert fsyncs
    big = os.urandom(2 * 1024 * 1024 + 5)
    (tmp_path / "big").write_bytes(big)
    assert store.read_bytes(store.put_file(tmp_path / "big")) == big
