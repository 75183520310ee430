"""A node's partial view of the network (peer exchange), and candidate selection.

No node needs to know every other node.  Each keeps a bounded *view* of peers
(``view_size``), learnt by saying Hello to its bootstrap peers, who answer with a
random sample of their own view (Peers), and refreshed by a periodic exchange
with a random peer.  Cost per node stays bounded as the network grows.

Auctions pick candidates from the view by rendezvous hashing over
(job, slot, attempt, peer): deterministic, spread evenly, different on every
retry, and needing no coordination.  When the view has no (more) matching peer,
the owner falls back to a broadcast ask on the announce topic.

Health: an entry's age (since we last heard from the peer directly) makes its
status, "alive" or, past ``SUSPECT_AFTER`` heartbeats of silence, "suspect".
A peer that says goodbye is dropped at once, one silent past
``Timings.peer_expiry`` at the next gossip round; both are remembered as
*departed* ("gone") for as long again, so that hearsay cannot bring them back
(only the peer's own hello does) and ``node list`` can say what became of them.
"""

from __future__ import annotations

import operator
import random
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from protocols.messages import NodeInfo
from protocols.units import human_size

SUSPECT_AFTER = 1.5  # heartbeats (Timings.peer_heartbeat) of silence: "suspect"
ALIVE, SUSPECT, GONE = "alive", "suspect", "gone"
# Requirement signatures whose matching peers are kept up to date (beyond
# this, the cache starts over: a view change updates every kept signature).
MAX_SIGNATURES = 64
# The eviction order: least recently heard first, ties by id.
_AGE = operator.attrgetter("last_seen", "info.node_id")


@attrs.define
class PeerEntry:
    info: NodeInfo
    last_seen: float
    running: int = 0  # executions running at the peer, from its last hello
    # Heard from the peer itself at least once.  A hearsay entry is not yet:
    # our hello to it may have been lost (a dial timing out under load), and
    # until it hears from us it does not know us; the gossip round says hello
    # again to such entries instead of waiting for the next heartbeat.
    confirmed: bool = True


@attrs.frozen
class Departed:
    """A peer out of the view (goodbye, or silence), shown as "gone"."""

    info: NodeInfo
    last_seen: float
    left_at: float
    reason: str


def peer_status(age: float, heartbeat: float) -> str:
    """The status of a view entry last heard from ``age`` seconds ago."""
    return ALIVE if age <= SUSPECT_AFTER * heartbeat else SUSPECT


def mismatch_reason(
    info: NodeInfo, labels: Mapping[str, str], engine: str, cpu: float, memory: int
) -> str:
    """Why ``info`` can never run such a task ("" if it can)."""
    if not info.compute:
        return "compute disabled"
    missing = {k: v for k, v in labels.items() if info.labels.get(k) != v}
    if missing:
        return f"labels {missing} not carried"
    if engine not in info.executors:
        return f"executor {engine!r} not enabled"
    if cpu > info.cpu or memory > info.memory:
        return (
            f"needs cpu {cpu:g} / memory {human_size(memory)} beyond capacity "
            f"{info.cpu:g} / {human_size(info.memory)}"
        )
    return ""


def can_run(
    info: NodeInfo, labels: Mapping[str, str], engine: str, cpu: float, memory: int
) -> bool:
    """``mismatch_reason(...) == ""``, without building the reason (a hot path)."""
    if not info.compute or cpu > info.cpu or memory > info.memory or engine not in info.executors:
        return False
    carried = info.labels
    return all(carried.get(k) == v for k, v in labels.items()) if labels else True


