"""What an owner keeps about the jobs it owns: jobs, slots and executions.

Records only (the rules live in ``protocols/owner/``).  Each class has a ``record()``
that is what the store holds; volatile fields (auction state, deadlines) are
rebuilt after a restart.
"""

from __future__ import annotations

from typing import Any

import attrs

from protocols.messages import Bid
from protocols.states import (
    JOB_TERMINAL,
    SLOT_TERMINAL,
    ExecutionState,
    JobState,
    SlotState,
    check_execution_transition,
    check_job_transition,
)
from protocols.unit import WorkUnit

# (Which kinds are long-running, pinned, updatable, ...: protocols.kinds.KIND_POLICY.)


def execution_id(job_id: str, slot: int, epoch: int) -> str:
    return f"{job_id}/{slot}/{epoch}"


def parse_execution_id(exec_id: str) -> tuple[str, int, int]:
    job_id, slot, epoch = exec_id.rsplit("/", 2)
    return job_id, int(slot), int(epoch)


# on_setattr=NO_OP: the state converter runs at construction (records hold
# plain strings) but not on each assignment: every assignment goes through
# move(), which already yields the enum, and attrs' per-assignment hook made
# each field write of these hot records several Python calls.
@attrs.define(on_setattr=attrs.setters.NO_OP)
class Execution:
    """The owner's record of one lease it granted."""

    execution_id: str
    epoch: int
    node: str
    state: ExecutionState = attrs.field(default=ExecutionState.GRANTED, converter=ExecutionState)
    exit_code: int | None = None
    error: str = ""
    manifest_id: str = ""
    stdout_tail: str = ""
    stderr_tail: str = ""
    reported: bool = False  # the holder's result was recorded
    late: bool = False  # a result arrived after the lease was superseded
    version: int = 1  # the job spec version this execution runs
    # The lease ttl this grant carried: the holder renews and fences itself by
    # it, so the owner judges the lease by it too, even after a restart with a
    # different ``--lease-ttl``.  0: a record from before it was kept.
    ttl_ms: int = 0
    # Wall-clock unix ms (0: not yet, or a record from before they were kept).
    granted_ms: int = 0
    started_ms: int = 0  # the holder's lease was confirmed: the run started
    finished_ms: int = 0  # the lease ended (result, loss, timeout, cancel)
    log_manifest: str = ""  # the complete stdout/stderr, a blob manifest on ``node``

    def record(self) -> dict[str, Any]:
        # Spelled out: attrs.asdict is ~10x slower, and records are built on every persist.
        return {
            "execution_id": self.execution_id,
            "epoch": self.epoch,
            "node": self.node,
            "state": self.state.value,
            "exit_code": self.exit_code,
            "error": self.error,
            "manifest_id": self.manifest_id,
            "stdout_tail": self.stdout_tail,
            "stderr_tail": self.stderr_tail,
            "reported": self.reported,
            "late": self.late,
            "version": self.version,
            "ttl_ms": self.ttl_ms,
            "granted_ms": self.granted_ms,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "log_manifest": self.log_manifest,
        }

    def move(self, new: ExecutionState) -> None:
        """The one way an execution changes state (checked against the table)."""
        self.state = check_execution_transition(self.state, new)


