"""Issue 14 over real ``p2pnode serve`` processes and real libp2p: any node
answers for a job another peer owns, unique id prefixes, and ``job list``
(filters, submit order across a restart, cron runs not top-level)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from p2pnode.control import ControlError
from tests.realnet import Cluster, ServeNode, cluster

pytestmark = pytest.mark.slow

WAIT = 60.0  # bound of every wait: a guard against hangs, not a performance claim


def _sim(name: str, duration: str = "100ms", exit_code: int = 0, **over: Any) -> dict[str, Any]:
    engine = {"type": "sim", "duration": duration, "exit_code": exit_code}
    task = {"engine": engine, "timeout": "30m", "retry": {"attempts": 1}}
    return {"name": name, "task": task, **over}


def _error(node: ServeNode, op: str, **args: Any) -> ControlError:
    with pytest.raises(ControlError) as refused:
        node.control(op, **args)
    return refused.value


def _submit(node: ServeNode, spec: dict[str, Any]) -> str:
    return str(node.control("submit", spec=spec)["job_id"])


def _settled(c: Cluster, node: ServeNode, job_id: str) -> dict[str, Any]:
    return c.wait_job(
        node, job_id, lambda v: v["state"] in ("completed", "failed"), timeout=WAIT, what="end"
    )


def test_any_node_answers_for_a_job_its_owner_runs_elsewhere(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        owner = c.add("owner", executors="", extra=["--no-compute"])
        owner.wait_ready()
        runner = c.add("runner", executors="sim", bootstrap=[owner.addrs[0]])
        bystander = c.add("bystander", executors="", bootstrap=[owner.addrs[0]])
        runner.wait_ready()
        bystander.wait_ready()
        c.wait_connected([owner, runner, bystander])
        job_id = _submit(owner, _sim("long", duration="10m"))
        c.wait_job(owner, job_id, lambda v: v["state"] == "running", timeout=WAIT, what="running")
        prefix = job_id[:7]

        # The runner learnt the owner from the ask and grant: it forwards a prefix.
        view = runner.describe(prefix)
        assert view["job_id"] == job_id and view["owner"] == owner.node_id
        assert view["slots"][0]["node"] == runner.node_id
        # The bystander saw nothing of the job: it asks its whole view.
        assert bystander.describe(job_id)["owner"] == owner.node_id
        # Through the CLI, as a user types it: describe and executions.
        shown = bystander.cli("job", "describe", prefix, "-o", "json")
        assert shown.returncode == 0 and shown.json()["job_id"] == job_id, shown.explain()
        listed = runner.cli("job", "executions", prefix)
        assert listed.returncode == 0 and f"{job_id}/0/1" in listed.stdout, listed.explain()

        # Stop: only from the node that submitted the job (which owns it).
        refused = _error(bystander, "cancel", job_id=prefix)
        assert refused.code == "refused", refused
        assert str(refused) == (
            f"job {prefix} is owned by {owner.node_id}: only the node that submitted it can stop it"
        )
        assert owner.describe(job_id)["state"] == "running"
        # Operations that are neither read-only nor a stop name the owner.
        elsewhere = _error(runner, "wait", job_id=prefix, timeout=1)
        assert (elsewhere.code, str(elsewhere)) == (
            "refused",
            f"job {prefix} is owned by {owner.node_id}: wait works on that node only",
        )

        # Unknown ids and prefixes of several jobs.
        unknown = _error(bystander, "describe", job_id="j-0000nothing")
        assert (unknown.code, str(unknown)) == ("not_found", "no such job: j-0000nothing")
        second = _submit(owner, _sim("other", duration="10m"))
        shared = job_id[: next(i for i in range(3, 19) if job_id[:i] != second[:i]) - 1]
        ambiguous = _error(owner, "describe", job_id=shared)
        assert ambiguous.code == "ambiguous" and {job_id, second} <= set(
            str(ambiguous).split(": ", 1)[1].split(", ")
        ), ambiguous
        cli = owner.cli("job", "describe", shared)
        assert cli.returncode == 5 and "names several jobs" in cli.stderr, cli.explain()

        # The owner is gone: the runner knows whose the job is, and says so.
        owner.kill()
        gone = _error(runner, "describe", job_id=job_id)
        assert gone.code == "unreachable", gone
        assert str(gone) == f"job {job_id} is owned by {owner.node_id}, not reachable"
        cli = runner.cli("job", "describe", prefix)
        assert cli.returncode == 5, cli.explain()
        assert f"job {prefix} is owned by {owner.node_id}, not reachable" in cli.stderr
        # So does the bystander: it learnt the owner from the owner's answer.
        assert _error(bystander, "describe", job_id=job_id).code == "unreachable"


def test_job_list_filters_order_across_a_restart_and_cron_runs(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        node = c.add("solo", executors="sim")
        node.wait_ready()
        ids = [_submit(node, _sim("alpha-1"))]
        ids.append(_submit(node, _sim("beta", exit_code=3)))
        time.sleep(0.05)  # (wall ms: "since" below falls between two submits)
        since = int(time.time() * 1000)
        ids.append(_submit(node, _sim("alpha-2", exit_code=3)))
        cron = _submit(node, {**_sim("tick"), "type": "cron", "schedule": {"every": "1s"}})
        ids.append(cron)
        for job_id in ids[:3]:
            _settled(c, node, job_id)
        c.wait_until(
            lambda: len(node.control("runs", job_id=cron)) >= 3, timeout=WAIT, what="cron runs"
        )
        node.control("suspend", job_id=cron[:8])  # a prefix works for every job command

        def listing(**filters: Any) -> list[str]:
            return [row["job_id"] for row in node.control("jobs", **filters)]

        def check_listing() -> None:
            assert listing() == ids  # submit order; no cron run among the rows
            runs = [row["run_id"] for row in node.control("runs", job_id=cron) if row["run_id"]]
            assert len(runs) >= 3 and set(runs) <= set(listing(runs=True))
            assert listing(state="failed") == [ids[1], ids[2]]
            assert listing(state=["completed", "suspended"]) == [ids[0], cron]
            assert listing(type="cron") == [cron]
            assert listing(name="alpha") == [ids[0], ids[2]]
            assert listing(limit=2) == [ids[2], cron]
            assert listing(state="failed", limit=1) == [ids[2]]
            assert listing(since=since) == [ids[2], cron]

        check_listing()
        node.terminate()
        node.start()
        node.wait_ready()
        check_listing()  # the same rows in the same order after a restart

        shown = node.cli("job", "list", "--state", "failed", "--limit", "5", "-o", "json")
        assert shown.returncode == 0, shown.explain()
        assert [row["job_id"] for row in shown.json()["items"]] == [ids[1], ids[2]]
        recent = node.cli("job", "list", "--since", "1h", "--name", "alpha", "-o", "json")
        assert [row["job_id"] for row in recent.json()["items"]] == [ids[0], ids[2]]
        iso = node.cli("job", "list", "--since", "2100-01-01T00:00:00Z", "-o", "json")
        assert iso.returncode == 0 and iso.json()["items"] == [], iso.explain()
        bad = node.cli("job", "list", "--since", "yesterday")
        assert bad.returncode == 2 and "neither a duration" in bad.stderr, bad.explain()
        bad = node.cli("job", "list", "--state", "done", "--limit", "0")
        assert bad.returncode == 2 and "'done' is not one of" in bad.stderr, bad.explain()
        bad_request = _error(node, "jobs", limit=0)
        assert bad_request.code == "bad_request" and "limit" in str(bad_request)
