"""End-to-end job latency and throughput of a loopback cluster, beside its raw
baselines, all measured in one run.

The cluster: ``--nodes`` (5) separate ``python -m p2pnode serve --executors
process`` processes on 127.0.0.1, bootstrapped from node 0 and fully
discovered before anything is timed.  Jobs are submitted and awaited through
each node's control socket (``ControlClient``), never through the CLI, so
Python start-up is not measured.  The job is ``command: [true]``, count 1.

Measured, in this order:

1. raw baselines, with no cluster running (so they do not compete for CPU):
   gossipsub hop latency and burst msgs/s between ``--nodes`` processes and
   the point-to-point frame round trip (``bench/bench_gossip.py``'s own
   functions), the raw stream throughput (frames/s echoed between two
   processes over the same ``Libp2pTransport`` stack, 64 in flight, both
   directions counted: ``raw_frames_per_s``), and a bare
   ``trio.run_process(["true"])`` spawn + wait, and the node's own process
   executor running the same task in-process (``--sandbox``, default bwrap as
   ``serve``): what of a job's latency is the executor, not the protocol; and
   the sandbox floor, ``bwrap`` with the executor's mounts running
   ``/bin/true`` (``sandbox_floor_p50_ms``): what of the executor is bwrap's;
   and one durable commit of the node's store (``commit_p50_ms``): a job's
   critical path holds several (owner: submit, grant, result; holder: accept);
2. latency: ``--jobs`` (200) jobs one at a time, the owner rotating over the
   nodes, timed from just before ``submit`` to the terminal ``job_state``
   notification; after ``--warmup`` untimed jobs (first dials, stream setup);
3. throughput: ``--concurrent`` (200) jobs submitted at once, spread evenly
   over the owners; jobs/s = jobs / (last terminal notification - first submit).
   A node's control socket serves 32 connections at once, so at most 24
   submits or waits per node are open together (a job waited for after it
   ended counts as ending when its wait began: an upper bound).

Messages per job come from the ``stats`` control op of every node (frames the
protocol core sent, by type): the delta over each phase, divided by its jobs.
The "net" figure leaves out the peer-exchange types (``hello``, ``peers``), the
background traffic every node sends each gossip interval whatever the load.

The raw gossip hop is paced ``--gossip-interval`` (0.2 s) apart, not
bench_gossip's default 0.05 s: on a small machine 5 py-libp2p hosts deliver
only some 5-20 msgs/s, so 20 msgs/s measures queueing behind a backlog
(seconds, with losses), not a hop.  The burst figure gives the capacity.

Goals (issue 16), each printed as a ratio against its same-run baseline:
p50 <= 6x (raw frame round trip + bare spawn); p99 <= 2x p50; jobs/s x frames
per job (all frames the cores sent during the burst) >= 50 % of
``raw_frames_per_s`` with ``--concurrent`` in flight; frames per job under
load <= 1.1x sequential (both without the peer-exchange background).

Usage: ``python bench/bench_cluster.py [--quick] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

import bench_gossip
from common import (
    LoopbackCluster,
    ServeNode,
    exit_on_sigterm,
    fmt,
    percentile,
    print_table,
)

from p2pnode.control import MAX_CONNECTIONS, ControlClient

FLOOR_P50_MS = 150.0
# Issue 16's goals, as ratios against baselines measured in the same run.
GOAL_P50_OVER_FLOOR = 6.0  # job p50 / (raw frame RTT p50 + bare spawn p50)
GOAL_P99_OVER_P50 = 2.0
GOAL_FRAME_RATE_SHARE = 0.5  # jobs/s x frames per job / raw_frames_per_s
GOAL_LOAD_FRAMES = 1.1  # frames per job under load / sequential
TERMINAL = frozenset({"completed", "failed", "stopped"})
BACKGROUND_TYPES = frozenset({"hello", "peers"})  # peer exchange, sent whatever the load
TRIVIAL_JOB: dict[str, Any] = {
    "name": "bench-true",
    "type": "batch",
    "count": 1,
    "task": {"engine": {"type": "process", "command": ["true"]}, "timeout": "30s"},
}


@attrs.frozen
class JobTiming:
    total_ms: float  # submit -> terminal notification
    granted_ms: float  # submit -> lease_granted (auction + grant); NaN if not seen
    state: str
    reason: str


async def run_job(
    client: ControlClient, timeout: float = 60.0, slots: trio.CapacityLimiter | None = None
) -> JobTiming:
    """Submit the trivial job to ``client``'s node and wait for its end.

    ``slots`` bounds this node's control connections (the socket serves
    ``MAX_CONNECTIONS`` at once and answers more with "busy"): the submit and
    the wait each hold one while open.  A wait that begins after the job ended
    sees it terminal at once, so its time is an upper bound."""
    granted = math.nan
    end: float | None = None
    state, reason = "unknown", ""
    slots = slots or trio.CapacityLimiter(1)
    with trio.fail_after(timeout):
        t0 = time.perf_counter()
        async with slots:
            job_id = (await client.call("submit", spec=TRIVIAL_JOB))["job_id"]
        async with slots:
            async for item in client.stream("wait", job_id=job_id, timeout=timeout):
                now = time.perf_counter()
                if "event" in item:
                    event = item["event"]
                    if event.get("kind") == "lease_granted" and math.isnan(granted):
                        granted = (now - t0) * 1000
                    elif event.get("kind") == "job_state" and event.get("state") in TERMINAL:
                        end = now  # the notification itself; the describe answer follows
                else:
                    view = item["result"]
                    state, reason = str(view["state"]), str(view.get("reason") or "")
                    if end is None:  # already terminal when the wait began
                        end = now
    assert end is not None
    return JobTiming((end - t0) * 1000, granted, state, reason)


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far (its children not
    included: a job's own process is not the node's cost)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cluster_stats(nodes: list[ServeNode]) -> dict[str, float]:
    """Frames sent by all nodes' protocol cores, by type, plus transport
    counters, store commits (``_store_commits``; 0 from a node that predates
    the counter) and the serve processes' CPU seconds (``_cpu_s``)."""
    totals: dict[str, float] = {}
    for node in nodes:
        if node.proc is not None:
            totals["_cpu_s"] = totals.get("_cpu_s", 0) + process_cpu_s(node.proc.pid)
        stats = await node.client.call("stats")
        commits = stats.get("store", {}).get("commits", 0)
        totals["_store_commits"] = totals.get("_store_commits", 0) + commits
        for kind, count in stats["sent_by_type"].items():
            totals[kind] = totals.get(kind, 0) + count
        totals["_frames"] = totals.get("_frames", 0) + stats["frames_sent"]
        for key in ("published", "sent"):
            totals[f"_transport_{key}"] = (
                totals.get(f"_transport_{key}", 0) + stats["transport"][key]
            )
    return totals


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def net_frames(frames: dict[str, float]) -> float:
    """Frames of a phase without the peer-exchange background (measured by type)."""
    return frames.get("_frames", 0) - sum(frames.get(t, 0) for t in BACKGROUND_TYPES)


