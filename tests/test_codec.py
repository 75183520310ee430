"""The strict wire codec: round trips, every rejection reason, and fuzzing.

Strategies and edge values are derived generically from ``attrs.fields``, the
resolved type hints and the ``bounded`` metadata of :mod:`protocols.messages`
(not from the codec's own tables), so a new message type or field is covered
without touching this file, and the codec's reading of the schema is checked
against an independent one.
"""

from __future__ import annotations

import copy
import math
import random
import typing
from collections.abc import Iterator
from typing import Any

import attrs
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import chain, codec, docgen, docgen_constants
from protocols.codec import (
    FREE_MAX_DEPTH,
    FREE_MAX_ITEMS,
    FREE_MAX_STR,
    MAX_FRAME,
    MAX_ITEM_LEN,
    MAX_KEY_LEN,
    Deduper,
    Envelope,
    MessageIds,
    decode,
    encode,
    unique_map,
)
from protocols.config import NodeConfig
from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.events import MessageReceived, Notify, Started
from protocols.messages import (
    ALL_MESSAGES,
    MESSAGE_TYPES,
    Bid,
    Hello,
    LeaseGrant,
    Message,
    NodeInfo,
    Peers,
    bounded,
)
from protocols.node import NodeCore

SENDER = "12D3KooWQvBXLZs1bhTvYh3rdgYkbeYZtqzPVWrbd9s1d8Wgd5kG"
MSG_ID = f"{SENDER}:1:1"

# --- generic schema reading (independent of the codec) ---------------------------


def _fields(cls: type[Message]) -> list[tuple[str, Any, dict[str, Any]]]:
    hints = typing.get_type_hints(cls)
    return [(f.name, hints[f.name], dict(f.metadata)) for f in attrs.fields(cls)]


def _bounds(meta: dict[str, Any]) -> tuple[Any, Any, Any]:
    """(max_len, lo, hi) of a field; None where the field declares no bound."""
    return meta.get("max_len"), meta.get("lo"), meta.get("hi")


def _message_type(hint: Any) -> type[Message] | None:
    return hint if isinstance(hint, type) and issubclass(hint, Message) else None


def _to_wire(value: Any) -> Any:
    """A Python value as the codec puts it on the wire (messages -> maps)."""
    if isinstance(value, Message):
        return {name: _to_wire(getattr(value, name)) for name, _, _ in _fields(type(value))}
    if isinstance(value, list):
        return [_to_wire(v) for v in value]
    return value


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _raw_frame(message: Message, **overrides: Any) -> dict[str, Any]:
    frame = {"v": 1, "t": message.TYPE, "id": MSG_ID, "from": SENDER, "body": _to_wire(message)}
    frame.update(overrides)
    return frame


def _reject(data: bytes, match: str = "") -> str:
    with pytest.raises(RemoteProtocolError) as info:
        decode(data)
    reason = str(info.value)
    assert match in reason, reason
    return reason


# --- hypothesis strategies, built from the schema ---------------------------------

_scalar_free = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.binary(max_size=12),
)


def _free_value(depth: int) -> st.SearchStrategy[Any]:
    if depth <= 0:
        return _scalar_free
    inner = _free_value(depth - 1)
    return st.one_of(
        _scalar_free,
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=8), inner, max_size=3),
    )


# Depth 1 (task map) + 4 nested levels, <= 3 entries each: well inside the limits.
FREE_MAPS = st.dictionaries(st.text(max_size=8), _free_value(4), max_size=4)


def _field_strategy(hint: Any, meta: dict[str, Any]) -> st.SearchStrategy[Any]:
    max_len, lo, hi = _bounds(meta)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    nested = _message_type(hint)
    if hint is bool:
        return st.booleans()
    if hint is int:
        return st.one_of(st.sampled_from([int(lo), int(hi)]), st.integers(int(lo), int(hi)))
    if hint is float:
        return st.one_of(
            st.sampled_from([float(lo), float(hi)]),
            st.floats(lo, hi, allow_nan=False, allow_infinity=False),
            st.integers(math.ceil(lo), math.floor(hi)),  # ints are valid float values
        )
    if hint is str:
        # Long strings are slow to generate; the max length is an edge case below.
        return st.text(max_size=min(max_len, 24))
    if hint is bytes:
        return st.binary(max_size=min(max_len, 64))
    if nested is not None:
        return message_strategy(nested)
    if origin is list:
        item = _message_type(args[0])
        items = message_strategy(item) if item else st.text(max_size=16)
        return st.lists(items, max_size=min(max_len, 3))
    if origin is dict and args[1] is str:
        return st.dictionaries(st.text(max_size=12), st.text(max_size=16), max_size=min(max_len, 4))
    if origin is dict:
        return FREE_MAPS
    raise AssertionError(f"no strategy for {hint!r}: extend tests/test_codec.py")


_STRATEGIES: dict[type[Message], st.SearchStrategy[Message]] = {}


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    # Built once per class: rebuilding the strategy for every example is slow.
    if cls not in _STRATEGIES:
        kwargs = {name: _field_strategy(hint, meta) for name, hint, meta in _fields(cls)}
        _STRATEGIES[cls] = st.builds(cls, **kwargs)
    return _STRATEGIES[cls]


