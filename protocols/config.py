"""Configuration of one node core: identity, capacity and protocol timings."""

from __future__ import annotations

import attrs

from protocols.askguard import AskLimits

# Topic every compute node subscribes to; broadcast asks (wide auctions, ops,
# daemon) go here.  Point-to-point traffic uses ``Send``.
ANNOUNCE_TOPIC = "p2pnode/announce/1"


@attrs.frozen(kw_only=True)
class Timings:
    """Protocol time bounds, in seconds of the node's own monotonic clock."""

    lease_ttl: float = 10.0
    # The owner waits ttl + grace past the last renewal before re-granting; the
    # grace must exceed the one-way network latency (see docs/architecture.md).
    lease_grace: float = 2.0
    # Owner-side grace past an execution's hard timeout.
    timeout_grace: float = 5.0
    bid_window: float = 0.5
    # A bidder's capacity reservation is released if no grant arrives by then.
    bid_hold: float = 2.0
    # First retransmission delay; doubles up to ``retransmit_max``.
    retransmit_base: float = 0.25
    retransmit_max: float = 4.0
    # Peer-exchange period (directory refresh) and entry age-out.
    gossip_interval: float = 30.0
    peer_expiry: float = 300.0
    # Every peer of the view hears a hello from us at least this often (sent on
    # gossip ticks, so at most gossip_interval late): it keeps us alive in their
    # views.  A peer silent for 1.5 of these is shown "suspect".
    peer_heartbeat: float = 90.0
    # Retry cadence of an auction with no bids while matching nodes are busy.
    requeue_delay: float = 1.0
    # A daemon job re-counts matching nodes this often (joiners get one by then).
    daemon_scan: float = 5.0

    @property
    def renew_interval(self) -> float:
        return self.lease_ttl / 3


@attrs.frozen(kw_only=True)
class NodeConfig:
    node_id: str
    labels: dict[str, str] = attrs.field(factory=dict)
    cpu: float = 2.0
    memory: int = 4 * 2**30
    max_executions: int = 4
    executors: tuple[str, ...] = ("process",)
    compute: bool = True  # False: owns jobs, never bids
    bootstrap: tuple[str, ...] = ()  # peer ids to introduce ourselves to
    addrs: tuple[str, ...] = ()  # our listen addresses, told to peers
    version: str = ""  # our software version, told to peers (display only)
    # Auction fan-out: candidates asked on the first round, doubled per retry.
    candidates: int = 2  # "power of two choices": most of the balance of asking all
    view_size: int = 64  # peers kept in the directory (partial view)
    peer_sample: int = 8  # entries sent in one Peers message
    timings: Timings = attrs.field(factory=Timings)
    # Bounds on what asks from one peer may cost us (protocols/askguard.py).
    asks: AskLimits = attrs.field(factory=AskLimits)