# --- phases ---------------------------------------------------------------------------


async def spawn_baseline(count: int) -> list[float]:
    """A bare spawn + wait of ``true``: the floor any process job pays."""
    for _ in range(3):  # warm the page cache / fork path
        await trio.run_process(["true"])
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        await trio.run_process(["true"])
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


async def executor_baseline(sandbox: str, count: int) -> list[float]:
    """The node's own process executor running the trivial task in-process
    (work dir, limits wrapper, sandbox if any, outputs), timed to its result
    as the runtime sees it (the cleanup it defers runs after): the part of a
    job's latency that is not the protocol."""
    from p2pnode.blobs import BlobStore
    from p2pnode.executor import Cleanup, install_afterwards
    from p2pnode.executors.process import ProcessExecutor
    from protocols.events import StartExecution

    with tempfile.TemporaryDirectory(prefix="p2pnode-bench-") as root:
        executor = ProcessExecutor(root, BlobStore(root), max_output_bytes=1 << 20, sandbox=sandbox)
        task = {"engine": {"type": "process", "command": ["true"]}, "timeout": 30_000}
        samples = []
        for i in range(count + 3):  # the first few warm the caches
            start = StartExecution(
                f"bench/0/{i}", job_id="bench", slot=0, task=task, env={}, timeout=30
            )
            afterwards: list[Cleanup] = []  # as the runtime: cleanup after the result
            install_afterwards(afterwards)
            t0 = time.perf_counter()
            result = await executor.run(start)
            if i >= 3:
                samples.append((time.perf_counter() - t0) * 1000)
            for cleanup in afterwards:
                await cleanup()
            if result.status != "succeeded":
                raise RuntimeError(f"executor baseline failed: {result.error}")
        return samples


