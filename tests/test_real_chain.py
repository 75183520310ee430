"""Chains and DAGs over real libp2p: ``serve`` processes, the process
executor, inputs fetched by content id between nodes, handovers signed with
the nodes' libp2p keys, SIGKILL mid-handover and after a commit."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.realnet import Cluster, ServeNode, cluster, is_terminal, pids_with_env

pytestmark = pytest.mark.slow

TTL = 2.0


def stage(i: int, sleep: float = 0) -> dict[str, Any]:
    """Stage i: the previous stage's out.txt plus one line naming itself."""
    body = f'{{ cat "$P2PNODE_INPUTS"/*/out.txt 2>/dev/null; echo st{i}; }}'
    script = f'{body} > "$P2PNODE_OUTPUTS/out.txt"' + (f"; sleep {sleep}" if sleep else "")
    return {
        "name": f"st{i}",
        "task": {
            "engine": {"type": "process", "command": ["sh", "-c", script]},
            "timeout": "1m",
            "retry": {"attempts": 3, "backoff": "1s"},
        },
    }


def chain_spec(stages: int, slow_stage: int = -1, sleep: float = 0) -> dict[str, Any]:
    return {
        "name": "etl",
        "type": "chain",
        "stages": [stage(i, sleep if i == slow_stage else 0) for i in range(stages)],
    }


EXPECTED = "".join(f"st{i}\n" for i in range(5))


def _nodes(
    c: Cluster, names: list[str], *, first_extra: list[str] | None = None
) -> list[ServeNode]:
    first = c.add(names[0], lease_ttl=TTL, extra=first_extra or [])
    first.wait_ready()
    rest = [c.add(n, lease_ttl=TTL, bootstrap=[first.addrs[0]]) for n in names[1:]]
    for node in rest:
        node.wait_ready()
    c.wait_connected([first, *rest])
    return [first, *rest]


def _final_bytes(node: ServeNode, job_id: str, out: Path) -> str:
    got = node.cli("job", "get", job_id, "--output-dir", out)
    assert got.returncode == 0, got.explain()
    return (out / "out.txt").read_text()


def _chain(view: dict[str, Any]) -> dict[str, Any]:
    chain: dict[str, Any] = view["chain"]
    return chain


