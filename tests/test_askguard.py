"""Asks for invented jobs: the per-asker reservation share and the ask score
(protocols/askguard.py, used by the holder)."""

from __future__ import annotations

import math
import random

import pytest

from protocols import codec
from protocols.askguard import AskLimits, AskScores
from protocols.config import NodeConfig
from protocols.events import MessageReceived, Send, Started, SubmitJob, TimerFired
from protocols.messages import AskForBid, Bid, BidDeclined, BidRejected, Message
from protocols.node import NodeCore
from tests.protonet import ProtoNet, batch_spec

GiB = 2**30


BID_WINDOW_S = 0.5


class Bidder:
    """One node core (4 cpu, 4 GiB, 4 executions) fed asks by hand."""

    def __init__(self, limits: AskLimits | None = None) -> None:
        config = NodeConfig(node_id="me", cpu=4.0, memory=4 * GiB, max_executions=4)
        self.core = NodeCore(config, seed=1)
        if limits is not None:
            self.core.holder.ask_scores.limits = limits
        self.now = 0.0
        self.ids = 0
        self.core.handle(Started(wall=0.0), self.now)

    def ask(self, asker: str, job_id: str, cpu: float = 1.0, memory: int = GiB) -> Message | None:
        """The answer to one ask (None: no answer at all)."""
        ask = AskForBid(
            job_id=job_id,
            slot=0,
            attempt=1,
            engine="process",
            cpu=cpu,
            memory=memory,
            bid_window_ms=int(BID_WINDOW_S * 1000),
        )
        self.ids += 1
        frame = codec.encode(ask, msg_id=f"{asker}:1:{self.ids}", sender=asker)
        actions = self.core.handle(MessageReceived(asker, frame), self.now)
        answers = [codec.decode(a.data).message for a in actions if isinstance(a, Send)]
        assert len(answers) <= 1, answers
        return answers[0] if answers else None

    def reject(self, asker: str, job_id: str) -> None:
        self.ids += 1
        msg = BidRejected(job_id=job_id, slot=0, attempt=1)
        frame = codec.encode(msg, msg_id=f"{asker}:1:{self.ids}", sender=asker)
        self.core.handle(MessageReceived(asker, frame), self.now)

    # A reservation lasts for the ask's bid window plus the bidder's bid_hold.
    @property
    def hold(self) -> float:
        return BID_WINDOW_S + self.core.config.timings.bid_hold + 0.01

    def expire_all(self) -> None:
        """The reservation's hold passes: every pending reservation's timer fires."""
        self.now += self.hold
        for key in list(self.core.holder.reservations):
            self.core.handle(TimerFired(("bid", *key)), self.now)


def test_one_asker_reserves_at_most_its_share() -> None:
    node = Bidder()
    answers = [node.ask("mallory", f"fake-{i}") for i in range(4)]
    assert [type(a).__name__ for a in answers] == ["Bid", "Bid", "BidDeclined", "BidDeclined"]
    declined = answers[2]
    assert isinstance(declined, BidDeclined) and declined.matches  # "busy": owners back off
    assert "share" in declined.reason
    # The rest of the node is still there for everyone else.
    assert isinstance(node.ask("honest", "real-1"), Bid)
    assert isinstance(node.ask("honest", "real-2"), Bid)
    stats = node.core.holder.ask_scores.stats(node.now)
    assert stats["mallory"]["over_share"] == 2


def test_without_the_share_one_asker_takes_the_whole_node() -> None:
    # The guard matters: with a share of 1, the invented asks reserve everything.
    node = Bidder(AskLimits(share=1.0))
    assert all(isinstance(node.ask("mallory", f"fake-{i}"), Bid) for i in range(4))
    answer = node.ask("honest", "real-1")
    assert isinstance(answer, BidDeclined) and answer.reason == "no free capacity"


def test_a_task_bigger_than_the_share_still_gets_a_bid() -> None:
    node = Bidder()
    assert isinstance(node.ask("owner", "big", cpu=3.0, memory=3 * GiB), Bid)
    assert isinstance(node.ask("owner", "small", cpu=3.0, memory=GiB), BidDeclined)


def test_own_asks_are_not_bounded() -> None:
    node = Bidder()
    assert all(isinstance(node.ask("me", f"mine-{i}"), Bid) for i in range(4))