def commit_baseline(count: int) -> list[float]:
    """One durable write of the node's own store (``SqliteStore.apply``: WAL,
    ``synchronous=FULL``, a fsync per batch) in a data dir beside the nodes':
    a job's critical path holds several (persist before send)."""
    from p2pnode.store import SqliteStore
    from protocols.events import Persist

    with tempfile.TemporaryDirectory(prefix="p2pnode-bench-") as root:
        store = SqliteStore(Path(root) / "node.db")
        try:
            samples = []
            for i in range(count + 3):
                record = Persist("jobs", f"bench-{i % 8}", {"state": "running", "n": i})
                t0 = time.perf_counter()
                store.apply([record])
                if i >= 3:
                    samples.append((time.perf_counter() - t0) * 1000)
            return samples
        finally:
            store.close()


async def sandbox_floor(sandbox: str, count: int) -> list[float]:
    """bubblewrap's own floor: ``bwrap <the executor's mounts> /bin/true``,
    spawned and awaited the executor's way (no workdir, limits wrapper,
    cgroup, outputs or cleanup).  Empty with ``--sandbox none``."""
    from p2pnode.executors.sandbox import TASK_UID_BASE, open_sandbox
    from p2pnode.executors.spawn import spawn

    if sandbox == "none":
        return []
    with tempfile.TemporaryDirectory(prefix="p2pnode-bench-") as root:
        box = open_sandbox(sandbox, Path(root))
        assert box is not None
        work = Path(root) / "work" / "floor"
        (work / "inputs").mkdir(parents=True)
        box.prepare(work, TASK_UID_BASE)
        argv = box.argv(
            workdir=work, inputs=work / "inputs", network="none", uid=TASK_UID_BASE,
            command=["/bin/true"],
        )
        samples = []
        for i in range(count + 3):  # the first few warm the caches
            t0 = time.perf_counter()
            child = spawn(argv, cwd=work, env={"PATH": "/usr/bin:/bin"})
            async with trio.open_nursery() as nursery:
                nursery.start_soon(child.stdout.receive_some)
                nursery.start_soon(child.stderr.receive_some)
                returncode = await child.wait()
            await child.stdout.aclose()
            await child.stderr.aclose()
            if returncode != 0:
                raise RuntimeError(f"sandbox floor: bwrap exited {returncode}")
            if i >= 3:
                samples.append((time.perf_counter() - t0) * 1000)
        return samples


async def latency_phase(
    nodes: list[ServeNode], jobs: int, warmup: int
) -> tuple[list[JobTiming], dict[str, float]]:
    clients = [n.client for n in nodes]
    for i in range(warmup):
        await run_job(clients[i % len(clients)])
    before = await cluster_stats(nodes)
    timings = [await run_job(clients[i % len(clients)]) for i in range(jobs)]
    return timings, delta(await cluster_stats(nodes), before)


async def throughput_phase(
    nodes: list[ServeNode], jobs: int
) -> tuple[float, list[JobTiming], dict[str, float]]:
    clients = [n.client for n in nodes]
    # Below the control socket's MAX_CONNECTIONS (32), with room for `stats`.
    slots = [trio.CapacityLimiter(min(24, MAX_CONNECTIONS - 4)) for _ in nodes]
    results: list[JobTiming] = []

    async def one(i: int) -> None:
        node = i % len(clients)
        results.append(await run_job(clients[node], timeout=300, slots=slots[node]))

    before = await cluster_stats(nodes)
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(jobs):
            nursery.start_soon(one, i)
    elapsed = time.perf_counter() - t0
    return elapsed, results, delta(await cluster_stats(nodes), before)


# --- main -------------------------------------------------------------------------------


