"""The process executor's sandbox over real ``serve`` processes (issue 12).

Each probe runs twice where it can: under the default ``--sandbox bwrap``,
where it must fail, and under ``--sandbox none``, where it must succeed, so a
test fails if the protection is removed (the probe is shown to work).

Tasks write what they manage to read into their outputs; ``job get`` fetches
them, as an attacker submitting the job would.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.realnet import (
    PYTHON,
    Cluster,
    ServeNode,
    _env,
    cli_argv,
    cluster,
    executions,
    is_terminal,
    pids_with_env,
    running_execution,
)

pytestmark = pytest.mark.slow

# Reads the node's secrets every way we know: relative to the workdir, by the
# data dir's absolute path, through the node's /proc entry; connects to its
# control socket and to an abstract socket the test listens on.
PROBE = r"""
out="$P2PNODE_OUTPUTS"
echo yes > "$out/ran"
cat ../../node.key > "$out/rel_key" 2>/dev/null && echo yes > "$out/got_rel_key"
cat "$DATA/node.key" > "$out/abs_key" 2>/dev/null && echo yes > "$out/got_abs_key"
cat "$DATA/node.db" > "$out/db" 2>/dev/null && echo yes > "$out/got_db"
cat "/proc/$NODE_PID/root$DATA/node.key" > "$out/proc_key" 2>/dev/null \
  && echo yes > "$out/got_proc_key"
"$PY" - <<'EOF'
import os, socket
out = os.environ["P2PNODE_OUTPUTS"]
for name, addr in (("control", os.environ["DATA"] + "/control.sock"),
                   ("abstract", "\0" + os.environ["ABSTRACT"])):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(addr)
        open(os.path.join(out, "got_" + name), "w").write("yes\n")
    except OSError as err:
        open(os.path.join(out, "no_" + name), "w").write(str(err) + "\n")
EOF
echo probed
"""

GOT = ("got_rel_key", "got_abs_key", "got_db", "got_proc_key", "got_control", "got_abstract")


def _probe_spec(node: ServeNode, abstract: str) -> str:
    env = {"DATA": str(node.data_dir.resolve()), "NODE_PID": str(node.pid),
           "ABSTRACT": abstract, "PY": PYTHON}
    lines = "\n".join(f"    {k}: {v!r}" for k, v in env.items())
    script = PROBE.replace("\n", "\n        ")
    return (
        "name: probe\ntype: batch\ntask:\n"
        f"  engine:\n    type: process\n    command:\n      - sh\n      - -c\n      - |\n"
        f"        {script}\n"
        f"  env:\n{lines}\n"
        "  resources: {cpu: 0.1, memory: 512MiB}\n  timeout: 1m\n"
        "  retry: {attempts: 1}\n"
    )


def _run_probe(c: Cluster, node: ServeNode, tmp: Path, abstract: str) -> set[str]:
    spec = tmp / f"probe-{node.name}.yaml"
    spec.write_text(_probe_spec(node, abstract))
    submitted = node.cli("job", "run", spec, "-o", "json")
    assert submitted.returncode == 0, submitted.explain()
    job_id = submitted.json()["job_id"]
    view = c.wait_job(node, job_id, is_terminal, timeout=60, what="the probe to end")
    assert view["state"] == "completed", view
    out = tmp / f"out-{node.name}"
    got = node.cli("job", "get", job_id, "--output-dir", out)
    assert got.returncode == 0, got.explain()
    return {p.name for p in out.rglob("*") if p.is_file()}


@pytest.fixture
def abstract_listener() -> str:
    """An abstract unix socket listening in the host's network namespace."""
    name = f"p2pnode-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind("\0" + name)
    sock.listen(8)
    try:
        yield name
    finally:
        sock.close()


def test_a_sandboxed_task_reads_no_secret_and_reaches_no_socket(
    tmp_path: Path, abstract_listener: str
) -> None:
    with cluster(tmp_path) as c:
        boxed = c.add("boxed")
        plain = c.add("plain", extra=["--sandbox", "none"])
        boxed.wait_ready()
        plain.wait_ready()
        seen_boxed = _run_probe(c, boxed, tmp_path, abstract_listener)
        seen_plain = _run_probe(c, plain, tmp_path, abstract_listener)
    assert "ran" in seen_boxed and "ran" in seen_plain
    assert not seen_boxed & set(GOT), seen_boxed
    assert {"no_control", "no_abstract"} <= seen_boxed
    # The same probe without the sandbox gets everything: the probe works.
    assert set(GOT) <= seen_plain, seen_plain
    assert "warning: --sandbox none" in plain.stderr_path.read_text()


# --- nothing a task starts outlives its execution ------------------------------------

# The task leaves three escapees behind: a setsid child, a double-forked
# daemon and a nohup'ed sleeper.  Every process inherits P2PNODE_EXECUTION_ID,
# which is how the test finds them on the host.
ESCAPE_SPEC = """\
name: escape
type: batch
task:
  engine:
    type: process
    command:
      - sh
      - -c
      - 'setsid sleep 300 & (sh -c "sleep 301 &" &); nohup sleep 302 >/dev/null 2>&1 &
        echo started; sleep 300'
  resources: {cpu: 0.1, memory: 64MiB}
  timeout: TIMEOUT
  retry: {attempts: 1}
"""


