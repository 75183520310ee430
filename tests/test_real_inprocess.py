"""Several real ``open_node`` nodes in one trio process, over loopback libp2p.

Real transport, real store, real process executor; only the process boundary
is gone, which lets the tests look inside (``node._core``, transport stats) and
play a hostile peer with a bare ``Libp2pTransport``.  Each node's process
executor is wrapped in a ``RecordingExecutor`` (delegating to the real one) so
a test can tell what a holder was asked to run and whether it saw cancellation.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair

from p2pnode.engines import EngineRouter
from p2pnode.executor import Executor
from p2pnode.libp2p_transport import Libp2pTransport
from p2pnode.node import Node, NodeSettings, open_node
from p2pnode.testing import NO_FAULTS, Faults
from protocols.codec import encode
from protocols.config import ANNOUNCE_TOPIC, Timings
from protocols.events import ExecutionFinished, Notify, StartExecution
from protocols.messages import Cancel, Hello, LeaseGrant, Message, NodeInfo
from protocols.spec import validate_spec
from tests.realnet import executions, pids_with_env

pytestmark = pytest.mark.slow

# Short leases keep failure paths fast; the grace must still exceed loopback
# latency on a loaded machine (see docs/architecture.md).
TIMINGS = Timings(lease_ttl=2.0, lease_grace=0.5)
WAIT = 60.0  # bound of every wait: a guard against hangs, not a performance claim

T = TypeVar("T")


class RecordingExecutor:
    """Delegates to a real executor and records what it was asked to do."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.started: list[str] = []
        self.cancelled: list[str] = []
        self.finished: dict[str, ExecutionFinished] = {}

    async def run(self, start: StartExecution) -> ExecutionFinished:
        self.started.append(start.execution_id)
        try:
            result = await self.inner.run(start)
        except* trio.Cancelled:
            # except*: the process executor's nursery delivers the Cancelled
            # inside an exception group; a bare ``raise`` passes it on as is.
            self.cancelled.append(start.execution_id)
            raise
        self.finished[start.execution_id] = result
        return result