def summarize(args: argparse.Namespace) -> dict[str, Any]:
    load = os.getloadavg()[0]
    out: dict[str, Any] = {
        "nodes": args.nodes,
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "load_before": load,
    }
    print(f"machine: {os.cpu_count()} CPUs, load average {load:.2f} before the run")
    print(f"raw baselines: {args.nodes} separate processes, loopback", flush=True)
    gossip_args = argparse.Namespace(
        size=256,
        count=args.gossip_count,
        interval=args.gossip_interval,
        burst=args.burst,
        frames=args.raw_frames,
    )
    out["gossip_interval"] = args.gossip_interval
    out["gossip"] = bench_gossip.bench_gossip(args.nodes, gossip_args)
    out["p2p_stream"] = bench_gossip.bench_p2p(gossip_args)
    out["raw_frames_per_s"] = out["p2p_stream"]["frames_per_s"]
    out["raw_cpu_ms_per_frame"] = out["p2p_stream"]["cpu_ms_per_frame"]
    out["raw_cpu_ms_per_frame_alone"] = out["p2p_stream"]["cpu_ms_per_frame_alone"]
    spawn = trio.run(spawn_baseline, args.spawns)
    children_cpu = children_cpu_s()
    executor = trio.run(executor_baseline, args.sandbox, max(10, args.spawns // 4))
    # executor_baseline runs 3 warm-up executions beside its samples.
    out["execution_children_cpu_ms"] = (
        (children_cpu_s() - children_cpu) * 1000 / (len(executor) + 3)
    )
    floor = trio.run(sandbox_floor, args.sandbox, max(10, args.spawns // 4))
    out["sandbox"] = args.sandbox
    out["sandbox_floor_p50_ms"] = statistics.median(floor) if floor else math.nan
    out["commit_p50_ms"] = statistics.median(commit_baseline(max(20, args.spawns // 2)))
    out["executor_p50_ms"] = statistics.median(executor)
    out["spawn_p50_ms"] = statistics.median(spawn)
    out["spawn_p99_ms"] = percentile(spawn, 0.99)

    print(f"cluster: {args.nodes} x `p2pnode serve --executors process`", flush=True)
    sandbox_args = ["--sandbox", args.sandbox] if args.sandbox != "bwrap" else []
    with LoopbackCluster(args.nodes, executors="process", extra_args=sandbox_args) as cluster:
        nodes = cluster.nodes
        timings, seq_frames = trio.run(latency_phase, nodes, args.jobs, args.warmup)
        elapsed, burst, burst_frames = trio.run(throughput_phase, nodes, args.concurrent)

    lat = [t.total_ms for t in timings if t.state == "completed"]
    grant = [t.granted_ms for t in timings if not math.isnan(t.granted_ms)]
    failed = [t for t in [*timings, *burst] if t.state != "completed"]
    out.update(
        jobs=args.jobs,
        job_p50_ms=statistics.median(lat) if lat else math.nan,
        job_p99_ms=percentile(lat, 0.99),
        grant_p50_ms=statistics.median(grant) if grant else math.nan,
        seq_msgs_per_job=seq_frames.get("_frames", 0) / max(1, args.jobs),
        seq_msgs_per_job_net=net_frames(seq_frames) / max(1, args.jobs),
        seq_sent_by_type={
            k: v / max(1, args.jobs) for k, v in sorted(seq_frames.items()) if k[0] != "_"
        },
        concurrent=args.concurrent,
        throughput_jobs_per_s=args.concurrent / elapsed,
        throughput_elapsed_s=elapsed,
        burst_p50_ms=statistics.median([t.total_ms for t in burst]) if burst else math.nan,
        burst_msgs_per_job=burst_frames.get("_frames", 0) / max(1, args.concurrent),
        burst_msgs_per_job_net=net_frames(burst_frames) / max(1, args.concurrent),
        burst_sent_by_type={
            k: v / max(1, args.concurrent) for k, v in sorted(burst_frames.items()) if k[0] != "_"
        },
        burst_transport=(
            burst_frames.get("_transport_sent", 0),
            burst_frames.get("_transport_published", 0),
        ),
        failed=[attrs.asdict(t) for t in failed],
        # Store commits and serve-process CPU per job (all nodes, over each
        # phase): what group commit saves under load.
        seq_commits_per_job=seq_frames.get("_store_commits", 0) / max(1, args.jobs),
        burst_commits_per_job=burst_frames.get("_store_commits", 0) / max(1, args.concurrent),
        seq_node_cpu_ms_per_job=seq_frames.get("_cpu_s", 0) * 1000 / max(1, args.jobs),
        burst_node_cpu_ms_per_job=burst_frames.get("_cpu_s", 0) * 1000 / max(1, args.concurrent),
        load_after=os.getloadavg()[0],
    )
    out["goals"] = goals(out)
    out["floors"] = floors(out)
    return out


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# A batch job's critical path, submit to completion (bench/trace_job.py shows
# each step): six one-way frames (ask, bid, lease_grant, lease_accept,
# renew_ack, execution_result) and five durable commits, each before a send
# (the owner's before its asks, its grant, its renew_ack and its completion;
# the holder's before its accept).
PATH_FRAMES = 6
PATH_COMMITS = 5


def floors(r: dict[str, Any]) -> dict[str, float]:
    """What the latency and throughput goals are up against, measured apart
    from p2pnode's own work in this run: the stack's and the sandbox's costs
    that a job cannot avoid, by the protocol's shape.

    * Latency: ``PATH_FRAMES`` one-way frames at half the raw round trip,
      ``PATH_COMMITS`` durable commits, and the executor in-process (its
      workdir, bwrap, the task).  Their sum over the goal's baseline (raw RTT
      + bare spawn) is the ratio the job would have if p2pnode's handling
      cost nothing.
    * Throughput: CPU per job if p2pnode cost nothing: the job's frames at the
      raw stack's CPU per frame (both ends), plus the sandboxed execution's
      processes.  Over the host's cores that caps jobs/s; the goal needs
      ``GOAL_FRAME_RATE_SHARE`` x ``raw_frames_per_s`` / frames per job."""
    baseline = r["p2p_stream"]["rtt_p50_ms"] + r["spawn_p50_ms"]
    frames_ms = PATH_FRAMES * r["p2p_stream"]["rtt_p50_ms"] / 2
    commits_ms = PATH_COMMITS * r["commit_p50_ms"]
    path_floor = frames_ms + commits_ms + r["executor_p50_ms"]
    frames_per_job = r["burst_msgs_per_job"]
    # A cluster's frames are sparse on each connection: each pays its own
    # wake-up and read, as the round-trip test's do (the flood's batch up).
    stack_cpu = frames_per_job * r["raw_cpu_ms_per_frame_alone"]
    job_cpu_floor = stack_cpu + r["execution_children_cpu_ms"]
    cores = os.cpu_count() or 1
    return {
        "latency_frames_ms": frames_ms,
        "latency_commits_ms": commits_ms,
        "latency_executor_ms": r["executor_p50_ms"],
        "latency_floor_ms": path_floor,
        "latency_floor_over_baseline": path_floor / baseline,
        "latency_p2pnode_ms": r["job_p50_ms"] - path_floor,
        "cpu_stack_ms_per_job": stack_cpu,
        "cpu_execution_ms_per_job": r["execution_children_cpu_ms"],
        "cpu_floor_ms_per_job": job_cpu_floor,
        "cpu_node_ms_per_job": r["burst_node_cpu_ms_per_job"],
        "cores": cores,
        "jobs_per_s_cap": cores * 1000 / job_cpu_floor,
        "jobs_per_s_goal": GOAL_FRAME_RATE_SHARE * r["raw_frames_per_s"] / frames_per_job,
    }


def goals(r: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 16's latency and throughput goals: measured ratio vs its bound."""
    floor = r["p2p_stream"]["rtt_p50_ms"] + r["spawn_p50_ms"]
    frame_rate = r["throughput_jobs_per_s"] * r["burst_msgs_per_job"]
    seq_net = r["seq_msgs_per_job_net"]
    rows = [
        (
            "job p50 / (raw frame RTT p50 + bare spawn p50)",
            r["job_p50_ms"] / floor,
            "<=",
            GOAL_P50_OVER_FLOOR,
        ),
        ("job p99 / job p50", r["job_p99_ms"] / r["job_p50_ms"], "<=", GOAL_P99_OVER_P50),
        (
            f"jobs/s x frames per job / raw_frames_per_s ({r['concurrent']} in flight)",
            frame_rate / r["raw_frames_per_s"],
            ">=",
            GOAL_FRAME_RATE_SHARE,
        ),
        (
            "frames per job under load / sequential (net)",
            r["burst_msgs_per_job_net"] / seq_net if seq_net else math.nan,
            "<=",
            GOAL_LOAD_FRAMES,
        ),
    ]
    return [
        {
            "goal": name,
            "ratio": ratio,
            "bound": f"{op} {bound}",
            "met": ratio <= bound if op == "<=" else ratio >= bound,
        }
        for name, ratio, op, bound in rows
    ]


def report(r: dict[str, Any]) -> None:
    g, p2p = r["gossip"], r["p2p_stream"]
    hop, spawn = g["hop_p50_ms"], r["spawn_p50_ms"]
    p50 = r["job_p50_ms"]
    verdict = "ok" if p50 <= FLOOR_P50_MS else "OVER"
    rows = [
        [
            "raw gossipsub hop",
            fmt(hop, "ms", 2),
            fmt(g["hop_p99_ms"], "ms", 2),
            f"{r['nodes']} procs, {g['latency_delivery']:.0%} delivered, "
            f"1 per {r['gossip_interval'] * 1000:.0f} ms",
        ],
        [
            "raw p2p frame round trip",
            fmt(p2p["rtt_p50_ms"], "ms", 2),
            fmt(p2p["rtt_p99_ms"], "ms", 2),
            "Libp2pTransport.send, stream mode",
        ],
        [
            "bare spawn+wait `true`",
            fmt(spawn, "ms", 2),
            fmt(r["spawn_p99_ms"], "ms", 2),
            "trio.run_process",
        ],
        [
            "job submit->completed",
            fmt(p50, "ms"),
            fmt(r["job_p99_ms"], "ms"),
            f"{r['jobs']} sequential, floor p50 <= {FLOOR_P50_MS:.0f} ms: {verdict}",
        ],
        ["  of which submit->lease_granted", fmt(r["grant_p50_ms"], "ms"), "", "auction + grant"],
        [
            "job under load (in flight)",
            fmt(r["burst_p50_ms"], "ms"),
            "",
            f"{r['concurrent']} submitted at once",
        ],
    ]
    print()
    print_table("latency", ["measure", "p50", "p99", "note"], rows)
    print()
    derived = [
        ["job p50 / raw hop p50", f"{p50 / hop:.1f} x" if hop else "n/a"],
        ["job p50 / raw p2p round trip p50", f"{p50 / p2p['rtt_p50_ms']:.1f} x"],
        ["protocol overhead: job p50 - spawn p50", fmt(p50 - spawn, "ms")],
        [
            f"executor alone p50 (in-process, sandbox {r['sandbox']})",
            fmt(r["executor_p50_ms"], "ms"),
        ],
        ["protocol path: job p50 - executor p50", fmt(p50 - r["executor_p50_ms"], "ms")],
    ]
    derived.append(
        ["durable store commit p50 (SqliteStore.apply, fsync)", fmt(r["commit_p50_ms"], "ms", 2)]
    )
    if not math.isnan(r["sandbox_floor_p50_ms"]):
        floor = r["sandbox_floor_p50_ms"]
        derived += [
            ["sandbox floor p50 (`bwrap <same mounts> /bin/true`)", fmt(floor, "ms")],
            [
                "executor p50 above the sandbox floor",
                f"{fmt(r['executor_p50_ms'] - floor, 'ms')} ({r['executor_p50_ms'] / floor:.2f} x)",
            ],
        ]
    print_table("ratios", ["derived", "value"], derived)
    print()
    tsent, tpub = r["burst_transport"]
    rows = [
        [
            "cluster throughput",
            f"{r['throughput_jobs_per_s']:.1f} jobs/s",
            f"{r['concurrent']} jobs in {r['throughput_elapsed_s']:.1f} s over {r['nodes']} owners",
        ],
        [
            "store commits per job",
            f"{r['burst_commits_per_job']:.1f} concurrent",
            f"sequential: {r['seq_commits_per_job']:.1f} (all nodes; group commit under load)",
        ],
        [
            "node CPU per job (serve processes)",
            f"{r['burst_node_cpu_ms_per_job']:.1f} ms concurrent",
            f"sequential: {r['seq_node_cpu_ms_per_job']:.1f} ms (utime + stime, all nodes)",
        ],
        [
            "messages per job (sequential)",
            f"{r['seq_msgs_per_job']:.1f}",
            f"without peer exchange: {r['seq_msgs_per_job_net']:.1f}",
        ],
        [
            "messages per job (concurrent)",
            f"{r['burst_msgs_per_job']:.1f}",
            f"without peer exchange: {r['burst_msgs_per_job_net']:.1f}; transport "
            f"{tsent / max(1, r['concurrent']):.1f} sent + "
            f"{tpub / max(1, r['concurrent']):.1f} published /job",
        ],
        [
            "raw gossipsub burst",
            f"{g['msgs_per_s']:.0f} msgs/s",
            f"per receiver, {g['burst_delivery']:.0%} delivered",
        ],
    ]
    print_table("throughput", ["measure", "value", "note"], rows)
    by_type = ", ".join(f"{k} {v:.2f}" for k, v in r["seq_sent_by_type"].items())
    print(f"\nframes per sequential job by type: {by_type}")
    by_type = ", ".join(f"{k} {v:.2f}" for k, v in r["burst_sent_by_type"].items())
    print(f"frames per concurrent job by type: {by_type}")
    print(
        f"\nraw stream throughput: {r['raw_frames_per_s']:.0f} frames/s; cluster under load: "
        f"{r['throughput_jobs_per_s'] * r['burst_msgs_per_job']:.0f} frames/s"
    )
    print()
    print_table(
        "issue 16 goals (ratios against this run's baselines)",
        ["goal", "ratio", "bound", "met"],
        [
            [g["goal"], f"{g['ratio']:.2f}", g["bound"], "yes" if g["met"] else "NO"]
            for g in r["goals"]
        ],
    )
    f = r["floors"]
    print()
    print_table(
        "floors: the stack's and the sandbox's own costs, measured apart in this run",
        ["measure", "value", "note"],
        [
            [
                f"{PATH_FRAMES} one-way frames on the path",
                fmt(f["latency_frames_ms"], "ms", 2),
                "raw frame RTT / 2 each (py-libp2p, no p2pnode core)",
            ],
            [
                f"{PATH_COMMITS} durable commits on the path",
                fmt(f["latency_commits_ms"], "ms", 2),
                "SqliteStore.apply p50 each (persist before send)",
            ],
            [
                "executor in-process",
                fmt(f["latency_executor_ms"], "ms", 2),
                "workdir, sandbox, task",
            ],
            [
                "latency floor (sum)",
                fmt(f["latency_floor_ms"], "ms", 2),
                f"{f['latency_floor_over_baseline']:.2f} x the goal's baseline "
                f"(bound {GOAL_P50_OVER_FLOOR:g} x); job p50 is "
                f"{fmt(f['latency_p2pnode_ms'], 'ms')} above it",
            ],
            [
                "CPU per job, stack only",
                fmt(f["cpu_stack_ms_per_job"], "ms", 2),
                f"{r['burst_msgs_per_job']:.1f} frames x {r['raw_cpu_ms_per_frame_alone']:.3f} ms "
                f"(raw stream, send + receive, one in flight; "
                f"{r['raw_cpu_ms_per_frame']:.3f} ms in a flood)",
            ],
            [
                "CPU per job, sandboxed execution",
                fmt(f["cpu_execution_ms_per_job"], "ms", 2),
                "the executor's child processes (sh, bwrap, setpriv, task)",
            ],
            [
                "jobs/s cap if p2pnode cost nothing",
                f"{f['jobs_per_s_cap']:.0f} jobs/s",
                f"{f['cores']} cores / {fmt(f['cpu_floor_ms_per_job'], 'ms', 2)} per job; "
                f"the goal needs {f['jobs_per_s_goal']:.0f} jobs/s; the nodes spent "
                f"{fmt(f['cpu_node_ms_per_job'], 'ms', 1)} per job",
            ],
        ],
    )
    if r["failed"]:
        print(f"\n{len(r['failed'])} job(s) did not complete, e.g. {r['failed'][0]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--jobs", type=int, default=200, help="sequential latency jobs")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--concurrent", type=int, default=200, help="throughput jobs")
    parser.add_argument("--spawns", type=int, default=200, help="bare spawn samples")
    parser.add_argument("--gossip-count", type=int, default=300, help="raw hop samples")
    parser.add_argument("--burst", type=int, default=2000, help="raw gossip burst size")
    parser.add_argument("--raw-frames", type=int, default=3000, help="raw stream flood size")
    parser.add_argument("--gossip-interval", type=float, default=0.2, help="raw hop pacing (s)")
    parser.add_argument(
        "--sandbox", choices=["bwrap", "none"], default="bwrap", help="the nodes' sandbox"
    )
    parser.add_argument("--json", action="store_true", help="also print results as JSON")
    args = parser.parse_args()
    if args.quick:
        args.jobs, args.warmup, args.concurrent, args.spawns = 20, 5, 20, 30
        args.gossip_count, args.burst, args.raw_frames = 30, 300, 500
    exit_on_sigterm()
    try:
        results = summarize(args)
    except KeyboardInterrupt:
        print("interrupted; every node was stopped", file=sys.stderr)
        sys.exit(130)
    report(results)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    sys.exit(1 if results["failed"] else 0)


if __name__ == "__main__":
    main()
