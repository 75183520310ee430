"""The strict wire codec: one msgpack map per frame, validated on the way in.

A frame is a msgpack map with exactly five keys (see ``docs/protocol.md``)::

    {"v": 1, "t": "<Message.TYPE>", "id": "<msg id>", "from": "<peer id>",
     "body": {<every field of the message, by attribute name>}}

Decoding is *strict*: any deviation from the schema of :mod:`protocols.messages`
(unknown version or type, a missing, extra or duplicate key, a wrong type, a
value out of its declared bounds, trailing bytes, ext types, invalid UTF-8, an
oversized frame, ...) raises :class:`~protocols.errors.RemoteProtocolError` and nothing
else, so a hostile peer can at worst get its frame dropped.  Encoding applies the
very same checks and raises :class:`~protocols.errors.LocalProtocolError`: we
never send a frame a correct peer would have to reject.

Speed: the simulator decodes ~300k frames per run, so every class gets its
validators built once, at import, from ``attrs.fields`` and the resolved type
hints.  The hot path does no reflection: one ``msgpack.unpackb`` call, then one
function per message class, generated from the same field table, that tests
every scalar field inline (see "generated fast paths" below).

Also here: :class:`MessageIds` (clock-free unique message ids) and
:class:`Deduper` (bounded seen-set that drops duplicated frames).
"""

from __future__ import annotations

import collections
import functools
import math
import typing
from collections.abc import Callable, Hashable
from typing import Any, Final

import attrs
import msgpack

from protocols.errors import LocalProtocolError, RemoteProtocolError
from protocols.messages import (
    ALL_MESSAGES,
    MAX_ID_LEN,
    MAX_TEXT_LEN,
    Message,
)

__all__ = [
    "FREE_MAX_DEPTH",
    "FREE_MAX_ITEMS",
    "FREE_MAX_STR",
    "MAX_FRAME",
    "MAX_ITEM_LEN",
    "MAX_KEY_LEN",
    "PROTOCOL_VERSION",
    "Deduper",
    "Envelope",
    "FieldSpec",
    "MessageIds",
    "decode",
    "encode",
    "encode_many",
    "field_specs",
    "format_number",
    "unique_map",
]

PROTOCOL_VERSION: Final = 1
MAX_FRAME: Final = 256 * 1024  # bytes of one encoded frame, envelope included

# Bounds of the *elements* of typed containers (``dict[str, str]``,
# ``list[str]``); the container's own ``max_len`` bounds its entry count.
MAX_KEY_LEN: Final = MAX_ID_LEN  # label / env names
MAX_ITEM_LEN: Final = MAX_TEXT_LEN  # label / env values, list items (addrs...)

# Free-form ``dict[str, Any]`` fields (the canonical task spec): only msgpack
# primitives, bounded in shape.  The spec module re-validates the semantics.
FREE_MAX_DEPTH: Final = 8  # nesting levels of maps/arrays, the field's own map = 1
FREE_MAX_ITEMS: Final = 1024  # array items + map entries, summed over the tree
FREE_MAX_STR: Final = 4096  # per str / bin value and per map key
_INT_MIN: Final = -(2**63)  # msgpack's integer range (int64 / uint64)
_INT_MAX: Final = 2**64 - 1

_ENVELOPE_KEYS: Final = frozenset({"v", "t", "id", "from", "body"})

# One packer for every encode: ``msgpack.packb`` builds (and frees) a Packer
# and its buffer per call, which cost more than packing a small frame.  Its
# bytes are packb's (autoreset: each call returns one object's bytes, and a
# failed call leaves the buffer empty).  Only validated values of exact
# msgpack types are packed here, so no Python code runs inside a call: a call
# never interleaves with another one.
_pack: Final = msgpack.Packer(use_bin_type=True).pack

# Per-object limits handed to msgpack, checked against each declared length
# before anything is allocated: no array or map may exceed what any field could
# accept, no str/bin the frame size.  The exact bounds are enforced per field.
_UNPACK_LIMITS: Final[dict[str, int]] = {
    "max_str_len": MAX_FRAME,
    "max_bin_len": MAX_FRAME,
    "max_array_len": FREE_MAX_ITEMS,
    "max_map_len": FREE_MAX_ITEMS,
    "max_ext_len": 0,  # ext types (timestamps included) are never valid
}


# --- errors ----------------------------------------------------------------------


class _Reject(Exception):
    """Internal validation failure; the public API turns it into a Local or
    Remote protocol error.  ``path`` is filled innermost-first while the
    exception unwinds, so validators never pay for path bookkeeping."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str] = []

    @classmethod
    def at(cls, part: str, reason: str) -> _Reject:
        """A failure inside a container, at item/key ``part`` (e.g. ``[3]``)."""
        rej = cls(reason)
        rej.path.append(part)
        return rej

    def describe(self) -> str:
        out = ""
        for part in reversed(self.path):
            out += part if (not out or part.startswith("[")) else "." + part
        return f"{out}: {self.reason}" if out else self.reason


def _short(value: object) -> str:
    """repr() for error messages, truncated: a peer's 100 KB string must not end
    up verbatim in our logs."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_NAMES: Final[dict[type, str]] = {
    type(None): "nil",
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    bytes: "bin",
    list: "array",
    tuple: "tuple",
    dict: "map",
}


