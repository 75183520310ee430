"""When a cron job's runs are due: the scheduled times of a canonical schedule.

Pure: the caller passes wall-clock times (unix milliseconds); nothing here
reads a clock.  Times are whole milliseconds so that a run's id, derived from
its scheduled time, is exact.  ``cron`` expressions are evaluated in the
schedule's time zone (croniter handles DST gaps and repeats); ``every``
intervals are aligned to the unix epoch, so every owner computes the same times.
"""

from __future__ import annotations

import datetime
import zoneinfo
from collections.abc import Mapping
from typing import Any

import attrs
from croniter import croniter

COUNT_CAP = 100_000  # cron expressions: due times counted one by one up to this many


class ScheduledTimes:
    def __init__(self, schedule: Mapping[str, Any]) -> None:
        self.cron: str | None = schedule.get("cron")
        self.every_ms: int | None = schedule.get("every")
        self.zone = zoneinfo.ZoneInfo(schedule.get("time_zone") or "UTC")

    def next_after(self, wall_ms: int) -> int:
        """The first scheduled time strictly after ``wall_ms``."""
        if self.every_ms:
            return (wall_ms // self.every_ms + 1) * self.every_ms
        assert self.cron is not None
        start = datetime.datetime.fromtimestamp(wall_ms / 1000, self.zone)
        nxt: datetime.datetime = croniter(self.cron, start).get_next(datetime.datetime)
        return round(nxt.timestamp() * 1000)

    def between(self, after_ms: int, until_ms: int, limit: int) -> tuple[list[int], int]:
        """Scheduled times in ``(after_ms, until_ms]``: the last ``limit`` of
        them, and how many earlier ones there were (counted, not listed, up to
        a bound: a long outage of a per-second schedule must stay cheap)."""
        if self.every_ms:
            first = after_ms // self.every_ms + 1
            last = until_ms // self.every_ms
            if last < first:
                return [], 0
            total = last - first + 1
            kept = range(max(first, last - limit + 1), last + 1)
            return [k * self.every_ms for k in kept], total - len(kept)
        times: list[int] = []
        dropped = 0
        t = self.next_after(after_ms)
        while t <= until_ms and dropped < 100_000:
            times.append(t)
            if len(times) > limit:
                times.pop(0)
                dropped += 1
            t = self.next_after(t)
        return times, dropped

    def latest_until(self, until_ms: int) -> int:
        """The newest scheduled time at or before ``until_ms``."""
        if self.every_ms:
            return until_ms // self.every_ms * self.every_ms
        assert self.cron is not None
        # croniter's get_prev is strictly before its start: start 1 ms later.
        start = datetime.datetime.fromtimestamp((until_ms + 1) / 1000, self.zone)
        prev: datetime.datetime = croniter(self.cron, start).get_prev(datetime.datetime)
        return round(prev.timestamp() * 1000)

    def due(self, after_ms: int, until_ms: int) -> Due | None:
        """The scheduled times in ``(after_ms, until_ms]``, summed up: the
        oldest, the newest and how many (a cron expression's are counted one
        by one up to ``COUNT_CAP``: a long outage of a per-second schedule
        stays cheap).  None if there is none."""
        first = self.next_after(after_ms)
        if first > until_ms:
            return None
        newest = self.latest_until(until_ms)
        if self.every_ms:
            return Due(first, newest, (newest - first) // self.every_ms + 1)
        count, t = 1, first
        while t < newest and count < COUNT_CAP:
            t = self.next_after(t)
            count += 1
        return Due(first, newest, count, exact=t >= newest)


@attrs.frozen
class Due:
    """Scheduled times that came due together (``count`` of them, from
    ``first_ms`` to ``newest_ms``; at least ``count`` unless ``exact``)."""

    first_ms: int
    newest_ms: int
    count: int
    exact: bool = True
