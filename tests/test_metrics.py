"""``/metrics`` (p2pnode/web/metrics.py) on real in-process nodes over loopback
libp2p: the page parses with prometheus_client's own parser, and each counter
moves when its event happens (a job run, a lease renewed, a frame rejected, a
chain handed over), separately for each node of the process."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from prometheus_client.parser import text_string_to_metric_families

from p2pnode.execstats import DURATION_BUCKETS, ExecutionStats
from p2pnode.libp2p_transport import FRAME_PROTOCOL, Libp2pTransport
from p2pnode.net.framing import encode_frame
from p2pnode.net.guard import PeerGuard
from p2pnode.node import Node, NodeSettings, open_node
from p2pnode.version import package_version as _version
from p2pnode.web.metrics import render_metrics
from protocols.config import Timings
from tests.realnet import cluster, is_terminal
from tests.test_real_chain import chain_spec
from tests.test_real_inprocess import process_job, wait_for, wait_job

pytestmark = pytest.mark.slow

TIMINGS = Timings(lease_ttl=2.0, lease_grace=0.5)  # renewals every 2/3 s

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(node: Node) -> Samples:
    """The node's metrics page, parsed by prometheus_client's parser."""
    body, content_type = render_metrics(node)
    assert content_type.startswith("text/plain; version=")
    return parse(body)


def parse(body: bytes) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when the page has no such sample."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def undocumented(body: bytes) -> list[str]:
    """Metric names on a page that docs/metrics.md does not list."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "metrics.md").read_text()
    names = [
        f.name + ("_total" if f.type == "counter" else "")
        for f in text_string_to_metric_families(body.decode())
    ]
    return [name for name in names if f"`{name}`" not in doc]


@asynccontextmanager
async def owner_and_worker(root: Path) -> AsyncIterator[tuple[Node, Node]]:
    """Two nodes in this process: an owner that computes nothing and a worker."""
    async with AsyncExitStack() as stack:
        worker = await stack.enter_async_context(
            open_node(
                NodeSettings(
                    data_dir=root / "worker", executors=("process",), timings=TIMINGS, seed=1
                )
            )
        )
        owner = await stack.enter_async_context(
            open_node(
                NodeSettings(
                    data_dir=root / "owner",
                    compute=False,
                    timings=TIMINGS,
                    seed=2,
                    bootstrap=(worker.listen_addrs()[0],),
                )
            )
        )
        await wait_for(
            lambda: worker.node_id in {p["node_id"] for p in owner.peers()},
            "the owner to know the worker",
        )
        yield owner, worker


def test_duration_buckets_are_cumulative_and_inclusive() -> None:
    stats = ExecutionStats()
    for seconds in (0.05, 0.06, 7.0, 99999.0):
        stats.record("process", "succeeded", seconds)
    stats.record("process", "failed", 1.0)
    (histogram,) = stats.durations.values()
    cumulative = dict(histogram.cumulative())
    assert cumulative[0.05] == 1  # an upper bound includes its own value
    assert cumulative[0.1] == 2 and cumulative[1.0] == 3 and cumulative[10.0] == 4
    assert cumulative[DURATION_BUCKETS[-1]] == 4 and cumulative[float("inf")] == 5
    assert stats.to_json()["finished"] == {"process": {"failed": 1, "succeeded": 4}}


