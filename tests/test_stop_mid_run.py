"""Stopping a job while its work runs, for every kind, on the hand-cranked
network: the job ends "stopped", nothing of it runs on, and the stop is not
refused.

Kinds with runs of their own (chain stages, DAG tasks, cron runs, micro
batches) stop their children from inside the stop; a child's end used to
reach its controller, which decided "failed" for the job being stopped, and
the stop then failed on failed --> stopped (found by a sampled mutant of the
chain's stop that no test caught).  See ``OwnerBase.finishing``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from protocols.config import Timings
from protocols.events import CancelJob, SourceBatch, SubmitJob
from tests.protonet import ProtoNet
from tests.test_chain_core import chain_spec
from tests.test_dag_core import dag_spec
from tests.test_kinds import cron_spec, spec
from tests.test_stream_core import micro_spec, stream_spec

FAST = Timings(lease_ttl=3.0, lease_grace=1.0, bid_window=0.2, daemon_scan=2.0)


def _micro(net: ProtoNet) -> None:
    net.feed("a", SubmitJob("j", micro_spec()))
    net.feed("a", SourceBatch("j", "0", "sha256:" + "0" * 64, "1-0", "5-0", 5))


def _submit(doc: dict[str, Any]) -> Callable[[ProtoNet], object]:
    return lambda net: net.feed("a", SubmitJob("j", doc))


KINDS: dict[str, Callable[[ProtoNet], object]] = {
    "batch": _submit(spec("batch", count=2)),
    "ops": _submit(spec("ops")),
    "daemon": _submit(spec("daemon")),
    "service": _submit(spec("service", count=2)),
    "cron": _submit(cron_spec("allow")),
    "dag": _submit(dag_spec({"x": {}, "y": {}, "z": {"depends_on": ["x", "y"]}})),
    "chain, first stage": _submit(chain_spec(3)),
    "stream": _submit(stream_spec(partitions=2)),
    "micro_batch": _micro,
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_stopping_a_job_while_its_work_runs_ends_it_stopped(kind: str) -> None:
    net = ProtoNet(["a", "b", "c"], timings=FAST, owners_only=frozenset("a"))
    net.run_for(1.0)
    KINDS[kind](net)
    net.run_until(lambda: bool(net.running_anywhere()), limit=net.now + 30)
    net.feed("a", CancelJob("j", "stopped by its user"))  # raises if the stop is refused
    net.run_for(FAST.lease_ttl / 3)  # within a lease: the stop ends the work, not a lapse
    assert net.job_state("a", "j") == "stopped"
    assert net.running_anywhere() == []
    owner = net.core("a").owner
    for job in owner.jobs.values():  # the job's runs (children) end too, none "failed"
        assert job.terminal, (job.job_id, job.state)
        assert job.state != "failed", (job.job_id, job.reason)
    # `job history` ends with the stop, and its reason.
    last = owner.history["j"][-1]
    assert (last["event"], last["detail"]) == ("stopped", "stopped by its user"), last
    chain = net.core("a").chain.chains.get("j")
    if chain is not None:  # the chain's own record (what a restart restores) agrees
        assert chain.outcome == "stopped", chain.reason

