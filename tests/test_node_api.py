"""The library API's waiting and error paths, on one real node."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pnode import (
    NodeSettings,
    NotFoundError,
    RefusedError,
    SettingsError,
    SpecError,
    WaitTimeoutError,
    open_node,
)
from p2pnode.timefmt import iso_utc

LONG_SIM_JOB = {
    "name": "long",
    "task": {"engine": {"type": "sim", "duration": "30s"}, "timeout": "1m"},
}


async def test_wait_times_out_then_cancel_stops_the_job(tmp_path: Path) -> None:
    async with open_node(NodeSettings(data_dir=tmp_path / "n", executors=("sim",))) as node:
        job_id = await node.submit(LONG_SIM_JOB)
        with pytest.raises(WaitTimeoutError, match=job_id):
            await node.wait(job_id, timeout=0.5)
        await node.cancel(job_id)
        view = await node.wait(job_id, timeout=10)
        assert view["state"] == "stopped"


async def test_invalid_spec_lists_every_error(tmp_path: Path) -> None:
    async with open_node(NodeSettings(data_dir=tmp_path / "n")) as node:
        with pytest.raises(SpecError) as info:
            await node.submit({"name": "Bad Name", "count": 0, "task": {"timeout": "soon"}})
        paths = {e.path for e in info.value.errors}
        assert {"name", "count", "task.timeout"} <= paths
        assert node.jobs() == []


# --- update, suspend, resume, runs ------------------------------------------------------

SIM_TASK: dict[str, Any] = {"engine": {"type": "sim", "duration": "100ms"}, "timeout": "10s"}
CRON_JOB = {"name": "tick", "type": "cron", "schedule": {"every": "1s"}, "task": SIM_TASK}
DAEMON_JOB: dict[str, Any] = {
    "name": "agent",
    "type": "daemon",
    "task": {"engine": {"type": "sim", "duration": "5m"}, "timeout": "10m"},
}


async def test_update_suspend_resume_runs_refuse_what_they_cannot_change(tmp_path: Path) -> None:
    async with open_node(NodeSettings(data_dir=tmp_path / "n", executors=("sim",))) as node:
        batch = await node.submit({"name": "once", "task": SIM_TASK})
        daemon = await node.submit(DAEMON_JOB)

        # Unknown job: every call names it.
        with pytest.raises(NotFoundError, match="j-unknown"):
            await node.update("j-unknown", CRON_JOB)
        with pytest.raises(NotFoundError, match="j-unknown"):
            await node.suspend("j-unknown")
        with pytest.raises(NotFoundError, match="j-unknown"):
            await node.resume("j-unknown")
        with pytest.raises(NotFoundError, match="j-unknown"):
            node.runs("j-unknown")

        # A batch job has one version, no schedule and no runs.
        with pytest.raises(RefusedError, match="batch job; only daemon, service and cron"):
            await node.update(batch, {"name": "once", "task": SIM_TASK})
        with pytest.raises(RefusedError, match="batch job"):
            await node.suspend(batch)
        with pytest.raises(RefusedError, match="not a cron job"):
            node.runs(batch)

        # A daemon updates, but neither changes type nor suspends.
        with pytest.raises(RefusedError, match="only cron jobs suspend"):
            await node.suspend(daemon)
        with pytest.raises(RefusedError, match="cannot make it 'service'"):
            await node.update(daemon, {**DAEMON_JOB, "type": "service"})

        # An invalid spec: every error, before the node is asked.
        with pytest.raises(SpecError) as info:
            await node.update(daemon, {"name": "Bad", "type": "daemon", "task": {"timeout": "x"}})
        assert {"name", "task.engine", "task.timeout"} <= {e.path for e in info.value.errors}
        assert node.describe(daemon)["version"] == 1

        new = {**DAEMON_JOB, "task": {**DAEMON_JOB["task"], "env": {"V": "2"}}}
        assert await node.update(daemon, new) == 2
        assert await node.update(daemon, new) == 3
        assert node.describe(daemon)["version"] == 3

        # A stopped job is terminal: no more versions.
        await node.cancel(daemon)
        with pytest.raises(RefusedError, match="stopped"):
            await node.update(daemon, new)


async def test_cron_suspend_resume_update_and_runs(tmp_path: Path) -> None:
    async with open_node(NodeSettings(data_dir=tmp_path / "n", executors=("sim",))) as node:
        cron = await node.submit(CRON_JOB)
        view = node.describe(cron)
        assert view["type"] == "cron" and view["state"] == "scheduled"
        assert view["schedule"]["overlap"] == "skip" and not view["schedule"]["suspended"]

        await node.suspend(cron)
        assert node.describe(cron)["state"] == "suspended"
        assert node.describe(cron)["schedule"]["suspended"] is True
        await node.suspend(cron)  # idempotent
        await node.resume(cron)
        assert node.describe(cron)["state"] == "scheduled"
        assert await node.update(cron, {**CRON_JOB, "name": "tock"}) == 2

        with trio.fail_after(20):
            while not any(r["outcome"] == "completed" for r in node.runs(cron)):
                await trio.sleep(0.1)
        runs = node.runs(cron)
        assert len({r["scheduled_ms"] for r in runs}) == len(runs)
        done = next(r for r in runs if r["outcome"] == "completed")
        assert done["run_id"] == f"{cron}@{done['scheduled_ms']}"
        assert done["version"] == 2
        assert done["scheduled"] == iso_utc(done["scheduled_ms"])
        assert done["scheduled"].endswith("Z") and done["scheduled_ms"] % 1000 == 0
        assert [e["state"] for e in done["executions"]] == ["succeeded"]
        assert done["executions"][0]["node"] == node.node_id
        run_view = node.describe(done["run_id"])
        assert run_view["parent"] == cron and run_view["state"] == "completed"
        assert run_view["scheduled_ms"] == done["scheduled_ms"]


def test_iso_utc() -> None:
    assert iso_utc(1_700_000_000_000) == "2023-11-14T22:13:20.000Z"
    assert iso_utc(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"


# --- idempotent submit --------------------------------------------------------------------

ONCE = {"name": "once", "task": SIM_TASK}


async def test_the_same_idempotency_key_makes_one_job_across_a_restart(tmp_path: Path) -> None:
    settings = NodeSettings(data_dir=tmp_path / "n", executors=("sim",))
    async with open_node(settings) as node:
        first = await node.submit(ONCE, idempotency_key="k1")
        assert await node.submit(ONCE, idempotency_key="k1") == first
        async with trio.open_nursery() as nursery:  # concurrent retries of one submit
            for _ in range(3):
                nursery.start_soon(functools.partial(node.submit, ONCE, idempotency_key="k2"))
        other = await node.submit(ONCE, idempotency_key="k3")
        assert other != first and first.startswith("j-") and len(first) == len(other)
        assert len(node.jobs()) == 3
    async with open_node(settings) as node:  # restarted on the same SQLite file
        assert await node.submit(ONCE, idempotency_key="k1") == first
        assert await node.submit("name: once\ntask: {engine: {type: sim, duration: 100ms}, "
                                 "timeout: 10s}\n", idempotency_key="k1") == first
        used = r"'k1' was already used for job j-\w+ with another spec"
        with pytest.raises(RefusedError, match=used):
            await node.submit({**ONCE, "count": 2}, idempotency_key="k1")
        assert sorted(j["job_id"] for j in node.jobs()) == sorted(
            {first, other, await node.submit(ONCE, idempotency_key="k2")}
        )


async def test_an_updated_keyed_job_is_still_found_by_its_key(tmp_path: Path) -> None:
    async with open_node(NodeSettings(data_dir=tmp_path / "n", executors=("sim",))) as node:
        cron = await node.submit(CRON_JOB, idempotency_key="tick")
        await node.update(cron, {**CRON_JOB, "schedule": {"every": "2s"}})
        assert await node.submit(CRON_JOB, idempotency_key="tick") == cron
        assert len(node.jobs()) == 1


async def test_bad_idempotency_keys_are_refused(tmp_path: Path) -> None:
    async with open_node(NodeSettings(data_dir=tmp_path / "n")) as node:
        for bad in ("", "x" * 201, 7):
            with pytest.raises(SettingsError, match="idempotency_key must be"):
                await node.submit(ONCE, idempotency_key=bad)  # type: ignore[arg-type]
        with pytest.raises(SettingsError, match="not both"):
            await node.submit(ONCE, job_id="j-mine", idempotency_key="k")
        assert node.jobs() == []
