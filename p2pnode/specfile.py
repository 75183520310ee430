"""Reading a job spec file (the I/O half; validation is pure, in protocols.spec)."""

from __future__ import annotations

import os

from protocols.spec import MAX_SPEC_BYTES, JobSpec, parse_spec_bytes


def load_spec_file(path: str | os.PathLike[str]) -> JobSpec:
    """Read and validate a spec file.

    Raises OSError if the file cannot be read, SpecValidationError if it is not
    a valid spec (including too big or not UTF-8).
    """
    with open(path, "rb") as file:
        data = file.read(MAX_SPEC_BYTES + 1)  # never read more than we accept
    return parse_spec_bytes(data)