def _tname(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def format_number(x: float) -> str:
    """A bound for messages and docs: 9007199254740992 reads better as 2**53."""
    if float(x).is_integer():
        i = int(x)
        mag = abs(i)
        if mag >= 2**20 and mag & (mag - 1) == 0:
            return f"{'-' if i < 0 else ''}2**{mag.bit_length() - 1}"
        return str(i)
    return repr(x)


# --- field specs ----------------------------------------------------------------

Check = Callable[[Any], Any]
"""A field validator: returns the (possibly converted) value or raises _Reject."""


@attrs.frozen
class FieldSpec:
    """How one message field travels on the wire (also read by ``docgen``).

    ``kind`` is one of: ``str``, ``int``, ``float``, ``bool``, ``bin``,
    ``list[str]``, ``map[str,str]``, ``message`` (a nested message map),
    ``list[message]``, ``free`` (free-form map).
    """

    name: str
    kind: str
    max_len: int | None = None
    lo: float | None = None
    hi: float | None = None
    nested: type[Message] | None = None  # for message / list[message]


def _check_str(max_len: int) -> Check:
    def check(v: Any) -> Any:
        if type(v) is not str:
            raise _Reject(f"expected str, got {_tname(v)}")
        if len(v) > max_len:
            raise _Reject(f"str too long: {len(v)} > {max_len} characters")
        return v

    return check


def _check_bin(max_len: int) -> Check:
    def check(v: Any) -> Any:
        if type(v) is not bytes:
            raise _Reject(f"expected bin, got {_tname(v)}")
        if len(v) > max_len:
            raise _Reject(f"bin too long: {len(v)} > {max_len} bytes")
        return v

    return check


def _check_int(lo: float, hi: float) -> Check:
    def check(v: Any) -> Any:
        # ``type(...) is int`` on purpose: bool is an int subclass but not an int
        # on the wire (and must not sneak in as 0/1).
        if type(v) is not int:
            if type(v) is float:  # e.g. a JS number 2**32 or more, packed as float64
                raise _Reject(
                    f"expected int, got float {_short(v)} (integers of any size must be "
                    "msgpack ints, never float64: e.g. BigInt in JS)"
                )
            raise _Reject(f"expected int, got {_tname(v)}")
        if v < lo:
            raise _Reject(f"must be >= {format_number(lo)}, got {_short(v)}")
        if v > hi:
            raise _Reject(f"must be <= {format_number(hi)}, got {_short(v)}")
        return v

    return check


def _check_float(lo: float, hi: float) -> Check:
    isfinite = math.isfinite

    def check(v: Any) -> Any:
        t = type(v)
        if t is int:  # a peer may send 2 for 2.0 (msgpack has no "float-ness")
            if not lo <= v <= hi:  # compare before float(): 10**400 would overflow
                raise _Reject(
                    f"must be in [{format_number(lo)}, {format_number(hi)}], got {_short(v)}"
                )
            return float(v)
        if t is not float:
            raise _Reject(f"expected float, got {_tname(v)}")
        if not isfinite(v):
            raise _Reject(f"must be finite, got {v!r}")
        if not lo <= v <= hi:
            raise _Reject(f"must be in [{format_number(lo)}, {format_number(hi)}], got {v!r}")
        return v

    return check


def _check_bool(v: Any) -> Any:
    if v is not True and v is not False:
        raise _Reject(f"expected bool, got {_tname(v)}")
    return v


def _check_list_str(max_len: int) -> Check:
    def check(v: Any) -> Any:
        if type(v) is not list:
            raise _Reject(f"expected array, got {_tname(v)}")
        if len(v) > max_len:
            raise _Reject(f"too many items: {len(v)} > {max_len}")
        for i, item in enumerate(v):
            if type(item) is not str:
                raise _Reject.at(f"[{i}]", f"expected str, got {_tname(item)}")
            if len(item) > MAX_ITEM_LEN:
                raise _Reject.at(f"[{i}]", f"str too long: {len(item)} > {MAX_ITEM_LEN} characters")
        return v

    return check


def _check_map_str(max_len: int) -> Check:
    def check(v: Any) -> Any:
        if type(v) is not dict:
            raise _Reject(f"expected map, got {_tname(v)}")
        if len(v) > max_len:
            raise _Reject(f"too many entries: {len(v)} > {max_len}")
        for key, item in v.items():
            if type(key) is not str:
                raise _Reject(f"map keys must be str, got {_tname(key)}")
            if len(key) > MAX_KEY_LEN:
                raise _Reject(f"key too long: {len(key)} > {MAX_KEY_LEN} characters")
            if type(item) is not str:
                raise _Reject.at(f"[{_short(key)}]", f"expected str, got {_tname(item)}")
            if len(item) > MAX_ITEM_LEN:
                raise _Reject.at(
                    f"[{_short(key)}]", f"str too long: {len(item)} > {MAX_ITEM_LEN} characters"
                )
        return v

    return check


def _free_scalar_error(v: Any) -> str | None:
    """Why free-form scalar ``v`` is invalid, None if it is fine (slow path)."""
    t = type(v)
    if t is str or t is bytes:
        return f"{_tname(v)} too long: {len(v)} > {FREE_MAX_STR}"
    if t is int:
        return f"int out of msgpack range: {_short(v)}"
    if t is float:
        return f"must be finite, got {v!r}"
    return f"not a msgpack primitive: {_tname(v)}"


def _check_free_children(container: Any, depth: int, left: int) -> int:
    """Validate the children of a free-form map/array sitting at ``depth`` (the
    field's own map is depth 1); ``left`` items may still appear in the whole
    tree.  Returns the items left.

    Scalars are checked inline rather than by a call per value: free-form task
    specs are the bulk of a grant, and function calls dominate the cost.
    """
    if type(container) is dict:
        for key in container:
            if type(key) is not str:
                raise _Reject(f"map keys must be str, got {_tname(key)}")
            if len(key) > FREE_MAX_STR:
                raise _Reject(f"key too long: {len(key)} > {FREE_MAX_STR}")
        values: Any = container.values()
    else:
        values = container
    isfinite = math.isfinite
    i = 0
    try:
        for i, v in enumerate(values):  # noqa: B007 - i names the culprit below
            t = type(v)
            if t is str or t is bytes:
                if len(v) > FREE_MAX_STR:
                    raise _Reject(_free_scalar_error(v) or "")
            elif t is int:
                if not _INT_MIN <= v <= _INT_MAX:
                    raise _Reject(_free_scalar_error(v) or "")
            elif t is float:
                if not isfinite(v):
                    raise _Reject(_free_scalar_error(v) or "")
            elif t is list or t is dict:
                if depth >= FREE_MAX_DEPTH:
                    raise _Reject(f"nested deeper than {FREE_MAX_DEPTH} levels")
                left -= len(v)
                if left < 0:
                    raise _Reject(f"more than {FREE_MAX_ITEMS} items in total")
                left = _check_free_children(v, depth + 1, left)
            elif v is not None and t is not bool:
                raise _Reject(_free_scalar_error(v) or "")
    except _Reject as rej:
        if type(container) is dict:
            key = list(container)[i]
            rej.path.append(key if key.isidentifier() else f"[{_short(key)}]")
        else:
            rej.path.append(f"[{i}]")
        raise
    return left


def _check_free(max_len: int | None) -> Check:
    limit = FREE_MAX_ITEMS if max_len is None else min(max_len, FREE_MAX_ITEMS)

    def check(v: Any) -> Any:
        if type(v) is not dict:
            raise _Reject(f"expected map, got {_tname(v)}")
        if len(v) > limit:
            raise _Reject(f"too many entries: {len(v)} > {limit}")
        if v:  # the common empty map costs nothing more
            _check_free_children(v, 1, FREE_MAX_ITEMS - len(v))
        return v

    return check


# --- per-class codecs -----------------------------------------------------------


class _ClassCodec:
    """Prebuilt decoder/encoder of one message class."""

    def __init__(self, cls: type[Message], fields: list[FieldSpec]) -> None:
        self.cls = cls
        self.tag = cls.TYPE
        self.fields = fields
        self.names = frozenset(f.name for f in fields)
        # (name, decode check, encode check): the two differ only for nested
        # messages (map <-> instance); filled in by _build_codec.
        self.checks: list[tuple[str, Check, Check]] = []
        self.decoders: list[tuple[str, Check]] = []
        # The generated straight-line versions of decode_body / encode_body
        # (see _compile): the reference methods stay the one source of errors.
        self.decode: Check = self.decode_body
        self.encode: Check = self.encode_body

    def decode_body(self, body: Any) -> Message:
        if type(body) is not dict:
            raise _Reject(f"expected map, got {_tname(body)}")
        if body.keys() != self.names:
            raise _Reject(_key_diff(body.keys(), self.names))
        try:
            # A comprehension is the fastest loop CPython has; it hides which
            # field failed, so the (rare) error path finds it again below.
            kwargs = {name: dec(body[name]) for name, dec in self.decoders}
        except _Reject:
            self._name_culprit(body)
            raise
        return self.cls(**kwargs)

    def _name_culprit(self, body: dict[str, Any]) -> None:
        """Re-run the (pure) checks one by one to raise with the field's name."""
        for name, dec in self.decoders:
            try:
                dec(body[name])
            except _Reject as rej:
                rej.path.append(name)
                raise

    def encode_body(self, message: Message) -> dict[str, Any]:
        if type(message) is not self.cls:
            raise _Reject(f"expected {self.cls.__name__}, got {type(message).__name__}")
        body: dict[str, Any] = {}
        name = ""
        try:
            for name, _, enc in self.checks:
                body[name] = enc(getattr(message, name))
        except _Reject as rej:
            rej.path.append(name)
            raise
        return body


def _key_diff(got: Any, want: frozenset[str]) -> str:
    missing = sorted(want.difference(got))
    extra = sorted(_short(k) for k in got if k not in want)
    parts = []
    if missing:
        parts.append("missing field(s) " + ", ".join(missing))
    if extra:
        parts.append("unexpected field(s) " + ", ".join(extra))
    return "; ".join(parts)


def _require(value: float | None, what: str, where: str) -> float:
    if value is None:
        # Every value on the wire is bounded: a new field without bounds is a
        # programming error we want at import time, not a DoS vector later.
        raise TypeError(f"codec: {where} needs bounded({what}=...) metadata")
    return value


def _field_spec(cls: type[Message], field: attrs.Attribute[Any], hint: Any) -> FieldSpec:
    where = f"{cls.__name__}.{field.name}"
    meta = field.metadata
    max_len: int | None = meta.get("max_len")
    lo: float | None = meta.get("lo")
    hi: float | None = meta.get("hi")
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)

    def spec(kind: str, nested: type[Message] | None = None) -> FieldSpec:
        return FieldSpec(field.name, kind, max_len, lo, hi, nested)

    if hint is bool:
        return spec("bool")
    if hint is int or hint is float:
        _require(lo, "lo", where)
        _require(hi, "hi", where)
        return spec(hint.__name__)
    if hint is str or hint is bytes:
        _require(max_len, "max_len", where)
        return spec("str" if hint is str else "bin")
    if isinstance(hint, type) and issubclass(hint, Message):
        return spec("message", hint)
    if origin is list and len(args) == 1:
        _require(max_len, "max_len", where)
        (item,) = args
        if item is str:
            return spec("list[str]")
        if isinstance(item, type) and issubclass(item, Message):
            return spec("list[message]", item)
    if origin is dict and len(args) == 2 and args[0] is str:
        if args[1] is str:
            _require(max_len, "max_len", where)
            return spec("map[str,str]")
        if args[1] is Any:
            return spec("free")
    raise TypeError(f"codec: {where}: unsupported field type {hint!r}")