async def test_a_job_moves_jobs_executions_durations_leases_and_messages(tmp_path: Path) -> None:
    async with owner_and_worker(tmp_path) as (owner, worker):
        before = scrape(worker)
        assert value(before, "p2pnode_executions_running") == 0
        assert total(before, "p2pnode_executions_total") == 0
        # Longer than several renewal intervals (ttl/3), so renewals happen.
        job_id = await owner.submit(process_job("slow", "sleep 2.5; echo done"))
        running = await wait_for(
            lambda: value(scrape(worker), "p2pnode_executions_running") == 1 or None,
            "the execution to show as running on the worker",
        )
        assert running
        view = await wait_job(owner, job_id)
        assert view["state"] == "completed", view

        mine, theirs = scrape(owner), scrape(worker)
        # Jobs are the owner's: by kind and state, every state shown.
        assert value(mine, "p2pnode_jobs", kind="batch", state="completed") == 1
        assert value(mine, "p2pnode_jobs", kind="batch", state="running") == 0
        assert total(theirs, "p2pnode_jobs") == 0
        # Executions and their durations are the worker's.
        done = {"executor": "process", "outcome": "succeeded"}
        assert value(theirs, "p2pnode_executions_total", **done) == 1
        assert value(theirs, "p2pnode_executions_running") == 0
        durations = "p2pnode_executor_duration_seconds"
        assert value(theirs, f"{durations}_count", executor="process") == 1
        assert value(theirs, f"{durations}_sum", executor="process") >= 2.5
        assert value(theirs, f"{durations}_bucket", executor="process", le="1.0") == 0
        assert value(theirs, f"{durations}_bucket", executor="process", le="+Inf") == 1
        assert total(mine, "p2pnode_executions_total") == 0
        assert total(mine, f"{durations}_count") == 0
        # The owner acknowledged renewals of the running lease; none lapsed.
        assert value(mine, "p2pnode_lease_renewals_total") >= 1
        assert value(mine, "p2pnode_lease_lapses_total") == 0
        # Messages both ways, by type: the grant out, its renewals in.
        assert value(mine, "p2pnode_messages_sent_total", type="lease_grant") >= 1
        assert value(theirs, "p2pnode_messages_received_total", type="lease_grant") >= 1
        assert value(mine, "p2pnode_messages_received_total", type="lease_renew") >= 1
        assert value(theirs, "p2pnode_messages_sent_total", type="lease_renew") >= 1
        # Peers by status (each node counts itself) and who is speaking.
        assert value(mine, "p2pnode_peers", status="alive") == 2
        info = [ls for (n, ls), _ in mine.items() if n == "p2pnode_info"]
        assert len(info) == 1 and ("node_id", owner.node_id) in info[0]
        # Every metric on the page is documented (docs/metrics.md).
        assert undocumented(render_metrics(owner)[0]) == []
        # The same counters in `node stats` (the stats op answer).
        stats = worker.stats()
        assert stats.executions["finished"] == {"process": {"succeeded": 1}}
        assert stats.frames_received == sum(stats.received_by_type.values()) > 0
        assert owner.stats().jobs_by_kind == {"batch": {"completed": 1}}
        assert owner.stats().leases["renewals"] == value(mine, "p2pnode_lease_renewals_total")
        # Since issue 16: the store's commits (the owner wrote its job).
        assert owner.stats().to_json()["store"]["commits"] >= 1


async def write_garbage(node: Node) -> str:
    """An abusive peer writes one frame that is not msgpack; returns its id."""
    async with Libp2pTransport(create_new_key_pair()) as raw:
        await raw.connect(node.listen_addrs()[0])
        stream = await raw.open_stream(node.node_id, FRAME_PROTOCOL)
        await stream.write(encode_frame(b"\xc1 not msgpack"))
        await stream.close()
        record = node.transport.guard.peers
        await wait_for(lambda: raw.local_id in record, "the node to reject the frame")
        return raw.local_id


async def check_rejection_counted(owner: Node, worker: Node) -> None:
    await write_garbage(worker)
    theirs, mine = scrape(worker), scrape(owner)
    assert value(theirs, "p2pnode_frames_rejected_total", reason="undecodable") == 1
    assert value(theirs, "p2pnode_frames_rejected_total", reason="forged") == 0  # shown at 0
    assert total(mine, "p2pnode_frames_rejected_total") == 0  # the other node saw nothing
    assert worker.stats().rejected_by_reason == {"undecodable": 1}


async def test_a_rejected_frame_counts_by_reason_on_its_node_only(tmp_path: Path) -> None:
    async with owner_and_worker(tmp_path) as (owner, worker):
        await check_rejection_counted(owner, worker)