def test_five_stage_chain_across_five_processes(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        nodes = _nodes(c, ["a", "b", "c", "d", "e"], first_extra=["--no-compute"])
        owner = nodes[0]
        job_id = owner.control("submit", spec=chain_spec(5))["job_id"]
        view = c.wait_job(owner, job_id, is_terminal, timeout=120, what="the chain to end")
        assert view["state"] == "completed", view
        log = _chain(view)
        assert log["log_verified"] == "ok", log
        handovers = [r for r in log["records"] if r["kind"] == "handover"]
        assert len(handovers) == 4
        assert all(set(r["signed_by"]) == {r["from"], r["to"]} for r in handovers)
        # Ownership really moved between processes (the submitter runs nothing).
        assert len({r["to"] for r in handovers}) >= 2
        assert owner.node_id not in {r["to"] for r in handovers}
        assert _final_bytes(owner, job_id, tmp_path / "out") == EXPECTED
        table = owner.cli("job", "describe", job_id)
        assert table.returncode == 0, table.explain()
        assert "log:    ok" in table.stdout and table.stdout.count("handover") == 4
        # A node that owned a stage shows the chain (and checks the log) too.
        stage_owner = next(n for n in nodes[1:] if n.node_id == handovers[-1]["to"])
        remote = stage_owner.cli("job", "describe", job_id)
        assert remote.returncode == 0 and "log:    ok" in remote.stdout, remote.explain()


def test_job_stop_of_a_chain_in_its_first_stage(tmp_path: Path) -> None:
    """``job stop`` while stage 0 runs, whose run the submitter owns: the
    chain ends "stopped", the stage's task is gone, and the node goes on.
    (The core once ended the chain "failed" from inside the stop, then
    refused the stop itself: failed --> stopped is no transition.)"""
    with cluster(tmp_path) as c:
        owner, _ = _nodes(c, ["a", "b"], first_extra=["--no-compute"])
        spec = chain_spec(2, slow_stage=0, sleep=60)
        spec["stages"][0]["task"]["env"] = {"STOP_TEST": "stage0"}
        job_id = owner.control("submit", spec=spec)["job_id"]
        c.wait_until(lambda: pids_with_env("STOP_TEST=stage0"), timeout=60, what="stage 0's task")
        stopped = owner.cli("job", "stop", job_id)
        assert stopped.returncode == 0, stopped.explain()
        view = c.wait_job(owner, job_id, is_terminal, timeout=30, what="the chain to end")
        assert view["state"] == "stopped", view
        c.wait_until(lambda: not pids_with_env("STOP_TEST=stage0"), timeout=20,
                     what="stage 0's task gone")
        again = owner.control("submit", spec=chain_spec(2))["job_id"]
        view = c.wait_job(owner, again, is_terminal, timeout=60, what="a second chain to end")
        assert view["state"] == "completed", view


def test_sigkill_of_the_next_owner_mid_handover(tmp_path: Path) -> None:
    """The only compute node runs stage 0 but never answers the offer of stage
    1 (it drops handover offers); it is SIGKILLed mid-handover.  The submitter,
    still accountable, re-runs stage 0 on the nodes started meanwhile."""
    with cluster(tmp_path) as c:
        owner, trap = _nodes(c, ["a", "t"], first_extra=["--no-compute"])
        c.nodes["t"].terminate()
        trap = c.add(
            "t", lease_ttl=TTL, bootstrap=[owner.addrs[0]], extra=["--fault-drop", "handover_offer"]
        )
        trap.wait_ready()
        c.wait_connected([owner, trap])
        job_id = owner.control("submit", spec=chain_spec(5))["job_id"]

        def offered() -> bool:
            events = owner.control("describe", job_id=job_id)
            runs = [r for r in events["chain"]["records"]]
            return bool(runs) and trap.node_id in _stage0_holders(owner, job_id)

        c.wait_until(offered, timeout=60, what="stage 0 to finish on the trap node")
        trap.signal(signal.SIGKILL)
        trap.wait_exit()
        more = [c.add(n, lease_ttl=TTL, bootstrap=[owner.addrs[0]]) for n in ("u", "v")]
        for node in more:
            node.wait_ready()
        view = c.wait_job(owner, job_id, is_terminal, timeout=120, what="the chain to end")
        assert view["state"] == "completed", view
        log = _chain(view)
        assert log["log_verified"] == "ok"
        assert trap.node_id not in {r["to"] for r in log["records"]}
        assert _final_bytes(owner, job_id, tmp_path / "out") == EXPECTED


def _stage0_holders(owner: ServeNode, job_id: str) -> set[str]:
    holders = set()
    for job in owner.control("jobs"):
        jid = job["job_id"] if isinstance(job, dict) else job
        if str(jid).startswith(f"{job_id}~s0~"):
            view = owner.describe(str(jid))
            holders |= {
                e["node"]
                for s in view["slots"]
                for e in s["executions"]
                if e["state"] == "succeeded"
            }
    return holders


def test_sigkill_of_the_current_owner_after_commit(tmp_path: Path) -> None:
    """Stage 2 runs long; its owner (not the submitter) is SIGKILLed after the
    commit.  The submitter takes the chain over and it still completes."""
    with cluster(tmp_path) as c:
        nodes = _nodes(c, ["a", "b", "c", "d", "e"], first_extra=["--no-compute"])
        owner = nodes[0]
        job_id = owner.control("submit", spec=chain_spec(5, slow_stage=2, sleep=8))["job_id"]

        def stage2_owner() -> ServeNode | None:
            for node in nodes[1:]:
                try:
                    view = node.describe(job_id)
                except Exception:
                    continue
                chain = view.get("chain") or {}
                if chain.get("role") == "owner" and chain.get("stage") == "st2":
                    return node
            return None

        victim = c.wait_until(stage2_owner, timeout=60, what="a remote owner of stage st2")
        victim.signal(signal.SIGKILL)
        victim.wait_exit()
        view = c.wait_job(owner, job_id, is_terminal, timeout=150, what="the chain to end")
        assert view["state"] == "completed", view
        log = _chain(view)
        assert log["log_verified"] == "ok"
        takeovers = [r for r in log["records"] if r["kind"] == "takeover"]
        assert takeovers and takeovers[0]["from"] == victim.node_id
        assert _final_bytes(owner, job_id, tmp_path / "out") == EXPECTED


def test_a_paused_owner_wakes_superseded_after_a_takeover(tmp_path: Path) -> None:
    """Stage 2 runs long; its owner is paused (SIGSTOP) after the commit, not
    killed: its process, connections and timers survive, frozen.  The
    submitter takes the chain over and it completes; the woken owner, every
    timer overdue and frames queued, learns that it was superseded, and
    nothing it does forks the log."""
    view, victim, final = _pause_a_stage_owner(tmp_path, takeover_within=60)
    assert view["state"] == "completed", view
    log = _chain(view)
    assert log["log_verified"] == "ok"
    takeovers = [r for r in log["records"] if r["kind"] == "takeover"]
    assert takeovers[0]["from"] == victim.node_id
    assert final == EXPECTED


# Planted in the serve processes (a sitecustomize module on their PYTHONPATH):
# a submitter that never takes over from a silent owner.
NO_TAKEOVER = """\
from protocols.chain import ChainController

ChainController.on_watch_timer = lambda self, job_id: None
"""


def test_planted_submitter_that_never_takes_over_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(NO_TAKEOVER)
    monkeypatch.setenv("PYTHONPATH", f"{plant}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    # A takeover comes ttl + grace (2.5 s) after the owner's last report.
    with pytest.raises(AssertionError, match="takeover"):
        _pause_a_stage_owner(tmp_path / "run", takeover_within=10)


def _pause_a_stage_owner(
    tmp_path: Path, takeover_within: float
) -> tuple[dict[str, Any], ServeNode, str]:
    with cluster(tmp_path) as c:
        nodes = _nodes(c, ["a", "b", "c", "d", "e"], first_extra=["--no-compute"])
        owner = nodes[0]
        job_id = owner.control("submit", spec=chain_spec(5, slow_stage=2, sleep=8))["job_id"]
        victim = c.wait_until(
            lambda: _owner_of(nodes[1:], job_id, "st2"), timeout=60, what="a remote owner of st2"
        )
        victim.signal(signal.SIGSTOP)
        try:
            c.wait_job(
                owner,
                job_id,
                lambda v: any(r["kind"] == "takeover" for r in _chain(v)["records"]),
                timeout=takeover_within,
                what="the submitter's takeover from the paused owner",
            )
        finally:
            victim.signal(signal.SIGCONT)
        view = c.wait_job(owner, job_id, is_terminal, timeout=150, what="the chain to end")
        c.wait_until(
            lambda: _role(victim, job_id) != "owner",
            timeout=30,
            what="the woken owner to know it was superseded",
        )
        assert victim.running
        return view, victim, _final_bytes(owner, job_id, tmp_path / "out")


def _owner_of(nodes: list[ServeNode], job_id: str, stage: str) -> ServeNode | None:
    return next((n for n in nodes if _role(n, job_id, stage) == "owner"), None)


def _role(node: ServeNode, job_id: str, stage: str | None = None) -> str | None:
    """The chain role ``node`` says it has for ``job_id`` (at ``stage``, if given)."""
    try:
        chain = node.describe(job_id).get("chain") or {}
    except Exception:  # not known there (yet), or the node is paused
        return None
    if stage is not None and chain.get("stage") != stage:
        return None
    role = chain.get("role")
    return str(role) if role is not None else None


DAG_SPEC = {
    "name": "fan",
    "type": "dag",
    "tasks": {
        "split": {
            "engine": {
                "type": "process",
                "command": ["sh", "-c", 'seq 1 20 > "$P2PNODE_OUTPUTS/items.txt"'],
            },
            "timeout": "30s",
        },
        "work": {
            "engine": {
                "type": "process",
                "command": ["sh", "-c", 'echo "$((ITEM * ITEM))" > "$P2PNODE_OUTPUTS/sq.txt"'],
            },
            "depends_on": ["split"],
            "map": {"over": "split", "as": "item"},
            "timeout": "30s",
        },
        "reduce": {
            "engine": {
                "type": "process",
                "command": [
                    "sh",
                    "-c",
                    'cat "$P2PNODE_INPUTS"/work/*/sq.txt | sort -n > "$P2PNODE_OUTPUTS/all.txt"',
                ],
            },
            "depends_on": ["work"],
            "timeout": "30s",
        },
    },
}


def test_dag_fan_out_of_20_and_fan_in_over_three_processes(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        owner, *_ = _nodes(c, ["a", "b", "c"])
        job_id = owner.control("submit", spec=DAG_SPEC)["job_id"]
        view = c.wait_job(owner, job_id, is_terminal, timeout=120, what="the DAG to end")
        assert view["state"] == "completed", view
        tasks = {t["task"]: t for t in view["tasks"]}
        assert len(tasks["work"]["runs"]) == 20
        holders = {
            e["node"]
            for r in tasks["work"]["runs"]
            for e in r["executions"]
            if e["state"] == "succeeded"
        }
        assert len(holders) >= 2, holders
        out = tmp_path / "out"
        got = owner.cli("job", "get", job_id, "--output-dir", out)
        assert got.returncode == 0, got.explain()
        squares = (out / "reduce" / "all.txt").read_text().split()
        assert squares == [str(i * i) for i in range(1, 21)]
        table = owner.cli("job", "describe", job_id)
        assert table.returncode == 0, table.explain()
        assert all(name in table.stdout for name in ("split", "work", "reduce"))
