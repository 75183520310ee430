"""p2pnode: a peer-to-peer compute network without an orchestrator.

    from p2pnode import NodeSettings, open_node

The names are imported lazily: py-libp2p takes about a second to import, and
the CLI's client commands never need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p2pnode.node import Node, NodeSettings, open_node
    from p2pnode.outputs import fetch_outputs

__all__ = ["Node", "NodeSettings", "fetch_outputs", "open_node"]


def __getattr__(name: str) -> Any:
    if name in ("Node", "NodeSettings", "open_node"):
        from p2pnode import node

        return getattr(node, name)
    if name == "fetch_outputs":
        from p2pnode import outputs

        return outputs.fetch_outputs
    raise AttributeError(f"module 'p2pnode' has no attribute {name!r}")
