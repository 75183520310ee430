"""The I/O side of stream jobs: progress lines, task inputs, the Redis connector
and the micro-batch feeder.

Real processes and (for the ``redis`` tests) a real private redis-server; the
node core is scripted (tests/test_runtime.py's fakes) or absent.  The whole
cluster, with real ``serve`` processes, is tests/test_real_stream.py.
"""

from __future__ import annotations

import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from p2pnode.blobs import BlobStore, ManifestEntry
from p2pnode.engines import EngineRouter
from p2pnode.executor import ProgressMailbox, current_progress, install_progress
from p2pnode.executors import ProcessExecutor
from p2pnode.executors.common import ProgressParser
from p2pnode.inputs import InputError, InputFetcher
from p2pnode.stream import (
    BATCH_FILE,
    ConnectorError,
    StreamFeeder,
    decode_position,
    encode_position,
)
from protocols.errors import LocalProtocolError
from protocols.events import (
    ExecutionFinished,
    ExecutionProgress,
    SourceBatch,
    Started,
    StartExecution,
    StopExecution,
)
from protocols.messages import MAX_CHECKPOINT_LEN
from protocols.stream import behind
from tests.redisserver import RedisServer, start_redis
from tests.test_runtime import Node, running, wait_until

MIB = 1024 * 1024
PY = sys.executable


class Reports:
    """A ProgressSink that records every report."""

    def __init__(self) -> None:
        self.items: list[tuple[str, int]] = []

    def report(self, checkpoint: str = "", lag: int = -1) -> None:
        self.items.append((checkpoint, lag))

    @property
    def checkpoints(self) -> list[str]:
        return [c for c, _ in self.items if c]


# --- the progress line protocol ------------------------------------------------------


def test_parser_reads_checkpoint_and_lag_lines_across_chunks() -> None:
    sink = Reports()
    parser = ProgressParser(sink)
    stream = (
        b"hello\nP2PNODE_CHECKPOINT 1700-1\nP2PNODE_LAG 12\n"
        b"P2PNODE_CHECKPOINT {\"a\": \"1-2\"}  \r\n"  # inner spaces kept, ends trimmed
        b"  P2PNODE_CHECKPOINT indented\n"  # must start the line
        b"P2PNODE_LAG -3\nP2PNODE_LAG lots\nP2PNODE_CHECKPOINT \n"  # ignored
        b"P2PNODE_CHECKPOINT last-without-newline"
    )
    for i in range(0, len(stream), 7):  # chunk boundaries everywhere
        parser.feed(stream[i : i + 7])
    assert sink.items == [("1700-1", -1), ("", 12), ('{"a": "1-2"}', -1)]
    parser.close()
    assert sink.checkpoints[-1] == "last-without-newline"


def test_parser_memory_is_bounded_and_an_overlong_checkpoint_is_passed_on_cut() -> None:
    sink = Reports()
    parser = ProgressParser(sink)
    parser.feed(b"x" * 10 * MIB + b"\n")  # a huge ordinary line
    parser.feed(b"P2PNODE_CHECKPOINT " + b"9" * (5 * MAX_CHECKPOINT_LEN) + b"\nP2PNODE_LAG 1\n")
    assert len(parser._line) == 0
    (value, _), lag = sink.items
    # Cut just past the limit: the holder refuses it with a progress_refused notify.
    assert MAX_CHECKPOINT_LEN < len(value) < MAX_CHECKPOINT_LEN + 16
    assert lag == ("", 1)


async def test_mailbox_coalesces_and_flushes_on_close(autojump_clock: trio.abc.Clock) -> None:
    box = ProgressMailbox("e1", interval=1.0)
    got: list[tuple[float, ExecutionProgress]] = []

    async def deliver(event: ExecutionProgress) -> None:
        got.append((trio.current_time(), event))

    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(box.pump, deliver)
        for i in range(10_000):
            box.report(checkpoint=str(i))
        box.report(lag=4)
        await trio.sleep(0.5)
        box.report(checkpoint="10000")  # within the pause: waits for it
        await trio.sleep(3)
        box.report(checkpoint="final")
        box.close()  # delivered at once, no pause
    assert [(t - t0, e.checkpoint, e.lag) for t, e in got] == [
        (0.0, "9999", 4),
        (1.0, "10000", 4),
        (3.5, "final", 4),
    ]
    assert box.reports == 10_003


