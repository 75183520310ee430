"""Node health over real processes (issue 14): ``node list`` shows status,
last seen, addresses, load, memory and version; a peer stopped cleanly says
goodbye and leaves the view at once, so a job constrained to it fails fast
with a reason naming the constraint instead of waiting "queued" with none.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.realnet import cluster, is_terminal, run_cli_parallel

PINNED_SPEC = {
    "name": "needs-b",
    "type": "batch",
    "count": 1,
    "constraints": {"labels": {"host": "b"}},
    "task": {"engine": {"type": "process", "command": ["true"]}, "timeout": "30s"},
}
PEER_FIELDS = {"status", "last_seen_s", "addrs", "running", "max_executions", "memory", "version"}


def test_node_list_health_and_a_clean_stop_leaves_the_view(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        a = c.add("a")
        a.wait_ready()
        b = c.add("b", bootstrap=[a.addrs[0]], extra=["--labels", "host=b"])
        b.wait_ready()
        c.wait_connected([a, b])

        listed, table = run_cli_parallel(
            [a.cli_args("node", "list", "-o", "json"), a.cli_args("node", "list")]
        )
        assert listed.returncode == 0, listed.explain()
        rows = {p["node_id"]: p for p in listed.json()["items"]}
        assert set(rows) == {a.node_id, b.node_id}
        peer = rows[b.node_id]
        assert set(peer) >= PEER_FIELDS, peer
        assert peer["status"] == "alive" and 0 <= peer["last_seen_s"] < 60
        assert peer["addrs"] == b.addrs or set(b.addrs) <= set(peer["addrs"])
        assert peer["running"] == 0 and peer["max_executions"] == 4
        assert peer["memory"] > 0 and peer["version"] == rows[a.node_id]["version"] != ""
        assert table.returncode == 0, table.explain()
        header = table.stdout.splitlines()[0].split()
        assert header[:7] == [
            "NODE_ID",
            "STATUS",
            "LAST_SEEN",
            "RUNNING",
            "CPU",
            "MEMORY",
            "VERSION",
        ]
        assert "0/4" in table.stdout and "alive" in table.stdout

        assert b.terminate() == 0
        # Gone at once (goodbye), not after peer_expiry (300 s) of silence.
        c.wait_until(
            lambda: _status(a.control("peers"), b.node_id) == "gone",
            timeout=10,
            what="a to mark b gone after its goodbye",
        )
        job_id = a.control("submit", spec=PINNED_SPEC)["job_id"]
        view = c.wait_job(a, job_id, is_terminal, timeout=60, what="fail fast")
        assert view["state"] == "failed", view
        assert "no node matches the constraints" in view["reason"], view
        assert "'host': 'b'" in view["reason"], view


def _status(peers: list[dict[str, Any]], node_id: str) -> str | None:
    return next((p["status"] for p in peers if p["node_id"] == node_id), None)
