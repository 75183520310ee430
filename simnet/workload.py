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


WORKLOADS = {"mixed": mixed_batch, "plain": plain_batch}
