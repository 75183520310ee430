"""The bwrap sandbox and the private data dir, at the executor level.

Each guard is shown to matter: the same probe without it (``sandbox="none"``,
``network: host``, a high limit, a planted bug) gives the other answer.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from p2pnode.blobs import BlobStore
from p2pnode.datadir import DataDirError, make_private
from p2pnode.executors import ProcessExecutor, cgroups
from p2pnode.executors import process as process_mod
from p2pnode.executors.sandbox import (
    TASK_UID_BASE,
    TASK_UID_SPAN,
    BwrapSandbox,
    SandboxUnavailable,
    open_sandbox,
)
from protocols.events import ExecutionFinished, StartExecution
from tests.realnet import pids_with_env

MIB = 1024 * 1024


def _start(command: list[str], eid: str = "e-1", **extra: Any) -> StartExecution:
    task = {"engine": {"type": "process", "command": command}, **extra}
    return StartExecution(eid, "job-1", 0, task, {}, 30.0)


def _executor(tmp_path: Path, **kwargs: Any) -> ProcessExecutor:
    data = tmp_path / "data"
    return ProcessExecutor(data, BlobStore(data), max_output_bytes=MIB, **kwargs)


async def _sh(executor: ProcessExecutor, script: str, **extra: Any) -> ExecutionFinished:
    return await executor.run(_start(["sh", "-c", script], **extra))


@pytest.fixture
def tcp_listener() -> Any:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield sock.getsockname()[1]
    sock.close()


async def test_no_network_unless_the_task_asks(tmp_path: Path, tcp_listener: int) -> None:
    executor = _executor(tmp_path)
    probe = f"(exec 3<>/dev/tcp/127.0.0.1/{tcp_listener}) 2>/dev/null && echo reached || echo cut"
    boxed = await _sh(executor, f"bash -c '{probe}'")
    assert boxed.stdout_tail == "cut\n", boxed
    host = await _sh(executor, f"bash -c '{probe}'", network="host")
    assert host.stdout_tail == "reached\n", host


async def test_the_data_dir_is_not_in_the_sandbox(tmp_path: Path) -> None:
    script = 'cat ../../node.key "$DATA/node.key" 2>/dev/null || echo hidden'
    for mode, expected in (("bwrap", "hidden\n"), ("none", "secret\nsecret\n")):  # both paths
        executor = _executor(tmp_path / mode, sandbox=mode)
        (executor.data_dir / "node.key").write_text("secret\n")
        env = {"DATA": str(executor.data_dir)}
        start = StartExecution(
            "e", "j", 0, {"engine": {"type": "process", "command": ["sh", "-c", script]},
                          "env": env}, env, 30.0,
        )
        result = await executor.run(start)
        assert result.stdout_tail == expected, (mode, result)


async def test_a_root_node_runs_each_task_under_a_uid_of_its_own(tmp_path: Path) -> None:
    result = await _sh(_executor(tmp_path), 'id -u; id -G; touch "$P2PNODE_OUTPUTS/f"')
    uid, groups = result.stdout_tail.split("\n")[:2]
    if os.geteuid() == 0:
        assert TASK_UID_BASE <= int(uid) < TASK_UID_BASE + TASK_UID_SPAN
        assert groups == uid  # no supplementary group (root's least of all)
    else:
        assert int(uid) == os.geteuid()  # in its user namespace, mapped to ours
    assert result.status == "succeeded", result


async def test_the_pids_limit(tmp_path: Path) -> None:
    fork_many = "for i in $(seq 40); do sleep 2 & done; wait; echo done"
    limited = await _sh(_executor(tmp_path / "a", pids_limit=16), fork_many)
    roomy = await _sh(_executor(tmp_path / "b", pids_limit=1024), fork_many)
    assert roomy.status == "succeeded" and "fork" not in roomy.stderr_tail.lower(), roomy
    if os.geteuid() != 0:
        pytest.skip("RLIMIT_NPROC is only a per-task limit when the task has its own uid")
    assert "fork" in limited.stderr_tail.lower(), limited


async def test_the_private_tmp_is_bounded_by_the_task_memory(tmp_path: Path) -> None:
    """A tmpfs is RAM that RLIMIT_AS does not count: /tmp is capped at ``memory``."""
    fill = "head -c 50000000 /dev/zero > /tmp/fill && echo written"
    # (cgroups off: where there are some, the memory cgroup would kill it first)
    small = await _sh(
        _executor(tmp_path / "a", use_cgroups=False), fill, resources={"memory": 32 * MIB}
    )
    assert small.status == "failed" and "No space left" in small.stderr_tail, small
    large = await _sh(_executor(tmp_path / "b"), fill, resources={"memory": 128 * MIB})
    assert large.stdout_tail == "written\n", large
    shm = await _sh(_executor(tmp_path / "c"), "echo x > /dev/shm/x && echo shared")
    assert shm.stdout_tail == "shared\n", shm  # (python's multiprocessing needs it)


ESCAPE = (
    'setsid sleep 300 & (sh -c "sleep 301 &" &); nohup sleep 302 >/dev/null 2>&1 & '
    "sleep 0.3; echo bye"
)


async def test_nothing_a_task_started_outlives_its_end(tmp_path: Path) -> None:
    eid = "escape-1"
    marker = f"P2PNODE_EXECUTION_ID={eid}"
    boxed = await _executor(tmp_path / "a").run(_start(["sh", "-c", ESCAPE], eid=eid))
    assert boxed.stdout_tail == "bye\n"
    assert pids_with_env(marker) == []  # setsid, double fork, nohup: all gone
    # Without the sandbox the setsid and double-forked sleepers escape the
    # process group: the check above can see survivors.
    plain = _executor(tmp_path / "b", sandbox="none")
    await plain.run(_start(["sh", "-c", ESCAPE], eid=eid))
    survivors = pids_with_env(marker)
    for pid in survivors:
        os.kill(pid, signal.SIGKILL)
    assert survivors


def test_a_missing_bwrap_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SandboxUnavailable) as caught:
        open_sandbox("bwrap", tmp_path, path=str(tmp_path))
    assert "bwrap" in str(caught.value) and "\n" not in str(caught.value)
    assert open_sandbox("none", tmp_path, path=str(tmp_path)) is None


@pytest.fixture
def restore_umask() -> Any:
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def test_a_read_only_path_inside_the_data_dir_is_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "blobs").mkdir(parents=True)
    with pytest.raises(SandboxUnavailable, match="inside the data dir"):
        open_sandbox("bwrap", data, ro_paths=[str(data / "blobs")])
    assert open_sandbox("bwrap", data, ro_paths=[str(tmp_path / "nope")]) is not None


async def test_a_read_only_path_holding_the_data_dir_does_not_show_it(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    executor = _executor(tmp_path, sandbox_ro_paths=(str(tmp_path),))
    (executor.data_dir / "node.key").write_text("secret\n")
    probe = f"ls {tmp_path}; cat {executor.data_dir}/node.key || echo hidden"
    result = await _sh(executor, probe)
    assert result.stdout_tail == "data\nhidden\n", result


async def test_a_read_only_path_is_readable_not_writable(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    (shared / "tool.txt").write_text("tool\n")
    (shared / "tool.txt").chmod(0o644)
    executor = _executor(tmp_path, sandbox_ro_paths=(str(shared),))
    result = await _sh(executor, f"cat {shared}/tool.txt; touch {shared}/x || echo read-only")
    assert result.stdout_tail == "tool\nread-only\n", result
    unshared = await _sh(_executor(tmp_path / "b"), f"cat {shared}/tool.txt || echo absent")
    assert unshared.stdout_tail == "absent\n", unshared


@pytest.mark.usefixtures("restore_umask")
def test_the_data_dir_is_made_private(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir(mode=0o755)
    data.chmod(0o755)
    (data / "node.db").write_text("")
    (data / "node.db").chmod(0o644)
    make_private(data)
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "node.db").stat().st_mode) == 0o600
    created = data / "new"
    created.write_text("x")  # the umask now keeps new files private
    assert stat.S_IMODE(created.stat().st_mode) == 0o600


@pytest.mark.usefixtures("restore_umask")
def test_a_data_dir_that_cannot_be_private_is_refused(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(DataDirError, match="not a directory"):
        make_private(not_a_dir)
    if os.geteuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir()
        os.chown(foreign, 12345, 12345)
        with pytest.raises(DataDirError, match="belongs to uid 12345"):
            make_private(foreign)


# --- cgroup limits (where the node may create cgroups) ------------------------------

needs_cgroups = pytest.mark.skipif(
    cgroups.detect() is None, reason="no writable cgroup hierarchy here: rlimits only"
)
FILL_BOTH_TMPFS = (
    "head -c 40000000 /dev/zero > /tmp/a && head -c 40000000 /dev/zero > /dev/shm/b"
    " && echo filled"
)


@needs_cgroups
async def test_the_memory_cgroup_counts_what_rlimit_as_does_not(tmp_path: Path) -> None:
    """80 MB of tmpfs pages (two 40 MB files: each tmpfs alone fits the
    64 MiB) are RAM outside the address space; only the cgroup sees them."""
    resources = {"cpu": 0.5, "memory": 64 * MIB}
    limited = await _sh(_executor(tmp_path / "a"), FILL_BOTH_TMPFS, resources=resources)
    assert limited.status == "failed", limited
    assert limited.error == f"killed: out of memory (limit {64 * MIB} bytes)", limited
    unlimited = await _sh(
        _executor(tmp_path / "b", use_cgroups=False), FILL_BOTH_TMPFS, resources=resources
    )
    assert unlimited.stdout_tail == "filled\n", unlimited


@needs_cgroups
async def test_the_pids_cgroup_limits_a_task_that_shares_the_node_uid(tmp_path: Path) -> None:
    """A node that is not root has no per-task uid, so no RLIMIT_NPROC: here
    the pids cgroup is the limit (the sandbox is switched to that mode)."""
    fork_many = "for i in $(seq 40); do sleep 2 & done; wait; echo done"
    results = []
    for use in (True, False):
        executor = _executor(tmp_path / str(use), pids_limit=16, use_cgroups=use)
        assert executor.sandbox is not None
        executor.sandbox = attrs.evolve(executor.sandbox, setpriv=None)  # user namespace
        results.append(await _sh(executor, fork_many))
    limited, unlimited = results
    assert "fork" in limited.stderr_tail.lower(), limited
    assert "fork" not in unlimited.stderr_tail.lower() and unlimited.status == "succeeded"


@needs_cgroups
async def test_the_limits_are_written_and_the_cgroup_removed(
    tmp_path: Path,
) -> None:
    executor = _executor(tmp_path, pids_limit=77)
    assert executor.cgroups is not None
    seen: dict[str, str] = {}
    task = {"cpu": 0.25, "memory": 96 * MIB}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: _sh(executor, "sleep 1", resources=task)  # type: ignore[arg-type]
        )
        with trio.fail_after(20):
            while len(seen) < 2:
                await trio.sleep(0.05)
                for _controller, base in executor.cgroups.bases:
                    for leaf in base.glob("e-1-*"):
                        for name in ("pids.max", "memory.limit_in_bytes", "memory.max"):
                            with contextlib.suppress(OSError):
                                seen[name] = (leaf / name).read_text().strip()
                    seen.pop("memory.swap.max", None)
    assert seen.get("pids.max") == "77"
    assert seen.get("memory.limit_in_bytes", seen.get("memory.max")) == str(96 * MIB)
    for _controller, base in executor.cgroups.bases:
        assert [p for p in base.iterdir() if p.is_dir()] == []  # removed after the task


async def _members_while_running(executor: ProcessExecutor) -> list[set[str]]:
    """The pids in each of the task's cgroups (one per hierarchy), as last
    seen while it ran."""
    assert executor.cgroups is not None
    members: dict[Path, set[str]] = {}
    done = trio.Event()

    async def run() -> None:
        await _sh(executor, "sleep 1 & sleep 1; wait")
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(run)
        # bwrap x2, sh, 2 x sleep: all started (or the task is over)
        while not done.is_set() and not (members and all(len(m) >= 5 for m in members.values())):
            await trio.sleep(0.05)
            for _controller, base in executor.cgroups.bases:
                for leaf in base.glob("e-1-*"):
                    with contextlib.suppress(OSError):
                        members[leaf] = set((leaf / "cgroup.procs").read_text().split())
    return list(members.values())


@needs_cgroups
async def test_the_whole_task_joins_its_cgroup_in_every_hierarchy(tmp_path: Path) -> None:
    """bwrap, its init and the task's processes are all in each of the
    execution's cgroups (v1 joins through ``tasks``, v2 through
    ``cgroup.procs``: either way the moved shell becomes bwrap)."""
    executor = _executor(tmp_path)
    assert executor.cgroups is not None
    members = await _members_while_running(executor)
    assert len(members) == len({d for _c, d in executor.cgroups.bases}), members
    assert all(len(pids) >= 5 for pids in members), members  # bwrap x2, sh, 2 x sleep
    assert all(pids == members[0] for pids in members), members


@needs_cgroups
async def test_a_join_that_misses_a_hierarchy_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planted bug for the test above: a shell that joins only its first
    cgroup leaves the task out of the others, and the membership check sees it."""
    executor = _executor(tmp_path)
    assert executor.cgroups is not None
    if len({d for _c, d in executor.cgroups.bases}) < 2:
        pytest.skip("one hierarchy (v2): nothing to miss")
    real = cgroups.TaskCgroup.join_commands
    monkeypatch.setattr(
        cgroups.TaskCgroup,
        "join_commands",
        lambda self: real(attrs.evolve(self, dirs=self.dirs[:1])),
    )
    members = await _members_while_running(executor)
    assert len(members) == 2 and not all(members), members


