"""Heterogeneous peers: each simulated node's ``Timings`` (``--timings``).

``uniform`` (the default) gives every node the same ``Timings()``.  ``mixed``
draws each node's own lease ttl, grace, bid window, retransmission pacing, ...
from the ranges below, seeded by (run seed, node id): peers that disagree on
every time bound, as real nodes started with different flags do.  The protocol
must not care: any bound two peers rely on travels in the message that sets it
up (a grant's ttl, an ask's bid window).

Checkers judge with the right node's numbers where the protocol promises
something precise (a lease is judged by the ttl its grant carried and the
granting owner's grace, from the ``lease_granted`` notification), and with the
field-wise maximum over all nodes (:func:`envelope`) for liveness bounds.
"""

from __future__ import annotations

import random

import attrs

from protocols.config import Timings
from simnet.engine import derive_seed

TIMINGS_MODES = ("uniform", "mixed")

# (low, high) per field, seconds.  Every range keeps what a single node needs
# of itself (retransmit_base <= retransmit_max; grace above the simulated
# one-way latency); nothing relates one node's values to another's.
MIXED_RANGES: dict[str, tuple[float, float]] = {
    "lease_ttl": (1.0, 20.0),
    "lease_grace": (0.5, 4.0),
    "timeout_grace": (1.0, 10.0),
    "bid_window": (0.1, 3.0),
    "bid_hold": (0.2, 4.0),
    "retransmit_base": (0.05, 1.0),
    "retransmit_max": (1.0, 8.0),
    "gossip_interval": (5.0, 60.0),
    "peer_expiry": (120.0, 600.0),
    "requeue_delay": (0.2, 3.0),
    "daemon_scan": (1.0, 15.0),
}


def draw_timings(mode: str, seed: int, node_id: str, incarnation: int = 0) -> Timings:
    """One node's ``Timings`` under ``mode`` (deterministic in seed and node id).

    Mixed: a restarted node alternates between two draws (even and odd
    incarnations), as an operator restarting a node with other flags does; a
    restarted owner must still judge the leases it granted before by the ttl
    they carried."""
    if mode == "uniform":
        return Timings()
    if mode != "mixed":
        raise ValueError(f"unknown timings mode {mode!r} (one of {', '.join(TIMINGS_MODES)})")
    parts: tuple[str, ...] = (node_id,) if incarnation % 2 == 0 else (node_id, "restarted")
    rng = random.Random(derive_seed(seed, "timings", *parts))
    values = {name: round(rng.uniform(lo, hi), 3) for name, (lo, hi) in MIXED_RANGES.items()}
    values["retransmit_max"] = max(values["retransmit_max"], values["retransmit_base"])
    return Timings(**values)


def node_timings(mode: str, seed: int, node_ids: list[str]) -> dict[str, Timings]:
    """Each node's first-start ``Timings``."""
    return {node_id: draw_timings(mode, seed, node_id) for node_id in node_ids}


def every_draw(mode: str, seed: int, node_ids: list[str]) -> list[Timings]:
    """Every ``Timings`` any incarnation of these nodes may run (for :func:`envelope`)."""
    return [draw_timings(mode, seed, n, inc) for n in node_ids for inc in (0, 1)]


def envelope(timings: list[Timings]) -> Timings:
    """Field-wise maximum: the bound a checker may allow when it cannot tell
    which node's setting applies (liveness bounds, never a lease's own window)."""
    if not timings:
        return Timings()
    fields = [f.name for f in attrs.fields(Timings)]
    return Timings(**{name: max(getattr(t, name) for t in timings) for name in fields})
