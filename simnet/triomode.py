"""Trio mode: the real trio shell (``p2pnode.runtime.NodeRuntime``) over the
simulated network, under ``trio.testing.MockClock(autojump_threshold=0)``.

Where the discrete-event engine drives node cores directly, this runs the very
code a real node runs (runtime task structure, timer loop, execution scopes,
local API) and swaps only the transport and executor:

* :class:`SimTrioNetwork` owns the :class:`~simnet.network.Network` model
  (latency, loss, duplication, reordering, partitions); one delivery task pops
  frames in ``(arrival time, seq)`` order, so arrival order never depends on
  trio's scheduler;
* :class:`SimTransport` is one node's ``p2pnode.transport.Transport``;
* :class:`SimTrioExecutor` sleeps the task's virtual duration (seeded
  fail_rate; ``hang`` sleeps forever: the runtime's hard timeout ends it).

Bit-determinism also needs trio's run-queue shuffling fixed: see
:func:`deterministic_trio`.
"""

from __future__ import annotations

import hashlib
import heapq
import importlib
import random
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing

from p2pnode.transport import Incoming
from protocols.config import ANNOUNCE_TOPIC, NodeConfig, Timings
from protocols.events import ExecutionFinished, StartExecution
from simnet.engine import derive_seed
from simnet.executor import decide
from simnet.network import NetConfig, Network
from simnet.workload import ZONES


def deterministic_trio(seed: int) -> None:
    """Make trio's scheduler reproducible for one seed.

    PRIVATE trio API (checked against trio 0.35): trio shuffles its run queue
    with a module-level ``random.Random`` (``trio._core._run._r``) unless
    ``_ALLOW_DETERMINISTIC_SCHEDULING`` is set, and then only with that RNG.
    Hypothesis sets the same flag.  If trio renames them, runs stay correct but
    may not be bit-identical across processes.
    """
    run_mod: Any = importlib.import_module("trio._core._run")
    run_mod._ALLOW_DETERMINISTIC_SCHEDULING = True
    run_mod._r.seed(seed)


class SimTrioNetwork:
    def __init__(self, seed: int, net: NetConfig | None = None) -> None:
        self.model = Network(net or NetConfig(), random.Random(derive_seed(seed, "net")))
        self.index: dict[str, int] = {}
        self.inbox: dict[str, trio.MemorySendChannel[Incoming]] = {}
        self.subscribers: dict[str, list[str]] = {}
        self.up: dict[str, bool] = {}
        self._heap: list[tuple[float, int, str, Incoming]] = []
        self._seq = 0
        self._wake = trio.Event()
        self._trace = hashlib.sha256()
        self.sent = 0
        self.delivered = 0

    def transport(self, node_id: str) -> SimTransport:
        send, receive = trio.open_memory_channel[Incoming](float("inf"))
        self.index[node_id] = self.model.add_node()
        self.inbox[node_id] = send
        self.up[node_id] = True
        return SimTransport(self, node_id, receive)

    @property
    def trace_hash(self) -> str:
        return self._trace.hexdigest()

    def transmit(self, src: str, dst: str, data: bytes, topic: str) -> None:
        self.sent += 1
        dst_idx = self.index.get(dst)
        if dst_idx is None:
            return
        now = trio.current_time()
        times = ((now,) if src == dst
                 else self.model.transmit(self.index[src], dst_idx, now))
        for at in times:
            self._seq += 1
            heapq.heappush(self._heap, (at, self._seq, dst, Incoming(src, data, topic)))
        if times:
            self._wake.set()

    async def run(self) -> None:
        """Deliver frames at their arrival times (one task: a total order)."""
        while True:
            self._wake = trio.Event()
            if not self._heap:
                await self._wake.wait()
                continue
            at = self._heap[0][0]
            if at > trio.current_time():
                with trio.move_on_at(at):
                    await self._wake.wait()
                continue
            while self._heap and self._heap[0][0] <= trio.current_time():
                t, _, dst, frame = heapq.heappop(self._heap)
                src_idx, dst_idx = self.index[frame.sender], self.index[dst]
                if not self.up.get(dst) or not self.model.connected(src_idx, dst_idx):
                    continue
                self.delivered += 1
                self._trace.update(f"{t!r}|{dst}|{frame.sender}|{frame.topic}|".encode())
                self._trace.update(frame.data)
                self.inbox[dst].send_nowait(frame)
            await trio.lowlevel.checkpoint()


