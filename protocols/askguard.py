"""Asks from peers that never grant: bounded reservations and a per-asker score.

Any peer can broadcast asks for jobs it invented, and a matching node reserves
capacity for each until ``bid_hold`` passes.  Two bounds keep that cheap:

* **Share.** The reservations one asker holds on this node stay within
  ``share`` of its cpu, memory and execution slots; an ask beyond that is
  declined as busy.  An asker with no reservation always gets one (a task
  bigger than the share still runs somewhere).
* **Score.** A reservation that expires without a grant or a ``BidRejected``
  from its asker adds 1 to the asker's score; a closed one (granted or
  released) takes 1 off, and the score leaks ``leak_per_s`` per second.  An
  honest owner closes its auctions (it rejects the bids it does not take), so
  only lost frames raise its score, and the leak and its closures bring it
  back.  At ``threshold`` the asker's asks are ignored for ``backoff`` seconds,
  doubling on each repeat up to ``max_backoff``.

Pure, like every core module: time comes in as ``now``.
"""

from __future__ import annotations

from typing import Any

import attrs

MAX_TRACKED_ASKERS = 10_000


@attrs.frozen(kw_only=True)
class AskLimits:
    share: float = 0.5  # fraction of capacity one asker's pending reservations may hold
    threshold: float = 16.0  # score at which an asker's asks are ignored
    leak_per_s: float = 0.2  # score forgiven per second
    backoff: float = 60.0  # seconds an asker over the threshold is ignored (first time)
    max_backoff: float = 3600.0


@attrs.define
class AskerRecord:
    score: float = 0.0
    updated: float = 0.0
    ignored_until: float = 0.0
    backoffs: int = 0  # times the asker went over the threshold
    expired: int = 0  # reservations that expired without a grant or rejection
    closed: int = 0  # reservations granted or released by the asker
    ignored: int = 0  # asks dropped while in backoff
    over_share: int = 0  # asks declined because the asker's share was used


class AskScores:
    """Per-asker score and backoff (bounded table; oldest entries evicted)."""

    def __init__(self, limits: AskLimits) -> None:
        self.limits = limits
        self.askers: dict[str, AskerRecord] = {}

    def _record(self, asker: str, now: float) -> AskerRecord:
        rec = self.askers.get(asker)
        if rec is None:
            rec = self.askers[asker] = AskerRecord(updated=now)
            if len(self.askers) > MAX_TRACKED_ASKERS:  # evict the oldest not in backoff
                for old, entry in self.askers.items():
                    if entry.ignored_until <= now and old != asker:
                        del self.askers[old]
                        break
        rec.score = self._leaked(rec, now)
        rec.updated = now
        return rec

    def _leaked(self, rec: AskerRecord, now: float) -> float:
        return max(0.0, rec.score - (now - rec.updated) * self.limits.leak_per_s)

    def ignoring(self, asker: str, now: float) -> bool:
        """Whether asks from ``asker`` are ignored now (counts the ask if so)."""
        rec = self.askers.get(asker)
        if rec is None or now >= rec.ignored_until:
            return False
        rec.ignored += 1
        return True

    def expired(self, asker: str, now: float) -> float:
        """A reservation of ``asker`` expired unused.  Returns the backoff (in
        seconds) it goes into now, or 0."""
        rec = self._record(asker, now)
        rec.expired += 1
        rec.score += 1.0
        if rec.score < self.limits.threshold:
            return 0.0
        delay = min(self.limits.backoff * 2.0 ** min(rec.backoffs, 32), self.limits.max_backoff)
        rec.backoffs += 1
        rec.ignored_until = now + delay
        rec.score = 0.0
        return delay

    def closed(self, asker: str, now: float) -> None:
        rec = self._record(asker, now)
        rec.closed += 1
        rec.score = max(0.0, rec.score - 1.0)

    def over_share(self, asker: str, now: float) -> None:
        self._record(asker, now).over_share += 1

    def stats(self, now: float) -> dict[str, dict[str, Any]]:
        return {
            asker: {
                "score": round(self._leaked(rec, now), 3),
                "expired": rec.expired,
                "closed": rec.closed,
                "ignored": rec.ignored,
                "over_share": rec.over_share,
                "backoffs": rec.backoffs,
                "ignored_for_s": round(max(0.0, rec.ignored_until - now), 3),
            }
            for asker, rec in self.askers.items()
        }
