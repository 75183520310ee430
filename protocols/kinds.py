"""Job kinds as plug-ins: one policy table, one controller per kind that needs one.

The owner (``protocols/owner/``) runs slots: auctions, leases, results.  What
differs between kinds is said in two places only:

* ``KIND_POLICY``: one row per kind (where its slots come from, whether an
  exit is retried or restarted, whether it waits for nodes, what ends it, ...).
  The owner reads these fields; it never tests a kind's name (h11's "one table").
* a ``KindController`` for kinds with a life of their own (cron schedules,
  stream partitions, DAG tasks, chain handovers).  The node core builds the
  registry (``protocols/node.py``) and hands it to the owner, which calls the
  hooks below; a controller reaches the owner only through ``OwnerContext``.
  (After aioquic's congestion-control registry.)

Adding a kind = one policy row, one controller module, one registry line.
Neither the owner nor a controller imports the other.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import attrs

if TYPE_CHECKING:
    from protocols.config import NodeConfig, Timings
    from protocols.messages import ExecutionResult, LeaseGrant, LeaseRelease, LeaseRenew, Message
    from protocols.outbox import Outbox
    from protocols.owned import Execution, OwnedJob, OwnedSlot

# What a store hands back at start: table -> key -> record.
Records = dict[str, dict[str, dict[str, Any]]]


class SlotSource(enum.StrEnum):
    SPEC = "spec"  # the spec's count
    CENSUS = "census"  # one pinned slot per matching node, found by a census
    CONTROLLER = "controller"  # the kind's controller counts them (stream partitions)
    NONE = "none"  # no slots of its own: the controller runs child jobs


class OnExit(enum.StrEnum):
    RETRY = "retry"  # failures count against retry.attempts, then the slot fails
    RESTART = "restart"  # an exit is restarted with backoff; lost leases never fail it


class EndRule(enum.StrEnum):
    ALL_SLOTS = "all_slots"  # completed when every slot completed; a failed slot fails it
    EVERY_NODE = "every_node"  # ends when every slot ended; reports the nodes that failed
    NEVER = "never"  # runs until stopped
    CONTROLLER = "controller"  # its controller decides


@attrs.frozen
class KindPolicy:
    slots: SlotSource
    on_exit: OnExit
    waits_for_nodes: bool  # never fails for lack of a matching node (no queue timeout)
    end: EndRule
    updatable: bool = False  # accepts a new spec version
    suspendable: bool = False
    submittable: bool = True  # False: created by a controller only
    first_state: str = "queued"
    recount: bool = False  # the census repeats (every daemon_scan) to find joiners
    restarts_in_place: bool = False  # the holder restarts a failed execution itself first
    regrant_on_success: bool = False  # a graceful end is re-granted at once, same node first

    @property
    def long_running(self) -> bool:
        return self.on_exit is OnExit.RESTART


_S, _X, _E = SlotSource, OnExit, EndRule
# Row order is the order kinds are listed in messages ("daemon, service and cron").
KIND_POLICY: dict[str, KindPolicy] = {
    "batch": KindPolicy(_S.SPEC, _X.RETRY, False, _E.ALL_SLOTS),
    # One run of a cron job, a stream batch, a DAG task or a chain stage.
    "run": KindPolicy(_S.SPEC, _X.RETRY, False, _E.ALL_SLOTS, submittable=False),
    "daemon": KindPolicy(
        _S.CENSUS, _X.RESTART, True, _E.NEVER, updatable=True, recount=True,
        restarts_in_place=True,
    ),
    "service": KindPolicy(_S.SPEC, _X.RESTART, True, _E.NEVER, updatable=True),
    "ops": KindPolicy(_S.CENSUS, _X.RETRY, False, _E.EVERY_NODE),
    "cron": KindPolicy(
        _S.NONE, _X.RETRY, False, _E.CONTROLLER, updatable=True, suspendable=True,
        first_state="scheduled",
    ),
    # Consume mode: one long-running slot per partition; micro-batch mode: none
    # (its batches are runs, and its controller decides its state).
    "stream": KindPolicy(_S.CONTROLLER, _X.RESTART, True, _E.NEVER, regrant_on_success=True),
    "dag": KindPolicy(_S.NONE, _X.RETRY, False, _E.CONTROLLER),
    "chain": KindPolicy(_S.NONE, _X.RETRY, False, _E.CONTROLLER),
}


def kinds_where(test: Callable[[KindPolicy], bool]) -> str:
    """The kinds whose policy passes ``test``, for messages: "a, b and c"."""
    names = [kind for kind, policy in KIND_POLICY.items() if test(policy)]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


class OwnerContext(Protocol):
    """What a controller may do with the owner: read its jobs, create child
    jobs, end jobs, record job states.  Tables are the owner's: a controller
    never persists a job or slot record itself."""

    @property
    def config(self) -> NodeConfig: ...
    @property
    def t(self) -> Timings: ...
    @property
    def out(self) -> Outbox: ...
    @property
    def jobs(self) -> Mapping[str, OwnedJob]: ...

    def create_job(
        self,
        job_id: str,
        spec: dict[str, Any],
        *,
        kind: str,
        version: int = 1,
        parent: str = "",
        scheduled_ms: int = 0,
        inputs: list[tuple[str, str, str]] | None = None,
        env: dict[str, str] | None = None,
    ) -> OwnedJob: ...

    def cancel(self, job_id: str, reason: str) -> None:
        """Stop a job (a no-op when it already ended)."""

    def fail(self, job: OwnedJob, reason: str) -> None:
        """Stop a job as failed: its slots and children stop, the outcome is recorded."""

    def set_terminal(self, job: OwnedJob, state: str, reason: str) -> None:
        """Record the outcome of a job whose controller already stopped its work."""

    def set_job_state(self, job: OwnedJob, state: str, *, persist: bool, notify: bool) -> None:
        """A non-terminal state the controller decides (running, scheduled, ...)."""

    def persist_slot(self, slot: OwnedSlot) -> None: ...

    def note(
        self, job_id: str, event: str, *, node: str = "", slot: int | None = None, detail: str = ""
    ) -> None:
        """Add an event to the job's timeline (``job history``)."""

    def forget(self, job_id: str) -> None:
        """Drop a finished job and its records."""


