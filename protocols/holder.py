"""The compute role: bid, run under a lease, renew, report, fence oneself.

One ``HeldExecution`` machine per execution (transitions in ``states.py``).

* **Authority.** A grant is only taken from the peer we bid to for that
  (job, slot, attempt); cancels, renewal answers and result acks only from the
  peer that granted the execution.  Anything else is a ``RemoteProtocolError``.
* **Self-fencing and agreed time bounds**: the rules are docs/protocol.md,
  section 6 (start on the first acknowledged renewal, lease valid until its
  send time + the grant's ttl, every bound taken from the owner's messages);
  this module implements the holder side.
* **Reporting.** The result is retransmitted until acknowledged; renewals go on
  meanwhile.  A lapse does not drop a finished execution's result (there is
  nothing left to fence): it is offered for ``REPORT_AFTER_LAPSE`` more ttls, so
  an owner that restarts meanwhile, still holding this epoch, takes it instead
  of running the work again; an owner that re-granted refuses it (fencing).
* **Restart.** Executions do not survive a node restart.  Leases held at the
  crash are persisted, so the restarted node reports them ``lost`` at once
  instead of leaving the owner to wait out the lease.  A lost execution is not
  the task's failure: the owner counts it against its lost-lease budget, never
  against ``retry.attempts``.
"""

from __future__ import annotations

from typing import Any

import attrs

from protocols.askguard import AskScores
from protocols.config import NodeConfig
from protocols.directory import mismatch_reason
from protocols.errors import RemoteProtocolError
from protocols.events import (
    ExecutionFinished,
    ExecutionOutput,
    ExecutionProgress,
    StartExecution,
)
from protocols.logs import LogSender
from protocols.messages import (
    CENSUS_SLOT,
    DECLINED_RUNNING_SLOT,
    LOG_STREAMS,
    LOST,
    MAX_CHECKPOINT_LEN,
    AskForBid,
    Bid,
    BidDeclined,
    BidRejected,
    Cancel,
    ExecutionResult,
    LeaseAccept,
    LeaseGrant,
    LeaseRelease,
    LeaseRenew,
    LogAck,
    NodeInfo,
    RenewAck,
    ResultAck,
)
from protocols.outbox import Outbox, retry_delay
from protocols.spec import SpecValidationError
from protocols.spec.memo import check_task
from protocols.states import ExecEvent, ExecState, check_exec_transition, exec_accepts
from protocols.timers import (
    BID,
    FORGET,
    LAPSE,
    RENEW,
    RESTART,
    RUNFOR,
    XTIMEOUT,
    BidTimer,
    ExecTimer,
)
from protocols.unit import WorkUnit

HELD_TABLE = "held"
REPORT_AFTER_LAPSE = 10  # a finished execution's result is offered this many ttls past a lapse
# A renewal unacknowledged waits at most 1/RENEW_TRIES_BEFORE_LAPSE of the
# time its lease has left (never under MIN_RETRY_DELAY) before it goes again.
# A renewal needs two frames to get through, and a slot renews for as long as
# it lives, so a rare lapse per renewal period adds up over minutes.  At 30 %
# loss each way with 20 % of frames delayed up to 250 ms, a model of one
# period puts a lapse of a 1 s lease in about 1 of 200 periods with 5 tries
# (the outbox's TRIES_BEFORE_DEADLINE) and 1 of 1,400 with 8.  (In the
# simulator, stream consumers lapsed three leases of one slot in 3 of 40 seeds
# with 5 and a renewal storm, see _renew; 0 of 280 with either 5 or 8 once the
# storm was gone, and 12 of 80 with 3.)  More copies go out only while
# renewals are being lost: +1.6 % frames in those runs, +0.4 % without loss.
RENEW_TRIES_BEFORE_LAPSE = 8

# A grant's ttl below this is refused: renewing every ttl/3 would flood the
# owner (``serve --lease-ttl`` has the same floor).
MIN_LEASE_TTL = 0.5
# The longest bid window of an ask we honour when holding capacity for it.
MAX_BID_WINDOW = 60.0
MAX_TOMBSTONES = 10_000
# Bids whose reservation ran out before the grant came (the bid's and the
# grant's trips took longer than the bid hold: a latency tail), remembered so
# that the owner's late grant is taken, or released at once, not dropped.
MAX_LAPSED_BIDS = 1_000


@attrs.define
class Reservation:
    owner: str
    cpu: float
    memory: int
    expires: float