async def test_a_rejection_left_uncounted_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The planted bug: the guard forgets to count a rejection by reason."""
    penalize = PeerGuard.penalize

    def forgetful(self: PeerGuard, peer: str, reason: str, now: float) -> float:
        seconds = penalize(self, peer, reason, now)
        self.rejected_by_reason[reason] -= 1
        return seconds

    monkeypatch.setattr(PeerGuard, "penalize", forgetful)
    async with owner_and_worker(tmp_path) as (owner, worker):
        with pytest.raises(AssertionError):
            await check_rejection_counted(owner, worker)


def _handovers(samples: Mapping[tuple[str, frozenset[tuple[str, str]]], float], role: str) -> float:
    return value(dict(samples), "p2pnode_handovers_total", role=role)


async def test_a_chain_counts_its_handovers(tmp_path: Path) -> None:
    async with AsyncExitStack() as stack:
        submitter = await stack.enter_async_context(
            open_node(
                NodeSettings(data_dir=tmp_path / "s", compute=False, timings=TIMINGS, seed=3)
            )
        )
        workers = [
            await stack.enter_async_context(
                open_node(
                    NodeSettings(
                        data_dir=tmp_path / f"w{i}",
                        executors=("process",),
                        timings=TIMINGS,
                        seed=10 + i,
                        bootstrap=(submitter.listen_addrs()[0],),
                    )
                )
            )
            for i in range(2)
        ]
        nodes = [submitter, *workers]
        everyone = {n.node_id for n in nodes}
        await wait_for(
            lambda: all(everyone <= {p["node_id"] for p in n.peers()} for n in nodes),
            "every node to know every other",
        )
        job_id = await submitter.submit(chain_spec(3))
        view = await wait_job(submitter, job_id)
        assert view["state"] == "completed", view
        records: list[dict[str, Any]] = submitter.describe(job_id).to_json()["chain"]["records"]
        # A handover between two nodes (not a stage owner keeping the next stage).
        moved = [r for r in records if r["kind"] == "handover" and r["from"] != r["to"]]
        assert moved, records
        pages = [scrape(n) for n in nodes]
        offered = sum(_handovers(p, "offered") for p in pages)
        accepted = sum(_handovers(p, "accepted") for p in pages)
        assert offered >= len(moved) and accepted >= len(moved), (offered, accepted, records)
        for node, page in zip(nodes, pages, strict=True):  # each node its own numbers
            assert node.stats().handovers == {
                "offered": _handovers(page, "offered"),
                "accepted": _handovers(page, "accepted"),
            }


def _get(url: str, token: str | None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.headers["Content-Type"], refused.read()


def test_metrics_over_http_from_a_serve_process(tmp_path: Path) -> None:
    """``GET /metrics`` of a real ``serve --http-listen``: refused without the
    token, with it the page parses and shows the job the node just ran."""
    with cluster(tmp_path) as c:
        node = c.add("a", extra=["--http-listen", "127.0.0.1:0"])
        node.wait_ready()
        url = node.control("ping")["http"]
        assert url and url.startswith("http://127.0.0.1:"), url
        token = (node.data_dir / "http-token").read_text().strip()
        job_id = node.control("submit", spec=process_job("m", "echo hi"))["job_id"]
        view = c.wait_job(node, job_id, is_terminal, timeout=60, what="the job to end")
        assert view["state"] == "completed", view

        status, _, body = _get(f"{url.rstrip('/')}/metrics", None)
        assert status == 401 and b"unauthorized" in body
        status, content_type, body = _get(f"{url.rstrip('/')}/metrics", token)
        assert status == 200, body[:300]
        assert content_type.startswith("text/plain"), content_type
        samples = parse(body)
        assert value(samples, "p2pnode_jobs", kind="batch", state="completed") == 1
        done = {"executor": "process", "outcome": "succeeded"}
        assert value(samples, "p2pnode_executions_total", **done) == 1
        assert value(samples, "p2pnode_info", node_id=node.node_id, version=_version()) == 1
        # `node stats` (table) shows the same counters.
        table = node.cli("node", "stats")
        assert table.returncode == 0, table.explain()
        assert "ended: process/succeeded=1" in table.stdout, table.stdout
        assert "handovers: accepted=0,offered=0" in table.stdout, table.stdout
