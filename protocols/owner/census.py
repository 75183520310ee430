"""Census (ops, daemon): which nodes match a pinned job.

Ops runs one census at submit (repeated until rounds find nobody new); a
daemon (policy ``recount``) repeats it every ``daemon_scan`` to find joiners.
Each matching node gets one slot pinned to it.
"""

from __future__ import annotations

import attrs

from protocols.config import ANNOUNCE_TOPIC
from protocols.errors import RemoteProtocolError
from protocols.kinds import SlotSource
from protocols.messages import CENSUS_SLOT, AskForBid, BidRejected
from protocols.owned import OwnedJob, OwnedSlot
from protocols.owner.base import (
    NO_MATCH_ROUNDS,
    OPS_QUIET_ROUNDS,
    OwnerBase,
    no_match_reason,
)
from protocols.states import SlotState
from protocols.timers import CENSUS, CENSUS_ECHO, RETRY, JobTimer, SlotTimer

# When, as a share of the bid window, a census round's broadcast goes again.
CENSUS_ECHO_AT = 0.5


def census_attempt(job: OwnedJob) -> int:
    return (job.census_round - 1) % 10_000 + 1


def census_ask_key(job_id: str, attempt: int, node: str) -> tuple[str, str, int, str]:
    """The retransmission key of a census round's direct ask to one node."""
    return ("census-ask", job_id, attempt, node)


def census_over(job: OwnedJob) -> bool:
    """An ops census is over: no round open, and the last rounds found nobody
    new.  Only then may the job end, or a node whose answer came in a later
    round is left out."""
    return not job.census_open and job.census_quiet >= OPS_QUIET_ROUNDS


class CensusMixin(OwnerBase):
    def _open_census(self, job: OwnedJob) -> None:
        """Ask every node (broadcast, plus matching peers of our view directly)
        whether it matches; busy nodes count too."""
        job.census_round += 1
        job.census_open, job.census_found = True, set()
        ask = self._census_ask(job)
        unit = job.unit
        peers, _ = self.directory.candidates(
            key=f"{job.job_id}/census",
            labels=unit.labels,
            engine=unit.engine,
            cpu=unit.cpu,
            memory=unit.memory,
            count=self.config.view_size + 1,
        )
        # Direct asks survive a lossy broadcast, and repeat within the round
        # until the node answers: with one copy each, 30 % loss left a live
        # matching node out of every round of an ops census in 2 of 140 simnet
        # runs (kinds, 10 nodes), and the job completed without it (O2).
        for node in peers:
            key = census_ask_key(job.job_id, ask.attempt, node)
            self.out.send_reliably(key, node, ask, self.t.bid_window)
        self.out.publish(ANNOUNCE_TOPIC, attrs.evolve(ask, broadcast=True))
        # The broadcast is the only way to a node not (yet) in our view, and it
        # has no ack: an ops census's goes again halfway through the window.
        # One copy per round left a live node, whose first hello was lost, out
        # of an ops census's three rounds at 30 % loss (simnet kinds, seeds 40
        # and 91), and the job completed without it.  A daemon's census needs
        # no echo: its next scan (daemon_scan) finds a node this one missed.
        if not self.policy(job).recount:
            echo_at = self.out.now + self.t.bid_window * CENSUS_ECHO_AT
            self.out.timer(JobTimer(CENSUS_ECHO, job.job_id, job.census_round), echo_at)
        self.out.timer(JobTimer(CENSUS, job.job_id), self.out.now + self.t.bid_window)

    def _census_ask(self, job: OwnedJob) -> AskForBid:
        return self._ask(job, CENSUS_SLOT, census_attempt(job))

    def _echo_census(self, job: OwnedJob, census_round: int) -> None:
        """The round's broadcast ask once more, if that round is still open."""
        if job.census_open and job.census_round == census_round:
            self.out.publish(ANNOUNCE_TOPIC, attrs.evolve(self._census_ask(job), broadcast=True))

    def _on_census_timer(self, job: OwnedJob) -> None:
        if job.census_open:
            self._close_census(job)
        elif self.policy(job).recount or job.census_quiet < OPS_QUIET_ROUNDS:
            self._open_census(job)

    def _census_answer(self, sender: str, job_id: str, attempt: int, matches: bool) -> None:
        job = self.jobs.get(job_id)
        if job is None or self.policy(job).slots is not SlotSource.CENSUS:
            raise RemoteProtocolError(f"census answer for unknown job {job_id!r}")
        self.out.settle(census_ask_key(job_id, attempt, sender))  # it heard the ask
        if not matches:
            return
        if job.census_open and attempt == census_attempt(job):
            job.census_found.add(sender)
            return
        # A late answer (its round closed; holders retransmit census answers
        # until released): still a matching node, so it gets its slot now.
        started = self.policy(job).recount or bool(job.slots)
        if started and not job.terminal and sender not in self._covered(job):
            self._add_pinned_slots(job, [sender])

    def _covered(self, job: OwnedJob) -> set[str]:
        """Nodes that have their slot: a one-off census's node once for good, a
        recounting (daemon) node while its slot is live."""
        if not self.policy(job).recount:
            return {s.pinned for s in job.slots}
        return {s.pinned for s in job.slots if not s.terminal}

    def _close_census(self, job: OwnedJob) -> None:
        job.census_open = False
        found = sorted(job.census_found)
        job.census_found = set()
        # Release the capacity the bidders reserved: a census never grants.
        attempt = census_attempt(job)
        for node in found:
            self.out.send(node, BidRejected(job_id=job.job_id, slot=CENSUS_SLOT, attempt=attempt))
        covered = self._covered(job)
        new = [node for node in found if node not in covered]
        self._add_pinned_slots(job, new)
        if not self.policy(job).recount:  # ops
            if not job.slots:
                job.census_empty += 1
                if job.census_empty >= NO_MATCH_ROUNDS:
                    reason = no_match_reason(job, self.directory)
                    self._finish_job(job, "failed", reason)
                    return
            else:
                # Answers can be lost: count again until rounds find nobody new.
                job.census_quiet = 0 if new else job.census_quiet + 1
                if job.census_quiet >= OPS_QUIET_ROUNDS:
                    self._update_job_state(job)  # it may be complete only now
                    return
            self.out.timer(JobTimer(CENSUS, job.job_id), self.out.now + self.t.requeue_delay)
            return
        # A daemon node that answers is up: wake its slot if it waits in backoff.
        for slot in job.slots:
            if slot.pinned in found and slot.state is SlotState.QUEUED and slot.pinned in covered:
                self.out.cancel_timer(SlotTimer(RETRY, job.job_id, slot.index))
                self._open_auction(job, slot)
        self.out.timer(JobTimer(CENSUS, job.job_id), self.out.now + self.t.daemon_scan)

    def on_peer_joined(self, node: str) -> None:
        """A peer introduced itself: a daemon job re-counts soon, not a scan later."""
        for job in self.jobs.values():
            waiting = self.policy(job).recount and not job.terminal and not job.census_open
            if waiting and all(s.pinned != node or s.terminal for s in job.slots):
                self.out.timer(JobTimer(CENSUS, job.job_id), self.out.now + self.t.bid_window)

    def _add_pinned_slots(self, job: OwnedJob, nodes: list[str]) -> None:
        if not nodes:
            return
        new = []
        for node in nodes:
            slot = OwnedSlot(job_id=job.job_id, index=len(job.slots), pinned=node)
            job.slots.append(slot)
            new.append(slot)
            self.persist_slot(slot)
        self.persist_job(job)
        for slot in new:
            slot.waiting_since = self.out.now
            self._open_auction(job, slot)
