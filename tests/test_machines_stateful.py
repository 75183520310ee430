"""Hypothesis drives the node cores through random orders, losses, duplicates,
crashes and restarts; the safety rules must hold after every step."""

from __future__ import annotations

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from protocols import codec
from protocols.config import Timings
from protocols.events import MessageReceived, Persist, Send, SubmitJob, TimerFired
from protocols.messages import LeaseGrant
from tests.protonet import ProtoNet, batch_spec

IDS = ["a", "b", "c", "d"]


class ProtocolMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.net = ProtoNet(IDS, timings=Timings(lease_ttl=3.0, lease_grace=1.0, bid_window=0.3))
        self.net.run_for(1.0)
        self.jobs = 0
        self.checked_batches = 0
        self.last_epoch: dict[tuple[str, int], int] = {}
        self.granted: set[str] = set()

    # --- what the world can do -------------------------------------------------------

    @precondition(lambda self: self.jobs < 3)
    @rule(owner=st.sampled_from(IDS), count=st.integers(1, 3))
    def submit(self, owner: str, count: int) -> None:
        if self.net.cores[owner] is None:
            return
        self.jobs += 1
        self.net.feed(owner, SubmitJob(f"j{self.jobs}", batch_spec(count=count)))

    @precondition(lambda self: bool(self.net.inflight))
    @rule(data=st.data(), mode=st.sampled_from(["deliver", "deliver", "drop", "duplicate"]))
    def frame(self, data: st.DataObject, mode: str) -> None:
        i = data.draw(st.integers(0, len(self.net.inflight) - 1))
        frame = self.net.inflight[i]
        if mode != "duplicate":
            del self.net.inflight[i]
        if mode == "drop":
            return
        self.net.now = max(self.net.now, frame.at)
        self.net.feed(frame.dest, MessageReceived(frame.sender, frame.data, frame.topic))

    @rule(steps=st.integers(1, 40))
    def advance(self, steps: int) -> None:
        """Let the network run normally for a while (frames in order, timers due)."""
        for _ in range(steps):
            if not self.net.step():
                break

    @rule(data=st.data())
    def timer(self, data: st.DataObject) -> None:
        pending = sorted(
            (at, node, repr(key), key)
            for node, timers in self.net.timers.items()
            if self.net.cores[node] is not None
            for key, at in timers.items()
        )
        if not pending:
            return
        # Mostly the earliest timer, sometimes a later one (time jumps ahead).
        at, node, _, key = pending[min(data.draw(st.integers(0, 3)), len(pending) - 1)]
        self.net.now = max(self.net.now, at)
        del self.net.timers[node][key]
        self.net.feed(node, TimerFired(key))

    @precondition(lambda self: bool(self.net.running_anywhere()))
    @rule(data=st.data(), ok=st.booleans())
    def finish(self, data: st.DataObject, ok: bool) -> None:
        node, exec_id = data.draw(st.sampled_from(self.net.running_anywhere()))
        self.net.finish(node, exec_id, "succeeded" if ok else "failed", 0 if ok else 1)

    @rule(node=st.sampled_from(IDS))
    def crash_or_restart(self, node: str) -> None:
        if self.net.cores[node] is None:
            self.net.start(node)
        else:
            self.net.crash(node)

    # --- what must always hold ----------------------------------------------------------

    @invariant()
    def at_most_one_accepted_result_per_slot(self) -> None:
        seen = [(r["job_id"], r["slot"]) for r in self.net.notes_of("result_accepted")]
        assert len(seen) == len(set(seen)), f"two accepted results: {seen}"

    @invariant()
    def every_grant_follows_a_persisted_epoch_bump(self) -> None:
        for _node, actions in self.net.actions[self.checked_batches :]:
            persisted: dict[str, int] = {}
            for action in actions:
                if isinstance(action, Persist) and action.table == "slots" and action.value:
                    persisted[action.key] = action.value["epoch"]
                if isinstance(action, Send):
                    msg = codec.decode(action.data).message
                    if isinstance(msg, LeaseGrant) and msg.execution_id not in self.granted:
                        self.granted.add(msg.execution_id)  # retransmissions are not new grants
                        key = f"{msg.job_id}/{msg.slot}"
                        assert persisted.get(key) == msg.epoch, "grant without persisted epoch"
                        slot = (msg.job_id, msg.slot)
                        assert msg.epoch > self.last_epoch.get(slot, 0), "epoch did not increase"
                        self.last_epoch[slot] = msg.epoch
        self.checked_batches = len(self.net.actions)


ProtocolMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestProtocolMachine = ProtocolMachine.TestCase
