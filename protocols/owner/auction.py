"""Auctions: asks, bids, declines, the winner, and requeues without a bid.

A slot in ``BIDDING`` asks a few matching peers of the view (widening each
silent round, up to a broadcast), collects bids for ``bid_window`` and grants
the best one.  No bid: back off (busy nodes) or widen (silence); only rounds
that no matching node answers count towards failing fast, and never for a
kind that waits for nodes.

Room: an ask a peer must decline is a frame there and one back, for nothing.
So a round asks only peers with room for the slot as far as this owner knows:
not past the capacity its view gives for the peer, counting our own open asks
and leases there (``claims``), nor past the share of it one asker's pending
asks may hold (the holder's rule, ``askguard.py``); and not a peer that
declined for want of capacity within ``requeue_delay`` (other owners fill it
too), unless it bid or one of our leases on it ended since.  A round whose
candidates have no room asks nobody and waits as a busy round would.  A slot
requeued busy waits in ``waiting_room``; each claim that ends (an auction
closed, a lease ended) re-auctions the oldest one at once, instead of leaving
the freed capacity idle until its backoff ends.  Only the ``POLLERS`` oldest
waiting slots still ask on their backoff timer (capacity other owners free is
found that way); the rest wait for a wake.  A slot woken by a lease of ours
that ended on peer P asks P alone.  All of it is volatile: a restart starts
with every peer assumed to have room.
"""

from __future__ import annotations

import attrs

from protocols.config import ANNOUNCE_TOPIC
from protocols.directory import can_run
from protocols.errors import RemoteProtocolError
from protocols.messages import (
    CENSUS_SLOT,
    DECLINED_RUNNING_SLOT,
    Bid,
    BidDeclined,
    BidRejected,
    NodeInfo,
)
from protocols.owned import OwnedJob, OwnedSlot
from protocols.owner.base import (
    DEFAULT_QUEUE_TIMEOUT,
    NO_MATCH_ROUNDS,
    PINNED_RETRY_MAX,
    PINNED_SILENT_ROUNDS,
    OwnerBase,
    no_match_reason,
)
from protocols.states import SlotEvent, SlotState, slot_accepts
from protocols.timers import AUCTION, RETRY, SlotTimer
from protocols.units import human_duration

# Slots of one owner waiting for room whose backoff timer still asks (the
# oldest); the others wait for a wake.  Fewer pollers, fewer declined asks but
# capacity other owners free stays idle longer: at 1 the simnet burst of
# tests/test_auction_room.py took 52 % longer than before rooms; at 4 it was
# as fast, with ~1.5 declines per job instead of 33.
POLLERS = 4


# The shortest round of an ask to one node (pinned, preferred), seconds.
SINGLE_ASK_MIN_WINDOW = 1.0


def single_ask_key(slot: OwnedSlot) -> tuple[str, str, int, int]:
    """The retransmission key of an auction round's ask to one node."""
    return ("ask", slot.job_id, slot.index, slot.attempt)


def round_attempt(slot: OwnedSlot) -> int:
    """The attempt number an ask carries (wraps: it is a short wire field)."""
    return (slot.attempt - 1) % 10_000 + 1


