"""p2pnode: a peer-to-peer compute network without an orchestrator.

    from p2pnode import NodeSettings, open_node

The library's public names are all here: the node (``open_node``, ``Node``,
``NodeSettings``), clients of a node already running (``Client``,
``AsyncClient``: docs/client.md), the frozen views it reports (``JobView``, ``NodeStats``,
...; ``p2pnode/views.py``) and its errors, every one a ``P2PNodeError``
(``p2pnode/errors.py`` draws the tree).

The names are imported lazily: py-libp2p takes about a second to import, and
the CLI's client commands never need it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p2pnode.client import AsyncClient, Client
    from p2pnode.errors import (
        AmbiguousJobError,
        BlobError,
        ConnectionLost,
        ConnectorError,
        ControlError,
        ControlNotFound,
        ControlRefused,
        ControlTimeout,
        DataDirError,
        DockerUnavailable,
        EventLoopError,
        ExecutorError,
        FetchError,
        InputError,
        KeyFileError,
        ListenError,
        NodeNotRunning,
        NodeStoppedError,
        NotFoundError,
        P2PNodeError,
        RefusedError,
        SandboxUnavailable,
        SettingsError,
        SpecError,
        StoreError,
        UnreachableError,
        WaitTimeoutError,
    )
    from p2pnode.node import Node, NodeSettings, open_node
    from p2pnode.outputs import fetch_outputs
    from p2pnode.views import (
        ExecutionView,
        JobSummary,
        JobView,
        NodeStats,
        PeerView,
        RunView,
        SlotView,
    )

_ERRORS = (
    "AmbiguousJobError",
    "BlobError",
    "ConnectionLost",
    "ConnectorError",
    "ControlError",
    "ControlNotFound",
    "ControlRefused",
    "ControlTimeout",
    "DataDirError",
    "DockerUnavailable",
    "EventLoopError",
    "ExecutorError",
    "FetchError",
    "InputError",
    "KeyFileError",
    "ListenError",
    "NodeNotRunning",
    "NodeStoppedError",
    "NotFoundError",
    "P2PNodeError",
    "RefusedError",
    "SandboxUnavailable",
    "SettingsError",
    "SpecError",
    "StoreError",
    "UnreachableError",
    "WaitTimeoutError",
)
_VIEWS = ("ExecutionView", "JobSummary", "JobView", "NodeStats", "PeerView", "RunView", "SlotView")

# public name -> the module defining it
_HOMES: dict[str, str] = {
    "Node": "p2pnode.node",
    "NodeSettings": "p2pnode.node",
    "open_node": "p2pnode.node",
    "fetch_outputs": "p2pnode.outputs",
    "Client": "p2pnode.client",
    "AsyncClient": "p2pnode.client",
    **{name: "p2pnode.errors" for name in _ERRORS},
    **{name: "p2pnode.views" for name in _VIEWS},
}

__all__ = [  # noqa: RUF022 (grouped: the node, a running node's clients, views, errors)
    "Node",
    "NodeSettings",
    "fetch_outputs",
    "open_node",
    "AsyncClient",
    "Client",
    "ExecutionView",
    "JobSummary",
    "JobView",
    "NodeStats",
    "PeerView",
    "RunView",
    "SlotView",
    "AmbiguousJobError",
    "BlobError",
    "ConnectionLost",
    "ConnectorError",
    "ControlError",
    "ControlNotFound",
    "ControlRefused",
    "ControlTimeout",
    "DataDirError",
    "DockerUnavailable",
    "EventLoopError",
    "ExecutorError",
    "FetchError",
    "InputError",
    "KeyFileError",
    "ListenError",
    "NodeNotRunning",
    "NodeStoppedError",
    "NotFoundError",
    "P2PNodeError",
    "RefusedError",
    "SandboxUnavailable",
    "SettingsError",
    "SpecError",
    "StoreError",
    "UnreachableError",
    "WaitTimeoutError",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'p2pnode' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
