"""Reasons people read: sizes in human units, and a hint at ``--executors``
when no node in view enables the executor a job names (pure core, ProtoNet)."""

from __future__ import annotations

import pytest

from protocols.units import human_duration, human_size
from tests.protonet import ProtoNet, batch_spec, sim_task
from tests.test_machines import IDS, submitted


@pytest.mark.parametrize(
    ("size", "shown"),
    [(0, "0B"), (100, "100B"), (1024, "1KiB"), (256 * 2**20, "256MiB"),
     (3 * 2**30 + 1, "3.0GiB"), (1536 * 2**20, "1.5GiB"), (5 * 2**40, "5TiB")],
)  # fmt: skip
def test_human_size(size: int, shown: str) -> None:
    assert human_size(size) == shown


def failed_reason(spec: dict[str, object]) -> str:
    net = ProtoNet(IDS)
    submitted(net, spec)
    net.run_until(lambda: net.job_state("a", "j1") == "failed", limit=60)
    return str(net.core("a").describe("j1")["reason"])


def test_an_executor_no_node_enables_is_named_with_the_flag() -> None:
    task = sim_task()
    task["engine"] = {"type": "docker", "image": "alpine:3"}
    reason = failed_reason({**batch_spec(), "task": task})
    assert "no node matches the constraints (" in reason
    assert "memory 256MiB" in reason and "268435456" not in reason
    assert "no node in view has the executor 'docker'" in reason
    assert "p2pnode serve --executors docker" in reason


def test_no_hint_when_the_executor_runs_but_labels_do_not_match() -> None:
    reason = failed_reason(batch_spec(labels={"zone": "mars"}))
    assert "no node matches" in reason and "mars" in reason and "memory 256MiB" in reason
    assert "--executors" not in reason


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(300, "5m"), (90, "1m30s"), (0.5, "500ms"), (3600, "1h"), (0, "0s"), (86400 * 2, "2d")],
)
def test_human_duration(seconds: float, shown: str) -> None:
    assert human_duration(seconds) == shown
