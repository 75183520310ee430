"""The simulated world outside the cores: stream sources, task outputs, items.

Everything here is a pure function of the task's parameters and virtual time,
so the checkers can recompute what a run should have seen.

**Stream sources** (``type: stream`` jobs, both modes).  The task's ``env``
describes one finite source *per partition* (every partition alike):

* ``SIM_STREAM_ENTRIES`` -- entries in the partition (default 0);
* ``SIM_STREAM_RATE`` -- the producer appends this many entries per virtual
  second from ``SIM_STREAM_START`` (seconds, default 0) until the total is
  reached; ``0`` or absent: every entry is there from the start;
* ``SIM_CONSUME_RATE`` -- entries a consumer processes per virtual second
  (consume mode; default 10).

Positions are integers: entries are numbered ``1..N``; a checkpoint ``c``
means "entries ``1..c`` are processed" (``""`` is 0).  A consume-mode
consumer (a ``StartExecution`` whose env has ``P2PNODE_PARTITION`` and
``P2PNODE_CHECKPOINT_EVERY_MS``) starts after ``P2PNODE_CHECKPOINT``; every
``checkpoint_every`` it processes ``rate x elapsed`` more entries (no more
than are available), then reports ``ExecutionProgress(run id, str(c),
lag=available - c)``.  When it is stopped (``StopExecution``: run_for,
cancel, fencing) it processes up to that instant and reports once more
before it ends (SIGTERM, then a last checkpoint).  A crash reports nothing:
entries processed since the last report are processed again by the next
consumer (at-least-once).

**Micro-batch connector**: :mod:`simnet.connector` hands the cores batches
of these sources.

**Task outputs.**  Every *succeeded* sim execution produces one output
manifest ``sim_manifest(execution id)``; its file holds
``SIM_OUTPUT_LINES`` (task env, default 0) lines ``"<manifest[7:15]>:<i>"``.
``ReadItems`` (a DAG ``map`` over a parent's outputs) is answered 50 ms later
with every line of every ref, in ref order -- or with an error when a ref's
manifest is unknown or the node holding it is down or on the other side of a
partition at that time (the fetch fails; the map task fails).  An answer due
to an incarnation that crashed meanwhile is dropped (the restarted owner asks
again).
``StartExecution.inputs`` are informational: nothing is fetched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import attrs

ITEMS_DELAY = 0.05  # ReadItems answer latency
DEFAULT_CONSUME_RATE = 10.0


@attrs.frozen
class SimSource:
    entries: int = 0
    rate: float = 0.0  # producer entries per second; 0: all there at start
    start: float = 0.0
    consume: float = DEFAULT_CONSUME_RATE

    def available(self, now: float) -> int:
        if self.rate <= 0:
            return self.entries
        if now <= self.start:
            return 0
        return min(self.entries, int((now - self.start) * self.rate + 1e-9))

    def complete_at(self) -> float:
        """When the producer has written every entry."""
        return self.start if self.rate <= 0 else self.start + self.entries / self.rate


def _num(env: Mapping[str, Any], key: str, default: float) -> float:
    try:
        return float(env.get(key, default))
    except (TypeError, ValueError):
        return default


def source_from_env(env: Mapping[str, Any]) -> SimSource:
    return SimSource(
        entries=int(_num(env, "SIM_STREAM_ENTRIES", 0)),
        rate=_num(env, "SIM_STREAM_RATE", 0.0),
        start=_num(env, "SIM_STREAM_START", 0.0),
        consume=_num(env, "SIM_CONSUME_RATE", DEFAULT_CONSUME_RATE),
    )


def source_of_spec(spec: Mapping[str, Any]) -> SimSource:
    task = spec.get("task") or {}
    return source_from_env(task.get("env") or {})


def position(value: str) -> int | None:
    """A checkpoint as an entry count ("" is 0); None when it is not an integer."""
    if value == "":
        return 0
    try:
        return int(value)
    except ValueError:
        return None


def is_consumer(env: Mapping[str, str]) -> bool:
    return "P2PNODE_PARTITION" in env and "P2PNODE_CHECKPOINT_EVERY_MS" in env


class Consumer:
    """A running consume-mode execution's place in its partition."""

    __slots__ = ("every", "job", "last", "partition", "pos", "source", "start_pos")

    def __init__(self, job: str, env: Mapping[str, str], now: float) -> None:
        self.job = job
        self.partition = env["P2PNODE_PARTITION"]
        self.source = source_from_env(env)
        start = position(env.get("P2PNODE_CHECKPOINT", ""))
        self.pos = self.start_pos = start if start is not None else 0
        self.every = max(0.001, _num(env, "P2PNODE_CHECKPOINT_EVERY_MS", 1000) / 1000.0)
        self.last = now

    def advance(self, now: float) -> tuple[int, int, int]:
        """Process what the elapsed time allows: (from, to, available)."""
        avail = self.source.available(now)
        step = int(self.source.consume * (now - self.last) + 1e-9)
        old = self.pos
        self.pos = max(self.pos, min(avail, self.pos + step))
        self.last = now
        return old, self.pos, avail


def sim_manifest(execution_id: str) -> str:
    return "sha256:" + hashlib.sha256(f"sim-output:{execution_id}".encode()).hexdigest()


def batch_manifest(job: str, partition: str, first: int, last: int) -> str:
    text = f"sim-batch:{job}:{partition}:{first}:{last}"
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def output_lines(env: Mapping[str, str]) -> int:
    return max(0, int(_num(env, "SIM_OUTPUT_LINES", 0)))


def item_lines(manifest: str, count: int) -> list[str]:
    return [f"{manifest[7:15]}:{i}" for i in range(count)]
