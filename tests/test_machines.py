"""The owner and holder machines under the cases that break naive designs."""

from __future__ import annotations

import pytest

from protocols import codec
from protocols.config import NodeConfig, Timings
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.events import CancelJob, MessageReceived, Persist, Send, Started, SubmitJob
from protocols.messages import (
    AskForBid,
    Bid,
    Cancel,
    ExecutionResult,
    LeaseAccept,
    LeaseGrant,
    RenewAck,
    ResultAck,
)
from protocols.node import NodeCore
from protocols.states import (
    ExecEvent,
    ExecState,
    SlotEvent,
    SlotState,
    check_exec_transition,
    check_slot_transition,
)
from tests.protonet import ProtoNet, batch_spec

IDS = ["a", "b", "c"]
REMOTE = frozenset({"a"})  # "a" owns but does not compute: its holders are remote


def submitted(
    net: ProtoNet, spec: dict | None = None, job_id: str = "j1", owner: str = "a"
) -> None:
    net.run_for(1.0)  # let peer exchange settle
    net.feed(owner, SubmitJob(job_id, spec or batch_spec()))


def wait_running(net: ProtoNet, n: int = 1) -> list[tuple[str, str]]:
    net.run_until(lambda: len(net.running_anywhere()) >= n)
    return net.running_anywhere()


def accepted(net: ProtoNet, job_id: str = "j1") -> list[dict]:
    return [r for r in net.notes_of("result_accepted") if r["job_id"] == job_id]


def test_happy_path_spreads_slots_and_completes_once() -> None:
    net = ProtoNet(IDS)
    submitted(net, batch_spec(count=3))
    running = wait_running(net, 3)
    assert len({node for node, _ in running}) == 3  # siblings spread over nodes
    for node, exec_id in running:
        net.finish(node, exec_id)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")
    assert sorted(r["slot"] for r in accepted(net)) == [0, 1, 2]


def test_epoch_is_persisted_before_the_grant_is_sent() -> None:
    net = ProtoNet(IDS)
    submitted(net)
    wait_running(net)
    for _, actions in net.actions:
        for i, action in enumerate(actions):
            if isinstance(action, Send):
                msg = codec.decode(action.data).message
                if isinstance(msg, LeaseGrant):
                    earlier = [
                        a
                        for a in actions[:i]
                        if isinstance(a, Persist)
                        and a.table == "slots"
                        and a.value is not None
                        and a.value["epoch"] == msg.epoch
                    ]
                    assert earlier, "grant sent without a persisted epoch bump"


def test_lost_grant_is_retransmitted() -> None:
    net = ProtoNet(IDS)
    lost = []

    def drop_first_grant(frame) -> bool:
        if isinstance(frame.message, LeaseGrant) and not lost:
            lost.append(frame)
            return True
        return False

    net.drop = drop_first_grant
    submitted(net)
    [(node, exec_id)] = wait_running(net)
    assert lost and exec_id == lost[0].message.execution_id  # same lease, not a new epoch
    net.finish(node, exec_id)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")


def test_duplicate_grant_starts_one_execution() -> None:
    net = ProtoNet(IDS)
    submitted(net)
    net.run_until(lambda: bool(net.frames(LeaseGrant)))
    grant = net.frames(LeaseGrant)[0]
    [(node, exec_id)] = wait_running(net)
    net.inject(grant)
    net.inject(grant)
    assert net.running_anywhere() == [(node, exec_id)]
    net.finish(node, exec_id)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")
    assert len(accepted(net)) == 1


def test_grant_to_a_node_that_is_gone_is_re_auctioned() -> None:
    net = ProtoNet(IDS, owners_only=REMOTE)
    submitted(net, owner="a")
    net.run_until(lambda: bool(net.frames(LeaseGrant)))
    winner = net.frames(LeaseGrant)[0].dest
    net.crash(winner)
    net.run_until(lambda: any(n != winner for n, _ in net.running_anywhere()))
    [(node, exec_id)] = net.running_anywhere()
    assert exec_id.endswith("/2")  # new epoch
    net.finish(node, exec_id)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")
    slot = net.core("a").describe("j1")["slots"][0]
    assert [e["state"] for e in slot["executions"]] == ["expired", "succeeded"]
    assert slot["lost"] == 1 and slot["failures"] == 0


