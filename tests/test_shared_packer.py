"""The shared msgpack packers give ``msgpack.packb``'s bytes (issue 16, simnet core).

``protocols.codec.encode`` and ``simnet.store.SimStore`` pack through one
long-lived ``msgpack.Packer`` each instead of building one per call.  These
tests show the frames and records are byte for byte packb's, also right after
a call that failed halfway (the packer must not keep a half-packed object),
and planted packers that keep state between calls are caught.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

from protocols import codec
from protocols.errors import LocalProtocolError
from protocols.messages import ALL_MESSAGES, Goodbye
from simnet import store
from tests.planting import without_shrinking
from tests.test_codec import IDS, message_strategy

_MESSAGES = st.one_of(*(message_strategy(cls) for cls in ALL_MESSAGES))


def _packb_frame(message: Any, msg_id: str, sender: str) -> bytes:
    """What encode packed before: packb of the five-key frame map."""
    body = codec._BY_CLASS[type(message)].encode(message)
    frame = {"v": 1, "t": message.TYPE, "id": msg_id, "from": sender, "body": body}
    data: bytes = msgpack.packb(frame, use_bin_type=True)
    return data


def _bad_encode() -> None:
    """An encode that fails inside the packer (a lone surrogate in a str)."""
    with pytest.raises(LocalProtocolError):
        codec.encode(Goodbye(reason="bye \ud800"), msg_id="m:0:1", sender="n1")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(message=_MESSAGES, msg_id=IDS, sender=IDS, fail_first=st.booleans())
def test_encode_gives_packbs_bytes(message: Any, msg_id: str, sender: str,
                                   fail_first: bool) -> None:
    if fail_first:
        _bad_encode()
    try:
        want = _packb_frame(message, msg_id, sender)
    except Exception:
        return  # (an id packb cannot encode: encode refuses it, tested in test_codec)
    if len(want) > codec.MAX_FRAME:
        return
    assert codec.encode(message, msg_id=msg_id, sender=sender) == want


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=40) | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=20,
)


_RECORDS = st.lists(st.dictionaries(st.text(max_size=8), _VALUES, max_size=5), max_size=6)


@settings(max_examples=150, deadline=None)
@given(values=_RECORDS)
def test_the_sim_store_keeps_packbs_bytes(values: list[dict[str, Any]]) -> None:
    s = store.SimStore()
    for i, value in enumerate(values):
        if i % 2:  # every other record right after a put that failed mid-value
            with contextlib.suppress(UnicodeEncodeError):
                s.put("t", str(i), {"bad": "\ud800", "after": value})
        s.put("t", str(i), value)
        assert s._tables["t"][str(i)] == msgpack.packb(value, use_bin_type=True)


# --- planted bugs ----------------------------------------------------------------


class _Accumulating:
    """Planted bug: a packer that never resets its buffer between calls."""

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=False)

    def pack(self, obj: Any) -> bytes:
        self._packer.pack(obj)
        packed: bytes = self._packer.bytes()
        return packed


class _KeepsFailures:
    """Planted bug: a packer whose failed call leaves its partial bytes in front
    of the next object's."""

    def __init__(self) -> None:
        self._left = b""

    def pack(self, obj: Any) -> bytes:
        try:
            packed: bytes = msgpack.packb(obj, use_bin_type=True)
        except UnicodeEncodeError:
            self._left = b"\x85\xa1v\x01"
            raise
        out, self._left = self._left + packed, b""
        return out


@pytest.mark.parametrize("planted", [_Accumulating, _KeepsFailures])
def test_planted_packer_bugs_are_caught(monkeypatch: pytest.MonkeyPatch, planted: Any) -> None:
    monkeypatch.setattr(codec, "_pack", planted().pack)
    monkeypatch.setattr(store, "_pack", planted().pack)
    caught = 0
    # The same checks, generation only: shrinking a failure of a stateful
    # packer (each call depends on the calls before) took 5 minutes of CI.
    runs = (
        without_shrinking(test_encode_gives_packbs_bytes, 150, message=_MESSAGES, msg_id=IDS,
                          sender=IDS, fail_first=st.booleans()),
        without_shrinking(test_the_sim_store_keeps_packbs_bytes, 150, values=_RECORDS),
    )
    for run in runs:
        try:
            run()
        except InvalidArgument:
            raise  # a broken test, not a caught bug
        except Exception:  # a wrong frame, or a refused one: either is caught
            caught += 1
    assert caught == 2, f"{planted.__name__} went unnoticed"
