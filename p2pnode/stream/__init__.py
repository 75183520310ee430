"""Micro-batch stream sources: the connector interface, the Redis Streams
connector and the owner's feeder (see ``connector.py`` and ``feeder.py``).

``open_connector`` (``sources.py``) maps a source type onto its connector;
``RedisConnector`` is imported lazily (``p2pnode.stream.redis``) so that nodes
without a Redis source never import redis-py.
"""

from p2pnode.stream.connector import (
    Connector,
    ConnectorError,
    Entry,
    ReadResult,
    decode_position,
    encode_position,
)
from p2pnode.stream.feeder import BATCH_FILE, PartitionStatus, StreamFeeder
from p2pnode.stream.sources import open_connector

__all__ = [
    "BATCH_FILE",
    "Connector",
    "ConnectorError",
    "Entry",
    "PartitionStatus",
    "ReadResult",
    "StreamFeeder",
    "decode_position",
    "encode_position",
    "open_connector",
]
