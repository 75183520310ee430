"""A cluster of simulated nodes: start, submit, crash, restart, partition.

Node ids are ``n0000``, ``n0001``, ...; node i carries ``zone`` label
``a``/``b``/``c`` (i mod 3) and bootstraps from ``n0000`` plus two seeded
earlier nodes.  Job ids are ``j000000``, ... in submission order.

Every cluster runs the invariant checkers (:mod:`simnet.invariants`,
:mod:`simnet.kind_invariants`, :mod:`simnet.stream_invariants`,
:mod:`simnet.chain_invariants`, :mod:`simnet.dag_invariants`) from its first
event; the first violation halts the engine.  A micro-batch stream gets the
simulated connector of :mod:`simnet.connector`; :meth:`Cluster.crash_on_frame`
crashes a node when it sends a given frame (targeted fault injection).

Harsh modes: ``clock_skew`` gives every node its own clock rate,
:meth:`Cluster.pause` freezes a node (:meth:`simnet.engine.Engine.pause_node`)
and ``byzantine`` names nodes an adversary speaks through
(:mod:`simnet.byzantine`): the checkers ignore those nodes' own reports, and
clients never submit to them.  Checker deadlines ("stops within TTL + grace")
do not count frozen time (:meth:`Cluster.schedule_check`): a stopped process
cannot kill its child, whatever the protocol.

Nodes may join late: start only some nodes with ``start(ids)``, then
``join(node_id)`` the others (their first start, after jobs were submitted).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterable, Mapping
from typing import Any, cast

import attrs

from protocols.config import NodeConfig, Timings
from protocols.events import CancelJob, ReadItems, StartExecution, SubmitJob
from simnet.byzantine import Adversary
from simnet.chain_invariants import ChainInvariants
from simnet.checker import Checker
from simnet.connector import SimConnector
from simnet.dag_invariants import DagInvariants
from simnet.engine import Core, Engine, Observer, SimNode, derive_seed
from simnet.invariants import LONG_RUNNING_KINDS, TERMINAL, Invariants
from simnet.kind_invariants import Bounds, KindInvariants
from simnet.liveness import Liveness
from simnet.network import NetConfig
from simnet.sources import Consumer
from simnet.store import Records
from simnet.stream_invariants import StreamInvariants
from simnet.workload import ZONES

SUBMIT_RETRY = 1.0  # seconds before a client asks again whether its job was accepted


@attrs.frozen
class Note:
    """One Notify seen during the run (kept only when ``record=True``)."""

    t: float
    node: str
    kind: str
    data: dict[str, Any]


class _Fanout(Observer):
    """Feeds the checkers (and the byzantine adversary, which watches honest
    reports) and, optionally, a log of every notification."""

    def __init__(self, observers: list[Observer], log: list[Note] | None) -> None:
        self.observers = observers
        self.log = log
        self.ignored: frozenset[str] = frozenset()  # byzantine nodes: their reports lie
        # (node, execution id) -> the node that granted it (None: unknown)
        self.granted_by: Callable[[str, str], str | None] = lambda node, eid: None
        self.foreign: set[tuple[str, str]] = set()  # executions a liar granted
        self._listening_key: tuple[int, int] = (0, -1)
        self._by_kind: dict[str, list[Observer]] = {}

    def on_notify(self, node: str, kind: str, data: dict[str, Any], now: float) -> None:
        if node in self.ignored:
            return
        for observer in self._listening(kind):
            observer.on_notify(node, kind, data, now)
        if self.log is not None:
            self.log.append(Note(now, node, kind, data))

    def _listening(self, kind: str) -> list[Observer]:
        """The observers that do something with a ``kind`` notification, in
        order: a checker with the base dispatch handles only the kinds of its
        table, so it is skipped for the others (most of the ~6 per notify).
        Rebuilt when the observer list changes (the adversary joins late)."""
        key = (id(self.observers), len(self.observers))
        if key != self._listening_key:
            self._listening_key, self._by_kind = key, {}
        found = self._by_kind.get(kind)
        if found is None:
            found = self._by_kind[kind] = [
                o for o in self.observers
                if not (type(o).on_notify is Checker.on_notify
                        and kind not in cast(Checker, o).handlers)
            ]
        return found

    def on_exec_start(self, node: str, action: StartExecution, now: float) -> None:
        if self.ignored and self.granted_by(node, action.execution_id) in self.ignored:
            # A liar granted it (after an ask of its own): the liar's job, not
            # the honest one whose id it reuses.
            self.foreign.add((node, action.execution_id))
            return
        for observer in self.observers:
            observer.on_exec_start(node, action, now)

    def on_exec_end(self, node: str, execution_id: str, status: str, now: float) -> None:
        if (node, execution_id) in self.foreign:
            self.foreign.discard((node, execution_id))
            return
        for observer in self.observers:
            observer.on_exec_end(node, execution_id, status, now)

    def on_crash(self, node: str, now: float) -> None:
        self.foreign = {k for k in self.foreign if k[0] != node}
        for observer in self.observers:
            observer.on_crash(node, now)

    def on_start(self, node: str, now: float) -> None:
        for observer in self.observers:
            observer.on_start(node, now)

    def on_pause(self, node: str, now: float, until: float) -> None:
        for observer in self.observers:
            observer.on_pause(node, now, until)

    def on_consumed(self, node: str, execution_id: str, consumer: Consumer,
                    first: int, last: int, now: float) -> None:
        if (node, execution_id) in self.foreign:
            return
        for observer in self.observers:
            observer.on_consumed(node, execution_id, consumer, first, last, now)

    def on_items(self, node: str, action: ReadItems, items: int, error: str,
                 now: float) -> None:
        for observer in self.observers:
            observer.on_items(node, action, items, error, now)


@attrs.define
class FrameTrigger:
    """Crash a node when it sends a frame of ``mtype`` (``when``: "before" it
    leaves, or "after"), for frames ``match`` accepts, ``count`` times; the
    node restarts ``restart_after`` seconds later (None: it stays down)."""

    mtype: str
    when: str = "after"
    node: str | None = None  # only frames this node sends
    match: Callable[[str, str], bool] | None = None  # (sender, receiver) -> fire?
    count: int = 1
    restart_after: float | None = 5.0
    fired: list[tuple[float, str]] = attrs.field(factory=list)


def default_core_factory(config: NodeConfig, seed: int, records: Records) -> Core:
    from protocols.node import NodeCore  # imported late: the core may be absent in unit tests

    core: Core = NodeCore(config, seed, records)
    return core


class Cluster:
    def __init__(
        self,
        nodes: int,
        seed: int,
        *,
        net: NetConfig | None = None,
        timings: Timings | None = None,
        configure: Callable[[int, dict[str, Any]], dict[str, Any]] | None = None,
        core_factory: Callable[[NodeConfig, int, Records], Core] = default_core_factory,
        record: bool = False,
        check_interval: float = 30.0,
        bounds: Bounds | None = None,
        node_timings: Callable[[str, int], Timings] | None = None,
        clock_skew: float = 0.0,
        byzantine: Iterable[int] = (),
    ) -> None:
        self.seed = seed
        # ``timings``: every node's, and the checkers' bounds.  ``node_timings``
        # (simnet.timings, --timings mixed): (node id, incarnation) -> that
        # incarnation's own; ``timings`` then bounds them all (simnet.timings.envelope).
        self.node_timings = node_timings
        self.timings = timings or Timings()
        self.engine = Engine(seed, net)
        self.rng = random.Random(derive_seed(seed, "cluster"))
        self.notes: list[Note] | None = [] if record else None
        self.pauses: list[tuple[float, float, str]] = []  # (from, until, node), every pause
        self.byzantine: frozenset[str] = frozenset(f"n{i:04d}" for i in byzantine)
        schedule = self.schedule_check
        self.inv = Invariants(
            self.timings,
            schedule=schedule,
            is_running=self._is_running,
            on_violation=self.engine.halt,
        )
        self.inv.schedule_for = self.schedule_check
        self.kinds = KindInvariants(self.timings, schedule, self, self.inv.violate, bounds)
        self.stream = StreamInvariants(self.timings, schedule, self, self.inv.violate)
        self.stream.lossy = bool(net is not None and net.loss > 0)
        self.chain = ChainInvariants(self.timings, schedule, self, self.inv.violate)
        self.chain.lossy = self.stream.lossy
        if net is not None:
            self.chain.late_frames = max(net.reorder_delay if net.reorder else 0.0,
                                         net.tail_delay[1] if net.tail else 0.0)
        self.dag = DagInvariants(self.inv.violate)
        self.liveness = Liveness(self.inv)
        # Every checker, in the order they see each event and the harness's hooks.
        self.checkers: list[Checker] = [self.inv, self.kinds, self.stream, self.chain,
                                        self.dag, self.liveness]
        self.fanout = _Fanout(list(self.checkers), self.notes)
        self.fanout.ignored = self.byzantine
        self.kinds.strangers = self.byzantine
        self.fanout.granted_by = self._granted_by
        self.adversary: Adversary | None = None  # set by the runner (simnet.byzantine)
        self.engine.observer = self.fanout
        self.connector = SimConnector(self)
        self.triggers: list[FrameTrigger] = []
        self.frame_rng: random.Random | None = None  # random frame crashes (see frame_crashes)
        self.frame_crash: dict[str, float] = {}
        self.frame_downtime = (2.0, 30.0)
        self.frame_crashes = 0
        self.engine.crash_callback = self.crash
        self.configs: list[NodeConfig] = []
        self.submitted: list[str] = []
        self.must_end: list[str] = []  # submitted jobs that must end (not long-running)
        self.ever_started: set[str] = set()
        self.last_owned: dict[str, dict[str, str]] = {}
        self._core_factory = core_factory
        self.check_interval = check_interval
        self._checking = False
        for i in range(nodes):
            fields: dict[str, Any] = {
                "node_id": f"n{i:04d}",
                "labels": {"zone": ZONES[i % len(ZONES)]},
                "executors": ("sim",),
                "bootstrap": self._bootstrap(i),
                "timings": node_timings(f"n{i:04d}", 0) if node_timings else self.timings,
            }
            if fields["node_id"] in self.byzantine:
                fields["compute"] = False  # it never holds a lease: it only lies
            if configure is not None:
                fields = configure(i, fields)
            config = NodeConfig(**fields)
            self.configs.append(config)
            self.engine.add_node(config.node_id, self._factory(config))
        if clock_skew > 0:
            clock_rng = random.Random(derive_seed(seed, "clocks"))
            for i in range(nodes):
                self.engine.set_clock_rate(i, 1.0 + clock_rng.uniform(-clock_skew, clock_skew))

    def _bootstrap(self, i: int) -> tuple[str, ...]:
        if i == 0:
            return ()
        picks = {0}
        if i > 1:
            picks.update(self.rng.sample(range(1, i), min(2, i - 1)))
        return tuple(f"n{j:04d}" for j in sorted(picks))

    def _factory(self, config: NodeConfig) -> Callable[[Records, int], Core]:
        def make(records: Records, incarnation: int) -> Core:
            seed = derive_seed(self.seed, "node", config.node_id, incarnation)
            own = config
            if self.node_timings is not None:  # a restart may come with other settings
                own = attrs.evolve(config, timings=self.node_timings(config.node_id, incarnation))
            return self._core_factory(own, seed, records)
        return make

    # --- pauses, and checker deadlines that do not count frozen time ------------------------

    def pause(self, node_id: str, seconds: float) -> None:
        """Freeze ``node_id`` for ``seconds`` (SIGSTOP, GC): see Engine.pause_node."""
        idx = self.idx(node_id)
        if not self.engine.nodes[idx].up or self.engine.is_paused(idx):
            return
        until = self.now + seconds
        self.engine.pause_node(idx, until)
        self.pauses.append((self.now, until, node_id))
        self._fault("pause")
        self.at(until, functools.partial(self._fault, "resume"))

    def thawed_deadline(self, start: float, budget: float, node: str | None = None) -> float:
        """When ``node`` (None: any node) has run unfrozen for ``budget``
        seconds since ``start``, by the pauses known now."""
        t, left = start, budget
        for p0, p1, who in self.pauses:  # in start order
            if (node is not None and who != node) or p1 <= t:
                continue
            if p0 >= t + left:
                break
            left -= max(0.0, p0 - t)
            t = p1
        return t + left

    def schedule_check(self, at: float, fn: Callable[[], None], node: str | None = None) -> None:
        """Run a checker's deadline check once ``node`` (not given: any node)
        has run unfrozen for ``at - now`` seconds: a paused holder cannot stop
        anything, so its frozen time does not count against its deadline."""
        set_at, budget = self.now, max(0.0, at - self.now)

        def fire() -> None:
            due = self.thawed_deadline(set_at, budget, node)
            if due > self.now:  # a pause began since: wait for the rest of the budget
                self.engine.call_at(due, fire)
            else:
                fn()
        self.engine.call_at(at, fire)

    def _granted_by(self, node: str, execution_id: str) -> str | None:
        held = getattr(getattr(self.core(node), "holder", None), "held", {})
        record = held.get(execution_id.partition("#")[0])
        return getattr(record, "owner", None)

    def _is_running(self, node: str, execution_id: str) -> bool:
        return self.engine.executor.is_running(self.engine.by_id[node], execution_id)

    # --- the checkers' view of the world (simnet.kind_invariants.World) -------------------

    def matches(self, node: str, labels: Mapping[str, str]) -> bool:
        """``node`` computes, runs sim tasks and carries every one of ``labels``."""
        config = self.configs[self.idx(node)]
        if not config.compute or "sim" not in config.executors:
            return False
        return all(config.labels.get(k) == v for k, v in labels.items())

    def connected(self, a: str, b: str) -> bool:
        return self.engine.network.connected(self.idx(a), self.idx(b))

    # --- node control ---------------------------------------------------------------

    @property
    def ids(self) -> list[str]:
        return [n.id for n in self.engine.nodes]

    @property
    def now(self) -> float:
        return self.engine.now

    def idx(self, node_id: str) -> int:
        return self.engine.by_id[node_id]

    def is_up(self, node_id: str) -> bool:
        return self.engine.nodes[self.idx(node_id)].up

    def core(self, node_id: str) -> Any:
        return self.engine.nodes[self.idx(node_id)].core

    def start(self, node_ids: Iterable[str] | None = None) -> None:
        for nid in self.ids if node_ids is None else node_ids:
            self.ever_started.add(nid)
            self.engine.start_node(self.idx(nid))
        if not self._checking and self.check_interval > 0:
            # Invariant 3 "at all times": every check_interval virtual seconds.
            self._checking = True
            self.at(self.now + self.check_interval, self._periodic_check)

    def _periodic_check(self) -> None:
        self.check_ownership()
        self.chain.check_logs(self.now)
        self.at(self.now + self.check_interval, self._periodic_check)

    def join(self, node_id: str) -> None:
        """A node's first start, after the cluster started (a joiner)."""
        if node_id in self.ever_started:
            raise ValueError(f"{node_id} already started once: restart() it")
        self.start([node_id])
        self._fault("join")

    def _fault(self, what: str) -> None:
        for checker in self.checkers:
            checker.on_fault(self.now, what)

    def crash(self, node_id: str) -> None:
        node = self.engine.nodes[self.idx(node_id)]
        if node.up:
            # Its store still holds what it owns: remember the view for the
            # ownership checker while it is down.
            self.last_owned[node_id] = dict(self._owned_of(node.core))
            self.engine.crash_node(node.idx)
            self.connector.forget_node(node_id)
            self._fault("crash")

    def restart(self, node_id: str) -> None:
        if self.is_up(node_id):
            return
        self.ever_started.add(node_id)
        self.last_owned.pop(node_id, None)  # (before: a frame hook may crash it at once)
        self.engine.start_node(self.idx(node_id))
        self._fault("restart")

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self.engine.call_at(t, fn)

    def partition(self, *groups: Iterable[str]) -> None:
        self.engine.network.partition([[self.idx(n) for n in g] for g in groups])
        self._fault("partition")

    def block(self, src: str, dst: str, seconds: float) -> None:
        """Cut the link ``src`` -> ``dst`` only, for ``seconds``."""
        a, b = self.idx(src), self.idx(dst)
        self.engine.network.block(a, b)
        self._fault("oneway")

        def unblock() -> None:
            if (a, b) in self.engine.network.blocked:
                self.engine.network.unblock(a, b)
                self._fault("heal")
        self.at(self.now + seconds, unblock)

    def heal(self) -> None:
        if self.engine.network.partitioned:
            self.engine.network.heal()
            self._fault("heal")

    # --- targeted crashes: keyed on the frames a node sends ----------------------------

    def crash_on_frame(self, mtype: str, when: str = "after", *, node: str | None = None,
                       match: Callable[[str, str], bool] | None = None, count: int = 1,
                       restart_after: float | None = 5.0) -> FrameTrigger:
        """Crash the sender of the next ``count`` frames of type ``mtype``
        (``handover_accept``, ...) right ``before`` the frame leaves (it is
        lost) or right ``after``; the rest of that event's actions are lost
        too (a crash in the middle of a batch: its records are all written, as
        the runtime writes them before any effect)."""
        if when not in ("before", "after"):
            raise ValueError(f"when must be 'before' or 'after', not {when!r}")
        trigger = FrameTrigger(mtype, when, node, match, count, restart_after)
        self.triggers.append(trigger)
        self.engine.frame_hook = self._on_frame
        return trigger

    def frame_crashes_at(self, rates: dict[str, float], seed_part: str = "frames",
                         downtime: tuple[float, float] = (2.0, 30.0)) -> None:
        """Random targeted crashes: a node sending a frame of type ``t``
        crashes with probability ``rates[t]`` (before or after the frame
        leaves, a seeded coin), and restarts after a seeded downtime."""
        self.frame_crash = dict(rates)
        self.frame_rng = random.Random(derive_seed(self.seed, seed_part))
        self.frame_downtime = downtime
        self.engine.frame_hook = self._on_frame

    def stop_frame_crashes(self) -> None:
        self.frame_crash = {}
        if not self.triggers:
            self.engine.frame_hook = None

    def _on_frame(self, node: SimNode, mtype: str, dst: int) -> str | None:
        for trigger in self.triggers:
            if trigger.count <= 0 or trigger.mtype != mtype:
                continue
            if trigger.node is not None and trigger.node != node.id:
                continue
            if trigger.match is not None and not trigger.match(node.id, self.ids[dst]):
                continue
            trigger.count -= 1
            trigger.fired.append((self.now, node.id))
            if trigger.restart_after is not None:
                self.at(self.now + trigger.restart_after, functools.partial(self.restart,
                                                                            node.id))
            return trigger.when
        rate = self.frame_crash.get(mtype)
        rng = self.frame_rng
        if rate and rng is not None and rng.random() < rate:
            self.frame_crashes += 1
            when = "before" if rng.random() < 0.5 else "after"
            back = self.now + rng.uniform(*self.frame_downtime)
            self.at(back, functools.partial(self.restart, node.id))
            return when
        return None

    # --- jobs ------------------------------------------------------------------------

    def next_job_id(self) -> str:
        return f"j{len(self.submitted):06d}"

    def submit(self, spec: dict[str, Any], owner: str | None = None,
               at: float | None = None, job_id: str | None = None) -> str:
        """Submit ``spec`` to ``owner`` (default: seeded pick) at time ``at``.
        If that node is down then, the client tries the next node up; if no
        node is up, or the node died before reading the request, the client
        tries again a second later, until a node accepted the job."""
        jid = job_id or self.next_job_id()
        self.submitted.append(jid)
        for checker in self.checkers:
            checker.expect(jid, spec)
        if spec.get("type") == "chain" and self.engine.after_event is None:
            chain = self.chain
            self.engine.after_event = lambda node: chain.after_event(node.id, self.engine.now)
        if spec.get("type") == "stream" and spec.get("mode") == "micro_batch":
            self.connector.register(jid, spec)
        if spec.get("type", "batch") not in LONG_RUNNING_KINDS:
            self.must_end.append(jid)
        target = self.idx(owner) if owner else self.rng.randrange(len(self.engine.nodes))

        def fire() -> None:
            if jid in self.inv.jobs:
                return  # accepted
            nodes = self.engine.nodes
            for k in range(len(nodes)):
                node = nodes[(target + k) % len(nodes)]
                if node.up and node.id not in self.byzantine:  # clients trust honest nodes
                    if not self.engine.is_paused(node.idx):  # (else: still waiting on it)
                        self.engine.inject(node.idx, SubmitJob(jid, spec), self.engine.now)
                    break
            self.engine.call_at(self.engine.now + SUBMIT_RETRY, fire)
        self.engine.call_at(self.engine.now if at is None else at, fire)
        return jid

    def cancel(self, job_id: str, at: float | None = None, reason: str = "stopped by user") -> None:
        """Stop ``job_id`` at ``at`` (if its owner is down then, when it is back)."""
        def fire() -> None:
            owner = self.owner_of(job_id)
            if owner is None:
                return  # never accepted: nothing to stop
            if not self.is_up(owner):
                self.engine.call_at(self.engine.now + 1.0, fire)
                return
            if job_id not in self.inv.stopping:
                for checker in self.checkers:
                    checker.cancelled(job_id)
                if job_id not in self.must_end:
                    self.must_end.append(job_id)
            self.engine.inject(self.idx(owner), CancelJob(job_id, reason), self.engine.now)
        self.engine.call_at(self.engine.now if at is None else at, fire)

    def owner_of(self, job_id: str) -> str | None:
        track = self.inv.jobs.get(job_id)
        return track.owner if track else None

    def state_of(self, job_id: str) -> str | None:
        track = self.inv.jobs.get(job_id)
        return track.state if track else None

    def reason_of(self, job_id: str) -> str:
        track = self.inv.jobs.get(job_id)
        return track.reason if track else ""

    def all_done(self) -> bool:
        """Every submitted job that must end has (daemons, services and cron
        jobs must end only once cancelled)."""
        return self.inv.terminal >= len(self.must_end) and all(
            self.state_of(j) in TERMINAL for j in self.must_end)

    @staticmethod
    def _owned_of(core: Any) -> dict[str, str]:
        fn = getattr(core, "owned_jobs", None)
        return dict(fn()) if callable(fn) else {}

    def owned(self) -> dict[str, dict[str, str]]:
        """node -> owned jobs; down nodes report what they owned at their crash."""
        out: dict[str, dict[str, str]] = {}
        for node in self.engine.nodes:
            if node.up:
                out[node.id] = self._owned_of(node.core)
            else:
                out[node.id] = dict(self.last_owned.get(node.id, {}))
        return out

    def down(self) -> set[str]:
        """The nodes down now."""
        return {node.id for node in self.engine.nodes if not node.up}

    def check_ownership(self) -> None:
        self.inv.check_ownership(self.owned(), self.engine.now)

    # --- running ------------------------------------------------------------------------

    def run_for(self, seconds: float) -> None:
        self.engine.run(until=self.engine.now + seconds)

    def run_until(self, t: float, stop: Callable[[], bool] | None = None) -> None:
        self.engine.run(until=t, stop=stop)
        if self.engine.now < t and self.engine.halted is None and (stop is None or not stop()):
            self.engine.now = t  # nothing left to do before t

    def run_until_done(self, limit: float) -> bool:
        """Run until every submitted job is terminal (True) or time ``limit``."""
        def stop() -> bool:
            # Checked after every event: the counter comparison keeps it cheap.
            return self.inv.terminal >= len(self.must_end) and self.all_done()
        if self.all_done():
            return True
        self.run_until(limit, stop)
        return self.all_done()

    @property
    def violations(self) -> list[str]:
        return self.inv.violations + [e for e in self.engine.core_errors
                                      if e not in self.inv.violations]

    def notes_of(self, kind: str) -> list[Note]:
        return [n for n in self.notes or [] if n.kind == kind]
