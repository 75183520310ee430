"""Reading a job spec file (the I/O half; validation is pure, in protocols.spec).

A file may also hold a Bacalhau v1 job (``p2pnode/bacalhau.py``):
:func:`native_spec_text` turns it into the p2pnode spec it maps to, which is
what is validated, explained and submitted.
"""

from __future__ import annotations

import os
import stat

import yaml

from p2pnode.bacalhau import bacalhau_to_spec, is_bacalhau_job
from p2pnode.errors import P2PNodeError
from protocols.spec import (
    DOCUMENT,
    MAX_SPEC_BYTES,
    JobSpec,
    SpecError,
    SpecValidationError,
    load_spec_text,
    parse_spec,
)


class SpecFileError(P2PNodeError, OSError):
    """SPEC is not something a spec can be read from (a device, a socket, a directory)."""


def read_spec_bytes(path: str | os.PathLike[str]) -> bytes:
    """At most ``MAX_SPEC_BYTES + 1`` bytes of the spec file ``path``.

    Regular files and pipes (``<(cmd)``, a FIFO) are read; a FIFO without a
    writer reads as empty instead of waiting for one (``O_NONBLOCK`` open).
    Devices, sockets and directories are refused (``SpecFileError``):
    ``/dev/zero`` never ends.  Raises OSError if the file cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise SpecFileError("is a directory")
        if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
            raise SpecFileError("not a regular file or a pipe")
        os.set_blocking(fd, True)
        chunks = []
        left = MAX_SPEC_BYTES + 1  # never read more than we accept
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def load_spec_file(path: str | os.PathLike[str]) -> JobSpec:
    """Read and validate a spec file.

    Raises OSError if the file cannot be read, SpecValidationError if it is not
    a valid spec (including too big or not UTF-8).
    """
    return parse_spec(native_spec_text(read_spec_bytes(path)))


def native_spec_text(data: bytes | str) -> str:
    """The p2pnode spec text of a spec file's content: the text itself, or,
    for a Bacalhau job, the p2pnode spec it maps to (as YAML).

    Raises SpecValidationError when the content is too big, not UTF-8, not
    YAML, or a Bacalhau job with fields that cannot map (each listed).
    """
    if isinstance(data, bytes):
        if len(data) > MAX_SPEC_BYTES:
            raise SpecValidationError(
                [SpecError(DOCUMENT, f"the spec is over the limit of {MAX_SPEC_BYTES // 1024} KiB")]
            )
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise SpecValidationError(
                [SpecError(DOCUMENT, f"not UTF-8 text (byte {err.start})")]
            ) from None
    else:
        text = data
    doc = load_spec_text(text)
    if not is_bacalhau_job(doc):
        return text
    return yaml.safe_dump(bacalhau_to_spec(doc), sort_keys=False)