LIMITS_SCRIPT = "cat /proc/self/limits"


def _limits(text: str) -> dict[str, tuple[str, str]]:
    """/proc/self/limits: name -> (soft, hard)."""
    limits = {}
    for line in text.splitlines()[1:]:
        name, soft, hard = line[:26].strip(), *line[26:].split()[:2]
        limits[name] = (soft, hard)
    return limits


async def _task_limits(executor: ProcessExecutor) -> dict[str, tuple[str, str]]:
    result = await _sh(executor, LIMITS_SCRIPT, resources={"cpu": 0.5, "memory": 96 * MIB})
    assert result.status == "succeeded", result
    return _limits(result.stdout_tail)


async def test_a_sandboxed_task_has_exactly_its_limits(tmp_path: Path) -> None:
    """The wrapper sets the rlimits before it execs bwrap: they reach the task
    through bwrap and setpriv, soft and hard (so it cannot raise them)."""
    limits = await _task_limits(_executor(tmp_path, pids_limit=77, min_cpu_seconds=20))
    assert limits["Max address space"] == (str(96 * MIB), str(96 * MIB)), limits
    assert limits["Max cpu time"] == ("20", "25"), limits  # the floor; + the hard extra
    assert limits["Max core file size"] == ("0", "0"), limits
    if os.geteuid() == 0:  # a uid of its own: RLIMIT_NPROC is a per-task limit
        assert limits["Max processes"] == ("77", "77"), limits