IDS = st.text(min_size=1, max_size=128)


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.TYPE)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), msg_id=IDS, sender=IDS)
def test_round_trip_every_message(
    cls: type[Message], data: st.DataObject, msg_id: str, sender: str
) -> None:
    message = data.draw(message_strategy(cls))
    frame = encode(message, msg_id=msg_id, sender=sender)
    assert len(frame) <= MAX_FRAME
    env = decode(frame)
    assert env == Envelope(version=1, msg_id=msg_id, sender=sender, message=message)
    assert type(env.message) is cls
    # Canonical: re-encoding the decoded message gives the same bytes.
    assert encode(env.message, msg_id=msg_id, sender=sender) == frame


def test_every_message_type_is_registered_and_unique() -> None:
    assert len(MESSAGE_TYPES) == len(ALL_MESSAGES)
    for cls in ALL_MESSAGES:
        assert codec.field_specs(cls), cls
        assert [f.name for f in codec.field_specs(cls)] == [n for n, _, _ in _fields(cls)]


# --- generic edge values per field: accepted at the bound, rejected past it -------


def minimal(cls: type[Message]) -> Message:
    """The smallest valid instance of any message class."""
    kwargs: dict[str, Any] = {}
    for name, hint, meta in _fields(cls):
        nested = _message_type(hint)
        if hint is bool:
            kwargs[name] = False
        elif hint is int or hint is float:
            kwargs[name] = hint(meta["lo"])
        elif nested is not None:
            kwargs[name] = minimal(nested)
        else:
            kwargs[name] = (typing.get_origin(hint) or hint)()
    return cls(**kwargs)


