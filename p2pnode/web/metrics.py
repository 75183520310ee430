"""``GET /metrics``: a node's counters in the Prometheus text format.

Read at scrape time from the node's own state (``Node.stats()``, ``peers()``)
by a custom collector in a registry of this node's alone: many nodes may share
one process (tests, simulations), so nothing goes to prometheus_client's
global registry and no metric object outlives the scrape.  Metric names and
labels are a contract (docs/metrics.md): extend, never rename.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from protocols.directory import ALIVE, GONE, SUSPECT
from protocols.states import JobState

__all__ = ["MetricsSource", "NodeCollector", "render_metrics"]

# Reasons a frame is rejected (p2pnode/net/guard.py): always exposed, at 0
# until one happens, so a rate over them starts from a known zero.
REJECT_REASONS = (
    "bad_varint",
    "absurd_length",
    "oversized",
    "idle_partial",
    "too_many_streams",
    "invalid_broadcast",
    "undecodable",
    "forged",
    "unauthorized",
)
HANDOVER_ROLES = ("offered", "accepted")
PEER_STATUSES = (ALIVE, SUSPECT, GONE)


class _JsonView(Protocol):
    def to_json(self) -> dict[str, Any]: ...


class _Peer(Protocol):
    @property
    def status(self) -> str: ...


class MetricsSource(Protocol):
    """What the metrics read of a node (``p2pnode.Node``; not imported, so
    that the node's modules may import this one)."""

    def stats(self) -> _JsonView: ...
    def peers(self) -> Sequence[_Peer]: ...


def render_metrics(node: MetricsSource) -> tuple[bytes, str]:
    """The node's metrics page: (body, content type)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(node))
    return generate_latest(registry), CONTENT_TYPE_LATEST


class NodeCollector(Collector):
    """One node's metric families, built from its state at each ``collect``."""

    def __init__(self, node: MetricsSource) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        stats = self.node.stats().to_json()
        yield _info(stats["node_id"])
        yield _jobs(stats.get("jobs_by_kind", {}))
        yield from _executions(stats.get("executions", {}))
        leases = stats.get("leases", {})
        yield _counter(
            "p2pnode_lease_renewals",
            "Renewals of current leases this node acknowledged as the job's owner.",
            leases.get("renewals", 0),
        )
        yield _counter(
            "p2pnode_lease_lapses",
            "Leases this node granted that expired without a renewal (the slot is re-run).",
            leases.get("lapses", 0),
        )
        yield _by_label(
            "p2pnode_handovers",
            "Chain handovers: offers this node made as a stage's owner (offered), "
            "offers it accepted as the next owner (accepted).",
            "role",
            stats.get("handovers", {}),
            HANDOVER_ROLES,
        )
        yield _by_label(
            "p2pnode_frames_rejected",
            "Frames rejected (transport framing, broadcast validation, core decoding), by reason.",
            "reason",
            stats.get("rejected_by_reason", {}),
            REJECT_REASONS,
        )
        yield _by_label(
            "p2pnode_messages_sent",
            "Protocol messages sent, by message type.",
            "type",
            stats.get("sent_by_type", {}),
        )
        yield _by_label(
            "p2pnode_messages_received",
            "Protocol messages received (decoded, not duplicates), by message type.",
            "type",
            stats.get("received_by_type", {}),
        )
        yield self._peers()

    def _peers(self) -> Metric:
        counts = dict.fromkeys(PEER_STATUSES, 0)
        for peer in self.node.peers():
            counts[peer.status] = counts.get(peer.status, 0) + 1
        family = GaugeMetricFamily(
            "p2pnode_peers",
            "Nodes in this node's view (itself included), by status.",
            labels=["status"],
        )
        for status, n in counts.items():
            family.add_metric([status], n)
        return family


def _info(node_id: str) -> Metric:
    from p2pnode.version import package_version  # (reads package metadata)

    family = GaugeMetricFamily(
        "p2pnode_info", "This node: its id and software version.", labels=["node_id", "version"]
    )
    family.add_metric([node_id, package_version()], 1)
    return family


def _jobs(by_kind: Mapping[str, Mapping[str, int]]) -> Metric:
    family = GaugeMetricFamily(
        "p2pnode_jobs",
        "Jobs this node owns, by kind and state (kind \"run\": cron runs, DAG tasks, "
        "chain stages, stream batches).",
        labels=["kind", "state"],
    )
    for kind, by_state in sorted(by_kind.items()):
        for state in JobState:  # every state of a kind seen, zeros included
            family.add_metric([kind, state.value], by_state.get(state.value, 0))
    return family


def _executions(executions: Mapping[str, Any]) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "p2pnode_executions_running",
        "Executions running on this node now.",
        value=executions.get("running", 0),
    )
    total = CounterMetricFamily(
        "p2pnode_executions",
        "Executions this node ran to their end, by executor (engine type) and outcome.",
        labels=["executor", "outcome"],
    )
    for executor, by_outcome in sorted(executions.get("finished", {}).items()):
        for outcome, n in sorted(by_outcome.items()):
            total.add_metric([executor, outcome], n)
    yield total
    durations = HistogramMetricFamily(
        "p2pnode_executor_duration_seconds",
        "How long this node's executions ran, by executor.",
        labels=["executor"],
    )
    for executor, histogram in sorted(executions.get("durations", {}).items()):
        bounds = sorted((float(bound), n) for bound, n in histogram["buckets"].items())
        buckets = [("+Inf" if math.isinf(bound) else repr(bound), n) for bound, n in bounds]
        durations.add_metric([executor], buckets, histogram["sum_s"])
    yield durations


def _counter(name: str, documentation: str, value: int) -> Metric:
    return CounterMetricFamily(name, documentation, value=value)


def _by_label(
    name: str,
    documentation: str,
    label: str,
    counts: Mapping[str, int],
    always: tuple[str, ...] = (),
) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=[label])
    for value in sorted({*always, *counts}):
        family.add_metric([value], counts.get(value, 0))
    return family
