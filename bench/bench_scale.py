"""Many peers on one host: view convergence, idle CPU and RSS, and 1,000 jobs
through several owners (issue 16, "Scale on one host").

Measured, in this order, all in one run:

1. baseline (measured last, alone): ``--nodes`` bare py-libp2p hosts (the
   node's own host + gossipsub stack, ``p2pnode/net/stack.py``, subscribed to
   the announce topic and each connected to ``min(view_size, N-1)`` others, as
   a node's view is): their idle CPU per process is what the library costs
   before p2pnode does anything;
2. ``--nodes`` ``p2pnode serve --executors process`` processes on 127.0.0.1,
   node 0 first, the others bootstrapped from it all at once; *convergence*:
   seconds until every node's view holds ``min(view_size, N-1)`` peers;
3. idle CPU per process (utime + stime from ``/proc/<pid>/stat`` over
   ``--idle-window`` seconds, as a percentage of one core), once the host has
   settled (``--settle`` s after convergence, then until its 1-minute load is
   at most ``--quiet-load``, ``--settle-max`` s in all), RSS
   (``/proc/<pid>/status``) and the TCP connections each process holds (what
   the idle CPU grows with), after the views converged;
4. a *joiner*: one more node bootstrapped from a random node; seconds until its
   view holds ``min(view_size, N)`` peers (goal: within 10 s);
5. ``--jobs`` (1,000) trivial jobs through one owner, then the same number
   spread over ``--owners`` (4) owners, ``--in-flight`` (24) at a time in both
   runs (one node serves at most 32 control connections at once); jobs that
   end in any state but ``completed`` (or never end) are *lost* (goal: 0);
   jobs/s several owners vs one (goal: at least 1.0x).

The JSON's ``goals`` holds each goal as its value, bound and whether it is met.

Usage: ``python bench/bench_scale.py [--nodes N] [--jobs J] [--json]``.  The
default (10 nodes, 200 jobs) is what ``make bench`` runs; issue 16's numbers
come from ``--nodes 100 --jobs 1000``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package

from common import (
    REPO,
    ClusterError,
    LoopbackCluster,
    ServeNode,
    child_env,
    exit_on_sigterm,
    fmt,
    print_table,
    stop_process,
)

from protocols.config import NodeConfig

VIEW_SIZE = NodeConfig(node_id="x").view_size
CLK_TCK = os.sysconf("SC_CLK_TCK")
TERMINAL = frozenset({"completed", "failed", "stopped"})
JOIN_GOAL_S = 10.0
IDLE_GOAL_PCT = 0.3
TRIVIAL_JOB: dict[str, Any] = {
    "name": "scale-true",
    "type": "batch",
    "count": 1,
    "task": {"engine": {"type": "process", "command": ["true"]}, "timeout": "60s"},
}


# --- /proc ---------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (its threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def tcp_connections(pid: int) -> int:
    """ESTABLISHED TCP sockets ``pid`` holds (its libp2p connections: the
    control socket is a Unix socket)."""
    established = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "01":  # TCP_ESTABLISHED
                    established.add(fields[9])  # inode
    count = 0
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:[") and target[8:-1] in established:
                    count += 1
    return count


def idle_cpu(pids: list[int], window: float) -> list[float]:
    """Percent of one core each process used over ``window`` seconds."""
    before = [cpu_seconds(p) for p in pids]
    t0 = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - t0
    return [100 * (cpu_seconds(p) - b) / elapsed for p, b in zip(pids, before, strict=True)]


def host_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole host, all cores (``/proc/stat``)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if not ordered:
        return {"mean": math.nan, "median": math.nan, "max": math.nan}
    return {
        "mean": sum(ordered) / len(ordered),
        "median": ordered[len(ordered) // 2],
        "max": ordered[-1],
    }


# --- 1. bare py-libp2p hosts -----------------------------------------------------


def bare_host_main(index: int, root: Path, peers: int, heartbeat: int) -> None:
    """One bare host (``--bare-host``): listen, subscribe, write its address,
    connect to ``peers`` hosts of lower index, then idle until killed."""
    from p2pnode.identity import load_or_create_key, peer_id_of
    from p2pnode.net.stack import build_host, build_pubsub, running_stack
    from protocols.config import ANNOUNCE_TOPIC

    key = load_or_create_key(root / f"bare{index}")

    async def main() -> None:
        import multiaddr
        from libp2p.peer.peerinfo import info_from_p2p_addr

        listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
        host = build_host(key, listen)
        pubsub, router = build_pubsub(host, heartbeat)
        async with running_stack(host, pubsub, router, listen):
            await pubsub.subscribe(ANNOUNCE_TOPIC)
            addr = f"{host.get_addrs()[0]}"
            if "/p2p/" not in addr:
                addr += f"/p2p/{peer_id_of(key)}"
            tmp = root / f".bare{index}.tmp"
            tmp.write_text(addr)
            tmp.replace(root / f"bare{index}.addr")
            for other in range(max(0, index - peers), index):
                path = root / f"bare{other}.addr"
                while not path.exists():
                    await trio.sleep(0.05)
                info = info_from_p2p_addr(multiaddr.Multiaddr(path.read_text()))
                with trio.move_on_after(30), contextlib.suppress(Exception):
                    await host.connect(info)  # a failed dial: one peer fewer
            (root / f"bare{index}.ready").touch()
            await trio.sleep_forever()

    trio.run(main)


def bench_bare_hosts(n: int, window: float, heartbeat: int = 1) -> dict[str, Any]:
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="p2pnode-bare-"))
    peers = min(VIEW_SIZE, n - 1)
    procs = []
    try:
        for i in range(n):
            (root / f"bare{i}").mkdir(mode=0o700)
            cmd = [sys.executable, __file__, "--bare-host", str(i), str(root), str(peers)]
            cmd.append(str(heartbeat))
            procs.append(
                subprocess.Popen(
                    cmd,
                    env=child_env(),
                    cwd=str(REPO),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 120 + 5 * n
        while not all((root / f"bare{i}.ready").exists() for i in range(n)):
            died = [i for i, p in enumerate(procs) if p.poll() is not None]
            if time.monotonic() > deadline or died:
                raise ClusterError(f"bare hosts did not start (exited: {died})")
            time.sleep(0.5)
        time.sleep(min(10.0, window))  # let start-up work settle
        cpu = idle_cpu([p.pid for p in procs], window)
        rss = [rss_bytes(p.pid) for p in procs]
        return {
            "cpu_pct": summary(cpu),
            "connections": summary([float(tcp_connections(p.pid)) for p in procs]),
            "rss_mb": summary([r / 2**20 for r in rss]),
            "load_idle": os.getloadavg()[0],
        }
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in procs:
            stop_process(proc, grace=5)
        shutil.rmtree(root, ignore_errors=True)


# --- 2-4. the cluster ---------------------------------------------------------------


CALL_TIMEOUT_S = 10.0  # one control call; a node that cannot answer in time is "unanswered"
CALL_TRIES = 3


async def view_size_of(node: ServeNode) -> int | None:
    """Peers in ``node``'s view (``peers`` op: not ``self``, not ``gone``), or
    None if its control socket did not answer in ``CALL_TRIES`` tries: a busy
    node under load is not an empty view, so it is reported apart."""
    for attempt in range(CALL_TRIES):
        with trio.move_on_after(CALL_TIMEOUT_S):
            try:
                peers = await node.client.call("peers")
            except Exception:  # refused / dropped socket: retry after a pause
                await trio.sleep(0.2 * (attempt + 1))
                continue
            return sum(1 for p in peers if not p["self"] and p["status"] != "gone")
    return None


async def view_sizes(nodes: list[ServeNode]) -> list[int | None]:
    """Each node's view size (None: it did not answer), asked 8 at a time."""
    sizes: list[int | None] = [None] * len(nodes)
    limiter = trio.CapacityLimiter(8)

    async def one(i: int) -> None:
        async with limiter:
            sizes[i] = await view_size_of(nodes[i])

    async with trio.open_nursery() as nursery:
        for i in range(len(nodes)):
            nursery.start_soon(one, i)
    return sizes


