"""Live logs, times and history in the sans-IO cores (no I/O, virtual time).

The sending and receiving sides alone (``protocols/logs.py``): ordering,
duplicates, gaps filled by retransmission or reported as lost, bounds.  Then
through real node cores on the hand-cranked network: chunks lost,
duplicated and reordered, fencing by epoch and holder, and the owner's
history and times, persisted across a restart.
"""

from __future__ import annotations

import random

import attrs
import pytest

from protocols import codec
from protocols.events import ExecutionOutput, MessageReceived, SubmitJob
from protocols.logs import (
    MAX_PENDING,
    MAX_UNACKED,
    ExecutionLog,
    LogSender,
    StreamReceiver,
    lost_marker,
)
from protocols.messages import MAX_LOG_CHUNK, LeaseRenew, LogAck, LogChunk
from protocols.owner.base import MAX_HISTORY
from tests.protonet import WALL_EPOCH, Frame, ProtoNet, batch_spec

IDS = ["a", "b", "c"]
REMOTE = frozenset({"a"})  # "a" owns but does not compute: its holders are remote


def _delivered(receiver: StreamReceiver, chunks: list[LogChunk]) -> bytes:
    return b"".join(data for chunk in chunks for data, _ in receiver.receive(chunk))


# --- the two sides alone ---------------------------------------------------------------


def test_chunks_are_bounded_numbered_and_positioned() -> None:
    sender = LogSender("j/0/1", 1, "stdout")
    data = bytes(range(256)) * 100  # 25,600 bytes: four chunks
    chunks = sender.write(data)
    assert [c.seq for c in chunks] == [1, 2, 3, 4]
    assert all(len(c.data) <= MAX_LOG_CHUNK for c in chunks)
    assert [c.offset for c in chunks] == [0, 8192, 16384, 24576]
    assert b"".join(c.data for c in chunks) == data


def test_reordered_and_duplicated_chunks_arrive_once_in_order() -> None:
    sender = LogSender("j/0/1", 1, "stdout")
    chunks = [c for i in range(40) for c in sender.write(f"line {i}\n".encode())]
    shuffled = chunks + chunks[::3]  # every third one twice
    random.Random(7).shuffle(shuffled)
    receiver = StreamReceiver()
    assert _delivered(receiver, shuffled) == b"".join(f"line {i}\n".encode() for i in range(40))
    assert receiver.acked_seq == 40 and receiver.lost == 0


def test_a_gap_waits_for_the_retransmission() -> None:
    sender = LogSender("j/0/1", 1, "stdout")
    first, _lost_for_now, third = (sender.write(t)[0] for t in (b"a", b"b", b"c"))
    receiver = StreamReceiver()
    assert _delivered(receiver, [first, third]) == b"a"  # the second is still kept: wait
    assert receiver.acked_seq == 1
    sender.acked(receiver.acked_seq)
    assert [c.seq for c in sender.retransmit()] == [2, 3]
    assert _delivered(receiver, sender.retransmit()) == b"bc"
    assert receiver.lost == 0


