"""Content-addressed blob store and output manifests.

Layout: ``<data_dir>/blobs/sha256/<hh>/<hex>`` where ``hex`` is the sha256 of
the content and ``hh`` its first two characters (keeps directories small).
Digests are written ``sha256:<hex>`` everywhere in the API.

Writes are atomic: content goes to a temp file under ``<data_dir>/blobs/tmp/``
(same filesystem), is fsynced, then renamed onto its final name, and the
directory is fsynced.  A crash or a full disk therefore leaves either the whole
blob or nothing under ``sha256/`` (at worst a temp file, removed on the next
``BlobStore`` construction).  Since a name is its content's hash, two writers of
the same content race harmlessly: both renames install identical bytes.

A *manifest* describes an output directory: the canonical msgpack packing of a
list of ``{"path", "size", "sha256"}`` maps (``sha256`` is the bare hex),
sorted by path, with relative ``/``-separated paths only.  It is stored as a
blob itself, and its digest is the ``manifest_id``.

Reads are verified where it matters: :meth:`BlobStore.materialize` and
:meth:`BlobStore.read_bytes` rehash everything and fail on a mismatch;
:meth:`BlobStore.open` hands out the raw file for streaming (unverified).

All methods block (file I/O, fsync); call them from a worker thread in async
code (``trio.to_thread.run_sync``).  The store is safe to use from several
threads at once.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import re
import stat
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import attrs
import msgpack

from p2pnode.errors import BlobError as BlobError  # re-exported

__all__ = [
    "DEFAULT_MAX_BLOB_BYTES",
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_MANIFEST_BYTES",
    "BlobError",
    "BlobStore",
    "ManifestEntry",
    "Opener",
    "OutputRejected",
    "decode_manifest",
    "encode_manifest",
]

GIB = 1024**3
DEFAULT_MAX_BLOB_BYTES = 1 * GIB  # one file
DEFAULT_MAX_MANIFEST_BYTES = 4 * GIB  # every file of one manifest together
DEFAULT_MAX_FILES = 10_000  # entries per manifest: bounds the manifest blob itself
MAX_PATH_LEN = 4096
_CHUNK = 1024 * 1024

_DIGEST = re.compile(r"sha256:([0-9a-f]{64})")
_HEX = re.compile(r"[0-9a-f]{64}")

Opener = Callable[[Path], BinaryIO]
"""Creates (exclusively) and opens a new temp file for writing.  A parameter so
tests can inject faults such as a full disk."""


def _default_opener(path: Path) -> BinaryIO:
    return open(path, "xb")  # the caller closes it


class OutputRejected(BlobError):
    """An output directory breaks the rules (escaping symlink, special file,
    over a limit, unencodable name): the task's fault, not the node's."""


@attrs.frozen
class ManifestEntry:
    path: str  # relative, "/"-separated, no "." / ".." / empty parts
    size: int
    sha256: str  # bare lowercase hex

    def to_wire(self) -> dict[str, Any]:
        # Fixed key order: part of the canonical form.
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


def _check_rel_path(path: str) -> str:
    """Raise BlobError unless ``path`` is a safe relative path."""
    if not path or len(path) > MAX_PATH_LEN:
        raise BlobError(f"bad manifest path {path[:100]!r}: empty or too long")
    if "\x00" in path or path.startswith("/"):
        raise BlobError(f"bad manifest path {path[:100]!r}: must be relative")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise BlobError(f"bad manifest path {path[:100]!r}: '.', '..' or empty component")
    return path


def encode_manifest(entries: list[ManifestEntry]) -> bytes:
    """The canonical bytes of a manifest (sorted by path, fixed key order)."""
    ordered = sorted(entries, key=lambda e: e.path)
    for prev, cur in itertools.pairwise(ordered):
        if prev.path == cur.path:
            raise BlobError(f"duplicate manifest path {cur.path!r}")
    packed: bytes = msgpack.packb([e.to_wire() for e in ordered], use_bin_type=True)
    return packed


def decode_manifest(data: bytes) -> list[ManifestEntry]:
    """Parse and validate manifest bytes; reject anything non-canonical."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as err:  # msgpack raises several unrelated types
        raise BlobError(f"manifest is not valid msgpack: {err}") from err
    if not isinstance(raw, list):
        raise BlobError("manifest is not a list")
    entries: list[ManifestEntry] = []
    for item in raw:
        if not isinstance(item, dict) or set(item) != {"path", "size", "sha256"}:
            raise BlobError("manifest entry must be a map of path, size, sha256")
        path, size, hexd = item["path"], item["size"], item["sha256"]
        if not isinstance(path, str) or not isinstance(hexd, str) or not _HEX.fullmatch(hexd):
            raise BlobError("manifest entry has a bad path or sha256")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise BlobError(f"manifest entry {path!r} has a bad size")
        entries.append(ManifestEntry(_check_rel_path(path), size, hexd))
    if encode_manifest(entries) != data:
        raise BlobError("manifest is not in canonical form")
    return entries


