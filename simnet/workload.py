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


# --- streams, chains and DAGs (simnet.sources describes the simulated world) -----------


def with_env(task: dict[str, Any], **env: Any) -> dict[str, Any]:
    return {**task, "env": {**task.get("env", {}), **{k: str(v) for k, v in env.items()}}}


def stream_spec(name: str, partitions: int | list[str] = 2, *, entries: int = 200,
                produce_rate: float = 0.0, consume_rate: float = 10.0,
                run_for_ms: int = 20_000, checkpoint_every_ms: int = 1000,
                labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A consume-mode stream over a finite simulated source of ``entries``
    entries per partition (simnet.sources)."""
    task = with_env(sim_task(1000, hang=True, timeout_ms=run_for_ms + 30_000),
                    SIM_STREAM_ENTRIES=entries, SIM_STREAM_RATE=produce_rate,
                    SIM_CONSUME_RATE=consume_rate)
    return canonical({
        "name": name, "type": "stream", "constraints": {"labels": dict(labels or {})},
        "queue_timeout": None, "partitions": partitions, "run_for": int(run_for_ms),
        "checkpoint_every": int(checkpoint_every_ms), "mode": "consume", "task": task,
    })


def micro_batch_spec(name: str, partitions: int = 2, *, entries: int = 200,
                     produce_rate: float = 0.0, max_entries: int = 20,
                     max_wait_ms: int = 1000, batch_ms: int = 1000,
                     attempts: int = 3, max_in_flight: int = 1,
                     fail_rate: float = 0.0) -> dict[str, Any]:
    """A micro-batch stream: the owner's (simulated) connector cuts each
    partition's ``entries`` into batches of at most ``max_entries``."""
    streams = [f"s{i}" for i in range(partitions)]
    task = with_env(sim_task(batch_ms, attempts=attempts, fail_rate=fail_rate),
                    SIM_STREAM_ENTRIES=entries, SIM_STREAM_RATE=produce_rate)
    return canonical({
        "name": name, "type": "stream", "constraints": {"labels": {}}, "queue_timeout": None,
        "partitions": partitions, "run_for": 60_000, "checkpoint_every": 1000,
        "mode": "micro_batch", "task": task,
        "source": {"type": "redis", "url": "redis://127.0.0.1:6379/0", "streams": streams},
        "batch": {"max_entries": int(max_entries), "max_wait": int(max_wait_ms),
                  "max_in_flight": int(max_in_flight)},
    })


def chain_spec(name: str, stages: list[dict[str, Any]]) -> dict[str, Any]:
    return canonical({
        "name": name, "type": "chain", "constraints": {"labels": {}}, "queue_timeout": None,
        "stages": [{"name": f"st{i}", "task": task} for i, task in enumerate(stages)],
    })


def dag_task(task: dict[str, Any], depends_on: list[str] | None = None, *,
             map_over: str | None = None, when: str = "succeeded") -> dict[str, Any]:
    return {**task, "depends_on": sorted(depends_on or []),
            "map": {"over": map_over, "as": "item"} if map_over else None, "when": when}


def dag_spec(name: str, tasks: dict[str, dict[str, Any]], cache: bool = False) -> dict[str, Any]:
    return canonical({
        "name": name, "type": "dag", "constraints": {"labels": {}}, "queue_timeout": None,
        "tasks": tasks, "cache": cache,
    })


def stream_mix(rng: random.Random, index: int) -> dict[str, Any]:
    """One job of the stream workload: mostly consume-mode streams of 1-4
    partitions (100-400 entries each, some produced over time, consumers of
    5-20 entries/s that run 10-30 s at a time); every third job a micro-batch
    stream of 1-3 partitions (batches of 10-40 entries, one or three in flight
    per partition)."""
    if index % 3 == 2:
        return micro_batch_spec(f"micro-{index}", rng.randint(1, 3),
                                entries=rng.randint(100, 400),
                                produce_rate=rng.choice([0.0, 5.0, 10.0]),
                                max_entries=rng.randint(10, 40),
                                max_wait_ms=rng.choice([500, 1000, 2000]),
                                batch_ms=rng.randint(500, 3000),
                                max_in_flight=rng.choice([1, 3]))
    run_for = rng.randint(10, 30) * 1000
    return stream_spec(f"stream-{index}", rng.randint(1, 4), entries=rng.randint(100, 400),
                       produce_rate=rng.choice([0.0, 0.0, 5.0]),
                       consume_rate=float(rng.randint(5, 20)), run_for_ms=run_for,
                       checkpoint_every_ms=rng.choice([500, 1000, 2000]))


def chain_mix(rng: random.Random, index: int) -> dict[str, Any]:
    """One job of the chain workload: 5-20 stages of 1-6 s; one chain in ten
    has a stage that always fails (the chain must fail with a reason); a few
    stages are flaky (fail_rate 0.2, retried)."""
    n = rng.randint(5, 20)
    broken = rng.randrange(n) if rng.random() < 0.1 else -1
    stages = []
    for k in range(n):
        task = sim_task(rng.randint(1000, 6000), fail_rate=0.2 if rng.random() < 0.1 else 0.0,
                        exit_code=3 if k == broken else 0, timeout_ms=30_000)
        stages.append(task)
    return chain_spec(f"chain-{index}", stages)


def dag_mix(rng: random.Random, index: int) -> dict[str, Any]:
    """One job of the DAG workload: fetch -> split (writes 3-20 lines) -> work
    (a map: one run per line) -> reduce (fan-in), plus a side branch, a
    ``when: failed`` handler and a ``when: always`` cleanup.  Some work items
    are flaky; one DAG in six has a reduce that always fails."""
    def task(ms: int, **over: Any) -> dict[str, Any]:
        return sim_task(ms, timeout_ms=30_000, **over)
    lines = rng.randint(3, 20)
    fails = rng.random() < 1 / 6
    tasks = {
        "fetch": dag_task(task(rng.randint(500, 3000))),
        "split": dag_task(with_env(task(rng.randint(500, 2000)), SIM_OUTPUT_LINES=lines),
                          ["fetch"]),
        "side": dag_task(task(rng.randint(500, 5000)), ["fetch"]),
        "work": dag_task(task(rng.randint(500, 4000),
                              fail_rate=0.1 if rng.random() < 0.3 else 0.0),
                         ["split"], map_over="split"),
        "reduce": dag_task(task(rng.randint(500, 2000), exit_code=3 if fails else 0),
                           ["work", "side"]),
        "notify": dag_task(task(500), ["reduce"], when="failed"),
        "cleanup": dag_task(task(500), ["reduce", "side"], when="always"),
    }
    return dag_spec(f"dag-{index}", tasks, cache=rng.random() < 0.3)


WORKLOADS = {"mixed": mixed_batch, "plain": plain_batch, "kinds": kinds_mix,
             "stream": stream_mix, "chain": chain_mix, "dag": dag_mix}
LONG_RUNNING_WORKLOADS = frozenset({"kinds", "stream"})