def test_asks_that_never_lead_to_a_grant_put_the_asker_in_backoff() -> None:
    limits = AskLimits()
    node = Bidder(limits)
    rounds = 0
    while node.ask("mallory", f"fake-{rounds}") is not None:
        node.expire_all()  # the asker never grants nor releases
        rounds += 1
        assert rounds < 100
    # Over the threshold (each round adds 1, the leak forgives hold x leak): ignored, silently.
    expected = limits.threshold / (1 - node.hold * limits.leak_per_s)
    assert math.floor(expected) <= rounds <= math.ceil(expected), rounds
    stats = node.core.holder.ask_scores.stats(node.now)["mallory"]
    assert stats["backoffs"] == 1 and stats["ignored"] == 1
    assert stats["expired"] == rounds
    assert not node.core.holder.reservations
    # Honest askers are not affected.
    assert isinstance(node.ask("honest", "real"), Bid)
    # The backoff ends; a repeat offender waits twice as long.
    node.now += limits.backoff + 1
    assert node.ask("mallory", "again") is not None
    for i in range(100):
        node.expire_all()
        if node.ask("mallory", f"more-{i}") is None:
            break
    stats = node.core.holder.ask_scores.stats(node.now)["mallory"]
    assert stats["backoffs"] == 2
    assert stats["ignored_for_s"] == pytest.approx(2 * limits.backoff, abs=1)


def test_without_the_score_invented_asks_are_answered_forever() -> None:
    node = Bidder(AskLimits(threshold=math.inf))
    for i in range(100):
        assert node.ask("mallory", f"fake-{i}") is not None
        node.expire_all()


def test_released_asks_do_not_count() -> None:
    node = Bidder()
    for i in range(100):
        assert isinstance(node.ask("owner", f"job-{i}"), Bid)
        node.reject("owner", f"job-{i}")  # an honest auction: lost, and released
        node.now += 0.1
    assert node.core.holder.ask_scores.stats(node.now)["owner"]["expired"] == 0


def test_score_leaks_and_closures_take_it_back() -> None:
    scores = AskScores(AskLimits(threshold=3.0, leak_per_s=0.5))
    assert not scores.expired("p", 0.0)
    assert not scores.expired("p", 0.0)
    scores.closed("p", 0.0)  # score 1
    assert not scores.expired("p", 0.0)  # 2
    assert not scores.expired("p", 2.0)  # leaked 1: back to 2
    assert scores.expired("p", 2.0) == 60.0  # 3: backoff
    assert scores.ignoring("p", 61.9) and not scores.ignoring("p", 62.0)


@pytest.mark.parametrize("credit", [True, False])
def test_honest_owner_losing_frames_is_never_ignored(
    credit: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An owner whose auctions lose 30% of their bids and rejections: its asks
    expire now and then, but it is never put in backoff and every job runs.
    Without the credit for closed auctions and the leak, it would be."""
    net = ProtoNet(["a", "b", "c"], owners_only=frozenset({"a"}))
    if not credit:
        monkeypatch.setattr(AskScores, "closed", lambda self, asker, now: None)
        for node in ("b", "c"):
            net.core(node).holder.ask_scores.limits = AskLimits(leak_per_s=0.0)
    rng = random.Random(7)
    net.drop = lambda f: isinstance(f.message, (Bid, BidRejected)) and rng.random() < 0.3
    net.run_for(1.0)
    jobs = [f"j{i}" for i in range(120)]
    for job_id in jobs:
        net.feed("a", SubmitJob(job_id, batch_spec(count=2)))
        net.run_for(0.5)
        for node, exec_id in net.running_anywhere():
            net.finish(node, exec_id)
    for _ in range(300):  # the executions the last rounds granted
        if all(net.job_state("a", j) != "running" for j in jobs):
            break
        net.run_for(1.0)
        for node, exec_id in net.running_anywhere():
            net.finish(node, exec_id)
    expired = sum(
        net.core(n).holder.ask_scores.stats(net.now).get("a", {}).get("expired", 0)
        for n in ("b", "c")
    )
    assert expired > 10  # the loss did leave reservations to expire
    if credit:
        assert not net.notes_of("asker_ignored")
        assert all(net.job_state("a", j) == "completed" for j in jobs)
    else:
        assert net.notes_of("asker_ignored")
