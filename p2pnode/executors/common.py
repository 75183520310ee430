"""What the real executors share: workdir layout, bounded output tails, env,
and turning an outputs directory into a manifest.

Workdir layout (one per execution)::

    <data_dir>/work/<safe execution id>/
        inputs/    read-only for the task by convention (bind-mounted ro in docker)
                   inputs/<name>/ holds input <name> (StartExecution.inputs)
        outputs/   whatever the task leaves here becomes the result manifest

Progress lines (stream consumers): a stdout line ``P2PNODE_CHECKPOINT <value>``
or ``P2PNODE_LAG <n>`` is a progress report (:class:`ProgressParser`); the line
still counts in the stdout tail like any other.

``<safe execution id>`` is the id restricted to ``[A-Za-z0-9._-]`` plus a short
hash of the full id, so any id maps to one distinct, harmless directory name.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import weakref
from collections.abc import Mapping
from pathlib import Path

import attrs
import trio

from p2pnode.blobs import BlobError, BlobStore, OutputRejected
from p2pnode.errors import ExecutorError as ExecutorError  # re-exported
from p2pnode.executor import ProgressSink
from p2pnode.logcapture import current_output
from protocols.events import ExecutionFinished, StartExecution
from protocols.messages import MAX_CHECKPOINT_LEN, MAX_TAIL_LEN, MAX_TEXT_LEN

__all__ = [
    "CHECKPOINT_PREFIX",
    "DEFAULT_TAIL_BYTES",
    "LAG_PREFIX",
    "ExecutorError",
    "ProgressParser",
    "TailBuffer",
    "Workdir",
    "clip_error",
    "drain",
    "lay_out_inputs",
    "p2pnode_env",
    "safe_name",
    "store_outputs",
    "task_env",
]

DEFAULT_TAIL_BYTES = 16 * 1024
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def clip_error(text: str) -> str:
    """Error strings travel in protocol messages bounded to MAX_TEXT_LEN."""
    return text if len(text) <= MAX_TEXT_LEN else text[: MAX_TEXT_LEN - 3] + "..."


def safe_name(execution_id: str) -> str:
    digest = hashlib.sha256(execution_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    readable = _UNSAFE.sub("_", execution_id)[:64].lstrip(".")
    return f"{readable}-{digest}" if readable else digest


class TailBuffer:
    """Keeps the last ``limit`` bytes written to it, and counts them all.

    Memory stays bounded by ~2 * limit however much is fed in: it appends,
    and trims back to ``limit`` once the buffer doubles (amortised O(1)).
    """

    def __init__(self, limit: int = DEFAULT_TAIL_BYTES) -> None:
        self.limit = max(0, limit)
        self.total = 0
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self.total += len(data)
        if len(data) >= self.limit:
            self._buf[:] = data[len(data) - self.limit :] if self.limit else b""
            return
        self._buf += data
        if len(self._buf) > 2 * self.limit:
            del self._buf[: len(self._buf) - self.limit]

    def tail(self) -> bytes:
        return bytes(self._buf[-self.limit :]) if self.limit else b""

    def text(self) -> str:
        """The tail decoded as UTF-8 (bad bytes replaced), marked when cut,
        and never longer than the protocol's tail field allows."""
        data = self.tail()
        cut = self.total > len(data)
        if cut:
            # Do not start in the middle of a UTF-8 sequence.
            skip = 0
            while skip < min(3, len(data)) and 0x80 <= data[skip] < 0xC0:
                skip += 1
            data = data[skip:]
        text = data.decode("utf-8", "replace")
        if not cut:
            return text[-MAX_TAIL_LEN:]
        marker = f"[... {self.total - len(data)} bytes cut ...]\n"
        return marker + text[-(MAX_TAIL_LEN - len(marker)) :]


CHECKPOINT_PREFIX = b"P2PNODE_CHECKPOINT "
LAG_PREFIX = b"P2PNODE_LAG "
# A line is kept up to here; a longer checkpoint line is still reported (cut
# just past the protocol's limit) so the holder refuses it loudly.
_MAX_LINE = len(CHECKPOINT_PREFIX) + MAX_CHECKPOINT_LEN + 8


class ProgressParser:
    """Turns a task's stdout into progress reports, line by line.

    ``P2PNODE_CHECKPOINT <value>``: a checkpoint (``value`` is the rest of the
    line, surrounding whitespace stripped; UTF-8, bad bytes replaced).
    ``P2PNODE_LAG <n>``: a lag, a non-negative integer.  Both must start the
    line; other lines, empty values and malformed lags are ignored.  Memory is
    bounded: only the first ``_MAX_LINE`` bytes of a line are kept.
    """

    def __init__(self, sink: ProgressSink) -> None:
        self.sink = sink
        self.reports = 0
        self._line = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> None:
        start = 0
        while True:
            end = data.find(b"\n", start)
            piece = data[start:] if end < 0 else data[start:end]
            room = _MAX_LINE - len(self._line)
            if len(piece) > room:
                self._overflow = True
                piece = piece[:room]
            self._line += piece
            if end < 0:
                return
            self._end_line()
            start = end + 1

    def close(self) -> None:
        """End of output: a last line without a newline still counts."""
        if self._line:
            self._end_line()

    def _end_line(self) -> None:
        line = bytes(self._line)
        self._line.clear()
        self._overflow = False
        if line.startswith(CHECKPOINT_PREFIX):
            value = line[len(CHECKPOINT_PREFIX) :].decode("utf-8", "replace").strip()
            if value:
                self.reports += 1
                self.sink.report(checkpoint=value)
        elif line.startswith(LAG_PREFIX):
            text = line[len(LAG_PREFIX) :].strip()
            if text.isdigit() and len(text) <= 18:
                self.reports += 1
                self.sink.report(lag=int(text))