def test_a_chunk_the_holder_let_go_is_reported_lost_in_bytes() -> None:
    sender = LogSender("j/0/1", 1, "stdout")
    piece = b"x" * MAX_LOG_CHUNK
    sent = [c for _ in range(MAX_UNACKED // MAX_LOG_CHUNK + 2) for c in sender.write(piece)]
    assert sender.unacked_bytes <= MAX_UNACKED  # the buffer stays bounded ...
    assert sender.first_seq == 3  # ... so the first two are gone for good
    receiver = StreamReceiver()
    # The first chunk arrived; the second was lost; the rest arrive.
    out = _delivered(receiver, [sent[0], *sender.retransmit()])
    assert out == piece + lost_marker(MAX_LOG_CHUNK) + piece * (len(sent) - 2)
    assert receiver.lost == MAX_LOG_CHUNK


def test_bytes_the_driver_skipped_are_reported_lost() -> None:
    sender = LogSender("j/0/1", 1, "stderr")
    chunks = sender.write(b"head\n") + sender.write(b"tail\n", skipped=1234)
    assert _delivered(StreamReceiver(), chunks) == b"head\n" + lost_marker(1234) + b"tail\n"


def test_the_receiver_holds_a_bounded_number_of_early_chunks() -> None:
    sender = LogSender("j/0/1", 1, "stdout")
    chunks = [sender.write(b"%d," % i)[0] for i in range(MAX_PENDING + 10)]
    receiver = StreamReceiver()
    out = _delivered(receiver, chunks[1:])  # the first never comes
    assert len(receiver.pending) <= MAX_PENDING
    assert out.startswith(lost_marker(2) + b"1,2,")  # given up on: the rest flows


def test_the_execution_log_is_bounded_and_readable_from_a_number() -> None:
    log = ExecutionLog()
    sender = LogSender("j/0/1", 1, "stdout")
    for _ in range(200):
        for chunk in sender.write(b"y" * MAX_LOG_CHUNK):
            log.receive(chunk)
    assert log.kept <= 1024 * 1024 + MAX_LOG_CHUNK and log.first > 0
    newest = log.since(log.end - 1)
    assert [(stream, offset) for stream, offset, _ in newest] == [("stdout", 200 * MAX_LOG_CHUNK)]


# --- through node cores ------------------------------------------------------------------


def _running(net: ProtoNet, spec: dict | None = None) -> tuple[str, str]:
    net.run_for(1.0)  # peer exchange
    net.feed("a", SubmitJob("j1", spec or batch_spec()))
    net.run_until(lambda: bool(net.running_anywhere()))
    ((holder, exec_id),) = net.running_anywhere()
    return holder, exec_id


def _output(net: ProtoNet, holder: str, exec_id: str, text: str, stream: str = "stdout") -> None:
    net.feed(holder, ExecutionOutput(exec_id, stream, text.encode()))


def _live(net: ProtoNet, exec_id: str) -> dict[str, bytes]:
    log = net.core("a").owner.execution_log(exec_id)
    assert log is not None
    out: dict[str, bytes] = {}
    for stream, _, data in log.since(0):
        out[stream] = out.get(stream, b"") + data
    return out


def _chaotic_run(net: ProtoNet) -> tuple[str, list[str]]:
    """Output of a running execution over a network losing 30% of the log
    frames, duplicating and reordering others; returns (execution, lines)."""
    holder, exec_id = _running(net)
    rng = random.Random(3)

    def chaos(frame: Frame) -> bool:
        return isinstance(frame.message, (LogChunk, LogAck)) and rng.random() < 0.3

    net.drop = chaos
    lines = [f"out {i}\n" for i in range(60)]
    for line in lines:
        _output(net, holder, exec_id, line)
        _output(net, holder, exec_id, line.upper(), "stderr")
        if rng.random() < 0.3 and net.inflight:  # duplicate and reorder what is in flight
            net.inject(rng.choice(net.inflight))
        net.run_for(0.05)
    net.drop = lambda frame: False
    net.run_for(5.0)  # renewals carry the retransmissions
    return exec_id, lines


def test_output_survives_loss_duplication_and_reordering() -> None:
    net = ProtoNet(IDS, owners_only=REMOTE)
    exec_id, lines = _chaotic_run(net)
    assert _live(net, exec_id) == {
        "stdout": "".join(lines).encode(),
        "stderr": "".join(lines).upper().encode(),
    }
    assert net.notes_of("log_output")


def test_without_retransmission_the_same_run_loses_output(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted bug the previous test must catch: no retransmission."""
    monkeypatch.setattr(LogSender, "retransmit", lambda self: [])
    net = ProtoNet(IDS, owners_only=REMOTE)
    exec_id, lines = _chaotic_run(net)
    live = _live(net, exec_id) if net.core("a").owner.execution_log(exec_id) else {}
    assert live.get("stdout") != "".join(lines).encode()


def test_the_owner_fences_chunks_by_holder_and_epoch() -> None:
    net = ProtoNet(IDS, owners_only=REMOTE)
    holder, exec_id = _running(net)
    owner = net.core("a")
    stranger = next(i for i in IDS if i not in ("a", holder))
    chunk = LogChunk(
        execution_id=exec_id, epoch=1, stream="stdout", seq=1, first_seq=1, offset=0, data=b"x"
    )
    # From a node that does not hold the execution: dropped and counted against it.
    frame = codec.encode(chunk, msg_id=f"{stranger}:9:1", sender=stranger)
    net.feed("a", MessageReceived(stranger, frame))
    assert owner.dropped.get(stranger) == 1 and owner.owner.execution_log(exec_id) is None
    # From the holder with a stale epoch: refused, and told to stop sending.
    slot = owner.owner.jobs["j1"].slots[0]
    slot.epoch += 1  # (as after a re-grant)
    slot.current.epoch = slot.epoch  # type: ignore[union-attr]
    stale = attrs.evolve(chunk, seq=2)
    frame = codec.encode(stale, msg_id=f"{holder}:9:2", sender=holder)
    actions = net.feed("a", MessageReceived(holder, frame))
    acks = [codec.decode(a.data).message for a in actions if hasattr(a, "data")]
    assert [(type(m), m.valid) for m in acks] == [(LogAck, False)]
    assert owner.owner.execution_log(exec_id) is None


def test_a_refused_holder_sends_no_more_output() -> None:
    net = ProtoNet(IDS, owners_only=REMOTE)
    holder, exec_id = _running(net)
    held = net.core(holder).holder.held[exec_id]
    ack = LogAck(execution_id=exec_id, epoch=held.epoch, stream="stdout", seq=0, valid=False)
    net.core(holder).holder.on_log_ack("a", ack)
    sent = net.feed(holder, ExecutionOutput(exec_id, "stdout", b"after\n"))
    assert not [a for a in sent if hasattr(a, "data")]


@pytest.mark.parametrize("restart", [False, True])
def test_history_and_times_of_a_job(restart: bool) -> None:
    net = ProtoNet(IDS, owners_only=REMOTE)
    holder, exec_id = _running(net)
    net.run_for(2.0)
    net.finish(holder, exec_id)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")
    if restart:
        net.crash("a")
        net.start("a")
    owner = net.core("a").owner
    events = owner.history["j1"]
    assert [e["event"] for e in events] == [
        *("submitted", "auctioned", "leased", "started", "result", "completed")
    ]
    assert events[2]["node"] == holder and events[2]["slot"] == 0
    at = [e["at_ms"] for e in events]
    assert at == sorted(at) and at[0] >= WALL_EPOCH * 1000
    view = net.core("a").describe("j1")
    execution = view["slots"][0]["executions"][0]
    for part in (view, view["slots"][0], execution):
        assert part["started_at"] and part["finished_at"] and part["duration_s"] >= 2.0, part
    assert view["submitted_at"].endswith("Z")


def test_a_lost_holder_shows_as_lost_then_retried() -> None:
    net = ProtoNet(IDS, owners_only=REMOTE)
    holder, _ = _running(net)
    net.crash(holder)
    net.run_until(lambda: any(e["event"] == "retried" for e in net.core("a").owner.history["j1"]))
    names = [e["event"] for e in net.core("a").owner.history["j1"]]
    lost = names.index("lost")
    assert names[lost + 1] == "retried"
    assert net.core("a").owner.history["j1"][lost]["node"] == holder


def test_history_is_bounded_and_keeps_its_first_event() -> None:
    net = ProtoNet(IDS, owners_only=REMOTE)
    _running(net)
    owner = net.core("a").owner
    for i in range(MAX_HISTORY * 2):
        owner.note("j1", "renewed_late", slot=0, detail=str(i))
    events = owner.history["j1"]
    assert len(events) == MAX_HISTORY
    assert events[0]["event"] == "submitted" and events[-1]["detail"] == str(MAX_HISTORY * 2 - 1)


def test_a_renewal_inside_the_grace_is_noted_late() -> None:
    net = ProtoNet(IDS, owners_only=REMOTE)
    holder, _ = _running(net)
    net.run_for(1.0)
    held_back: list[Frame] = []

    def hold(frame: Frame) -> bool:
        if isinstance(frame.message, LeaseRenew) and frame.sender == holder:
            held_back.append(frame)
            return True
        return False

    net.drop = hold
    slot = net.core("a").owner.jobs["j1"].slots[0]
    # Past the ttl since the last renewal the owner got, inside the grace.
    net.run_for(slot.lease_expires - net.timings.lease_grace / 2 - net.now)
    net.drop = lambda frame: False
    assert held_back
    net.inject(held_back[-1])  # a renewal the network delayed
    events = net.core("a").owner.history["j1"]
    late = [e for e in events if e["event"] == "renewed_late"]
    assert len(late) == 1 and late[0]["node"] == holder, events
    assert "past the lease ttl" in late[0]["detail"]


def test_output_trailing_a_forgotten_job_is_refused_not_counted() -> None:
    net = ProtoNet(IDS, owners_only=REMOTE)
    holder, exec_id = _running(net)
    owner = net.core("a")
    owner.owner.forget("j1")  # (a finished micro-batch or cron run)
    chunk = LogChunk(
        execution_id=exec_id, epoch=1, stream="stdout", seq=1, first_seq=1, offset=0, data=b"x"
    )
    frame = codec.encode(chunk, msg_id=f"{holder}:9:1", sender=holder)
    actions = net.feed("a", MessageReceived(holder, frame))
    acks = [codec.decode(a.data).message for a in actions if hasattr(a, "data")]
    assert [(type(m), m.valid) for m in acks] == [(LogAck, False)]
    assert holder not in owner.dropped
