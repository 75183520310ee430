"""Retransmission until a deadline (``protocols/outbox.py``, protocol.md section 3).

Sans-IO: the outbox's own timers are fired by hand at the times it set, and
the copies it sends are counted.  A message whose deadline is short gets
several tries before it (``TRIES_BEFORE_DEADLINE``), not just the one or two
the doubling back-off would fit; a long deadline keeps the plain back-off.
"""

from __future__ import annotations

import itertools

import pytest

from protocols import outbox as outbox_module
from protocols.config import Timings
from protocols.events import Send, SetTimer
from protocols.messages import Goodbye
from protocols.outbox import MIN_RETRY_DELAY, RETX_TIMER, Outbox, retry_delay


def _send_times(timings: Timings, give_up_after: float) -> list[float]:
    """When each copy of one reliable send goes out, never acknowledged."""
    out = Outbox("n1", 0, timings)
    out.begin(0.0)
    out.send_reliably("k", "n2", Goodbye(reason="x"), give_up_after=give_up_after)
    sent, now = [], 0.0
    while True:
        actions = out.drain()
        sent += [now for a in actions if isinstance(a, Send)]
        timers = [a.at for a in actions if isinstance(a, SetTimer) and a.key == (RETX_TIMER, "k")]
        if not timers:
            return sent
        now = timers[-1]
        out.begin(now)
        out.on_retransmit_timer("k")


def test_a_short_deadline_gets_several_tries() -> None:
    # A 1.4 s lease + 1 s grace with a 0.43 s base: the back-off alone sends
    # at 0, 0.43 and 1.29 s; the deadline pacing fits more before 2.4 s.
    times = _send_times(Timings(retransmit_base=0.43, retransmit_max=7.9), 2.4)
    before = [t for t in times if t < 2.4]
    assert len(before) >= 1 + outbox_module.TRIES_BEFORE_DEADLINE
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(gap >= MIN_RETRY_DELAY - 1e-9 for gap in gaps)
    assert all(gap <= 0.43 + 1e-9 for gap in gaps)  # never slower than the back-off


def test_a_long_deadline_keeps_the_plain_back_off() -> None:
    times = _send_times(Timings(retransmit_base=0.25, retransmit_max=4.0), 600.0)
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times)]
    assert gaps[:5] == [0.25, 0.5, 1.0, 2.0, 4.0]


@pytest.mark.parametrize(("backoff", "left", "expected"), [
    (1.0, 100.0, 1.0),  # far from the deadline: the back-off
    (1.0, 2.0, 0.4),  # near it: a fifth of the time left
    (1.0, 0.1, MIN_RETRY_DELAY),  # never faster than the floor
    (0.01, 2.0, 0.01),  # never slower than the back-off
    (1.0, 0.0, 1.0),  # the deadline passed: nothing to hurry for, the back-off
    (1.0, -3.0, 1.0),  # (a holder still reporting after its lease lapsed)
])
def test_retry_delay(backoff: float, left: float, expected: float) -> None:
    assert retry_delay(backoff, left) == pytest.approx(expected)


def test_planted_plain_back_off_fits_too_few_tries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: no deadline pacing (the old outbox): the short deadline's
    check fails."""
    monkeypatch.setattr(outbox_module, "retry_delay", lambda backoff, left: backoff)
    with pytest.raises(AssertionError):
        test_a_short_deadline_gets_several_tries()
