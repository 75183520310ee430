"""A hand-cranked network of node cores for protocol unit tests.

Unlike simnet (random faults at scale), this gives a test exact control: which
frame to lose, duplicate or hold back, when a node dies, when an execution
ends.  Frames are delivered in send order with a fixed latency.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable, Hashable
from typing import Any

import attrs

from protocols import codec
from protocols.config import ANNOUNCE_TOPIC, NodeConfig, Timings
from protocols.events import (
    Action,
    CancelTimer,
    Event,
    ExecutionFinished,
    MessageReceived,
    Notify,
    Persist,
    Publish,
    Send,
    SetTimer,
    Started,
    StartExecution,
    StopExecution,
    TimerFired,
)
from protocols.messages import Message
from protocols.node import NodeCore

LATENCY = 0.01
_FRAME_IDS = itertools.count(1)
WALL_EPOCH = 1_800_000_000.0  # wall-clock time at t=0 (cron schedules are in wall time)


def wire_frame(sender: str, message: Message) -> bytes:
    """A frame as ``sender`` would send it (a fresh id: the dedupe filter passes it)."""
    return codec.encode(message, msg_id=f"{sender}:9:{next(_FRAME_IDS)}", sender=sender)


def sim_task(duration_ms: int = 1000, **over: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "engine": {
            "type": "sim",
            "duration": duration_ms,
            "exit_code": 0,
            "output_bytes": 0,
            "fail_rate": 0.0,
            "hang": False,
        },
        "env": {},
        "resources": {"cpu": 0.5, "memory": 256 * 2**20},
        "timeout": 60_000,
        "retry": {"attempts": 3, "backoff": 1000},
    }
    task.update(over)
    return task


def batch_spec(
    count: int = 1, labels: dict[str, str] | None = None, **task_over: Any
) -> dict[str, Any]:
    return {
        "name": "t",
        "type": "batch",
        "count": count,
        "constraints": {"labels": labels or {}},
        "task": sim_task(**task_over),
        "queue_timeout": None,
    }


@attrs.define
class Frame:
    at: float
    seq: int
    sender: str
    dest: str
    data: bytes
    topic: str
    message: Message


class ProtoNet:
    def __init__(
        self,
        ids: list[str],
        labels: dict[str, dict[str, str]] | None = None,
        timings: Timings | None = None,
        seed: int = 1,
        owners_only: frozenset[str] = frozenset(),
        absent: frozenset[str] = frozenset(),
        node_timings: dict[str, Timings] | None = None,
    ) -> None:
        self.owners_only = owners_only  # nodes that own jobs but never bid
        self.now = 0.0
        self.seed = seed
        self.timings = timings or Timings()
        self.node_timings = dict(node_timings or {})  # per node: mismatched peers
        self.labels = labels or {}
        self.ids = ids
        self.stores: dict[str, dict[str, dict[str, Any]]] = {i: {} for i in ids}
        self.cores: dict[str, NodeCore | None] = {}
        self.timers: dict[str, dict[Hashable, float]] = {i: {} for i in ids}
        self.running: dict[str, dict[str, StartExecution]] = {i: {} for i in ids}
        self.inflight: list[Frame] = []
        self.notes: list[tuple[str, Notify]] = []
        self.actions: list[tuple[str, list[Action]]] = []
        self.partitioned: set[frozenset[str]] = set()
        self.drop: Callable[[Frame], bool] = lambda f: False
        self._seq = 0
        for node_id in ids:
            if node_id in absent:  # joins later: start(node_id)
                self.cores[node_id] = None
            else:
                self.start(node_id)

    def config(self, node_id: str) -> NodeConfig:
        return NodeConfig(
            node_id=node_id,
            labels=self.labels.get(node_id, {}),
            executors=("sim", "process"),
            bootstrap=tuple(i for i in self.ids if i != node_id),
            timings=self.node_timings.get(node_id, self.timings),
            compute=node_id not in self.owners_only,
        )

    # --- node lifecycle ---------------------------------------------------------------

    def start(self, node_id: str) -> None:
        core = NodeCore(self.config(node_id), self.seed, copy.deepcopy(self.stores[node_id]))
        self.cores[node_id] = core
        self.feed(node_id, Started(wall=WALL_EPOCH + self.now))

    def crash(self, node_id: str) -> None:
        self.cores[node_id] = None
        self.timers[node_id] = {}
        self.running[node_id] = {}

    def core(self, node_id: str) -> NodeCore:
        core = self.cores[node_id]
        assert core is not None
        return core

    def feed(self, node_id: str, event: Event) -> list[Action]:
        core = self.cores[node_id]
        if core is None:
            return []
        actions = core.handle(event, self.now)
        self.actions.append((node_id, actions))
        for action in actions:
            self._apply(node_id, action)
        return actions

    def _apply(self, node_id: str, action: Action) -> None:
        if isinstance(action, Send):
            self._emit(node_id, action.to, action.data, "")
        elif isinstance(action, Publish):
            for dest in self.ids:
                if dest != node_id and action.topic == ANNOUNCE_TOPIC:
                    self._emit(node_id, dest, action.data, action.topic)
        elif isinstance(action, SetTimer):
            self.timers[node_id][action.key] = action.at
        elif isinstance(action, CancelTimer):
            self.timers[node_id].pop(action.key, None)
        elif isinstance(action, Persist):
            table = self.stores[node_id].setdefault(action.table, {})
            if action.value is None:
                table.pop(action.key, None)
            else:
                table[action.key] = copy.deepcopy(action.value)
        elif isinstance(action, StartExecution):
            self.running[node_id][action.execution_id] = action
        elif isinstance(action, StopExecution):
            if self.running[node_id].pop(action.execution_id, None) is not None:
                self.feed(
                    node_id, ExecutionFinished(action.execution_id, "cancelled", exit_code=137)
                )
        elif isinstance(action, Notify):
            self.notes.append((node_id, action))

    def _emit(self, sender: str, dest: str, data: bytes, topic: str) -> None:
        self._seq += 1
        message = codec.decode(data).message
        frame = Frame(self.now + LATENCY, self._seq, sender, dest, data, topic, message)
        if frozenset((sender, dest)) in self.partitioned or self.drop(frame):
            return
        self.inflight.append(frame)

    # --- driving ----------------------------------------------------------------------

    def partition(self, a: str, b: str) -> None:
        self.partitioned.add(frozenset((a, b)))

    def heal(self) -> None:
        self.partitioned.clear()

    def finish(
        self, node_id: str, exec_id: str, status: str = "succeeded", exit_code: int = 0
    ) -> None:
        self.running[node_id].pop(exec_id)
        self.feed(node_id, ExecutionFinished(exec_id, status, exit_code=exit_code))

    def inject(self, frame: Frame) -> None:
        """Deliver a (captured) frame again, now."""
        self.feed(frame.dest, MessageReceived(frame.sender, frame.data, frame.topic))

    def next_time(self) -> float | None:
        times = [f.at for f in self.inflight]
        times += [at for node, ts in self.timers.items() if self.cores[node] for at in ts.values()]
        return min(times) if times else None

    def step(self) -> bool:
        at = self.next_time()
        if at is None:
            return False
        self.now = max(self.now, at)
        due = sorted((f for f in self.inflight if f.at <= self.now), key=lambda f: f.seq)
        if due:
            frame = due[0]
            self.inflight.remove(frame)
            if self.cores[frame.dest] is not None:
                self.feed(frame.dest, MessageReceived(frame.sender, frame.data, frame.topic))
            return True
        for node_id in self.ids:
            for key, t in sorted(self.timers[node_id].items(), key=lambda kv: (kv[1], repr(kv[0]))):
                if t <= self.now:
                    del self.timers[node_id][key]
                    self.feed(node_id, TimerFired(key))
                    return True
        return True

    def run_until(self, cond: Callable[[], bool], limit: float = 600.0) -> None:
        while not cond():
            if self.now > limit or not self.step():
                raise AssertionError(f"condition not reached by t={self.now:.2f}")

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            at = self.next_time()
            if at is None or at > end:
                break
            self.step()
        self.now = end

    # --- observations -----------------------------------------------------------------

    def notes_of(self, kind: str) -> list[dict[str, Any]]:
        return [n.data for _, n in self.notes if n.kind == kind]

    def job_state(self, owner: str, job_id: str) -> str:
        return self.core(owner).owned_jobs()[job_id]

    def running_anywhere(self) -> list[tuple[str, str]]:
        return [(n, e) for n, execs in self.running.items() for e in execs]

    def frames(self, kind: type[Message]) -> list[Frame]:
        return [f for f in self.inflight if isinstance(f.message, kind)]