@attrs.define
class HeldExecution:
    execution_id: str
    job_id: str
    slot: int
    epoch: int
    owner: str
    cpu: float
    memory: int
    ttl: float
    state: ExecState = ExecState.RUNNING
    valid_until: float = 0.0
    seq: int = 0  # last renewal sequence number sent
    acked_seq: int = -1
    sent_at: dict[int, float] = attrs.field(factory=dict)
    next_renew: float = 0.0
    renew_delay: float = 0.0  # current retry delay while a renewal is unacknowledged
    result: ExecutionResult | None = None
    stop_reason: str = ""
    # Daemons restart in place: allowed restarts, base backoff, restarts done.
    restarts: int = 0
    restart_backoff: float = 0.0
    restarted: int = 0
    restart_pending: bool = False
    started: bool = False  # the first run started (after the owner acknowledged our accept)
    run_for: float = 0.0  # streams: end the run gracefully after this long (0: no bound)
    timeout: float = 0.0
    start: StartExecution | None = None  # volatile: how to start it again
    # Streams: the consumer's latest checkpoint (relayed with renewals) and run_for.
    progress: str = ""
    lag: int = -1
    run_for_reached: bool = False
    # Roll-over: a run ended at run_for; the next starts in place once the
    # owner acknowledges a renewal that carried its final checkpoint.
    rolling: bool = False
    ended: ExecutionFinished | None = None  # how the run before a roll-over ended
    timed_out: bool = False  # we stopped it at its timeout: report "timeout", not "cancelled"
    # Live output to the owner, per stream (volatile: protocols/logs.py).
    logs: dict[str, LogSender] = attrs.field(factory=dict)
    logs_refused: bool = False  # the owner said our epoch is stale: send no more output

    @property
    def run_id(self) -> str:
        """The executor's id of the current run: a restart in place is a new run."""
        return self.execution_id if not self.restarted else f"{self.execution_id}#{self.restarted}"

    def record(self) -> dict[str, Any]:
        return {
            "execution_id": self.execution_id,
            "job_id": self.job_id,
            "slot": self.slot,
            "epoch": self.epoch,
            "owner": self.owner,
            "cpu": self.cpu,
            "memory": self.memory,
            "ttl": self.ttl,
        }


