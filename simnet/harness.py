"""A cluster of simulated nodes: start, submit, crash, restart, partition.

Node ids are ``n0000``, ``n0001``, ...; node i carries ``zone`` label
``a``/``b``/``c`` (i mod 3) and bootstraps from ``n0000`` plus two seeded
earlier nodes.  Job ids are ``j000000``, ... in submission order.

Every cluster runs the invariant checkers (:mod:`simnet.invariants`) from its
first event; the first violation halts the engine.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from protocols.config import NodeConfig, Timings
from protocols.events import CancelJob, StartExecution, SubmitJob
from simnet.engine import Core, Engine, Observer, derive_seed
from simnet.invariants import TERMINAL, Invariants
from simnet.network import NetConfig
from simnet.store import Records
from simnet.workload import ZONES


@attrs.frozen
class Note:
    """One Notify seen during the run (kept only when ``record=True``)."""

    t: float
    node: str
    kind: str
    data: dict[str, Any]


class _Fanout(Observer):
    """Feeds the checkers and, optionally, a log of every notification."""

    def __init__(self, inv: Invariants, log: list[Note] | None) -> None:
        self.inv = inv
        self.log = log

    def on_notify(self, node: str, kind: str, data: dict[str, Any], now: float) -> None:
        self.inv.on_notify(node, kind, data, now)
        if self.log is not None:
            self.log.append(Note(now, node, kind, data))

    def on_exec_start(self, node: str, action: StartExecution, now: float) -> None:
        self.inv.on_exec_start(node, action, now)

    def on_exec_end(self, node: str, execution_id: str, status: str, now: float) -> None:
        self.inv.on_exec_end(node, execution_id, status, now)

    def on_crash(self, node: str, now: float) -> None:
        self.inv.on_crash(node, now)


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
    ) -> None:
        self.seed = seed
        self.timings = timings or Timings()
        self.engine = Engine(seed, net)
        self.rng = random.Random(derive_seed(seed, "cluster"))
        self.notes: list[Note] | None = [] if record else None
        self.inv = Invariants(
            self.timings,
            schedule=self.engine.call_at,
            is_running=self._is_running,
            on_violation=self.engine.halt,
        )
        self.engine.observer = _Fanout(self.inv, self.notes)
        self.configs: list[NodeConfig] = []
        self.submitted: list[str] = []
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
                "timings": self.timings,
            }
            if configure is not None:
                fields = configure(i, fields)
            config = NodeConfig(**fields)
            self.configs.append(config)
            self.engine.add_node(config.node_id, self._factory(config))

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
            return self._core_factory(config, seed, records)
        return make

    def _is_running(self, node: str, execution_id: str) -> bool:
        return self.engine.executor.is_running(self.engine.by_id[node], execution_id)

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
            self.engine.start_node(self.idx(nid))
        if not self._checking and self.check_interval > 0:
            # Invariant 3 "at all times": every check_interval virtual seconds.
            self._checking = True
            self.at(self.now + self.check_interval, self._periodic_check)

    def _periodic_check(self) -> None:
        self.check_ownership()
        self.at(self.now + self.check_interval, self._periodic_check)

    def crash(self, node_id: str) -> None:
        node = self.engine.nodes[self.idx(node_id)]
        if node.up:
            # Its store still holds what it owns: remember the view for the
            # ownership checker while it is down.
            self.last_owned[node_id] = dict(self._owned_of(node.core))
        self.engine.crash_node(node.idx)

    def restart(self, node_id: str) -> None:
        self.engine.start_node(self.idx(node_id))
        self.last_owned.pop(node_id, None)

    def at(self, t: float, fn: Callable[[], None]) -> None:
        self.engine.call_at(t, fn)

    def partition(self, *groups: Iterable[str]) -> None:
        self.engine.network.partition([[self.idx(n) for n in g] for g in groups])

    def heal(self) -> None:
        self.engine.network.heal()

    # --- jobs ------------------------------------------------------------------------

    def next_job_id(self) -> str:
        return f"j{len(self.submitted):06d}"

    def submit(self, spec: dict[str, Any], owner: str | None = None,
               at: float | None = None, job_id: str | None = None) -> str:
        """Submit ``spec`` to ``owner`` (default: seeded pick) at time ``at``.
        If that node is down then, the client tries the next node up."""
        jid = job_id or self.next_job_id()
        self.submitted.append(jid)
        target = self.idx(owner) if owner else self.rng.randrange(len(self.engine.nodes))

        def fire() -> None:
            nodes = self.engine.nodes
            for k in range(len(nodes)):
                node = nodes[(target + k) % len(nodes)]
                if node.up:
                    self.engine.inject(node.idx, SubmitJob(jid, spec), self.engine.now)
                    return
        self.engine.call_at(self.engine.now if at is None else at, fire)
        return jid

    def cancel(self, job_id: str, at: float | None = None, reason: str = "stopped by user") -> None:
        def fire() -> None:
            owner = self.owner_of(job_id)
            if owner is not None and self.is_up(owner):
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
        return self.inv.terminal >= len(self.submitted) and all(
            self.state_of(j) in TERMINAL for j in self.submitted)

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
            return self.inv.terminal >= len(self.submitted) and self.all_done()
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