def _free_nest(depth: int) -> dict[str, Any]:
    """A free-form map nested ``depth`` levels deep (itself = level 1)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def edge_values(hint: Any, meta: dict[str, Any]) -> Iterator[tuple[Any, bool]]:
    """(value, valid) pairs probing each bound and type rule of one field."""
    max_len, lo, hi = _bounds(meta)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    nested = _message_type(hint)
    wrong_types: list[Any] = [None, "1", b"1", [], {}, 1.5]
    if hint is bool:
        yield from [
            (True, True),
            (False, True),
            (1, False),
            (0, False),
            *[(w, False) for w in wrong_types],
        ]
    elif hint is int:
        yield from [(int(lo), True), (int(hi), True), (int(lo) - 1, False), (int(hi) + 1, False)]
        yield from [(True, False), (False, False), (float(lo), False), (2**64 - 1, False)]
        yield from [(w, False) for w in wrong_types]
    elif hint is float:
        yield from [(float(lo), True), (float(hi), True), (int(hi), True)]
        yield from [(math.nextafter(float(lo), -math.inf), False), (hi + 1, False)]
        yield from [(math.nan, False), (math.inf, False), (-math.inf, False), (True, False)]
        yield from [(w, False) for w in wrong_types if w != 1.5]
    elif hint is str:
        yield from [("x" * max_len, True), ("é" * max_len, True), ("x" * (max_len + 1), False)]
        yield from [(w, False) for w in wrong_types if w != "1"]
    elif hint is bytes:
        yield from [(b"\0" * max_len, True), (b"\0" * (max_len + 1), False)]
        yield from [(w, False) for w in wrong_types if w != b"1"]
    elif nested is not None:
        yield from [(minimal(nested), True), ({}, False), (None, False), ([], False)]
    elif origin is list and _message_type(args[0]) is not None:
        item = minimal(typing.cast(type[Message], args[0]))
        yield from [([item] * max_len, True), ([item] * (max_len + 1), False), ([{}], False)]
        yield from [([None], False), ({}, False), (None, False)]
    elif origin is list:
        yield from [(["a"] * max_len, True), (["x" * MAX_ITEM_LEN], True)]
        yield from [(["a"] * (max_len + 1), False), (["x" * (MAX_ITEM_LEN + 1)], False)]
        yield from [([1], False), ([b"a"], False), ({}, False), ("a", False), (None, False)]
    elif origin is dict and args[1] is str:
        full = {f"k{i}": "v" for i in range(max_len)}
        yield from [(full, True), ({**full, "one-more": "v"}, False)]
        yield from [({"k" * MAX_KEY_LEN: "v" * MAX_ITEM_LEN}, True)]
        yield from [
            ({"k" * (MAX_KEY_LEN + 1): "v"}, False),
            ({"k": "v" * (MAX_ITEM_LEN + 1)}, False),
        ]
        yield from [({"k": 1}, False), ({"k": None}, False), ({b"k": "v"}, False)]
        yield from [([], False), (None, False)]
    elif origin is dict:  # free-form
        yield from [
            ({}, True),
            (_free_nest(FREE_MAX_DEPTH), True),
            (_free_nest(FREE_MAX_DEPTH + 1), False),
        ]
        yield from [({"l": list(range(FREE_MAX_ITEMS - 1))}, True)]
        yield from [({"l": list(range(FREE_MAX_ITEMS))}, False)]
        yield from [({"s": "x" * FREE_MAX_STR, "b": b"\0" * FREE_MAX_STR}, True)]
        yield from [
            ({"s": "x" * (FREE_MAX_STR + 1)}, False),
            ({"x" * (FREE_MAX_STR + 1): 1}, False),
        ]
        yield from [({"b": b"\0" * (FREE_MAX_STR + 1)}, False)]
        yield from [({"n": -(2**63), "m": 2**64 - 1, "f": -0.0, "z": None, "t": True}, True)]
        yield from [({"f": math.nan}, False), ({"f": [math.inf]}, False), ({"n": 2**64}, False)]
        yield from [({"d": {1: 2}}, False), ({"e": msgpack.ExtType(1, b"x")}, False), ([], False)]
    else:
        raise AssertionError(f"no edge values for {hint!r}: extend tests/test_codec.py")


def _edge_cases() -> Iterator[Any]:
    for cls in ALL_MESSAGES:
        for name, hint, meta in _fields(cls):
            for i, (value, valid) in enumerate(edge_values(hint, meta)):
                yield pytest.param(cls, name, value, valid, id=f"{cls.TYPE}.{name}-{i}")


@pytest.mark.parametrize(("cls", "name", "value", "valid"), list(_edge_cases()))
def test_field_edges(cls: type[Message], name: str, value: Any, valid: bool) -> None:
    message = attrs.evolve(minimal(cls), **{name: value})
    # Encode side: we never send what a peer must reject.
    if valid:
        env = decode(encode(message, msg_id=MSG_ID, sender=SENDER))
        assert env.message == message
    else:
        with pytest.raises(LocalProtocolError, match=f"{cls.TYPE}.{name}"):
            encode(message, msg_id=MSG_ID, sender=SENDER)
    # Decode side: the same value smuggled straight into a frame.
    frame = _raw_frame(minimal(cls))
    frame["body"][name] = _to_wire(value)
    try:
        data = _pack(frame)
    except OverflowError:  # e.g. 2**64: not representable in msgpack, cannot arrive
        return
    if valid:
        assert decode(data).message == message
    else:
        reason = _reject(data)
        if not reason.startswith("undecodable frame"):  # ext types die in msgpack itself
            assert reason.startswith(f"{cls.TYPE}.{name}"), reason


# --- targeted rejections ---------------------------------------------------------

GRANT = LeaseGrant(
    execution_id="j1/0/1",
    job_id="j1",
    slot=0,
    attempt=1,
    epoch=3,
    ttl_ms=10_000,
    timeout_ms=60_000,
    task={"executor": "process", "command": ["sleep", "1"], "resources": {"cpu": 0.5}},
    env={"A": "b"},
)


def _grant_frame(**body: Any) -> bytes:
    frame = _raw_frame(GRANT)
    frame["body"].update(body)
    return _pack(frame)


def test_error_messages_name_the_field_and_the_bound() -> None:
    assert _reject(_grant_frame(epoch=0)) == "lease_grant.epoch: must be >= 1, got 0"
    assert _reject(_grant_frame(epoch=2**53 + 1)) == (
        "lease_grant.epoch: must be <= 2**53, got 9007199254740993"
    )
    assert _reject(_grant_frame(slot=True)) == "lease_grant.slot: expected int, got bool"
    assert _reject(_grant_frame(env={"A": 1})) == "lease_grant.env['A']: expected str, got int"
    reason = _reject(_grant_frame(task={"command": ["a", {"x": math.nan}]}))
    assert reason == "lease_grant.task.command[1].x: must be finite, got nan"


def test_bool_is_not_an_int_and_int_is_a_float() -> None:
    _reject(_grant_frame(attempt=True), "expected int, got bool")
    frame = _raw_frame(Bid(job_id="j", slot=0, attempt=1))
    frame["body"]["free_cpu"] = 3
    message = decode(_pack(frame)).message
    assert isinstance(message, Bid) and type(message.free_cpu) is float
    assert message.free_cpu == 3.0
    # Encoding an int for a float field writes a float: one canonical form.
    encoded = encode(Bid(job_id="j", slot=0, attempt=1, free_cpu=3), msg_id="m", sender="s")
    assert encoded == encode(
        Bid(job_id="j", slot=0, attempt=1, free_cpu=3.0), msg_id="m", sender="s"
    )
    frame["body"]["free_cpu"] = True
    _reject(_pack(frame), "bid.free_cpu: expected float, got bool")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_rejected(value: float) -> None:
    frame = _raw_frame(Bid(job_id="j", slot=0, attempt=1))
    frame["body"]["free_cpu"] = value
    _reject(_pack(frame), "bid.free_cpu: must be finite")
    with pytest.raises(LocalProtocolError, match="must be finite"):
        encode(Bid(job_id="j", slot=0, attempt=1, free_cpu=value), msg_id="m", sender="s")


def test_missing_and_extra_body_fields() -> None:
    frame = _raw_frame(GRANT)
    del frame["body"]["epoch"]
    _reject(_pack(frame), "lease_grant: missing field(s) epoch")
    frame = _raw_frame(GRANT)
    frame["body"]["bogus"] = 1
    _reject(_pack(frame), "lease_grant: unexpected field(s) 'bogus'")
    frame = _raw_frame(GRANT)
    frame["body"]["epoch2"] = frame["body"].pop("epoch")  # renamed
    _reject(_pack(frame), "missing field(s) epoch; unexpected field(s) 'epoch2'")
    _reject(_pack(_raw_frame(GRANT, body=[])), "lease_grant: expected map, got array")


def test_missing_and_extra_envelope_keys() -> None:
    for key in ("v", "t", "id", "from", "body"):
        frame = _raw_frame(GRANT)
        del frame[key]
        _reject(_pack(frame), f"envelope: missing field(s) {key}")
    _reject(_pack(_raw_frame(GRANT, sig="x")), "envelope: unexpected field(s) 'sig'")
    _reject(_pack([1, "lease_grant"]), "frame must be a map, got array")


def test_missing_and_extra_nested_node_info_fields() -> None:
    hello = _raw_frame(Hello(info=NodeInfo(node_id="n")))
    del hello["body"]["info"]["cpu"]
    _reject(_pack(hello), "hello.info: missing field(s) cpu")
    peers = _raw_frame(Peers(peers=[NodeInfo(node_id="a"), NodeInfo(node_id="b")]))
    peers["body"]["peers"][1]["extra"] = True
    _reject(_pack(peers), "peers.peers[1]: unexpected field(s) 'extra'")
    peers["body"]["peers"][1] = "b"
    _reject(_pack(peers), "peers.peers[1]: expected map, got str")
    hello = _raw_frame(Hello(info=NodeInfo(node_id="n")))
    hello["body"]["info"]["memory"] = -1
    _reject(_pack(hello), "hello.info.memory: must be >= 0, got -1")


@pytest.mark.parametrize("version", [0, 2, "1", True, 1.0, None])
def test_unknown_version(version: Any) -> None:
    _reject(_pack(_raw_frame(GRANT, v=version)), "unsupported protocol version")


@pytest.mark.parametrize("tag", ["lease_grant2", "", "LeaseGrant", 7, None, ["lease_grant"]])
def test_unknown_type(tag: Any) -> None:
    _reject(_pack(_raw_frame(GRANT, t=tag)), "unknown message type")


def test_type_tag_must_match_the_body() -> None:
    # A body valid for lease_grant under another tag is a missing/extra field error.
    _reject(_pack(_raw_frame(GRANT, t="lease_accept")), "lease_accept: missing field(s)")


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("id", "", "envelope.id: length must be 1..128, got 0"),
        ("id", "x" * 129, "envelope.id: length must be 1..128, got 129"),
        ("id", 5, "envelope.id: expected str, got int"),
        ("from", b"peer", "envelope.from: expected str, got bin"),
        ("from", "", "envelope.from: length must be 1..128"),
    ],
)
def test_envelope_id_and_sender(key: str, value: Any, match: str) -> None:
    _reject(_pack(_raw_frame(GRANT, **{key: value})), match)


def test_trailing_bytes_and_truncation() -> None:
    data = encode(GRANT, msg_id=MSG_ID, sender=SENDER)
    _reject(data + b"\x00", "undecodable frame: ExtraData")
    _reject(data + data, "undecodable frame")
    for cut in (0, 1, len(data) // 2, len(data) - 1):
        _reject(data[:cut], "undecodable frame")


def test_ext_types_are_rejected() -> None:
    _reject(_grant_frame(task={"t": msgpack.ExtType(5, b"abc")}), "ext")
    _reject(_grant_frame(job_id=msgpack.ExtType(0, b"")), "undecodable frame")
    _reject(_grant_frame(task={"t": msgpack.Timestamp(1, 0)}), "undecodable frame")
    _reject(_pack(msgpack.ExtType(1, b"x")), "undecodable frame")


def test_invalid_utf8_is_rejected() -> None:
    good = encode(Bid(job_id="jé", slot=0, attempt=1), msg_id="m", sender="s")
    bad = good.replace("jé".encode(), b"j\xff\xfe")  # same length, str type, not UTF-8
    assert len(bad) == len(good)
    _reject(bad, "undecodable frame: UnicodeDecodeError")


def test_non_str_map_keys_are_rejected() -> None:
    _reject(_grant_frame(env={b"A": "b"}), "lease_grant.env: map keys must be str, got bin")
    _reject(_grant_frame(task={"x": {b"k": 1}}), "lease_grant.task.x: map keys must be str")
    # Integer keys never get past msgpack (strict_map_key), wherever they are.
    _reject(_pack({1: 2}), "undecodable frame")
    _reject(_grant_frame(task={"x": {1: 1}}), "undecodable frame")
    with pytest.raises(LocalProtocolError, match="map keys must be str"):
        encode(attrs.evolve(GRANT, task={1: "x"}), msg_id="m", sender="s")  # type: ignore[dict-item]


def _with_extra_entry(data: bytes, entry: bytes) -> bytes:
    """``data`` (a frame: fixmap of 5) with one more key/value appended."""
    assert data[0] == 0x85
    return b"\x86" + data[1:] + entry


def test_duplicate_map_keys_are_rejected_everywhere() -> None:
    # One rule (docs/protocol.md, "Encoding rules"): a key twice = rejected,
    # since decoders disagree on which copy wins.
    data = encode(Bid(job_id="j", slot=0, attempt=1), msg_id="m", sender="s")
    _reject(_with_extra_entry(data, b"\xa2id\xa5other"), "duplicate map key 'id'")
    # In a body: "slot" written twice.
    raw = msgpack.unpackb(data)
    packed_body = msgpack.packb(raw["body"])
    assert packed_body[0] == 0x86
    dup_body = b"\x87" + packed_body[1:] + msgpack.packb("slot") + msgpack.packb(7)
    frame = b"\x85" + b"".join(
        msgpack.packb(k) + (dup_body if k == "body" else msgpack.packb(v)) for k, v in raw.items()
    )
    _reject(frame, "duplicate map key 'slot'")
    # Deep inside a free-form task.
    grant = _grant_frame(task={"x": {"k": 1}})
    assert grant.count(b"\x81\xa1k\x01") == 1
    _reject(grant.replace(b"\x81\xa1k\x01", b"\x82\xa1k\x01\xa1k\x02"), "duplicate map key 'k'")
    with pytest.raises(ValueError, match="duplicate map key 'a'"):
        unique_map([("a", 1), ("a", 2)])


def test_signed_chain_records_obey_the_same_duplicate_key_rule() -> None:
    record = chain.pack({"body": {"seq": 1}, "sigs": {}})
    assert chain.unpack(record) == {"body": {"seq": 1}, "sigs": {}}
    dup = b"\x83" + record[1:] + msgpack.packb("sigs") + msgpack.packb({"x": b"forged"})
    with pytest.raises(RemoteProtocolError, match="duplicate map key 'sigs'"):
        chain.unpack(dup)


def test_a_float_where_an_int_belongs_is_refused_with_the_fix_in_the_reason() -> None:
    # A JS number >= 2**32 (4 GiB of memory) packs as float64 unless it is a
    # BigInt: the hello is refused, and the reason says why.
    raw = msgpack.unpackb(
        encode(Hello(info=NodeInfo(node_id=SENDER, memory=2**32)), msg_id=MSG_ID, sender=SENDER)
    )
    raw["body"]["info"]["memory"] = float(2**32)
    _reject(msgpack.packb(raw), "hello.info.memory: expected int, got float 4294967296.0")
    with pytest.raises(RemoteProtocolError, match=r"never float64: e\.g\. BigInt in JS"):
        decode(msgpack.packb(raw))


def test_a_refused_hello_is_counted_and_reported_not_silent() -> None:
    core = NodeCore(NodeConfig(node_id="me"), seed=1)
    core.handle(Started(wall=0.0), 0.0)
    raw = msgpack.unpackb(
        encode(Hello(info=NodeInfo(node_id=SENDER, memory=2**32)), msg_id=MSG_ID, sender=SENDER)
    )
    raw["body"]["info"]["memory"] = float(2**32)
    actions = core.handle(MessageReceived(SENDER, msgpack.packb(raw)), 1.0)
    notes = [a for a in actions if isinstance(a, Notify) and a.kind == "dropped"]
    assert len(notes) == 1, actions
    assert notes[0].data["fault"] == "undecodable"
    assert "hello.info.memory: expected int, got float" in notes[0].data["reason"]
    assert core.dropped == {SENDER: 1}
    assert SENDER not in core.directory.peers


def test_free_form_limits() -> None:
    ok = _free_nest(FREE_MAX_DEPTH)
    assert decode(_grant_frame(task=ok)).message == attrs.evolve(GRANT, task=ok)
    _reject(_grant_frame(task=_free_nest(FREE_MAX_DEPTH + 1)), "nested deeper than 8 levels")
    _reject(_grant_frame(task={"a": [[1]] * 600}), "more than 1024 items in total")
    _reject(_grant_frame(task={"a": [1, 2, None, ("x" * 4097)]}), "task.a[3]: str too long")
    _reject(_grant_frame(task=[]), "lease_grant.task: expected map, got array")
    many = {f"k{i}": i for i in range(FREE_MAX_ITEMS)}
    assert decode(_grant_frame(task=many)).message == attrs.evolve(GRANT, task=many)


def test_deep_nesting_never_crashes() -> None:
    _reject(b"\x91" * 100_000 + b"\xc0", "undecodable frame")
    _reject(b"\x81\xa1a" * 50_000 + b"\xc0", "undecodable frame")
    deep: Any = 1
    for _ in range(300):
        deep = [deep]
    _reject(_grant_frame(task={"d": deep}), "nested deeper")


@pytest.mark.parametrize("data", [None, "text", 5, [b"x"], b"", memoryview(b"\xc0")])
def test_garbage_inputs_raise_remote_protocol_error(data: Any) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(data)


# --- frame size ---------------------------------------------------------------------


def _grant_of_size(size: int) -> LeaseGrant:
    """A LeaseGrant whose frame is exactly ``size`` bytes (big free-form task)."""
    chunks: dict[str, Any] = {}

    def frame_len(pad: int) -> int:
        grant = attrs.evolve(GRANT, task={**chunks, "pad": "y" * pad})
        return len(_pack(_raw_frame(grant)))

    while frame_len(300) + 3700 < size:  # fill with 4000-char chunks...
        chunks[f"c{len(chunks):03}"] = "x" * 4000
    # ...then pad: the str header is 3 bytes for any length in 256..65535.
    pad = 300 + size - frame_len(300)
    grant = attrs.evolve(GRANT, task={**chunks, "pad": "y" * pad})
    assert len(_pack(_raw_frame(grant))) == size
    return grant


def test_max_frame_boundary() -> None:
    exact = _grant_of_size(MAX_FRAME)
    data = encode(exact, msg_id=MSG_ID, sender=SENDER)
    assert len(data) == MAX_FRAME
    assert decode(data).message == exact
    over = _grant_of_size(MAX_FRAME + 1)
    with pytest.raises(LocalProtocolError, match=f"> {MAX_FRAME}"):
        encode(over, msg_id=MSG_ID, sender=SENDER)
    _reject(_pack(_raw_frame(over)), f"frame too large: {MAX_FRAME + 1} > {MAX_FRAME} bytes")
    _reject(b"\xc0" * (10 * MAX_FRAME), "frame too large")


def test_encode_refuses_oversized_nested_content() -> None:
    # Every field valid on its own, the whole too big: 64 labels of 4096 chars.
    info = NodeInfo(node_id="n", labels={f"k{i}": "v" * 4096 for i in range(64)})
    with pytest.raises(LocalProtocolError, match="frame of"):
        encode(Hello(info=info), msg_id=MSG_ID, sender=SENDER)


# --- encode refusals ------------------------------------------------------------------


def test_encode_refuses_out_of_bounds_values() -> None:
    with pytest.raises(LocalProtocolError, match=r"lease_grant\.epoch: must be >= 1, got 0"):
        encode(attrs.evolve(GRANT, epoch=0), msg_id=MSG_ID, sender=SENDER)
    with pytest.raises(LocalProtocolError, match=r"hello\.info\.cpu"):
        encode(Hello(info=NodeInfo(node_id="n", cpu=-1.0)), msg_id=MSG_ID, sender=SENDER)
    with pytest.raises(LocalProtocolError, match=r"peers\.peers\[0\]: expected NodeInfo"):
        encode(Peers(peers=[{"node_id": "n"}]), msg_id=MSG_ID, sender=SENDER)  # type: ignore[list-item]
    with pytest.raises(LocalProtocolError, match="expected array, got tuple"):
        encode(NodeInfo(node_id="n", executors=("process",)), msg_id=MSG_ID, sender=SENDER)  # type: ignore[arg-type]


def test_encode_refuses_bad_ids_and_non_messages() -> None:
    for msg_id, sender in [("", SENDER), ("x" * 129, SENDER), (MSG_ID, ""), (MSG_ID, 5)]:
        with pytest.raises(LocalProtocolError):
            encode(GRANT, msg_id=msg_id, sender=sender)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError, match="not a protocol message"):
        encode(Message(), msg_id=MSG_ID, sender=SENDER)
    with pytest.raises(LocalProtocolError, match="not a protocol message"):
        encode("lease_grant", msg_id=MSG_ID, sender=SENDER)  # type: ignore[arg-type]


def test_encode_refuses_unencodable_text() -> None:
    with pytest.raises(LocalProtocolError):
        encode(attrs.evolve(GRANT, job_id="\ud800"), msg_id=MSG_ID, sender=SENDER)


def test_schema_without_bounds_is_refused_at_build_time() -> None:
    @attrs.frozen(kw_only=True)
    class Unbounded(Message):
        TYPE = "unbounded_test"
        name: str = ""

    @attrs.frozen(kw_only=True)
    class Unsupported(Message):
        TYPE = "unsupported_test"
        when: complex = attrs.field(default=0j, metadata=bounded(lo=0, hi=1))

    with pytest.raises(TypeError, match=r"Unbounded\.name needs bounded\(max_len=...\)"):
        codec.field_specs(Unbounded)
    with pytest.raises(TypeError, match="unsupported field type"):
        codec.field_specs(Unsupported)


# --- fuzzing ----------------------------------------------------------------------------


def _check_outcome(data: bytes) -> bool:
    """Decoding either yields a valid message or raises RemoteProtocolError, and
    anything accepted re-encodes to a frame that decodes to the same thing."""
    try:
        env = decode(data)
    except RemoteProtocolError:
        return False
    assert isinstance(env, Envelope)
    again = decode(encode(env.message, msg_id=env.msg_id, sender=env.sender))
    assert again == env
    return True


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    _check_outcome(data)


_any_msgpack = st.recursive(
    st.one_of(
        _scalar_free, st.integers(-(2**63), 2**64 - 1), st.sampled_from([math.nan, math.inf])
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.binary(max_size=4)), inner, max_size=4),
    ),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tag=st.sampled_from(sorted(MESSAGE_TYPES)),
    body=st.one_of(_any_msgpack, st.dictionaries(st.text(max_size=12), _any_msgpack, max_size=10)),
)
def test_fuzz_random_envelopes(tag: str, body: Any) -> None:
    # Valid envelope, random body: exercises the body validators, not just msgpack.
    _check_outcome(_pack({"v": 1, "t": tag, "id": "m", "from": "s", "body": body}))


class _Mutator:
    """Seeded mutations of valid frames, at the byte and the structure level."""

    NASTY: tuple[Any, ...] = (
        None, True, False, 0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63),
        0.5, -0.0, math.nan, math.inf, -math.inf, "", "x" * 5000, "é" * 200, b"", b"\xff" * 9,
        [], [None], {}, {"k": "v"}, {"": []}, msgpack.ExtType(3, b"e"),
    )  # fmt: skip

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def random_value(self, hint: Any, meta: dict[str, Any]) -> Any:
        """A random *valid* value of one field (mirrors the strategies above)."""
        rng = self.rng
        max_len, lo, hi = _bounds(meta)
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        nested = _message_type(hint)
        if hint is bool:
            return rng.random() < 0.5
        if hint is int:
            return rng.choice([int(lo), int(hi), rng.randint(int(lo), int(hi))])
        if hint is float:
            return rng.uniform(lo, hi)
        if hint is str:
            return "".join(
                rng.choice("abcé/:-_ 0") for _ in range(rng.randint(0, min(max_len, 30)))
            )
        if hint is bytes:
            return rng.randbytes(rng.randint(0, min(max_len, 40)))
        if nested is not None:
            return self.message(nested)
        if origin is list:
            item = _message_type(args[0])
            n = rng.randint(0, min(max_len, 3))
            return [self.message(item) if item else f"item{i}" for i in range(n)]
        if origin is dict and args[1] is str:
            return {f"k{i}": f"v{rng.random()}" for i in range(rng.randint(0, min(max_len, 4)))}
        return {"executor": "process", "argv": ["a", 1, 2.5, None, True], "n": {"m": [b"x"]}}

    def message(self, cls: type[Message]) -> Message:
        return cls(**{n: self.random_value(h, m) for n, h, m in _fields(cls)})

    def frame(self) -> bytes:
        cls = self.rng.choice(ALL_MESSAGES)
        return encode(self.message(cls), msg_id=f"n:1:{self.rng.randint(0, 99)}", sender="n")

    # byte level ---------------------------------------------------------------

    def bytes_mutation(self, data: bytes) -> bytes:
        rng, buf = self.rng, bytearray(data)
        op = rng.randrange(7)
        pos = rng.randrange(len(buf))
        if op == 0:  # bit flips
            for _ in range(rng.randint(1, 4)):
                buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        elif op == 1:  # truncation
            del buf[pos:]
        elif op == 2:  # insertion
            buf[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:  # deletion
            del buf[pos : pos + rng.randint(1, 8)]
        elif op == 4:  # duplicate a slice
            buf[pos:pos] = buf[pos : pos + rng.randint(1, 16)]
        elif op == 5:  # a type byte msgpack never uses, or ext/bin markers
            buf[pos] = rng.choice([0xC1, 0xC7, 0xD4, 0xC4, 0xDB, 0xDD, 0xDF, 0xCF, 0xCB])
        else:  # trailing garbage
            buf += rng.randbytes(rng.randint(1, 4))
        return bytes(buf)

    # structure level -------------------------------------------------------------

    def _containers(self, obj: Any) -> list[Any]:
        found = []
        stack = [obj]
        while stack:
            node = stack.pop()
            if isinstance(node, dict | list):
                found.append(node)
                stack.extend(node.values() if isinstance(node, dict) else node)
        return found

    def nasty(self) -> Any:
        rng = self.rng
        if rng.random() < 0.1:
            deep: Any = "leaf"
            for _ in range(rng.randint(5, 400)):
                deep = [deep] if rng.random() < 0.5 else {"d": deep}
            return deep
        # A copy: the containers get mutated later, and a shared one could even
        # end up inside itself.
        return copy.deepcopy(rng.choice(self.NASTY))

    def structure_mutation(self, data: bytes) -> bytes:
        rng = self.rng
        obj = msgpack.unpackb(data, raw=False)
        for _ in range(rng.randint(1, 3)):
            target = rng.choice(self._containers(obj))
            op = rng.randrange(5)
            if isinstance(target, list):
                if target and op < 3:
                    target[rng.randrange(len(target))] = self.nasty()
                else:
                    target.append(self.nasty())
            elif op == 0 and target:  # delete a key
                del target[rng.choice(list(target))]
            elif op == 1:  # add a key
                target[rng.choice(["x", "v", "body", "epoch", "é", ""])] = self.nasty()
            elif op == 2 and target:  # rename a key
                key = rng.choice(list(target))
                target[str(key) + rng.choice(["_", "2", ""])] = target.pop(key)
            elif target:  # swap a value's type
                target[rng.choice(list(target))] = self.nasty()
        # Sometimes pack bytes as (invalid-UTF-8) str, or str as bin.
        return msgpack.packb(obj, use_bin_type=rng.random() < 0.8)  # type: ignore[no-any-return]


def test_fuzz_seeded_mutations() -> None:
    rng = random.Random(0xC0DEC)
    mutate = _Mutator(rng)
    frames = [mutate.frame() for _ in range(300)]
    outcomes = {True: 0, False: 0}
    for _ in range(20_000):
        data = rng.choice(frames)
        for _ in range(rng.randint(1, 2)):
            if rng.random() < 0.5:
                data = mutate.bytes_mutation(data) if data else b"\xc0"
            else:
                try:
                    data = mutate.structure_mutation(data)
                except Exception:  # the byte mutation broke it: mutate bytes again
                    data = mutate.bytes_mutation(data) if data else b"\xc0"
        outcomes[_check_outcome(data)] += 1
    # The fuzzer must reach both outcomes, or it is not testing much.
    assert outcomes[True] > 200 and outcomes[False] > 10_000, outcomes


# --- ids and dedupe ------------------------------------------------------------------------


def test_message_ids_are_unique_and_parseable() -> None:
    ids = MessageIds("node:with:colons", incarnation=7)
    made = [ids.next() for _ in range(1000)]
    assert len(set(made)) == 1000
    assert made[0] == "node:with:colons:7:0" and made[-1] == "node:with:colons:7:999"
    assert made[5].rsplit(":", 2) == ["node:with:colons", "7", "5"]
    assert ids.counter == 1000
    # A restart bumps the incarnation: no id can repeat.
    again = MessageIds("node:with:colons", incarnation=8)
    assert again.next() not in made
    # Ids always fit the envelope bound.
    long_node = "n" * (128 - len(":0:") - 20)
    assert len(MessageIds(long_node, 0, start=10**19).next()) <= 128
    with pytest.raises(LocalProtocolError):
        MessageIds("n" * 120, incarnation=0)
    with pytest.raises(LocalProtocolError):
        MessageIds("n", incarnation=-1)
    with pytest.raises(LocalProtocolError):
        MessageIds("", incarnation=0)


def test_deduper_records_and_evicts_oldest() -> None:
    dedupe = Deduper(capacity=3)
    assert [dedupe.seen(i) for i in ("a", "b", "c")] == [False, False, False]
    assert dedupe.seen("a") and dedupe.seen("c")  # duplicates, order unchanged
    assert not dedupe.seen("d")  # evicts "a", the oldest
    assert len(dedupe) == 3 and "a" not in dedupe
    assert not dedupe.seen("a")  # forgotten, so recorded again (evicts "b")
    assert not dedupe.seen("b")
    assert dedupe.seen("d") and dedupe.seen("a")


def test_deduper_keyed_by_sender() -> None:
    dedupe = Deduper()
    assert not dedupe.seen("victim:1:5", sender="mallory")
    assert not dedupe.seen("victim:1:5", sender="victim")  # not pre-poisoned
    assert dedupe.seen("victim:1:5", sender="victim")


def test_deduper_default_capacity_is_bounded() -> None:
    dedupe = Deduper()
    assert dedupe.capacity == 50_000
    for i in range(60_000):
        dedupe.seen(str(i))
    assert len(dedupe) == 50_000 and "9999" not in dedupe and "10000" in dedupe
    with pytest.raises(ValueError):
        Deduper(0)


# --- docs ----------------------------------------------------------------------------------


def test_protocol_md_has_the_current_message_tables() -> None:
    assert docgen.render() in docgen.DOC_PATH.read_text(encoding="utf-8"), (
        "docs/protocol.md is stale: run `python -m protocols.docgen --write`"
    )


def test_docgen_check_mode(capsys: pytest.CaptureFixture[str]) -> None:
    # The constants table and docs/wire-schema.json: tests/test_protocol_doc.py.
    assert docgen.main(["--check"]) == 0
    assert docgen.main([]) == 0
    assert capsys.readouterr().out == docgen.render() + "\n" + docgen_constants.render()


# --- speed (informative; asserted loosely so a loaded CI box does not flake) --------------


def test_decode_is_fast_enough() -> None:
    import timeit

    data = encode(GRANT, msg_id=MSG_ID, sender=SENDER)
    per_call = min(timeit.repeat(lambda: decode(data), number=2000, repeat=5)) / 2000
    assert per_call < 200e-6, f"decode of a LeaseGrant took {per_call * 1e6:.1f} us"


# --- the generated fast paths agree with the reference validators ---------------------------


def _outcome(fn: Any, value: Any) -> tuple[str, Any]:
    """What one body/message check does with ``value``: accept (and return what)
    or reject (and say why, with the field path)."""
    try:
        return "ok", fn(value)
    except codec._Reject as rej:
        return "rejected", rej.describe()


def _disagreements(cls: type[Message]) -> list[str]:
    """Edge values of every field of ``cls`` on which the generated decode or
    encode of its class does not do exactly what the reference method does."""
    cc = codec._BY_CLASS[cls]
    out = []
    for name, hint, meta in _fields(cls):
        for value, _valid in edge_values(hint, meta):
            message = attrs.evolve(minimal(cls), **{name: value})
            body = _to_wire(message)
            if _outcome(cc.decode, body) != _outcome(cc.decode_body, body):
                out.append(f"decode {cls.TYPE}.{name}={value!r:.40}")
            if _outcome(cc.encode, message) != _outcome(cc.encode_body, message):
                out.append(f"encode {cls.TYPE}.{name}={value!r:.40}")
    return out


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.TYPE)
def test_fast_paths_agree_with_the_reference(cls: type[Message]) -> None:
    assert codec._BY_CLASS[cls].decode is not codec._BY_CLASS[cls].decode_body  # generated
    assert _disagreements(cls) == []


def test_fast_path_agreement_check_catches_a_lenient_generator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Planted bug: the generated str test forgets the length bound.  The
    # agreement check must see the fast path accept what the reference rejects.
    real = codec._inline_test

    def lenient(fs: codec.FieldSpec, var: str) -> str | None:
        return f"type({var}) is str" if fs.kind == "str" else real(fs, var)

    monkeypatch.setattr(codec, "_inline_test", lenient)
    cc = codec._BY_CLASS[Bid]
    monkeypatch.setattr(cc, "decode", codec._compile(cc)[0])
    monkeypatch.setattr(cc, "encode", codec._compile(cc)[1])
    assert any(d.startswith("decode bid.") for d in _disagreements(Bid))
