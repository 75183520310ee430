"""Enforcing ``PeerGuard`` bans on a py-libp2p 0.8.1 host and its gossipsub.

A ban (see ``guard.py`` for when) takes effect at once:

* the peer goes on gossipsub's blacklist: py-libp2p then resets its pubsub
  stream and drops every message it forwards *or* originated, until the ban
  ends and we take it off again;
* its connection is closed, and a connection it opens while banned is closed
  as soon as the swarm reports it (a network notifee); py-libp2p's
  ``ConnectionGate`` filters by IP only, and peers behind one NAT or on one
  host share an IP, so the ban is by peer id;
* the transport refuses its streams (frames and every other protocol), does
  not dial it and drops frames queued for it (``Libp2pTransport`` asks
  ``banned``).

Gossipsub peer scoring (0.8.1's ``PeerScorer``) is used where it fits: a
message the announce topic's validator rejects counts as an invalid message
(P4) against the peer that *forwarded* it, and ``SCORE_PARAMS`` set the
thresholds below which gossipsub stops accepting (publish gate) and sending
to that peer.  Our own ban stays the primary mechanism: 0.8.1's publish gate
reads only the topic score (P1-P4) and the behaviour penalty, not the
application-specific score (P6), so a ban cannot be expressed as a score.
"""

from __future__ import annotations

import logging
from typing import Any

import trio
from libp2p.abc import INotifee
from libp2p.peer.id import ID
from libp2p.pubsub.score import ScoreParams, TopicScoreParams

from p2pnode.net.guard import PeerGuard

log = logging.getLogger("p2pnode.libp2p")

# P4 (invalid messages) only: every other weight stays 0, so an honest peer
# scores 0 and no threshold below 0 changes gossipsub's behaviour towards it.
# Decay per 1 s heartbeat: 0.995 halves the count in ~140 s.
SCORE_PARAMS = ScoreParams(
    p4_invalid_messages=TopicScoreParams(weight=1.0, cap=1000.0, decay=0.995),
    publish_threshold=-10.0,  # messages from / to the peer dropped below this
    gossip_threshold=-10.0,
    graylist_threshold=-20.0,  # no grafts accepted from it
)


class BanEnforcer:
    def __init__(self, guard: PeerGuard, host: Any, pubsub: Any, nursery: trio.Nursery) -> None:
        self.guard = guard
        self._host = host
        self._pubsub = pubsub
        self._nursery = nursery
        self._wake = trio.Event()
        host.get_network().register_notifee(_RefuseBanned(self))
        nursery.start_soon(self._lift_bans, name="p2pnode ban lifter")

    def banned(self, peer: str) -> bool:
        return self.guard.banned(peer, trio.current_time())

    def refuse(self) -> None:
        self.guard.refused += 1

    def enforce(self, peer: str, seconds: float) -> None:
        """``guard`` just banned ``peer`` for ``seconds``."""
        log.warning("banning %s for %.0f s: too many rejected frames", peer, seconds)
        peer_id = ID.from_base58(peer)
        self._pubsub.add_to_blacklist(peer_id)  # also resets its pubsub stream
        self.disconnect_soon(peer_id)
        self._wake.set()

    def disconnect_soon(self, peer_id: ID) -> None:
        self._nursery.start_soon(self.disconnect, peer_id)

    async def disconnect(self, peer_id: ID) -> None:
        with trio.move_on_after(5):
            try:
                await self._host.disconnect(peer_id)
            except Exception as exc:  # already gone, or closing
                log.debug("disconnecting %s: %s", peer_id, exc)

    async def _lift_bans(self) -> None:
        """Take peers whose ban ended off gossipsub's blacklist."""
        while True:
            self._wake = trio.Event()
            now = trio.current_time()
            for peer_id in list(self._pubsub.blacklisted_peers):
                if not self.guard.banned(peer_id.to_base58(), now):
                    self._pubsub.remove_from_blacklist(peer_id)
            ends = self.guard.next_expiry(now)
            with trio.move_on_at(ends if ends is not None else float("inf")):
                await self._wake.wait()


class _RefuseBanned(INotifee):
    """Closes a connection a banned peer opens (dialling in during its ban)."""

    def __init__(self, enforcer: BanEnforcer) -> None:
        self._enforcer = enforcer

    async def connected(self, network: Any, conn: Any) -> None:
        peer_id = conn.muxed_conn.peer_id
        if self._enforcer.banned(peer_id.to_base58()):
            self._enforcer.refuse()
            self._enforcer.disconnect_soon(peer_id)  # the swarm waits for its notifees

    async def disconnected(self, network: Any, conn: Any) -> None:
        return None

    async def opened_stream(self, network: Any, stream: Any) -> None:
        return None

    async def closed_stream(self, network: Any, stream: Any) -> None:
        return None

    async def listen(self, network: Any, multiaddr: Any) -> None:
        return None

    async def listen_close(self, network: Any, multiaddr: Any) -> None:
        return None
