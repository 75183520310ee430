"""Invariant checkers for chain jobs (ownership handed from peer to peer).

Fed like the other checkers (notifications, executor ground truth, node
starts and crashes), plus :meth:`ChainInvariants.after_event`, which the
engine calls after *every* event a core handled: it reads the node's chain
states (``core.chain.chains``: role, outcome, record log) -- the state
``job describe`` shows.  A node *considers itself the owner* of chain ``J``
when it is up and its state for ``J`` has ``role == "owner"`` and no
``outcome``; a down node considers nothing (its store is read again when it
restarts, and counts from its ``Started`` event on).

Run ids are ``J~s<k>~r<n>~<m>``: stage ``k`` run by the owner named by
record ``n`` of the log (its ``m``-th run); the run's *creator* is the node
that notified its ``job_submitted``.

* **CH1 one owner**: after every event, at most one node considers itself
  the owner of ``J`` (a node whose ownership ran out by its own clock and that
  handled no event since -- paused -- no longer counts: it lets go before it
  acts on its next event).  **CH1b no orphan stage**: an execution of a stage run
  runs (executor truth) only while its creator considers itself the owner,
  or for at most ``lease_ttl + lease_grace + slack`` after the creator
  stopped being the owner (fencing lag; a crash ends ownership) -- so while
  a stage run executes there is an accountable owner, up to that lag.
* **CH2 accepted once per ownership record**: a stage result is *accepted*
  when the owner named by record ``n`` turns it into the chain's next step --
  a ``handover_committed`` appending record ``n + 1``, or the chain's
  completion with ``n`` as the last record.  For every record (identified by
  its hash: after a takeover two records may share a number) that happens at
  most once.  The accepted result is real: the new record's
  inputs name the output manifest of a *succeeded* execution of a run of
  stage ``k`` under record ``n`` and the node that ran it, and ownership
  moves to that node (``to`` is the holder of the data).
* **CH3 the log verifies**: every node's log of ``J`` (pending ones as
  pending) passes :func:`protocols.chain.verify_log` against the digest of
  the submitter's spec (signatures by both parties, hash links, stages);
  any two non-pending logs are prefixes of one another (no fork) unless,
  where they first differ, one has a *takeover* record: the submitter took
  the chain over from the owner its log named, superseding records it never
  learned of (a handover its owner committed but never reported; counted as
  *superseded*).  Two handovers with the same number are always a fork.  The
  submitter's log only grows; ``describe`` says ``log_verified: ok``.
  Checked when a node reports a handover or takeover, every check interval,
  and at the end.
* **CH4 every chain ends**: once faults stop, ``J`` ends ``completed`` (its
  log's last stage is the spec's last) or ``failed`` with a reason (the
  batch checker's end checks); then no node considers itself its owner and
  no stage execution of ``J`` runs.
* **CH5 every chain ends (liveness)**: once the faults stopped (:meth:`calm`,
  called by the runner; loss, duplication and reordering may go on) a running
  chain makes *progress* -- a stage run created, a stage execution starting or
  ending, a handover committed or received, a takeover -- at least every
  :meth:`ChainInvariants.progress_bound` (the takeover bound, the longest
  stage timeout + ``timeout_grace``, and one offer window: the longest quiet a
  healthy protocol has), so no chain stays running forever, even with an
  owner that considers itself the owner but does nothing.  A chain that
  *fails* names a stage in its reason, and unless that stage's task can fail
  (exit code, ``fail_rate``, hang) some fault (crash, restart, partition, heal,
  a lossy network) happened while it ran: a healthy chain fails only for a
  fault-attributable reason.
* **Takeover bound**: when the owner named by the submitter's log crashes
  and stays down while the submitter stays up, the submitter takes over
  within ``lease_ttl + lease_grace + renew_interval + slack`` (its watch
  timer period), plus the longest a frame may arrive late (latency tails and
  wide reordering: the owner's last report may land after its death); the
  latencies are measured.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from protocols.chain import pack, record_hash, verify_log
from protocols.config import Timings
from protocols.errors import RemoteProtocolError
from protocols.events import StartExecution
from protocols.signing import SimKeyring
from simnet.checker import Checker, handles
from simnet.invariants import TERMINAL
from simnet.sources import sim_manifest


class World(Protocol):
    """What the chain checker reads: a node's core (None when down)."""

    def core(self, node_id: str) -> Any: ...

    @property
    def ids(self) -> list[str]: ...


