"""The deduper's compact keys decide exactly like (sender, id) pairs (issue 16).

``codec.Deduper`` keyed by sender stores an id that names its sender
("<sender>:<incarnation>:<n>", no ":" in the sender) as the bare id instead of
a (sender, id) tuple: one object fewer per remembered frame.  These tests show
every answer (duplicate or not, with evictions) is the one a deduper keyed on
the pairs gives, for senders and ids built to collide, and that planted
non-injective keys are caught.
"""

from __future__ import annotations

import collections
from collections.abc import Hashable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocols import codec
from protocols.codec import Deduper


class _PairDeduper:
    """The reference: keyed on the (sender, id) pairs themselves."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._set: set[Hashable] = set()
        self._order: collections.deque[Hashable] = collections.deque()

    def seen(self, msg_id: str, sender: str) -> bool:
        key = (sender, msg_id)
        if key in self._set:
            return True
        self._set.add(key)
        self._order.append(key)
        if len(self._order) > self.capacity:
            self._set.discard(self._order.popleft())
        return False


# Few characters, ":" among them: senders and ids collide as often as can be.
_PART = st.text(alphabet="ab:", max_size=4)
_SENDERS = st.one_of(_PART, st.sampled_from(["a", "a:b", "", ":", "a:"]))


@st.composite
def _frames(draw: Any) -> tuple[str, str]:
    sender = draw(_SENDERS)
    shape = draw(st.sampled_from(["own", "other", "free"]))
    if shape == "own":  # what MessageIds makes
        return sender, f"{sender}:{draw(st.integers(0, 2))}:{draw(st.integers(0, 3))}"
    if shape == "other":  # someone else's id, or one with the sender as a prefix
        return sender, f"{draw(_SENDERS)}:{draw(_PART)}"
    return sender, draw(_PART)


@settings(max_examples=300, deadline=None)
@given(frames=st.lists(_frames(), max_size=40), capacity=st.integers(1, 8))
def test_compact_keys_answer_like_pairs(frames: list[tuple[str, str]], capacity: int) -> None:
    fast, ref = Deduper(capacity), _PairDeduper(capacity)
    for sender, msg_id in frames:
        assert fast.seen(msg_id, sender) == ref.seen(msg_id, sender), (sender, msg_id)
        assert len(fast) == len(ref._set)
        assert ((sender, msg_id) in fast) == ((sender, msg_id) in ref._set)


def test_ids_that_name_another_sender_are_not_shared() -> None:
    dedupe = Deduper()
    # "victim:1" could claim the id "victim:1:5" names it: its first ":" says no.
    assert not dedupe.seen("victim:1:5", sender="victim:1")
    assert not dedupe.seen("victim:1:5", sender="victim")
    assert not dedupe.seen("victim:1:5", sender="")
    assert dedupe.seen("victim:1:5", sender="victim") and dedupe.seen("victim:1:5", "victim:1")
    assert codec._sender_key("n1:0:7", "n1") == "n1:0:7"  # the compact form is used


def test_a_deduper_is_keyed_on_every_call_or_none() -> None:
    keyed, bare = Deduper(), Deduper()
    keyed.seen("n1:0:1", sender="n1")
    bare.seen("n1:0:1")
    with pytest.raises(ValueError):
        keyed.seen("n1:0:1")  # the bare id is n1's compact key: it must not be asked
    with pytest.raises(ValueError):
        bare.seen("n1:0:2", sender="n1")


# --- planted bugs -------------------------------------------------------------------


def _planted_prefix_only(msg_id: str, sender: str) -> Hashable:
    """Planted bug: an id starting with the sender is taken as naming it."""
    return msg_id if msg_id.startswith(sender) else (sender, msg_id)


def _planted_bare_ids(msg_id: str, sender: str) -> Hashable:
    """Planted bug: every id is keyed alone (a peer can pre-poison another's)."""
    return msg_id


@pytest.mark.parametrize("planted", [_planted_prefix_only, _planted_bare_ids])
def test_planted_key_bugs_are_caught(monkeypatch: pytest.MonkeyPatch, planted: Any) -> None:
    monkeypatch.setattr(codec, "_sender_key", planted)
    caught = 0
    for run in (test_compact_keys_answer_like_pairs,
                test_ids_that_name_another_sender_are_not_shared):
        try:
            run()
        except AssertionError:
            caught += 1
    assert caught == 2, f"{planted.__name__} went unnoticed"
