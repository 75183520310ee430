"""The simulated network: latency, loss, duplication, reordering, partitions.

Everything random here comes from one ``random.Random`` seeded from the run's
seed, consumed in the engine's (deterministic) event order, so a seed fixes
every drop and every arrival time.  The model is deliberately simple:

* each node has a seeded "distance" to the core of the network; a link's base
  latency is the sum of both ends' distances (so links differ but are stable);
* each copy adds uniform jitter; a reordered copy adds an extra random delay,
  so it overtakes / is overtaken by neighbours;
* loss drops a copy; duplication sends a second, independently timed copy;
* partitions assign every node a group id; frames cross groups neither at
  send time nor at delivery time (a partition cuts frames in flight too);
* a *latency tail* (``tail``): a share of copies is held for seconds
  (``tail_delay``), longer than the lease grace and than a renewal period:
  the protocol must stay safe when one-way latency exceeds every grace.

Draws for a feature happen only when it is on, so enabling nothing keeps
the trace of every older seed unchanged.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

import attrs
import msgpack

# Directory (membership) traffic, counted apart from job traffic.
DIRECTORY_TYPES = frozenset({"hello", "peers", "goodbye", "node_info"})


@attrs.frozen(kw_only=True)
class NetConfig:
    loss: float = 0.0  # probability a copy is dropped
    duplicate: float = 0.0  # probability a second copy is sent
    reorder: float = 0.0  # probability a copy gets an extra random delay
    # Per-node distance range in seconds; link base latency = d(src) + d(dst).
    distance: tuple[float, float] = (0.001, 0.010)
    jitter: float = 0.004  # uniform extra latency per copy, seconds
    reorder_delay: float = 0.25  # max extra delay of a reordered copy, seconds
    tail: float = 0.0  # probability a copy is held back by a tail delay
    tail_delay: tuple[float, float] = (1.0, 8.0)  # its extra latency range, seconds


def _type_of_obj(obj: Any) -> str:
    if isinstance(obj, dict):
        for key in ("t", "type", "T"):
            value = obj.get(key)
            if isinstance(value, str):
                return value
        return "?"
    if isinstance(obj, list | tuple):
        for item in obj[:4]:
            if isinstance(item, str) and item and "/" not in item:
                return item
    return "?"


# protocols.codec packs {"v": 1, "t": <type>, ...} in that key order: a frame
# starts with fixmap(5), "v", 1, "t", fixstr(len).  Reading the tag from those
# bytes is ~10x cheaper than unpacking the frame (counted twice per message).
_ENVELOPE_PREFIX = b"\x85\xa1v\x01\xa1t"


def _default_frame_type(data: bytes) -> str:
    """Best-effort message type of a frame without trusting it: a msgpack
    envelope whose type tag is a short string.  Unknown frames count as "?"."""
    if data[:6] == _ENVELOPE_PREFIX and len(data) > 7 and 0xA0 <= data[6] <= 0xBF:
        n = data[6] & 0x1F
        try:
            return data[7 : 7 + n].decode()
        except UnicodeDecodeError:
            return "?"
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception:
        return "?"
    return _type_of_obj(obj)


def _codec_frame_type() -> Any:
    """Use the project's codec to read the envelope type when it offers a
    cheap helper; fall back to our msgpack heuristic otherwise."""
    try:
        from protocols import codec  # type: ignore[attr-defined,unused-ignore]
    except Exception:
        return None
    for name in ("frame_type", "peek_type", "envelope_type"):
        fn = getattr(codec, name, None)
        if callable(fn):
            return fn
    return None


def make_frame_type() -> Any:
    fn = _codec_frame_type()
    if fn is None:
        return _default_frame_type

    def safe(data: bytes) -> str:
        try:
            return str(fn(data))
        except Exception:
            return "?"

    return safe


class Network:
    """Link model plus partitions; the engine asks it when copies arrive."""

    def __init__(self, config: NetConfig, rng: random.Random) -> None:
        self.config = config
        self.rng = rng
        self.distance: list[float] = []
        self.group: list[int] = []
        self.blocked: set[tuple[int, int]] = set()  # one-way link failures (src, dst)
        lo, hi = config.distance
        self._lo, self._span = lo, hi - lo

    def add_node(self) -> int:
        self.distance.append(self._lo + self.rng.random() * self._span)
        self.group.append(0)
        return len(self.distance) - 1

    # --- partitions ---------------------------------------------------------

    def partition(self, groups: Iterable[Iterable[int]]) -> None:
        """Split the network: each listed set becomes its own island; nodes
        in no set stay together in the "rest" group (0)."""
        self.group = [0] * len(self.group)
        for gid, members in enumerate(groups, start=1):
            for idx in members:
                self.group[idx] = gid

    def heal(self) -> None:
        self.group = [0] * len(self.group)
        self.blocked.clear()

    def connected(self, a: int, b: int) -> bool:
        blocked = self.blocked
        return self.group[a] == self.group[b] and not (
            blocked and ((a, b) in blocked or (b, a) in blocked))

    def block(self, src: int, dst: int) -> None:
        """A one-way link failure: frames from ``src`` to ``dst`` are lost
        (also those in flight); the other direction still works."""
        self.blocked.add((src, dst))

    def unblock(self, src: int, dst: int) -> None:
        self.blocked.discard((src, dst))

    @property
    def partitioned(self) -> bool:
        return any(self.group) or bool(self.blocked)

    # --- transmission -------------------------------------------------------

    def transmit(self, src: int, dst: int, now: float) -> tuple[float, ...]:
        """Arrival times of the copies of one frame (empty: dropped)."""
        if self.group[src] != self.group[dst] or (self.blocked and (src, dst) in self.blocked):
            return ()
        cfg = self.config
        rand = self.rng.random
        if cfg.loss and rand() < cfg.loss:
            return ()
        base = now + self.distance[src] + self.distance[dst]
        t = base + rand() * cfg.jitter
        if cfg.reorder and rand() < cfg.reorder:
            t += rand() * cfg.reorder_delay
        if cfg.tail and rand() < cfg.tail:
            t += self._tail()
        if cfg.duplicate and rand() < cfg.duplicate:
            t2 = base + rand() * cfg.jitter
            if cfg.reorder:
                t2 += rand() * cfg.reorder_delay
            if cfg.tail and rand() < cfg.tail:
                t2 += self._tail()
            return (t, t2)
        return (t,)

    def _tail(self) -> float:
        lo, hi = self.config.tail_delay
        return lo + self.rng.random() * (hi - lo)
