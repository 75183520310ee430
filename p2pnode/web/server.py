"""``serve_http``: the HTTP API (``build_app``) served by hypercorn on trio.

It runs in the node's own nursery (``p2pnode serve`` starts it beside the
control socket), so it stops with the node: the node's cancel scope ends the
listener, every request and every event stream at once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from p2pnode.errors import ListenError
from p2pnode.web.address import parse_listen
from p2pnode.web.app import build_app
from p2pnode.web.auth import TokenFile, load_or_create_token, token_path

if TYPE_CHECKING:
    from p2pnode.node import Node

log = logging.getLogger("p2pnode.web")


async def serve_http(
    node: Node, listen: str, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the HTTP API of ``node`` on ``listen`` (``HOST:PORT``, port 0: any
    free one) until cancelled.  ``task_status.started(url)`` gives the bound
    ``http://HOST:PORT``; a bind failure raises ``ListenError``."""
    host, port = parse_listen(listen)
    token = load_or_create_token(node.settings.data_dir)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = 1.0
    config.keep_alive_timeout = 30.0
    # Followed as it rotates (http-token --rotate): no restart needed.
    app = build_app(node, TokenFile(token_path(node.settings.data_dir), token))
    try:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, app, config)
            url = str(binds[0]).rstrip("/")
            node.http_url = url
            task_status.started(url)
    except BaseException as exc:
        failed = _bind_error(exc) if node.http_url is None else None
        if failed is None:
            raise
        refused = ListenError(f"cannot serve HTTP on {listen}: {failed.strerror or failed}")
        refused.errno = failed.errno
        raise refused from None
    finally:
        node.http_url = None


def _bind_error(exc: BaseException) -> OSError | None:
    """The OSError of a failed bind (hypercorn's nurseries wrap it in groups)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, OSError) else None


__all__ = ["serve_http"]