_BY_CLASS: dict[type[Message], _ClassCodec] = {}
_BY_TAG: dict[str, _ClassCodec] = {}


def _build_codec(cls: type[Message]) -> _ClassCodec:
    existing = _BY_CLASS.get(cls)
    if existing is not None:
        return existing
    hints = typing.get_type_hints(cls)
    specs = [_field_spec(cls, f, hints[f.name]) for f in attrs.fields(cls)]
    codec = _ClassCodec(cls, specs)
    for fs in specs:
        dec, enc = _field_checks(fs)
        codec.checks.append((fs.name, dec, enc))
        codec.decoders.append((fs.name, dec))
    codec.decode, codec.encode = _compile(codec)
    _BY_CLASS[cls] = codec
    return codec


def _field_checks(fs: FieldSpec) -> tuple[Check, Check]:
    kind = fs.kind
    if kind == "bool":
        return _check_bool, _check_bool
    if kind == "int" or kind == "float":
        assert fs.lo is not None and fs.hi is not None
        check = (_check_int if kind == "int" else _check_float)(fs.lo, fs.hi)
        return check, check
    if kind == "free":
        check = _check_free(fs.max_len)
        return check, check
    if kind == "message":
        assert fs.nested is not None
        inner = _build_codec(fs.nested)
        return inner.decode_body, inner.encode_body
    # Every remaining kind is a sized one; _field_spec required max_len for it.
    assert fs.max_len is not None
    if kind == "list[message]":
        assert fs.nested is not None
        inner = _build_codec(fs.nested)
        return _list_of(inner.decode_body, fs.max_len), _list_of(inner.encode_body, fs.max_len)
    sized: dict[str, Callable[[int], Check]] = {
        "str": _check_str,
        "bin": _check_bin,
        "list[str]": _check_list_str,
        "map[str,str]": _check_map_str,
    }
    check = sized[kind](fs.max_len)
    return check, check