async def test_limits_that_do_not_reach_the_task_are_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planted bug for the test above: a wrapper that runs no ``ulimit``."""
    real = process_mod._wrapper_script
    monkeypatch.setattr(process_mod, "_wrapper_script", lambda limits, join: real([":"], join))
    limits = await _task_limits(_executor(tmp_path, pids_limit=77, min_cpu_seconds=20))
    assert limits["Max address space"] != (str(96 * MIB), str(96 * MIB)), limits
    assert limits["Max cpu time"] != ("20", "25"), limits


async def _run_with_a_failing_join(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> ExecutionFinished:
    executor = _executor(tmp_path)
    real = cgroups.TaskCgroup.join_commands

    def failing(self: cgroups.TaskCgroup) -> str:  # a hierarchy that is gone
        gone = self.dirs[-1].with_name("gone")
        return real(attrs.evolve(self, dirs=(*self.dirs, gone)))

    monkeypatch.setattr(cgroups.TaskCgroup, "join_commands", failing)
    return await _sh(executor, "echo ran")


@needs_cgroups
async def test_a_task_whose_cgroup_join_fails_does_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = await _run_with_a_failing_join(tmp_path, monkeypatch)
    assert result.status == "failed" and "gone" in result.stderr_tail, result
    assert result.stdout_tail == "", result


@needs_cgroups
async def test_a_task_run_despite_a_failed_join_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planted bug for the test above: the join's failure ignored (``;``)."""
    monkeypatch.setattr(
        process_mod,
        "_wrapper_script",
        lambda limits, join: "; ".join([join, *limits]) + '; exec "$@"',
    )
    result = await _run_with_a_failing_join(tmp_path, monkeypatch)
    assert result.stdout_tail == "ran\n", result


