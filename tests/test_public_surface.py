"""The library's public surface: one error tree, typed views, fetch_outputs.

Real nodes on loopback (and the real control socket) wherever a node is involved.
"""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import socket
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

import p2pnode
from p2pnode import (
    FetchError,
    JobView,
    NodeSettings,
    NodeStoppedError,
    NotFoundError,
    P2PNodeError,
    RefusedError,
    SettingsError,
    SpecError,
    open_node,
)
from p2pnode.control import ControlClient, ControlError, serve_control
from p2pnode.node import ensure_ports_free
from p2pnode.testing import Faults
from protocols.errors import LocalProtocolError
from protocols.spec import SpecValidationError

WAIT = 60.0  # bound of every wait: a guard against hangs, not a performance claim
SIM_TASK: dict[str, Any] = {"engine": {"type": "sim", "duration": "100ms"}, "timeout": "10s"}
CRON_JOB = {"name": "tick", "type": "cron", "schedule": {"every": "1s"}, "task": SIM_TASK}


# --- the error tree ------------------------------------------------------------------------


def _exception_classes(module: types.ModuleType) -> Iterable[type[BaseException]]:
    for _, obj in inspect.getmembers(module, inspect.isclass):
        if issubclass(obj, BaseException) and obj.__module__ == module.__name__:
            yield obj


def stray_errors(modules: Iterable[types.ModuleType]) -> list[str]:
    """Public exception classes defined in ``modules`` outside the P2PNodeError tree."""
    return sorted(
        f"{cls.__module__}.{cls.__name__}"
        for module in modules
        for cls in _exception_classes(module)
        if not cls.__name__.startswith("_") and not issubclass(cls, P2PNodeError)
    )


def _p2pnode_modules() -> list[types.ModuleType]:
    names = [
        info.name
        for info in pkgutil.walk_packages(p2pnode.__path__, "p2pnode.")
        if info.name != "p2pnode.__main__"
    ]
    return [importlib.import_module(name) for name in names]


def test_every_error_p2pnode_defines_is_a_p2pnode_error() -> None:
    modules = _p2pnode_modules()
    assert len(modules) > 30  # the walk found the package, subpackages included
    assert stray_errors(modules) == []
    # The check fires on a planted error class outside the tree.
    planted = types.ModuleType("p2pnode.planted")
    exec("class OopsError(Exception): pass\nclass _Private(Exception): pass", planted.__dict__)
    assert stray_errors([*modules, planted]) == ["p2pnode.planted.OopsError"]


def test_p2pnode_exports_every_error_and_each_is_a_p2pnode_error() -> None:
    from p2pnode import errors

    exported = {name: getattr(p2pnode, name) for name in p2pnode.__all__}
    classes = {n: v for n, v in exported.items() if isinstance(v, type)}
    error_names = {n for n, v in classes.items() if issubclass(v, BaseException)}
    assert error_names == set(errors.__all__)
    assert all(issubclass(classes[n], P2PNodeError) for n in error_names)
    assert not issubclass(P2PNodeError, (ValueError, OSError, LocalProtocolError))


