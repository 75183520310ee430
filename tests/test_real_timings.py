"""Peers with different settings, as real ``p2pnode serve`` processes (issue 11).

* Mismatched ``--lease-ttl``, both ways round: the holder paces and fences
  the lease by the ttl of the *grant*, so an 8 s job runs exactly once
  (before: owner ``--lease-ttl 2``, holder default: re-granted again and
  again, then failed).
* A holder SIGKILLed and restarted under a job with ``retry: {attempts: 1}``:
  the execution it lost is a lost lease, not the task's failure; the job
  completes (before: it failed after one restart of a healthy holder).

One compute node only, so the holder is known in advance.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from protocols.config import Timings
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

pytestmark = pytest.mark.slow

DEFAULT_TTL = Timings().lease_ttl

LONG_JOB_SPEC = """\
name: eight-seconds
type: batch
task:
  engine: {type: process, command: [sh, -c, 'sleep 8; echo done']}
  resources: {cpu: 0.1, memory: 64MiB}
  timeout: 2m
"""

# Epoch 1 sleeps far longer than the test (it is killed with its node); a later
# epoch ends at once.  One attempt: a lost execution must not use it up.
ONE_ATTEMPT_SPEC = """\
name: one-attempt
type: batch
task:
  engine:
    type: process
    command:
      - sh
      - -c
      - 'case "$P2PNODE_EXECUTION_ID" in */1) sleep 60;; *) echo done;; esac'
  resources: {cpu: 0.1, memory: 64MiB}
  timeout: 2m
  retry: {attempts: 1}
"""


def _start(c: Cluster, *, owner_ttl: float, holder_ttl: float) -> tuple[ServeNode, ServeNode]:
    owner = c.add("a", executors="", lease_ttl=owner_ttl)  # owns, never computes
    owner.wait_ready()
    holder = c.add("b", lease_ttl=holder_ttl, bootstrap=[owner.addrs[0]])
    holder.wait_ready()
    c.wait_connected([owner, holder])
    return owner, holder


def _submit(owner: ServeNode, spec: Path) -> str:
    submitted = owner.cli("job", "run", spec, "-o", "json")
    assert submitted.returncode == 0, submitted.explain()
    job_id: str = submitted.json()["job_id"]
    return job_id


@pytest.mark.parametrize(
    ("owner_ttl", "holder_ttl"),
    [(2.0, DEFAULT_TTL), (DEFAULT_TTL, 2.0)],
    ids=["owner-2s-holder-default", "owner-default-holder-2s"],
)
def test_mismatched_lease_ttl_runs_a_long_job_once(
    tmp_path: Path, owner_ttl: float, holder_ttl: float
) -> None:
    spec = tmp_path / "long.yaml"
    spec.write_text(LONG_JOB_SPEC)
    with cluster(tmp_path) as c:
        owner, holder = _start(c, owner_ttl=owner_ttl, holder_ttl=holder_ttl)
        job_id = _submit(owner, spec)
        view = c.wait_job(owner, job_id, is_terminal, timeout=90, what="a terminal state")
        assert view["state"] == "completed", view
        execs = executions(view)
        assert len(execs) == 1, execs  # one grant: never re-granted while healthy
        assert execs[0]["state"] == "succeeded" and execs[0]["node"] == holder.node_id
        assert (view["slots"][0]["failures"], view["slots"][0]["lost"]) == (0, 0)


def test_holder_restart_does_not_use_up_the_only_attempt(tmp_path: Path) -> None:
    spec = tmp_path / "one-attempt.yaml"
    spec.write_text(ONE_ATTEMPT_SPEC)
    with cluster(tmp_path) as c:
        # A long ttl on the owner: the holder is back well within the lease, so
        # it is the restarted holder that reports the execution lost.
        owner, holder = _start(c, owner_ttl=30.0, holder_ttl=2.0)
        job_id = _submit(owner, spec)
        view = c.wait_job(owner, job_id, running_execution, timeout=30, what="a running execution")
        first = running_execution(view)
        assert first is not None and first["epoch"] == 1
        eid = first["execution_id"]
        pgid = c.wait_until(
            lambda: execution_pidfiles(holder.data_dir).get(eid),
            timeout=10,
            what=f"the pidfile of {eid}",
        )
        holder.kill()
        holder.start()
        holder.wait_ready()
        c.wait_until(lambda: not group_alive(pgid), timeout=10, what="the orphan group reaped")

        view = c.wait_job(owner, job_id, is_terminal, timeout=90, what="a terminal state")
        assert view["state"] == "completed", view
        execs = executions(view)
        assert execs[0]["execution_id"] == eid and execs[0]["state"] == "lost", execs
        assert [e["state"] for e in execs[1:]] == ["succeeded"], execs
        slot = view["slots"][0]
        assert (slot["failures"], slot["lost"]) == (0, 1), slot
