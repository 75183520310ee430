"""The transport interface the node runtime speaks.

Two implementations exist: the libp2p transport (real hosts, gossipsub with
strict signing plus direct streams) and simnet's simulated network.  Both are
*best effort*: frames may be lost, duplicated or reordered; the protocol in
``protocols/`` makes outcomes exact through ids, acknowledgements and epochs.
"""

from __future__ import annotations

from typing import Protocol

import attrs


@attrs.frozen
class Incoming:
    """One received frame.  ``sender`` is authenticated by the transport
    (pubsub signature or secure-channel peer id), never taken from the frame."""

    sender: str
    data: bytes
    topic: str = ""  # "" = point-to-point


class Transport(Protocol):
    @property
    def local_id(self) -> str:
        """This node's peer id."""
        ...

    async def send(self, peer: str, data: bytes) -> None:
        """Best-effort point-to-point frame; never raises for an unreachable peer."""
        ...

    async def publish(self, topic: str, data: bytes) -> None:
        """Best-effort frame to every subscriber of ``topic``."""
        ...

    async def subscribe(self, topic: str) -> None:
        """Start receiving frames published on ``topic``."""
        ...

    async def receive(self) -> Incoming:
        """Wait for the next frame (point-to-point or from a subscribed topic)."""
        ...