# --- the runtime: progress reaches the core, before the execution's end ------------


class ChattyExecutor:
    """Reports a burst of checkpoints, then one more while being stopped."""

    async def run(self, start: StartExecution) -> ExecutionFinished:
        sink = current_progress()
        assert sink is not None
        for i in range(5000):
            sink.report(checkpoint=f"{i}")
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await trio.sleep(0.3)  # a graceful stop takes a while
                sink.report(checkpoint="final", lag=0)
        raise AssertionError("unreachable")


async def test_runtime_delivers_coalesced_progress_before_the_end(
    autojump_clock: trio.abc.Clock,
) -> None:
    def script(event: Any, now: float) -> list[Any]:
        if isinstance(event, Started):
            start = StartExecution("e1", job_id="j", slot=0, task={}, env={}, timeout=100)
            return [start]
        if isinstance(event, ExecutionProgress) and event.checkpoint == "4999":
            return [StopExecution("e1", "run_for reached")]
        return []

    node = Node(script, executor=ChattyExecutor())
    async with running(node):
        await wait_until(lambda: bool(node.core.seen(ExecutionFinished)))
    events = [e for e, _ in node.core.calls if isinstance(e, ExecutionProgress | ExecutionFinished)]
    assert [type(e).__name__ for e in events] == [
        "ExecutionProgress",
        "ExecutionProgress",
        "ExecutionFinished",
    ]
    assert (events[0].checkpoint, events[1].checkpoint, events[1].lag) == ("4999", "final", 0)
    assert events[2].status == "cancelled"


# --- the process executor -----------------------------------------------------------


def _process_start(script: str, eid: str = "exec-1", **kwargs: Any) -> StartExecution:
    task = {"engine": {"type": "process", "command": [PY, "-c", textwrap.dedent(script)]}}
    return StartExecution(eid, "job-1", 0, task, {}, 30.0, **kwargs)


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "data")


@pytest.fixture
def executor(tmp_path: Path, blobs: BlobStore) -> ProcessExecutor:
    return ProcessExecutor(tmp_path / "data", blobs, max_output_bytes=64 * MIB, kill_grace=3.0)


async def test_process_executor_reports_progress_lines_and_keeps_the_tail(
    executor: ProcessExecutor,
) -> None:
    sink = Reports()
    install_progress(sink)
    script = """
        import sys
        for i in range(1, 2001):
            print(f"P2PNODE_CHECKPOINT 1-{i}")
            if i % 500 == 0:
                print(f"P2PNODE_LAG {2000 - i}", flush=True)
        print("done")
    """
    result = await executor.run(_process_start(script))
    assert result.status == "succeeded", result
    assert sink.checkpoints[-1] == "1-2000" and len(sink.checkpoints) == 2000
    assert [lag for _, lag in sink.items if lag >= 0] == [1500, 1000, 500, 0]
    assert result.stdout_tail.endswith("P2PNODE_LAG 0\ndone\n")  # the tail is unchanged


async def test_process_executor_reads_the_last_checkpoint_printed_after_sigterm(
    executor: ProcessExecutor,
) -> None:
    sink = Reports()
    install_progress(sink)
    script = """
        import signal, sys, time
        def stop(signum, frame):
            time.sleep(0.3)  # finishing the current entry
            print("P2PNODE_CHECKPOINT 7-final", flush=True)
            sys.exit(0)
        signal.signal(signal.SIGTERM, stop)
        print("P2PNODE_CHECKPOINT 7-0", flush=True)
        while True:
            time.sleep(0.05)
    """
    with trio.move_on_after(20) as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.run, _process_start(script))
            while not sink.checkpoints:
                await trio.sleep(0.02)
            nursery.cancel_scope.cancel()  # the runtime's StopExecution does this
    assert not scope.cancelled_caught
    assert sink.checkpoints == ["7-0", "7-final"]


