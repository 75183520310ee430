"""The simulated micro-batch connector (stream jobs in micro-batch mode).

Every ``POLL`` seconds it reads the non-busy rows of ``stream.sources()``
on the nodes owning a micro-batch job and, when at least ``max_entries``
entries of the job's source (:mod:`simnet.sources`) are available after the
row's position, or some are and the oldest has waited ``max_wait``, hands the
core ``SourceBatch(first=pos+1, last=pos+count)`` with a content id derived
from (job, partition, first, last).  The connector
lives in the owner's process: a crash resets its wait timers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from protocols.events import SourceBatch
from simnet.sources import SimSource, batch_manifest, position, source_of_spec
from simnet.view import ClusterView

POLL = 0.25  # connector poll period, virtual seconds


class SimConnector:
    """The micro-batch connector of every node owning a micro-batch job."""

    def __init__(self, cluster: ClusterView, on_batch: Callable[..., None] | None = None) -> None:
        self.cluster = cluster
        self.sources: dict[str, SimSource] = {}  # micro-batch job -> its source
        self.waiting: dict[tuple[str, str, str], float] = {}  # (node, job, part) -> since
        self.batches = 0
        self.on_batch = on_batch
        self._running = False

    def register(self, job_id: str, spec: Mapping[str, Any]) -> None:
        self.sources[job_id] = source_of_spec(spec)
        if not self._running:
            self._running = True
            self.cluster.at(self.cluster.now + POLL, self._poll)

    def forget_node(self, node: str) -> None:
        for key in [k for k in self.waiting if k[0] == node]:
            del self.waiting[key]

    def _poll(self) -> None:
        c = self.cluster
        owners = sorted({c.owner_of(j) or "" for j in self.sources} - {""})
        for node in owners:
            if c.is_up(node) and not c.engine.is_paused(c.idx(node)):  # frozen with its node
                self._read(node)
        c.at(c.now + POLL, self._poll)

    def _read(self, node: str) -> None:
        c = self.cluster
        core = c.core(node)
        now = c.now
        for row in core.stream.sources():
            job, part = row["job_id"], row["partition"]
            source = self.sources.get(job)
            if source is None or row["busy"]:
                continue
            pos = position(row["position"])
            if pos is None:
                continue
            avail = source.available(now) - pos
            key = (node, job, part)
            if avail <= 0:
                self.waiting.pop(key, None)
                continue
            since = self.waiting.setdefault(key, now)
            if avail < row["max_entries"] and now - since < row["max_wait_ms"] / 1000.0:
                continue
            count = min(avail, row["max_entries"])
            first, last = pos + 1, pos + count
            del self.waiting[key]
            self.batches += 1
            event = SourceBatch(job, part, batch_manifest(job, part, first, last),
                                str(first), str(last), count)
            if self.on_batch is not None:
                self.on_batch(node, event, now)
            c.engine.deliver_now(c.idx(node), event)
            if not c.is_up(node) or c.engine.halted is not None:
                return
