"""The real transport: py-libp2p 0.8.1 hosts (TCP + Noise + Yamux, gossipsub).

Addressing
----------
* ``publish`` / ``subscribe``: gossipsub with strict signing; ``Incoming.sender``
  is the message's ``from`` peer, whose signature py-libp2p verified.
* ``send`` (point-to-point): a persistent outbound stream per peer on
  ``/p2pnode/frame/1.0.0`` carrying varint-length-prefixed frames, over a
  *direct* connection to the target, dialled from the addresses given to
  ``add_addresses`` (or learnt by ``connect``): that is what makes sparse
  networks work (A knows only its bootstrap B, yet reaches C directly).  The
  sender is the stream's remote peer, authenticated by the Noise handshake,
  and only the two peers see the frame.  (An "inbox" mode that published
  point-to-point frames on a per-peer gossipsub topic was removed: any peer
  could subscribe to another's inbox and read its grants, env values
  included; it was also ~4x slower, see ``bench/bench_gossip.py``.)

Abuse
-----
Every frame the transport rejects counts against its sender in a ``PeerGuard``
(``net/guard.py``): a bad varint or absurd length prefix (the stream is reset),
an oversized frame (skipped), a frame left partial for ``frame_timeout``
seconds (the stream is reset), a broadcast the topic validator refuses; the
node adds the core's own rejections (``penalize``).  A peer over the threshold
is banned: disconnected, refused and blacklisted in gossipsub for a period
that doubles on each repeat (``net/bans.py``).

Flow control
------------
libp2p's internals never wait for us: received frames go into one bounded trio
channel with ``send_nowait``; when it is full the frame is dropped and counted.
Outgoing point-to-point frames go into a bounded per-peer queue drained by a
per-peer task (dial, stream, retry once), so ``send`` never blocks on the
network and never raises; drops are counted in ``stats``.  The task writes
whatever is queued for the peer at once, several frames in one stream write.  The protocol layer
retransmits, so dropping is always safe.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import attrs
import multiaddr
import trio
from libp2p.crypto.keys import KeyPair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr

from p2pnode import tracing
from p2pnode.identity import peer_id_of
from p2pnode.net.addrs import expand_unspecified, host_ips
from p2pnode.net.bans import SCORE_PARAMS, BanEnforcer
from p2pnode.net.credit import credit_per_half_window
from p2pnode.net.framing import FrameDecoder, FrameError, encode_frame, reset_quietly
from p2pnode.net.gossip import control_counts
from p2pnode.net.guard import GuardLimits, PeerGuard
from p2pnode.net.stack import (
    GOSSIP_PROTOCOLS,
    build_host,
    build_pubsub,
    flat_message,
    running_stack,
    unwrap_group,
    wait_for_send_room,
)
from p2pnode.transport import Incoming

if TYPE_CHECKING:
    # libp2p pulls in trio-typing, whose stubs predate ``trio.TaskStatus``.
    from trio_typing import TaskStatus

log = logging.getLogger("p2pnode.libp2p")

FRAME_PROTOCOL = TProtocol("/p2pnode/frame/1.0.0")
MAX_FRAME = 256 * 1024
_READ_CHUNK = 64 * 1024
# Queued frames for one peer are joined into one stream write up to this size
# (yamux splits writes beyond its window anyway).
_WRITE_BATCH_BYTES = 64 * 1024


@attrs.define
class TransportStats:
    """Counters (monotonic) an operator or benchmark can read."""

    received: int = 0
    sent: int = 0
    published: int = 0
    dropped_oversize_in: int = 0
    dropped_oversize_out: int = 0
    dropped_receive_full: int = 0  # our receive channel was full
    dropped_send_full: int = 0  # a peer's outbound queue was full
    dropped_unreachable: int = 0  # dial / stream / subscription failed
    dropped_own: int = 0  # our own publish echoed back by pubsub
    dial_failures: int = 0
    dials_queued: int = 0  # dials that waited for one of the max_dials slots
    dials_moved: int = 0  # slow first dials moved to a redial slot (slow_dial)
    publish_congested: int = 0  # published although a peer's libp2p queue was full
    dropped_banned: int = 0  # frames to a banned peer, not sent
    bans: int = 0  # bans started (PeerGuard)
    stale_connections_closed: int = 0  # no stream could be opened on them: redial next time
    idle_connections_closed: int = 0  # no frame either way for idle_connection_timeout
    duplicate_connections_closed: int = 0  # a second connection to one peer (crossed dials)
    connections_reset_by_fault: int = 0  # cut under the muxer (p2pnode.testing.Faults)


# A broadcast validator: the reason to refuse a message (from ``sender``), or None.
TopicValidator = Callable[[str, bytes], "str | None"]


class Libp2pTransport:
    """``Transport`` over py-libp2p.  Use as ``async with Libp2pTransport(...) as t``
    or ``await nursery.start(t.run)``."""

    def __init__(
        self,
        key_pair: KeyPair,
        listen_addrs: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
        *,
        receive_buffer: int = 4096,
        peer_queue: int = 256,
        max_frame: int = MAX_FRAME,
        dial_timeout: float = 5.0,
        heartbeat_interval: int = 1,
        idle_sender_timeout: float = 60.0,
        max_known_peers: int = 10_000,
        frame_timeout: float = 10.0,
        stream_idle_timeout: float = 300.0,
        max_inbound_streams: int = 8,
        idle_connection_timeout: float = 300.0,
        guard_limits: GuardLimits | None = None,
        max_dials: int = 2,
    ) -> None:
        self._key_pair = key_pair
        self._local_id = peer_id_of(key_pair)
        self._listen = [multiaddr.Multiaddr(a) for a in listen_addrs]
        self.max_frame = max_frame
        self._peer_queue = peer_queue
        self._dial_timeout = dial_timeout
        # Outbound dials at once; the others wait their turn (their frames
        # stay queued), and ``dial_timeout`` counts from a dial's start.  A
        # dial is a Noise handshake and several negotiations, ~54 ms of CPU
        # for both ends; when 100 nodes on 2 cores each dialled the 63 peers
        # of its first peer exchange at once, every handshake shared the CPU
        # with thousands of others, none finished within its timeout, and all
        # that work was lost and redone (the host never recovered).
        self._dial_slots = trio.Semaphore(max_dials)
        # A peer whose last dial failed is likely down or paused (SIGSTOP, a
        # suspended laptop): its next dial waits for a handshake that may never
        # come, for up to ``dial_timeout``, and costs no CPU meanwhile.  Such
        # redials take slots of their own, so that a few dead peers never hold
        # up dials to live ones for ``dial_timeout`` at a time.
        self._redial_slots = trio.Semaphore(max_dials)
        self._dial_failed: dict[str, None] = {}  # insertion-ordered; bounded below
        # A first dial still waiting after this long is likely to a peer paused
        # since we last heard of it: it moves to a redial slot (waiting for one
        # if need be) and frees its shared slot for live peers.  A handshake
        # takes tens of ms, seconds only on a saturated host; either way at most
        # 2 x max_dials handshakes run at once.
        self.slow_dial = dial_timeout / 4
        self._heartbeat = heartbeat_interval
        self._idle_sender_timeout = idle_sender_timeout
        self._max_known_peers = max_known_peers
        # A frame begun must end within this; an idle stream between frames
        # lives as long as the sender keeps it (it closes it when idle).
        self.frame_timeout = frame_timeout
        self.stream_idle_timeout = stream_idle_timeout
        # An honest peer keeps one frame stream to us (two briefly, when it
        # replaces a broken one).
        self.max_inbound_streams = max_inbound_streams
        self._inbound: dict[str, int] = {}  # peer -> inbound frame streams open
        # A connection with no frame either way for this long is closed (0:
        # never); the next send redials.  See _close_idle_connections.
        self.idle_connection_timeout = idle_connection_timeout
        self._last_frame: dict[str, float] = {}  # peer -> last frame sent to / read from it
        self._closing: dict[str, trio.Event] = {}  # peer -> set once its idle close is done
        self.stats = TransportStats()
        self.guard = PeerGuard(guard_limits)
        self._bans: BanEnforcer | None = None
        self._validators: dict[str, TopicValidator] = {}
        self._in_send, self._in_recv = trio.open_memory_channel[Incoming](receive_buffer)
        self._addrs: dict[str, list[multiaddr.Multiaddr]] = {}  # our address book
        self._outboxes: dict[str, trio.MemorySendChannel[bytes]] = {}
        self._streams: dict[str, Any] = {}  # peer -> outbound frame stream
        self._backoff: dict[str, tuple[float, float]] = {}  # peer -> (retry at, delay)
        self._subscribed: set[str] = set()
        self._host: Any = None
        self._pubsub: Any = None
        self._router: Any = None
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self._cm: Any = None
        self._extra_handlers: dict[str, Callable[[Any], Awaitable[None]]] = {}

    # --- lifecycle -------------------------------------------------------------

    @property
    def local_id(self) -> str:
        return self._local_id

    @property
    def running(self) -> bool:
        return self._nursery is not None and not self._stopping

    async def __aenter__(self) -> Libp2pTransport:
        self._cm = self._running()
        return await self._cm.__aenter__()  # type: ignore[no-any-return]

    async def __aexit__(self, *exc: Any) -> bool | None:
        cm, self._cm = self._cm, None
        return await cm.__aexit__(*exc)  # type: ignore[no-any-return]

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled; ``started`` once listening and subscribed."""
        async with self:
            task_status.started()
            await trio.sleep_forever()

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[Libp2pTransport]:
        if self._host is not None:
            raise RuntimeError("a Libp2pTransport runs once")
        self._host = build_host(self._key_pair, self._listen)
        self._pubsub, self._router = build_pubsub(self._host, self._heartbeat, SCORE_PARAMS)
        self._host.set_stream_handler(FRAME_PROTOCOL, self._handle_frame_stream)
        for protocol, handler in self._extra_handlers.items():
            self._host.set_stream_handler(TProtocol(protocol), handler)
        body_exc: BaseException | None = None
        try:
            async with (
                running_stack(self._host, self._pubsub, self._router, self._listen),
                trio.open_nursery() as nursery,
            ):
                self._nursery = nursery
                self._bans = BanEnforcer(self.guard, self._host, self._pubsub, nursery)
                if self.idle_connection_timeout > 0:
                    nursery.start_soon(self._close_idle_connections)
                try:
                    yield self
                except BaseException as exc:
                    body_exc = exc
                    raise
                finally:
                    self._stopping = True
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            unwrap_group(group, body_exc)  # re-raises all but py-libp2p shutdown noise
        finally:
            self._nursery = None
            self._bans = None
            self._streams.clear()
            self._outboxes.clear()
            self._in_send.close()  # receive() now raises trio.EndOfChannel

    # --- addresses and connections --------------------------------------------

    def listen_addrs(self) -> list[str]:
        """Our full multiaddrs (``.../p2p/<peer id>``), as given to peers: a
        listener on 0.0.0.0 (or ::) as this host's interface addresses."""
        if self._host is None:
            return []
        addrs = [str(a) for a in self._host.get_addrs()]
        if any("/ip4/0.0.0.0/" in a or "/ip6/::/" in a for a in addrs):
            addrs = expand_unspecified(addrs, host_ips())
        return addrs

    def add_addresses(self, peer_id: str, addrs: Sequence[str]) -> None:
        """Learn where ``peer_id`` listens (from peer exchange).  Synchronous;
        bad addresses are logged and skipped."""
        if peer_id == self._local_id:
            return
        known = self._addrs.setdefault(peer_id, [])
        for text in addrs:
            try:
                addr = multiaddr.Multiaddr(text)
                owner = addr.get_peer_id()
                if owner is not None:
                    if owner != peer_id:
                        log.warning("address %s is not %s's; skipped", text, peer_id)
                        continue
                    addr = addr.decapsulate(multiaddr.Multiaddr(f"/p2p/{owner}"))
            except Exception as exc:
                log.warning("bad address %r for %s: %s", text, peer_id, exc)
                continue
            if addr not in known:
                known.insert(0, addr)  # newest first: most likely current
                del known[8:]
                self._backoff.pop(peer_id, None)  # new address: try again now
        if not known:
            del self._addrs[peer_id]
        while len(self._addrs) > self._max_known_peers:  # dicts keep insertion order
            del self._addrs[next(iter(self._addrs))]

    async def connect(self, addr: str) -> str:
        """Dial a bootstrap multiaddr ending in ``/p2p/<id>``; returns the peer id.
        Raises ``ConnectionError`` if the dial fails (unlike ``send``)."""
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        peer = info.peer_id.to_base58()
        self.add_addresses(peer, [addr])
        if not await self._ensure_connected(peer):
            raise ConnectionError(f"cannot connect to {addr}")
        return peer

    def connected_peers(self) -> list[str]:
        return [p.to_base58() for p in self._host.get_connected_peers()] if self._host else []

    async def _ensure_connected(self, peer: str) -> bool:
        if self.banned(peer):
            self.guard.refused += 1
            return False
        await self._await_close(peer)
        host = self._host
        peer_id = ID.from_base58(peer)
        if host.get_network().connections.get(peer_id):
            return True
        addrs = self._addrs.get(peer, [])
        if not addrs:
            log.info("no address known for %s", peer)
            return False
        failed_before = peer in self._dial_failed
        slots = self._redial_slots if failed_before else self._dial_slots
        if slots.value == 0:
            self.stats.dials_queued += 1
        await slots.acquire()
        held = [slots]  # the slot(s) this dial holds now: released at its end
        try:
            if host.get_network().connections.get(peer_id):
                return True  # it dialled us (or we it) while we waited
            try:
                async with trio.open_nursery() as nursery:
                    if not failed_before:
                        nursery.start_soon(self._move_if_slow, held)
                    with trio.fail_after(self._dial_timeout):
                        await host.connect(PeerInfo(peer_id, addrs))
                    nursery.cancel_scope.cancel()
            except Exception as exc:  # SwarmException, OSError, TooSlowError, ...
                self.stats.dial_failures += 1
                log.info("dial %s failed: %s", peer, flat_message(exc))
                self._dial_failed[peer] = None
                if len(self._dial_failed) > self._max_known_peers:
                    del self._dial_failed[next(iter(self._dial_failed))]
                return False
            self._dial_failed.pop(peer, None)
            return True
        finally:
            for slot in held:
                slot.release()

    async def _move_if_slow(self, held: list[trio.Semaphore]) -> None:
        """After ``slow_dial``, move the dial from its shared slot (``held[0]``)
        to a redial slot, so a peer paused since we last heard of it does not
        hold up dials to live peers for a whole ``dial_timeout``."""
        await trio.sleep(self.slow_dial)
        await self._redial_slots.acquire()
        # No checkpoint from here on: the swap is atomic for the dial's finally.
        held.append(self._redial_slots)
        held.remove(self._dial_slots)
        self._dial_slots.release()
        self.stats.dials_moved += 1

    async def _await_close(self, peer: str) -> None:
        """If our connection to ``peer`` is being closed as idle, wait until it
        is: a stream opened on it now could lose what is written to it."""
        closing = self._closing.get(peer)
        if closing is not None:
            await closing.wait()

    # --- other stream protocols (e.g. blob transfer) ---------------------------

    def set_stream_handler(
        self, protocol: str, handler: Callable[[str, Any], Awaitable[None]]
    ) -> None:
        """Serve ``protocol``: ``handler(sender, stream)`` gets the authenticated
        peer id and the raw libp2p stream (``read``/``write``); the stream is
        reset afterwards.  A ``FrameError`` the handler raises counts against
        the sender.  Call before the transport starts."""

        async def serve(stream: Any) -> None:
            sender = stream.muxed_conn.peer_id.to_base58()
            try:
                if self.banned(sender):
                    self.guard.refused += 1
                    return
                self._last_frame[sender] = trio.current_time()
                await handler(sender, stream)
            except FrameError as exc:  # garbage or a stalled request: the sender's fault
                self.penalize(sender, exc.reason)
                log.info("%s from %s refused: %s", protocol, sender, exc)
            except Exception as exc:
                log.info("%s handler failed: %s", protocol, flat_message(exc))
            finally:
                await reset_quietly(stream)

        self._extra_handlers[protocol] = serve
        if self._host is not None:
            self._host.set_stream_handler(TProtocol(protocol), serve)

    async def open_stream(self, peer: str, protocol: str) -> Any:
        """A new stream to ``peer`` speaking ``protocol``; raises ``ConnectionError``."""
        if not await self._ensure_connected(peer):
            raise ConnectionError(f"cannot reach {peer}")
        self._last_frame[peer] = trio.current_time()
        try:
            with trio.fail_after(self._dial_timeout):
                return await self._host.new_stream(ID.from_base58(peer), [TProtocol(protocol)])
        except Exception as exc:
            raise ConnectionError(
                f"cannot open {protocol} to {peer}: {flat_message(exc)}"
            ) from None

    def gossip_stats(self) -> dict[str, int]:
        """Gossipsub control entries sent, received and refused (monotonic,
        ``p2pnode/net/gossip.py``), keyed ``gossip_<count>``."""
        return {f"gossip_{k}": v for k, v in control_counts(self._router).items()}

    async def wait_for_mesh(self, peer: str, topic: str, timeout: float = 5.0) -> None:
        """Wait until ``peer`` is in our gossipsub mesh for ``topic`` (readiness
        for tests and startup; raises ``trio.TooSlowError``)."""
        await self._pubsub.wait_for_mesh(ID.from_base58(peer), topic, timeout=timeout)

    # --- abuse ----------------------------------------------------------------

    def banned(self, peer: str) -> bool:
        return self.guard.banned(peer, trio.current_time())

    def penalize(self, peer: str, reason: str) -> None:
        """Count one rejected frame against ``peer`` (and ban it past the
        threshold).  The node calls this for the frames its core drops."""
        if peer == self._local_id:
            return
        seconds = self.guard.penalize(peer, reason, trio.current_time())
        if seconds:
            self.stats.bans += 1
            if self._bans is not None:
                self._bans.enforce(peer, seconds)

    def set_topic_validator(self, topic: str, validator: TopicValidator) -> None:
        """Check every message on ``topic`` before gossipsub delivers *or
        forwards* it: ``validator(sender, data)`` returns why it is refused, or
        None.  A refused message counts against its originator here and, in
        gossipsub's score, against the peer that forwarded it.  Call before
        subscribing."""
        self._validators[topic] = validator

    def _pubsub_validator(self, topic: str, validator: TopicValidator) -> Callable[..., bool]:
        def validate(forwarder: ID, msg: Any) -> bool:
            sender = ID(msg.from_id).to_base58()
            if sender == self._local_id:
                return True
            if len(msg.data) > self.max_frame:
                reason: str | None = f"{len(msg.data)} bytes > {self.max_frame}"
            else:
                reason = validator(sender, msg.data)
            if reason is None:
                return True
            log.info("refused a message on %s from %s: %s", topic, sender, reason)
            self.penalize(sender, "invalid_broadcast")
            return False

        return validate

    # --- pubsub ---------------------------------------------------------------

    async def subscribe(self, topic: str) -> None:
        if topic in self._subscribed:
            return
        assert self._nursery is not None, "transport not running"
        self._subscribed.add(topic)
        validator = self._validators.get(topic)
        if validator is not None:
            self._pubsub.set_topic_validator(
                topic, self._pubsub_validator(topic, validator), is_async_validator=False
            )
        subscription = await self._pubsub.subscribe(topic)
        # A dedicated task drains py-libp2p's 32-slot subscription channel
        # (which drops silently when full) into our bounded channel.
        self._nursery.start_soon(self._drain_subscription, topic, subscription)

    async def publish(self, topic: str, data: bytes) -> None:
        if len(data) > self.max_frame:
            self.stats.dropped_oversize_out += 1
            log.warning("publish on %s dropped: %d bytes > %d", topic, len(data), self.max_frame)
            return
        if not self.running:
            log.info("publish on %s dropped: transport not running", topic)
            return
        try:
            if not await wait_for_send_room(self._pubsub):
                self.stats.publish_congested += 1  # some peer may drop it
            await self._pubsub.publish(topic, data)
            self.stats.published += 1
        except Exception as exc:  # best effort, like every transmission
            log.warning("publish on %s failed: %s", topic, flat_message(exc))

    async def _drain_subscription(self, topic: str, subscription: Any) -> None:
        channel = subscription.receive_channel  # TrioSubscriptionAPI's 32-slot channel
        async for first in channel:
            # Empty it without yielding: each receive() costs a scheduler
            # round, and a burst of py-libp2p delivery tasks can fill 32 slots
            # in one round (the overflow is dropped with only a log line).
            batch = [first]
            with contextlib.suppress(trio.WouldBlock):
                while True:
                    batch.append(channel.receive_nowait())
            for msg in batch:
                sender = ID(msg.from_id).to_base58()  # signature checked (strict signing)
                if sender == self._local_id:
                    self.stats.dropped_own += 1  # pubsub delivers our publishes to us
                    continue
                self._deliver(Incoming(sender, msg.data, topic))

    def _deliver(self, frame: Incoming) -> None:
        if len(frame.data) > self.max_frame:
            self.stats.dropped_oversize_in += 1
            log.warning("dropped %d-byte frame from %s", len(frame.data), frame.sender)
            return
        try:
            self._in_send.send_nowait(frame)
            self.stats.received += 1
        except trio.WouldBlock:
            self.stats.dropped_receive_full += 1
        except trio.ClosedResourceError:
            pass  # shutting down

    async def receive(self) -> Incoming:
        return await self._in_recv.receive()

    # --- point-to-point -------------------------------------------------------

    async def send(self, peer: str, data: bytes) -> None:
        if len(data) > self.max_frame:
            self.stats.dropped_oversize_out += 1
            log.warning("send to %s dropped: %d bytes > %d", peer, len(data), self.max_frame)
            return
        if peer == self._local_id:
            self._deliver(Incoming(peer, data, ""))  # loopback, no network
            return
        if not self.running:
            log.info("send to %s dropped: transport not running", peer)
            return
        if self.banned(peer):
            self.stats.dropped_banned += 1
            return
        retry_at, _ = self._backoff.get(peer, (0.0, 0.0))
        if trio.current_time() < retry_at:
            self.stats.dropped_unreachable += 1
            return
        outbox = self._outboxes.get(peer)
        if outbox is None:
            outbox, queue = trio.open_memory_channel[bytes](self._peer_queue)
            self._outboxes[peer] = outbox
            assert self._nursery is not None
            self._nursery.start_soon(self._peer_sender, peer, queue, name=f"p2p sender {peer}")
        try:
            outbox.send_nowait(data)
        except trio.WouldBlock:
            self.stats.dropped_send_full += 1
        await trio.lowlevel.checkpoint()

    async def _peer_sender(self, peer: str, queue: trio.MemoryReceiveChannel[bytes]) -> None:
        """Drains one peer's outbound queue; exits when idle to bound task count."""
        async with queue:
            while True:
                data = None
                with trio.move_on_after(self._idle_sender_timeout):
                    data = await queue.receive()
                if data is None:
                    # No checkpoint between the timeout and here: nothing can
                    # have been queued meanwhile, so closing loses no frame.
                    self._outboxes.pop(peer, None)
                    stream = self._streams.pop(peer, None)
                    if stream is not None:
                        await reset_quietly(stream)
                    return
                # Every frame queued meanwhile goes in the same stream write:
                # one yamux frame and one Noise message for the lot, where each
                # costs py-libp2p far more than the bytes do.
                frames = [data]
                size = len(data)
                while size < _WRITE_BATCH_BYTES:
                    try:
                        data = queue.receive_nowait()
                    except trio.WouldBlock:
                        break
                    frames.append(data)
                    size += len(data)
                # Before any checkpoint: the idle-connection closer sees a
                # frame on its way and leaves the connection alone.
                self._last_frame[peer] = trio.current_time()
                if await self._transmit(peer, frames):
                    self._last_frame[peer] = trio.current_time()
                    self.stats.sent += len(frames)
                    self._backoff.pop(peer, None)
                    continue
                self.stats.dropped_unreachable += len(frames)
                _, delay = self._backoff.get(peer, (0.0, 0.25))
                self._backoff[peer] = (trio.current_time() + delay, min(delay * 2, 30.0))
                while True:  # peer unreachable: drop what is queued for it now
                    try:
                        queue.receive_nowait()
                        self.stats.dropped_unreachable += 1
                    except trio.WouldBlock:
                        break

    async def _transmit(self, peer: str, frames: list[bytes]) -> bool:
        frame = b"".join(encode_frame(data) for data in frames)
        for _attempt in range(2):  # a cached stream may be dead: retry once on a new one
            stream = self._streams.get(peer)
            if stream is None:
                stream = await self._open_frame_stream(peer)
                if stream is None:
                    return False
                self._streams[peer] = stream
            try:
                if tracing.ON:
                    tracing.event("wire<", str(len(frames)))
                with trio.fail_after(self._dial_timeout):
                    await stream.write(frame)
                if tracing.ON:
                    tracing.event("wire>", str(len(frames)))
                return True
            except Exception as exc:
                log.debug("frame stream to %s broke: %s", peer, flat_message(exc))
                self._streams.pop(peer, None)
                await reset_quietly(stream)
        return False

    async def _open_frame_stream(self, peer: str) -> Any:
        # Twice: the connection we found may be closing at the peer's end
        # (it closed it as idle just now, and the close has not reached us),
        # so the stream cannot be opened on it; the second try dials afresh
        # instead of dropping the frame.
        for _attempt in range(2):
            if not await self._ensure_connected(peer):
                return None
            try:
                with trio.fail_after(self._dial_timeout):
                    return await self._host.new_stream(ID.from_base58(peer), [FRAME_PROTOCOL])
            except Exception as exc:
                log.info("cannot open frame stream to %s: %s", peer, flat_message(exc))
                await self._drop_connection(peer)
        return None

    async def _drop_connection(self, peer: str) -> None:
        """Close our connection to ``peer`` after a stream could not be opened
        on it, so that the next send dials a fresh one.  Seen with py-libp2p
        0.8.1 on a busy host (100 nodes on 2 cores): a connection on which the
        peer never answers a new stream's negotiation again (identify, meshsub
        and frame streams all time out) while its own streams to us still
        work; kept, it silenced us towards that peer for good (a node stayed
        with an empty view for minutes: every answer to its hellos was lost)."""
        self.stats.stale_connections_closed += 1
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            try:
                await self._host.disconnect(ID.from_base58(peer))
            except Exception as exc:
                log.debug("closing the connection to %s: %s", peer, flat_message(exc))

    async def cut_connection(self, peer: str) -> bool:
        """Cut every connection to ``peer`` beneath its muxer, as a network
        reset would: no yamux GO_AWAY, no stream reset, no goodbye; frames in
        flight are lost, and both ends learn of it only from their next read
        or write.  Fault injection only (``Faults.reset_every``); returns
        whether there was a connection to cut."""
        conns = self._host.get_network().connections.get(ID.from_base58(peer)) or []
        for conn in list(conns):
            self.stats.connections_reset_by_fault += 1
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                try:
                    await conn.muxed_conn.secured_conn.close()
                except Exception as exc:
                    log.debug("cutting the connection to %s: %s", peer, flat_message(exc))
        return bool(conns)

    # --- idle connections ---------------------------------------------------------

    async def _close_idle_connections(self) -> None:
        """Close connections that carried no frame either way for
        ``idle_connection_timeout`` seconds (and no other stream but
        gossipsub's), unless the peer is in our gossipsub mesh.  Each connection
        costs both ends CPU while idle (yamux pings, gossipsub's per-peer
        heartbeat work); a peer no longer in either side's view otherwise keeps
        one for good.  The next send redials (``_ensure_connected``).  A dial
        costs far more CPU than holding a connection for a few minutes (issue
        16: ~54 ms for both ends against ~0.15 ms per second held), so the
        timeout must exceed the interval of the frames a peer still exchanges
        (the node's heartbeat hellos)."""
        # Duplicates go within 15 s; an idle connection at most a quarter of
        # the timeout late.
        period = max(0.05, min(15.0, self.idle_connection_timeout / 4))
        while True:
            await trio.sleep(period)
            for conn in self._duplicate_connections():
                await self._close_duplicate(conn)
            now = trio.current_time()
            for peer in self._idle_peers(now):
                await self._close_idle(peer)

    def _duplicate_connections(self) -> list[Any]:
        """Connections beyond one per peer.  Two nodes that dial each other at
        once (a hello and its answer) each keep both connections: py-libp2p
        trims extras only when one is added, and spares those younger than its
        grace period, i.e. these.  At 20 nodes that was 27 connections per
        process for 19 peers, each costing idle CPU.  Both ends keep the same
        one, the connection dialled by the smaller peer id, so they never close
        both; a connection carrying another protocol's stream is left alone."""
        extra = []
        for peer_id, conns in list(self._host.get_network().connections.items()):
            if len(conns) < 2 or self._other_streams(conns):
                continue
            kept_direction = self._kept_direction(peer_id.to_base58())
            kept = next((c for c in conns if c.direction.name == kept_direction), conns[0])
            extra += [c for c in conns if c is not kept]
        return extra

    def _kept_direction(self, peer: str) -> str:
        """Of two connections to ``peer``, the one both ends keep: the one
        the smaller peer id dialled (our OUTBOUND if that is us)."""
        return "OUTBOUND" if self._local_id < peer else "INBOUND"

    async def _close_duplicate(self, conn: Any) -> None:
        # Our frame stream may run on it: the next write fails and _transmit
        # retries once on a new stream, over the connection kept.
        self.stats.duplicate_connections_closed += 1
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            try:
                await conn.close()
            except Exception as exc:
                log.debug("closing a duplicate connection: %s", flat_message(exc))

    def _idle_peers(self, now: float) -> list[str]:
        network = self._host.get_network()
        mesh = set().union(*self._router.mesh.values()) if self._router.mesh else set()
        idle = []
        for peer_id, conns in list(network.connections.items()):
            peer = peer_id.to_base58()
            last = self._last_frame.setdefault(peer, now)  # first seen: count from now
            if now - last < self.idle_connection_timeout or peer_id in mesh:
                continue
            if peer in self._closing or self._queued(peer) or self._other_streams(conns):
                continue
            idle.append(peer)
        for peer in [p for p in self._last_frame if ID.from_base58(p) not in network.connections]:
            del self._last_frame[peer]  # closed (by either side): forget
        return idle

    def _queued(self, peer: str) -> bool:
        outbox = self._outboxes.get(peer)
        return outbox is not None and outbox.statistics().current_buffer_used > 0

    @staticmethod
    def _other_streams(conns: Sequence[Any]) -> bool:
        """Whether a stream other than gossipsub's and our frame streams is
        open (a blob transfer, say): its own protocol is busy, let it finish."""
        idle_protocols = {FRAME_PROTOCOL, *GOSSIP_PROTOCOLS}
        for conn in conns:
            for stream in getattr(conn, "get_streams", tuple)():
                if stream.get_protocol() not in idle_protocols:
                    return True
        return False

    async def _close_idle(self, peer: str) -> None:
        # No checkpoint between the checks in _idle_peers and here: a send
        # that starts now waits in _ensure_connected for the close, then
        # redials; none can pick up the frame stream being closed.
        done = self._closing[peer] = trio.Event()
        stream = self._streams.pop(peer, None)
        self._last_frame.pop(peer, None)
        self.stats.idle_connections_closed += 1
        log.debug("closing the idle connection to %s", peer)
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(5):
                if stream is not None:
                    await reset_quietly(stream)
                try:
                    await self._host.disconnect(ID.from_base58(peer))
                except Exception as exc:
                    log.debug("closing the connection to %s: %s", peer, flat_message(exc))
        finally:
            del self._closing[peer]
            done.set()

    async def _handle_frame_stream(self, stream: Any) -> None:
        """Reads frames from one inbound stream (runs in a py-libp2p task).
        Garbage, a frame left partial for ``frame_timeout`` and streams beyond
        ``max_inbound_streams`` per peer reset the stream and count against the
        sender; a stream idle between frames for ``stream_idle_timeout`` is
        closed quietly (a sender closes its own after a minute)."""
        sender = stream.muxed_conn.peer_id.to_base58()  # authenticated by Noise
        open_streams = self._inbound.get(sender, 0) + 1
        self._inbound[sender] = open_streams
        try:
            if self.banned(sender):
                self.guard.refused += 1
            elif open_streams > self.max_inbound_streams:
                self.penalize(sender, "too_many_streams")
            else:
                credit_per_half_window(stream)  # not a WINDOW_UPDATE per frame read
                await self._read_frames(sender, stream)
        except FrameError as exc:
            self.penalize(sender, exc.reason)
            log.info("bad frame stream from %s: %s", sender, exc)
        except Exception as exc:  # EOF, reset, connection loss
            log.debug("frame stream from %s ended: %s", sender, flat_message(exc))
        finally:
            if self._inbound.get(sender, 0) <= 1:
                self._inbound.pop(sender, None)
            else:
                self._inbound[sender] -= 1
            await reset_quietly(stream)

    async def _read_frames(self, sender: str, stream: Any) -> None:
        decoder = FrameDecoder(self.max_frame)
        started = trio.current_time()  # when the partial frame began, or the last frame ended
        while True:
            if decoder.partial:
                deadline = started + self.frame_timeout
            else:
                deadline = started + self.stream_idle_timeout
            chunk = None
            with trio.move_on_at(deadline):
                chunk = await stream.read(_READ_CHUNK)
            if chunk is None:
                if decoder.partial:
                    self.penalize(sender, "idle_partial")
                    log.info("frame from %s left partial for %ss", sender, self.frame_timeout)
                return
            if not chunk:
                return
            if tracing.ON:
                tracing.event("read", str(len(chunk)))
            self._last_frame[sender] = trio.current_time()
            was_partial = decoder.partial
            frames, dropped = decoder.feed(chunk)
            for length in dropped:
                self.stats.dropped_oversize_in += 1
                self.penalize(sender, "oversized")
                log.warning("dropped %d-byte frame from %s", length, sender)
            for data in frames:
                self._deliver(Incoming(sender, data, ""))
            if frames or dropped or not was_partial:
                started = trio.current_time()  # a frame ended, or a new one began
            if self.banned(sender):
                return
