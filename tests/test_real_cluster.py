"""Real clusters of ``p2pnode serve`` OS processes, driven through the CLI.

Everything here is the product as a user runs it: separate interpreters, real
TCP on loopback, the process executor, SIGTERM/SIGKILL.  Leases are short
(``--lease-ttl 2``/``3``) so the kill scenarios take seconds, not minutes.
Polling that is not itself under test goes through the control socket (the
CLI's own channel) because each CLI call pays ~2 s of interpreter start-up.
"""

from __future__ import annotations

import contextlib
import signal
import sqlite3
from pathlib import Path

import msgpack
import pytest

from tests.realnet import (
    Cluster,
    ServeNode,
    cluster,
    execution_pidfiles,
    executions,
    group_alive,
    is_terminal,
    run_cli_parallel,
    running_execution,
)

pytestmark = pytest.mark.slow

COUNT3_SPEC = """\
name: count3
type: batch
count: 3
task:
  engine:
    type: process
    command:
      - sh
      - -c
      - 'echo "hello from slot $P2PNODE_SLOT";
        echo "slot $P2PNODE_SLOT" > "$P2PNODE_OUTPUTS/out.txt"'
  resources: {cpu: 0.1, memory: 64MiB}
  timeout: 1m
"""

# Three independent errors: `job run` must report all of them, not the first.
INVALID_SPEC = """\
name: broken
type: batch
count: "three"
task:
  engine: {type: process, command: "echo hi"}
  timeout: forever
"""
INVALID_PATHS = ("count:", "task.engine.command:", "task.timeout:")


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _start_cluster(c: Cluster, *, owner_executors: str, lease_ttl: float) -> list[ServeNode]:
    """Owner ``a`` first, then compute nodes ``b`` and ``c`` bootstrapping
    through it; waits until every view lists every node, so the first auction
    already sees all of them."""
    owner = c.add("a", executors=owner_executors, lease_ttl=lease_ttl)
    owner.wait_ready()
    compute = [c.add(name, lease_ttl=lease_ttl, bootstrap=[owner.addrs[0]]) for name in ("b", "c")]
    for node in compute:
        node.wait_ready()
    c.wait_connected([owner, *compute])
    return [owner, *compute]


# --- 1. three processes through the CLI ---------------------------------------------


