"""Wall-clock times in the views the core describes (pure: the times are
given, in unix milliseconds, never read from a clock here).

Every job, slot and execution view carries ``submitted_at``, ``started_at``,
``finished_at`` (ISO-8601 UTC strings, or None) and ``duration_s`` (seconds
from start to finish, None until finished), next to the ``*_ms`` fields
they come from."""

from __future__ import annotations

import datetime

TIME_FIELDS = ("submitted_at", "started_at", "finished_at", "duration_s")


def iso_utc(unix_ms: int) -> str:
    """Unix milliseconds as ISO-8601 UTC: ``1700000000000`` -> ``2023-11-14T22:13:20.000Z``."""
    moment = datetime.datetime.fromtimestamp(unix_ms / 1000, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def time_fields(submitted_ms: int, started_ms: int, finished_ms: int) -> dict[str, object]:
    """The ``*_ms`` fields (None for 0: not yet, or unknown) and ``TIME_FIELDS``."""
    return {
        "submitted_ms": submitted_ms or None,
        "started_ms": started_ms or None,
        "finished_ms": finished_ms or None,
        "submitted_at": iso_utc(submitted_ms) if submitted_ms else None,
        "started_at": iso_utc(started_ms) if started_ms else None,
        "finished_at": iso_utc(finished_ms) if finished_ms else None,
        "duration_s": round((finished_ms - started_ms) / 1000, 3)
        if started_ms and finished_ms
        else None,
    }