def parse_stage_run(run_id: str) -> tuple[str, int, int] | None:
    """``J~s<k>~r<n>~<m>`` -> (J, k, n); None for other ids."""
    parts = run_id.split("~")
    if len(parts) != 4 or not parts[1].startswith("s") or not parts[2].startswith("r"):
        return None
    try:
        return parts[0], int(parts[1][1:]), int(parts[2][1:])
    except ValueError:
        return None


class ChainJob:
    __slots__ = ("accepted", "accepted_at", "digest", "named_crash", "owners", "progress_at",
                 "spec", "stages", "state", "submitter", "submitter_log", "superseded")

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = dict(spec)
        self.stages = len(spec.get("stages") or [])
        self.submitter = ""
        self.state = "queued"
        self.accepted_at: float | None = None
        self.owners: set[str] = set()
        self.accepted: dict[str, str] = {}  # record hash -> what its owner accepted
        self.digest = ""
        self.submitter_log: list[str] = []  # record hashes the submitter had last time
        self.named_crash: tuple[str, float] | None = None
        self.superseded = 0  # pairs of logs a takeover made diverge (at the last check)
        self.progress_at = 0.0  # the chain's last progress (CH5)

    def stage_can_fail(self, index: int) -> bool:
        """Stage ``index``'s task fails by itself sometimes (exit code, fail
        rate, hang): a failure there needs no fault to blame."""
        stages = self.spec.get("stages") or []
        if not 0 <= index < len(stages):
            return False
        engine = (stages[index].get("task") or {}).get("engine") or {}
        return bool(engine.get("exit_code") or engine.get("fail_rate") or engine.get("hang"))

    def quiet_bound(self, t: Timings) -> float:
        """The longest a healthy chain goes without progress once faults stop."""
        timeouts = [float((s.get("task") or {}).get("timeout") or 0) / 1000.0
                    for s in self.spec.get("stages") or []]
        return max(timeouts, default=0.0) + t.timeout_grace + t.lease_ttl + t.lease_grace