def test_three_serve_processes_through_the_cli(tmp_path: Path) -> None:
    spec = _write(tmp_path / "count3.yaml", COUNT3_SPEC)
    invalid = _write(tmp_path / "invalid.yaml", INVALID_SPEC)
    with cluster(tmp_path) as c:
        n1 = c.add("n1", lease_ttl=3)
        n1.wait_ready()
        n2 = c.add("n2", lease_ttl=3, bootstrap=[n1.addrs[0]])
        n3 = c.add("n3", lease_ttl=3, bootstrap=[n1.addrs[0]])
        n2.wait_ready()
        n3.wait_ready()
        everyone = {n1.node_id, n2.node_id, n3.node_id}

        # n3 bootstrapped through n1 only: it learns n2 by peer exchange.
        def n3_lists_everyone() -> bool:
            listed = n3.cli("node", "list", "-o", "json")
            return (
                listed.returncode == 0
                and {p["node_id"] for p in listed.json()["items"]} == everyone
            )

        c.wait_until(n3_lists_everyone, timeout=40, what="`node list` on n3 to list 3 nodes")
        c.wait_connected([n1, n2, n3])  # n1 (the owner) must know both, too

        # Each CLI call pays ~2 s of start-up: run the independent ones at once.
        ran, no_node, bad_spec, unknown = run_cli_parallel(
            [
                n1.cli_args("job", "run", spec, "--wait", "--timeout", "90", "-o", "json"),
                ["--data-dir", tmp_path / "no-node-here", "job", "list"],
                n1.cli_args("job", "run", invalid),
                n1.cli_args("job", "describe", "j-0000000000000000"),
            ],
            timeout=120,
        )
        assert ran.returncode == 0, ran.explain() + c.explain()
        view = ran.json()
        assert view["state"] == "completed", ran.explain()
        job_id = view["job_id"]

        out_dir = tmp_path / "OUT"
        described, got, logs, stats, stats_table = run_cli_parallel(
            [
                n1.cli_args("job", "describe", job_id, "-o", "json"),
                n1.cli_args("job", "get", job_id, "--output-dir", out_dir, "-o", "json"),
                n1.cli_args("job", "logs", job_id),
                n1.cli_args("node", "stats", "-o", "json"),
                n1.cli_args("node", "stats"),
            ]
        )
        # node stats: the abuse counters of an honest cluster are empty.
        assert stats.returncode == 0, stats.explain()
        counters = stats.json()
        assert counters["node_id"] == n1.node_id and counters["frames_sent"] > 0
        assert counters["peers"]["banned"] == {} and counters["transport"]["bans"] == 0
        assert all(a["backoffs"] == 0 for a in counters["asks"].values()), counters["asks"]
        assert stats_table.returncode == 0, stats_table.explain()
        assert f"node {n1.node_id}" in stats_table.stdout, stats_table.explain()

        # describe: one succeeded execution per slot, each with its outputs.
        assert described.returncode == 0, described.explain()
        execs = executions(described.json())
        assert sorted(e["slot"] for e in execs) == [0, 1, 2], described.explain()
        assert all(e["state"] == "succeeded" and e["epoch"] == 1 for e in execs), execs
        assert all(e["exit_code"] == 0 and e["manifest_id"] for e in execs), execs
        assert {e["node"] for e in execs} <= everyone
        holders = {e["slot"]: e["node"] for e in execs}
        # `get` must fetch from the holders over the blob protocol: make sure
        # at least one output really lives on another node than the owner.
        assert set(holders.values()) - {n1.node_id}, f"every slot ran on the owner: {holders}"

        # get: every slot's file, with the slot's own content.
        assert got.returncode == 0, got.explain()
        for slot in range(3):
            path = out_dir / str(slot) / "out.txt"
            assert path.read_text() == f"slot {slot}\n", (holders, got.explain())
        assert sorted(Path(p) for p in got.json()["files"]) == sorted(
            out_dir / str(s) / "out.txt" for s in range(3)
        )

        # logs: each slot's stdout tail.
        assert logs.returncode == 0, logs.explain()
        for slot in range(3):
            assert f"hello from slot {slot}\n" in logs.stdout, logs.explain()

        # No node serving the data dir: exit 3, one readable line, no traceback.
        assert no_node.returncode == 3, no_node.explain()
        assert no_node.stderr.count("\n") == 1, no_node.explain()
        assert no_node.stderr.startswith("p2pnode: no node is running"), no_node.explain()

        # Invalid spec: exit 1 and every error listed, the node never bothered.
        assert bad_spec.returncode == 1, bad_spec.explain()
        for field in INVALID_PATHS:
            assert field in bad_spec.stdout, bad_spec.explain()
        assert "3 errors" in bad_spec.stderr, bad_spec.explain()
        assert [j["job_id"] for j in n1.control("jobs")] == [job_id]

        # Unknown job: a non-zero exit and a readable error naming it.
        assert unknown.returncode == 5, unknown.explain()
        assert "j-0000000000000000" in unknown.stderr, unknown.explain()
        assert "Traceback" not in unknown.stderr, unknown.explain()

        # SIGTERM: every node exits 0 and removes its socket and addrs file.
        nodes = [n1, n2, n3]
        for node in nodes:
            node.signal(signal.SIGTERM)
        for node in nodes:
            assert node.wait_exit() == 0, node.explain()
            assert not node.control_socket.exists(), node.name
            assert not node.addrs_file.exists(), node.name


# --- 2. SIGKILL of the holder ---------------------------------------------------------