class AuctionMixin(OwnerBase):
    def _open_auction(self, job: OwnedJob, slot: OwnedSlot) -> None:
        unit = job.unit
        self._move(slot, SlotEvent.START, SlotState.BIDDING, persist=False)
        slot.attempt += 1
        slot.bids, slot.answered, slot.busy_seen, slot.mismatch = {}, set(), False, ""
        if slot.pinned or slot.prefer:
            # Pinned: only this node.  Preferred (a consumer's graceful end):
            # this node first, anyone after a round without its bid.
            node = slot.pinned or slot.prefer
            slot.asked, slot.asked_all, slot.view_matches = {node}, True, 1
            # One node only, so a lost ask or answer costs the whole round,
            # and five silent rounds fail an ops slot: at 30 % loss a live
            # node was "gone" for 15 of 34 failed jobs (simnet kinds, 20
            # seeds).  The ask repeats within the window until the node
            # answers (a repeat gets the same bid: one reservation per round).
            # Its answer closes the round at once, so the round may wait longer
            # than a short bid window: with 0.1 s windows, 30 % loss and frames
            # delayed up to 250 ms, a live node's every bid came after the
            # close for five rounds, and its ops slot failed as "did not
            # answer" (simnet kinds, seed 256 of 300).
            window_s = max(self.t.bid_window, SINGLE_ASK_MIN_WINDOW)
            ask = self._ask(job, slot.index, round_attempt(slot), slot.pinned, window_s)
            self.out.send_reliably(single_ask_key(slot), node, ask, window_s)
            window = SlotTimer(AUCTION, job.job_id, slot.index)
            self.out.timer(window, self.out.now + window_s)
            if not slot.auction_noted:
                slot.auction_noted = True
                self.note(
                    job.job_id, "auctioned", node=node, slot=slot.index, detail="asked 1 node"
                )
            return
        ask = self._ask(job, slot.index, round_attempt(slot))
        woken_for = self.woken_for.pop((job.job_id, slot.index), None)
        if woken_for is not None and self._has_room(woken_for, unit.cpu, unit.memory):
            # Woken by room freed on one peer: ask it alone (the others were
            # busy a moment ago); no bid means busy again, not silence.
            slot.asked, slot.asked_all, slot.view_matches = {woken_for}, False, 1
            self.claims.setdefault(woken_for, {})[(job.job_id, slot.index)] = None
            self.out.send(woken_for, ask)
            closes = self.out.now + self.t.bid_window
            self.out.timer(SlotTimer(AUCTION, job.job_id, slot.index), closes)
            return
        if slot.busy_rounds and not self._polls(job.job_id, slot.index):
            # Busy before, and an older slot of ours polls for room already:
            # wait for a wake (or the next backoff) without asking.
            slot.asked, slot.asked_all, slot.busy_seen = set(), False, True
            self._requeue_without_bid(job, slot)
            return
        count = 1 if slot.busy_rounds else self.config.candidates * 2 ** min(slot.widen, 8)
        # A few extra in rendezvous order stand in for the ones known full.
        spare = min(len(self.full_until), count)
        picked, slot.view_matches = self.directory.candidates(
            key=f"{slot.key}/{slot.attempt}",
            labels=unit.labels,
            engine=unit.engine,
            cpu=unit.cpu,
            memory=unit.memory,
            count=0 if slot.broadcast_next else count + spare,
            avoid=self._failed_nodes(job, slot),
        )
        if picked:
            with_room = [node for node in picked if self._has_room(node, unit.cpu, unit.memory)]
            room = with_room[:count]
            if not room:  # all known full: no ask to decline, wait as if declined
                slot.asked, slot.asked_all, slot.busy_seen = set(), False, True
                self._requeue_without_bid(job, slot)
                return
            slot.asked = set(room)
            # Every matching peer of the view either asked now or known full.
            slot.asked_all = len(picked) >= slot.view_matches and len(with_room) == len(room)
            for node in room:
                self.claims.setdefault(node, {})[(job.job_id, slot.index)] = None
                self.out.send(node, ask)
        else:
            # Nothing (more) in our view: ask everyone; only matching nodes answer.
            slot.asked = None
            self.out.publish(ANNOUNCE_TOPIC, attrs.evolve(ask, broadcast=True))
            if self.directory.me.compute:  # publishes are not delivered to ourselves
                self.out.send(self.config.node_id, attrs.evolve(ask, broadcast=True))
        self.out.timer(SlotTimer(AUCTION, job.job_id, slot.index), self.out.now + self.t.bid_window)
        if not slot.auction_noted:  # once per wait, not per round
            slot.auction_noted = True
            asked = "broadcast" if slot.asked is None else f"asked {len(slot.asked)} node(s)"
            self.note(job.job_id, "auctioned", slot=slot.index, detail=asked)

    # --- room: peers known full, slots waiting for capacity ---------------------------

    def _has_room(self, node: str, cpu: float, memory: int) -> bool:
        until = self.full_until.get(node)
        if until is not None:
            if until > self.out.now:
                return False
            del self.full_until[node]
        claims = self.claims.get(node)
        if not claims:
            return True
        info = self._info(node)
        if info is None:
            return True
        asked_cpu = asked_memory = leased_cpu = leased_memory = 0.0
        asks = 0
        for key in list(claims):
            job = self.jobs.get(key[0])
            slot = job.slots[key[1]] if job is not None and key[1] < len(job.slots) else None
            if slot is None or job is None:
                del claims[key]
            elif slot.state is SlotState.BIDDING and slot.asked and node in slot.asked:
                if node not in slot.answered:  # a pending reservation there
                    asks += 1
                    asked_cpu += job.unit.cpu
                    asked_memory += job.unit.memory
            elif slot.leased and slot.current is not None and slot.current.node == node:
                leased_cpu += job.unit.cpu
                leased_memory += job.unit.memory
            else:
                del claims[key]
        if not claims:
            del self.claims[node]
        share = self.config.asks.share  # what the holder lets one asker's asks hold
        if (
            asks
            and node != self.config.node_id
            and (
                asked_cpu + cpu > share * info.cpu + 1e-9
                or asked_memory + memory > share * info.memory
            )
        ):
            return False
        return (
            asked_cpu + leased_cpu + cpu <= info.cpu + 1e-9
            and asked_memory + leased_memory + memory <= info.memory
        )

    def _mark_full(self, node: str) -> None:
        """``node`` declined for want of capacity: full for ``requeue_delay``,
        doubling with each such decline in a row (up to 8x, as a slot's busy
        backoff), until it bids or one of our leases on it ends."""
        streak = self.full_streak.get(node, 0) + 1
        self.full_streak[node] = streak
        self.full_until[node] = self.out.now + self.t.requeue_delay * 2 ** min(streak - 1, 3)

    def _polls(self, job_id: str, index: int) -> bool:
        """Whether this slot is among the ``POLLERS`` oldest waiting for room
        (those whose backoff timer still asks; the others wait to be woken)."""
        older = 0
        for key in list(self.waiting_room):
            if key == (job_id, index):
                return True
            job = self.jobs.get(key[0])
            slot = job.slots[key[1]] if job is not None and key[1] < len(job.slots) else None
            if slot is not None and slot.state is SlotState.QUEUED:
                older += 1
                if older >= POLLERS:
                    return False
            else:
                del self.waiting_room[key]  # left the queue: not waiting any more
        return True

    def _info(self, node: str) -> NodeInfo | None:
        if node == self.config.node_id:
            return self.directory.me
        entry = self.directory.peers.get(node)
        return entry.info if entry is not None else None

    def _room_freed(self, node: str | None) -> None:
        """One of our claims (on ``node``, if a lease) ended: the oldest slot
        waiting for capacity re-auctions now (its retry timer moves to now; a
        slot that left the queue meanwhile is skipped)."""
        if node is not None:
            self.full_until.pop(node, None)
            self.full_streak.pop(node, None)
        while self.waiting_room:
            job_id, index = next(iter(self.waiting_room))
            del self.waiting_room[(job_id, index)]
            job = self.jobs.get(job_id)
            if job is None or job.terminal or index >= len(job.slots):
                continue
            if job.slots[index].state is SlotState.QUEUED:
                self.out.timer(SlotTimer(RETRY, job_id, index), self.out.now)
                info = self._info(node) if node is not None else None
                unit = job.unit
                if info is not None and can_run(
                    info, unit.labels, unit.engine, unit.cpu, unit.memory
                ):
                    self.woken_for[(job_id, index)] = info.node_id
                return

    def _failed_nodes(self, job: OwnedJob, slot: OwnedSlot) -> list[str]:
        """Nodes to ask last.  Retried kinds: any node that failed the slot.  A
        restarted kind restarts in place unless a node failed it repeatedly
        (twice in its last five executions)."""
        if not self.policy(job).long_running:
            return [e.node for e in slot.executions if e.state != "succeeded"]
        recent = [e.node for e in slot.executions[-5:] if e.state not in ("replaced", "cancelled")]
        return sorted({node for node in recent if recent.count(node) >= 2})

    def _auction_slot(
        self, sender: str, event: SlotEvent, job_id: str, index: int, attempt: int
    ) -> OwnedSlot | None:
        job = self.jobs.get(job_id)
        if job is None or not 0 <= index < len(job.slots):
            raise RemoteProtocolError(f"bid for unknown job {job_id!r} slot {index}")
        slot = job.slots[index]
        # BID and DECLINE mean something in a bidding round only (the table).
        if not slot_accepts(slot.state, event) or round_attempt(slot) != attempt:
            return None  # late answer to a closed round: harmless
        if slot.asked is not None and sender not in slot.asked:
            raise RemoteProtocolError(f"unsolicited bid from {sender}")
        return slot

    def on_bid(self, sender: str, bid: Bid) -> None:
        if bid.slot == CENSUS_SLOT:
            self._census_answer(sender, bid.job_id, bid.attempt, matches=True)
            if not self.jobs[bid.job_id].census_open:  # late: release the reservation now
                self.out.send(
                    sender, BidRejected(job_id=bid.job_id, slot=bid.slot, attempt=bid.attempt)
                )
            return
        slot = self._auction_slot(sender, SlotEvent.BID, bid.job_id, bid.slot, bid.attempt)
        if slot is None:
            self.out.send(
                sender, BidRejected(job_id=bid.job_id, slot=bid.slot, attempt=bid.attempt)
            )
            return
        slot.bids[sender] = bid
        slot.answered.add(sender)
        self.full_until.pop(sender, None)
        self.full_streak.pop(sender, None)
        self._maybe_close_early(slot)

    def on_decline(self, sender: str, msg: BidDeclined) -> None:
        if msg.slot == CENSUS_SLOT:
            self._census_answer(sender, msg.job_id, msg.attempt, matches=msg.matches)
            if msg.matches and not self.jobs[msg.job_id].census_open:  # stops its retransmission
                self.out.send(
                    sender, BidRejected(job_id=msg.job_id, slot=msg.slot, attempt=msg.attempt)
                )
            return
        slot = self._auction_slot(sender, SlotEvent.DECLINE, msg.job_id, msg.slot, msg.attempt)
        if slot is None:
            if msg.matches:  # a late "busy": still proof that a matching node exists
                self.jobs[msg.job_id].slots[msg.slot].busy_hint = True
            return
        slot.answered.add(sender)
        slot.busy_seen = slot.busy_seen or msg.matches
        if msg.matches and msg.reason != DECLINED_RUNNING_SLOT:
            self._mark_full(sender)
        if slot.pinned and not msg.matches:
            slot.mismatch = msg.reason
        self._maybe_close_early(slot)

    def _maybe_close_early(self, slot: OwnedSlot) -> None:
        everyone = slot.asked is not None and slot.answered >= slot.asked
        enough = slot.asked is None and len(slot.bids) >= self.config.candidates
        if everyone or enough:
            self.out.cancel_timer(SlotTimer(AUCTION, slot.job_id, slot.index))
            self._close_auction(self.jobs[slot.job_id], slot)

    def _close_auction(self, job: OwnedJob, slot: OwnedSlot) -> None:
        self.out.settle(single_ask_key(slot))
        if len(slot.bids) > 1:
            self._room_freed(None)  # the losing bidders' reservations are released
        if slot.bids:
            winner = self._rank(job, slot)
            for node, bid in slot.bids.items():
                if node != winner:
                    self.out.send(
                        node, BidRejected(job_id=job.job_id, slot=slot.index, attempt=bid.attempt)
                    )
            slot.widen, slot.no_match_rounds, slot.busy_rounds = 0, 0, 0
            slot.broadcast_next = False
            self._grant(job, slot, winner)
            return
        if slot.pinned:
            self._requeue_pinned(job, slot)
            return
        if slot.prefer:  # the preferred node cannot take it back: ask anyone, now
            slot.prefer = ""
            self._move(slot, SlotEvent.CLOSE, SlotState.QUEUED, persist=False)
            self._open_auction(job, slot)
            return
        self._requeue_without_bid(job, slot)

    def _requeue_without_bid(self, job: OwnedJob, slot: OwnedSlot) -> None:
        """No bid this round.  Busy matching nodes: back off (with jitter, so slots
        queued together do not re-auction together).  Silence: widen the search,
        up to a broadcast.  Only broadcast rounds that no matching node answers,
        while our view knows none either, count towards failing fast (never for
        a kind that waits for nodes)."""
        unit = job.unit
        waits = self.policy(job).waits_for_nodes
        busy = slot.busy_seen or slot.busy_hint
        if busy:
            slot.busy_rounds += 1
            slot.no_match_rounds, slot.broadcast_next, slot.busy_hint = 0, False, False
            delay = self.t.requeue_delay * 2 ** min(slot.busy_rounds - 1, 3)
            delay *= 0.5 + self.rng.random()
        else:
            slot.widen += 1
            if slot.asked is not None:
                slot.broadcast_next = slot.asked_all
            else:
                slot.broadcast_next = slot.view_matches == 0
                slot.no_match_rounds += slot.view_matches == 0
            delay = self.t.requeue_delay
            if waits:
                delay *= 2 ** min(slot.no_match_rounds, 5)
        if not waits and unit.queue_timeout is None and slot.no_match_rounds >= NO_MATCH_ROUNDS:
            self._slot_failed(
                job, slot, SlotEvent.CLOSE, no_match_reason(job, self.directory)
            )
            return
        limit = unit.queue_timeout if unit.queue_timeout is not None else DEFAULT_QUEUE_TIMEOUT
        if not waits and self.out.now - slot.waiting_since >= limit:
            waited = human_duration(limit)
            self._slot_failed(
                job, slot, SlotEvent.CLOSE, f"no node accepted the work within {waited}"
            )
            return
        self._move(slot, SlotEvent.CLOSE, SlotState.QUEUED, persist=False)
        self.out.timer(SlotTimer(RETRY, job.job_id, slot.index), self.out.now + delay)
        if busy:  # wake it as soon as room frees
            self.waiting_room[(job.job_id, slot.index)] = None

    def _requeue_pinned(self, job: OwnedJob, slot: OwnedSlot) -> None:
        """A pinned slot's node did not bid.  Busy: back off.  No longer
        matching: an ops slot fails, a recounted (daemon) slot retires (a later
        census brings it back if the node matches again).  Silent: an ops slot
        fails after a few rounds; a daemon slot waits for its node, backing off."""
        node, policy = slot.pinned, self.policy(job)
        if slot.mismatch:
            reason = f"node {node} no longer matches: {slot.mismatch}"
            if policy.recount:
                self._stop_slot(job, slot, reason)
            else:
                self._slot_failed(job, slot, SlotEvent.CLOSE, reason)
            return
        if slot.busy_seen or slot.busy_hint:
            slot.busy_rounds += 1
            slot.no_match_rounds, slot.busy_hint = 0, False
            delay = self.t.requeue_delay * 2 ** min(slot.busy_rounds - 1, 3)
        else:
            slot.no_match_rounds += 1
            if not policy.waits_for_nodes and slot.no_match_rounds >= PINNED_SILENT_ROUNDS:
                self._slot_failed(
                    job,
                    slot,
                    SlotEvent.CLOSE,
                    f"node {node} did not answer (gone since the census?)",
                )
                return
            delay = min(self.t.requeue_delay * 2 ** (slot.no_match_rounds - 1), PINNED_RETRY_MAX)
            slot.reason = f"waiting for node {node}"
        limit = (
            job.unit.queue_timeout if job.unit.queue_timeout is not None else DEFAULT_QUEUE_TIMEOUT
        )
        if not policy.waits_for_nodes and self.out.now - slot.waiting_since >= limit:
            busy = f"node {node} stayed busy for {human_duration(limit)}"
            self._slot_failed(job, slot, SlotEvent.CLOSE, busy)
            return
        self._move(slot, SlotEvent.CLOSE, SlotState.QUEUED, persist=False)
        jitter = 0.5 + self.rng.random()
        self.out.timer(SlotTimer(RETRY, job.job_id, slot.index), self.out.now + delay * jitter)

    def _rank(self, job: OwnedJob, slot: OwnedSlot) -> str:
        """Best bid: never ran this slot here, holds no sibling slot, most free capacity."""
        if self.policy(job).long_running:
            failed_here = set(self._failed_nodes(job, slot))
        else:
            failed_here = {e.node for e in slot.executions}
        siblings = {s.current.node for s in job.slots if s.current is not None and s.leased}

        def score(item: tuple[str, Bid]) -> tuple[float, str]:
            node, bid = item
            value = bid.free_cpu + (0.0 if node in failed_here else 10.0)
            value -= (1.0 if node in siblings else 0.0) + 0.1 * bid.running
            value += self.rng.random()  # seeded jitter spreads ties
            return (-value, node)

        return min(sorted(slot.bids.items()), key=score)[0]