class Directory:
    def __init__(self, me: NodeInfo, view_size: int, rng: random.Random) -> None:
        self.me = me
        self.view_size = view_size
        self._rng = rng
        self.peers: dict[str, PeerEntry] = {}
        self.departed: dict[str, Departed] = {}  # said goodbye (at most view_size kept)
        # Who can run what, per requirement signature: asked at every auction,
        # changed only when the view does, and then updated for the one entry
        # that changed (a full view churns with each newcomer's hello, so
        # rebuilding every signature's list made each auction scan the view).
        self._matching: dict[tuple[Any, ...], _Matching] = {}
        # The view's ids in order of last_seen (oldest first), so that evicting
        # the oldest looks at the first entries only, not the whole view: each
        # entry moves to the end when heard.  ``now`` never goes back in a
        # core; if it ever did, the order is abandoned for a full scan.
        self._recent: dict[str, None] = {}
        self._recent_sorted = True

    def has_executor(self, engine: str) -> bool:
        """Whether any node in the view (this one included) enables ``engine``."""
        infos = [self.me, *(e.info for e in self.peers.values())]
        return any(engine in info.executors for info in infos)

    def upsert(self, info: NodeInfo, now: float, *, direct: bool) -> bool:
        """Record ``info``; True if the peer was new to us.

        Only ``direct`` news (the peer's own hello) refreshes an entry: hearsay
        from other peers' samples must not keep a dead peer alive in our view.
        """
        if info.node_id == self.me.node_id:
            return False
        if info.node_id in self.departed:
            if not direct:
                return False  # hearsay of a peer that said goodbye: stale
            del self.departed[info.node_id]  # it is back
        entry = self.peers.get(info.node_id)
        if entry is not None:
            if direct:
                if entry.info is not info and entry.info != info:
                    entry.info = info
                    self._rematch(info.node_id, info)
                if now > entry.last_seen:
                    self._heard(info.node_id, entry, now)
                entry.confirmed = True
            return False
        if not direct and len(self.peers) >= self.view_size:
            return False  # a full view takes newcomers only first-hand: no churn by hearsay
        entry = PeerEntry(info=info, last_seen=now, confirmed=direct)
        self.peers[info.node_id] = entry
        self._heard(info.node_id, entry, now)
        self._rematch(info.node_id, info)
        if len(self.peers) > self.view_size:
            self._evict_oldest(keep=info.node_id)
        return True

    def unconfirmed(self) -> list[str]:
        """Peers of the view never heard from directly (learnt by hearsay)."""
        return sorted(n for n, e in self.peers.items() if not e.confirmed)

    def touch(self, node_id: str, now: float) -> None:
        entry = self.peers.get(node_id)
        if entry is not None and entry.last_seen != now:
            self._heard(node_id, entry, now)

    def _heard(self, node_id: str, entry: PeerEntry, now: float) -> None:
        """``entry`` was heard at ``now``: its last_seen and its place in
        the recency order (the end)."""
        entry.last_seen = now
        recent = self._recent
        recent.pop(node_id, None)
        if recent and now < self.peers[next(reversed(recent))].last_seen:
            self._recent_sorted = False  # time went back: no order to trust
        recent[node_id] = None

    def expire(self, now: float, max_age: float, keep: Iterable[str] = ()) -> list[str]:
        """Drop entries silent for more than ``max_age`` (but those in ``keep``):
        they become departed ("gone"), so that hearsay from peers that have
        not dropped them yet cannot bring them back.  Departed records are
        forgotten after ``max_age`` too.  Returns the dropped peer ids."""
        for node_id in [n for n, d in self.departed.items() if now - d.left_at > max_age]:
            del self.departed[node_id]
        dropped: list[str] = []
        # The first in recency order is the oldest: if it is not silent for
        # too long, no entry is (the usual round), so skip the scan.
        if (self._recent_sorted and self._recent
                and now - self.peers[next(iter(self._recent))].last_seen <= max_age):
            return dropped
        keep_set = set(keep)
        for node_id in [n for n, e in self.peers.items() if now - e.last_seen > max_age]:
            if node_id not in keep_set:
                self.remove(node_id, now, f"silent for {max_age:g}s")
                dropped.append(node_id)
        return dropped

    def remove(self, node_id: str, now: float, reason: str) -> bool:
        """Out of the view (candidates included) now, and departed: it said
        goodbye, or was silent too long.  True if it was in the view."""
        entry = self.peers.pop(node_id, None)
        if entry is None:
            return False
        del self._recent[node_id]
        self._rematch(node_id, None)
        self.departed[node_id] = Departed(entry.info, entry.last_seen, now, reason)
        if len(self.departed) > self.view_size:
            oldest = min(self.departed.values(), key=lambda d: (d.left_at, d.info.node_id))
            del self.departed[oldest.info.node_id]
        return True

    def _evict_oldest(self, keep: str) -> None:
        """Drop the least recently heard entry but ``keep`` (the newcomer);
        ties by id."""
        peers = self.peers
        victim: str | None = None
        if self._recent_sorted:
            # The recency order holds the oldest first: the first entry's
            # last_seen is the oldest, and its ties follow it.
            oldest_seen = 0.0
            for node_id in self._recent:
                if node_id == keep:
                    continue
                seen = peers[node_id].last_seen
                if victim is None:
                    oldest_seen, victim = seen, node_id
                elif seen != oldest_seen:
                    break
                elif node_id < victim:
                    victim = node_id
        if victim is None:  # (time went back once: scan the view)
            victim = min((e for n, e in peers.items() if n != keep), key=_AGE).info.node_id
        del peers[victim]
        del self._recent[victim]
        self._rematch(victim, None)

    def _rematch(self, node_id: str, info: NodeInfo | None) -> None:
        """Peer ``node_id`` joined the view, changed (``info``) or left it
        (None): update its place in every cached matching list."""
        if len(self._matching) > MAX_SIGNATURES:
            self._matching.clear()
        for m in self._matching.values():
            if info is not None and can_run(info, m.labels, m.engine, m.cpu, m.memory):
                m.nodes[node_id] = node_id.encode()
            else:
                m.nodes.pop(node_id, None)

    def sample(self, k: int, exclude: str = "") -> list[NodeInfo]:
        """Up to ``k`` random entries (ourselves included) for a Peers answer."""
        pool = [e.info for n, e in self.peers.items() if n != exclude]
        picked = self._rng.sample(pool, min(k - 1, len(pool))) if k > 1 else []
        return [self.me, *picked]

    def random_peer(self) -> str | None:
        if not self.peers:
            return None
        return self._rng.choice(list(self.peers))

    def candidates(
        self,
        *,
        key: str,
        labels: Mapping[str, str],
        engine: str,
        cpu: float,
        memory: int,
        count: int,
        avoid: Iterable[str] = (),
    ) -> tuple[list[str], int]:
        """Up to ``count`` peers (maybe ourselves) that could run the task.

        Peers in ``avoid`` (they failed this slot before) come last.  Returns
        the picked ids and how many matching peers the view holds in total.
        """
        signature = (tuple(sorted(labels.items())), engine, cpu, memory)
        cached = self._matching.get(signature)
        if cached is None:
            infos = [self.me, *(e.info for e in self.peers.values())]
            cached = _Matching(dict(labels), engine, cpu, memory, {
                i.node_id: i.node_id.encode()
                for i in infos
                if can_run(i, labels, engine, cpu, memory)
            })
            self._matching[signature] = cached
        matching = cached.nodes
        if count <= 0:
            return [], len(matching)
        # Rendezvous order, peers to avoid last; ties (never in practice) by
        # id.  crc32(prefix + id) == crc32(id, crc32(prefix)).
        crc32 = zlib.crc32
        start = crc32(key.encode() + b"|")
        avoid_set = set(avoid)
        if avoid_set:
            ranked = sorted(
                [(n in avoid_set, crc32(b, start), n) for n, b in matching.items()]
            )
            return [r[2] for r in ranked[:count]], len(matching)
        plain = sorted([(crc32(b, start), n) for n, b in matching.items()])
        return [r[1] for r in plain[:count]], len(matching)


@attrs.define
class _Matching:
    """The peers (and maybe this node) that can run tasks of one signature."""

    labels: dict[str, str]
    engine: str
    cpu: float
    memory: int
    nodes: dict[str, bytes]  # node id -> its encoded id (the rendezvous hash input)
