"""Discrete-event engine driving sans-IO node cores over virtual time.

Deterministic by construction:

* one heap of ``(time, seq, ...)`` entries; ``seq`` is a global insertion
  counter, so equal times pop in insertion order, which is itself a pure
  function of the seed (never ``hash()`` or set order);
* all randomness comes from ``random.Random`` instances seeded from the run's
  seed (see :func:`derive_seed`), drawn in event order;
* no wall clock inside the loop.

A node's timers, executions and scheduled wake-ups carry its *incarnation*:
a crash bumps it, which turns everything the dead incarnation had pending
into no-ops in O(1), without searching the heap.

Two process-level faults live here because they change how a node sees time:

* a *pause* (:meth:`Engine.pause_node`, SIGSTOP or a long GC pause) freezes a
  node: every frame, timer, execution report and runtime event addressed to
  it waits, in order, until it resumes; then its overdue timers fire late and
  its queued frames arrive at once;
* *clock rate skew* (:meth:`Engine.set_clock_rate`): the node's monotonic
  clock runs at ``rate`` times virtual time (e.g. 0.99..1.01); its core reads
  ``now * rate`` and its timers are set on that clock.

The trace hash is a sha256 over every event handed to a core (time, node,
kind, and the frame bytes / timer key / event), i.e. the identity of a run.

Beyond frames, timers and executions the engine plays the world a runtime
would (:mod:`simnet.sources`): stream consumers report progress over a
simulated partitioned source, succeeded executions produce output manifests,
``ReadItems`` is answered from them, and :meth:`Engine.deliver_now` lets a
simulated connector hand a core a ``SourceBatch``.  Two optional hooks serve
the checkers and the fault injectors: ``frame_hook`` sees every frame a node
sends (and may crash the sender before or after it leaves), ``after_event``
runs after a core handled an event and its actions were performed.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
import traceback
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from protocols.config import ANNOUNCE_TOPIC
from protocols.events import (
    Action,
    CancelTimer,
    Event,
    ExecutionFinished,
    ExecutionProgress,
    ItemsRead,
    MessageReceived,
    Notify,
    Persist,
    Publish,
    ReadItems,
    Send,
    SetTimer,
    Started,
    StartExecution,
    StopExecution,
    TimerFired,
)
from simnet.executor import Outcome, SimExecutor
from simnet.network import DIRECTORY_TYPES, NetConfig, Network, make_frame_type
from simnet.sources import (
    ITEMS_DELAY,
    Consumer,
    is_consumer,
    item_lines,
    output_lines,
    sim_manifest,
)
from simnet.store import Records, SimStore

_DELIVER, _TIMER, _EXEC, _EVENT, _CALL, _TICK = 0, 1, 2, 3, 4, 5
ANY_INCARNATION = -1
SIM_WALL_EPOCH = 1_800_000_000.0  # wall-clock time at virtual t=0 (cron is in wall time)


class Core(Protocol):
    def handle(self, event: Event, now: float) -> list[Action]: ...


CoreFactory = Callable[[Records, int], Core]  # (records, incarnation) -> core


def derive_seed(seed: int, *parts: object) -> int:
    """A sub-seed independent of PYTHONHASHSEED (sha256, not ``hash()``)."""
    text = "/".join([str(seed), *map(str, parts)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


class Observer:
    """Hooks the engine calls; invariant checkers subclass this."""

    def on_notify(self, node: str, kind: str, data: dict[str, Any], now: float) -> None:
        pass

    def on_exec_start(self, node: str, action: StartExecution, now: float) -> None:
        pass

    def on_exec_end(self, node: str, execution_id: str, status: str, now: float) -> None:
        pass

    def on_crash(self, node: str, now: float) -> None:
        pass

    def on_start(self, node: str, now: float) -> None:
        pass

    def on_pause(self, node: str, now: float, until: float) -> None:
        """The node freezes from ``now`` to ``until`` (its executions run on)."""

    def on_consumed(self, node: str, execution_id: str, consumer: Consumer,
                    first: int, last: int, now: float) -> None:
        """A stream consumer processed entries ``first+1..last`` of its partition."""

    def on_items(self, node: str, action: ReadItems, items: int, error: str,
                 now: float) -> None:
        """The engine answered a ReadItems with ``items`` lines (or ``error``)."""


class SimNode:
    __slots__ = ("core", "factory", "id", "idx", "inc", "paused_until", "rate", "store",
                 "timers", "up")

    def __init__(self, idx: int, node_id: str, factory: CoreFactory) -> None:
        self.idx = idx
        self.id = node_id
        self.factory = factory
        self.core: Core | None = None
        self.up = False
        self.inc = 0
        self.timers: dict[Hashable, int] = {}
        self.store = SimStore()
        self.rate = 1.0  # the node's clock runs at rate x virtual time
        self.paused_until = -1.0  # frozen until then (a pause); -1: running


class Stats:
    def __init__(self) -> None:
        self.sent = 0
        self.delivered = 0
        self.sent_by_type: dict[str, int] = {}
        self.delivered_by_type: dict[str, int] = {}
        self.dropped_down = 0
        self.dropped_partition = 0
        self.dropped_unknown = 0
        self.events = 0
        self.timers_fired = 0

    def directory_delivered(self) -> int:
        return sum(v for k, v in self.delivered_by_type.items() if k in DIRECTORY_TYPES)


class Engine:
    def __init__(self, seed: int, net: NetConfig | None = None,
                 observer: Observer | None = None,
                 frame_type: Callable[[bytes], str] | None = None) -> None:
        self.seed = seed
        self.now = 0.0
        self._heap: list[tuple[Any, ...]] = []
        self._seq = 0
        self.network = Network(net or NetConfig(), random.Random(derive_seed(seed, "net")))
        self.executor = SimExecutor(random.Random(derive_seed(seed, "exec")))
        self.observer = observer or Observer()
        self.nodes: list[SimNode] = []
        self.by_id: dict[str, int] = {}
        self.subscribers: dict[str, list[int]] = {ANNOUNCE_TOPIC: []}
        self.stats = Stats()
        self.frame_type = frame_type or make_frame_type()
        # (node, execution id) -> its consumer state (stream consume mode)
        self.consumers: dict[tuple[int, str], Consumer] = {}
        self.manifests: dict[str, int] = {}  # output manifest -> lines in it
        self._lines: dict[tuple[int, str], int] = {}  # running execution -> lines it writes
        # frame_hook(node, type, dst) -> None | "before" | "after": crash the
        # sender before the frame leaves (it is lost) or right after.
        self.frame_hook: Callable[[SimNode, str, int], str | None] | None = None
        self.after_event: Callable[[SimNode], None] | None = None
        self.crash_callback: Callable[[str], None] | None = None
        # sniffer(src, dst, data): sees every point-to-point frame sent (the
        # byzantine adversary records frames to replay).
        self.sniffer: Callable[[int, int, bytes], None] | None = None
        self._trace = hashlib.sha256()
        self.halted: str | None = None
        self.core_errors: list[str] = []
        self._perform: dict[type, Callable[[SimNode, Any], None]] = {
            Send: self._do_send, SetTimer: self._do_set_timer, Notify: self._do_notify,
            Persist: self._do_persist, Publish: self._do_publish,
            CancelTimer: self._do_cancel_timer, StartExecution: self._start_execution,
            StopExecution: self._do_stop, ReadItems: self._do_read_items,
        }
        # Backstop against livelock (deterministic, unlike a wall-clock limit).
        self.max_events: float = float("inf")

    # --- setup ----------------------------------------------------------------

    def add_node(self, node_id: str, factory: CoreFactory,
                 topics: tuple[str, ...] = (ANNOUNCE_TOPIC,)) -> int:
        idx = len(self.nodes)
        self.nodes.append(SimNode(idx, node_id, factory))
        self.by_id[node_id] = idx
        self.network.add_node()
        for topic in topics:
            self.subscribers.setdefault(topic, []).append(idx)
        return idx

    def start_node(self, idx: int) -> None:
        """(Re)start: a fresh core from the node's store, then ``Started()``."""
        node = self.nodes[idx]
        if node.up:
            return
        node.inc += 1
        node.timers = {}
        node.paused_until = -1.0  # a new process
        node.core = node.factory(node.store.load(), node.inc)
        node.up = True
        self._trace.update(f"{self.now!r}|{idx}|start|".encode())
        self.observer.on_start(node.id, self.now)
        self._handle(node, Started(wall=SIM_WALL_EPOCH + self.now))

    def crash_node(self, idx: int) -> None:
        """The node's core, timers and executions vanish; its store stays."""
        node = self.nodes[idx]
        if not node.up:
            return
        node.up = False
        node.core = None
        node.inc += 1  # pending timers/executions of the old incarnation die
        node.timers = {}
        node.paused_until = -1.0  # SIGKILL ends a stopped process too
        self.executor.forget_node(idx)
        for key in [k for k in self.consumers if k[0] == idx]:
            del self.consumers[key]
        for key in [k for k in self._lines if k[0] == idx]:
            del self._lines[key]
        self._trace.update(f"{self.now!r}|{idx}|crash|".encode())
        self.observer.on_crash(node.id, self.now)

    def pause_node(self, idx: int, until: float) -> None:
        """Freeze an up node until ``until`` (a SIGSTOP / GC pause): what is
        addressed to it waits; its executions (child processes) run on."""
        node = self.nodes[idx]
        if not node.up or until <= self.now:
            return
        if node.paused_until <= self.now:
            self.observer.on_pause(node.id, self.now, until)
        node.paused_until = max(node.paused_until, until)
        self._trace.update(f"{self.now!r}|{idx}|pause|{until!r}".encode())

    def set_clock_rate(self, idx: int, rate: float) -> None:
        """The node's clock runs at ``rate`` x virtual time from its next event
        (set it before the node starts: a core's clock must never jump)."""
        if rate <= 0:
            raise ValueError(f"clock rate must be > 0, not {rate}")
        self.nodes[idx].rate = rate

    def is_paused(self, idx: int) -> bool:
        return self.nodes[idx].paused_until > self.now

    # --- scheduling -------------------------------------------------------------

    def _push(self, t: float, kind: int, idx: int, inc: int | str,
              p1: Any = None, p2: Any = None, p3: Any = None) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (t, self._seq, kind, idx, inc, p1, p2, p3))

    def inject(self, idx: int, event: Event, at: float) -> None:
        """Hand ``event`` to the node at ``at`` (dropped if it is down then)."""
        self._push(max(at, self.now), _EVENT, idx, ANY_INCARNATION, event)

    def call_at(self, at: float, fn: Callable[[], None]) -> None:
        self._push(max(at, self.now), _CALL, -1, 0, fn)

    def deliver_now(self, idx: int, event: Event) -> None:
        """Hand ``event`` to the node at once (it must be up): a simulated
        runtime component (the micro-batch connector) calling into its core."""
        node = self.nodes[idx]
        if not node.up or self.halted is not None:
            return
        if node.paused_until > self.now:  # frozen: it gets the call when it resumes
            self._push(node.paused_until, _EVENT, idx, node.inc, event)
            return
        self._trace.update(f"{self.now!r}|{idx}|e|{event!r}".encode())
        self._handle(node, event)

    def send(self, src: str, to: str, data: bytes) -> None:
        """Put a frame on the network as if node ``src`` had sent it."""
        self._do_send(self.nodes[self.by_id[src]], Send(to, data))

    def halt(self, reason: str) -> None:
        if self.halted is None:
            self.halted = reason

    @property
    def trace_hash(self) -> str:
        return self._trace.hexdigest()

    def pending(self) -> int:
        return len(self._heap)

    # --- main loop ----------------------------------------------------------------

    def run(self, until: float = float("inf"),
            stop: Callable[[], bool] | None = None) -> None:
        """Process events up to virtual time ``until`` (or until halted /
        ``stop()`` is true, checked after every event)."""
        heap = self._heap
        pop = heapq.heappop
        nodes = self.nodes
        stats = self.stats
        net = self.network
        trace = self._trace.update
        executor = self.executor
        while heap and self.halted is None:
            if heap[0][0] > until:
                break
            t, _seq, kind, idx, inc, p1, p2, p3 = pop(heap)
            self.now = t
            stats.events += 1
            if stats.events > self.max_events:
                msg = (f"t={t:.3f}s: event budget of {self.max_events:.0f} events exhausted "
                       f"(livelock or message storm?)")
                self.core_errors.append(msg)
                self.halt(msg)
                break
            if kind != _CALL and nodes[idx].paused_until > t:
                # Frozen: the entry waits for the resume (re-queued in pop
                # order, so what is addressed to the node keeps its order).
                if kind == _EVENT and inc == ANY_INCARNATION:
                    inc = nodes[idx].inc  # a request to this process dies with it
                self._push(nodes[idx].paused_until, kind, idx, inc, p1, p2, p3)
                continue
            if kind == _DELIVER:
                node = nodes[idx]
                if not node.up:
                    stats.dropped_down += 1
                    continue
                group = net.group
                if group[p1] != group[idx] or (net.blocked and (p1, idx) in net.blocked):
                    stats.dropped_partition += 1
                    continue
                stats.delivered += 1
                dbt = stats.delivered_by_type
                dbt[inc] = dbt.get(inc, 0) + 1  # deliveries carry the type in `inc`
                sender = nodes[p1].id
                trace(f"{t!r}|{idx}|m|{p1}|{p3}|".encode())
                trace(p2)
                self._handle(node, MessageReceived(sender, p2, p3))
            elif kind == _TIMER:
                node = nodes[idx]
                if node.inc != inc or node.timers.get(p1) != p2:
                    continue
                del node.timers[p1]
                stats.timers_fired += 1
                trace(f"{t!r}|{idx}|t|{p1!r}".encode())
                self._handle(node, TimerFired(p1))
            elif kind == _EXEC:
                node = nodes[idx]
                if node.inc != inc or not executor.is_running(idx, p1, p2):
                    continue
                out: Outcome = p3
                executor.finish(idx, p1, out.status)
                self.consumers.pop((idx, p1), None)
                lines = self._lines.pop((idx, p1), 0)
                manifest = ""
                if out.status == "succeeded":
                    manifest = sim_manifest(p1)
                    self.manifests[manifest] = lines
                self.observer.on_exec_end(node.id, p1, out.status, t)
                trace(f"{t!r}|{idx}|x|{p1}|{out.status}".encode())
                self._handle(node, ExecutionFinished(
                    execution_id=p1, status=out.status, exit_code=out.exit_code,
                    error=out.error, duration_ms=out.duration_ms, manifest_id=manifest))
            elif kind == _EVENT:
                node = nodes[idx]
                if not node.up or (inc != ANY_INCARNATION and node.inc != inc):
                    continue
                trace(f"{t!r}|{idx}|e|{p1!r}".encode())
                self._handle(node, p1)
            elif kind == _TICK:
                node = nodes[idx]
                if node.inc != inc or not executor.is_running(idx, p1, p2):
                    continue
                trace(f"{t!r}|{idx}|p|{p1}".encode())
                self._progress(node, p1, p3)
                if node.up and executor.is_running(idx, p1, p2):
                    self._push(t + p3.every, _TICK, idx, inc, p1, p2, p3)
            else:  # _CALL
                p1()
            if stop is not None and stop():
                break

    # --- executing a core's actions ---------------------------------------------------

    def _handle(self, node: SimNode, event: Event) -> None:
        core = node.core
        assert core is not None
        try:
            actions = core.handle(event, self.now * node.rate)
        except Exception as exc:  # a core bug: record it, stop the run
            tb = traceback.format_exc(limit=6)
            msg = (f"t={self.now:.3f}s core {node.id} raised {exc!r} "
                   f"handling {type(event).__name__}\n{tb}")
            self.core_errors.append(msg)
            self.halt(msg)
            return
        perform = self._perform
        if self.frame_hook is not None:
            # A hook may crash the node mid-batch.  The runtime writes all of a
            # batch's records before any of its effects (p2pnode/runtime.py),
            # so such a crash loses a tail of the effects only.  The observer
            # hears the step's notifies with its records: they say what the
            # core decided, and what is on disk was decided.
            step = (Persist, Notify)
            for action in actions:
                if type(action) in step:
                    perform[type(action)](node, action)
            actions = [action for action in actions if type(action) not in step]
        for action in actions:
            if not node.up:  # a hook crashed the node mid-batch
                break
            fn = perform.get(type(action))
            if fn is None:
                msg = f"t={self.now:.3f}s core {node.id} returned an unknown action {action!r}"
                self.core_errors.append(msg)
                self.halt(msg)
                return
            fn(node, action)
        if self.after_event is not None:
            self.after_event(node)

    # One method per action type, looked up by exact type: cheaper than an
    # isinstance chain on the hottest path (several actions per event).

    def _do_send(self, node: SimNode, a: Send) -> None:
        # The hottest action: _send, counting and transmit inlined.
        data = a.data
        stats = self.stats
        stats.sent += 1
        mtype = self.frame_type(data)
        sbt = stats.sent_by_type
        sbt[mtype] = sbt.get(mtype, 0) + 1
        dst = self.by_id.get(a.to)
        if dst is None:
            stats.dropped_unknown += 1
            return
        if self.sniffer is not None:
            self.sniffer(node.idx, dst, data)
        hook = self.frame_hook
        if hook is not None:
            when = hook(node, mtype, dst)
            if when == "before":  # the sender dies before the frame leaves
                self._hook_crash(node)
                return
            if when == "after":
                self._send_now(node, dst, data, mtype)
                self._hook_crash(node)
                return
        src = node.idx
        # Loopback: no loss, delivered after the current batch.
        times = (self.now,) if dst == src else self.network.transmit(src, dst, self.now)
        heap = self._heap
        for at in times:
            self._seq += 1
            # A delivery has no incarnation (it goes to whoever is up on
            # arrival): its `inc` slot carries the message type instead.
            heapq.heappush(heap, (at, self._seq, _DELIVER, dst, mtype, src, data, ""))

    def _send_now(self, node: SimNode, dst: int, data: bytes, mtype: str) -> None:
        src = node.idx
        times = (self.now,) if dst == src else self.network.transmit(src, dst, self.now)
        for at in times:
            self._push(at, _DELIVER, dst, mtype, src, data, "")

    def _hook_crash(self, node: SimNode) -> None:
        """A frame hook asked for a crash: the injector's ``crash`` callback
        (set by the harness, so that its bookkeeping follows), else the engine's."""
        crash = self.crash_callback
        if crash is not None:
            crash(node.id)
        else:
            self.crash_node(node.idx)

    def _do_set_timer(self, node: SimNode, a: SetTimer) -> None:
        self._seq += 1
        node.timers[a.key] = self._seq
        rate = node.rate
        at = a.at / rate  # the core's clock -> virtual time
        while at * rate < a.at:  # rounding: the core must read >= its deadline then
            at = math.nextafter(at, math.inf)
        if at < self.now:
            at = self.now
        heapq.heappush(self._heap, (at, self._seq, _TIMER, node.idx, node.inc,
                                    a.key, self._seq, None))

    def _do_notify(self, node: SimNode, a: Notify) -> None:
        self.observer.on_notify(node.id, a.kind, a.data, self.now)

    def _do_persist(self, node: SimNode, a: Persist) -> None:
        node.store.put(a.table, a.key, a.value)

    def _do_publish(self, node: SimNode, a: Publish) -> None:
        for dst in self.subscribers.get(a.topic, ()):
            if dst != node.idx:
                self._transmit(node.idx, dst, a.data, a.topic)

    def _do_cancel_timer(self, node: SimNode, a: CancelTimer) -> None:
        node.timers.pop(a.key, None)

    def _do_stop(self, node: SimNode, a: StopExecution) -> None:
        if self.executor.is_running(node.idx, a.execution_id):
            self._lines.pop((node.idx, a.execution_id), None)
            consumer = self.consumers.pop((node.idx, a.execution_id), None)
            if consumer is not None:  # SIGTERM: a last checkpoint before it exits
                event = self._advance(node, a.execution_id, consumer)
                self._push(self.now, _EVENT, node.idx, node.inc, event)
            self.executor.finish(node.idx, a.execution_id, "cancelled")
            self.observer.on_exec_end(node.id, a.execution_id, "cancelled", self.now)
            self._push(self.now, _EVENT, node.idx, node.inc, ExecutionFinished(
                execution_id=a.execution_id, status="cancelled", exit_code=-1,
                error=a.reason))

    def _start_execution(self, node: SimNode, a: StartExecution) -> None:
        if self.executor.is_running(node.idx, a.execution_id):
            # Starting the same execution twice is a core bug; keep the first.
            self.core_errors.append(
                f"t={self.now:.3f}s {node.id} started {a.execution_id} twice")
            return
        self._seq += 1
        token = self._seq
        out = self.executor.start(node.idx, a.execution_id, token, self.now, a.task, a.timeout)
        self.observer.on_exec_start(node.id, a, self.now)
        self._push(self.now + out.after, _EXEC, node.idx, node.inc, a.execution_id, token, out)
        env = a.env
        if env:
            lines = output_lines(env)
            if lines:
                self._lines[(node.idx, a.execution_id)] = lines
            if is_consumer(env):
                consumer = Consumer(a.job_id, env, self.now)
                self.consumers[(node.idx, a.execution_id)] = consumer
                self._push(self.now + consumer.every, _TICK, node.idx, node.inc,
                           a.execution_id, token, consumer)

    # --- the world around the cores (simnet.sources) -------------------------------------

    def _advance(self, node: SimNode, execution_id: str, consumer: Consumer) -> Event:
        first, last, avail = consumer.advance(self.now)
        if last > first:
            self.observer.on_consumed(node.id, execution_id, consumer, first, last, self.now)
        return ExecutionProgress(execution_id, str(last), lag=max(0, avail - last))

    def _progress(self, node: SimNode, execution_id: str, consumer: Consumer) -> None:
        self._handle(node, self._advance(node, execution_id, consumer))

    def _do_read_items(self, node: SimNode, a: ReadItems) -> None:
        """The runtime fetches the outputs and answers ITEMS_DELAY later; the
        fetch fails if a holder is down or cut off from the node by then."""
        inc = node.inc

        def answer() -> None:
            if node.inc != inc or not node.up or self.halted is not None:
                return  # the asking incarnation died: its successor asks again
            if node.paused_until > self.now:
                self._push(node.paused_until, _CALL, -1, 0, answer)
                return
            items: list[str] = []
            error = ""
            for manifest, holder in a.refs:
                count = self.manifests.get(manifest)
                h = self.by_id.get(holder)
                if h is None or not self.nodes[h].up or not self.network.connected(node.idx, h):
                    error = f"cannot fetch {manifest} from {holder}: unreachable"
                    break
                if count is None:
                    error = f"no manifest {manifest} on {holder}"
                    break
                items += item_lines(manifest, count)
            self.observer.on_items(node.id, a, len(items), error, self.now)
            event = ItemsRead(a.job_id, a.task, () if error else tuple(items), error)
            self._trace.update(f"{self.now!r}|{node.idx}|e|{event!r}".encode())
            self._handle(node, event)
        self._push(self.now + ITEMS_DELAY, _CALL, -1, 0, answer)

    def _count_sent(self, data: bytes) -> str:
        stats = self.stats
        stats.sent += 1
        mtype = self.frame_type(data)
        sbt = stats.sent_by_type
        sbt[mtype] = sbt.get(mtype, 0) + 1
        return mtype

    def _transmit(self, src: int, dst: int, data: bytes, topic: str) -> None:
        mtype = self._count_sent(data)
        # A delivery entry has no incarnation (it goes to whoever is up at
        # arrival); its `inc` slot carries the message type instead.
        for at in self.network.transmit(src, dst, self.now):
            self._push(at, _DELIVER, dst, mtype, src, data, topic)