def test_late_result_from_superseded_epoch_is_ignored() -> None:
    net = ProtoNet(IDS, owners_only=REMOTE)
    submitted(net, owner="a", spec=batch_spec())
    [(old_node, old_exec)] = wait_running(net)
    # Cut the holder off; it fences itself, the owner re-grants elsewhere.
    net.partition("a", old_node)
    net.run_until(lambda: any(e != old_exec for _, e in net.running_anywhere()))
    assert net.notes_of("execution_fenced")[0]["execution_id"] == old_exec
    assert (old_node, old_exec) not in net.running_anywhere()
    [(new_node, new_exec)] = net.running_anywhere()
    # The old holder's result arrives after all (e.g. a delayed frame).
    late = ExecutionResult(execution_id=old_exec, epoch=1, status="succeeded")
    data = codec.encode(late, msg_id=f"{old_node}:9:1", sender=old_node)
    net.heal()
    net.feed("a", MessageReceived(old_node, data))
    assert net.notes_of("result_ignored")[0]["execution_id"] == old_exec
    assert accepted(net) == []
    net.finish(new_node, new_exec)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")
    assert [r["epoch"] for r in accepted(net)] == [2]


def test_holder_still_running_after_expiry_stops_itself_within_ttl() -> None:
    timings = Timings(lease_ttl=6.0, lease_grace=2.0)
    net = ProtoNet(IDS, timings=timings, owners_only=REMOTE)
    submitted(net)
    [(node, exec_id)] = wait_running(net)
    cut_at = net.now
    net.partition("a", node)
    net.run_until(lambda: (node, exec_id) not in net.running_anywhere())
    assert net.now <= cut_at + timings.lease_ttl + timings.lease_grace
    assert net.notes_of("execution_fenced")


def test_cancel_during_the_auction() -> None:
    net = ProtoNet(IDS)
    submitted(net)
    net.feed("a", CancelJob("j1"))
    net.run_for(5)
    assert net.job_state("a", "j1") == "stopped"
    assert net.running_anywhere() == []
    assert not net.notes_of("lease_granted")


def test_cancel_during_the_run_stops_the_holder() -> None:
    net = ProtoNet(IDS)
    submitted(net)
    wait_running(net)
    net.feed("a", CancelJob("j1", reason="user said so"))
    net.run_until(lambda: net.running_anywhere() == [])
    assert net.job_state("a", "j1") == "stopped"
    assert net.core("a").describe("j1")["reason"] == "user said so"
    net.run_for(30)
    assert accepted(net) == []


def test_retries_exhausted_fails_with_reason_and_avoids_failed_nodes() -> None:
    net = ProtoNet(IDS)
    submitted(net)
    nodes = []
    for _ in range(3):
        [(node, exec_id)] = wait_running(net)
        nodes.append(node)
        net.finish(node, exec_id, status="failed", exit_code=3)
    net.run_until(lambda: net.job_state("a", "j1") == "failed")
    assert len(set(nodes)) == 3  # each retry went to a node that had not failed it
    reason = net.core("a").describe("j1")["reason"]
    assert "exit code 3" in reason and "attempt 3 of 3" in reason


def test_no_matching_node_fails_fast_with_reason() -> None:
    net = ProtoNet(IDS, labels={"b": {"zone": "a"}})
    submitted(net, batch_spec(labels={"zone": "mars"}))
    net.run_until(lambda: net.job_state("a", "j1") == "failed", limit=30)
    reason = net.core("a").describe("j1")["reason"]
    assert "no node matches" in reason and "mars" in reason


def test_constraint_is_honoured() -> None:
    net = ProtoNet(IDS, labels={"c": {"zone": "b"}})
    submitted(net, batch_spec(count=2, labels={"zone": "b"}))
    running = wait_running(net, 2)
    assert {n for n, _ in running} == {"c"}


def test_rogue_grant_and_cancel_are_dropped() -> None:
    net = ProtoNet(IDS)
    submitted(net)
    [(node, exec_id)] = wait_running(net)
    rogue = "mallory"
    grant = LeaseGrant(
        execution_id="jx/0/1",
        job_id="jx",
        slot=0,
        attempt=1,
        epoch=1,
        ttl_ms=10_000,
        timeout_ms=10_000,
        task=batch_spec()["task"],
    )
    cancel = Cancel(execution_id=exec_id, epoch=1, reason="haha")
    for i, msg in enumerate([grant, cancel]):
        net.feed(node, MessageReceived(rogue, codec.encode(msg, msg_id=f"m:{i}", sender=rogue)))
    assert net.running_anywhere() == [(node, exec_id)]
    assert net.core(node).dropped[rogue] == 2


def test_forged_sender_and_rogue_result_are_dropped() -> None:
    net = ProtoNet(IDS)
    submitted(net)
    [(node, exec_id)] = wait_running(net)
    other = next(i for i in IDS if i not in (node, "a"))
    forged = codec.encode(ExecutionResult(execution_id=exec_id, epoch=1), msg_id="x:1", sender=node)
    net.feed("a", MessageReceived(other, forged))  # envelope says `node`, signature says `other`
    honest = codec.encode(
        ExecutionResult(execution_id=exec_id, epoch=1), msg_id="x:2", sender=other
    )
    net.feed("a", MessageReceived(other, honest))  # `other` does not hold the lease
    assert accepted(net) == []
    assert net.core("a").dropped[other] == 2
    assert net.job_state("a", "j1") == "running"