class BlobStore:
    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
        max_manifest_bytes: int = DEFAULT_MAX_MANIFEST_BYTES,
        max_files: int = DEFAULT_MAX_FILES,
        opener: Opener = _default_opener,
        fsync: bool = True,
        sweep_temp: bool = True,
    ) -> None:
        self.root = Path(data_dir) / "blobs"
        self.objects = self.root / "sha256"
        self.tmp = self.root / "tmp"
        self.max_blob_bytes = max_blob_bytes
        self.max_manifest_bytes = max_manifest_bytes
        self.max_files = max_files
        self._opener = opener
        self._fsync = fsync
        self.objects.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir(parents=True, exist_ok=True)
        # Temp files left by a crash are never referenced: clear them.  (Another
        # live store on the same directory would lose an in-flight write; one
        # store per data dir is the rule; ``sweep_temp=False`` is for a short-lived
        # writer beside the node's own store, e.g. the CLI storing a wasm module.)
        if sweep_temp:
            for leftover in self.tmp.iterdir():
                leftover.unlink(missing_ok=True)

    # --- single blobs ------------------------------------------------------------

    @staticmethod
    def _hex(digest: str) -> str:
        match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
        if match is None:
            raise BlobError(f"not a sha256 digest: {str(digest)[:80]!r}")
        return match.group(1)

    def path_of(self, digest: str) -> Path:
        """Where the blob lives (whether or not it is present)."""
        hexd = self._hex(digest)
        return self.objects / hexd[:2] / hexd

    def has(self, digest: str) -> bool:
        return self.path_of(digest).is_file()

    def open(self, digest: str) -> BinaryIO:
        """The raw blob file for reading (not verified: see ``read_bytes``)."""
        try:
            return open(self.path_of(digest), "rb")  # the caller closes it
        except FileNotFoundError:
            raise BlobError(f"blob {digest} is not in the store") from None

    def read_bytes(self, digest: str, *, max_bytes: int | None = None) -> bytes:
        """The whole blob, verified against its digest."""
        limit = self.max_blob_bytes if max_bytes is None else max_bytes
        with self.open(digest) as file:
            data = file.read(limit + 1)
        if len(data) > limit:
            raise BlobError(f"blob {digest} is larger than {limit} bytes")
        if hashlib.sha256(data).hexdigest() != self._hex(digest):
            raise BlobError(f"blob {digest} is corrupt (content does not match its hash)")
        return data

    def put_bytes(self, data: bytes) -> str:
        if len(data) > self.max_blob_bytes:
            raise OutputRejected(f"blob of {len(data)} bytes is over the limit of "
                                 f"{self.max_blob_bytes} bytes")
        return self._store(iter((data,)), limit=self.max_blob_bytes, what="blob")

    def put_file(self, path: str | os.PathLike[str]) -> str:
        """Store a regular file's content (a symlink is not followed)."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as err:
            raise BlobError(f"cannot read {os.fspath(path)!r}: {err.strerror}") from err
        with os.fdopen(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OutputRejected(f"{os.fspath(path)!r} is not a regular file")
            return self._store(_chunks(file), limit=self.max_blob_bytes, what=os.fspath(path))

    def _store(self, chunks: Iterator[bytes], *, limit: int, what: str) -> str:
        head = next(chunks, b"")
        rest = next(chunks, b"") if len(head) < _CHUNK else b""
        if not rest and len(head) < _CHUNK:  # the whole content: small (a manifest, a log)
            if len(head) > limit:
                raise OutputRejected(f"{what}: over the limit of {limit} bytes")
            hexd = hashlib.sha256(head).hexdigest()
            if (self.objects / hexd[:2] / hexd).is_file():
                # Already stored (content-addressed): no temp file, no fsync.
                # Every trivial job's empty outputs and logs land here.
                return f"sha256:{hexd}"
        return self._write(itertools.chain((head, rest), chunks), limit=limit, what=what)

    def _write(self, chunks: Iterator[bytes], *, limit: int, what: str) -> str:
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        hasher = hashlib.sha256()
        size = 0
        try:
            with self._opener(tmp) as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise OutputRejected(f"{what}: over the limit of {limit} bytes")
                    hasher.update(chunk)
                    out.write(chunk)
                out.flush()
                if self._fsync:
                    os.fsync(out.fileno())
            hexd = hasher.hexdigest()
            final = self.objects / hexd[:2] / hexd
            if final.is_file():  # already stored (content-addressed: same bytes)
                tmp.unlink()
            else:
                final.parent.mkdir(exist_ok=True)
                os.replace(tmp, final)
                if self._fsync:
                    _fsync_dir(final.parent)
            return f"sha256:{hexd}"
        except OSError as err:
            tmp.unlink(missing_ok=True)
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise BlobError(f"disk full while storing {what} in {self.root}: "
                                f"{err.strerror or err}") from err
            raise BlobError(f"cannot store {what} in {self.root}: {err}") from err
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    # --- manifests -------------------------------------------------------------

    def read_manifest(self, manifest_id: str) -> list[ManifestEntry]:
        # A manifest is small (bounded by max_files); 16 MiB is far above any real one.
        return decode_manifest(self.read_bytes(manifest_id, max_bytes=16 * 1024 * 1024))

    def put_manifest(self, entries: list[ManifestEntry]) -> str:
        for entry in entries:
            _check_rel_path(entry.path)
        data = encode_manifest(entries)
        return self._store(iter((data,)), limit=len(data), what="manifest")

    def store_outputs(
        self, outputs_dir: str | os.PathLike[str], *, max_total_bytes: int | None = None
    ) -> str:
        """Store every file under ``outputs_dir`` and return the manifest id.

        Directories are walked, never followed through symlinks.  A symlink whose
        target resolves inside ``outputs_dir`` to a regular file is stored as a
        copy of that file; one that escapes the directory, dangles, or points at
        a directory is refused (``OutputRejected``), as are special files
        (fifos, sockets, devices) and names that are not UTF-8.

        Sizes are checked against the limits before anything is stored, so an
        oversized output stores nothing; the manifest blob, written last, exists
        only if every file was stored.
        """
        total_limit = self.max_manifest_bytes if max_total_bytes is None else max_total_bytes
        root = Path(outputs_dir)
        real_root = Path(os.path.realpath(root))
        plan: list[tuple[str, Path]] = []
        total = 0
        for rel, full in _walk(root):
            if len(plan) >= self.max_files:
                raise OutputRejected(f"outputs: more than {self.max_files} files")
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                raise OutputRejected(f"output name {rel!r} is not valid UTF-8") from None
            _check_rel_path(rel)
            st = full.lstat()
            source = full
            if stat.S_ISLNK(st.st_mode):
                target = Path(os.path.realpath(full))
                if not target.is_relative_to(real_root) or target == real_root:
                    raise OutputRejected(
                        f"output {rel!r} is a symlink that escapes the output directory"
                    )
                if not target.exists():
                    raise OutputRejected(f"output {rel!r} is a dangling symlink")
                st = target.lstat()
                source = target
            if not stat.S_ISREG(st.st_mode):
                raise OutputRejected(f"output {rel!r} is not a regular file")
            if st.st_size > self.max_blob_bytes:
                raise OutputRejected(f"output {rel!r} is {st.st_size} bytes, over the "
                                     f"per-file limit of {self.max_blob_bytes}")
            total += st.st_size
            if total > total_limit:
                raise OutputRejected(f"outputs total more than {total_limit} bytes")
            plan.append((rel, source))
        entries: list[ManifestEntry] = []
        stored = 0
        for rel, source in plan:
            digest = self.put_file(source)
            size = self.path_of(digest).stat().st_size
            stored += size
            if stored > total_limit:  # a file grew after the scan
                raise OutputRejected(f"outputs total more than {total_limit} bytes")
            entries.append(ManifestEntry(rel, size, self._hex(digest)))
        return self.put_manifest(entries)

    def materialize(self, manifest_id: str, dest_dir: str | os.PathLike[str]) -> list[str]:
        """Write a manifest's files under ``dest_dir``; return their paths.

        Every blob is rehashed while copying; a mismatch (corrupt or truncated
        blob) raises ``BlobError`` and leaves no partial file of that entry.
        Existing files are replaced; existing symlinks on the way are refused.
        """
        entries = self.read_manifest(manifest_id)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        real_dest = Path(os.path.realpath(dest))
        written: list[str] = []
        for entry in entries:
            try:
                target = _make_parents(real_dest, entry.path)
            except OSError as err:
                raise BlobError(f"cannot write {entry.path!r} under {dest}: {err}") from err
            tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.part"
            try:
                hasher = hashlib.sha256()
                size = 0
                with self.open(f"sha256:{entry.sha256}") as src, open(tmp, "xb") as out:
                    for chunk in _chunks(src):
                        size += len(chunk)
                        if size > entry.size:
                            break
                        hasher.update(chunk)
                        out.write(chunk)
                if size != entry.size or hasher.hexdigest() != entry.sha256:
                    raise BlobError(f"blob sha256:{entry.sha256} for {entry.path!r} is "
                                    "corrupt (content does not match its hash)")
                os.replace(tmp, target)
            except OSError as err:
                tmp.unlink(missing_ok=True)
                raise BlobError(f"cannot write {entry.path!r} under {dest}: {err}") from err
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            written.append(entry.path)
        return written


def _chunks(file: BinaryIO) -> Iterator[bytes]:
    while chunk := file.read(_CHUNK):
        yield chunk


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, full path) of every non-directory under root, sorted,
    never descending through symlinks."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        base = root / rel_dir if rel_dir else root
        try:
            with os.scandir(base) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError as err:
            raise BlobError(f"cannot list outputs dir {base}: {err.strerror}") from err
        for item in items:
            rel = f"{rel_dir}/{item.name}" if rel_dir else item.name
            if item.is_dir(follow_symlinks=False):
                stack.append(rel)
            else:
                yield rel, Path(item.path)


def _make_parents(root: Path, rel: str) -> Path:
    """Create the directories of ``rel`` under ``root`` (which has no symlinks
    in it); refuse to go through an existing symlink or non-directory, which
    could redirect a write outside ``root``."""
    current = root
    for part in rel.split("/")[:-1]:
        current = current / part
        try:
            st = current.lstat()
        except FileNotFoundError:
            current.mkdir()
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise BlobError(f"refusing to write {rel!r}: {current} is not a plain directory")
    return root / rel


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
