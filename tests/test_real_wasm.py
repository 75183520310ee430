"""WASM jobs over real ``p2pnode serve`` processes.

The submitter ``a`` runs no executor, so every execution lands on ``b`` or
``c``: the module (a WAT file next to the spec) reaches them only as a blob
fetched by content id from ``a``.  A DAG of two wasm tasks also moves an
output of one holder into the ``/inputs`` of the next; ``job get`` fetches
both tasks' outputs and the bytes are checked.  An endless loop is ended by
its timeout, and another by ``job stop``; with ``--max-executions 1`` a job
after them still runs, so their executions really ended.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from p2pnode.control import ControlError
from tests.realnet import Cluster, ServeNode, cluster, executions, is_terminal

pytestmark = pytest.mark.slow

TOOL = Path(__file__).parent / "wasm" / "tool.wat"

DAG_SPEC = """\
name: wasm-dag
type: dag
tasks:
  make:
    engine: {type: wasm, module: tool.wat, args: [hello]}
    timeout: 30s
  use:
    engine: {type: wasm, module: tool.wat, args: [copy, make/x, y]}
    depends_on: [make]
    timeout: 30s
"""

LOOP_SPEC = """\
name: {name}
task:
  engine: {{type: wasm, module: tool.wat, args: [loop]}}
  timeout: {timeout}
  retry: {{attempts: 1}}
"""


def _start(c: Cluster) -> list[ServeNode]:
    a = c.add("a", executors="")
    a.wait_ready()
    others = [
        c.add(n, executors="wasm", bootstrap=[a.addrs[0]], extra=["--max-executions", "1"])
        for n in ("b", "c")
    ]
    for node in others:
        node.wait_ready()
    c.wait_connected([a, *others])
    return [a, *others]


def _run(a: ServeNode, spec: Path) -> str:
    submitted = a.cli("job", "run", spec, "-o", "json")
    assert submitted.returncode == 0, submitted.explain()
    return str(submitted.json()["job_id"])


def test_wasm_jobs_over_three_peers(tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    shutil.copy(TOOL, specs / "tool.wat")
    module_id = "sha256:" + hashlib.sha256(TOOL.read_bytes()).hexdigest()
    with cluster(tmp_path / "net") as c:
        a, b, c_node = _start(c)
        holders = {b.node_id, c_node.node_id}

        (specs / "dag.yaml").write_text(DAG_SPEC)
        dag = _run(a, specs / "dag.yaml")
        view = c.wait_job(a, dag, is_terminal, timeout=90, what="the wasm DAG to end")
        assert view["state"] == "completed", view
        ran_on = {e["node"] for t in view["tasks"] for e in t.get("executions", [])}
        ran_on |= {o["node"] for t in view["tasks"] for o in t.get("outputs", [])}
        assert ran_on and ran_on <= holders, (ran_on, holders)

        got = a.cli("job", "get", dag, "--output-dir", tmp_path / "out")
        assert got.returncode == 0, got.explain()
        assert (tmp_path / "out" / "make" / "x").read_bytes() == b"written by wasm\n"
        assert (tmp_path / "out" / "use" / "y").read_bytes() == b"written by wasm\n"
        # The holders got the module by content id, from the submitter's store.
        stored = [n for n in (b, c_node) if _has_blob(n, module_id)]
        assert stored, "no holder stored the module blob"

        # An endless loop: its timeout ends it (one attempt, so the job fails).
        (specs / "timeout.yaml").write_text(LOOP_SPEC.format(name="spin", timeout="2s"))
        spin = _run(a, specs / "timeout.yaml")
        view = c.wait_job(a, spin, is_terminal, timeout=60, what="the loop to time out")
        assert view["state"] == "failed", view
        assert [e["state"] for e in executions(view)] == ["timeout"], view

        # Another, stopped by the user while it runs on a holder.
        (specs / "stop.yaml").write_text(LOOP_SPEC.format(name="spin2", timeout="10m"))
        spin2 = _run(a, specs / "stop.yaml")
        c.wait_job(
            a, spin2, lambda v: any(e["state"] == "running" for e in executions(v)),
            timeout=60, what="the second loop to run",
        )
        stopped = a.cli("job", "stop", spin2)
        assert stopped.returncode == 0, stopped.explain()
        view = c.wait_job(a, spin2, is_terminal, timeout=30, what="the loop to stop")
        assert view["state"] == "stopped", view

        # Both holders have one execution slot: a batch job running now means
        # the stopped and timed-out modules gave theirs back.
        (specs / "hello.yaml").write_text(
            "name: hi\ncount: 2\ntask:\n  engine: {type: wasm, module: tool.wat}\n"
            "  timeout: 30s\n"
        )
        hello = _run(a, specs / "hello.yaml")
        view = c.wait_job(a, hello, is_terminal, timeout=60, what="the hello job to end")
        assert view["state"] == "completed", view
        done = [e for e in executions(view) if e["state"] == "succeeded"]
        assert len(done) == 2 and {e["node"] for e in done} <= holders, view
        assert all(e["stdout_tail"] == "hello from wasm\nP2PNODE_CHECKPOINT 7\n" for e in done)
        assert all(e["stderr_tail"] == "to stderr\n" for e in done), done

        # A spec naming a module path directly (not through the CLI) is refused.
        raw = {"name": "raw", "task": {"engine": {"type": "wasm", "module": "tool.wat"}}}
        with pytest.raises(ControlError) as refused:
            a.control("submit", spec=raw)
        [error] = refused.value.errors
        assert error["path"] == "task.engine.module"
        assert error["message"].startswith("must be a content id"), error


def _has_blob(node: ServeNode, digest: str) -> bool:
    hexd = digest.split(":", 1)[1]
    return (node.data_dir / "blobs" / "sha256" / hexd[:2] / hexd).is_file()
