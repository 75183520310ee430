"""Tasks remembered by value once valid: a task seen before is not validated
again.

Validation is a pure function of the document's value, and the same task
arrives again and again at a holder: every grant of a job's slots, its
retries and re-grants carry it.  The key is the task packed with msgpack
``strict_types``: the same bytes mean the same value and types (a tuple, a
subclass or an int outside msgpack's range refuses to pack, and such a task
is simply validated each time).  Only successes are remembered, at most
``MAX_REMEMBERED`` (then the memo starts over), so an invalid task is always
validated and reported in full, and a flood of distinct tasks costs bounded
memory.  (Submitted specs are not remembered: each job's spec is new.)
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from protocols.spec.validate import validate_task

MAX_REMEMBERED: Final = 1024

_valid_tasks: dict[bytes, None] = {}


def _key(document: Any) -> bytes | None:
    try:
        packed: bytes = msgpack.packb(document, use_bin_type=True, strict_types=True)
    except (TypeError, ValueError, OverflowError):
        return None
    return packed


def check_task(task: Any) -> None:
    """``validate_task(task, canonical=True)``, skipped for a task found valid
    before.  Raises SpecValidationError like it."""
    key = _key(task)
    if key is not None and key in _valid_tasks:
        return
    validate_task(task, canonical=True)
    if key is not None:
        if len(_valid_tasks) >= MAX_REMEMBERED:
            _valid_tasks.clear()
        _valid_tasks[key] = None


def forget() -> None:
    """Drop everything remembered (tests)."""
    _valid_tasks.clear()