async def _capabilities(executor: ProcessExecutor) -> dict[str, str]:
    result = await _sh(executor, "grep -E '^(Cap|NoNewPrivs)' /proc/self/status")
    assert result.status == "succeeded", result
    return dict(line.split(":\t") for line in result.stdout_tail.splitlines())


async def test_a_sandboxed_task_has_no_capability_and_cannot_gain_one(tmp_path: Path) -> None:
    """Not even an inheritable one (a root node's bwrap keeps CAP_SETUID and
    CAP_SETGID for setpriv, inheritable included), and no_new_privs is set."""
    status = await _capabilities(_executor(tmp_path))
    for name in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[name], 16) == 0, status
    assert status["NoNewPrivs"] == "1", status


async def test_an_inheritable_capability_left_to_the_task_is_seen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planted bug for the test above: setpriv without ``--inh-caps=-all``."""
    executor = _executor(tmp_path)
    if executor.sandbox is None or executor.sandbox.setpriv is None:
        pytest.skip("only a root node's bwrap holds capabilities for the task")
    real = BwrapSandbox.argv

    def argv(self: BwrapSandbox, **kwargs: Any) -> list[str]:
        return [a for a in real(self, **kwargs) if a != "--inh-caps=-all"]

    monkeypatch.setattr(BwrapSandbox, "argv", argv)
    status = await _capabilities(executor)
    assert int(status["CapInh"], 16) != 0, status