Handler = Callable[[str, Any], None]  # (sender, message)
TimerHandler = Callable[[str], None]  # (job id)


class KindController:
    """No-op hooks; a kind's controller overrides the ones it needs."""

    # The field of ``Owner.describe`` that ``describe(job)`` fills ("" = none).
    describe_key: ClassVar[str] = ""

    def __init__(self, ctx: OwnerContext) -> None:
        self.ctx = ctx
        self.out = ctx.out

    def slot_count(self, spec: dict[str, Any]) -> int:
        """Slots of a new job (policy ``SlotSource.CONTROLLER``)."""
        return 0

    def start(self, job: OwnedJob) -> None:
        """A new job of this kind exists (its slots, if any, are being auctioned)."""

    def restore(self, records: Records) -> None:
        """After a restart, before ``resume``: rebuild from the persisted tables."""

    def resume_job(self, job: OwnedJob) -> None:
        """After a restart: one unfinished job of this kind."""

    def resume(self) -> None:
        """After a restart, once every owned job resumed."""

    def on_stop(self, job: OwnedJob, reason: str) -> None:
        """The job ends (stopped or failed): stop what the controller runs."""

    def on_run_finished(self, run: OwnedJob) -> None:
        """A child job ended (called for the parent's kind, or for every kind
        when the parent is not owned here: a controller ignores runs not its own)."""

    def on_update(self, job: OwnedJob) -> None:
        """A new spec version was accepted."""

    def on_suspend(self, job: OwnedJob, suspended: bool) -> None: ...

    def describe(self, job: OwnedJob) -> Any:
        return None

    def describe_unowned(self, job_id: str) -> dict[str, Any] | None:
        """What this node knows of a job it does not own (a chain stage), or None."""
        return None

    def grant_env(self, job: OwnedJob, slot: OwnedSlot, grant: LeaseGrant) -> LeaseGrant:
        """The kind's additions to a lease grant."""
        return grant

    def on_progress(
        self,
        job: OwnedJob,
        slot: OwnedSlot,
        execution: Execution,
        msg: LeaseRenew | LeaseRelease | ExecutionResult,
        *,
        current: bool,
    ) -> None:
        """A holder reported progress (a checkpoint, a lag) with a renewal,
        release or result; ``current``: the lease is the slot's live one."""

    def routes(self) -> dict[type[Message], Handler]:
        """Messages this controller handles (merged into the node's table)."""
        return {}

    def timers(self) -> dict[str, TimerHandler]:
        """Timer kinds this controller handles (key ``(kind, job_id, 0)``)."""
        return {}


class KindRegistry:
    """The controllers of one node, by kind (built by the node core)."""

    def __init__(self, ctx: OwnerContext, controllers: Mapping[str, KindController]) -> None:
        self.controllers = dict(controllers)
        self._none = KindController(ctx)

    def __getitem__(self, kind: str) -> KindController:
        return self.controllers.get(kind, self._none)

    def __contains__(self, kind: object) -> bool:
        return kind in self.controllers

    def all(self) -> list[KindController]:
        return list(self.controllers.values())
