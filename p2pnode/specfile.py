"""Reading a job spec file (the I/O half; validation is pure, in protocols.spec)."""

from __future__ import annotations

import os
import stat

from p2pnode.errors import P2PNodeError
from protocols.spec import MAX_SPEC_BYTES, JobSpec, parse_spec_bytes


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
    return parse_spec_bytes(read_spec_bytes(path))