# --- inputs -------------------------------------------------------------------------


def _blob_manifest(blobs: BlobStore, files: dict[str, bytes]) -> str:
    entries = []
    for path, data in files.items():
        digest = blobs.put_bytes(data)
        entries.append(ManifestEntry(path=path, size=len(data), sha256=digest.split(":")[1]))
    return blobs.put_manifest(entries)


COPY_INPUT = """
    import os, pathlib, shutil
    src = pathlib.Path(os.environ["P2PNODE_INPUTS"], "batch")
    shutil.copytree(src, pathlib.Path(os.environ["P2PNODE_OUTPUTS"], "seen"))
"""


async def test_inputs_are_laid_out_from_the_local_store(
    executor: ProcessExecutor, blobs: BlobStore, tmp_path: Path
) -> None:
    manifest = _blob_manifest(blobs, {BATCH_FILE: b'{"id": "1-0"}\n', "sub/x.txt": b"x"})
    start = _process_start(COPY_INPUT, inputs=(("batch", manifest, "some-node"),))
    router = EngineRouter({"process": executor}, inputs=InputFetcher(blobs))
    result = await router.run(start)
    assert result.status == "succeeded", result
    out = tmp_path / "out"
    blobs.materialize(result.manifest_id, out)
    assert (out / "seen" / BATCH_FILE).read_bytes() == b'{"id": "1-0"}\n'
    assert (out / "seen" / "sub" / "x.txt").read_bytes() == b"x"


async def test_a_missing_input_is_an_error_naming_it(
    executor: ProcessExecutor, blobs: BlobStore
) -> None:
    missing = "sha256:" + "ab" * 32
    start = _process_start(COPY_INPUT, inputs=(("batch", missing, "node-x"),))
    router = EngineRouter({"process": executor}, inputs=InputFetcher(blobs))
    result = await router.run(start)
    assert result.status == "error"
    assert "cannot fetch inputs" in result.error and "'batch'" in result.error
    assert missing in result.error
    # Without a router the executor itself refuses, naming the input too.
    with pytest.raises(Exception, match="input 'batch'"):
        await executor.run(start)


@pytest.mark.slow
async def test_inputs_are_fetched_from_another_node(tmp_path: Path) -> None:
    from tests.test_real_inprocess import open_cluster

    async with open_cluster(tmp_path, 2) as cluster:
        holder, runner = cluster.nodes
        manifest = _blob_manifest(holder.blobs, {BATCH_FILE: b"entries\n" * 1000})
        assert not runner.blobs.has(manifest)
        router = runner._runtime.executor
        assert isinstance(router, EngineRouter) and router.inputs is not None
        inputs = (("batch", manifest, holder.node_id),)
        start = _process_start(COPY_INPUT, eid="fetch-1", inputs=inputs)
        result = await router.run(start)
        assert result.status == "succeeded", result
        assert runner.blobs.has(manifest) and router.inputs.fetched == 2  # manifest + file
        out = tmp_path / "out"
        runner.blobs.materialize(result.manifest_id, out)
        assert (out / "seen" / BATCH_FILE).read_bytes() == b"entries\n" * 1000

        bogus = "sha256:" + "cd" * 32
        with pytest.raises(InputError, match=f"input 'b' .*{holder.node_id}.*no blob"):
            await router.inputs.fetch([("b", bogus, holder.node_id)])


# --- the Redis connector ------------------------------------------------------------


def _xadd(server: RedisServer, stream: str, n: int, start: int = 0) -> list[str]:
    client = server.client()
    pipe = client.pipeline()
    for i in range(start, start + n):
        pipe.xadd(stream, {"n": str(i), "bin": "é"})
    return [str(x) for x in pipe.execute()]


