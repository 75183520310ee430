"""What a run's HTML report plots, recorded through the harness's hooks.

A :class:`RunRecorder` is a passive checker: it sees the same notifications,
executor reports, crashes, starts, pauses and faults as the invariant checkers
(:mod:`simnet.checker`), reads the cluster's state after them and never acts:
it schedules nothing, draws no random number and sends nothing, so a run with
a recorder has the trace hash of the same run without one
(``tests/test_simnet_report.py`` checks it).  Everything it keeps is in
virtual seconds.

It records:

* every job's state over time, as the summary counts it (the core checker's
  ``state_of`` after each ``job_state``), plus ``pending``: submitted by the
  client, not yet accepted by a node;
* each job's client submit time and kind (latency = submit -> terminal);
* faults: crashes, restarts, joins, pauses, partitions (with the island),
  one-way link failures, each with its start and, where it has one, its end.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from simnet.checker import Checker, handles
from simnet.harness import Cluster
from simnet.invariants import LONG_RUNNING_KINDS, TERMINAL

PENDING = "pending"  # submitted by the client, accepted by no node yet


@attrs.frozen
class FaultMark:
    """One injected fault on the timeline: ``kind`` in crash, restart, join,
    pause, partition, oneway; ``end`` is None for an instant (crash, restart,
    join); ``nodes`` the nodes it hit (a partition: its island; one-way: src,
    dst); ``open_at_end``: it was still in force when the run ended."""

    kind: str
    start: float
    end: float | None
    nodes: tuple[str, ...]
    open_at_end: bool = False


class RunRecorder(Checker):
    def __init__(self, cluster: Cluster) -> None:
        super().__init__(lambda now, text: None)  # it never reports a violation
        self.cluster = cluster
        self.kind_of: dict[str, str] = {}  # job -> its spec's type
        self.submit_at: dict[str, float] = {}  # job -> the client's submit time
        # (t, job, new state): the client's submits (recorded before the run,
        # "pending"), then every change in event order
        self.transitions: list[tuple[float, str, str]] = []
        self._state: dict[str, str] = {}
        self.faults: list[FaultMark] = []
        self._open_partition: tuple[float, tuple[str, ...]] | None = None
        self._open_oneway: dict[tuple[int, int], float] = {}
        self._started: str | None = None  # the node on_start saw last
        self.end: float = 0.0
        self.faults_stop: float | None = None  # the fault phase's end
        self.network_calm: float | None = None  # loss etc. stop (calm / long runs)

    # --- jobs ----------------------------------------------------------------------

    def expect(self, job_id: str, spec: Mapping[str, Any]) -> None:
        self.kind_of[job_id] = str(spec.get("type") or "batch")

    def note_submit(self, job_id: str, at: float) -> None:
        """The runner: the client submits ``job_id`` at virtual time ``at``."""
        self.submit_at[job_id] = at
        self.transitions.append((at, job_id, PENDING))
        self._state[job_id] = PENDING

    @handles("job_submitted", "job_state")
    def _job_changed(self, node: str, data: dict[str, Any], now: float) -> None:
        job_id = str(data.get("job_id"))
        if job_id not in self.submit_at:
            return  # not a job of the workload (a cron run, a liar's invention)
        state = self.cluster.state_of(job_id) or PENDING
        if state != self._state.get(job_id):
            self._state[job_id] = state
            self.transitions.append((now, job_id, state))

    def latencies(self) -> dict[str, list[float]]:
        """Final state -> client submit -> terminal seconds of every job that
        ended (long-running kinds excluded: they end only when stopped)."""
        ended: dict[str, float] = {}
        for t, job_id, state in self.transitions:
            if state in TERMINAL and job_id not in ended:
                ended[job_id] = t
        out: dict[str, list[float]] = {}
        for job_id, t in ended.items():
            if self.kind_of.get(job_id) in LONG_RUNNING_KINDS:
                continue
            out.setdefault(self._state[job_id], []).append(t - self.submit_at[job_id])
        return {state: sorted(values) for state, values in sorted(out.items())}

    # --- faults --------------------------------------------------------------------

    def on_crash(self, node: str, now: float) -> None:
        self.faults.append(FaultMark("crash", now, None, (node,)))

    def on_start(self, node: str, now: float) -> None:
        self._started = node

    def on_pause(self, node: str, now: float, until: float) -> None:
        self.faults.append(FaultMark("pause", now, until, (node,)))

    def on_fault(self, now: float, what: str = "") -> None:
        if what in ("restart", "join") and self._started is not None:
            self.faults.append(FaultMark(what, now, None, (self._started,)))
        elif what == "partition":
            self._close_partition(now)
            ids = self.cluster.ids
            group = self.cluster.engine.network.group
            island = tuple(ids[i] for i, g in enumerate(group) if g != 0)
            self._open_partition = (now, island)
        elif what == "oneway":
            for pair in sorted(self.cluster.engine.network.blocked - set(self._open_oneway)):
                self._open_oneway[pair] = now
        elif what == "heal":
            network = self.cluster.engine.network
            if not any(network.group):
                self._close_partition(now)
            for pair in sorted(set(self._open_oneway) - network.blocked):
                self._close_oneway(pair, now)

    def _close_partition(self, now: float, open_at_end: bool = False) -> None:
        if self._open_partition is not None:
            start, island = self._open_partition
            self.faults.append(FaultMark("partition", start, now, island, open_at_end))
            self._open_partition = None

    def _close_oneway(self, pair: tuple[int, int], now: float,
                      open_at_end: bool = False) -> None:
        start = self._open_oneway.pop(pair)
        ids = self.cluster.ids
        self.faults.append(FaultMark("oneway", start, now, (ids[pair[0]], ids[pair[1]]),
                                     open_at_end))

    def finish(self, now: float, faults_stop: float | None, network_calm: float | None) -> None:
        """The run ended at ``now``: close what is still open."""
        self.end = now
        self.faults_stop = faults_stop
        self.network_calm = network_calm
        self._close_partition(now, open_at_end=True)
        for pair in sorted(self._open_oneway):
            self._close_oneway(pair, now, open_at_end=True)
        self.faults.sort(key=lambda f: (f.start, f.kind, f.nodes))


def attach(cluster: Cluster) -> RunRecorder:
    """A recorder watching ``cluster`` from now on, after every checker."""
    recorder = RunRecorder(cluster)
    cluster.checkers.append(recorder)  # expect, cancelled, on_fault
    cluster.fanout.observers.append(recorder)  # notifications, crashes, starts, pauses
    return recorder
