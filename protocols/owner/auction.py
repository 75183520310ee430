"""Auctions: asks, bids, declines, the winner, and requeues without a bid.

A slot in ``BIDDING`` asks a few matching peers of the view (widening each
silent round, up to a broadcast), collects bids for ``bid_window`` and grants
the best one.  No bid: back off (busy nodes) or widen (silence); only rounds
that no matching node answers count towards failing fast, and never for a
kind that waits for nodes.
"""

from __future__ import annotations

import attrs

from protocols.config import ANNOUNCE_TOPIC
from protocols.errors import RemoteProtocolError
from protocols.messages import CENSUS_SLOT, AskForBid, Bid, BidDeclined, BidRejected
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


def round_attempt(slot: OwnedSlot) -> int:
    """The attempt number an ask carries (wraps: it is a short wire field)."""
    return (slot.attempt - 1) % 10_000 + 1


class AuctionMixin(OwnerBase):
    def _open_auction(self, job: OwnedJob, slot: OwnedSlot) -> None:
        unit = job.unit
        self._move(slot, SlotEvent.START, SlotState.BIDDING, persist=False)
        slot.attempt += 1
        slot.bids, slot.answered, slot.busy_seen, slot.mismatch = {}, set(), False, ""
        ask = AskForBid(
            job_id=job.job_id,
            slot=slot.index,
            attempt=round_attempt(slot),
            engine=unit.engine,
            cpu=unit.cpu,
            memory=unit.memory,
            labels=unit.labels,
            bid_window_ms=int(self.t.bid_window * 1000),
            pinned_node=slot.pinned,
        )
        if slot.pinned or slot.prefer:
            # Pinned: only this node.  Preferred (a consumer's graceful end):
            # this node first, anyone after a round without its bid.
            node = slot.pinned or slot.prefer
            slot.asked, slot.asked_all, slot.view_matches = {node}, True, 1
            self.out.send(node, ask)
            window = SlotTimer(AUCTION, job.job_id, slot.index)
            self.out.timer(window, self.out.now + self.t.bid_window)
            if not slot.auction_noted:
                slot.auction_noted = True
                self.note(
                    job.job_id, "auctioned", node=node, slot=slot.index, detail="asked 1 node"
                )
            return
        count = self.config.candidates * 2 ** min(slot.widen, 8)
        picked, slot.view_matches = self.directory.candidates(
            key=f"{slot.key}/{slot.attempt}",
            labels=unit.labels,
            engine=unit.engine,
            cpu=unit.cpu,
            memory=unit.memory,
            count=0 if slot.broadcast_next else count,
            avoid=self._failed_nodes(job, slot),
        )
        if picked:
            slot.asked = set(picked)
            slot.asked_all = len(picked) >= slot.view_matches
            for node in picked:
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
        if slot.busy_seen or slot.busy_hint:
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