class InprocCluster:
    def __init__(self, nodes: list[Node], recorders: dict[str, RecordingExecutor]) -> None:
        self.nodes = nodes
        self.recorders = recorders

    def by_id(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    def all_started(self) -> list[str]:
        return [eid for r in self.recorders.values() for eid in r.started]


def _settings(root: Path, index: int, **kwargs: Any) -> NodeSettings:
    return NodeSettings(
        data_dir=root / f"n{index}",
        executors=("process",),
        timings=TIMINGS,
        seed=index,
        **kwargs,
    )


@asynccontextmanager
async def open_cluster(
    root: Path,
    n: int,
    labels: dict[int, dict[str, str]] | None = None,
    faults: Callable[[int], Faults] | None = None,
    converge_within: float = WAIT,
) -> AsyncIterator[InprocCluster]:
    """``n`` nodes, 1.. bootstrapping through node 0; yields once every node's
    view lists every node (so auctions see the whole cluster).  ``faults(i)``:
    the faults node i injects into itself (``p2pnode.testing``).  The views
    must converge within ``converge_within`` seconds."""
    labels = labels or {}
    faults_of = faults or (lambda _: NO_FAULTS)
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(
            open_node(_settings(root, 0, labels=labels.get(0, {})), _faults=faults_of(0))
        )
        nodes = [first]
        for i in range(1, n):
            settings = _settings(
                root, i, labels=labels.get(i, {}), bootstrap=(first.listen_addrs()[0],)
            )
            nodes.append(await stack.enter_async_context(open_node(settings, _faults=faults_of(i))))
        recorders = {}
        for node in nodes:
            router = node._runtime.executor
            assert isinstance(router, EngineRouter)
            recorders[node.node_id] = RecordingExecutor(router.executors["process"])
            router.executors["process"] = recorders[node.node_id]
        everyone = {node.node_id for node in nodes}
        await wait_for(
            lambda: all(everyone <= {p["node_id"] for p in node.peers()} for node in nodes),
            "every node to know every other",
            timeout=converge_within,
        )
        yield InprocCluster(nodes, recorders)


async def wait_for(predicate: Callable[[], T | None], what: str, timeout: float = WAIT) -> T:
    """Poll ``predicate`` until truthy; fail with ``what`` after ``timeout``."""
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if value:
                return value
            await trio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


async def wait_job(node: Node, job_id: str) -> dict[str, Any]:
    try:
        return await node.wait(job_id, timeout=WAIT)
    except TimeoutError:
        raise AssertionError(f"{job_id} not terminal: {node.describe(job_id)}") from None


async def wait_running(node: Node, job_id: str) -> dict[str, Any]:
    """The job's first execution that its holder has confirmed running."""

    def running() -> dict[str, Any] | None:
        return next((e for e in executions(node.describe(job_id)) if e["state"] == "running"), None)

    return await wait_for(running, f"{job_id} to start running")


def process_job(name: str, script: str, *, count: int = 1, **top: Any) -> dict[str, Any]:
    task: dict[str, Any] = {
        "engine": {"type": "process", "command": ["sh", "-c", script]},
        "resources": {"cpu": 0.1, "memory": "64MiB"},
        "timeout": "1m",
    }
    task.update(top.pop("task", {}))
    return {"name": name, "type": "batch", "count": count, "task": task, **top}


def collect(node: Node, kind: str) -> tuple[list[Notify], Callable[[], Awaitable[None]]]:
    """Start recording ``node``'s notifications of ``kind``; returns the list and
    the coroutine function to run (in a nursery) that fills it."""
    events = node._runtime.watch()
    seen: list[Notify] = []

    async def pump() -> None:
        with events:
            async for note in events:
                if note.kind == kind:
                    seen.append(note)

    return seen, pump


# --- 4. a rogue libp2p peer -----------------------------------------------------------


async def test_rogue_peer_cannot_grant_or_cancel(tmp_path: Path) -> None:
    spec = process_job("rogue-target", 'sleep 4; echo done > "$P2PNODE_OUTPUTS/out.txt"')
    async with (
        open_cluster(tmp_path, 3) as cluster,
        Libp2pTransport(create_new_key_pair()) as rogue,
        trio.open_nursery() as nursery,
    ):
        owner = cluster.nodes[0]
        job_id = await owner.submit(spec)
        real = await wait_running(owner, job_id)
        holder = cluster.by_id(real["node"])
        drops, pump = collect(holder, "dropped")
        nursery.start_soon(pump)

        await rogue.connect(holder.listen_addrs()[0])
        # Subscribe so gossipsub puts the holder in our mesh: published frames
        # then really reach it (publishing is otherwise best effort).
        await rogue.subscribe(ANNOUNCE_TOPIC)
        await rogue.wait_for_mesh(holder.node_id, ANNOUNCE_TOPIC, timeout=15)

        # A grant for a job nobody owns (a valid task, so only authority stops
        # it) and a cancel of the real execution, with the right epoch.
        rogue_job = "j-0123456789abcdef"
        grant = LeaseGrant(
            execution_id=f"{rogue_job}/0/1",
            job_id=rogue_job,
            slot=0,
            attempt=1,
            epoch=1,
            ttl_ms=60_000,
            timeout_ms=60_000,
            task=validate_spec(spec).canonical()["task"],
        )
        cancel = Cancel(execution_id=real["execution_id"], epoch=real["epoch"], reason="rogue")
        ids = itertools.count()

        def frame(message: Message, sender: str) -> bytes:
            return encode(message, msg_id=f"{rogue.local_id}:1:{next(ids)}", sender=sender)

        # Honest envelope (our own id) and forged (claiming the owner's id).
        for sender in (rogue.local_id, owner.node_id):
            for message in (grant, cancel):
                await rogue.send(holder.node_id, frame(message, sender))
                await rogue.publish(ANNOUNCE_TOPIC, frame(message, sender))

        def refused() -> bool:
            # The direct frames reach the core; the published ones are refused
            # by the announce topic's validator before gossipsub delivers them.
            record = holder.transport.guard.peers.get(rogue.local_id)
            published = record.rejected.get("invalid_broadcast", 0) if record else 0
            return holder._core.dropped.get(rogue.local_id, 0) >= 4 and published >= 4

        await wait_for(refused, "4 drops and 4 refused broadcasts against the rogue")
        reasons = [str(note.data["reason"]) for note in drops]
        for expected in ("did not bid for", "did not grant", "claims sender"):
            assert any(expected in r for r in reasons), (expected, reasons)

        view = await wait_job(owner, job_id)
        nursery.cancel_scope.cancel()

    assert view["state"] == "completed", view
    execs = executions(view)
    # Exactly one accepted result: the real, never-cancelled execution.
    assert [(e["execution_id"], e["state"]) for e in execs] == [
        (real["execution_id"], "succeeded")
    ], execs
    recorder = cluster.recorders[holder.node_id]
    assert real["execution_id"] in recorder.finished
    assert not recorder.cancelled
    # No node ran, held or reserved anything for the rogue's grant.
    assert not [e for e in cluster.all_started() if e.startswith(rogue_job)]
    for node in cluster.nodes:
        assert not [e for e in node._core.holder.held if e.startswith(rogue_job)]
        assert not [k for k in node._core.holder.reservations if k[0] == rogue_job]
    assert holder._core.dropped[rogue.local_id] >= 2


# --- 5. bad input over the wire -----------------------------------------------------------


async def test_bad_frames_are_dropped_and_counted(tmp_path: Path) -> None:
    # The raw sender's own limit is raised so it will put an oversized frame
    # on the wire; the node's limit (256 KiB) must catch it.
    async with (
        open_cluster(tmp_path, 2) as cluster,
        Libp2pTransport(create_new_key_pair(), max_frame=1024 * 1024) as raw,
        trio.open_nursery() as nursery,
    ):
        target = cluster.nodes[0]
        drops, pump = collect(target, "dropped")
        nursery.start_soon(pump)
        await raw.connect(target.listen_addrs()[0])
        await raw.subscribe(ANNOUNCE_TOPIC)
        await raw.wait_for_mesh(target.node_id, ANNOUNCE_TOPIC, timeout=15)

        me = raw.local_id
        hello = Hello(info=NodeInfo(node_id=me, compute=False), want_peers=False)
        valid = encode(hello, msg_id=f"{me}:1:0", sender=me)

        def envelope(**fields: Any) -> bytes:
            base = {"v": 1, "t": "hello", "id": f"{me}:1:9", "from": me, "body": {}}
            return bytes(msgpack.packb({**base, **fields}))

        garbage = [
            b"",  # an empty frame
            b"\xc1",  # a byte msgpack never uses
            b"this is not msgpack \xff\xfe\x00",
            valid[: len(valid) // 2],  # truncated msgpack
            valid + b"\x00",  # trailing bytes
            msgpack.packb([1, 2, 3]),  # msgpack, but not a map
            envelope(t="no_such_message"),  # valid frame of an unknown type
            envelope(v=99),  # unknown protocol version
        ]
        before = target.transport.stats.dropped_oversize_in
        for data in garbage:
            await raw.send(target.node_id, data)
        await raw.send(target.node_id, b"\x00" * (300 * 1024))  # over 256 KiB
        await raw.publish(ANNOUNCE_TOPIC, b"\xc1 garbage on the announce topic")
        # Last, a valid frame on the same stream: the node must still read it
        # (an oversized frame is skipped, it does not cost the stream).
        await raw.send(target.node_id, valid)

        # The oversized frame never reaches the core, and the announce topic's
        # validator refuses the published garbage before gossipsub delivers it.
        expected = len(garbage)
        await wait_for(
            lambda: target._core.dropped.get(me, 0) >= expected,
            f"{expected} drops against the raw peer",
        )
        rejected = target.transport.guard.peers[me].rejected
        await wait_for(lambda: rejected.get("invalid_broadcast"), "the refused broadcast")
        await wait_for(
            lambda: me in {p["node_id"] for p in target.peers()},
            "the valid hello sent after the garbage to be accepted",
        )
        assert target.transport.stats.dropped_oversize_in == before + 1
        assert rejected == {"undecodable": 8, "oversized": 1, "invalid_broadcast": 1}, rejected
        assert target._core.dropped[me] == expected, [n.data for n in drops]
        reasons = " | ".join(str(n.data["reason"]) for n in drops)
        for part in ("undecodable frame", "must be a map", "unknown message type", "version"):
            assert part in reasons, reasons

        # The node still works: a job submitted now completes.
        job_id = await target.submit(process_job("after-garbage", "echo ok > $P2PNODE_OUTPUTS/o"))
        view = await wait_job(target, job_id)
        nursery.cancel_scope.cancel()
    assert view["state"] == "completed", view


# --- 6. protocol paths on a 4-node cluster -------------------------------------------------


async def test_constraints_cancel_and_retries_on_four_nodes(tmp_path: Path) -> None:
    async with open_cluster(tmp_path, 4, labels={3: {"zone": "b"}}) as cluster:
        a, zone_b = cluster.nodes[0], cluster.nodes[3]
        echo = 'echo "$P2PNODE_SLOT" > "$P2PNODE_OUTPUTS/out.txt"'
        # Independent jobs, submitted together to save wall time.
        constrained = await a.submit(
            process_job("zone-b", echo, count=2, constraints={"labels": {"zone": "b"}})
        )
        nowhere = await a.submit(
            process_job("nowhere", echo, constraints={"labels": {"zone": "nowhere"}})
        )
        failing = await a.submit(
            process_job("exit3", "exit 3", task={"retry": {"attempts": 2, "backoff": "100ms"}})
        )
        sleeper = await a.submit(process_job("cancel-me", "sleep 60"))

        # Cancel mid-run: the holder's executor must see the cancellation.
        running = await wait_running(a, sleeper)
        marker = f"P2PNODE_EXECUTION_ID={running['execution_id']}"
        await wait_for(lambda: pids_with_env(marker), "the task's processes to be visible")
        await a.cancel(sleeper)
        assert (await wait_job(a, sleeper))["state"] == "stopped"
        holder_rec = cluster.recorders[running["node"]]
        await wait_for(
            lambda: running["execution_id"] in holder_rec.cancelled,
            "the holder's executor to see the cancellation",
        )
        await wait_for(lambda: not pids_with_env(marker), "the cancelled process to be gone")

        # The job is `stopped` at once; the execution's own end arrives with
        # the holder's report.
        def reported() -> dict[str, Any] | None:
            view = a.describe(sleeper)
            ended = executions(view)[0]["state"] not in ("granted", "running")
            return view if ended else None

        stopped = await wait_for(reported, "the holder's report of the cancelled execution")

        views = {job: await wait_job(a, job) for job in (constrained, nowhere, failing)}

    assert stopped["state"] == "stopped", stopped
    assert [e["state"] for e in executions(stopped)] == ["cancelled"], stopped

    zone_view = views[constrained]
    assert zone_view["state"] == "completed", zone_view
    assert {e["node"] for e in executions(zone_view)} == {zone_b.node_id}, zone_view
    # Not even started elsewhere (an execution that ran and was then refused
    # would not show in the owner's view, but would in a recorder).
    elsewhere = [
        eid
        for node_id, rec in cluster.recorders.items()
        if node_id != zone_b.node_id
        for eid in rec.started
        if eid.startswith(constrained)
    ]
    assert not elsewhere, elsewhere
    assert len(cluster.recorders[zone_b.node_id].finished) >= 2

    nowhere_view = views[nowhere]
    assert nowhere_view["state"] == "failed", nowhere_view
    assert "no node matches" in nowhere_view["reason"], nowhere_view
    assert not executions(nowhere_view)

    failed_view = views[failing]
    assert failed_view["state"] == "failed", failed_view
    assert "exited with code 3" in failed_view["reason"], failed_view
    assert "attempt 2 of 2" in failed_view["reason"], failed_view
    execs = executions(failed_view)
    assert [e["state"] for e in execs] == ["failed", "failed"], execs
    assert [e["exit_code"] for e in execs] == [3, 3], execs
    # The owner ranks nodes that already failed the slot last: with three
    # other compute nodes free, the retry runs elsewhere.
    assert execs[0]["node"] != execs[1]["node"], execs