class Holder:
    def __init__(self, config: NodeConfig, out: Outbox, me: NodeInfo) -> None:
        self.config = config
        self.t = config.timings
        self.out = out
        self.me = me
        self.reservations: dict[tuple[str, int, int], Reservation] = {}
        self.held: dict[str, HeldExecution] = {}
        self.tombstones: dict[str, None] = {}  # finished execution ids (ordered, bounded)
        # (job, slot, attempt) -> the owner we bid to, for reservations that ran
        # out without a grant or a rejection (ordered, bounded; volatile).
        self.lapsed_bids: dict[tuple[str, int, int], str] = {}
        self.ask_scores = AskScores(config.asks)

    def _checked_unit(self, sender: str, task: dict[str, Any]) -> WorkUnit:
        """The task of a grant, validated as strictly as a local spec before it
        may run.  (Asks are only read: validation costs ~60 us and most asks
        never turn into a grant.  A task validated before is not validated
        again: protocols/spec/memo.py.)"""
        try:
            check_task(task)
        except SpecValidationError as exc:
            errors = "; ".join(str(e) for e in exc.errors[:5])
            raise RemoteProtocolError(f"invalid task from {sender}: {errors}") from None
        return WorkUnit.from_task(task)

    # --- capacity -----------------------------------------------------------------

    def _used(self) -> tuple[float, int, int]:
        cpu = sum(r.cpu for r in self.reservations.values()) + sum(
            h.cpu for h in self.held.values()
        )
        mem = sum(r.memory for r in self.reservations.values()) + sum(
            h.memory for h in self.held.values()
        )
        return cpu, mem, len(self.reservations) + len(self.held)

    def _fits(self, cpu: float, memory: int) -> bool:
        used_cpu, used_mem, count = self._used()
        return (
            count < self.config.max_executions
            and used_cpu + cpu <= self.config.cpu + 1e-9
            and used_mem + memory <= self.config.memory
        )

    # --- auction ----------------------------------------------------------------------

    def _over_share(self, asker: str, cpu: float, memory: int) -> bool:
        """Whether one more reservation would take ``asker`` past its share of
        our capacity (its first reservation is always allowed; we trust ourselves)."""
        if asker == self.config.node_id:
            return False
        mine = [r for r in self.reservations.values() if r.owner == asker]
        if not mine:
            return False
        share = self.ask_scores.limits.share
        return (
            len(mine) + 1 > max(1.0, share * self.config.max_executions)
            or sum(r.cpu for r in mine) + cpu > share * self.config.cpu + 1e-9
            or sum(r.memory for r in mine) + memory > share * self.config.memory
        )

    def on_ask(self, sender: str, ask: AskForBid) -> None:
        if ask.pinned_node and ask.pinned_node != self.config.node_id:
            return
        if self.ask_scores.ignoring(sender, self.out.now):
            return  # in backoff: its asks kept expiring unused (askguard.py)
        reason = mismatch_reason(self.me, ask.labels, ask.engine, ask.cpu, ask.memory)
        if reason:
            if not ask.broadcast:  # broadcast asks are answered by matching nodes only
                self.out.send(
                    sender,
                    BidDeclined(
                        job_id=ask.job_id, slot=ask.slot, attempt=ask.attempt, reason=reason
                    ),
                )
            return
        key = (ask.job_id, ask.slot, ask.attempt)
        census = ask.slot == CENSUS_SLOT  # "do you match?": a node running the job does
        # (An execution of the slot that has ended and is only reporting does
        # not count: its owner may re-grant the slot to us right away.)
        running_same_slot = any(
            h.job_id == ask.job_id
            and (census or h.slot == ask.slot)
            and h.state is not ExecState.REPORTING
            for h in self.held.values()
        )
        if key not in self.reservations:
            over_share = self._over_share(sender, ask.cpu, ask.memory)
            if over_share:
                self.ask_scores.over_share(sender, self.out.now)
            if running_same_slot or over_share or not self._fits(ask.cpu, ask.memory):
                why = (
                    DECLINED_RUNNING_SLOT
                    if running_same_slot
                    else "asker's share of capacity reserved"
                    if over_share
                    else "no free capacity"
                )
                self._answer(
                    sender,
                    BidDeclined(
                        job_id=ask.job_id,
                        slot=ask.slot,
                        attempt=ask.attempt,
                        reason=why,
                        matches=True,
                    ),
                    hold=self._bid_hold(ask),
                )
                return
            expires = self.out.now + self._bid_hold(ask)
            self.reservations[key] = Reservation(sender, ask.cpu, ask.memory, expires)
            self.out.timer(BidTimer(BID, *key), expires)
        used_cpu, used_mem, _ = self._used()
        self._answer(
            sender,
            Bid(
                job_id=ask.job_id,
                slot=ask.slot,
                attempt=ask.attempt,
                free_cpu=max(0.0, self.config.cpu - used_cpu),
                free_memory=max(0, self.config.memory - used_mem),
                running=len(self.held),
            ),
            hold=self._bid_hold(ask),
        )

    def _bid_hold(self, ask: AskForBid) -> float:
        """How long a bid stands: the owner's bid window (from its ask) plus our
        margin for the grant's trip, so a winner's grant never finds the
        reservation gone, whatever our own ``bid_window`` says."""
        return min(ask.bid_window_ms / 1000, MAX_BID_WINDOW) + self.t.bid_hold

    def _answer(self, owner: str, msg: Bid | BidDeclined, hold: float) -> None:
        """A census answer ("I match") is repeated until the owner releases it
        (BidRejected): a lost one would leave this node out of an ops job.
        Ordinary bids are not: the auction simply asks again."""
        if msg.slot == CENSUS_SLOT:
            key = ("census", msg.job_id, msg.attempt)
            self.out.send_reliably(key, owner, msg, give_up_after=hold)
        else:
            self.out.send(owner, msg)

    def on_bid_rejected(self, sender: str, msg: BidRejected) -> None:
        if msg.slot == CENSUS_SLOT:
            self.out.settle(("census", msg.job_id, msg.attempt))
        key = (msg.job_id, msg.slot, msg.attempt)
        if self.lapsed_bids.get(key) == sender:
            del self.lapsed_bids[key]  # no grant will come for it
        res = self.reservations.get(key)
        if res is not None and res.owner == sender:
            del self.reservations[key]
            self.out.cancel_timer(BidTimer(BID, *key))
            if sender != self.config.node_id:
                self.ask_scores.closed(sender, self.out.now)

    def on_bid_timer(self, key: tuple[str, int, int]) -> None:
        res = self.reservations.get(key)
        if res is not None and self.out.now >= res.expires:
            del self.reservations[key]
            self._remember_lapsed(key, res.owner)
            if res.owner == self.config.node_id:
                return
            backoff = self.ask_scores.expired(res.owner, self.out.now)
            if backoff:
                self.out.notify("asker_ignored", asker=res.owner, seconds=backoff)

    def _remember_lapsed(self, key: tuple[str, int, int], owner: str) -> None:
        self.lapsed_bids.pop(key, None)
        self.lapsed_bids[key] = owner
        if len(self.lapsed_bids) > MAX_LAPSED_BIDS:
            del self.lapsed_bids[next(iter(self.lapsed_bids))]

    # --- lease ------------------------------------------------------------------------

    def on_grant(self, sender: str, grant: LeaseGrant) -> None:
        held = self.held.get(grant.execution_id)
        if held is not None:  # duplicate grant: our accept was lost, confirm again
            if held.owner != sender:
                raise RemoteProtocolError(f"grant for {grant.execution_id} from a non-owner")
            check_exec_transition(held.state, ExecEvent.GRANT, held.state)
            self._renew(held)
            return
        if grant.execution_id in self.tombstones:
            return
        key = (grant.job_id, grant.slot, grant.attempt)
        # A grant after our reservation ran out (its trip, or the bid's, took
        # longer than the bid hold) is still the answer to our bid: the lease
        # is measured from its send and runs only once our accept is answered
        # (docs/protocol.md 6.2), so it is as safe to take as a timely one.
        # Dropping it left the owner to wait out ttl + grace and count a lost
        # lease: ~5 % of remote leases under a 1-8 s latency tail on half the frames.
        res = self.reservations.pop(key, None)
        late = res is None and self.lapsed_bids.get(key) == sender
        if not late and (res is None or res.owner != sender):
            raise RemoteProtocolError(
                f"lease grant for {grant.execution_id} that we did not bid for"
            )
        self.out.cancel_timer(BidTimer(BID, *key))
        if sender != self.config.node_id and not late:
            self.ask_scores.closed(sender, self.out.now)
        try:
            unit = self._checked_unit(sender, grant.task)
            if grant.ttl_ms < MIN_LEASE_TTL * 1000:
                raise RemoteProtocolError(
                    f"lease ttl {grant.ttl_ms} ms is below the minimum {MIN_LEASE_TTL:g} s"
                )
            if late:
                # Released: the lapsed bid stays, so a later copy is released too.
                if not self._room_for_late(grant, unit):
                    raise RemoteProtocolError("bid ran out before the grant came; no room now")
                del self.lapsed_bids[key]
                if sender != self.config.node_id:
                    self.ask_scores.closed(sender, self.out.now)  # the bid was used after all
        except RemoteProtocolError as exc:
            self.out.send(
                sender,
                LeaseRelease(
                    execution_id=grant.execution_id,
                    epoch=grant.epoch,
                    reason=str(exc),
                ),
            )
            return
        ttl = grant.ttl_ms / 1000
        held = HeldExecution(
            execution_id=grant.execution_id,
            job_id=grant.job_id,
            slot=grant.slot,
            epoch=grant.epoch,
            owner=sender,
            cpu=unit.cpu,
            memory=unit.memory,
            ttl=ttl,
            valid_until=self.out.now + ttl,
        )
        held.restarts, held.restart_backoff = grant.restarts, grant.restart_backoff_ms / 1000
        held.run_for = grant.run_for_ms / 1000
        held.timeout = grant.timeout_ms / 1000
        self.held[held.execution_id] = held
        self.out.persist(HELD_TABLE, held.execution_id, held.record())
        env = {**(grant.task.get("env") or {}), **grant.env}
        held.start = StartExecution(
            execution_id=held.execution_id,
            job_id=held.job_id,
            slot=held.slot,
            task=grant.task,
            env=env,
            timeout=held.timeout,
            inputs=tuple((i.name, i.manifest_id, i.node) for i in grant.inputs),
            owner=held.owner,
        )
        # The run starts once the owner acknowledges our accept (_start_run):
        # only then is our lease measured from a message the owner answered.
        self.out.timer(ExecTimer(LAPSE, held.execution_id), held.valid_until)
        self._renew(held)

    def _room_for_late(self, grant: LeaseGrant, unit: WorkUnit) -> bool:
        """Whether a grant that came after its bid's reservation ran out still
        fits: the capacity is free and we run no other attempt of its slot
        (the checks the ask passed, made again now).  If not, the grant is
        released at once, so the owner re-auctions now, not after ttl + grace."""
        running_same_slot = any(
            h.job_id == grant.job_id and h.slot == grant.slot and h.state is not ExecState.REPORTING
            for h in self.held.values()
        )
        return not running_same_slot and self._fits(unit.cpu, unit.memory)

    def _start_run(self, held: HeldExecution) -> None:
        """Start a granted execution, on the first acknowledged accept/renewal.

        Not at the grant's receipt: a grant may arrive late (delayed, or a
        retransmitted copy) while the owner measures the lease from its first
        send, so a lease counted from the receipt could outlive the owner's
        patience.  An acknowledged accept proves the owner still held the lease
        when it got it, and our lease (accept's send time + ttl) ends before
        the owner's (its receipt + ttl + grace) whatever the latency."""
        assert held.start is not None
        held.started = True
        self.out.start(held.start)
        # Belt and braces: the driver enforces the timeout; this bounds a driver that does not.
        self.out.timer(ExecTimer(XTIMEOUT, held.execution_id), self.out.now + held.timeout + 1.0)
        if held.run_for:
            self.out.timer(ExecTimer(RUNFOR, held.execution_id), self.out.now + held.run_for)

    def _renew(self, held: HeldExecution) -> None:
        held.seq += 1
        held.sent_at[held.seq] = self.out.now
        msg: LeaseAccept | LeaseRenew
        if held.seq == 1:
            msg = LeaseAccept(execution_id=held.execution_id, epoch=held.epoch, seq=held.seq)
        else:
            msg = LeaseRenew(
                execution_id=held.execution_id,
                epoch=held.epoch,
                seq=held.seq,
                progress=held.progress,
                lag=held.lag,
                rollover=held.rolling,
            )
        self.out.send(held.owner, msg)
        for sender in held.logs.values():  # unacknowledged output goes again with each renewal
            for chunk in sender.retransmit():
                self.out.send(held.owner, chunk)
        # Retry quickly while unacknowledged, settle into ttl/3 once acknowledged
        # (the grant's ttl: the owner's clock of this lease, not our own setting).
        held.renew_delay = min(
            max(held.renew_delay * 2, self.t.retransmit_base), self._renew_interval(held)
        )
        # Near the lease's end, retry sooner, so that several more tries fit
        # before it lapses.  With a short ttl (1 s) and round trips of a few
        # hundred ms, the back-off alone left room for one lost renewal, and
        # healthy leases expired on a network that only lost and delayed frames
        # (RENEW_TRIES_BEFORE_LAPSE says how many more tries).
        # A lease that lapsed while its result is still reported has no
        # deadline left: retry_delay then keeps the plain back-off.
        left = held.valid_until - self.out.now
        delay = retry_delay(held.renew_delay, left, RENEW_TRIES_BEFORE_LAPSE)
        held.next_renew = self.out.now + delay
        self.out.timer(ExecTimer(RENEW, held.execution_id), held.next_renew)

    def _renew_interval(self, held: HeldExecution) -> float:
        """Renewal cadence once acknowledged: a third of the *grant's* ttl (the
        owner judges the lease by it), whatever our own ``lease_ttl`` is."""
        return held.ttl / 3

    def on_renew_timer(self, exec_id: str) -> None:
        held = self.held.get(exec_id)
        if held is None or held.state not in (ExecState.RUNNING, ExecState.REPORTING):
            return
        if self.out.now >= held.next_renew:
            self._renew(held)

    def _owned_by(self, sender: str, exec_id: str) -> HeldExecution | None:
        held = self.held.get(exec_id)
        if held is None:
            if exec_id in self.tombstones:
                return None
            raise RemoteProtocolError(f"message about unknown execution {exec_id}")
        if held.owner != sender:
            raise RemoteProtocolError(f"{sender} did not grant {exec_id}")
        return held

    def on_renew_ack(self, sender: str, ack: RenewAck) -> None:
        held = self._owned_by(sender, ack.execution_id)
        if held is None or not exec_accepts(held.state, ExecEvent.RENEW_OK):
            return
        if not ack.valid:
            self._stop(held, ExecEvent.STOP, f"owner refused renewal: {ack.reason}")
            return
        sent = held.sent_at.get(ack.seq)
        if sent is None:
            return
        check_exec_transition(held.state, ExecEvent.RENEW_OK, held.state)
        newest = ack.seq >= held.acked_seq
        if ack.seq > held.acked_seq:
            held.acked_seq = ack.seq
            for old in [s for s in held.sent_at if s < ack.seq]:
                del held.sent_at[old]
        # The lapse timer stays armed; it re-arms itself if it fires early.
        held.valid_until = max(held.valid_until, sent + held.ttl)
        if not held.started and held.state is ExecState.RUNNING:
            self._start_run(held)
        if held.rolling and ack.rollover and held.state is ExecState.RUNNING:
            self._roll_on(held, ack.checkpoint)
        if not newest:
            return  # a late copy of an older ack: the cadence follows the newest
        held.renew_delay = 0.0  # the next renewal, if unacknowledged, retries from the base delay
        # The next renewal one interval after the acknowledged one was SENT (the
        # lease runs from there), not after its ack came: a slow round trip
        # must not eat into the room left for retries.
        acked_sent = held.valid_until - held.ttl
        held.next_renew = max(self.out.now, acked_sent + self._renew_interval(held))
        self.out.timer(ExecTimer(RENEW, held.execution_id), held.next_renew)

    def on_cancel(self, sender: str, msg: Cancel) -> None:
        held = self._owned_by(sender, msg.execution_id)
        if held is None or held.epoch != msg.epoch:
            return
        self._stop(held, ExecEvent.STOP, f"cancelled by owner: {msg.reason}")

    def on_progress(self, event: ExecutionProgress) -> None:
        """The task reported a checkpoint (and maybe its lag): relayed to the
        owner with the next renewal, and with the result."""
        held = self.held.get(event.execution_id.partition("#")[0])
        if held is None or held.state not in (ExecState.RUNNING, ExecState.STOPPING):
            return
        if len(event.checkpoint) > MAX_CHECKPOINT_LEN:
            self.out.notify(
                "progress_refused",
                execution_id=held.execution_id,
                reason=f"checkpoint longer than {MAX_CHECKPOINT_LEN} characters",
            )
            return
        if event.checkpoint:
            held.progress = event.checkpoint
        if event.lag >= 0:
            held.lag = event.lag

    def on_output(self, event: ExecutionOutput) -> None:
        """The task wrote output: numbered chunks go to the owner now, and again
        with each renewal until acknowledged (bounded: protocols/logs.py)."""
        held = self.held.get(event.execution_id.partition("#")[0])
        if held is None or held.logs_refused or event.stream not in LOG_STREAMS:
            return
        if held.state not in (ExecState.RUNNING, ExecState.STOPPING):
            return
        log = held.logs.get(event.stream)
        if log is None:
            log = held.logs[event.stream] = LogSender(held.execution_id, held.epoch, event.stream)
        for chunk in log.write(event.data, event.skipped):
            self.out.send(held.owner, chunk)

    def on_log_ack(self, sender: str, ack: LogAck) -> None:
        held = self._owned_by(sender, ack.execution_id)
        if held is None or ack.epoch != held.epoch:
            return
        if not ack.valid:
            held.logs_refused = True
            held.logs.clear()
            return
        log_sender = held.logs.get(ack.stream)
        if log_sender is not None:
            log_sender.acked(ack.seq)

    def on_run_for_timer(self, exec_id: str) -> None:
        """``run_for`` is over: stop the consumer gracefully (SIGTERM first, so it
        can print a last checkpoint); its end is a success, re-granted at once."""
        held = self.held.get(exec_id)
        if held is None or held.state is not ExecState.RUNNING or held.restart_pending:
            return
        held.run_for_reached = True
        self.out.stop(held.run_id, "run_for reached")

    def on_lapse_timer(self, exec_id: str) -> None:
        held = self.held.get(exec_id)
        if held is None:
            return
        if self.out.now < held.valid_until:  # renewed meanwhile
            self.out.timer(ExecTimer(LAPSE, exec_id), held.valid_until)
            return
        if held.rolling and held.ended is not None:
            # Lapsed between two runs (no run to fence): report the one that
            # ended at run_for as a graceful end, as without a roll-over.
            held.rolling = held.restart_pending = False
            held.run_for_reached = True
            self._report(held, held.ended)
        if held.state is ExecState.REPORTING:
            # Finished: nothing left to fence.  Keep offering the result a while
            # (an owner that restarts still holds this epoch and takes it; one
            # that re-granted refuses it), so a restart does not re-run the work.
            self.out.timer(ExecTimer(FORGET, exec_id), self.out.now + held.ttl * REPORT_AFTER_LAPSE)
            return
        if held.state is ExecState.RUNNING:
            self.out.notify(
                "execution_fenced",
                execution_id=exec_id,
                job_id=held.job_id,
                slot=held.slot,
                epoch=held.epoch,
            )
        self._stop(held, ExecEvent.LAPSED, "lease lost: no renewal acknowledged within ttl")

    def on_forget_timer(self, exec_id: str) -> None:
        held = self.held.get(exec_id)
        if held is not None and held.state is ExecState.REPORTING:
            self._stop(held, ExecEvent.LAPSED, "result never acknowledged")

    def on_timeout_timer(self, exec_id: str) -> None:
        held = self.held.get(exec_id)
        if held is not None and held.state is ExecState.RUNNING and not held.restart_pending:
            held.timed_out = True
            self.out.stop(held.run_id, "execution timeout")

    def _stop(self, held: HeldExecution, event: ExecEvent, reason: str) -> None:
        if held.state is ExecState.RUNNING:
            held.state = check_exec_transition(held.state, event, ExecState.STOPPING)
            held.stop_reason = reason
            if held.restart_pending or not held.started:  # no run to stop
                held.restart_pending = False
                self.out.cancel_timer(ExecTimer(RESTART, held.execution_id))
                self.on_finished(ExecutionFinished(held.run_id, "cancelled", -1, reason))
                return
            self.out.stop(held.run_id, reason)
        elif held.state is ExecState.REPORTING:
            held.state = check_exec_transition(held.state, event, ExecState.DONE)
            self._forget(held)
        # STOPPING: already waiting for the executor.

    # --- results ----------------------------------------------------------------------

    def on_finished(self, event: ExecutionFinished) -> None:
        held = self.held.get(event.execution_id.partition("#")[0])
        if held is None or not exec_accepts(held.state, ExecEvent.FINISHED):
            return  # e.g. an execution from before a restart, already reported
        if event.execution_id != held.run_id or held.restart_pending:
            return  # an earlier run of a restarted daemon
        if held.state is ExecState.RUNNING and held.run_for_reached and not held.timed_out:
            self._roll_over(held, event)
            return
        if (
            held.state is ExecState.RUNNING
            and held.restarted < held.restarts
            and not held.timed_out
            and event.status != "cancelled"
        ):
            self._restart_later(held, event)
            return
        if held.state is ExecState.STOPPING:
            held.state = check_exec_transition(held.state, ExecEvent.FINISHED, ExecState.DONE)
            if held.stop_reason.startswith("cancelled"):
                self.out.send(
                    held.owner,
                    LeaseRelease(
                        execution_id=held.execution_id,
                        epoch=held.epoch,
                        reason=held.stop_reason,
                        progress=held.progress,
                    ),
                )
            self._forget(held)
            return
        self._report(held, event)

    def _report(self, held: HeldExecution, event: ExecutionFinished) -> None:
        """The execution is over: offer its result until the owner acknowledges it."""
        held.state = check_exec_transition(held.state, ExecEvent.FINISHED, ExecState.REPORTING)
        self.out.cancel_timer(ExecTimer(XTIMEOUT, held.execution_id))
        status, error = ("timeout" if held.timed_out else event.status), event.error
        if held.run_for_reached and not held.timed_out:
            status, error = "succeeded", ""  # stopped by us at run_for: a graceful end
        held.result = ExecutionResult(
            execution_id=held.execution_id,
            epoch=held.epoch,
            status=status,
            exit_code=event.exit_code,
            error=error,
            manifest_id=event.manifest_id,
            stdout_tail=event.stdout_tail,
            stderr_tail=event.stderr_tail,
            duration_ms=event.duration_ms,
            progress=held.progress,
            lag=held.lag,
            log_manifest=event.log_manifest,
        )
        self.out.send_reliably(
            ("result", held.execution_id), held.owner, held.result, give_up_after=held.ttl * 10
        )

    def _restart_later(self, held: HeldExecution, event: ExecutionFinished) -> None:
        """A daemon run ended: start it again in place after a backoff, keeping
        the lease (renewals go on), before reporting anything to the owner."""
        held.state = check_exec_transition(held.state, ExecEvent.FINISHED, ExecState.RUNNING)
        held.restarted += 1
        held.restart_pending = True
        delay = held.restart_backoff * 2 ** (held.restarted - 1)
        self.out.cancel_timer(ExecTimer(XTIMEOUT, held.execution_id))
        self.out.timer(ExecTimer(RESTART, held.execution_id), self.out.now + delay)
        self.out.notify(
            "execution_restarted",
            execution_id=held.execution_id,
            job_id=held.job_id,
            slot=held.slot,
            epoch=held.epoch,
            restarts=held.restarted,
            status=event.status,
            exit_code=event.exit_code,
        )

    def _roll_over(self, held: HeldExecution, event: ExecutionFinished) -> None:
        """A consumer's run ended at ``run_for`` (a graceful end).  Rather than
        report it and wait for the owner's re-auction and a new grant, keep
        the lease: renew now with the run's final checkpoint and a roll-over
        request; the next run starts in place (``_roll_on``) once the owner
        acknowledges that renewal, from the checkpoint it committed.  Fencing
        is the lease's as for any run: a lapse, a refused renewal or a cancel
        meanwhile ends the execution instead (``restart_pending``: no run)."""
        held.state = check_exec_transition(held.state, ExecEvent.FINISHED, ExecState.RUNNING)
        held.run_for_reached, held.ended = False, event
        held.restarted += 1
        held.restart_pending, held.rolling = True, True
        self.out.cancel_timer(ExecTimer(XTIMEOUT, held.execution_id))
        held.renew_delay = 0.0  # retry from the base delay if this one is lost
        self._renew(held)

    def _roll_on(self, held: HeldExecution, checkpoint: str) -> None:
        """The owner committed the last run's checkpoint and granted the
        roll-over: the next run starts from the committed checkpoint."""
        assert held.start is not None
        held.rolling = held.restart_pending = False
        env = {**held.start.env, "P2PNODE_CHECKPOINT": checkpoint}
        held.start = attrs.evolve(held.start, env=env)
        self.out.start(attrs.evolve(held.start, execution_id=held.run_id))
        self.out.timer(ExecTimer(XTIMEOUT, held.execution_id), self.out.now + held.timeout + 1.0)
        self.out.timer(ExecTimer(RUNFOR, held.execution_id), self.out.now + held.run_for)
        self.out.notify(
            "execution_rolled_over",
            execution_id=held.execution_id,
            job_id=held.job_id,
            slot=held.slot,
            epoch=held.epoch,
            run=held.restarted,
            checkpoint=checkpoint,
        )

    def on_restart_timer(self, exec_id: str) -> None:
        held = self.held.get(exec_id)
        if held is None or not held.restart_pending or held.state is not ExecState.RUNNING:
            return
        assert held.start is not None
        held.restart_pending = False
        self.out.start(attrs.evolve(held.start, execution_id=held.run_id))
        self.out.timer(ExecTimer(XTIMEOUT, exec_id), self.out.now + held.timeout + 1.0)

    def on_result_ack(self, sender: str, ack: ResultAck) -> None:
        held = self._owned_by(sender, ack.execution_id)
        if held is None or not exec_accepts(held.state, ExecEvent.RESULT_ACKED):
            return
        held.state = check_exec_transition(held.state, ExecEvent.RESULT_ACKED, ExecState.DONE)
        self._forget(held)

    def _forget(self, held: HeldExecution) -> None:
        exec_id = held.execution_id
        self.held.pop(exec_id, None)
        self.out.settle(("result", exec_id))
        for kind in ("renew", "lapse", "xtimeout", "restart", "runfor", "forget"):
            self.out.cancel_timer((kind, exec_id))
        self.out.persist(HELD_TABLE, exec_id, None)
        self.tombstones[exec_id] = None
        if len(self.tombstones) > MAX_TOMBSTONES:
            del self.tombstones[next(iter(self.tombstones))]

    # --- restart ----------------------------------------------------------------------

    def restore(self, records: dict[str, dict[str, Any]]) -> None:
        """Leases held when the node died: their executions are gone; report them
        ``lost`` (not failed: the task did not fail, so no retry is used up)."""
        now = self.out.now
        for exec_id, rec in records.items():
            held = HeldExecution(
                execution_id=exec_id,
                job_id=rec["job_id"],
                slot=rec["slot"],
                epoch=rec["epoch"],
                owner=rec["owner"],
                cpu=rec["cpu"],
                memory=rec["memory"],
                ttl=rec["ttl"],
                state=ExecState.RUNNING,
                valid_until=now + rec["ttl"],
                started=True,  # (maybe not, but either way nothing runs now)
            )
            self.held[exec_id] = held
            self.out.timer(ExecTimer(LAPSE, exec_id), held.valid_until)
            self.on_finished(
                ExecutionFinished(
                    execution_id=exec_id,
                    status=LOST,
                    exit_code=-1,
                    error="node restarted; the execution was lost",
                )
            )
            self._renew(held)
