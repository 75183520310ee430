"""Seeded job workloads for the simulator (canonical specs)."""

from __future__ import annotations

import random
from typing import Any

ZONES = ("a", "b", "c")


def sim_task(duration_ms: int = 5000, *, exit_code: int = 0, fail_rate: float = 0.0,
             hang: bool = False, timeout_ms: int = 60_000, attempts: int = 3,
             backoff_ms: int = 1000, cpu: float = 0.5,
             memory: int = 256 * 2**20) -> dict[str, Any]:
    return {
        "engine": {"type": "sim", "duration": int(duration_ms), "exit_code": int(exit_code),
                   "output_bytes": 0, "fail_rate": float(fail_rate), "hang": bool(hang)},
        "env": {},
        "resources": {"cpu": cpu, "memory": memory},
        "timeout": int(timeout_ms),
        "retry": {"attempts": int(attempts), "backoff": int(backoff_ms)},
    }


def batch_spec(name: str, count: int = 1, *, labels: dict[str, str] | None = None,
               task: dict[str, Any] | None = None,
               queue_timeout_ms: int | None = None) -> dict[str, Any]:
    """A batch spec in canonical form (integer ms, bytes, sorted keys)."""
    doc: dict[str, Any] = {
        "name": name,
        "type": "batch",
        "count": int(count),
        "constraints": {"labels": dict(labels or {})},
        "task": task if task is not None else sim_task(),
        "queue_timeout": queue_timeout_ms,
    }
    return canonical(doc)


def _sorted(value: Any) -> Any:
    """Keys sorted at every level, as the canonical form has them."""
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def canonical(doc: dict[str, Any]) -> dict[str, Any]:
    # The owner's core validates every submitted spec (and fills defaults in),
    # so an invalid builder output fails loudly there; nothing to check here.
    out: dict[str, Any] = _sorted(doc)
    return out


def mixed_batch(rng: random.Random, index: int) -> dict[str, Any]:
    """One job of the default mixed workload.

    Mostly healthy jobs of 1-3 slots lasting 1-10 s; some constrained to a
    zone; some long (20-40 s: they outlive a lease TTL, so partitions and
    crashes hit them mid-run and fencing gets exercised); a few flaky
    (fail_rate), a few always failing (exit code), rare hangs (killed at
    their timeout, then retried and failed).
    """
    count = rng.randint(1, 3)
    labels = {"zone": rng.choice(ZONES)} if rng.random() < 0.3 else {}
    duration = rng.randint(1000, 10_000)
    if rng.random() < 0.15:
        duration = rng.randint(20_000, 40_000)
    roll = rng.random()
    fail_rate, exit_code, hang, timeout_ms = 0.0, 0, False, 60_000
    if roll < 0.10:
        fail_rate = 0.3
    elif roll < 0.14:
        exit_code = 3
    elif roll < 0.16:
        hang, timeout_ms = True, 15_000
    task = sim_task(duration, exit_code=exit_code, fail_rate=fail_rate, hang=hang,
                    timeout_ms=timeout_ms)
    return batch_spec(f"job-{index}", count, labels=labels, task=task)


def plain_batch(rng: random.Random, index: int) -> dict[str, Any]:
    """One job of the plain workload: healthy batch jobs of 1-3 slots lasting
    1-10 s, some constrained to a zone; no failures, hangs or long jobs.  It is
    the message pattern of a steady production cluster, used to measure the
    simulator's speed at scale (the mixed workload exercises the fault paths)."""
    count = rng.randint(1, 3)
    labels = {"zone": rng.choice(ZONES)} if rng.random() < 0.3 else {}
    task = sim_task(rng.randint(1000, 10_000))
    return batch_spec(f"job-{index}", count, labels=labels, task=task)


# --- job kinds beyond batch --------------------------------------------------------

FOREVER_MS = 7 * 86_400_000  # the longest task timeout a spec may set
OVERLAPS = ("skip", "allow", "replace", "buffer_one")
CATCH_UPS = (0, 30_000, 60_000)


def kind_spec(name: str, kind: str, *, labels: dict[str, str] | None = None,
              task: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    """A daemon / service / ops / cron spec in canonical form (``count`` for
    service and cron, ``schedule`` for cron go in ``extra``)."""
    doc: dict[str, Any] = {
        "name": name,
        "type": kind,
        "constraints": {"labels": dict(labels or {})},
        "task": task if task is not None else sim_task(),
        "queue_timeout": None,
        **extra,
    }
    return canonical(doc)


def forever_task(**over: Any) -> dict[str, Any]:
    """A daemon or service task that never exits by itself (``hang``)."""
    return sim_task(1000, hang=True, timeout_ms=FOREVER_MS, **over)


def cron_schedule(every_ms: int, overlap: str = "skip", catch_up_ms: int = 60_000,
                  suspended: bool = False) -> dict[str, Any]:
    return {"cron": None, "every": int(every_ms), "time_zone": "UTC", "overlap": overlap,
            "catch_up": int(catch_up_ms), "history": {"succeeded": 10, "failed": 5},
            "suspended": suspended}


def cron_spec(name: str, every_ms: int, duration_ms: int, overlap: str = "skip", *,
              catch_up_ms: int = 60_000, labels: dict[str, str] | None = None,
              fail_rate: float = 0.0) -> dict[str, Any]:
    task = sim_task(duration_ms, fail_rate=fail_rate, timeout_ms=max(60_000, 3 * duration_ms))
    return kind_spec(name, "cron", labels=labels, task=task, count=1,
                     schedule=cron_schedule(every_ms, overlap, catch_up_ms))


def kinds_mix(rng: random.Random, index: int) -> dict[str, Any]:
    """One job of the kinds workload; per ten jobs (by index):

    0. a daemon (half of them pinned to a zone);
    1. a service of 2-3 slots;
    2. a cron job with ``overlap: skip``: every 10-30 s, runs of 2 s to 1.5
       periods (so times get skipped), catch-up 0, 30 s or 60 s;
    3. an ops job (maybe zone-constrained, a little flaky);
    4. a cron job with ``allow``, ``replace`` or ``buffer_one``;
    5-9. a job of the mixed batch workload.

    Daemons and services never exit (their steady state is checked); cron
    runs and ops tasks fail now and then (fail_rate 0.1, retried).
    """
    slot = index % 10
    labels = {"zone": rng.choice(ZONES)} if rng.random() < 0.5 else {}
    name = f"{('daemon', 'service', 'cron', 'ops', 'cron')[slot] if slot < 5 else 'job'}-{index}"
    if slot == 0:
        return kind_spec(name, "daemon", labels=labels, task=forever_task())
    if slot == 1:
        return kind_spec(name, "service", task=forever_task(), count=rng.randint(2, 3))
    if slot in (2, 4):
        every = rng.randint(10, 30) * 1000
        overlap = "skip" if slot == 2 else rng.choice(OVERLAPS[1:])
        duration = rng.randint(2000, every * 3 // 2)
        return cron_spec(name, every, duration, overlap, catch_up_ms=rng.choice(CATCH_UPS),
                         fail_rate=0.1)
    if slot == 3:
        return kind_spec(name, "ops", labels=labels,
                         task=sim_task(rng.randint(1000, 5000), fail_rate=0.1))
    return mixed_batch(rng, index)


WORKLOADS = {"mixed": mixed_batch, "plain": plain_batch, "kinds": kinds_mix}
LONG_RUNNING_WORKLOADS = frozenset({"kinds"})