def test_replayed_frame_is_ignored() -> None:
    net = ProtoNet(IDS)
    submitted(net)
    net.run_until(lambda: bool(net.frames(LeaseAccept)))
    frame = net.frames(LeaseAccept)[0]
    net.inject(frame)
    before = net.core(frame.dest).duplicates
    net.inject(frame)
    assert net.core(frame.dest).duplicates == before + 1


def test_garbage_frames_never_crash_a_node() -> None:
    net = ProtoNet(IDS)
    for data in [
        b"",
        b"\xff" * 10,
        b"\x80",
        codec.encode(Bid(job_id="j", slot=0, attempt=1), msg_id="1", sender="z")[:-3],
    ]:
        net.feed("a", MessageReceived("z", data))
    assert net.core("a").dropped["z"] == 4


def test_owner_restart_resumes_from_its_store() -> None:
    net = ProtoNet(IDS, owners_only=REMOTE)
    submitted(net, owner="a")
    [(node, exec_id)] = wait_running(net)
    net.crash("a")
    net.run_for(3)  # less than the ttl: the holder keeps its lease
    net.start("a")
    net.run_for(20)  # renewals reach the restarted owner again
    assert (node, exec_id) in net.running_anywhere()
    net.finish(node, exec_id)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")
    assert [r["epoch"] for r in accepted(net)] == [1]


def test_owner_down_longer_than_ttl_regrants_with_higher_epoch() -> None:
    net = ProtoNet(IDS)
    submitted(net, owner="a")
    [(node, exec_id)] = wait_running(net)
    net.crash("a")
    net.run_for(30)
    assert (node, exec_id) not in net.running_anywhere()  # holder fenced itself
    net.start("a")
    net.run_until(lambda: bool(net.running_anywhere()))
    [(node2, exec2)] = net.running_anywhere()
    assert exec2 == "j1/0/2"
    net.finish(node2, exec2)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")


def test_holder_restart_reports_lost_execution() -> None:
    net = ProtoNet(IDS, owners_only=REMOTE)
    submitted(net, owner="a")
    [(node, exec_id)] = wait_running(net)
    net.crash(node)
    net.start(node)
    net.run_until(lambda: bool(net.notes_of("lease_ended")))
    [ended] = net.notes_of("lease_ended")  # reported lost at once, not waited out
    assert (ended["execution_id"], ended["cause"]) == (exec_id, "released")
    assert not net.notes_of("execution_failed")  # lost, not failed: no retry used
    [(node2, exec2)] = wait_running(net)
    net.finish(node2, exec2)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")


def test_local_errors() -> None:
    net = ProtoNet(IDS)
    with pytest.raises(LocalProtocolError):
        net.feed("a", CancelJob("nope"))
    net.feed("a", SubmitJob("j1", batch_spec()))
    with pytest.raises(LocalProtocolError):
        net.feed("a", SubmitJob("j1", batch_spec()))


def test_transition_tables_reject_illegal_moves() -> None:
    with pytest.raises(RemoteProtocolError):
        check_slot_transition(SlotState.COMPLETED, SlotEvent.SUCCEEDED, SlotState.COMPLETED)
    with pytest.raises(LocalProtocolError):
        check_slot_transition(SlotState.QUEUED, SlotEvent.START, SlotState.COMPLETED)
    with pytest.raises(RemoteProtocolError):
        check_exec_transition(ExecState.DONE, ExecEvent.GRANT, ExecState.RUNNING)
    assert (
        check_slot_transition(SlotState.BIDDING, SlotEvent.CLOSE, SlotState.GRANTED)
        is SlotState.GRANTED
    )


def test_stale_renewal_is_refused() -> None:
    net = ProtoNet(IDS)
    submitted(net)
    [(node, exec_id)] = wait_running(net)
    net.finish(node, exec_id)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")
    renew = codec.encode(
        LeaseAccept(execution_id=exec_id, epoch=1, seq=99), msg_id=f"{node}:7:7", sender=node
    )
    acts = net.feed("a", MessageReceived(node, renew))
    acks = [codec.decode(a.data).message for a in acts if isinstance(a, Send)]
    assert any(isinstance(m, RenewAck) and not m.valid for m in acks)


