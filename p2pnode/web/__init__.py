"""The node's HTTP API and dashboard (``serve --http-listen``; docs/http.md).

``serve_http(node, listen)`` runs it in the node's nursery.  Imported lazily
(``p2pnode.web.server``): the CLI's ``http-token`` reads the token file
through ``p2pnode.web.auth`` without loading trio, hypercorn or starlette.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p2pnode.node import Node


async def serve_http(node: Node, listen: str, *, task_status: Any = None) -> None:
    """Serve ``node``'s HTTP API on ``listen`` (``HOST:PORT``) until cancelled;
    ``task_status.started(url)``.  See ``p2pnode.web.server.serve_http``."""
    import trio

    from p2pnode.web.server import serve_http as serve

    await serve(node, listen, task_status=task_status or trio.TASK_STATUS_IGNORED)


__all__ = ["serve_http"]
