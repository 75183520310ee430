"""The simulated executor: decides how an execution ends and when.

A task's ``engine`` block (``type: sim``) says how long it runs (``duration``
ms), its ``exit_code``, a ``fail_rate`` (seeded coin per execution) and
``hang`` (never ends by itself).  The *driver* enforces the hard timeout of
``StartExecution`` here, independently of the core: a hung or too-long task
ends with status ``timeout`` at exactly ``timeout`` seconds.
"""

from __future__ import annotations

import random
from typing import Any

import attrs


@attrs.frozen
class Outcome:
    after: float  # seconds after the start
    status: str  # succeeded | failed | timeout | error
    exit_code: int
    error: str = ""
    duration_ms: int = 0


def _engine_block(task: dict[str, Any]) -> dict[str, Any]:
    engine = task.get("engine") if isinstance(task, dict) else None
    return engine if isinstance(engine, dict) else {}


def decide(task: dict[str, Any], timeout: float, rng: random.Random) -> Outcome:
    """Outcome of one execution (one coin from ``rng`` for fail_rate)."""
    eng = _engine_block(task)
    if eng.get("type", "sim") != "sim":
        return Outcome(0.0, "error", -1, error=f"simnet cannot run engine {eng.get('type')!r}")
    duration = max(0.0, float(eng.get("duration", 0) or 0) / 1000.0)
    fail_rate = float(eng.get("fail_rate", 0.0) or 0.0)
    # Always draw the coin so the rng stream does not depend on fail_rate.
    coin = rng.random()
    timeout = max(0.0, float(timeout))
    if eng.get("hang") or duration >= timeout:
        return Outcome(timeout, "timeout", -1, error="execution timed out",
                       duration_ms=int(timeout * 1000))
    dur_ms = int(duration * 1000)
    if coin < fail_rate:
        return Outcome(duration, "failed", 1, error="simulated failure", duration_ms=dur_ms)
    code = int(eng.get("exit_code", 0) or 0)
    if code != 0:
        return Outcome(duration, "failed", code, error=f"exit code {code}", duration_ms=dur_ms)
    return Outcome(duration, "succeeded", 0, duration_ms=dur_ms)


class SimExecutor:
    """Bookkeeping of running executions: ``(node, execution_id) -> token``.

    The engine schedules the end of each execution; a token that no longer
    matches (the execution was stopped, or its node crashed) makes the
    scheduled end a no-op.
    """

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        # (node index, execution id) -> (token, started at, hard deadline)
        self.running: dict[tuple[int, str], tuple[int, float, float]] = {}
        self.started = 0
        self.finished_by_status: dict[str, int] = {}

    def start(self, node: int, execution_id: str, token: int, now: float,
              task: dict[str, Any], timeout: float) -> Outcome:
        out = decide(task, timeout, self.rng)
        self.running[(node, execution_id)] = (token, now, now + out.after)
        self.started += 1
        return out

    def is_running(self, node: int, execution_id: str, token: int | None = None) -> bool:
        entry = self.running.get((node, execution_id))
        return entry is not None and (token is None or entry[0] == token)

    def finish(self, node: int, execution_id: str, status: str) -> None:
        self.running.pop((node, execution_id), None)
        self.finished_by_status[status] = self.finished_by_status.get(status, 0) + 1

    def forget_node(self, node: int) -> list[str]:
        """The node crashed: its executions vanish (no ExecutionFinished)."""
        gone = [eid for (n, eid) in self.running if n == node]
        for eid in gone:
            del self.running[(node, eid)]
        return gone
