"""Per-peer penalties and bans: what the transport holds against a peer.

Every rejected frame counts against its sender, by reason (the transport's
own: ``bad_varint``, ``absurd_length``, ``oversized``, ``idle_partial``,
``too_many_streams``, ``invalid_broadcast``; the core's, reported through its ``dropped`` notify:
``undecodable``, ``forged``, ``unauthorized``).  Each adds its weight to a
leaky-bucket score that leaks ``leak_per_s`` per second: an honest peer's
occasional bad frame (a late retransmission after a restart, a frame cut by a
lost connection) never accumulates, while a peer that keeps sending garbage
reaches ``threshold`` and is banned for ``ban`` seconds, doubling on each
repeat up to ``max_ban``.  The transport then disconnects it, refuses its
streams and dials, and has gossipsub drop its messages (see
``libp2p_transport.py``).

No I/O and no clock reads: time comes in as ``now``.
"""

from __future__ import annotations

from typing import Any

import attrs

MAX_TRACKED_PEERS = 10_000


@attrs.frozen(kw_only=True)
class GuardLimits:
    threshold: float = 30.0  # score at which a peer is banned
    leak_per_s: float = 0.5  # score forgiven per second
    ban: float = 60.0  # seconds of the first ban
    max_ban: float = 3600.0  # bans double per repeat up to this
    # Reasons worth more than one point: a frame that cannot come from a
    # correct implementation at all (a lying length prefix costs us a stream).
    weights: tuple[tuple[str, float], ...] = (
        ("bad_varint", 5.0),
        ("absurd_length", 5.0),
        ("forged", 5.0),
    )


@attrs.define
class PeerRecord:
    score: float = 0.0
    updated: float = 0.0
    banned_until: float = 0.0
    bans: int = 0
    rejected: dict[str, int] = attrs.field(factory=dict)


class PeerGuard:
    """Bounded table of per-peer counters, scores and bans."""

    def __init__(self, limits: GuardLimits | None = None) -> None:
        self.limits = limits or GuardLimits()
        self._weights = dict(self.limits.weights)
        self.peers: dict[str, PeerRecord] = {}
        self.refused = 0  # streams, connections, dials and messages refused while banned
        # Every rejected frame by reason, whoever sent it (never evicted, unlike
        # ``peers``; the reasons are the few the module docstring lists).
        self.rejected_by_reason: dict[str, int] = {}

    def _leaked(self, rec: PeerRecord, now: float) -> float:
        return max(0.0, rec.score - (now - rec.updated) * self.limits.leak_per_s)

    def penalize(self, peer: str, reason: str, now: float) -> float:
        """Count one rejected frame of ``peer``.  Returns the ban (seconds) it
        starts now, or 0."""
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1
        rec = self.peers.get(peer)
        if rec is None:
            rec = self.peers[peer] = PeerRecord(updated=now)
            if len(self.peers) > MAX_TRACKED_PEERS:  # evict the oldest unbanned entry
                for old, entry in self.peers.items():
                    if entry.banned_until <= now and old != peer:
                        del self.peers[old]
                        break
        rec.rejected[reason] = rec.rejected.get(reason, 0) + 1
        if now < rec.banned_until:
            return 0.0  # already banned (frames still in flight)
        rec.score = self._leaked(rec, now) + self._weights.get(reason, 1.0)
        rec.updated = now
        if rec.score < self.limits.threshold:
            return 0.0
        duration = min(self.limits.ban * 2.0 ** min(rec.bans, 32), self.limits.max_ban)
        rec.bans += 1
        rec.banned_until = now + duration
        rec.score = 0.0
        return duration

    def banned(self, peer: str, now: float) -> bool:
        rec = self.peers.get(peer)
        return rec is not None and now < rec.banned_until

    def next_expiry(self, now: float) -> float | None:
        """When the earliest current ban ends (None: nobody is banned)."""
        ends = [r.banned_until for r in self.peers.values() if r.banned_until > now]
        return min(ends) if ends else None

    def stats(self, now: float) -> dict[str, Any]:
        return {
            "rejected_by_peer": {p: dict(r.rejected) for p, r in self.peers.items()},
            "score_by_peer": {p: round(self._leaked(r, now), 3) for p, r in self.peers.items()},
            "banned": {
                p: round(r.banned_until - now, 3)
                for p, r in self.peers.items()
                if r.banned_until > now
            },
            "bans_by_peer": {p: r.bans for p, r in self.peers.items() if r.bans},
            "refused_while_banned": self.refused,
        }
