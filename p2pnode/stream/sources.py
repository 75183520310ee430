"""Source types of micro-batch stream jobs: which connector reads a ``source``.

Kept apart from ``connector.py`` (the interface every connector implements)
so that a connector module imports the interface and this table imports the
connectors, with no import circle between them.
"""

from __future__ import annotations

from p2pnode.stream.connector import Connector, ConnectorError

__all__ = ["open_connector"]


def open_connector(source_type: str, url: str) -> Connector:
    """The connector for a job's ``source``.  Raises ``ConnectorError`` for an
    unknown type or a URL the client refuses."""
    if source_type == "redis":
        # Imported here: nodes without a Redis source never import redis-py.
        from p2pnode.stream.redis import RedisConnector

        return RedisConnector(url)
    raise ConnectorError(f"no connector for source type {source_type!r}")
