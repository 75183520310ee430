"""Long pauses of real ``serve`` processes (SIGSTOP, then SIGCONT): a laptop
lid closed, a VM descheduled, a process stopped in a debugger.

SIGKILL (``test_real_cluster``) ends a node and, through the sandbox's
``--die-with-parent``, its tasks with it.  A pause does neither: the node's
tasks keep running while it is frozen, its connections stay open with nobody
reading, and when it wakes every timer it had is overdue.  The time bounds must
hold anyway:

* a paused **holder** loses its lease; the owner re-runs the work elsewhere and
  the job completes.  Its task, which a pause does not stop, is ended by the
  node's lease watchdog (``p2pnode/watchdog_helper.py``) once the lease has run
  out, while the node is still frozen; woken, the node cleans up after it, and
  its late report changes nothing;
* the same holder running a **Docker** task: its container runs in dockerd,
  not in the node, so the pause leaves it running too; the watchdog kills it
  through the Engine API;
* a paused **owner** stops acknowledging renewals; its holder ends the task on
  its own clock, while the owner is still frozen, because no execution may
  assume its owner stays up; the owner, woken, re-runs the work.

The first execution (epoch 1) sleeps a minute and later ones 3 s, so which
execution finished is never in doubt.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

from p2pnode.watchdog_docker import LABEL_EXECUTION
from tests.realnet import (
    Cluster,
    ServeNode,
    cluster,
    execution_pidfiles,
    executions,
    group_alive,
    is_terminal,
    running_execution,
)
from tests.test_real_cluster import HOLDER_KILL_SPEC, _start_cluster

pytestmark = pytest.mark.slow

TTL = 2.0


@attrs.frozen
class _Running:
    """A cluster (owner ``a``, compute ``b`` and ``c``) whose job's first
    execution runs: on ``holder``, as ``eid``, its task in group ``pgid``."""

    c: Cluster
    owner: ServeNode
    compute: list[ServeNode]
    job_id: str
    holder: ServeNode
    eid: str
    pgid: int


@contextlib.contextmanager
def _first_execution_running(tmp_path: Path) -> Iterator[_Running]:
    tmp_path.mkdir(exist_ok=True)
    with cluster(tmp_path) as c:
        owner, *compute = _start_cluster(c, owner_executors="", lease_ttl=TTL)
        job_id = owner.control("submit", spec=yaml.safe_load(HOLDER_KILL_SPEC))["job_id"]
        view = c.wait_job(owner, job_id, running_execution, timeout=30, what="a running execution")
        first = running_execution(view)
        assert first is not None and first["epoch"] == 1, view
        holder = next(n for n in compute if n.node_id == first["node"])
        eid = first["execution_id"]
        pgid = c.wait_until(
            lambda: execution_pidfiles(holder.data_dir).get(eid),
            timeout=10,
            what=f"the pidfile of {eid} on {holder.name}",
        )
        assert group_alive(pgid)
        yield _Running(c, owner, compute, job_id, holder, eid, pgid)


def _wait_task_gone(run: _Running, timeout: float, what: str) -> None:
    """Until the first execution's task group and its pidfile are gone."""
    run.c.wait_until(lambda: not group_alive(run.pgid), timeout=timeout, what=what)
    run.c.wait_until(
        lambda: run.eid not in execution_pidfiles(run.holder.data_dir),
        timeout=15,
        what=f"the pidfile of {run.eid} to go",
    )


def _assert_re_run_once(view: dict[str, Any], eid: str) -> dict[str, Any]:
    """The job completed by one later execution, not by the first; returns it."""
    assert view["state"] == "completed", view
    execs = executions(view)
    assert execs[0]["execution_id"] == eid and execs[0]["state"] != "succeeded", execs
    succeeded = [e for e in execs if e["state"] == "succeeded"]
    assert len(succeeded) == 1 and succeeded[0]["epoch"] > 1, execs
    return succeeded[0]


def _lapses(owner: ServeNode) -> int:
    """Leases the owner saw expire."""
    stats = json.loads(owner.cli("-o", "json", "node", "stats").stdout)
    return int(stats["leases"].get("lapses", 0))


