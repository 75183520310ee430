"""A job's path through a node, one line per step, for latency work.

Off unless ``P2PNODE_TRACE`` names a path prefix when the process starts: each
process then appends ``<monotonic_ns> <pid> <event> <detail>`` lines to
``<prefix>.<pid>``.  The clock is ``CLOCK_MONOTONIC``, shared by every process
of the host, so the files of several nodes merge with ``sort -n`` into one
timeline (``bench/trace_job.py`` does that and prints the median of each step).

Off, a call site costs one attribute read: callers write
``if tracing.ON: tracing.event(...)`` so that the detail string is never built.
Events are diagnostics only: nothing reads them back and their names may change.
"""

from __future__ import annotations

import os
import time
from typing import TextIO

__all__ = ["ENV", "ON", "event"]

ENV = "P2PNODE_TRACE"
_PREFIX = os.environ.get(ENV, "")
ON: bool = bool(_PREFIX)

_file: TextIO | None = None
_pid = 0


def event(what: str, detail: str = "") -> None:
    """Append one line (line-buffered: a killed node loses at most the line)."""
    global _file, _pid
    if not ON:
        return
    pid = os.getpid()
    if _file is None or pid != _pid:  # first event, or in a forked child
        _pid = pid
        _file = open(f"{_PREFIX}.{pid}", "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    _file.write(f"{time.monotonic_ns()} {pid} {what} {detail}\n")
