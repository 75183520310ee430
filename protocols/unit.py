"""The parameters an owner needs to auction and lease one kind of work.

A *work unit* is what the slot machines run: a task, how many slots, where it
may run and its retry policy.  A batch job is one unit; later job kinds (cron
runs, DAG tasks, chain stages, stream partitions) are made of units too.  It is
read from the canonical spec form (durations in ms, sizes in bytes), which the
spec module has already validated.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs


@attrs.frozen(kw_only=True)
class WorkUnit:
    task: dict[str, Any]
    count: int
    labels: dict[str, str]
    engine: str
    cpu: float
    memory: int
    timeout: float  # seconds
    attempts: int
    backoff: float  # seconds
    queue_timeout: float | None  # seconds; None = fail fast when nothing matches

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> WorkUnit:
        task = dict(spec["task"])
        return cls.from_task(
            task,
            count=int(spec.get("count") or 1),
            labels=dict((spec.get("constraints") or {}).get("labels") or {}),
            queue_timeout_ms=spec.get("queue_timeout"),
        )

    @classmethod
    def for_job(cls, spec: Mapping[str, Any]) -> WorkUnit:
        """The unit of a job's own slots.  A DAG or chain has none of its own
        (each task or stage is a run job): its first task stands in."""
        if "task" in spec:
            return cls.from_spec(spec)
        first = next(iter(spec.get("tasks") or {}), None)
        task = spec["tasks"][first] if first is not None else spec["stages"][0]["task"]
        plain = {
            k: task[k] for k in ("engine", "env", "resources", "timeout", "retry") if k in task
        }
        return cls.from_task(plain, count=0)

    @classmethod
    def from_task(
        cls,
        task: dict[str, Any],
        *,
        count: int = 1,
        labels: Mapping[str, str] | None = None,
        queue_timeout_ms: int | None = None,
    ) -> WorkUnit:
        resources = task.get("resources") or {}
        retry = task.get("retry") or {}
        return cls(
            task=task,
            count=count,
            labels=dict(labels or {}),
            engine=str(task["engine"]["type"]),
            cpu=float(resources.get("cpu", 0.1)),
            memory=int(resources.get("memory", 256 * 2**20)),
            timeout=int(task["timeout"]) / 1000,
            attempts=int(retry.get("attempts", 3)),
            backoff=int(retry.get("backoff", 1000)) / 1000,
            queue_timeout=None if queue_timeout_ms is None else int(queue_timeout_ms) / 1000,
        )
