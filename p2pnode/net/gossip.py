"""py-libp2p 0.8.1's GossipSub without its idle control churn (issue 16).

On an idle network (no message published) 0.8.1's router keeps sending
GRAFT and PRUNE control messages, each a Noise-encrypted yamux write at one
end and a read, protobuf decode and signed-peer-record check at the other.
py-spy put ~56 % of an idle node's CPU at 40 peers in reading them.  Three
deviations from the gossipsub v1.1 spec cause it, each fixed here:

1. **Opportunistic grafting every heartbeat, of any peer.**  0.8.1 grafts up
   to two non-mesh peers at *every* heartbeat whose score reaches
   ``max(median * 0.5, min * 1.1, gossip_threshold)``.  Honest peers score 0
   under our ``SCORE_PARAMS`` (P4 only), so every connected peer qualifies:
   each node grows its mesh by two per second until it passes ``degree_high``
   and is pruned back to ``degree``, over and over.  The spec grafts only
   every ``opportunistic_graft_ticks`` (60) heartbeats, only when the mesh's
   median score is below a threshold, and only peers scoring above that
   median; so does :meth:`P2pGossipSub._perform_opportunistic_grafting`.
2. **No back-off for the peers the heartbeat prunes.**  The pruned peer
   backs off from us (60 s), but 0.8.1 does not back off from it, so it is
   the first candidate to graft again, and its refusal (a PRUNE) comes back.
   The spec (and go-libp2p) record the back-off on both sides:
   :meth:`P2pGossipSub.mesh_heartbeat` does.
3. **Control lists shared between peers.**  0.8.1's ``_emit_control_msgs``
   never resets its GRAFT / PRUNE / IHAVE lists between peers, so the k-th
   peer grafted in one heartbeat gets k GRAFTs (and the IHAVEs meant for the
   peers before it).  Each surplus GRAFT from a peer in back-off is refused
   with one more PRUNE.  :meth:`P2pGossipSub._emit_control_msgs` builds one
   control message per peer from that peer's own entries.

4. **Mesh "quality maintenance" at every heartbeat.**  Not in the spec:
   0.8.1 scores every mesh peer *and every other peer of the topic* each
   heartbeat, to swap the worst mesh peer for one scoring 0.1 more.  With
   honest peers all at 0 it never swaps, but at 100 peers it is ~85 score
   computations a second on every idle node, a large part of what py-libp2p
   costs a peer holding its connections (issue 16's idle CPU goal).  The
   spec's remedy for a mesh of poor peers is opportunistic grafting, every
   ``opportunistic_graft_ticks`` heartbeats;
   :meth:`P2pGossipSub._maintain_mesh_quality` runs 0.8.1's maintenance on
   those same heartbeats only.

Besides, when a back-off we hold expires we wait ``BACKOFF_SLACK`` more
seconds before grafting that peer (go-libp2p's ``GossipSubBackoffSlack``):
both ends store the back-off in whole seconds from their own clock reading,
so ours may end a second before the peer's, and a GRAFT sent then is refused.
A GRAFT *received* is still judged by the exact back-off, as before.

Mesh repair is unchanged: below ``degree_low`` the heartbeat (every 1 s) and a
new subscription graft at once, as in 0.8.1.  Ban and score behaviour are
unchanged: the blacklist, graylisting, and pruning or replacing peers with low
scores are 0.8.1's own code.

``ControlCounts`` counts control messages in and out (per control entry, as
they are on the wire); ``Libp2pTransport.gossip_stats`` exposes them.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from typing import Any

import attrs
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2

# Heartbeats between two opportunistic grafting rounds (spec / go-libp2p: 60).
OPPORTUNISTIC_GRAFT_TICKS = 60
# Graft opportunistically only while the mesh's median score is below this.
# Under SCORE_PARAMS an honest peer scores 0 and only invalid messages (P4)
# lower a score, so this fires once more than half the mesh has forwarded
# invalid messages.
OPPORTUNISTIC_GRAFT_THRESHOLD = 0.0
OPPORTUNISTIC_GRAFT_PEERS = 2  # per round (spec / go-libp2p: 2)
# Seconds past a back-off's end before we graft that peer (see module doc).
BACKOFF_SLACK = 2


@attrs.define
class ControlCounts:
    """Gossipsub control entries sent and received (monotonic)."""

    grafts_sent: int = 0
    prunes_sent: int = 0
    ihaves_sent: int = 0
    iwants_sent: int = 0
    grafts_received: int = 0
    prunes_received: int = 0
    ihaves_received: int = 0
    iwants_received: int = 0
    grafts_refused: int = 0  # received, answered with a PRUNE
    opportunistic_grafts: int = 0


class P2pGossipSub(GossipSub):
    """See the module doc.  Constructed like ``GossipSub``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.control_counts = ControlCounts()
        self.opportunistic_graft_ticks = OPPORTUNISTIC_GRAFT_TICKS
        self.backoff_slack = BACKOFF_SLACK
        self._ticks = 0

    # --- 1. opportunistic grafting as the spec has it ------------------------

    def _perform_opportunistic_grafting(
        self, topic: str, peers_to_graft: defaultdict[ID, list[str]]
    ) -> int:
        if self._ticks % self.opportunistic_graft_ticks != 0:
            return 0
        scorer, pubsub = self.scorer, self.pubsub
        if scorer is None or pubsub is None or topic not in pubsub.peer_topics:
            return 0
        mesh = self.mesh[topic]
        scores = [scorer.score(p, [topic]) for p in mesh if self.supports_scoring(p)]
        if not scores:
            return 0
        median = statistics.median(scores)
        if median >= OPPORTUNISTIC_GRAFT_THRESHOLD:
            return 0
        candidates = []
        for peer in pubsub.peer_topics[topic]:
            if peer in mesh or peer in self.direct_peers or not self.supports_scoring(peer):
                continue
            if self._check_back_off(peer, topic):
                continue
            score = scorer.score(peer, [topic])
            if score > median:
                candidates.append((score, peer))
        candidates.sort(key=lambda c: c[0], reverse=True)
        for _, peer in candidates[:OPPORTUNISTIC_GRAFT_PEERS]:
            mesh.add(peer)
            self._notify_mesh_peer_added(peer, topic)
            scorer.on_join_mesh(peer, topic)
            peers_to_graft[peer].append(topic)
            self.control_counts.opportunistic_grafts += 1
        return min(len(candidates), OPPORTUNISTIC_GRAFT_PEERS)

    # --- 4. mesh quality maintenance on the opportunistic ticks only -------

    async def _maintain_mesh_quality(self, topic: str) -> None:
        # (mesh_heartbeat, which counts the ticks, runs earlier in the same
        # heartbeat, so this runs on the ticks opportunistic grafting does.)
        if self._ticks % self.opportunistic_graft_ticks == 0:
            await super()._maintain_mesh_quality(topic)

    # --- 2. back off from the peers we prune ---------------------------------

    def mesh_heartbeat(
        self,
    ) -> tuple[defaultdict[ID, list[str]], defaultdict[ID, list[str]]]:
        self._ticks += 1
        peers_to_graft, peers_to_prune = super().mesh_heartbeat()
        for peer, topics in peers_to_prune.items():
            for topic in topics:
                self._add_back_off(peer, topic, False)
        return peers_to_graft, peers_to_prune

    def _check_back_off(self, peer: ID, topic: str) -> bool:
        """Whether *we* must not graft ``peer``: its back-off, plus the slack."""
        until = self.back_off.get(topic, {}).get(peer)
        if until is None:
            return False
        if until + self.backoff_slack > int(time.time()):
            return True
        del self.back_off[topic][peer]
        return False

    async def handle_graft(self, graft_msg: rpc_pb2.ControlGraft, sender_peer_id: ID) -> None:
        topic = graft_msg.topicID
        # A GRAFT received is judged by the exact back-off: one that ended
        # (within the slack above) no longer refuses it.
        until = self.back_off.get(topic, {}).get(sender_peer_id)
        if until is not None and until <= int(time.time()):
            del self.back_off[topic][sender_peer_id]
        self.control_counts.grafts_received += 1
        await super().handle_graft(graft_msg, sender_peer_id)
        if topic in self.mesh and sender_peer_id not in self.mesh[topic]:
            self.control_counts.grafts_refused += 1

    # --- 3. one control message per peer, with that peer's entries -----------

    async def _emit_control_msgs(
        self,
        peers_to_graft: dict[ID, list[str]],
        peers_to_prune: dict[ID, list[str]],
        peers_to_gossip: dict[ID, dict[str, list[bytes]]],
    ) -> None:
        for peer in {**peers_to_graft, **peers_to_prune, **peers_to_gossip}:
            grafts = [rpc_pb2.ControlGraft(topicID=t) for t in peers_to_graft.get(peer, ())]
            prunes = [rpc_pb2.ControlPrune(topicID=t) for t in peers_to_prune.get(peer, ())]
            ihaves = [
                rpc_pb2.ControlIHave(messageIDs=ids, topicID=t)
                for t, ids in peers_to_gossip.get(peer, {}).items()
            ]
            await self.emit_control_message(self.pack_control_msgs(ihaves, grafts, prunes), peer)

    # --- counting ------------------------------------------------------------

    async def emit_control_message(self, control_msg: rpc_pb2.ControlMessage, to_peer: ID) -> None:
        counts = self.control_counts
        counts.grafts_sent += len(control_msg.graft)
        counts.prunes_sent += len(control_msg.prune)
        counts.ihaves_sent += len(control_msg.ihave)
        counts.iwants_sent += len(control_msg.iwant)
        await super().emit_control_message(control_msg, to_peer)

    async def handle_rpc(self, rpc: rpc_pb2.RPC, sender_peer_id: ID) -> None:
        control = rpc.control
        self.control_counts.prunes_received += len(control.prune)
        self.control_counts.ihaves_received += len(control.ihave)
        self.control_counts.iwants_received += len(control.iwant)
        await super().handle_rpc(rpc, sender_peer_id)


def control_counts(router: Any) -> dict[str, int]:
    """The router's counts as a dict (empty for a router without them)."""
    counts = getattr(router, "control_counts", None)
    return attrs.asdict(counts) if counts is not None else {}