def test_old_import_paths_and_bases_still_hold() -> None:
    """Code written against the old classes catches the new ones."""
    from p2pnode.blobs import BlobError
    from p2pnode.control import ConnectionLost, NodeNotRunning
    from p2pnode.datadir import DataDirError
    from p2pnode.executors.common import ExecutorError
    from p2pnode.executors.docker import DockerUnavailable
    from p2pnode.executors.sandbox import SandboxUnavailable
    from p2pnode.identity import KeyFileError
    from p2pnode.inputs import InputError
    from p2pnode.outputs import FetchError as OutputsFetchError
    from p2pnode.runtime import NodeStopped
    from p2pnode.store import StoreError
    from p2pnode.stream.connector import ConnectorError

    same = {
        BlobError: p2pnode.BlobError,
        ConnectionLost: p2pnode.ConnectionLost,
        NodeNotRunning: p2pnode.NodeNotRunning,
        DataDirError: p2pnode.DataDirError,
        ExecutorError: p2pnode.ExecutorError,
        DockerUnavailable: p2pnode.DockerUnavailable,
        SandboxUnavailable: p2pnode.SandboxUnavailable,
        KeyFileError: p2pnode.KeyFileError,
        InputError: p2pnode.InputError,
        OutputsFetchError: FetchError,
        NodeStopped: NodeStoppedError,
        StoreError: p2pnode.StoreError,
        ConnectorError: p2pnode.ConnectorError,
        ControlError: p2pnode.ControlError,
    }
    assert all(old is new for old, new in same.items())
    assert issubclass(SpecError, SpecValidationError) and issubclass(SpecError, ValueError)
    assert issubclass(NotFoundError, RefusedError)
    assert issubclass(RefusedError, LocalProtocolError)
    assert issubclass(p2pnode.DataDirError, OSError) and issubclass(p2pnode.ListenError, OSError)
    assert issubclass(p2pnode.WaitTimeoutError, TimeoutError)
    assert issubclass(SettingsError, ValueError)
    assert issubclass(SandboxUnavailable, ExecutorError)
    assert issubclass(NodeNotRunning, ControlError) and issubclass(ConnectionLost, ControlError)


def test_settings_hold_no_test_hooks() -> None:
    """Fault injection reaches a node through p2pnode.testing, not NodeSettings."""
    fields = set(attrs.fields_dict(NodeSettings))
    assert not {f for f in fields if "fault" in f or "drop" in f}, fields
    assert set(inspect.signature(open_node).parameters) == {"settings", "_faults"}
    assert Faults().drop == frozenset()


def test_bad_settings_and_a_taken_port_are_p2pnode_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="unknown executor"):
        NodeSettings(data_dir=tmp_path, executors=("fortran",))
    with pytest.raises(SettingsError, match="must end in /p2p/"):
        p2pnode.node.bootstrap_peer_id("/ip4/127.0.0.1/tcp/1")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(p2pnode.ListenError, match=f"cannot listen on .*/tcp/{port}"):
            ensure_ports_free((f"/ip4/127.0.0.1/tcp/{port}",))


BAD_SPEC_YAML = """
name: Not A Name
count: 0
task:
  timeout: soon
"""


async def test_node_errors_are_p2pnode_errors(tmp_path: Path) -> None:
    settings = NodeSettings(data_dir=tmp_path / "n", executors=("sim",))
    async with open_node(settings) as node:
        # The runtime and the core are internals.
        assert not hasattr(node, "runtime") and not hasattr(node, "core")
        # An invalid spec (text or dict): one SpecError listing every problem.
        for bad in (BAD_SPEC_YAML, {"name": "Not A Name", "count": 0, "task": {"timeout": "x"}}):
            with pytest.raises(p2pnode.SpecError) as info:
                await node.submit(bad)
            assert {"name", "count", "task.timeout", "task.engine"} <= {
                e.path for e in info.value.errors
            }
            assert str(info.value).startswith(f"{len(info.value.errors)} errors in spec:")
        # A wasm module the node lacks is a spec problem too.
        wasm = {"name": "w", "task": {"engine": {"type": "wasm", "module": "sha256:" + "0" * 64}}}
        with pytest.raises(SpecError, match=r"task\.engine\.module"):
            await node.submit(wasm)
        assert node.jobs() == []

        # Unknown job: NotFoundError from every call that names one.
        async def fetch() -> None:
            await node.fetch_outputs("j-unknown", tmp_path / "out")

        for call in (
            lambda: node.cancel("j-unknown"),
            lambda: node.update("j-unknown", CRON_JOB),
            lambda: node.suspend("j-unknown"),
            lambda: node.resume("j-unknown"),
            lambda: node.wait("j-unknown", timeout=5),
            fetch,
        ):
            with pytest.raises(NotFoundError, match="j-unknown"):
                await call()
        with pytest.raises(NotFoundError, match="j-unknown"):
            node.describe("j-unknown")
        with pytest.raises(NotFoundError, match="j-unknown"):
            node.runs("j-unknown")

        # Known job, refused request: RefusedError, not NotFoundError.
        batch = await node.submit({"name": "once", "task": SIM_TASK}, idempotency_key="k")
        with pytest.raises(RefusedError, match="not a cron job") as refused:
            node.runs(batch)
        assert not isinstance(refused.value, NotFoundError)
        with pytest.raises(RefusedError, match="already used") as reused:
            await node.submit({"name": "other", "task": SIM_TASK}, idempotency_key="k")
        assert not isinstance(reused.value, NotFoundError)
        with pytest.raises(SettingsError, match="not both"):
            await node.submit({"name": "once", "task": SIM_TASK}, job_id="j", idempotency_key="k")
        await node.wait(batch, timeout=WAIT)

    # The node has stopped: calls say so.
    with pytest.raises(NodeStoppedError):
        await node.submit({"name": "late", "task": SIM_TASK})