def test_a_paused_holder_loses_its_lease_and_its_watchdog_ends_the_task(tmp_path: Path) -> None:
    _pause_the_holder(tmp_path)


def test_a_paused_owner_makes_its_holder_end_the_task(tmp_path: Path) -> None:
    _pause_the_owner(tmp_path)


# Planted in the serve processes (a sitecustomize module on their PYTHONPATH):
# a holder that never ends a task for its lease's sake, neither when the lease
# lapses on its own clock nor when its owner refuses a renewal or cancels, as
# if it assumed that neither its owner nor its own process ever stops.  (The
# woken holder is stopped by whichever comes first; each alone suffices.)
# The lease watchdog is a third layer, planted out with it.
NO_FENCING = """\
from protocols.holder import Holder

_renew_ack = Holder.on_renew_ack


def _refusal_ignored(self, sender, ack):
    if ack.valid:
        _renew_ack(self, sender, ack)


Holder.on_lapse_timer = lambda self, exec_id: None
Holder.on_renew_ack = _refusal_ignored
Holder.on_cancel = lambda self, sender, msg: None
"""


# Planted: no lease watchdog (the node never starts its helper).
NO_WATCHDOG = """\
from p2pnode.watchdog import LeaseWatchdog


async def _no_helper(self):
    return None


LeaseWatchdog.run = _no_helper
"""


def test_planted_node_without_a_watchdog_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _plant(tmp_path, monkeypatch, NO_WATCHDOG)
    with pytest.raises(AssertionError, match="watchdog"):
        _pause_the_holder(tmp_path / "run", patience=10)


def _plant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: str) -> None:
    """Run ``code`` in every serve process started from now on (a
    sitecustomize module on their PYTHONPATH)."""
    plant = tmp_path / "plant"
    plant.mkdir()
    (plant / "sitecustomize.py").write_text(code)
    monkeypatch.setenv("PYTHONPATH", f"{plant}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def test_planted_holder_that_never_fences_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The watchdog goes too: it ends a lapsed lease's task whatever the node does.
    # (The holder scenario would catch it too, and the watchdog plant alone.)
    _plant(tmp_path, monkeypatch, NO_FENCING + NO_WATCHDOG)
    with pytest.raises(AssertionError, match="task"):
        _pause_the_owner(tmp_path / "run", patience=10)


# Each wait that a planted bug fails is bounded by ``patience`` seconds: ample
# for the real code (the watchdog acts ttl + kill_grace + 1 s after the last
# renewal, the holder's own fence ttl after it; about 6 and 2 s), shorter in the
# planted runs so that they cost less.
def _pause_the_holder(tmp_path: Path, patience: float = 20) -> None:
    with _first_execution_running(tmp_path) as run:
        c, owner, holder = run.c, run.owner, run.holder
        survivor = next(n for n in run.compute if n is not holder)
        holder.signal(signal.SIGSTOP)
        try:
            # Frozen, it renews nothing: the owner re-grants elsewhere, and the
            # job completes while the holder is still stopped.  Its task does
            # not share its process, so the pause does not stop it: the lease
            # watchdog ends it once the lease has run out (ttl + margin).
            c.wait_until(
                lambda: not group_alive(run.pgid),
                timeout=patience,
                what="the watchdog to end the frozen holder's task",
            )
            view = c.wait_job(owner, run.job_id, is_terminal, timeout=60, what="a terminal state")
        finally:
            holder.signal(signal.SIGCONT)
        # Woken, it finds its task gone and cleans up after it.
        _wait_task_gone(run, timeout=15, what="the stale task to be reaped")
        # Its late report changes nothing the owner decided.
        c.wait_until(
            lambda: _settled(owner, run.job_id), timeout=15, what="the first execution to settle"
        )
        after = owner.describe(run.job_id)
        assert holder.running
        lapses = _lapses(owner)

    assert lapses >= 1
    assert view["state"] == "completed", view
    assert executions(after)[0]["node"] == holder.node_id
    assert _assert_re_run_once(after, run.eid)["node"] == survivor.node_id


def _pause_the_owner(tmp_path: Path, patience: float = 30) -> None:
    with _first_execution_running(tmp_path) as run:
        run.owner.signal(signal.SIGSTOP)
        try:
            # No renewal is acknowledged: the holder's lease lapses on its own
            # clock and it ends the task, with the owner still frozen.
            _wait_task_gone(
                run, timeout=patience, what="the holder to end its task while its owner is paused"
            )
        finally:
            run.owner.signal(signal.SIGCONT)
        # Woken, the owner finds the lease expired and re-runs the work.
        view = run.c.wait_job(
            run.owner, run.job_id, is_terminal, timeout=60, what="a terminal state"
        )
        lapses = _lapses(run.owner)

    assert lapses >= 1
    _assert_re_run_once(view, run.eid)


def _settled(owner: ServeNode, job_id: str) -> bool:
    first = executions(owner.describe(job_id))[0]
    return first["state"] not in ("running", "granted", "starting")


# --- a Docker task -----------------------------------------------------------------


def _container_running(client: Any, execution_id: str) -> str | None:
    """The id of the running container of ``execution_id``, if any."""
    found = client.containers.list(
        filters={"label": f"{LABEL_EXECUTION}={execution_id}", "status": "running"}
    )
    return str(found[0].id) if found else None


@pytest.mark.docker
def test_a_paused_holders_container_is_ended_by_its_watchdog(
    tmp_path: Path, docker_client: Any, busybox_image: str
) -> None:
    _pause_a_docker_holder(tmp_path, docker_client, busybox_image)


# Planted: a watchdog that does not know the node's Docker engine (as before
# it covered containers): the process groups only.
NO_DOCKER_WATCHDOG = """import p2pnode.watchdog_docker

p2pnode.watchdog_docker.engine_from_env = lambda environ: None
"""


@pytest.mark.docker
def test_planted_watchdog_without_docker_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, docker_client: Any, busybox_image: str
) -> None:
    _plant(tmp_path, monkeypatch, NO_DOCKER_WATCHDOG)
    with pytest.raises(AssertionError, match="watchdog"):
        _pause_a_docker_holder(tmp_path / "run", docker_client, busybox_image, patience=10)


