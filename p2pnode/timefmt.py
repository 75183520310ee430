"""Wall-clock times as people and programs read them (no heavy imports: the
CLI's client commands use this too)."""

from __future__ import annotations

import datetime


def iso_utc(unix_ms: int) -> str:
    """Unix milliseconds as ISO-8601 UTC: ``1700000000000`` -> ``2023-11-14T22:13:20.000Z``."""
    moment = datetime.datetime.fromtimestamp(unix_ms / 1000, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