# --- typed views: the same JSON as the control socket ------------------------------------


def _same_json(view: Any, control_result: Any) -> None:
    """``view`` (a view or a list of views) serializes to the control socket's bytes."""
    mine = [v.to_json() for v in view] if isinstance(view, list) else view.to_json()
    assert json.dumps(mine, default=str) == json.dumps(control_result)


async def test_typed_views_give_the_control_sockets_json(tmp_path: Path) -> None:
    settings = NodeSettings(data_dir=tmp_path / "n", executors=("sim",), labels={"zone": "a"})
    async with open_node(settings) as node, trio.open_nursery() as nursery:
        await nursery.start(serve_control, node)
        client = ControlClient(settings.data_dir)
        batch = await node.submit({"name": "once", "count": 2, "task": SIM_TASK})
        cron = await node.submit(CRON_JOB)

        view = await node.wait(batch, timeout=WAIT)
        _same_json(view, await client.call("describe", job_id=batch))
        _same_json(view, await client.call("wait", job_id=batch))
        # The view serves the core's own object back, untouched.
        assert view.to_json() == node._core.describe(batch)

        # Typed attributes read the same fields.
        raw = view.to_json()
        assert isinstance(view, JobView)
        assert (view.job_id, view.type, view.name) == (batch, "batch", "once")
        assert view.state == "completed"
        assert view.terminal and view.version == raw["version"] == 1
        assert [s.slot for s in view.slots] == [0, 1]
        for slot, slot_json in zip(view.slots, raw["slots"], strict=True):
            assert slot.to_json() == slot_json and slot.state == slot_json["state"]
            (execution,) = slot.executions
            assert execution.state == "succeeded" and execution.node == node.node_id
            assert execution.to_json() == slot_json["executions"][0]

        # Still a read-only mapping of that JSON, for dict-style callers.
        assert view["state"] == "completed" and dict(view) == raw and view == raw
        view["slots"].append("junk")
        view.to_json()["state"] = "junk"
        assert view.to_json() == raw
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            view.state = "junk"  # type: ignore[misc]

        with trio.fail_after(WAIT):
            while not any(r.outcome == "completed" for r in node.runs(cron)):
                await trio.sleep(0.1)
        await node.suspend(cron)  # no new runs while comparing
        runs = node.runs(cron)
        _same_json(runs, await client.call("runs", job_id=cron))
        done = next(r for r in runs if r.outcome == "completed")
        assert done.run_id == f"{cron}@{done.scheduled_ms}" and done.version == 1
        assert [e["state"] for e in done.executions] == ["succeeded"]
        cron_view = node.describe(cron)
        _same_json(cron_view, await client.call("describe", job_id=cron))
        assert cron_view.schedule is not None and cron_view.schedule["suspended"] is True

        _same_json(node.jobs(), await client.call("jobs"))
        assert {(j.job_id, j.type) for j in node.jobs()} >= {(batch, "batch"), (cron, "cron")}

        peers = node.peers()
        _same_json(peers, await client.call("peers"))
        (me,) = peers
        assert me.is_self and me["self"] and me.node_id == node.node_id
        assert me.labels == {"zone": "a"} and me.executors == ("sim",)

        stats = node.stats()
        _same_json(stats, await client.call("stats"))
        assert stats.node_id == node.node_id
        assert stats.frames_sent == sum(stats.sent_by_type.values())
        assert stats.transport["received"] == stats.to_json()["transport"]["received"]

        # The control socket's error replies (an unknown job: "not_found" since issue 14).
        with pytest.raises(ControlError) as unknown:
            await client.call("describe", job_id="j-unknown")
        assert unknown.value.code == "not_found" and str(unknown.value) == "no such job: j-unknown"
        with pytest.raises(ControlError) as invalid:
            await client.call("submit", spec=BAD_SPEC_YAML)
        assert invalid.value.code == "invalid_spec"
        assert {"name", "count", "task.timeout"} <= {e["path"] for e in invalid.value.errors}
        nursery.cancel_scope.cancel()