async def drain(
    stream: trio.abc.ReceiveStream,
    tail: TailBuffer,
    parser: ProgressParser | None = None,
    name: str = "",
) -> None:
    """Read a pipe to EOF into a bounded tail (and a progress parser, if any).
    ``name`` ("stdout"/"stderr"): also hand it to the execution's output
    capture (``p2pnode/logcapture.py``): live logs and the complete log."""
    sink = current_output() if name else None
    while True:
        chunk = await stream.receive_some(65536)
        if not chunk:
            if parser is not None:
                parser.close()
            return
        tail.feed(chunk)
        if sink is not None:
            sink.write(name, chunk)
        if parser is not None:
            parser.feed(chunk)


def lay_out_inputs(blobs: BlobStore, start: StartExecution, inputs_dir: Path) -> None:
    """Write each input ``(name, manifest id, node)`` of ``start`` under
    ``inputs_dir/<name>/`` from the local blob store (the engine router fetched
    what was missing before the executor ran).  Blocking: call it in a thread.
    Raises ``ExecutorError`` naming the input that cannot be laid out."""
    for name, manifest_id, node in start.inputs:
        # A relative path of plain parts: "<parent>" or "<parent>/<i>" (a DAG
        # child gets each instance of a map parent under its own directory).
        parts = name.split("/")
        if any(p in ("", ".", "..") or "\0" in p for p in parts):
            raise ExecutorError(clip_error(f"input name {name!r} is not a plain relative path"))
        try:
            blobs.materialize(manifest_id, inputs_dir / name)
        except BlobError as err:
            raise ExecutorError(
                clip_error(f"input {name!r} ({manifest_id} from {node}): {err}")
            ) from err


@attrs.frozen
class Workdir:
    root: Path
    inputs: Path
    outputs: Path

    @classmethod
    def create(cls, data_dir: str | os.PathLike[str], execution_id: str) -> Workdir:
        """A fresh, empty workdir: anything left from an earlier attempt with
        the same execution id is removed first."""
        root = Path(data_dir) / "work" / safe_name(execution_id)
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        work = cls(root, root / "inputs", root / "outputs")
        work.inputs.mkdir()
        work.outputs.mkdir()
        return work

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def p2pnode_env(start: StartExecution, *, inputs: str, outputs: str) -> dict[str, str]:
    """The variables every task gets; they override the task's own env."""
    return {
        "P2PNODE_INPUTS": inputs,
        "P2PNODE_OUTPUTS": outputs,
        "P2PNODE_SLOT": str(start.slot),
        "P2PNODE_EXECUTION_ID": start.execution_id,
        "P2PNODE_JOB_ID": start.job_id,
    }


def task_env(task_env: Mapping[str, str], start: StartExecution) -> dict[str, str]:
    """The task's env, then the lease's env (the holder already merged the task
    env into ``start.env``; merging again keeps either source sufficient)."""
    return {**task_env, **start.env}


async def store_outputs(blobs: BlobStore, outputs: Path, max_total_bytes: int | None) -> str:
    """Outputs dir -> manifest id, in a worker thread (hashing and fsync block).

    Not abandoned on cancel: the thread finishes its (bounded) work, so no
    half-written temp file is left behind by a cancelled caller.

    An empty outputs dir (most tasks) always has the same manifest: once it is
    stored, it is recognised here with a directory read and a stat, without the
    worker-thread round trip (issue 16: one of three per trivial execution).
    """
    if _is_empty_dir(outputs):  # read once, as store_outputs reads it once
        known = _EMPTY_OUTPUTS_MANIFEST.get(blobs)
        if known is not None and blobs.has(known):  # the blob may have been removed
            return known
        # What store_outputs stores for an empty dir, so the cached id is that by construction.
        known = await trio.to_thread.run_sync(blobs.put_manifest, [])
        _EMPTY_OUTPUTS_MANIFEST[blobs] = known
        return known
    return await trio.to_thread.run_sync(
        lambda: blobs.store_outputs(outputs, max_total_bytes=max_total_bytes)
    )


# BlobStore -> the manifest id of an empty outputs dir, once stored there.
_EMPTY_OUTPUTS_MANIFEST: weakref.WeakKeyDictionary[BlobStore, str] = weakref.WeakKeyDictionary()


def _is_empty_dir(path: Path) -> bool:
    """True only for a readable directory without entries (else: the full path)."""
    try:
        with os.scandir(path) as entries:
            return next(entries, None) is None
    except OSError:
        return False


async def finish_with_outputs(
    blobs: BlobStore,
    work: Workdir,
    start: StartExecution,
    *,
    exit_code: int,
    error: str,
    stdout: str,
    stderr: str,
    max_output_bytes: int | None,
    started_at: float,
) -> ExecutionFinished:
    """Store the outputs and report how the execution ended.

    Outputs are stored even when the task failed (they help debugging).  Outputs
    the rules refuse (an escaping symlink, too large) are the task's own fault:
    the execution fails, keeping its exit code.
    """
    manifest_id = ""
    try:
        manifest_id = await store_outputs(blobs, work.outputs, max_output_bytes)
    except OutputRejected as rejected:
        error = clip_error(f"outputs refused: {rejected}")
    succeeded = exit_code == 0 and bool(manifest_id)
    return ExecutionFinished(
        execution_id=start.execution_id,
        status="succeeded" if succeeded else "failed",
        exit_code=exit_code,
        error=error,
        manifest_id=manifest_id,
        stdout_tail=stdout,
        stderr_tail=stderr,
        duration_ms=int((trio.current_time() - started_at) * 1000),
    )