# Epoch 1 sleeps far longer than the test: if its process disappears, it was
# killed (reaped), not finished.  Later epochs finish quickly.
HOLDER_KILL_SPEC = """\
name: holder-kill
type: batch
task:
  engine:
    type: process
    command:
      - sh
      - -c
      - 'case "$P2PNODE_EXECUTION_ID" in */1) sleep 60;; *) sleep 3;; esac;
        echo "$P2PNODE_EXECUTION_ID" > "$P2PNODE_OUTPUTS/out.txt"'
  resources: {cpu: 0.1, memory: 64MiB}
  timeout: 2m
"""


def test_sigkill_of_the_holder_moves_the_work_and_ends_its_task(
    tmp_path: Path,
) -> None:
    spec = _write(tmp_path / "spec.yaml", HOLDER_KILL_SPEC)
    with cluster(tmp_path) as c:
        # No --executors: the owner never computes, so the holder is B or C.
        owner, *compute = _start_cluster(c, owner_executors="", lease_ttl=2)

        submitted = owner.cli("job", "run", spec, "-o", "json")
        assert submitted.returncode == 0, submitted.explain()
        job_id = submitted.json()["job_id"]

        view = c.wait_job(owner, job_id, running_execution, timeout=30, what="a running execution")
        first = running_execution(view)
        assert first is not None and first["epoch"] == 1
        holder = next(n for n in compute if n.node_id == first["node"])
        survivor = next(n for n in compute if n is not holder)
        eid = first["execution_id"]
        pgid = c.wait_until(
            lambda: execution_pidfiles(holder.data_dir).get(eid),
            timeout=10,
            what=f"the pidfile of {eid} on {holder.name}",
        )
        assert group_alive(pgid)

        holder.kill()
        # The sandbox (bwrap --die-with-parent) ends the task with its node;
        # the restart below only clears the pidfile left behind.
        c.wait_until(lambda: not group_alive(pgid), timeout=20, what="the task gone with its node")

        # The owner hears no renewal: after ttl + grace it re-grants elsewhere.
        view = c.wait_job(
            owner,
            job_id,
            lambda v: any(e["epoch"] > 1 for e in executions(v)),
            timeout=30,
            what="a re-grant after the holder died",
        )
        # Restart the killed holder on its data dir: it must reap the orphan.
        holder.start()
        holder.wait_ready()
        assert eid not in execution_pidfiles(holder.data_dir)

        view = c.wait_job(owner, job_id, is_terminal, timeout=60, what="a terminal state")
        assert view["state"] == "completed", view
        execs = executions(view)
        assert execs[0]["execution_id"] == eid
        assert execs[0]["node"] == holder.node_id
        assert execs[0]["state"] == "expired", execs
        succeeded = [e for e in execs if e["state"] == "succeeded"]
        assert len(succeeded) == 1, execs
        assert succeeded[0] == execs[-1]
        assert succeeded[0]["node"] == survivor.node_id, execs
        assert succeeded[0]["epoch"] > 1


# --- 3. SIGKILL and restart of the owner ----------------------------------------------

OWNER_KILL_SPEC = """\
name: owner-kill
type: batch
task:
  engine:
    type: process
    command: [sh, -c, 'sleep 4; echo "$P2PNODE_EXECUTION_ID" > "$P2PNODE_OUTPUTS/out.txt"']
  resources: {cpu: 0.1, memory: 64MiB}
  timeout: 2m
"""


def _store_mentions(node: ServeNode, peer_id: str) -> bool:
    """Whether ``peer_id`` appears in the raw bytes of ``node``'s store files.

    A running node holds its SQLite store exclusively, so no reader can open
    it; the raw bytes can still be read.  An owner without jobs persists only
    its incarnation and its peer view, so a peer's id in there means the view
    naming it reached the disk (checked properly once the node is dead).
    """
    data = b""
    for name in ("node.db", "node.db-wal"):
        with contextlib.suppress(OSError):
            data += (node.data_dir / name).read_bytes()
    return peer_id.encode() in data