# --- fetch_outputs over two real nodes ---------------------------------------------------


def _writer(name: str, text: str = "slot $P2PNODE_SLOT", count: int = 1) -> dict[str, Any]:
    script = f'echo "{text}" > "$P2PNODE_OUTPUTS/out.txt"'
    return {
        "name": name,
        "count": count,
        "task": {
            "engine": {"type": "process", "command": ["sh", "-c", script]},
            "resources": {"cpu": 0.1, "memory": "64MiB"},
            "timeout": "1m",
        },
    }


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): p.read_text() for p in root.rglob("*") if p.is_file()}


@pytest.mark.slow
async def test_fetch_outputs_from_the_node_that_ran_the_job(tmp_path: Path) -> None:
    # The owner computes nothing: the worker runs every task and keeps the outputs.
    owner_settings = NodeSettings(data_dir=tmp_path / "owner", seed=1)
    async with open_node(owner_settings) as owner, trio.open_nursery() as nursery:
        await nursery.start(serve_control, owner)
        worker_settings = NodeSettings(
            data_dir=tmp_path / "worker",
            executors=("process",),
            bootstrap=(owner.listen_addrs()[0],),
            seed=2,
        )
        async with open_node(worker_settings) as worker:
            with trio.fail_after(WAIT):
                while worker.node_id not in {p.node_id for p in owner.peers()}:
                    await trio.sleep(0.05)
            two = await owner.submit(_writer("two", count=2))
            # Other bytes: blobs are content-addressed, and these must not be at hand.
            later = await owner.submit(_writer("later", text="$P2PNODE_EXECUTION_ID"))
            for job in (two, later):
                view = await owner.wait(job, timeout=WAIT)
                assert view.state == "completed", view.to_json()
                assert {e.node for s in view.slots for e in s.executions} == {worker.node_id}

            files = await owner.fetch_outputs(two, tmp_path / "out")
            out = tmp_path / "out"
            assert sorted(files) == [out / "0" / "out.txt", out / "1" / "out.txt"]
            assert _tree(tmp_path / "out") == {"0/out.txt": "slot 0\n", "1/out.txt": "slot 1\n"}

            # `job get`'s control op: the same files, as strings.
            got = await ControlClient(owner_settings.data_dir).call(
                "get", job_id=two, output_dir=str(tmp_path / "via-control")
            )
            via = tmp_path / "via-control"
            assert got == {"files": [str(via / "0" / "out.txt"), str(via / "1" / "out.txt")]}
            assert _tree(tmp_path / "via-control") == _tree(tmp_path / "out")

        # The worker is gone: what was fetched stays at hand, the rest cannot come.
        again = await owner.fetch_outputs(two, tmp_path / "again")
        assert len(again) == 2 and _tree(tmp_path / "again") == _tree(tmp_path / "out")
        with pytest.raises(FetchError, match=worker.node_id):
            await owner.fetch_outputs(later, tmp_path / "lost")
        nursery.cancel_scope.cancel()