def _list_of(item_check: Check, max_len: int) -> Check:
    def check(v: Any) -> Any:
        if type(v) is not list:
            raise _Reject(f"expected array, got {_tname(v)}")
        if len(v) > max_len:
            raise _Reject(f"too many items: {len(v)} > {max_len}")
        out = []
        for i, item in enumerate(v):
            try:
                out.append(item_check(item))
            except _Reject as rej:  # try/except is free in 3.11 until it fires
                rej.path.append(f"[{i}]")
                raise
        return out

    return check


# --- generated fast paths -------------------------------------------------------
#
# The per-field closures above are the *reference* validators: they are simple
# to read and they name the culprit of a rejection.  The hot path does not
# call them one by one: from the same FieldSpec table, _compile generates, per
# message class, one straight-line function that tests every scalar field
# inline (exactly the reference's conditions) and calls a closure only for
# containers, nested messages and free-form maps.  It only ever *accepts*: on
# any doubt it hands the whole body to the reference method, which rejects it
# with the usual message (or accepts it, should the inline test be stricter).
# A new message type needs nothing here: it gets its function from its fields.


def _inline_test(fs: FieldSpec, var: str) -> str | None:
    """A Python expression true when ``var`` passes ``fs``'s reference check
    unchanged (None: no inline form, call the field's closure)."""
    kind = fs.kind
    if kind == "str":
        return f"type({var}) is str and len({var}) <= {fs.max_len!r}"
    if kind == "bin":
        return f"type({var}) is bytes and len({var}) <= {fs.max_len!r}"
    if kind == "bool":
        return f"({var} is True or {var} is False)"
    finite = fs.lo is not None and fs.hi is not None and math.isfinite(fs.lo) \
        and math.isfinite(fs.hi)
    if kind == "int" and finite:
        return f"type({var}) is int and {fs.lo!r} <= {var} <= {fs.hi!r}"
    if kind == "float" and finite:
        # Finite bounds: NaN and the infinities fail the range test.  An int is
        # accepted by the reference too, converted (handled by the caller).
        return f"type({var}) is float and {fs.lo!r} <= {var} <= {fs.hi!r}"
    return None