@pytest.mark.redis
async def test_redis_connector_reads_after_positions(redis_server: RedisServer) -> None:
    from p2pnode.stream.redis import RedisConnector

    s0 = _xadd(redis_server, "s0", 10)
    s1 = _xadd(redis_server, "s1", 5)
    conn = RedisConnector(redis_server.url)
    try:
        first = await conn.read(["s0", "s1"], "", 7, 0.5)
        assert [(e.stream, e.id) for e in first.entries] == [("s0", i) for i in s0[:7]]
        assert first.entries[0].fields == {"n": "0", "bin": "é"}
        assert first.position == encode_position({"s0": s0[6]}) == f'{{"s0":"{s0[6]}"}}'
        assert first.first == encode_position({"s0": s0[0]})

        second = await conn.read(["s0", "s1"], first.position, 7, 0.5)
        assert [e.id for e in second.entries] == s0[7:] + s1[:4]
        assert decode_position(second.position) == {"s0": s0[9], "s1": s1[3]}
        assert behind(first.position, second.position)
        assert not behind(second.position, first.position)

        t0 = time.monotonic()
        third = await conn.read(["s0", "s1"], second.position, 100, 0.4)
        assert [e.id for e in third.entries] == s1[4:]  # what is there, after the wait
        assert time.monotonic() - t0 >= 0.35

        empty = await conn.read(["s0", "s1"], third.position, 100, 0.3)
        assert empty.entries == [] and empty.position == third.position

        # A blocked read returns as soon as max_entries arrive.
        async with trio.open_nursery() as nursery:
            t0 = time.monotonic()

            async def later() -> None:
                await trio.sleep(0.3)
                await trio.to_thread.run_sync(_xadd, redis_server, "s1", 1)

            nursery.start_soon(later)
            one = await conn.read(["s0", "s1"], third.position, 1, 10.0)
        assert len(one.entries) == 1 and time.monotonic() - t0 < 5
        assert [e.id for e in await conn.xrange("s1", after=s1[3])] == [s1[4], one.entries[0].id]
    finally:
        await conn.aclose()


@pytest.mark.redis
async def test_redis_connector_errors_are_connector_errors(redis_server: RedisServer) -> None:
    from p2pnode.stream.redis import RedisConnector

    with pytest.raises(ConnectorError, match=r"bad redis URL 'http://\*\*\*@x'"):
        RedisConnector("http://:secret@x")
    redis_server.client().set("plain", "x")
    conn = RedisConnector(redis_server.url)
    with pytest.raises(ConnectorError, match="WRONGTYPE"):
        await conn.read(["plain"], "", 10, 0.1)
    await conn.aclose()
    redis_server.stop()
    down = RedisConnector(redis_server.url)
    with pytest.raises(ConnectorError, match=f"redis {redis_server.url}: .*(refused|connect)"):
        await down.read(["s0"], "", 10, 0.1)
    await down.aclose()


# --- the feeder ---------------------------------------------------------------------


class FakeOwner:
    """Plays the core's side of micro-batching: sources() rows, SourceBatch
    checks (one in flight, strictly after the position)."""

    def __init__(self, url: str, streams: dict[str, list[str]], max_entries: int = 50) -> None:
        self.rows = {
            p: {
                "job_id": "m1",
                "partition": p,
                "type": "redis",
                "url": url,
                "streams": s,
                "position": "",
                "busy": False,
                "max_entries": max_entries,
                "max_wait_ms": 200,
            }
            for p, s in streams.items()
        }
        self.batches: list[SourceBatch] = []
        self.refused = 0

    def sources(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows.values()]

    async def dispatch(self, batch: SourceBatch) -> None:
        row = self.rows[batch.partition]
        if row["busy"]:
            self.refused += 1
            raise LocalProtocolError("in flight")
        assert behind(row["position"], batch.last) or not row["position"]
        row["busy"], row["position"] = True, batch.last
        self.batches.append(batch)

    def commit_all(self) -> None:
        for row in self.rows.values():
            row["busy"] = False


