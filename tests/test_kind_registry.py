"""Kinds are plug-ins: the owner dispatches through the registry and names no kind.

Static checks (imports, owner tables) on the source, each shown to fire on a
planted line; and a new kind added with one policy row and one controller,
without touching the owner.
"""

from __future__ import annotations

import ast
import random
from pathlib import Path
from typing import Any

import pytest

from protocols import kinds as kinds_module
from protocols.config import NodeConfig
from protocols.directory import Directory
from protocols.errors import LocalProtocolError
from protocols.events import Notify
from protocols.kinds import (
    KIND_POLICY,
    EndRule,
    KindController,
    KindPolicy,
    KindRegistry,
    OnExit,
    SlotSource,
)
from protocols.messages import NodeInfo
from protocols.node import NodeCore
from protocols.outbox import Outbox
from protocols.owned import OwnedJob
from protocols.owner import Owner
from protocols.spec.model import JOB_TYPES
from tests.protonet import batch_spec

ROOT = Path(__file__).resolve().parent.parent / "protocols"
CONTROLLERS = ("protocols.cron", "protocols.stream", "protocols.dag", "protocols.chain")
OWNER_TABLE_WRITES = ('persist("jobs"', 'persist("slots"', "persist('jobs'", "persist('slots'")


def imported(source: str) -> set[str]:
    """Every module a source imports, TYPE_CHECKING blocks and function bodies included."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def owner_violations(source: str) -> list[str]:
    return sorted(m for m in imported(source) if m.startswith(CONTROLLERS))


def controller_violations(source: str) -> list[str]:
    bad = [m for m in imported(source) if m.split(".")[:2] == ["protocols", "owner"]]
    bad += [w for w in OWNER_TABLE_WRITES if w in source]
    bad += ["job.state =" for line in source.splitlines() if ".state = " in line
            and ("job.state" in line or "parent.state" in line)]
    return sorted(bad)


def test_the_owner_imports_no_kind_controller() -> None:
    files = sorted((ROOT / "owner").glob("*.py"))
    assert len(files) >= 5
    for path in files:
        assert owner_violations(path.read_text()) == [], path


def test_controllers_reach_the_owner_only_through_its_context() -> None:
    for name in ("cron", "stream", "dag", "chain"):
        path = ROOT / f"{name}.py"
        assert controller_violations(path.read_text()) == [], path


def test_the_checks_fire_on_planted_lines() -> None:
    assert owner_violations("if TYPE_CHECKING:\n    from protocols.cron import X\n") == [
        "protocols.cron"
    ]
    assert owner_violations("def f():\n    import protocols.chain\n") == ["protocols.chain"]
    planted = (
        "from protocols.owner import Owner\n"
        "def f(parent):\n"
        "    parent.state = 'failed'\n"
        "    out.persist(\"jobs\", parent.job_id, parent.record())\n"
    )
    assert controller_violations(planted) == [
        "job.state =", 'persist("jobs"', "protocols.owner"
    ]


def test_every_kind_has_a_policy_and_its_controller() -> None:
    assert set(JOB_TYPES) | {"run"} == set(KIND_POLICY)
    core = NodeCore(NodeConfig(node_id="a"), seed=0)
    needs = [k for k, p in KIND_POLICY.items()
             if p.end is EndRule.CONTROLLER or p.slots in (SlotSource.CONTROLLER, SlotSource.NONE)]
    assert needs and all(kind in core.owner.kinds for kind in needs)


class ToyController(KindController):
    """A kind added from outside: it runs nothing and completes at once."""

    describe_key = "toy"

    def start(self, job: OwnedJob) -> None:
        self.ctx.set_job_state(job, "running", persist=False, notify=True)
        self.ctx.set_terminal(job, "completed", "")

    def describe(self, job: OwnedJob) -> Any:
        return {"hello": job.job_id}


def test_a_new_kind_is_one_policy_row_and_one_controller(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(
        kinds_module.KIND_POLICY, "toy",
        KindPolicy(SlotSource.NONE, OnExit.RETRY, False, EndRule.CONTROLLER),
    )
    config = NodeConfig(node_id="a")
    out = Outbox("a", 1, config.timings)
    rng = random.Random(0)
    owner = Owner(config, out, Directory(NodeInfo(node_id="a"), 8, rng), rng)
    owner.install(KindRegistry(owner, {"toy": ToyController(owner)}))
    out.begin(0.0)
    spec = owner._canonical("t1", batch_spec())
    owner.create_job("t1", spec, kind="toy")
    notes = [a for a in out.drain() if isinstance(a, Notify)]
    states = [n.data["state"] for n in notes if n.kind == "job_state"]
    assert states == ["queued", "running", "completed"]
    described = owner.describe("t1")
    assert described["type"] == "toy" and described["toy"] == {"hello": "t1"}
    with pytest.raises(LocalProtocolError, match="only daemon, service and cron jobs change"):
        owner.update("t1", spec)