def test_unsolicited_bid_is_dropped() -> None:
    net = ProtoNet([*IDS, "d"])
    submitted(net)
    net.run_until(lambda: bool(net.frames(AskForBid)))
    ask = net.frames(AskForBid)[0].message
    asked = {f.dest for f in net.frames(AskForBid)}
    stranger = next(i for i in ["b", "c", "d"] if i not in asked)
    bid = Bid(job_id="j1", slot=0, attempt=ask.attempt, free_cpu=100)
    net.feed("a", MessageReceived(stranger, codec.encode(bid, msg_id="s:1", sender=stranger)))
    assert net.core("a").dropped.get(stranger) == 1


def test_result_ack_only_from_granting_owner() -> None:
    net = ProtoNet(IDS)
    submitted(net)
    [(node, exec_id)] = wait_running(net)
    net.finish(node, exec_id)
    other = next(i for i in IDS if i not in (node, "a"))
    ack = codec.encode(ResultAck(execution_id=exec_id, epoch=1), msg_id="o:1", sender=other)
    net.feed(node, MessageReceived(other, ack))
    assert net.core(node).dropped.get(other) == 1


def test_invalid_task_from_a_peer_is_refused() -> None:
    net = ProtoNet(IDS)
    net.run_for(1.0)
    # The ask only carries requirements, so it gets a bid; the task arrives with
    # the grant, which is validated as strictly as a local spec: released, never run.
    ask = AskForBid(
        job_id="jz", slot=0, attempt=2, engine="sim", cpu=0.5, memory=2**28, bid_window_ms=500
    )
    net.feed("b", MessageReceived("c", codec.encode(ask, msg_id="c:9:2", sender="c")))
    bad_task = batch_spec()["task"] | {"timeout": -5}
    grant = LeaseGrant(
        execution_id="jz/0/1",
        job_id="jz",
        slot=0,
        attempt=2,
        epoch=1,
        ttl_ms=10_000,
        timeout_ms=10_000,
        task=bad_task,
    )
    acts = net.feed("b", MessageReceived("c", codec.encode(grant, msg_id="c:9:3", sender="c")))
    replies = [codec.decode(a.data).message for a in acts if isinstance(a, Send)]
    assert [type(m).__name__ for m in replies] == ["LeaseRelease"]
    assert "timeout" in replies[0].reason
    assert net.running["b"] == {}


def test_owner_refuses_an_invalid_spec_and_fills_defaults() -> None:
    net = ProtoNet(IDS)
    with pytest.raises(LocalProtocolError, match="count"):
        net.feed("a", SubmitJob("j0", batch_spec(count=0)))
    net.feed("a", SubmitJob("j1", {"name": "x", "task": {"engine": {"type": "sim"}}}))
    assert net.core("a").owner.jobs["j1"].unit.timeout == 1800  # the 30m default


def test_retransmitted_result_after_a_lost_ack_is_re_acked_quietly() -> None:
    net = ProtoNet(IDS, owners_only=REMOTE)
    submitted(net)
    [(node, exec_id)] = wait_running(net)
    net.drop = lambda f: isinstance(f.message, ResultAck)  # every ack lost for a while
    net.finish(node, exec_id)
    net.run_for(2.0)  # the holder retransmits its result
    net.drop = lambda f: False
    net.run_until(lambda: not net.core(node).holder.held)
    assert len(accepted(net)) == 1
    assert net.notes_of("result_ignored") == []


def test_restarted_node_rejoins_through_remembered_peers() -> None:
    net = ProtoNet(IDS)
    net.run_for(40.0)  # a gossip round persists the view
    records = net.stores["a"]
    assert {p["node_id"] for p in records["view"]["peers"]["peers"]} == {"b", "c"}
    lonely = NodeCore(NodeConfig(node_id="a"), 1, records)  # no bootstrap configured
    actions = lonely.handle(Started(), 0.0)
    hellos = [a.to for a in actions if isinstance(a, Send)]
    assert sorted(hellos) == ["b", "c"]


def test_a_result_outlives_the_lease_while_its_owner_restarts() -> None:
    """The owner is down longer than the lease when the execution ends: the
    holder keeps offering the result and the restarted owner takes it, so the
    work does not run twice."""
    net = ProtoNet(["a", "b"], owners_only=frozenset({"a"}))
    net.run_for(1.0)
    net.feed("a", SubmitJob("j1", batch_spec()))
    net.run_until(lambda: bool(net.running["b"]), limit=10)
    (exec_id,) = list(net.running["b"])
    net.crash("a")
    net.finish("b", exec_id)
    net.run_for(net.timings.lease_ttl * 2)  # b's lease lapsed long ago
    net.start("a")
    net.run_until(lambda: net.job_state("a", "j1") == "completed", limit=net.now + 60)
    slot = net.core("a").owner.jobs["j1"].slots[0]
    assert slot.epoch == 1 and len(slot.executions) == 1
    net.run_for(1.0)  # the ack reaches b
    assert net.core("b").holder.held == {}
