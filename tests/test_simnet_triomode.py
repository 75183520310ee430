"""Trio mode: real NodeRuntimes over the simulated network, MockClock."""

from __future__ import annotations

import pytest

from simnet.network import NetConfig
from simnet.workload import batch_spec, sim_task

pytest.importorskip("p2pnode.runtime")
pytest.importorskip("protocols.node")

from simnet.triomode import run_trio_cluster


def _specs() -> list[dict[str, object]]:
    return [
        batch_spec("a", 2, task=sim_task(3000)),
        batch_spec("b", 1, labels={"zone": "b"}, task=sim_task(5000)),
        batch_spec("c", 3, task=sim_task(2000, fail_rate=0.3)),
        batch_spec("hangs", 1, task=sim_task(1000, hang=True, timeout_ms=5000, attempts=2,
                                              backoff_ms=100)),
    ]


def test_five_runtimes_finish_jobs_under_loss() -> None:
    net = NetConfig(loss=0.15, duplicate=0.05, reorder=0.1)
    r = run_trio_cluster(5, 3, _specs(), net=net, limit=600)
    states = r["states"]
    assert states["j000000"] == "completed"
    assert states["j000001"] == "completed"
    assert states["j000002"] in ("completed", "failed")
    assert states["j000003"] == "failed"  # hung twice, killed at its timeout each time
    assert r["double_accepted"] == []
    assert r["delivered"] < r["sent"]  # the loss did happen


def test_trio_mode_is_deterministic_per_seed() -> None:
    net = NetConfig(loss=0.1, reorder=0.1)
    a = run_trio_cluster(5, 9, _specs()[:2], net=net)
    b = run_trio_cluster(5, 9, _specs()[:2], net=net)
    assert a["trace_hash"] == b["trace_hash"]
    assert a["virtual_seconds"] == b["virtual_seconds"]