def _start_escapee(c: Cluster, node: ServeNode, tmp: Path, timeout: str) -> tuple[str, str]:
    spec = tmp / "escape.yaml"
    spec.write_text(ESCAPE_SPEC.replace("TIMEOUT", timeout))
    submitted = node.cli("job", "run", spec, "-o", "json")
    assert submitted.returncode == 0, submitted.explain()
    job_id = submitted.json()["job_id"]
    view = c.wait_job(node, job_id, running_execution, timeout=30, what="a running execution")
    execution = running_execution(view)
    assert execution is not None
    marker = f"P2PNODE_EXECUTION_ID={execution['execution_id']}"
    # The three escapees and the main sleep are all up.
    c.wait_until(
        lambda: len([p for p in pids_with_env(marker) if _comm(p) == "sleep"]) >= 4,
        timeout=30,
        what="the task's sleepers",
    )
    return job_id, marker


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def test_nothing_outlives_job_stop_or_the_timeout(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        node = c.add("a")
        node.wait_ready()
        job_id, marker = _start_escapee(c, node, tmp_path, "10m")
        stopped = node.cli("job", "stop", job_id)
        assert stopped.returncode == 0, stopped.explain()
        c.wait_until(lambda: not pids_with_env(marker), timeout=20, what="every process gone")

        job_id, marker = _start_escapee(c, node, tmp_path, "3s")
        view = c.wait_job(node, job_id, is_terminal, timeout=60, what="the timeout")
        assert executions(view)[0]["state"] == "timeout", view
        c.wait_until(lambda: not pids_with_env(marker), timeout=20, what="every process gone")


def test_nothing_outlives_a_lost_lease_nor_a_sigkilled_node(tmp_path: Path) -> None:
    with cluster(tmp_path) as c:
        owner = c.add("owner", executors="")
        owner.wait_ready()
        holder = c.add("holder", bootstrap=[owner.addrs[0]])
        holder.wait_ready()
        c.wait_connected([owner, holder])
        # Lease loss: the owner dies, the holder cannot renew and fences itself.
        _job_id, marker = _start_escapee(c, owner, tmp_path, "10m")
        owner.kill()
        c.wait_until(lambda: not pids_with_env(marker), timeout=30, what="every process gone")

        owner.start([*owner.args, "--bootstrap", holder.addrs[0]])  # on a new port
        owner.wait_ready()
        c.wait_connected([owner, holder])
        # The holder SIGKILLed: its tasks die with it (bwrap --die-with-parent),
        # before any restart; and the restart brings nothing back.
        _job_id, marker = _start_escapee(c, owner, tmp_path, "10m")
        holder.kill()
        c.wait_until(lambda: not pids_with_env(marker), timeout=20, what="every process gone")
        holder.start()
        holder.wait_ready()
        assert not pids_with_env(marker)


def test_nothing_outlives_the_plain_executor_without_the_sandbox_shows_the_test_works(
    tmp_path: Path,
) -> None:
    """--sandbox none: the setsid escapee does outlive job stop (the plain
    executor kills its process group only): the sandboxed test above is able
    to see survivors."""
    with cluster(tmp_path) as c:
        node = c.add("a", extra=["--sandbox", "none"])
        node.wait_ready()
        job_id, marker = _start_escapee(c, node, tmp_path, "10m")
        try:
            assert node.cli("job", "stop", job_id).returncode == 0
            c.wait_job(node, job_id, is_terminal, timeout=30, what="stopped")
            survivors = c.wait_until(
                lambda: pids_with_env(marker), timeout=5, what="a survivor"
            )
            assert survivors
        finally:
            for pid in pids_with_env(marker):
                os.kill(pid, signal.SIGKILL)


# --- data dir and start-up -----------------------------------------------------------


def test_a_precreated_0755_data_dir_is_private_after_serve(tmp_path: Path) -> None:
    data = tmp_path / "pre"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    with cluster(tmp_path) as c:
        node = ServeNode("pre", data, c.log_dir, ["--executors", "process"])
        c.nodes["pre"] = node
        node.start()
        node.wait_ready()
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "node.key").stat().st_mode) == 0o600
        for name in ("node.db", "node.db-wal"):
            if (data / name).exists():
                assert stat.S_IMODE((data / name).stat().st_mode) & 0o077 == 0, name


def test_a_missing_bwrap_is_one_line_and_exit_6(tmp_path: Path) -> None:
    env = _env()
    # A PATH with sh and python but no bwrap.
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("sh", "setpriv"):
        (bindir / tool).symlink_to(f"/usr/bin/{tool}" if tool == "setpriv" else "/bin/sh")
    env["PATH"] = str(bindir)
    done = subprocess.run(
        cli_argv("serve", "--data-dir", tmp_path / "d", "--executors", "process"),
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert done.returncode == 7, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "bwrap" in lines[0], done.stderr
    # The same start with --sandbox none runs (and warns): bwrap was the only problem.
    node = subprocess.Popen(
        cli_argv("serve", "--data-dir", tmp_path / "d", "--executors", "process",
                 "--sandbox", "none"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    try:
        assert node.stdout is not None and "/p2p/" in node.stdout.readline()
    finally:
        node.send_signal(signal.SIGTERM)
        _out, err = node.communicate(timeout=30)
    assert err.startswith("warning: --sandbox none"), err


def test_a_missing_sandbox_ro_path_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        cli_argv("serve", "--data-dir", tmp_path / "d", "--executors", "process",
                 "--sandbox-ro", tmp_path / "nope"),
        capture_output=True, text=True, env=_env(), timeout=60,
    )
    assert done.returncode == 2, done
    assert "--sandbox-ro" in done.stderr and "does not exist" in done.stderr, done.stderr