def _persisted_view(node: ServeNode) -> set[str]:
    """The peer ids of the view a *stopped* node persisted."""
    conn = sqlite3.connect(f"file:{node.data_dir / 'node.db'}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT value FROM records WHERE tbl = 'view' AND key = 'peers'"
        ).fetchone()
    finally:
        conn.close()
    return {p["node_id"] for p in msgpack.unpackb(row[0])["peers"]} if row else set()


@pytest.mark.parametrize(
    "restart",
    [
        "same-port",  # same --listen address, --bootstrap of b
        "new-port",  # --listen tcp/0, --bootstrap of b
        "new-port-view-only",  # --listen tcp/0, no --bootstrap: the persisted view
    ],
)
def test_sigkill_and_restart_of_the_owner(tmp_path: Path, restart: str) -> None:
    spec = _write(tmp_path / "spec.yaml", OWNER_KILL_SPEC)
    with cluster(tmp_path) as c:
        owner, *compute = _start_cluster(c, owner_executors="", lease_ttl=3)
        compute_ids = {n.node_id for n in compute}
        if restart == "new-port-view-only":
            # Only the persisted view can lead the owner back to the network.
            # One remembered peer is enough (its Peers answer names the rest);
            # the view is saved at most once per gossip round (30 s), so
            # waiting for both would mostly wait for the next round.
            c.wait_until(
                lambda: any(_store_mentions(owner, n) for n in compute_ids),
                timeout=30,
                what="the owner to persist a view naming a compute node",
            )

        submitted = owner.cli("job", "run", spec, "-o", "json")
        assert submitted.returncode == 0, submitted.explain()
        job_id = submitted.json()["job_id"]
        c.wait_job(owner, job_id, running_execution, timeout=30, what="a running execution")

        old_port = owner.tcp_port
        owner.kill()
        listen = f"/ip4/127.0.0.1/tcp/{old_port if restart == 'same-port' else 0}"
        args = ["--listen", listen, "--lease-ttl", "3"]
        if restart == "new-port-view-only":
            remembered = _persisted_view(owner)
            assert remembered & compute_ids, f"no compute node in the persisted view {remembered}"
        else:
            args += ["--bootstrap", compute[0].addrs[0]]
        owner.start(args)
        owner.wait_ready()
        if restart == "same-port":
            assert owner.tcp_port == old_port
        else:
            assert owner.tcp_port != old_port
            new_addr = owner.addrs[0]

            def knows_new_addr(node: ServeNode) -> bool:
                return any(
                    new_addr in p["addrs"]
                    for p in node.control("peers")
                    if p["node_id"] == owner.node_id
                )

            # Peers learn the new address from the owner's re-hello: the
            # bootstrap peer always; the view-only variant must reach everyone
            # (directly, or through its first contact's Peers answer).  The
            # bound is below the 24 s minimum gossip period on purpose: the
            # periodic gossip must not be what repairs it.
            told = compute if restart == "new-port-view-only" else compute[:1]
            c.wait_until(
                lambda: all(knows_new_addr(n) for n in told),
                timeout=15,
                what="peers to learn the owner's new address",
            )

        view = c.wait_job(owner, job_id, is_terminal, timeout=90, what="a terminal state")
        assert view["state"] == "completed", view
        [slot] = view["slots"]
        execs = slot["executions"]
        epochs = [e["epoch"] for e in execs]
        assert epochs == sorted(set(epochs)), f"epochs not strictly increasing: {execs}"
        succeeded = [e for e in execs if e["state"] == "succeeded"]
        assert len(succeeded) == 1, execs
        # The accepted result is the slot's current epoch; every older
        # execution ended without a result (the holder may have self-fenced
        # while the owner was down, and the owner re-granted).
        assert succeeded[0] is execs[-1] and succeeded[0]["epoch"] == slot["epoch"], execs
        assert all(e["state"] in ("expired", "failed", "released") for e in execs[:-1]), execs
        assert succeeded[0]["node"] in {n.node_id for n in compute}