def _compile(codec: _ClassCodec) -> tuple[Check, Check]:
    """Generate the fast decode and encode functions of one class."""
    env: dict[str, Any] = {"_Reject": _Reject, "cls": codec.cls, "NAMES": codec.names,
                           "slow_decode": codec.decode_body, "slow_encode": codec.encode_body}
    dec_lines: list[str] = []
    enc_lines: list[str] = []
    for i, (fs, (name, dec, enc)) in enumerate(zip(codec.fields, codec.checks, strict=True)):
        var = f"v{i}"
        key = repr(name)
        dec_lines.append(f"{var} = body[{key}]")
        enc_lines.append(f"{var} = message.{name}")
        test = _inline_test(fs, var)
        if fs.kind == "float" and test is not None:
            for lines in (dec_lines, enc_lines):
                lines.append(f"if not ({test}):")
                lines.append(f"    if type({var}) is int and {fs.lo!r} <= {var} <= {fs.hi!r}:")
                lines.append(f"        {var} = float({var})")
                lines.append("    else:")
                lines.append("        return SLOW")
        elif test is not None:
            for lines in (dec_lines, enc_lines):
                lines.append(f"if not ({test}):")
                lines.append("    return SLOW")
        else:
            if fs.kind == "message":
                assert fs.nested is not None
                dec, enc = _BY_CLASS[fs.nested].decode, _BY_CLASS[fs.nested].encode
            elif fs.kind == "list[message]":
                assert fs.nested is not None and fs.max_len is not None
                inner = _BY_CLASS[fs.nested]
                dec, enc = _list_of(inner.decode, fs.max_len), _list_of(inner.encode, fs.max_len)
            env[f"dec{i}"], env[f"enc{i}"] = dec, enc
            dec_lines.append(f"{var} = dec{i}({var})")
            enc_lines.append(f"{var} = enc{i}({var})")
    args = ", ".join(f"{fs.name}=v{i}" for i, fs in enumerate(codec.fields))
    entries = ", ".join(f"{fs.name!r}: v{i}" for i, fs in enumerate(codec.fields))
    indent = "\n        "
    src = f"""
def fast_decode(body):
    if type(body) is not dict or body.keys() != NAMES:
        return slow_decode(body)
    try:
        {indent.join(dec_lines).replace("SLOW", "slow_decode(body)") or "pass"}
    except _Reject:
        return slow_decode(body)
    return cls({args})

def fast_encode(message):
    if type(message) is not cls:
        return slow_encode(message)
    try:
        {indent.join(enc_lines).replace("SLOW", "slow_encode(message)") or "pass"}
    except _Reject:
        return slow_encode(message)
    return {{{entries}}}
"""
    exec(compile(src, f"<codec {codec.cls.__name__}>", "exec"), env)
    return env["fast_decode"], env["fast_encode"]


for _cls in ALL_MESSAGES:
    if not _cls.TYPE or _cls.TYPE in _BY_TAG:
        raise TypeError(f"codec: {_cls.__name__} needs a unique TYPE, got {_cls.TYPE!r}")
    _BY_TAG[_cls.TYPE] = _build_codec(_cls)
del _cls


def field_specs(cls: type[Message]) -> list[FieldSpec]:
    """The wire layout of ``cls``'s body, in field order (for docs and tests)."""
    return list(_build_codec(cls).fields)


# --- envelope -------------------------------------------------------------------


@attrs.frozen
class Envelope:
    """A decoded frame.  ``sender`` is what the frame *claims*; the core must
    compare it with the transport-authenticated peer id before trusting it."""

    version: int
    msg_id: str
    sender: str
    message: Message


# Envelopes are built on every decode: the slots' own setters skip the frozen
# class's __init__ (a bound setattr per field).  Same object as Envelope(...):
# tests/test_codec_memo.py compares the two.
_new_object: Final = object.__new__
_set_version: Final = Envelope.__dict__["version"].__set__
_set_msg_id: Final = Envelope.__dict__["msg_id"].__set__
_set_sender: Final = Envelope.__dict__["sender"].__set__
_set_message: Final = Envelope.__dict__["message"].__set__


def _envelope(version: int, msg_id: str, sender: str, message: Message) -> Envelope:
    """``Envelope(version, msg_id, sender, message)``, cheaper."""
    env: Envelope = _new_object(Envelope)
    _set_version(env, version)
    _set_msg_id(env, msg_id)
    _set_sender(env, sender)
    _set_message(env, message)
    return env


