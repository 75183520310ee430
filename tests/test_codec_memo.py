"""Remembered frame bodies decode exactly like the full path (issue 16, simnet core).

``protocols.codec.decode`` skips unpacking and validating a hello whose
bytes after the message id (sender and body) it decoded before (a node sends
the same body to its whole view each heartbeat).  These tests show that,
whatever the frame, the answer (an envelope, or the exact
``RemoteProtocolError``) is the one the full path gives, and that the memo is
really used; planted bugs show the checks bite.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from protocols import codec
from protocols.config import Timings
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.messages import Hello, NodeInfo, Peers, RenewAck
from protocols.outbox import Outbox
from tests.planting import without_shrinking
from tests.test_codec import IDS, message_strategy


@pytest.fixture(autouse=True)
def _fresh_memo() -> Iterator[None]:
    codec.forget_bodies()
    yield
    codec.forget_bodies()


def _outcome(data: Any) -> Any:
    """What decode answers: the envelope, or the refusal's exact text."""
    try:
        return codec.decode(data)
    except RemoteProtocolError as exc:
        return f"refused: {exc}"


def _full_path(data: Any) -> Any:
    """What decode answers with nothing remembered (and it forgets again)."""
    saved = dict(codec._bodies)
    codec.forget_bodies()
    try:
        return _outcome(data)
    finally:
        codec.forget_bodies()
        codec._bodies.update(saved)


def _hello(rng: random.Random, node: str = "n1") -> Hello:
    info = NodeInfo(node_id=node, labels={"zone": rng.choice("ab")}, cpu=2.0, memory=2**30,
                    executors=["sim"], addrs=[f"/ip4/10.0.0.{rng.randrange(9)}/tcp/1"],
                    max_executions=4, version="1")
    return Hello(info=info, want_peers=rng.random() < 0.3, running=rng.randrange(3))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), ids=st.lists(IDS, min_size=2, max_size=4),
       senders=st.lists(IDS, min_size=2, max_size=4))
def test_a_remembered_body_decodes_like_the_full_path(
    data: st.DataObject, ids: list[str], senders: list[str]
) -> None:
    message = data.draw(message_strategy(Hello))
    for msg_id, sender in zip(ids, senders, strict=False):
        frame = codec.encode(message, msg_id=msg_id, sender=sender)
        got = _outcome(frame)
        assert got == _full_path(frame)
        assert got == codec.Envelope(1, msg_id, sender, message)


def test_the_memo_is_used_for_hellos_only() -> None:
    rng = random.Random(1)
    hello = _hello(rng)
    codec.decode(codec.encode(hello, msg_id="n1:0:1", sender="n1"))
    first = codec.decode(codec.encode(hello, msg_id="n1:0:2", sender="n1")).message
    again = codec.decode(codec.encode(hello, msg_id="n1:0:3", sender="n1")).message
    assert again is first  # the second frame's body was not decoded again
    for other in (Peers(peers=[hello.info]), RenewAck(execution_id="e", epoch=1, seq=1)):
        codec.decode(codec.encode(other, msg_id="n1:0:4", sender="n1"))
    assert {tag for tag, _ in codec._bodies} == {"hello"}


def _mutants(frame: bytes, rng: random.Random) -> Iterator[bytes]:
    """Frames near ``frame``: every single-byte change in the envelope, random
    ones in the body, truncations and trailing bytes."""
    body_at = frame.index(b"\xa4body") + 5
    for pos in range(body_at):
        for value in {0x00, 0x7F, 0xA0, 0xC1, 0xD9, 0xFF, frame[pos] ^ 1, (frame[pos] + 1) & 0xFF}:
            yield frame[:pos] + bytes([value]) + frame[pos + 1:]
    for _ in range(200):
        pos = rng.randrange(body_at, len(frame))
        yield frame[:pos] + bytes([rng.randrange(256)]) + frame[pos + 1:]
    for cut in range(len(frame)):
        yield frame[:cut]
    yield frame + b"\x00"
    yield frame + frame
    yield bytearray(frame)
    yield memoryview(frame)


@pytest.mark.parametrize("seed", range(3))
def test_frames_around_a_remembered_body_get_the_full_paths_answer(seed: int) -> None:
    rng = random.Random(seed)
    hello = _hello(rng, node="peer-" + "x" * rng.choice([3, 40]))  # fixstr and str8 ids
    sender = hello.info.node_id
    frame = codec.encode(hello, msg_id=f"{sender}:0:1", sender=sender)
    codec.decode(frame)  # its body is remembered now
    checked = 0
    for mutant in _mutants(frame, rng):
        assert _outcome(mutant) == _full_path(mutant), mutant
        checked += 1
    assert checked > 500


