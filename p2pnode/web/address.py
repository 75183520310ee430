"""``--http-listen HOST:PORT``, checked without loading the server (the CLI
checks it before the node starts)."""

from __future__ import annotations


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:PORT`` for IPv6) -> (host, port); ValueError when bad."""
    host, sep, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(
            f"bad --http-listen address {listen!r}: must be HOST:PORT, e.g. 127.0.0.1:8080"
        )
    return host, int(port)


__all__ = ["parse_listen"]