@attrs.define
class OwnedSlot:
    job_id: str
    index: int
    state: SlotState = SlotState.QUEUED
    epoch: int = 0
    failures: int = 0  # batch: failed attempts; daemon/service: restarts in a row
    lost: int = 0
    reason: str = ""
    pinned: str = ""  # ops/daemon: the one node this slot runs on
    executions: list[Execution] = attrs.field(factory=list)
    # Volatile auction state (rebuilt after a restart).
    attempt: int = 0
    widen: int = 0  # silent rounds: each doubles the candidate count
    broadcast_next: bool = False
    no_match_rounds: int = 0
    busy_rounds: int = 0  # rounds where matching nodes were busy: the backoff grows
    busy_hint: bool = False  # a late "busy" decline arrived after its round closed
    mismatch: str = ""  # a pinned node declined: it no longer matches (why)
    view_matches: int = 0  # matching peers in our view when the round opened
    asked_all: bool = False  # the round asked every matching peer of our view
    waiting_since: float = 0.0
    asked: set[str] | None = None  # None: broadcast round
    answered: set[str] = attrs.field(factory=set)
    busy_seen: bool = False
    bids: dict[str, Bid] = attrs.field(factory=dict)
    lease_expires: float = 0.0
    granted_at: float = 0.0
    rolling: bool = False  # stopped by a rolling update, not yet running the new version
    # Streams (consume mode): the committed checkpoint of this partition.
    checkpoint: str = ""
    lag: int = -1
    progress_seq: int = 0  # volatile: renewal seq of the last commit (reordering guard) ...
    progress_epoch: int = 0  # ... within this epoch
    prefer: str = ""  # volatile: ask this node first (a consumer's graceful end: stickiness)
    auction_noted: bool = False  # volatile: this wait's "auctioned" is in the history

    @property
    def key(self) -> str:
        return f"{self.job_id}/{self.index}"

    @property
    def current(self) -> Execution | None:
        return self.executions[-1] if self.executions else None

    @property
    def terminal(self) -> bool:
        return self.state in SLOT_TERMINAL

    @property
    def leased(self) -> bool:
        return self.state in (SlotState.GRANTED, SlotState.RUNNING)

    def find(self, exec_id: str) -> Execution | None:
        for execution in reversed(self.executions):
            if execution.execution_id == exec_id:
                return execution
        return None

    def record(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "epoch": self.epoch,
            "failures": self.failures,
            "lost": self.lost,
            "reason": self.reason,
            "pinned": self.pinned,
            "checkpoint": self.checkpoint,
            "lag": self.lag,
            "executions": [e.record() for e in self.executions],
        }

    @classmethod
    def from_record(cls, job_id: str, index: int, rec: dict[str, Any]) -> OwnedSlot:
        return cls(
            job_id=job_id,
            index=index,
            state=SlotState(rec["state"]),
            epoch=rec["epoch"],
            failures=rec["failures"],
            lost=rec["lost"],
            reason=rec["reason"],
            pinned=rec.get("pinned", ""),
            checkpoint=rec.get("checkpoint", ""),
            lag=rec.get("lag", -1),
            executions=[Execution(**e) for e in rec["executions"]],
        )


@attrs.define(on_setattr=attrs.setters.NO_OP)  # (see Execution)
class OwnedJob:
    job_id: str
    spec: dict[str, Any]
    unit: WorkUnit
    slots: list[OwnedSlot]
    state: JobState = attrs.field(default=JobState.QUEUED, converter=JobState)
    reason: str = ""
    kind: str = "batch"
    version: int = 1  # bumped by each update of the spec
    parent: str = ""  # a cron run: its cron job
    scheduled_ms: int = 0  # a cron run: its scheduled time (unix ms)
    # A run's extra inputs (name, manifest id, node) and environment.
    inputs: list[tuple[str, str, str]] = attrs.field(factory=list)
    env: dict[str, str] = attrs.field(factory=dict)
    # Submit order, persisted so that listings keep it across restarts: a
    # per-owner sequence number, and the wall time of the submit (unix ms; 0
    # in a record from before it was kept).
    seq: int = 0
    submitted_ms: int = 0
    # Volatile: the open census round of an ops/daemon job.
    census_round: int = 0
    census_open: bool = False
    census_found: set[str] = attrs.field(factory=set)
    census_empty: int = 0  # census rounds in a row that found no matching node
    census_quiet: int = 0  # ops: rounds in a row that found no new node (after the first)
    # Wall-clock unix ms (0: not yet, or a record from before they were kept).
    started_ms: int = 0  # its first execution started
    finished_ms: int = 0  # it became terminal

    @property
    def terminal(self) -> bool:
        return self.state in JOB_TERMINAL

    def move(self, new: str) -> bool:
        """Checked against the table; False when the state does not change."""
        new_state = check_job_transition(self.state, new)
        if new_state == self.state:
            return False
        self.state = new_state
        return True

    def record(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "state": self.state.value,
            "reason": self.reason,
            "kind": self.kind,
            "version": self.version,
            "parent": self.parent,
            "scheduled_ms": self.scheduled_ms,
            "slots": len(self.slots),
            "inputs": [list(i) for i in self.inputs],
            "env": self.env,
            "seq": self.seq,
            "submitted_ms": self.submitted_ms,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
        }
