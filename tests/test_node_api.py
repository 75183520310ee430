"""The library API's waiting and error paths, on one real node."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2pnode import NodeSettings, open_node
from protocols.spec import SpecValidationError

LONG_SIM_JOB = {
    "name": "long",
    "task": {"engine": {"type": "sim", "duration": "30s"}, "timeout": "1m"},
}


async def test_wait_times_out_then_cancel_stops_the_job(tmp_path: Path) -> None:
    async with open_node(NodeSettings(data_dir=tmp_path / "n", executors=("sim",))) as node:
        job_id = await node.submit(LONG_SIM_JOB)
        with pytest.raises(TimeoutError, match=job_id):
            await node.wait(job_id, timeout=0.5)
        await node.cancel(job_id)
        view = await node.wait(job_id, timeout=10)
        assert view["state"] == "stopped"


async def test_invalid_spec_lists_every_error(tmp_path: Path) -> None:
    async with open_node(NodeSettings(data_dir=tmp_path / "n")) as node:
        with pytest.raises(SpecValidationError) as info:
            await node.submit({"name": "Bad Name", "count": 0, "task": {"timeout": "soon"}})
        paths = {e.path for e in info.value.errors}
        assert {"name", "count", "task.timeout"} <= paths
        assert node.jobs() == []