def test_ids_out_of_bounds_around_a_remembered_body_are_refused() -> None:
    hello = _hello(random.Random(2))
    codec.decode(codec.encode(hello, msg_id="n1:0:1", sender="n1"))
    body = codec.encode(hello, msg_id="n1:0:1", sender="n1").split(b"\xa4body", 1)[1]

    def frame(msg_id: str, sender: str) -> bytes:
        head = msgpack.packb({"v": 1, "t": "hello", "id": msg_id, "from": sender},
                             use_bin_type=True)
        return b"\x85" + head[1:] + b"\xa4body" + body

    for msg_id, sender in [("", "n1"), ("n1:0:2", ""), ("i" * 129, "n1"), ("n1:0:2", "s" * 200)]:
        got = _outcome(frame(msg_id, sender))
        assert isinstance(got, str) and got.startswith("refused: envelope."), got
        assert got == _full_path(frame(msg_id, sender))
    assert _outcome(frame("n1:0:2", "n1")) == codec.Envelope(1, "n1:0:2", "n1", hello)


def test_memory_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "MAX_REMEMBERED_BODIES", 8)
    rng = random.Random(3)
    for i in range(50):
        codec.decode(codec.encode(_hello(rng, node=f"n{i}"), msg_id="m:0:1", sender=f"n{i}"))
        assert len(codec._bodies) <= 8
    big = Hello(info=NodeInfo(node_id="big", labels={f"k{i}": "v" * 200 for i in range(16)}))
    codec.forget_bodies()
    codec.decode(codec.encode(big, msg_id="m:0:1", sender="big"))
    assert not codec._bodies  # a body over MAX_REMEMBERED_BODY is not kept


# --- planted bugs: the checks above catch a memo that cuts corners ------------------


def _split(data: bytes) -> tuple[str, str, bytes] | None:
    """(type tag, msg id, the bytes after the id) as the memo reads a frame
    (None: not a layout it reads)."""
    split = codec._memo_split(data) if type(data) is bytes else None
    return None if split is None else (split[0], split[1], data[split[2]:])


def _planted_ignore_envelope(data: bytes) -> codec.Envelope | None:
    """Planted bug: trusts the remembered frame for the id too."""
    split = _split(data)
    hit = None if split is None else codec._bodies.get((split[0], split[2]))
    return None if hit is None else codec.Envelope(1, "n1:0:1", hit[0], hit[1])


def _planted_unbounded_ids(data: bytes) -> codec.Envelope | None:
    """Planted bug: forgets the id bounds the full path enforces."""
    split = _split(data)
    if split is None:
        return None
    hit = codec._bodies.get((split[0], split[2]))
    return None if hit is None else codec.Envelope(1, split[1], hit[0], hit[1])


def _planted_prefix_only(data: bytes) -> codec.Envelope | None:
    """Planted bug: keys the memo on the first bytes after the id only."""
    split = _split(data)
    if split is None:
        return None
    for (tag, rest), (sender, message) in codec._bodies.items():
        if tag == split[0] and split[2].startswith(rest[:20]):
            return codec.Envelope(1, split[1], sender, message)
    return None


def _planted_body_only(data: bytes) -> codec.Envelope | None:
    """Planted bug: matches the body's bytes only, and takes the remembered
    sender for the frame's own."""
    split = _split(data)
    if split is None:
        return None
    body = split[2].split(b"\xa4body", 1)[-1]
    for (tag, rest), (sender, message) in codec._bodies.items():
        if tag == split[0] and rest.endswith(b"\xa4body" + body):
            return codec.Envelope(1, split[1], sender, message)
    return None


@pytest.mark.parametrize("planted", [_planted_ignore_envelope, _planted_unbounded_ids,
                                     _planted_prefix_only, _planted_body_only])
def test_planted_memo_bugs_are_caught(monkeypatch: pytest.MonkeyPatch, planted: Any) -> None:
    monkeypatch.setattr(codec, "_remembered_body", planted)
    tests = [
        lambda: test_a_remembered_body_decodes_like_the_full_path(),
        lambda: test_frames_around_a_remembered_body_get_the_full_paths_answer(0),
        lambda: test_ids_out_of_bounds_around_a_remembered_body_are_refused(),
    ]
    caught = 0
    for run in tests:
        codec.forget_bodies()
        try:
            run()
        except AssertionError:
            caught += 1
    assert caught, f"{planted.__name__} went unnoticed"


# --- one encode for many frames (a heartbeat's hellos) ------------------------------


