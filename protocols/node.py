"""The node core: one node's machines behind ``handle(event, now) -> actions``.

Pure: no I/O, no clock reads (time comes in as ``now``), no global randomness
(one ``random.Random`` seeded from (seed, node id, incarnation)).  The trio
runtime and the simulator drive the very same object.

Crash = the object is dropped.  Restart = a new object built from the records
the old one persisted, then ``Started``.  Each start bumps the persisted
*incarnation*, which is part of every message id, so ids never repeat across
restarts and peers' duplicate filters never swallow a fresh message.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from typing import Any

from protocols import codec
from protocols.chain import ChainController
from protocols.config import ANNOUNCE_TOPIC, NodeConfig
from protocols.cron import CronController
from protocols.dag import DagController
from protocols.directory import GONE, Directory, peer_status
from protocols.errors import RemoteProtocolError
from protocols.events import (
    Action,
    AnswerQuery,
    CancelJob,
    Event,
    ExecutionFinished,
    ExecutionOutput,
    ExecutionProgress,
    ItemsRead,
    MessageReceived,
    QueryJob,
    SourceBatch,
    Started,
    Stopping,
    SubmitJob,
    SuspendJob,
    TimerFired,
    UpdateJob,
)
from protocols.holder import HELD_TABLE, Holder
from protocols.kinds import KindRegistry, Records, TimerHandler
from protocols.messages import (
    MAX_EXECUTIONS,
    MAX_GOODBYE_LEN,
    MAX_PEERS_SAMPLE,
    AskForBid,
    Bid,
    BidDeclined,
    BidRejected,
    Cancel,
    ExecutionResult,
    Goodbye,
    Hello,
    JobAnswer,
    JobQuery,
    LeaseAccept,
    LeaseGrant,
    LeaseRelease,
    LeaseRenew,
    LogAck,
    LogChunk,
    Message,
    NodeInfo,
    Peers,
    RenewAck,
    ResultAck,
)
from protocols.outbox import RETX_TIMER, Outbox
from protocols.owner import Owner
from protocols.queries import LocalJobs, QueryDesk, resolve
from protocols.signing import Keyring, SimKeyring
from protocols.stream import StreamController
from protocols.timers import (
    BID,
    CENSUS,
    CENSUS_ECHO,
    FORGET,
    GOSSIP,
    LAPSE,
    QUERY,
    RENEW,
    RESTART,
    RUNFOR,
    SLOT_TIMERS,
    XTIMEOUT,
    NodeTimer,
)

OWNER_TIMERS = (*SLOT_TIMERS, CENSUS, CENSUS_ECHO)
META_TABLE = "meta"
VIEW_TABLE = "view"
MAX_TRACKED_OFFENDERS = 10_000
DEDUPE_CAPACITY = 50_000
VIEW_SAVE_INTERVAL = 300.0  # seconds between two saves of a changing view
JOIN_RETRY = 2.0  # seconds between hellos to the bootstrap peers while our view is empty


def info_record(info: NodeInfo) -> dict[str, Any]:
    return {
        "node_id": info.node_id,
        "labels": dict(info.labels),
        "cpu": info.cpu,
        "memory": info.memory,
        "executors": list(info.executors),
        "addrs": list(info.addrs),
        "compute": info.compute,
    }


def broadcast_refusal(sender: str, data: bytes) -> str | None:
    """Why a frame published on a topic is refused, or None.  Only broadcast
    asks travel on topics, from the peer that signed them.  The core applies
    the same rule; the libp2p transport applies it before gossipsub delivers or
    forwards the message (so garbage does not spread)."""
    try:
        envelope = codec.decode(data)
    except RemoteProtocolError as exc:
        return str(exc)
    if envelope.sender != sender:
        return f"frame claims sender {envelope.sender!r} but was signed by {sender!r}"
    if not (isinstance(envelope.message, AskForBid) and envelope.message.broadcast):
        return f"{envelope.message.TYPE} is not allowed on a topic"
    return None


class NodeCore:
    def __init__(
        self,
        config: NodeConfig,
        seed: int,
        records: Records | None = None,
        keys: Keyring | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.node_id
        self._records: Records = records or {}
        meta = self._records.get(META_TABLE, {}).get("node", {})
        self.incarnation = int(meta.get("incarnation", 0)) + 1
        self.rng = random.Random(f"{seed}:{config.node_id}:{self.incarnation}")
        self.out = Outbox(config.node_id, self.incarnation, config.timings)
        self.me = NodeInfo(
            node_id=config.node_id,
            labels=dict(config.labels),
            cpu=config.cpu,
            memory=config.memory,
            executors=list(config.executors),
            addrs=list(config.addrs),
            compute=config.compute,
            max_executions=min(config.max_executions, MAX_EXECUTIONS),
            version=config.version,
        )
        self.directory = Directory(self.me, config.view_size, self.rng)
        self.owner = Owner(config, self.out, self.directory, self.rng)
        # The kind registry: one line per kind with a controller (the rest of a
        # kind is its row in protocols.kinds.KIND_POLICY).  Restore order = this order.
        self.cron = CronController(self.owner)
        self.stream = StreamController(self.owner)
        self.chain = ChainController(self.owner, keys or SimKeyring(config.node_id))
        self.dag = DagController(self.owner)
        self.owner.install(
            KindRegistry(
                self.owner,
                {"cron": self.cron, "stream": self.stream, "chain": self.chain, "dag": self.dag},
            )
        )
        self.holder = Holder(config, self.out, self.me)
        # Any node answers for a job: queries to and from the owners of jobs.
        self.queries = QueryDesk(
            config.node_id,
            self.out,
            self.directory,
            LocalJobs(self._local_job_ids, self._top_level, self._submitter),
        )
        self.dedupe = codec.Deduper(DEDUPE_CAPACITY)
        self._view_version = 0  # bumped when the view changes; saved at gossip time
        self._view_saved = 0
        self._view_saved_at = 0.0
        self._hello_at: dict[str, float] = {}  # peer -> when we last said hello to it
        # Hearsay entries (never heard first-hand) -> the spacing of our next
        # hello to them: it doubles with each unanswered one (_greetings_due).
        self._greet_spacing: dict[str, float] = {}
        self._learnt = 0  # peers learnt since the last gossip round (fast fill while > 0)
        self._fill_delay = JOIN_RETRY  # next round's delay while the view has room
        self._gossip_at = 0.0  # when the gossip timer fires next
        self._handlers = self._routes()
        self._kind_timers: dict[str, TimerHandler] = {}
        for controller in self.owner.kinds.all():
            self._kind_timers.update(controller.timers())
        # (Looked up by name at each firing: tests patch the holder's handlers.)
        self._exec_timers: dict[str, str] = {
            RENEW: "on_renew_timer",
            LAPSE: "on_lapse_timer",
            XTIMEOUT: "on_timeout_timer",
            RESTART: "on_restart_timer",
            RUNFOR: "on_run_for_timer",
            FORGET: "on_forget_timer",
        }
        self.dropped: dict[str, int] = {}  # offending sender -> frames dropped
        self.duplicates = 0
        # Frames that passed decoding and the duplicate filter, by message
        # type (the received side of ``out.sent_by_type``; metrics).
        self.received_by_type: dict[str, int] = {}

    # --- the one entry point ----------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        self.out.begin(now)
        self.chain.check_lapses()  # (a paused node's stale timers come late)
        if isinstance(event, MessageReceived):
            self._on_frame(event)
        elif isinstance(event, TimerFired):
            self._on_timer(event.key)
        elif isinstance(event, ExecutionFinished):
            self.holder.on_finished(event)
        elif isinstance(event, ExecutionProgress):
            self.holder.on_progress(event)
        elif isinstance(event, ExecutionOutput):
            self.holder.on_output(event)
        elif isinstance(event, SourceBatch):
            self.stream.on_batch(event)
        elif isinstance(event, ItemsRead):
            self.dag.on_items(event)
        elif isinstance(event, SubmitJob):
            self.owner.submit(event.job_id, event.spec)
        elif isinstance(event, CancelJob):
            self.owner.cancel(event.job_id, event.reason)
        elif isinstance(event, UpdateJob):
            self.owner.update(event.job_id, event.spec)
        elif isinstance(event, SuspendJob):
            self.owner.suspend(event.job_id, event.suspended)
        elif isinstance(event, QueryJob):
            self.queries.ask(event)
        elif isinstance(event, AnswerQuery):
            self.queries.answer(event)
        elif isinstance(event, Started):
            self.out.wall_offset = event.wall - now
            self._on_started()
        elif isinstance(event, Stopping):
            self._on_stopping(event.reason)
        return self.out.drain()

    # --- start / restart ------------------------------------------------------------------

    def _on_started(self) -> None:
        # Durable before any message carrying the new incarnation leaves.
        self.out.persist(META_TABLE, "node", {"incarnation": self.incarnation})
        self.owner.restore(self._records)  # owned jobs, then each kind controller's tables
        self.holder.restore(self._records.get(HELD_TABLE, {}))
        remembered = self._restore_view(self._records.get(VIEW_TABLE, {}).get("peers", {}))
        self._records = {}
        # Re-join through the bootstrap peers and through peers we knew before a
        # restart: those tell everyone our (possibly new) addresses.
        targets = [p for p in self.config.bootstrap if p != self.node_id]
        targets += [p for p in remembered if p not in targets][: self.config.peer_sample]
        for peer in targets:
            self._say_hello(peer, want_peers=True, sample=self._sample_wanted())
        self._schedule_gossip()
        self.owner.resume()

    def _on_stopping(self, reason: str) -> None:
        """A clean stop: every peer of the view drops us now instead of after
        ``peer_expiry`` of silence (best effort: a lost goodbye costs that)."""
        goodbye = Goodbye(reason=reason[:MAX_GOODBYE_LEN])
        for peer in sorted(self.directory.peers):
            self.out.send(peer, goodbye)

    def _restore_view(self, record: dict[str, Any]) -> list[str]:
        restored = []
        for fields in record.get("peers", []):
            try:
                info = NodeInfo(**fields)
            except TypeError:
                continue  # a record from an older version: the node re-learns it
            self._learn(info, direct=False)
            restored.append(info.node_id)
        self.rng.shuffle(restored)
        return restored

    def _save_view(self) -> None:
        """Persist the view (at most once per gossip round, only when it changed),
        so a restarted node can find the network again without its bootstrap."""
        if self._view_saved == self._view_version:
            return
        if self._view_saved and self.out.now < self._view_saved_at + VIEW_SAVE_INTERVAL:
            return  # the first save is prompt; later ones at most every interval
        self._view_saved, self._view_saved_at = self._view_version, self.out.now
        peers = [info_record(e.info) for e in self.directory.peers.values()]
        self.out.persist(VIEW_TABLE, "peers", {"peers": peers})

    # --- frames ---------------------------------------------------------------------------

    def _on_frame(self, event: MessageReceived) -> None:
        kind = "undecodable"  # what the drop is counted as (the node's peer guard weighs it)
        try:
            envelope = codec.decode(event.data)
            kind = "forged"
            if envelope.sender != event.sender:
                raise RemoteProtocolError(
                    f"frame claims sender {envelope.sender!r} but came from {event.sender!r}"
                )
            kind = "unauthorized"
            if self.dedupe.seen(envelope.msg_id, event.sender):
                self.duplicates += 1
                return
            message = envelope.message
            self.received_by_type[message.TYPE] = self.received_by_type.get(message.TYPE, 0) + 1
            if event.topic and not (isinstance(message, AskForBid) and message.broadcast):
                raise RemoteProtocolError(f"{message.TYPE} is not allowed on topic {event.topic}")
            self.directory.touch(event.sender, self.out.now)
            self._dispatch(event.sender, message)
            if isinstance(message, (AskForBid, LeaseGrant)):  # the sender owns that job
                self.queries.learn(message.job_id, event.sender)
        except RemoteProtocolError as exc:
            self._count_drop(event.sender, str(exc), kind)

    def _count_drop(self, sender: str, reason: str, kind: str) -> None:
        if sender in self.dropped or len(self.dropped) < MAX_TRACKED_OFFENDERS:
            self.dropped[sender] = self.dropped.get(sender, 0) + 1
        self.out.notify("dropped", sender=sender, reason=reason, fault=kind)

    def _dispatch(self, sender: str, msg: Message) -> None:
        handler = self._handlers.get(type(msg))
        if handler is None:
            raise RemoteProtocolError(f"{msg.TYPE} is not handled by this node")
        handler(sender, msg)

    def _routes(self) -> dict[type[Message], Callable[[str, Any], None]]:
        """Which role handles which message (one table, looked up by exact type)."""
        owner, holder = self.owner, self.holder
        routes: dict[type[Message], Callable[[str, Any], None]] = {
            AskForBid: holder.on_ask,
            Bid: owner.on_bid,
            BidDeclined: owner.on_decline,
            BidRejected: holder.on_bid_rejected,
            LeaseGrant: holder.on_grant,
            LeaseAccept: owner.on_renew,
            LeaseRenew: owner.on_renew,
            RenewAck: holder.on_renew_ack,
            LeaseRelease: owner.on_release,
            ExecutionResult: owner.on_result,
            ResultAck: holder.on_result_ack,
            Cancel: holder.on_cancel,
            LogChunk: owner.on_log_chunk,
            LogAck: holder.on_log_ack,
            Hello: self._on_hello,
            Peers: self._on_peers,
            JobQuery: self.queries.on_query,
            JobAnswer: self.queries.on_answer,
            Goodbye: self._on_goodbye,
        }
        for controller in owner.kinds.all():
            routes.update(controller.routes())
        return routes

    # --- membership (peer exchange) ---------------------------------------------------------

    def _on_hello(self, sender: str, msg: Hello) -> None:
        if msg.info.node_id != sender:
            raise RemoteProtocolError(f"hello from {sender} describes {msg.info.node_id}")
        known = self.directory.peers.get(sender)
        # A joiner, or new labels (``is``: a remembered hello body gives the
        # very same NodeInfo again, and equality costs a compare of every field).
        changed = known is None or (known.info is not msg.info and known.info != msg.info)
        self._learn(msg.info, direct=True)
        entry = self.directory.peers.get(sender)
        if entry is not None:
            entry.running = msg.running
        if changed:
            self.owner.on_peer_joined(sender)
        if known is None and not msg.want_peers and self._hello_due(sender, JOIN_RETRY):
            # First contact (it learnt us by hearsay): answer, so that it hears
            # from us first-hand now, not at our next heartbeat.  Only a peer
            # new to us gets this, so two hellos never ping-pong.
            self._say_hello(sender, want_peers=False)
        if msg.want_peers:
            wanted = min(msg.sample or self.config.peer_sample, MAX_PEERS_SAMPLE)
            sample = self.directory.sample(wanted, exclude=sender)
            self.out.send(sender, Peers(peers=sample))

    def _on_peers(self, sender: str, msg: Peers) -> None:
        learnt = 0
        for info in msg.peers:
            # The answering peer's own entry is first-hand news of it.
            if self._learn(info, direct=info.node_id == sender):
                learnt += 1
                # Tell the new peer about us, so views grow in both directions.
                self._say_hello(info.node_id, want_peers=False)
        self._learnt += learnt
        if learnt and len(self.directory.peers) < self.config.view_size:
            # Filling the view (nodes that joined at the same time missed each
            # other): exchange again soon rather than a gossip interval later.
            soon = self.out.now + JOIN_RETRY * (0.8 + 0.4 * self.rng.random())
            if soon < self._gossip_at:
                self._gossip_at = soon
                self.out.timer(NodeTimer(GOSSIP), soon)

    def _on_goodbye(self, sender: str, msg: Goodbye) -> None:
        if self.directory.remove(sender, self.out.now, msg.reason or "said goodbye"):
            self._view_version += 1
            self._hello_at.pop(sender, None)
            self.out.notify("peer_left", node_id=sender, reason=msg.reason)

    def _say_hello(self, peer: str, *, want_peers: bool, sample: int = 0) -> None:
        running = min(len(self.holder.held), MAX_EXECUTIONS)
        hello = Hello(info=self.me, want_peers=want_peers, sample=sample, running=running)
        self.out.send(peer, hello)
        self._hello_at[peer] = self.out.now

    def _say_hellos(self, peers: list[str]) -> None:
        """``_say_hello(peer, want_peers=False)`` to each peer in order (one
        encode for all: the hello is the same)."""
        running = min(len(self.holder.held), MAX_EXECUTIONS)
        self.out.send_many(peers, Hello(info=self.me, want_peers=False, running=running))
        now = self.out.now
        for peer in peers:
            self._hello_at[peer] = now

    def _hello_due(self, peer: str, spacing: float) -> bool:
        """Whether our last hello to ``peer`` is ``spacing`` seconds old (or none)."""
        return self._hello_at.get(peer, -float("inf")) <= self.out.now - spacing

    def _sample_wanted(self) -> int:
        """Entries to ask for in a peer exchange: a whole view while ours has
        room (joining: one answer fills it), the usual sample once it is full."""
        room = self.config.view_size - len(self.directory.peers)
        return min(MAX_PEERS_SAMPLE, max(self.config.peer_sample, room + 1))

    def _learn(self, info: NodeInfo, *, direct: bool) -> bool:
        """Add a peer to the view; the driver learns its addresses (to dial it)."""
        known = self.directory.peers.get(info.node_id)
        old_addrs = known.info.addrs if known else None
        new = self.directory.upsert(info, self.out.now, direct=direct)
        if info.node_id != self.node_id and info.addrs and info.addrs != old_addrs:
            self.out.notify("peer_discovered", node_id=info.node_id, addrs=list(info.addrs))
        # (After a direct upsert the entry holds ``info`` or its equal: no compare.)
        if new or (not direct and known is not None and known.info is not info
                   and known.info != info):
            self._view_version += 1
        return new

    def _schedule_gossip(self) -> None:
        interval = self.config.timings.gossip_interval
        if not self.directory.peers:  # not joined yet (bootstrap down, hello lost): retry soon
            interval = min(interval, JOIN_RETRY)
        elif len(self.directory.peers) < self.config.view_size:
            # Still filling the view: ask again soon while rounds teach us
            # peers.  A round that teaches nothing doubles the delay up to the
            # gossip interval rather than jumping to it: its answer may just
            # have been lost (a busy host), and a network smaller than a view
            # (no view ever fills) soon settles at the usual interval.
            interval = min(interval, self._next_fill_delay())
        else:
            self._fill_delay = JOIN_RETRY
        self._learnt = 0
        self._gossip_at = self.out.now + interval * (0.8 + 0.4 * self.rng.random())
        self.out.timer(NodeTimer(GOSSIP), self._gossip_at)

    def _next_fill_delay(self) -> float:
        if self._learnt:
            self._fill_delay = JOIN_RETRY
        else:
            self._fill_delay = min(2 * self._fill_delay, self.config.timings.gossip_interval)
        return self._fill_delay

    def _on_gossip(self) -> None:
        t = self.config.timings
        dropped = self.directory.expire(self.out.now, t.peer_expiry)
        if dropped:
            self._view_version += 1
        peer = self.directory.random_peer()
        targets = [peer] if peer else [p for p in self.config.bootstrap if p != self.node_id]
        for target in targets:
            self._say_hello(target, want_peers=True, sample=self._sample_wanted())
        self._heartbeat()
        self._save_view()
        self._schedule_gossip()

    def _heartbeat(self) -> None:
        """Say hello to every confirmed view member that has not heard one from
        us for ``peer_heartbeat`` less a gossip interval (the next round would
        be late), so each keeps us alive in its view.  Cost: view_size /
        peer_heartbeat small frames per second, whatever the network's size."""
        t = self.config.timings
        due = self.out.now - (t.peer_heartbeat - 1.2 * t.gossip_interval)
        peers = self.directory.peers
        for peer in [p for p in self._hello_at if p not in peers]:
            del self._hello_at[peer]
        never = -float("inf")
        self._say_hellos(
            [p for p in sorted(peers) if peers[p].confirmed and self._hello_at.get(p, never) <= due]
        )
        self._say_hellos(self._greetings_due())

    def _greetings_due(self) -> list[str]:
        """Hearsay entries that never answered, whose next greeting is due.

        Our hello (or its answer) may have been lost, so we say it again; but
        each unanswered one doubles the wait for the next (``JOIN_RETRY``, then
        2x, 4x, ... until the entry expires, ``peer_expiry`` after we learnt
        it).  Re-greeting every round fed on its own failures: on a saturated
        host (100 nodes on 2 cores) dials time out, entries stay unanswered,
        and their hellos every round kept the host saturated (a node sent ~140
        hellos a minute, and ~2 arrived)."""
        spacing_of = self._greet_spacing
        for peer in [p for p in spacing_of if p not in self.directory.peers
                     or self.directory.peers[p].confirmed]:
            del spacing_of[peer]
        due = []
        for peer in self.directory.unconfirmed():
            spacing = spacing_of.get(peer, JOIN_RETRY)
            if self._hello_due(peer, spacing):
                due.append(peer)
                spacing_of[peer] = 2 * spacing
        return due

    # --- timers -----------------------------------------------------------------------------

    def _on_timer(self, key: Hashable) -> None:
        if not isinstance(key, tuple) or not key:
            return
        kind = key[0]
        if kind == RETX_TIMER:
            self.out.on_retransmit_timer(key[1])
        elif kind in OWNER_TIMERS:  # SlotTimer / JobTimer(CENSUS)
            self.owner.on_timer(kind, key[1], key[2])
        elif kind in self._kind_timers:  # JobTimer of a kind controller
            self._kind_timers[kind](key[1])
        elif kind == BID:
            self.holder.on_bid_timer((key[1], key[2], key[3]))
        elif kind in self._exec_timers:  # ExecTimer
            getattr(self.holder, self._exec_timers[kind])(key[1])
        elif kind == GOSSIP:
            self._on_gossip()
        elif kind == QUERY:
            self.queries.on_timer(key[1])

    # --- queries ------------------------------------------------------------------------------

    def owned_jobs(self) -> dict[str, str]:
        return {job_id: job.state for job_id, job in self.owner.jobs.items()}

    def describe(self, job_id: str) -> dict[str, Any]:
        return self.owner.describe(job_id)

    def runs(self, job_id: str) -> list[dict[str, Any]]:
        """A cron job's runs, oldest first (skipped scheduled times included)."""
        return self.cron.runs(job_id)

    def resolve_job(self, text: str) -> tuple[str, list[str]]:
        """(status, ids) of ``text``, a job id or a unique id prefix, among
        the jobs this node knows locally (``protocols.queries.resolve``)."""
        return resolve(text, self._local_job_ids(), self._top_level)

    def _local_job_ids(self) -> list[str]:
        ids = list(self.owner.jobs)
        ids += [c for c in self.chain.chains if c not in self.owner.jobs]  # stages owned here
        return ids

    def _top_level(self, job_id: str) -> bool:
        job = self.owner.jobs.get(job_id)
        return job is None or not job.parent

    def _submitter(self, job_id: str) -> str:
        """The node a job was submitted to: the owner, but for a chain's later
        stages (whose submitter keeps the chain)."""
        chain = self.chain.chains.get(job_id)
        return chain.submitter if chain is not None else self.node_id

    def known_peers(self) -> list[NodeInfo]:
        return [e.info for e in self.directory.peers.values()]

    def peer_health(self, now: float) -> list[dict[str, Any]]:
        """Every peer of the view, and those that said goodbye lately, with
        status (alive / suspect / gone), seconds since last heard (at ``now``,
        the driver's clock) and load."""
        heartbeat = self.config.timings.peer_heartbeat
        rows = [
            {
                "info": e.info,
                "status": peer_status(now - e.last_seen, heartbeat),
                "last_seen_s": max(0.0, now - e.last_seen),
                "running": e.running,
            }
            for e in self.directory.peers.values()
        ]
        rows += [
            {
                "info": d.info,
                "status": GONE,
                "last_seen_s": max(0.0, now - d.last_seen),
                "running": 0,
                "left": d.reason,
            }
            for d in self.directory.departed.values()
        ]
        return rows


__all__ = ["ANNOUNCE_TOPIC", "NodeCore", "broadcast_refusal"]
