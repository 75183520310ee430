"""What the world around the cores sees of a cluster.

The micro-batch connector (:mod:`simnet.connector`) and the byzantine
adversary (:mod:`simnet.byzantine`) act on a running cluster: they read the
clock, schedule callbacks, look at nodes and send or deliver through the
engine.  They are handed the harness's ``Cluster`` but depend only on this
protocol, so the harness (which builds them) is the only module that imports
both: no import circle harness -> connector/adversary -> harness.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from simnet.engine import Engine


class ClusterView(Protocol):
    """The part of :class:`simnet.harness.Cluster` the connector and the adversary use."""

    @property
    def seed(self) -> int: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def byzantine(self) -> frozenset[str]:
        """The lying nodes' ids."""
        ...

    @property
    def ids(self) -> list[str]:
        """Every node's id, in index order."""
        ...

    @property
    def now(self) -> float:
        """Virtual seconds."""
        ...

    def at(self, t: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` at virtual time ``t``."""

    def idx(self, node_id: str) -> int: ...

    def is_up(self, node_id: str) -> bool: ...

    def core(self, node_id: str) -> Any:
        """The node's running ``NodeCore`` (None while it is down)."""

    def owner_of(self, job_id: str) -> str | None:
        """The node that accepted ``job_id`` (None: not accepted yet)."""