async def gossip_counts(nodes: list[ServeNode]) -> list[dict[str, int]]:
    """Each node's gossipsub control counters (``transport.gossip_*`` of
    ``stats``; absent where the node does not count them) and frames in and
    out by type (``frames_in_<type>``, ``frames_out_<type>``); empty where
    the node did not answer."""
    counts: list[dict[str, int]] = [{} for _ in nodes]
    limiter = trio.CapacityLimiter(8)

    async def one(i: int) -> None:
        async with limiter:
            with trio.move_on_after(CALL_TIMEOUT_S), contextlib.suppress(Exception):
                stats = await nodes[i].client.call("stats")
                transport = stats.get("transport", {})
                counts[i] = {k: v for k, v in transport.items() if k.startswith("gossip_")}
                # Frames by type, to tell what keeps idle connections busy.
                for kind, v in stats.get("received_by_type", {}).items():
                    counts[i][f"frames_in_{kind}"] = v
                for kind, v in stats.get("sent_by_type", {}).items():
                    counts[i][f"frames_out_{kind}"] = v

    async with trio.open_nursery() as nursery:
        for i in range(len(nodes)):
            nursery.start_soon(one, i)
    return counts


def control_per_minute(
    before: list[dict[str, int]], after: list[dict[str, int]], minutes: float
) -> dict[str, float]:
    """Median over nodes of each gossipsub control count per minute."""
    keys = sorted({k for a in after for k in a})
    out: dict[str, float] = {}
    for k in keys:
        rates = [
            (a[k] - b.get(k, 0)) / minutes
            for a, b in zip(after, before, strict=True)
            if k in a and b
        ]
        if rates:
            out[k.removeprefix("gossip_")] = round(sorted(rates)[len(rates) // 2], 2)
    return out


def view_stats(sizes: list[int | None]) -> dict[str, Any]:
    answered = [s for s in sizes if s is not None]
    return {
        "smallest": min(answered) if answered else None,
        "median": sorted(answered)[len(answered) // 2] if answered else None,
        "unanswered": len(sizes) - len(answered),
    }


def wait_views(nodes: list[ServeNode], want: int, timeout: float) -> tuple[float, list[int | None]]:
    """Seconds until every node's view holds ``want`` peers (inf on timeout).
    A node that did not answer is not converged (nor counted as empty)."""
    t0 = time.monotonic()
    sizes: list[int | None] = []
    while time.monotonic() - t0 < timeout:
        sizes = trio.run(view_sizes, nodes)
        if all(s is not None and s >= want for s in sizes):
            return time.monotonic() - t0, sizes
        time.sleep(0.2)
    return math.inf, sizes


def views_line(sizes: list[int | None]) -> str:
    st = view_stats(sizes)
    line = f"smallest {st['smallest']}, median {st['median']}"
    if st["unanswered"]:
        line += f", {st['unanswered']} node(s) did not answer `peers` ({CALL_TRIES} tries)"
    return line


def settle(least: float, most: float, quiet_load: float) -> float:
    """Wait ``least`` seconds, then until the host's 1-minute load is at most
    ``quiet_load`` (or ``most`` seconds in all); returns the seconds waited.

    Views count entries learnt second hand, so they converge while the
    network is still confirming them: at 100 nodes on 2 cores, dials and
    first hellos kept the host at load 60-90 for 1-2 minutes after
    convergence (a 60 s window there read 1.9 % of a core per process, the
    next ones 0.4, 0.3, 0.26 %).  That is start-up work, not idle work."""
    t0 = time.monotonic()
    time.sleep(least)
    while time.monotonic() - t0 < most and os.getloadavg()[0] > quiet_load:
        time.sleep(5)
    return time.monotonic() - t0


def start_cluster(cluster: LoopbackCluster) -> None:
    """Like ``LoopbackCluster.start`` without waiting for full views."""
    first, *rest = cluster.nodes
    cluster._spawn(first, ())
    cluster._await_addrs([first])
    for node in rest:
        cluster._spawn(node, first.addrs[:1])
    cluster._await_addrs(rest)


# --- 5. jobs ----------------------------------------------------------------------------


async def run_jobs(
    owners: list[ServeNode], jobs: int, in_flight: int, everyone: list[ServeNode]
) -> dict[str, Any]:
    """``jobs`` trivial jobs round-robin over ``owners``, at most ``in_flight``
    at once.  Also where the CPU went meanwhile: the host's busy share and
    the CPU per job of every serve process (``everyone``) and of the owners.
    Several owners can only beat one while the host has CPU to spare."""
    clients = [n.client for n in owners]
    states: dict[str, int] = {}
    latencies: list[float] = []
    limiter = trio.CapacityLimiter(in_flight)

    async def one(i: int) -> None:
        async with limiter:
            client = clients[i % len(clients)]
            state = "lost"
            started = time.perf_counter()
            try:
                job_id = (await client.call("submit", spec=TRIVIAL_JOB))["job_id"]
                with trio.move_on_after(600):
                    async for item in client.stream("wait", job_id=job_id, timeout=600):
                        if "result" in item:
                            state = str(item["result"]["state"])
            except Exception as exc:  # a refused submit or a dropped socket: lost
                state = f"error: {type(exc).__name__}"
            if state == "completed":
                latencies.append(time.perf_counter() - started)
            states[state] = states.get(state, 0) + 1

    pids = [n.proc.pid for n in everyone if n.proc is not None]
    owner_pids = [n.proc.pid for n in owners if n.proc is not None]
    cpu0 = {p: cpu_seconds(p) for p in pids}
    busy0, total0 = host_jiffies()
    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(jobs):
            nursery.start_soon(one, i)
    elapsed = time.perf_counter() - t0
    busy1, total1 = host_jiffies()
    spent = {p: cpu_seconds(p) - cpu0[p] for p in pids}
    completed = states.get("completed", 0)
    latencies.sort()
    return {
        "owners": len(owners),
        "jobs": jobs,
        "elapsed_s": elapsed,
        "jobs_per_s": jobs / elapsed,
        "states": states,
        "lost": jobs - completed,
        "p50_s": latencies[len(latencies) // 2] if latencies else math.nan,
        "p99_s": latencies[int(len(latencies) * 0.99)] if latencies else math.nan,
        # Share of all the host's cores busy (any process) during the run.
        "host_busy_pct": 100 * (busy1 - busy0) / max(1, total1 - total0),
        # CPU of every serve process together per job, and of the owner processes
        # (their share of the executions included: owners bid for work too).
        "cpu_ms_per_job": 1000 * sum(spent.values()) / jobs,
        "owner_cpu_ms_per_job": 1000 * sum(spent[p] for p in owner_pids) / jobs,
    }


def jobs_line(run: dict[str, Any]) -> str:
    return (
        f"{run['jobs_per_s']:.1f} jobs/s, lost {run['lost']}, p50 {run['p50_s']:.2f} s;"
        f" host {run['host_busy_pct']:.0f} % busy, {run['cpu_ms_per_job']:.0f} ms CPU per job"
        f" ({run['owner_cpu_ms_per_job']:.0f} ms in owners)"
    )


def bench_cluster(args: argparse.Namespace) -> dict[str, Any]:
    n = args.nodes
    want = min(VIEW_SIZE, n - 1)
    out: dict[str, Any] = {"view_size": VIEW_SIZE, "want_view": want}
    cluster = LoopbackCluster(n + 1, executors="process", start_timeout=120 + 2 * n)
    joiner = cluster.nodes.pop()  # started later, from a random node
    try:
        t0 = time.monotonic()
        start_cluster(cluster)
        out["start_s"] = time.monotonic() - t0
        print(f"  {n} nodes up in {out['start_s']:.1f} s", flush=True)
        converged, sizes = wait_views(cluster.nodes, want, args.converge_timeout)
        out["converge_s"] = converged
        out["views"] = view_stats(sizes)
        out["view_sizes_min"] = out["views"]["smallest"]
        out["load_converged"] = os.getloadavg()[0]
        print(f"  views of {want}: {fmt(converged, 's')} ({views_line(sizes)})", flush=True)
        out["settle_s"] = settle(args.settle, args.settle_max, args.quiet_load)
        out["load_settled"] = os.getloadavg()[0]
        print(
            f"  settled {out['settle_s']:.0f} s after convergence"
            f" (host load {out['load_settled']:.1f})",
            flush=True,
        )
        pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
        counts0, c0 = trio.run(gossip_counts, cluster.nodes), time.monotonic()
        cpu = idle_cpu(pids, args.idle_window)
        counts1, c1 = trio.run(gossip_counts, cluster.nodes), time.monotonic()
        # Gossipsub control entries, and frames by type, per node and minute
        # while idle (issue 16).
        out["gossip_control_per_min"] = control_per_minute(counts0, counts1, (c1 - c0) / 60)
        # Connections held per process: idle CPU grows with them (issue 16).
        out["connections"] = summary([float(tcp_connections(p)) for p in pids])
        out["load_idle"] = os.getloadavg()[0]  # the host's 1-min load while measuring
        out["idle_cpu_pct"] = summary(cpu)
        out["rss_mb"] = summary([rss_bytes(p) / 2**20 for p in pids])
        print(
            f"  idle CPU per process: {out['idle_cpu_pct']['mean']:.3f} % of a core"
            f" (host load {out['load_idle']:.1f}),"
            f" {out['connections']['mean']:.1f} connections per process",
            flush=True,
        )
        if out["gossip_control_per_min"]:
            control = out["gossip_control_per_min"]
            print(
                "  gossipsub control per node and minute (median):"
                f" {control.get('grafts_sent', 0)} GRAFT, {control.get('prunes_sent', 0)} PRUNE,"
                f" {control.get('ihaves_sent', 0)} IHAVE sent;"
                f" {control.get('grafts_refused', 0)} GRAFTs refused",
                flush=True,
            )

        bootstrap = random.Random(n).choice(cluster.nodes)
        t0 = time.monotonic()
        cluster.nodes.append(joiner)
        cluster._spawn(joiner, bootstrap.addrs[:1])
        cluster._await_addrs([joiner])
        started = time.monotonic() - t0
        joined, jsizes = wait_views([joiner], min(VIEW_SIZE, n), 60.0)
        out["join_s"] = joined
        out["join_start_s"] = started
        out["join_view"] = jsizes[0] if jsizes else None
        answered = out["join_view"] is not None
        view = f"view {out['join_view']}" if answered else "its control socket did not answer"
        print(
            f"  joiner knows {min(VIEW_SIZE, n)} peers after {fmt(joined, 's')} ({view})",
            flush=True,
        )

        nodes = cluster.nodes[:n]
        one = trio.run(run_jobs, nodes[:1], args.jobs, args.in_flight, nodes)
        print(f"  1 owner: {jobs_line(one)}", flush=True)
        owners = nodes[1 : 1 + args.owners]
        several = trio.run(run_jobs, owners, args.jobs, args.in_flight, nodes)
        print(f"  {len(owners)} owners: {jobs_line(several)}", flush=True)
        out["one_owner"], out["several_owners"] = one, several
    finally:
        cluster.stop()
    return out


def goals(r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Issue 16's scale goals as values against their bounds (JSON ``goals``)."""
    c = r["cluster"]
    bare = r["bare_hosts"]
    idle = c["idle_cpu_pct"]["mean"]
    lib = bare["cpu_pct"]["mean"] if bare else math.nan
    lost = c["one_owner"]["lost"] + c["several_owners"]["lost"]
    speedup = c["several_owners"]["jobs_per_s"] / c["one_owner"]["jobs_per_s"]
    return {
        "jobs_lost": {"value": lost, "bound": "== 0", "met": lost == 0},
        "join_s": {
            "value": c["join_s"],
            "bound": f"<= {JOIN_GOAL_S:g}",
            "met": c["join_s"] <= JOIN_GOAL_S,
        },
        "idle_cpu_pct_per_process": {
            "value": idle,
            "bound": f"<= {IDLE_GOAL_PCT} (at 100 peers)",
            "met": idle <= IDLE_GOAL_PCT,
            "nodes": r["nodes"],
            "load": c["load_idle"],
        },
        "several_owners_vs_one_jobs_per_s": {
            "value": speedup,
            "bound": ">= 1.0",
            "met": speedup >= 1.0,
        },
        # Informative: what the goals above depend on.
        "idle_cpu_vs_bare_host": {"value": idle / lib if lib else math.nan, "bound": None},
        "connections_per_process": {
            "value": c.get("connections", {}).get("mean", math.nan),
            "bound": None,
            "bare_host": bare["connections"]["mean"] if bare else None,
        },
    }


def report(r: dict[str, Any]) -> None:
    c = r["cluster"]
    bare = r["bare_hosts"]
    goal = r.get("goals") or goals(r)  # the same values the JSON carries
    idle = goal["idle_cpu_pct_per_process"]["value"]
    lib = bare["cpu_pct"]["mean"] if bare else math.nan
    lost = goal["jobs_lost"]["value"]
    speedup = goal["several_owners_vs_one_jobs_per_s"]["value"]
    rows = [
        [
            "joiner knows min(view_size, N) peers",
            fmt(c["join_s"], "s", 2),
            f"<= {JOIN_GOAL_S:g} s",
            "ok" if c["join_s"] <= JOIN_GOAL_S else "OVER",
        ],
        [
            "all views hold min(view_size, N-1)",
            fmt(c["converge_s"], "s", 2),
            "(informative)",
            "",
        ],
        [
            "idle CPU per serve process",
            fmt(idle, "% core", 3),
            f"<= {IDLE_GOAL_PCT} % (at 100 peers)",
            "ok" if idle <= IDLE_GOAL_PCT else "OVER",
        ],
        ["  of which py-libp2p (bare host)", fmt(lib, "% core", 3), "(baseline)", ""],
        ["  p2pnode / bare host", fmt(idle / lib if lib else math.nan, "x", 2), "", ""],
        *[
            [
                f"  bare host, gossipsub heartbeat {hb} s",
                fmt(b["cpu_pct"]["mean"], "% core", 3),
                "(informative)",
                "",
            ]
            for hb, b in r["bare_hosts_by_heartbeat"].items()
        ],
        [
            "connections per serve process",
            fmt(c["connections"]["mean"], "", 1),
            "(informative)",
            "",
        ],
        ["RSS per serve process", fmt(c["rss_mb"]["mean"], "MB"), "(informative)", ""],
        [
            f"jobs lost of {2 * r['jobs']}",
            str(lost),
            "= 0",
            "ok" if lost == 0 else "LOST",
        ],
        [
            f"{c['several_owners']['owners']} owners / 1 owner jobs/s",
            fmt(speedup, "x", 2),
            ">= 1.0x",
            "ok" if speedup >= 1.0 else "UNDER",
        ],
        *[
            [
                f"  {run['owners']} owner(s): host busy / CPU per job (owners')",
                f"{run['host_busy_pct']:.0f} % / {run['cpu_ms_per_job']:.0f} ms"
                f" ({run['owner_cpu_ms_per_job']:.0f})",
                "(informative)",
                "",
            ]
            for run in (c["one_owner"], c["several_owners"])
        ],
    ]
    print_table(
        f"scale: {r['nodes']} serve processes on one host ({r['cpus']} CPUs)",
        ["measure", "value", "goal", ""],
        rows,
    )


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--bare-host":
        bare_host_main(int(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--owners", type=int, default=4)
    # The same total in flight for one owner and for several (at most 32 per
    # owner: a node serves that many control connections at once).
    parser.add_argument("--in-flight", type=int, default=24)
    parser.add_argument("--idle-window", type=float, default=20.0)
    parser.add_argument(
        "--settle", type=float, default=10.0, help="seconds to wait after convergence, at least"
    )
    parser.add_argument(
        "--settle-max",
        type=float,
        default=300.0,
        help="...and then until the host's load is --quiet-load, at most this long in all",
    )
    parser.add_argument(
        "--quiet-load",
        type=float,
        default=2.0 * (os.cpu_count() or 1),
        help="1-minute load average at which the host counts as idle (default: 2x cores)",
    )
    parser.add_argument("--converge-timeout", type=float, default=240.0)
    parser.add_argument("--no-bare", action="store_true", help="skip the bare-host baseline")
    parser.add_argument(
        "--bare-heartbeat",
        type=int,
        action="append",
        default=[],
        help="also measure bare hosts with this gossipsub heartbeat (s; p2pnode uses 1)",
    )
    parser.add_argument("--json", action="store_true", help="print the JSON result only")
    args = parser.parse_args()
    exit_on_sigterm()
    result: dict[str, Any] = {
        "nodes": args.nodes,
        "jobs": args.jobs,
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg()[0],
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    # The cluster first: it is what the goals are about; the baselines after
    # it (alone on the machine, too) cannot lose its numbers.
    if not args.json:
        print(f"cluster: {args.nodes} x `p2pnode serve --executors process`", flush=True)
    result["cluster"] = bench_cluster(args)
    if not args.json:
        print(f"bare py-libp2p hosts: {args.nodes}", flush=True)
    result["bare_hosts"] = None if args.no_bare else bench_bare_hosts(args.nodes, args.idle_window)
    result["bare_hosts_by_heartbeat"] = {
        str(hb): bench_bare_hosts(args.nodes, args.idle_window, hb) for hb in args.bare_heartbeat
    }
    result["goals"] = goals(result)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        report(result)
        print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