def _batch_ids(blobs: BlobStore, batch: SourceBatch) -> list[str]:
    (entry,) = blobs.read_manifest(batch.manifest_id)
    assert entry.path == BATCH_FILE
    lines = blobs.read_bytes(f"sha256:{entry.sha256}").decode().splitlines()
    records = [json.loads(line) for line in lines]
    assert all(set(r) == {"stream", "id", "fields"} for r in records)
    return [f"{r['stream']}/{r['id']}" for r in records]


@pytest.mark.redis
async def test_feeder_batches_each_partition_one_at_a_time(
    redis_server: RedisServer, blobs: BlobStore
) -> None:
    ids = {s: _xadd(redis_server, s, 120) for s in ("k0", "k1", "k2")}
    owner = FakeOwner(redis_server.url, {"p0": ["k0", "k2"], "p1": ["k1"]})
    feeder = StreamFeeder(owner.sources, owner.dispatch, blobs, poll_interval=0.05)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feeder.run)
        with trio.fail_after(20):
            while sum(b.count for b in owner.batches) < 360:
                await trio.sleep(0.5)
                owner.commit_all()
                feeder.poke()
        await trio.sleep(0.5)
        assert sum(b.count for b in owner.batches) == 360 and owner.refused == 0
        nursery.cancel_scope.cancel()
    seen: dict[str, list[str]] = {"p0": [], "p1": []}
    for batch in owner.batches:
        assert batch.count <= 50 and batch.job_id == "m1"
        got = _batch_ids(blobs, batch)
        assert len(got) == batch.count
        seen[batch.partition] += got
        last = decode_position(batch.last)
        assert all(f"{s}/{i}" in got for s, i in last.items() if f"{s}/{i}" in got)
    want_p0 = [f"k0/{i}" for i in ids["k0"]] + [f"k2/{i}" for i in ids["k2"]]
    assert sorted(seen["p0"]) == sorted(want_p0) and len(seen["p0"]) == 240
    assert seen["p1"] == [f"k1/{i}" for i in ids["k1"]]
    final = {b.partition: decode_position(b.last) for b in owner.batches}
    assert final == {"p0": {"k0": ids["k0"][-1], "k2": ids["k2"][-1]}, "p1": {"k1": ids["k1"][-1]}}


@pytest.mark.redis
async def test_feeder_survives_a_redis_outage_and_shows_it(
    redis_server: RedisServer, blobs: BlobStore, tmp_path: Path
) -> None:
    owner = FakeOwner(redis_server.url, {"0": ["k0"]})
    feeder = StreamFeeder(
        owner.sources, owner.dispatch, blobs, poll_interval=0.05, min_backoff=0.1, max_backoff=0.5
    )
    port = redis_server.port
    redis_server.stop()
    restarted: RedisServer | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(feeder.run)
            with trio.fail_after(20):
                while (status := feeder.status.get(("m1", "0"))) is None or status.errors < 3:
                    await trio.sleep(0.05)
            view = feeder.annotate(
                {"job_id": "m1", "partitions": [{"partition": "0", "in_flight": ""}]}
            )
            assert f"redis {redis_server.url}" in view["partitions"][0]["source_error"]
            restarted = await trio.to_thread.run_sync(
                lambda: start_redis(tmp_path / "redis2", port=port)
            )
            await trio.to_thread.run_sync(_xadd, restarted, "k0", 5)
            with trio.fail_after(20):
                while not owner.batches:
                    await trio.sleep(0.05)
            assert feeder.status[("m1", "0")].source_error == ""
            nursery.cancel_scope.cancel()
    finally:
        if restarted is not None:
            restarted.stop()
    assert owner.batches[0].count == 5


@pytest.mark.redis
def test_redis_server_fixture_is_private(redis_server: RedisServer) -> None:
    """The fixture's server listens on loopback only and persists nothing."""
    client = redis_server.client()
    assert client.config_get("save")["save"] == ""
    assert client.config_get("appendonly")["appendonly"] == "no"
    assert client.config_get("bind")["bind"].split() == ["127.0.0.1"]