def _each(message: Any, ids: list[str], sender: str) -> list[Any]:
    out: list[Any] = []
    for msg_id in ids:
        try:
            out.append(codec.encode(message, msg_id=msg_id, sender=sender))
        except LocalProtocolError as exc:
            return [*out, f"refused: {exc}"]
    return out


def _many(message: Any, ids: list[str], sender: str) -> list[Any]:
    try:
        return codec.encode_many(message, msg_ids=ids, sender=sender)
    except LocalProtocolError as exc:
        return [*_each(message, ids, sender)[:-1], f"refused: {exc}"]


_BATCH_IDS = st.lists(st.one_of(IDS, st.sampled_from(
    ["", "x" * 129, "\ud800", "n:0:" + "9" * 40])), max_size=5)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), ids=_BATCH_IDS, sender=IDS)
def test_encode_many_gives_the_frames_encode_gives(
    data: st.DataObject, ids: list[str], sender: str
) -> None:
    message = data.draw(st.one_of(message_strategy(Hello), message_strategy(Peers)))
    assert _many(message, ids, sender) == _each(message, ids, sender)


def test_send_many_sends_what_send_sends_in_a_loop() -> None:
    rng = random.Random(4)
    a, b = Outbox("n1", 3, Timings()), Outbox("n1", 3, Timings())
    for round_ in range(20):
        hello = _hello(rng)
        peers = [f"p{i}" for i in range(rng.randrange(5))]
        a.begin(float(round_))
        b.begin(float(round_))
        a.send("first", hello)  # ids keep counting across both kinds of send
        b.send("first", hello)
        for peer in peers:
            a.send(peer, hello)
        b.send_many(peers, hello)
        assert a.drain() == b.drain()
        assert a.sent_by_type == b.sent_by_type


def _planted_one_id(message: Any, *, msg_ids: list[str], sender: str) -> list[bytes]:
    """Planted bug: every frame of the batch carries the first id."""
    frame = codec.encode(message, msg_id=msg_ids[0], sender=sender) if msg_ids else b""
    return [frame for _ in msg_ids]


def _planted_no_checks(message: Any, *, msg_ids: list[str], sender: str) -> list[bytes]:
    """Planted bug: later ids are packed without encode's bounds."""
    if not msg_ids:
        return []
    first = codec.encode(message, msg_id=msg_ids[0], sender=sender)
    span = codec._id_span(first)
    assert span is not None
    out = [first]
    for msg_id in msg_ids[1:]:
        try:
            out.append(first[: span[0]] + msgpack.packb(msg_id) + first[span[1]:])
        except Exception:
            out.append(first)
    return out


@pytest.mark.parametrize("planted", [_planted_one_id, _planted_no_checks])
def test_planted_encode_many_bugs_are_caught(
    monkeypatch: pytest.MonkeyPatch, planted: Any
) -> None:
    monkeypatch.setattr(codec, "encode_many", planted)
    # Generation only: shrinking a planted failure took 32 s of CI.
    property_run = without_shrinking(
        test_encode_many_gives_the_frames_encode_gives, 80,
        data=st.data(), ids=_BATCH_IDS, sender=IDS,
    )
    caught = 0
    for run in (property_run, test_send_many_sends_what_send_sends_in_a_loop):
        try:
            run()
        except InvalidArgument:
            raise  # a broken test, not a caught bug
        except AssertionError:
            caught += 1
    assert caught, f"{planted.__name__} went unnoticed"


# --- envelopes built without the frozen __init__ -------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), msg_id=IDS, sender=IDS)
def test_a_fast_built_envelope_is_the_envelope(
    data: st.DataObject, msg_id: str, sender: str
) -> None:
    message = data.draw(message_strategy(Hello))
    fast = codec._envelope(1, msg_id, sender, message)
    slow = codec.Envelope(1, msg_id, sender, message)
    assert type(fast) is codec.Envelope
    assert fast == slow and repr(fast) == repr(slow)
    assert attrs.asdict(fast, recurse=False) == attrs.asdict(slow, recurse=False)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        fast.sender = "someone else"  # type: ignore[misc]
    # Both decode paths build theirs this way: a frame decodes to the slow one.
    frame = codec.encode(message, msg_id=msg_id, sender=sender)
    assert codec.decode(frame) == slow and codec.decode(frame) == slow  # full, then memo


def _planted_swapped_envelope(version: int, msg_id: str, sender: str,
                              message: Any) -> codec.Envelope:
    """Planted bug: a fast constructor that fills two slots the wrong way round."""
    return codec.Envelope(version, sender, msg_id, message)


def test_planted_envelope_bug_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "_envelope", _planted_swapped_envelope)
    with pytest.raises(AssertionError):
        test_a_fast_built_envelope_is_the_envelope()