class ChainInvariants(Checker):
    def __init__(
        self,
        timings: Timings,
        schedule: Callable[[float, Callable[[], None]], None],
        world: World,
        violate: Callable[[float, str], None],
        slack: float = 1.0,
    ) -> None:
        super().__init__(violate)
        self.t = timings
        self._schedule = schedule
        self.world = world
        self.slack = slack
        self.jobs: dict[str, ChainJob] = {}
        self.now = 0.0
        self.creator: dict[str, str] = {}  # stage run -> node that created it
        self.live: dict[tuple[str, str], tuple[str, float]] = {}  # (node, eid) -> (run, start)
        self.lost_at: dict[tuple[str, str], float] = {}  # (job, node) -> lost ownership at
        self.owner_since: dict[tuple[str, str], float] = {}  # (job, node) -> owner since
        self.started_at: dict[str, float] = {}  # node -> its last (re)start
        # manifest -> execution id and the nodes that ran it to success (one
        # execution id may run on two nodes when a byzantine peer forges a grant)
        self.outputs: dict[str, tuple[str, set[str]]] = {}
        self.up: dict[str, bool] = {}
        self.takeovers: list[tuple[float, str, float]] = []  # (latency, job, at)
        self.takeover_count = 0
        self.handovers = 0
        self.max_owners_seen = 0
        self._verified: set[tuple[str, int, bool]] = set()  # (head hash, length, pending)
        self._keys = SimKeyring("simnet-checker")
        self.lossy = False  # the network loses frames: a fault at every moment (CH5)
        # The longest a frame may arrive late (latency tails, wide reordering):
        # a report sent before its owner died may still reach the submitter
        # that much later, and the takeover counts from the last one heard.
        self.late_frames = 0.0
        self.fault_times: list[float] = []  # crash, restart, partition, heal (CH5)
        self.calm_at: float | None = None  # the faults stopped (CH5 enforced from then)
        self.progress_checks = 0

    # --- reporting -------------------------------------------------------------------

    @property
    def takeover_bound(self) -> float:
        t = self.t
        return t.lease_ttl + t.lease_grace + t.renew_interval + self.late_frames + self.slack

    def progress_bound(self, job: ChainJob) -> float:
        """CH5: the longest a running chain may go without progress once calm."""
        return self.takeover_bound + job.quiet_bound(self.t) + self.slack

    def summary(self) -> dict[str, Any]:
        return {
            "chain_jobs": len(self.jobs),
            "handovers": self.handovers,
            "takeovers": self.takeover_count,
            "takeover_latency_max": max(self.takeovers, default=None),
            "takeover_latency_mean": (round(sum(t[0] for t in self.takeovers)
                                            / len(self.takeovers), 3) if self.takeovers else None),
            "takeovers_measured": len(self.takeovers),
            "takeover_bound": round(self.takeover_bound, 3),
            "superseded_logs": sum(j.superseded for j in self.jobs.values()),
            "progress_checks": self.progress_checks,
        }

    # --- what the harness tells us ------------------------------------------------------

    def expect(self, job_id: str, spec: Mapping[str, Any]) -> None:
        if spec.get("type") == "chain":
            self.jobs[job_id] = ChainJob(spec)

    def _restart_note(self, node: str) -> str:
        at = self.started_at.get(node, 0.0)
        return f", restarted at t={at:.3f}s" if at > 0 else ""

    # --- CH5: progress once the faults stopped -------------------------------------------

    def on_fault(self, now: float, what: str = "") -> None:
        self.fault_times.append(now)

    def calm(self, now: float) -> None:
        """The faults stopped: from now on every running chain must progress."""
        self.calm_at = now
        self._schedule(now, functools.partial(self._check_progress, now))

    def _progress(self, jid: str, now: float) -> None:
        job = self.jobs.get(jid)
        if job is not None:
            job.progress_at = now

    def _check_progress(self, now: float) -> None:
        calm = self.calm_at
        assert calm is not None
        nxt: float | None = None
        for jid in sorted(self.jobs):
            job = self.jobs[jid]
            if job.accepted_at is None or job.state in TERMINAL:
                continue
            deadline = max(job.progress_at, calm) + self.progress_bound(job)
            if now >= deadline:
                self.violate(now, f"chain {jid} made no progress for "
                                  f"{now - max(job.progress_at, calm):.3f}s after the faults "
                                  f"stopped (bound {self.progress_bound(job):g}s): "
                                  f"{self._where(jid)} (CH5)")
                return
            nxt = deadline if nxt is None else min(nxt, deadline)
        self.progress_checks += 1
        if nxt is not None:
            self._schedule(nxt, functools.partial(self._check_progress, nxt))

    def _where(self, jid: str) -> str:
        """Where a chain stands: the submitter's head and every node's role."""
        job = self.jobs[jid]
        parts = []
        sub = self._state(job.submitter, jid)
        if sub is not None:
            head = sub.head
            parts.append(f"the submitter {job.submitter}'s log names {head['to']} for stage "
                         f"{head['stage']} (record {head['seq']}, {head['kind']})")
        for node in self.world.ids:
            state = self._state(node, jid)
            if state is not None:
                outcome = f" {state.outcome}" if state.outcome else ""
                run = getattr(state, "run_id", "")
                parts.append(f"{node}: {state.role}{outcome}{' run ' + run if run else ''}")
        running = sorted(eid for (_, eid), (run, _) in self.live.items()
                         if run.startswith(f"{jid}~"))
        parts.append(f"stage executions running: {running or 'none'}")
        return "; ".join(parts)

    def _failed(self, jid: str, job: ChainJob, reason: str, now: float) -> None:
        """CH5: a chain fails only for a stage that can fail, or a fault."""
        stage = -1
        if reason.startswith("stage "):
            name = reason[len("stage "):].split(":", 1)[0]
            names = [s.get("name") for s in job.spec.get("stages") or []]
            stage = names.index(name) if name in names else -1
        if stage < 0:
            self.violate(now, f"chain {jid} failed naming no stage of its spec: {reason!r} (CH5)")
            return
        start = job.accepted_at or 0.0
        if job.stage_can_fail(stage) or self.lossy or any(
                start <= t <= now for t in self.fault_times):
            return
        self.violate(now, f"chain {jid} failed at a healthy stage with no fault to blame: "
                          f"{reason!r} (CH5)")

    def on_start(self, node: str, now: float) -> None:
        self.up[node] = True
        self.started_at[node] = now
        for job in self.jobs.values():
            if job.named_crash is not None and job.named_crash[0] == node:
                job.named_crash = None  # back before the takeover: it reports again

    def on_crash(self, node: str, now: float) -> None:
        self.now = now
        self.up[node] = False
        for jid, job in self.jobs.items():
            if node in job.owners:
                job.owners.discard(node)
                self._lost(jid, node, now)
            if node == job.submitter:
                job.named_crash = None  # the submitter is down: no takeover to expect
            elif job.state not in TERMINAL and job.submitter and self.up.get(job.submitter):
                state = self._state(job.submitter, jid)
                if state is not None and not state.outcome and state.head["to"] == node:
                    job.named_crash = (node, now)
                    self._schedule(now + self.takeover_bound,
                                   self._takeover_check(jid, node, now))
        for key in [k for k in self.live if k[0] == node]:
            del self.live[key]

    # --- CH1: one owner at every event ---------------------------------------------------

    def after_event(self, node: str, now: float) -> None:
        self.now = now
        core = self.world.core(node)
        chains = core.chain.chains if core is not None else {}
        for jid, job in self.jobs.items():
            for other in [n for n in job.owners if n != node and self._lapsed(jid, n, now)]:
                job.owners.discard(other)  # (a paused owner: it lets go before acting again)
                self._lost(jid, other, now)
            state = chains.get(jid)
            owner = state is not None and state.role == "owner" and not state.outcome
            if owner and node not in job.owners:
                job.owners.add(node)
                self.lost_at.pop((jid, node), None)
                self.owner_since[(jid, node)] = now
                if len(job.owners) > 1:
                    self.max_owners_seen = max(self.max_owners_seen, len(job.owners))
                    who = ", ".join(f"{n} (owner since t={self.owner_since[(jid, n)]:.3f}s"
                                    f"{self._restart_note(n)})" for n in sorted(job.owners))
                    self.violate(now, f"chain {jid}: {who} all consider themselves its owner "
                                      f"(CH1: at most one)")
            elif not owner and node in job.owners:
                job.owners.discard(node)
                self._lost(jid, node, now)

    def _lapsed(self, jid: str, node: str, now: float) -> bool:
        """``node`` (not the submitter) still considers itself the owner of
        ``jid`` but its ownership ran out by its own clock: it has not handled
        an event since (paused), and lets go before it acts on the next one."""
        state = self._state(node, jid)
        if state is None or getattr(state, "submitter", node) == node:
            return False  # (the submitter's own ownership never lapses)
        engine = getattr(self.world, "engine", None)
        rate = engine.nodes[engine.by_id[node]].rate if engine is not None else 1.0
        return bool(now * rate >= getattr(state, "valid_until", float("inf")))

    def _lost(self, jid: str, node: str, now: float) -> None:
        """``node`` stopped owning ``jid``: its stage executions must stop (CH1b)."""
        self.lost_at[(jid, node)] = now
        bound = self.t.lease_ttl + self.t.lease_grace + self.slack

        def check() -> None:
            if self.lost_at.get((jid, node)) != now:
                return  # owner again since
            for (n, eid), (run, started) in sorted(self.live.items()):
                if self.creator.get(run) == node and started <= now:
                    self.violate(now + bound, f"chain {jid}: {n} still runs {eid} of {node}'s "
                                              f"stage run {run} {bound:g}s after {node} "
                                              f"stopped owning the chain (CH1b)")
                    return
        self._schedule(now + bound, check)

    # --- notify stream -------------------------------------------------------------------

    def noticed(self, now: float) -> None:
        self.now = now

    @handles("job_submitted")
    def _job_submitted(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        job = self.jobs.get(jid)
        if job is not None:
            if job.accepted_at is None:
                job.submitter, job.accepted_at = node, now
                job.progress_at = now
                job.digest = "sha256:" + hashlib.sha256(pack(self._spec(node, jid))).hexdigest()
            return
        parsed = parse_stage_run(jid)
        if parsed is not None and parsed[0] in self.jobs:
            if jid in self.creator:
                self.violate(now, f"chain {parsed[0]}: stage run {jid} created twice "
                                  f"({self.creator[jid]}, then {node})")
            self.creator[jid] = node
            self._progress(parsed[0], now)

    def _spec(self, node: str, jid: str) -> dict[str, Any]:
        core = self.world.core(node)
        spec = core.chain.specs.get(jid) if core is not None else None
        return dict(spec) if spec is not None else self.jobs[jid].spec

    @handles("job_state")
    def _job_state(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        job = self.jobs.get(jid)
        if job is None or job.state in TERMINAL:
            return
        job.state = str(d.get("state"))
        if job.state == "failed":
            self._failed(jid, job, str(d.get("reason") or ""), now)
        if job.state != "completed":
            return
        state = self._state(node, jid)
        if state is None:
            self.violate(now, f"chain {jid} completed but its submitter {node} has no log")
            return
        head = state.head
        if head["stage"] != job.stages - 1:
            self.violate(now, f"chain {jid} completed at stage {head['stage']} of "
                              f"{job.stages} (CH4)")
        self._accept(jid, job, state.records[-1], "completion", now)
        final = list(state.final or [])
        if final and final[0] not in self.outputs:
            self.violate(now, f"chain {jid}: final output {final[0]} is no succeeded "
                              f"execution's output")

    def _accept(self, jid: str, job: ChainJob, record: dict[str, Any], what: str,
                now: float) -> None:
        key = record_hash(record)
        prev = job.accepted.get(key)
        if prev is not None:
            self.violate(now, f"chain {jid}: a second stage result accepted under record "
                              f"{record['body']['seq']} ({prev}, then {what}) (CH2)")
        job.accepted[key] = what

    @handles("handover_committed")
    def _handover_committed(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        job = self.jobs.get(jid)
        state = self._state(node, jid)
        if job is None or state is None:
            return
        self.handovers += 1
        self._progress(jid, now)
        rec = state.records[-1]["body"]
        seq, to = rec["seq"], rec["to"]
        before = state.records[-2]["body"] if len(state.records) > 1 else None
        if rec["kind"] != "handover" or rec["from"] != node or before is None \
                or before["to"] != node:
            self.violate(now, f"chain {jid}: {node} committed record {seq} "
                              f"({rec['kind']} from {rec['from']}) without owning record "
                              f"{seq - 1}")
        if before is not None:
            self._accept(jid, job, state.records[-2], f"handover to {to}", now)
        stage = rec["stage"] - 1
        for name, manifest, holder in rec.get("inputs") or []:
            ran = self.outputs.get(manifest)
            parsed = parse_stage_run(ran[0].rsplit("/", 2)[0]) if ran else None
            if ran is None or parsed is None or parsed[0] != jid or parsed[1:] != (stage, seq - 1):
                self.violate(now, f"chain {jid}: record {seq} hands over {name} {manifest}, "
                                  f"which no succeeded execution of stage {stage} under record "
                                  f"{seq - 1} produced (CH2)")
            elif holder not in ran[1] or holder != to:
                self.violate(now, f"chain {jid}: record {seq} gives stage {stage + 1} to {to}, "
                                  f"but stage {stage}'s output is on {', '.join(sorted(ran[1]))} "
                                  f"(named {holder})")
        self._check_node_log(jid, node, now)

    @handles("handover_received")
    def _handover_received(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        if jid in self.jobs:
            self._progress(jid, now)
            self._check_node_log(jid, node, now)

    @handles("chain_takeover")
    def _takeover(self, node: str, d: dict[str, Any], now: float) -> None:
        jid = str(d.get("job_id"))
        job = self.jobs.get(jid)
        if job is None:
            return
        self.takeover_count += 1
        self._progress(jid, now)
        crash = job.named_crash
        if crash is not None and crash[0] == str(d.get("silent")):
            self.takeovers.append((round(now - crash[1], 3), jid, round(now, 3)))
        job.named_crash = None
        self._check_node_log(jid, node, now)

    def _takeover_check(self, jid: str, node: str, crashed: float) -> Callable[[], None]:
        def check() -> None:
            job = self.jobs[jid]
            if job.named_crash != (node, crashed) or job.state in TERMINAL:
                return
            state = self._state(job.submitter, jid)
            if state is None or state.outcome or state.head["to"] != node:
                return
            self.violate(crashed + self.takeover_bound,
                         f"chain {jid}: its owner {node} died at t={crashed:.3f}s and the "
                         f"submitter {job.submitter} has not taken over "
                         f"{self.takeover_bound:g}s later")
        return check

    # --- executor ground truth -------------------------------------------------------------

    def on_exec_start(self, node: str, action: StartExecution, now: float) -> None:
        parsed = parse_stage_run(action.job_id)
        if parsed is None or parsed[0] not in self.jobs:
            return
        jid = parsed[0]
        self._progress(jid, now)
        self.live[(node, action.execution_id)] = (action.job_id, now)
        creator = self.creator.get(action.job_id)
        if creator is None:
            self.violate(now, f"chain {jid}: {node} runs {action.execution_id} of a stage "
                              f"run nobody created")
        elif creator not in self.jobs[jid].owners:
            self._late_start(jid, creator, node, action.execution_id, now)

    def _late_start(self, jid: str, creator: str, node: str, eid: str, now: float) -> None:
        """A stage execution starts after its creator stopped owning the chain
        (a late grant): it must stop within TTL + grace all the same."""
        bound = self.t.lease_ttl + self.t.lease_grace + self.slack

        def check() -> None:
            if (node, eid) in self.live and creator not in self.jobs[jid].owners:
                self.violate(now + bound, f"chain {jid}: {node} runs {eid} {bound:g}s after "
                                          f"it started, its creator {creator} not owning "
                                          f"the chain (CH1b)")
        self._schedule(now + bound, check)

    def on_exec_end(self, node: str, execution_id: str, status: str, now: float) -> None:
        ran = self.live.pop((node, execution_id), None)
        if ran is not None:
            parsed = parse_stage_run(ran[0])
            if parsed is not None:
                self._progress(parsed[0], now)
            if status == "succeeded":
                self.outputs.setdefault(sim_manifest(execution_id),
                                        (execution_id, set()))[1].add(node)

    # --- CH3: the logs -----------------------------------------------------------------------

    def _state(self, node: str, jid: str) -> Any:
        core = self.world.core(node)
        return core.chain.chains.get(jid) if core is not None else None

    def _verify(self, jid: str, job: ChainJob, node: str, state: Any, now: float) -> bool:
        records = state.records
        pending = state.role == "pending"
        key = (record_hash(records[-1]), len(records), pending)
        if key in self._verified:
            return True
        try:
            verify_log(records, self._keys, job_id=jid, spec_digest=job.digest, pending=pending)
        except RemoteProtocolError as exc:
            self.violate(now, f"chain {jid}: the log at {node} ({state.role}) does not "
                              f"verify: {exc} (CH3)")
            return False
        self._verified.add(key)
        return True

    def _check_node_log(self, jid: str, node: str, now: float) -> None:
        state = self._state(node, jid)
        job = self.jobs[jid]
        if state is not None and job.digest:
            self._verify(jid, job, node, state, now)

    def check_logs(self, now: float) -> None:
        """CH3 over every up node: each log verifies, no two fork, the
        submitter's only grows."""
        for jid in sorted(self.jobs):
            job = self.jobs[jid]
            if not job.digest:
                continue
            logs: list[tuple[str, list[dict[str, Any]], list[str]]] = []
            for node in self.world.ids:
                state = self._state(node, jid)
                if state is None or not self._verify(jid, job, node, state, now):
                    continue
                if state.role != "pending":
                    logs.append((node, state.records, [record_hash(r) for r in state.records]))
            superseded = 0
            for i, (a, recs_a, hashes_a) in enumerate(logs):
                for b, recs_b, hashes_b in logs[i + 1:]:
                    k = next((j for j, (x, y) in enumerate(zip(hashes_a, hashes_b, strict=False))
                              if x != y), None)
                    if k is None:
                        continue
                    if "takeover" in (recs_a[k]["body"]["kind"], recs_b[k]["body"]["kind"]):
                        superseded += 1  # the submitter took over what it never learned of
                        continue
                    self.violate(now, f"chain {jid}: the logs of {a} and {b} fork at record {k} "
                                      f"({recs_a[k]['body']['kind']} to {recs_a[k]['body']['to']}"
                                      f" / {recs_b[k]['body']['kind']} to "
                                      f"{recs_b[k]['body']['to']}) (CH3)")
                    return
            job.superseded = superseded
            sub = self._state(job.submitter, jid)
            if sub is None and self.world.core(job.submitter) is not None:
                self.violate(now, f"chain {jid}: its submitter {job.submitter} lost the chain's "
                                  f"log (CH3)")
                return
            if sub is not None:
                # (a pending submitter's last record is an offer, not history yet)
                held = sub.records[:-1] if sub.role == "pending" else sub.records
                hashes = [record_hash(r) for r in held]
                old = job.submitter_log
                if hashes[: len(old)] != old:
                    self.violate(now, f"chain {jid}: the submitter's log lost or changed "
                                      f"records (had {len(old)}, has {len(hashes)}) (CH3)")
                job.submitter_log = hashes

    # --- the end ----------------------------------------------------------------------------

    def finish(self, now: float) -> None:
        self.check_logs(now)
        for jid in sorted(self.jobs):
            job = self.jobs[jid]
            if job.accepted_at is None or job.state not in TERMINAL:
                continue  # unfinished chains: the batch checker reports them lost
            if job.owners:
                self.violate(now, f"chain {jid} ended {job.state} but "
                                  f"{', '.join(sorted(job.owners))} still consider themselves "
                                  f"its owner (CH4)")
                return
            running = sorted(eid for (_, eid), (run, _) in self.live.items()
                             if run.startswith(f"{jid}~"))
            if running:
                self.violate(now, f"chain {jid} ended {job.state} but {running[0]} still runs")
                return
            core = self.world.core(job.submitter)
            if core is not None:
                verified = core.describe(jid)["chain"]["log_verified"]
                if verified != "ok":
                    self.violate(now, f"chain {jid}: describe at the submitter says {verified}")
                    return


def spec_digest(spec: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(pack(dict(spec))).hexdigest()
