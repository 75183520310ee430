"""A py-libp2p 0.8.1 host + gossipsub, configured, run and shut down.

Each setting that differs from py-libp2p's default says why: the defaults
were measured to hurt (see /work/shared/notes/environment.md).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import libp2p.stream_muxer.yamux.yamux as yamux_module
import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.keys import KeyPair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, PROTOCOL_ID_V12
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.score import ScoreParams
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service

from p2pnode.net.gossip import P2pGossipSub

log = logging.getLogger("p2pnode.libp2p")

# Offer the meshsub versions js-libp2p speaks; py-only 1.3+ add extensions
# (topic observation, v2 scoring) we neither need nor could interoperate on.
GOSSIP_PROTOCOLS = [PROTOCOL_ID_V12, PROTOCOL_ID_V11, PROTOCOL_ID]


# py-libp2p 0.8.1's yamux answers every read with a WINDOW_UPDATE frame (its
# PY_YAMUX_RELEASE_ON_READ default, read at call time): one more Noise-encrypted
# write and socket send per frame received.  Off, it returns credit as go-yamux
# does, one update per half window.  Raw frame throughput between two processes
# (bench_gossip --frames) went from ~450-510 to ~930-1250 frames/s.  An
# operator's own setting wins.
YAMUX_TUNING = {"PY_YAMUX_RELEASE_ON_READ": "0"}

# py-libp2p 0.8.1's yamux pings every connection every 30 s (both ends) only to
# measure the RTT its window tuning reads; the ping neither detects nor closes a
# dead connection.  At 40-100 idle peers those pings (each a Noise-encrypted
# write and read at both ends, plus trio wake-ups) were a large part of a
# node's idle CPU (issue 16, py-spy).  The first ping, 0.5 s after the
# connection opens, still gives the estimate; later ones refresh it rarely.
YAMUX_RTT_INTERVAL = 600  # seconds (py-libp2p: 30)


def _tune_yamux_rtt() -> None:
    yamux_module.RTT_MEASURE_INTERVAL = YAMUX_RTT_INTERVAL  # read at each loop turn


def build_host(key_pair: KeyPair, listen: Sequence[multiaddr.Multiaddr]) -> Any:
    for name, value in YAMUX_TUNING.items():
        os.environ.setdefault(name, value)
    _tune_yamux_rtt()
    host = new_host(
        key_pair=key_pair,
        # 0.8.1 offers Noise, TLS, SECIO *and plaintext* by default, with Mplex
        # as muxer fallback: allow only the standard Noise + Yamux, so no peer
        # can negotiate a connection down to an unauthenticated channel.
        sec_opt={
            NOISE_PROTOCOL_ID: NoiseTransport(
                key_pair, noise_privkey=create_x25519_key_pair().private_key
            )
        },
        muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
        listen_addrs=list(listen),
        connection_config=ConnectionConfig(
            # The default (3 per peer) makes every dial wait a fixed 250 ms for
            # extra connections; we use one connection per peer.
            max_connections_per_peer=1,
            # Below min_connections (default 50) the auto-connector re-dials
            # peerstore peers every 10 s instead of every 30 s.
            min_connections=0,
        ),
    )
    _disable_auto_connect(host)
    return host


async def _no_auto_connect() -> None:
    return None


def _disable_auto_connect(host: Any) -> None:
    """Turn off py-libp2p 0.8.1's auto-connector.  While a host holds fewer
    than (low + high watermark) / 2 = 200 connections it dials every peer of
    its peerstore (each peer it ever connected to, learnt by identify or by
    gossipsub's peer exchange) every 30 s and after every disconnect.  So every
    node ended up connected to every node it had heard of, and a connection
    closed as idle came back at once, for a dial that costs both ends ~54 ms
    of CPU (issue 16).  p2pnode dials on demand: a send to a peer whose
    connection is gone redials it (``Libp2pTransport._ensure_connected``)."""
    host.get_network().auto_connector.maybe_connect = _no_auto_connect


def build_pubsub(
    host: Any, heartbeat_interval: int = 1, score_params: ScoreParams | None = None
) -> tuple[Any, Any]:
    """(pubsub, router): gossipsub with strict signing (and peer-score
    thresholds from ``score_params``; 0.8.1's defaults accept every score).
    The router is 0.8.1's GossipSub without its idle GRAFT/PRUNE churn
    (``p2pnode/net/gossip.py``)."""
    router = P2pGossipSub(
        protocols=GOSSIP_PROTOCOLS,
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=heartbeat_interval,  # default 120 s: mesh repair far too slow
        # Spam protection caps each (peer, topic) at 10 msg/s, *our own
        # publishes included*, and drops the excess silently.
        spam_protection_enabled=False,
        # Adaptive gossip sets a "poor health" heartbeat to 30-60 s: with a 1 s
        # base that slows the heartbeat 30x exactly when the mesh needs repair.
        adaptive_gossip_enabled=False,
        # All peers on loopback / behind one NAT share an IP: diversity grafting
        # then fights the mesh degree without protecting anything.
        eclipse_protection_enabled=False,
        # A publish is also queued for every connected peer not (yet) known to
        # subscribe (an identify race workaround); keep that queue short-lived:
        # our protocol retransmits anyway.
        pending_messages_ttl=5.0,
        score_params=score_params,
    )
    # strict_signing: every message carries from + seqno + key + signature,
    # and unsigned / mis-signed / foreign-'from' messages are dropped on receipt.
    pubsub = Pubsub(host, router, strict_signing=True)
    return pubsub, router


@asynccontextmanager
async def running_stack(
    host: Any, pubsub: Any, router: Any, listen: Sequence[multiaddr.Multiaddr]
) -> AsyncIterator[None]:
    """Run host, pubsub and router until the block exits (may raise groups)."""
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(host.run(listen_addrs=list(listen)))
        # host.run() never closes the swarm: its TCP listener runs in a trio
        # *system* task (outside every nursery of ours) and keeps the port open.
        stack.push_async_callback(_close_host, host)
        await stack.enter_async_context(background_trio_service(pubsub))
        await stack.enter_async_context(background_trio_service(router))
        await pubsub.wait_until_ready()
        yield


async def wait_for_send_room(pubsub: Any, limit: int = 24, timeout: float = 0.1) -> bool:
    """Back-pressure for publishers.  py-libp2p queues at most 32 RPCs per peer
    and drops the rest silently; a publish loop that only yields with
    ``sleep(0)`` outruns the per-peer writer tasks (a write takes several
    scheduler rounds) and loses most messages.  Wait, bounded by ``timeout``
    so one stuck peer cannot stall us, until every queue is below ``limit``.
    RpcQueue has no "space available" event, hence the 1 ms poll."""
    with trio.move_on_after(timeout):
        while any(len(q) >= limit for q in pubsub.peer_queues.values()):
            await trio.sleep(0.001)
        return True
    return False


async def _close_host(host: Any) -> None:
    # Shielded: on outer cancellation the close must still run, or the
    # listening socket and its system task outlive the transport.
    with trio.CancelScope(shield=True), trio.move_on_after(5):
        try:
            await host.close()
        except Exception as exc:
            log.debug("closing host: %s", flat_message(exc))


def flatten(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in flatten(sub)]
    return [exc]


def is_shutdown_noise(exc: BaseException) -> bool:
    """py-libp2p tasks that spawn into a nursery being torn down raise this."""
    return isinstance(exc, RuntimeError) and "Nursery is closed to new arrivals" in str(exc)


def flat_message(exc: BaseException) -> str:
    return "; ".join(f"{type(e).__name__}: {e}" for e in flatten(exc))


def unwrap_group(group: BaseExceptionGroup[Any], body_exc: BaseException | None) -> None:
    """Re-raise what a caller should see from a shutdown that raised ``group``.

    Nurseries (ours and py-libp2p's) wrap whatever escaped.  The caller's own
    exception comes back unwrapped; a Cancelled comes back bare (so the
    cancelling scope catches it); py-libp2p's shutdown noise is dropped.
    Returns normally if nothing else is left.
    """
    leaves = flatten(group)
    if body_exc is not None and any(leaf is body_exc for leaf in leaves):
        raise body_exc from None
    rest = [leaf for leaf in leaves if not is_shutdown_noise(leaf)]
    cancelled = [leaf for leaf in rest if isinstance(leaf, trio.Cancelled)]
    errors = [leaf for leaf in rest if not isinstance(leaf, trio.Cancelled)]
    if errors:
        raise BaseExceptionGroup("libp2p transport failed", errors) from None
    if cancelled:
        raise cancelled[0] from None
    log.debug("ignored %d py-libp2p shutdown errors", len(leaves))
