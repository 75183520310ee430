"""What this node's executions cost: counts by executor and outcome, and each
executor's duration histogram (``/metrics``, ``node stats``).

Plain counters the runtime updates once per finished execution: no
prometheus objects here (the metrics page builds its families from these at
scrape time), so many nodes in one process keep separate numbers and the
runtime does not depend on prometheus_client.
"""

from __future__ import annotations

import bisect
from typing import Any

import attrs

# Upper bounds (seconds) of the duration buckets: from a quick process task to
# an hour-long batch run; +Inf is implicit (the count).
DURATION_BUCKETS: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)


@attrs.define
class DurationHistogram:
    """One executor's durations: per bucket the runs that took *at most* its
    bound (not cumulative here; ``cumulative`` adds them up), plus sum and count."""

    bucket_counts: list[int] = attrs.field(factory=lambda: [0] * len(DURATION_BUCKETS))
    total_seconds: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(DURATION_BUCKETS, seconds)
        if index < len(DURATION_BUCKETS):
            self.bucket_counts[index] += 1
        self.total_seconds += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound, runs at most that long) per bucket, +Inf last."""
        rows, running = [], 0
        for bound, n in zip(DURATION_BUCKETS, self.bucket_counts, strict=True):
            running += n
            rows.append((bound, running))
        rows.append((float("inf"), self.count))
        return rows


class ExecutionStats:
    """Finished executions by (executor, outcome) and durations by executor."""

    def __init__(self) -> None:
        self.finished: dict[tuple[str, str], int] = {}  # (executor, status) -> count
        self.durations: dict[str, DurationHistogram] = {}

    def record(self, executor: str, outcome: str, seconds: float) -> None:
        key = (executor, outcome)
        self.finished[key] = self.finished.get(key, 0) + 1
        histogram = self.durations.get(executor)
        if histogram is None:
            histogram = self.durations[executor] = DurationHistogram()
        histogram.observe(max(0.0, seconds))

    def to_json(self) -> dict[str, Any]:
        """``node stats``' ``executions`` part: executor -> outcome -> count, and
        executor -> {count, sum_s, buckets: {bound: cumulative count}}."""
        by_executor: dict[str, dict[str, int]] = {}
        for (executor, outcome), n in sorted(self.finished.items()):
            by_executor.setdefault(executor, {})[outcome] = n
        return {
            "finished": by_executor,
            "durations": {
                executor: {
                    "count": h.count,
                    "sum_s": round(h.total_seconds, 3),
                    "buckets": {_bound(b): n for b, n in h.cumulative()},
                }
                for executor, h in sorted(self.durations.items())
            },
        }


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else format(bound, "g")
