"""An interrupted submit, on a real ``p2pnode serve`` process.

The node is SIGKILLed in the middle of ``job run`` (a hidden fault injection,
``P2PNODE_FAULT_SUBMIT``, read by the control layer only): after storing the
job but before answering, or before storing it.  The CLI's retries, with the
invocation's idempotency key, reach the restarted node and must end with
exactly one job either way; with the node gone for good the CLI exits 6
(outcome unknown), and the key it names finds the job once the node is back.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from p2pnode.control import ControlError
from p2pnode.testing import FAULT_SUBMIT_ENV
from tests.realnet import ServeNode, cluster, spawn_cli

pytestmark = pytest.mark.slow

SPEC = """\
name: once
task:
  engine: {type: process, command: [sh, -c, "echo ran"]}
  resources: {cpu: 0.1, memory: 64MiB}
  timeout: 1m
"""
CLI_WAIT = 90.0  # the CLI's retries outlast a node restart on a loaded machine


def stored_jobs(node: ServeNode) -> set[str]:
    """Job ids in the node's SQLite file (read while the node is down)."""
    with contextlib.closing(sqlite3.connect(node.data_dir / "node.db")) as db:
        rows = db.execute("SELECT key FROM records WHERE tbl = 'jobs'").fetchall()
    return {str(key) for (key,) in rows}


def listed_jobs(node: ServeNode) -> list[str]:
    listed = node.cli("job", "list", "-o", "json")
    assert listed.returncode == 0, listed.explain()
    return sorted(j["job_id"] for j in listed.json()["items"])


def finish(proc: subprocess.Popen[str]) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=CLI_WAIT)
    return proc.returncode, out, err


def interrupted(node: ServeNode, fault: str, *args: str) -> subprocess.Popen[str]:
    """(Re)start ``node`` with ``fault``, run ``job run ARGS`` against it in
    the background and wait until the fault killed the node."""
    if node.running:
        node.kill()
    node.start(env={FAULT_SUBMIT_ENV: fault})
    node.wait_ready()
    proc = spawn_cli("--data-dir", node.data_dir, "job", "run", *args)
    assert node.wait_exit(timeout=CLI_WAIT) == -9, node.explain()  # SIGKILLed by the fault
    return proc


def test_an_interrupted_submit_retried_with_its_key_makes_one_job(tmp_path: Path) -> None:
    spec = tmp_path / "once.yaml"
    spec.write_text(SPEC)
    other = tmp_path / "twice.yaml"
    other.write_text(SPEC.replace("echo ran", "echo other"))
    with cluster(tmp_path) as c:
        a = c.add("a")
        a.wait_ready()

        # 1. Killed after storing the job, before answering: the retry after the
        #    restart gets the stored job's id.
        cli = interrupted(a, "kill-before-reply", str(spec), "-o", "json", "--retry-for", "80",
                          "--idempotency-key", "k-reply")
        stored = stored_jobs(a)
        assert len(stored) == 1, stored
        a.start()
        a.wait_ready()
        code, out, err = finish(cli)
        assert code == 0, (code, out, err, c.explain())
        first = json.loads(out)["job_id"]
        assert {first} == stored
        assert listed_jobs(a) == [first]
        c.wait_job(a, first, lambda v: v["state"] == "completed", timeout=60, what="completed")

        # The same key again: the same job, none added; with another spec: refused.
        again = a.cli("job", "run", spec, "--id-only", "--idempotency-key", "k-reply")
        assert again.returncode == 0 and again.stdout.strip() == first, again.explain()
        clash = a.cli("job", "run", other, "--idempotency-key", "k-reply")
        assert clash.returncode == 5, clash.explain()
        assert "'k-reply' was already used for job" in clash.stderr, clash.explain()
        assert listed_jobs(a) == [first]
        with pytest.raises(ControlError, match="idempotency_key must be a non-empty string"):
            a.control("submit", spec=SPEC, idempotency_key=7)

        # 2. Killed before storing: the retry stores it, once.
        cli = interrupted(a, "kill-before-store", str(spec), "--id-only", "--retry-for", "80")
        assert stored_jobs(a) == {first}
        a.start()
        a.wait_ready()
        code, out, err = finish(cli)
        assert code == 0, (code, out, err, c.explain())
        second = out.strip()
        assert second != first and listed_jobs(a) == sorted([first, second])

        # 3. The node stays down past --retry-for: exit 6, naming a key that
        #    finds the stored job once the node is back.
        cli = interrupted(a, "kill-before-reply", str(spec), "--retry-for", "2")
        code, out, err = finish(cli)
        assert code == 6, (code, out, err)
        assert "outcome unknown" in err and "--idempotency-key cli-" in err, err
        key = err.split("--idempotency-key ")[1].split()[0]
        (third,) = stored_jobs(a) - {first, second}
        a.start()
        a.wait_ready()
        found = a.cli("job", "run", spec, "--id-only", "--idempotency-key", key)
        assert found.returncode == 0 and found.stdout.strip() == third, found.explain()
        assert listed_jobs(a) == sorted([first, second, third])

        # Without the key, the same command is a new submission: a duplicate,
        # which is what the key prevents (and what the counts above would show).
        fresh = a.cli("job", "run", spec, "--id-only")
        assert fresh.returncode == 0, fresh.explain()
        assert len(listed_jobs(a)) == 4

        # 4. The node dies during `job run --wait`: the CLI submits again (same
        #    key: the same job) and goes on waiting for it.
        slow = tmp_path / "slow.yaml"
        slow.write_text(SPEC.replace("echo ran", "sleep 4"))
        before = set(listed_jobs(a))  # listed before the CLI starts: its job may be quick
        cli = spawn_cli(*a.cli_args("job", "run", str(slow), "--wait", "-o", "json",
                                    "--retry-for", "80"))
        (waited,) = c.wait_until(lambda: (set(listed_jobs(a)) - before) or None, timeout=30,
                                 what="the slow job submitted")
        a.kill()
        a.start()
        a.wait_ready()
        code, out, err = finish(cli)
        assert code == 0, (code, out, err, c.explain())
        view = json.loads(out)
        assert view["job_id"] == waited and view["state"] == "completed"
        assert len(listed_jobs(a)) == 5


def test_no_node_is_exit_3_not_6_and_a_bad_key_is_a_usage_error(tmp_path: Path) -> None:
    """Nothing was sent: the outcome is known (no job), no retries."""
    spec = tmp_path / "once.yaml"
    spec.write_text(SPEC)
    nobody = ["--data-dir", str(tmp_path / "nobody"), "job", "run", str(spec)]
    keys: list[list[str]] = [[], ["--idempotency-key", ""], ["--idempotency-key", "k" * 201]]
    procs = [spawn_cli(*nobody, *key) for key in keys]  # at once: each pays interpreter start-up
    no_node, empty, long = (finish(proc) for proc in procs)
    assert no_node[0] == 3 and "no node is running" in no_node[2], no_node
    for code, _, err in (empty, long):
        assert code == 2 and "--idempotency-key must be 1 to 200 characters" in err, err