def _pause_a_docker_holder(tmp_path: Path, client: Any, image: str, patience: float = 20) -> None:
    tmp_path.mkdir(exist_ok=True)
    spec = yaml.safe_load(HOLDER_KILL_SPEC)
    command = spec["task"]["engine"]["command"]
    spec["task"]["engine"] = {"type": "docker", "image": image, "command": command}
    with cluster(tmp_path) as c:
        owner = c.add("a", executors="", lease_ttl=TTL)
        owner.wait_ready()
        compute = [
            c.add(name, executors="docker", lease_ttl=TTL, bootstrap=[owner.addrs[0]])
            for name in ("b", "c")
        ]
        for node in compute:
            node.wait_ready()
        c.wait_connected([owner, *compute])
        job_id = owner.control("submit", spec=spec)["job_id"]
        view = c.wait_job(owner, job_id, running_execution, timeout=60, what="a running execution")
        first = running_execution(view)
        assert first is not None and first["epoch"] == 1, view
        holder = next(n for n in compute if n.node_id == first["node"])
        eid = first["execution_id"]
        c.wait_until(
            lambda: _container_running(client, eid), timeout=30, what=f"the container of {eid}"
        )
        holder.signal(signal.SIGSTOP)
        try:
            # The container is dockerd's child, not the node's: the pause does
            # not stop it.  The watchdog kills it once the lease has run out.
            c.wait_until(
                lambda: _container_running(client, eid) is None,
                timeout=patience,
                what="the watchdog to end the frozen holder's container",
            )
            view = c.wait_job(owner, job_id, is_terminal, timeout=90, what="a terminal state")
        finally:
            holder.signal(signal.SIGCONT)
        c.wait_until(lambda: _settled(owner, job_id), timeout=15, what="the first to settle")
        after = owner.describe(job_id)
        assert holder.running
        said = holder.stderr_path.read_text(errors="replace")

    assert view["state"] == "completed", view
    survivor = next(n for n in compute if n is not holder)
    assert _assert_re_run_once(after, eid)["node"] == survivor.node_id
    assert f"ended the task of {eid}" in said  # the watchdog's doing, not the node's