def _check_id(value: Any, what: str) -> str:
    if type(value) is not str:
        raise _Reject(f"{what}: expected str, got {_tname(value)}")
    if not 0 < len(value) <= MAX_ID_LEN:
        raise _Reject(f"{what}: length must be 1..{MAX_ID_LEN}, got {len(value)}")
    return value


def _reject_ext(code: int, data: bytes) -> Any:
    # Belt and braces: max_ext_len=0 already refuses every ext payload.
    raise ValueError(f"msgpack ext type {code} is not allowed")


def unique_map(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """``object_pairs_hook`` that refuses duplicate map keys.

    The protocol's rule (docs/protocol.md, "Encoding rules"): a map holding a
    key twice is rejected, in frames and in signed records alike, because
    implementations disagree on which copy wins, so two verifiers could read
    different fields from the same bytes.  Costs one dict build per map.
    """
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[Any] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate map key {_short(key)}")
            seen.add(key)
    return out


# msgpack.unpackb with the codec's options bound once (a partial merges them
# in C; spelling them out built a keyword dict per frame).
_unpackb: Final = functools.partial(
    msgpack.unpackb,
    raw=False,
    strict_map_key=True,
    use_list=True,
    object_pairs_hook=unique_map,
    ext_hook=_reject_ext,
    **_UNPACK_LIMITS,
)


def decode(data: bytes) -> Envelope:
    """Parse and validate one frame.

    Raises :class:`RemoteProtocolError` (and nothing else) for anything that is
    not a valid frame of this protocol version.
    """
    try:
        size = len(data)
        if size > MAX_FRAME:
            raise RemoteProtocolError(f"frame too large: {size} > {MAX_FRAME} bytes")
        remembered = _remembered_body(data)
        if remembered is not None:
            return remembered
        try:
            obj = _unpackb(data)
        except Exception as exc:  # ExtraData, FormatError, StackError, UnicodeError...
            raise RemoteProtocolError(f"undecodable frame: {type(exc).__name__}: {exc}") from None
        envelope = _decode_envelope(obj)
        if type(data) is bytes and data[:_MEMO_PREFIX_LEN] in _MEMO_PREFIXES:
            _remember_body(data, envelope)
        return envelope
    except RemoteProtocolError:
        raise
    except _Reject as rej:
        raise RemoteProtocolError(rej.describe()) from None
    except Exception as exc:  # not bytes at all, or a validator bug: never crash a node
        raise RemoteProtocolError(f"invalid frame: {type(exc).__name__}: {exc}") from exc


# --- remembered bodies ------------------------------------------------------------
#
# A node sends the same hello body (its NodeInfo, no peers wanted) to every
# member of its view each heartbeat round, each in its own frame with its own
# message id.  Decoding is a pure function of the bytes, and msgpack reads a
# frame front to back, so what follows the message id (the sender and the
# body) decodes to the same values whatever id precedes it.  A frame that
# decoded and validated in full is remembered by its *rest*: the bytes after
# its id, keyed with its type.  A later frame of the same type whose rest is
# those very bytes is not unpacked and validated again: its head (version,
# type, the "id" key) must be byte for byte the one ``encode`` writes, and its
# id is read from its own bytes and checked (str, strict UTF-8, bounds);
# anything else takes the full path.  Only successes are remembered, only for
# the types in ``_MEMO_TYPES``, only small rests, at most
# ``MAX_REMEMBERED_BODIES`` (then the memo starts over): memory stays bounded
# whatever peers send.  The remembered sender and message are shared by every
# frame carrying those bytes; messages are frozen and their handlers never
# mutate them.

_MEMO_TYPES: Final = frozenset({"hello"})
MAX_REMEMBERED_BODIES: Final = 4096
MAX_REMEMBERED_BODY: Final = 1024  # bytes of one remembered rest (a hello's is ~200-600)
_FRAME_HEAD: Final = b"\x85\xa1v\x01\xa1t"  # fixmap(5), "v", 1, "t"
_MEMO_PREFIXES: Final = {
    _FRAME_HEAD + msgpack.packb(tag, use_bin_type=True) + b"\xa2id": tag for tag in _MEMO_TYPES
}
_MEMO_PREFIX_LEN: Final = len(next(iter(_MEMO_PREFIXES)))
assert all(len(p) == _MEMO_PREFIX_LEN for p in _MEMO_PREFIXES)
# (type tag, the bytes after the id) -> (sender, message)
_bodies: dict[tuple[str, bytes], tuple[str, Message]] = {}


def _read_str(data: bytes, pos: int) -> tuple[str, int]:
    """The msgpack str (fixstr or str8) at ``pos`` and the offset after it;
    ValueError (UnicodeDecodeError included) or IndexError if there is none."""
    head = data[pos]
    if 0xA0 <= head <= 0xBF:
        start = pos + 1
        end = start + (head & 0x1F)
    elif head == 0xD9:
        start = pos + 2
        end = start + data[pos + 1]
    else:
        raise ValueError("not a short str")
    if end > len(data):
        raise IndexError("str past the end")
    return data[start:end].decode(), end


def _split_frame(data: bytes) -> tuple[str, str, str, int] | None:
    """(type tag, msg id, sender, offset of the body) of a frame laid out as
    ``encode`` lays it out: fixmap(5) "v" 1 "t" <tag> "id" <id> "from" <sender>
    "body" <body>, the body running to the end.  None for any other layout."""
    if data[:6] != _FRAME_HEAD:
        return None
    try:
        tag, pos = _read_str(data, 6)
        if data[pos : pos + 3] != b"\xa2id":
            return None
        msg_id, pos = _read_str(data, pos + 3)
        if data[pos : pos + 5] != b"\xa4from":
            return None
        sender, pos = _read_str(data, pos + 5)
        if data[pos : pos + 5] != b"\xa4body":
            return None
    except (ValueError, IndexError):
        return None
    return tag, msg_id, sender, pos + 5


def _memo_split(data: bytes) -> tuple[str, str, int] | None:
    """(type tag, msg id, offset after the id) of a frame whose head is the
    one ``encode`` writes for a remembered type, its id a fixstr or str8;
    None for anything else (the id's bounds are not checked here)."""
    tag = _MEMO_PREFIXES.get(data[:_MEMO_PREFIX_LEN])
    if tag is None:
        return None
    try:
        msg_id, end = _read_str(data, _MEMO_PREFIX_LEN)
    except (ValueError, IndexError):
        return None
    return tag, msg_id, end


def _remembered_body(data: bytes) -> Envelope | None:
    """The envelope of ``data`` if what follows its id was decoded before
    (else None: take the full path).  Equal to what the full path returns."""
    if type(data) is not bytes:
        return None
    split = _memo_split(data)
    if split is None:
        return None
    tag, msg_id, end = split
    hit = _bodies.get((tag, data[end:]))
    if hit is None or not 0 < len(msg_id) <= MAX_ID_LEN:
        return None  # (a bad id: the full path names the fault)
    return _envelope(PROTOCOL_VERSION, msg_id, hit[0], hit[1])


def _remember_body(data: bytes, envelope: Envelope) -> None:
    """``data`` decoded in full to ``envelope``: remember what follows its id."""
    split = _memo_split(data)
    if split is None or len(data) - split[2] > MAX_REMEMBERED_BODY:
        return
    if len(_bodies) >= MAX_REMEMBERED_BODIES:
        _bodies.clear()
    _bodies[(split[0], data[split[2] :])] = (envelope.sender, envelope.message)


def forget_bodies() -> None:
    """Drop every remembered body (tests)."""
    _bodies.clear()


def _decode_envelope(obj: Any) -> Envelope:
    if type(obj) is not dict:
        raise _Reject(f"frame must be a map, got {_tname(obj)}")
    if obj.keys() != _ENVELOPE_KEYS:
        raise _Reject("envelope: " + _key_diff(obj.keys(), _ENVELOPE_KEYS))
    version = obj["v"]
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise _Reject(f"unsupported protocol version {_short(version)}")
    tag = obj["t"]
    codec = _BY_TAG.get(tag) if type(tag) is str else None
    if codec is None:
        raise _Reject(f"unknown message type {_short(tag)}")
    msg_id = _check_id(obj["id"], "envelope.id")
    sender = _check_id(obj["from"], "envelope.from")
    try:
        message = codec.decode(obj["body"])
    except _Reject as rej:
        rej.path.append(codec.tag)
        raise
    return _envelope(version, msg_id, sender, message)


def encode(message: Message, *, msg_id: str, sender: str) -> bytes:
    """Serialize ``message`` into one frame.

    Raises :class:`LocalProtocolError` if the message is not a protocol message,
    a value is out of bounds, or the frame would exceed :data:`MAX_FRAME`.
    """
    codec = _BY_CLASS.get(type(message))
    if codec is None or _BY_TAG.get(codec.tag) is not codec:
        raise LocalProtocolError(f"not a protocol message: {type(message).__name__}")
    try:
        # Key order v, t, id, from, body: decoders must not care, but simnet
        # reads the type tag from the fixed prefix of our frames to count them.
        frame = {
            "v": PROTOCOL_VERSION,
            "t": codec.tag,
            "id": _check_id(msg_id, "msg_id"),
            "from": _check_id(sender, "sender"),
            "body": codec.encode(message),
        }
    except _Reject as rej:
        if rej.path:
            rej.path.append(codec.tag)
        raise LocalProtocolError(f"cannot encode: {rej.describe()}") from None
    try:
        data: bytes = _pack(frame)
    except Exception as exc:  # e.g. a lone surrogate in a str (not UTF-8 encodable)
        raise LocalProtocolError(f"cannot encode {codec.tag}: {exc}") from exc
    if len(data) > MAX_FRAME:
        raise LocalProtocolError(
            f"cannot encode {codec.tag}: frame of {len(data)} bytes > {MAX_FRAME}"
        )
    return data


def encode_many(message: Message, *, msg_ids: list[str], sender: str) -> list[bytes]:
    """``[encode(message, msg_id=i, sender=sender) for i in msg_ids]``, byte for
    byte, with the body validated and packed once (a heartbeat says the same
    hello to every peer of the view).  Raises like ``encode``."""
    if not msg_ids:
        return []
    first = encode(message, msg_id=msg_ids[0], sender=sender)  # every check, once
    span = _id_span(first)
    if span is None:  # not the short-str layout: one full encode each
        return [first, *(encode(message, msg_id=i, sender=sender) for i in msg_ids[1:])]
    head, tail = first[: span[0]], first[span[1] :]
    frames = [first]
    for msg_id in msg_ids[1:]:
        frame = None
        if type(msg_id) is str and 0 < len(msg_id) <= MAX_ID_LEN:
            try:
                frame = head + _pack(msg_id) + tail
            except Exception:  # (a lone surrogate) encode names the fault
                frame = None
        if frame is None or len(frame) > MAX_FRAME:
            frame = encode(message, msg_id=msg_id, sender=sender)
        frames.append(frame)
    return frames


def _id_span(frame: bytes) -> tuple[int, int] | None:
    """Where the msg id (its str header included) sits in a frame laid out as
    ``encode`` lays it out (None: another layout)."""
    split = _split_frame(frame)
    if split is None:
        return None
    # _split_frame reads only fixstr/str8, which is how msgpack packs them.
    start = len(_FRAME_HEAD) + len(msgpack.packb(split[0])) + len(b"\xa2id")
    return start, start + len(msgpack.packb(split[1]))


# --- message ids and dedupe -----------------------------------------------------


class MessageIds:
    """Unique message ids ``"<node_id>:<incarnation>:<counter>"``.

    No clock and no randomness (the simulator must be deterministic): the caller
    passes ``incarnation``, a number it persists and bumps on every restart, so
    ids never repeat across restarts.  Parsing from the right
    (``rsplit(":", 2)``) is unambiguous even if a node id contains ``:``.
    """

    def __init__(self, node_id: str, incarnation: int, *, start: int = 0) -> None:
        if type(incarnation) is not int or incarnation < 0:
            raise LocalProtocolError(f"incarnation must be an int >= 0, got {incarnation!r}")
        self._prefix = f"{node_id}:{incarnation}:"
        # 20 digits: the counter never makes an id exceed the wire bound.
        if not node_id or len(self._prefix) + 20 > MAX_ID_LEN:
            raise LocalProtocolError(f"node id too long for message ids: {node_id!r}")
        self._counter = start

    @property
    def counter(self) -> int:
        """How many ids were made (the next id's counter)."""
        return self._counter

    def next(self) -> str:
        n = self._counter
        self._counter = n + 1
        return f"{self._prefix}{n}"


class Deduper:
    """Bounded, insertion-ordered seen-set of message ids.

    Drops *transport* duplicates (the same frame delivered twice, e.g. gossipsub
    redelivery).  Retransmissions carry a fresh id on purpose, so they pass and
    get answered again (see docs/protocol.md).  Oldest ids are evicted first;
    capacity bounds memory whatever peers send.
    """

    def __init__(self, capacity: int = 50_000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self._set: set[Hashable] = set()
        # deque + set: O(1) insert and evict-oldest (a dict popping its first
        # key degrades to O(n) scans over deleted slots).
        self._order: collections.deque[Hashable] = collections.deque()
        self._keyed: bool | None = None  # keyed by sender? (fixed by the first call)

    def __len__(self) -> int:
        return len(self._set)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is recorded: an id, or a (sender, id) pair."""
        if type(key) is tuple and len(key) == 2 and type(key[0]) is str \
                and type(key[1]) is str:
            key = _sender_key(key[1], key[0])
        return key in self._set

    def seen(self, msg_id: str, sender: str | None = None) -> bool:
        """True if already seen (a duplicate); otherwise records it, False.

        Pass the *authenticated* ``sender`` to key on (sender, id): then a peer
        cannot pre-poison the set with ids it expects another peer to use.
        One deduper is keyed by sender on every call or on none (a keyed id
        may be stored as the bare id: see ``_sender_key``).
        """
        keyed = sender is not None
        if keyed is not self._keyed:
            if self._keyed is not None:
                raise ValueError("a Deduper is keyed by sender on every call or on none")
            self._keyed = keyed
        key: Hashable = msg_id if sender is None else _sender_key(msg_id, sender)
        if key in self._set:
            return True
        self._set.add(key)
        self._order.append(key)
        if len(self._order) > self.capacity:
            self._set.discard(self._order.popleft())
        return False


def _sender_key(msg_id: str, sender: str) -> Hashable:
    """The seen-set key of (sender, msg_id): the id alone when it names its
    sender, as the ids ``MessageIds`` makes do for a node id without ":"
    ("<sender>:...", no ":" in the sender: the sender is then the id up to its
    first ":"), else the pair.  One-to-one, since a str never equals a tuple, and one object fewer
    per remembered id (a tuple is 56 bytes, the bulk of a big run's memory)."""
    if msg_id.find(":") == len(sender) and msg_id.startswith(sender):
        return msg_id
    return (sender, msg_id)


def message_type(data: bytes) -> str:
    """The type tag ``t`` of a frame, without validating the rest ("?" when it
    has none).  For logs, counters and fault injection, never for dispatch."""
    if len(data) > MAX_FRAME:
        return "?"
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:  # any garbage: msgpack raises assorted types
        return "?"
    tag = obj.get("t") if isinstance(obj, dict) else None
    return tag if isinstance(tag, str) else "?"