class SimTransport:
    """``p2pnode.transport.Transport`` over :class:`SimTrioNetwork`."""

    def __init__(self, net: SimTrioNetwork, node_id: str,
                 receive: trio.MemoryReceiveChannel[Incoming]) -> None:
        self._net = net
        self._id = node_id
        self._receive = receive

    @property
    def local_id(self) -> str:
        return self._id

    async def send(self, peer: str, data: bytes) -> None:
        self._net.transmit(self._id, peer, data, "")
        await trio.lowlevel.checkpoint()

    async def publish(self, topic: str, data: bytes) -> None:
        for peer in self._net.subscribers.get(topic, []):
            if peer != self._id:
                self._net.transmit(self._id, peer, data, topic)
        await trio.lowlevel.checkpoint()

    async def subscribe(self, topic: str) -> None:
        subs = self._net.subscribers.setdefault(topic, [])
        if self._id not in subs:
            subs.append(self._id)
        await trio.lowlevel.checkpoint()

    async def receive(self) -> Incoming:
        return await self._receive.receive()


class SimTrioExecutor:
    """``p2pnode.executor.Executor`` for ``engine.type == "sim"`` tasks."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    async def run(self, start: StartExecution) -> ExecutionFinished:
        # The runtime enforces start.timeout: hand decide() an infinite one
        # and let the runtime's own scope report "timeout".
        out = decide(start.task, float("inf"), self.rng)
        if out.status == "error":
            return ExecutionFinished(start.execution_id, "error", exit_code=-1, error=out.error)
        eng = start.task.get("engine") or {}
        if eng.get("hang"):
            await trio.sleep_forever()
        await trio.sleep(out.after)
        return ExecutionFinished(start.execution_id, out.status, exit_code=out.exit_code,
                                 error=out.error, duration_ms=out.duration_ms)


def run_trio_cluster(
    nodes: int,
    seed: int,
    specs: list[dict[str, Any]],
    *,
    net: NetConfig | None = None,
    timings: Timings | None = None,
    limit: float = 600.0,
    scenario: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Run ``nodes`` NodeRuntimes, submit ``specs`` to n0000 after a short
    warm-up, wait (virtual time) until every job is terminal or ``limit``.
    Returns job states, notify counts, message counts and the trace hash."""
    from p2pnode.runtime import NodeRuntime
    from p2pnode.store import MemoryStore
    from protocols.node import NodeCore

    deterministic_trio(seed)
    states: dict[str, str] = {}
    counts: dict[str, int] = {}
    accepted: dict[tuple[str, int], int] = {}
    result: dict[str, Any] = {}

    async def main() -> None:
        network = SimTrioNetwork(seed, net)
        runtimes: list[NodeRuntime] = []
        rng = random.Random(derive_seed(seed, "cluster"))
        for i in range(nodes):
            boot = () if i == 0 else tuple(
                sorted({"n0000", *(f"n{j:04d}" for j in rng.sample(range(i), min(2, i)))}))
            config = NodeConfig(node_id=f"n{i:04d}", labels={"zone": ZONES[i % 3]},
                                executors=("sim",), bootstrap=boot,
                                timings=timings or Timings())
            core = NodeCore(config, derive_seed(seed, "node", config.node_id, 1), {})
            runtimes.append(NodeRuntime(core, network.transport(config.node_id), MemoryStore(),
                                        SimTrioExecutor(derive_seed(seed, "exec", i))))
        all_done = trio.Event()

        async def watch(rt: NodeRuntime) -> None:
            async for note in rt.watch():
                counts[note.kind] = counts.get(note.kind, 0) + 1
                if note.kind == "job_state":
                    states[note.data["job_id"]] = note.data["state"]
                    if len(states) == len(specs) and all(
                            s in ("completed", "failed", "stopped") for s in states.values()):
                        all_done.set()
                elif note.kind == "result_accepted":
                    key = (note.data["job_id"], note.data["slot"])
                    accepted[key] = accepted.get(key, 0) + 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(network.run)
            for rt in runtimes:
                nursery.start_soon(watch, rt)
                await nursery.start(rt.run)
            await trio.sleep(3.0)
            for k, spec in enumerate(specs):
                await runtimes[0].submit(f"j{k:06d}", spec)
            if scenario is not None:
                await scenario({"network": network, "runtimes": runtimes})
            with trio.move_on_after(limit):
                await all_done.wait()
            result["virtual_seconds"] = trio.current_time()
            result["sent"], result["delivered"] = network.sent, network.delivered
            result["trace_hash"] = network.trace_hash
            nursery.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    result.update(states=dict(sorted(states.items())), notifications=dict(sorted(counts.items())),
                  double_accepted=sorted(k for k, v in accepted.items() if v > 1))
    return result


__all__ = ["ANNOUNCE_TOPIC", "SimTransport", "SimTrioExecutor", "SimTrioNetwork",
           "deterministic_trio", "run_trio_cluster"]
