"""The two kinds of protocol error, after h11.

``LocalProtocolError``: *we* (or our local caller) tried something the protocol
forbids, e.g. cancelling a job this node does not own.  A bug or a bad request
from the local user; never caused by a peer.

``RemoteProtocolError``: a *peer* sent something invalid: an undecodable or
oversized frame, a message from a sender without authority, a field out of
range.  Handling it means dropping the frame and counting it against the
sender; it must never crash a node.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """Base class of both protocol errors."""


class LocalProtocolError(ProtocolError):
    pass


class RemoteProtocolError(ProtocolError):
    pass
