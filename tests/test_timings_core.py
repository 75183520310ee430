"""Time bounds two peers rely on come from the message that establishes them,
and a lost execution never uses up the task's retries (issue 11, defects 1, 4).

Every case runs peers with *different* ``Timings``: each node's own settings
only pace its own retries; the lease's ttl is the grant's, the bid's hold
outlives the window of the ask."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from protocols.config import Timings
from protocols.events import StartExecution, SubmitJob
from protocols.holder import MIN_LEASE_TTL, Holder
from protocols.messages import LeaseAccept, LeaseRelease, LeaseRenew
from tests.protonet import ProtoNet, batch_spec

IDS = ["a", "b", "c"]
OWNER_ONLY = frozenset({"a"})  # "a" owns, "b" and "c" hold
SHORT = Timings(lease_ttl=2.0, lease_grace=0.5)
LONG = Timings(lease_ttl=20.0, lease_grace=4.0)
JOB_SECONDS = 8.0  # several short ttls long


def _net(owner: Timings, holder: Timings, **kw: Any) -> ProtoNet:
    return ProtoNet(
        IDS,
        owners_only=OWNER_ONLY,
        node_timings={"a": owner, "b": holder, "c": holder},
        **kw,
    )


def _submit(net: ProtoNet, spec: dict[str, Any] | None = None) -> tuple[str, str]:
    net.run_for(1.0)
    net.feed("a", SubmitJob("j1", spec or batch_spec()))
    net.run_until(lambda: bool(net.running_anywhere()))
    [(node, exec_id)] = net.running_anywhere()
    return node, exec_id


def _slot(net: ProtoNet) -> dict[str, Any]:
    slot: dict[str, Any] = net.core("a").describe("j1")["slots"][0]
    return slot


def _run_long_job(net: ProtoNet) -> None:
    node, exec_id = _submit(net)
    net.run_for(JOB_SECONDS)
    assert net.running_anywhere() == [(node, exec_id)], "the lease was lost while healthy"
    net.finish(node, exec_id)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")
    assert len(net.notes_of("lease_granted")) == 1
    assert _slot(net)["lost"] == 0


@pytest.mark.parametrize(
    ("owner", "holder"), [(SHORT, LONG), (LONG, SHORT)], ids=["short-owner", "short-holder"]
)
def test_mismatched_ttl_runs_a_long_job_once(owner: Timings, holder: Timings) -> None:
    net = _net(owner, holder)
    _run_long_job(net)


def test_holder_renews_at_a_third_of_the_grants_ttl() -> None:
    net = _net(SHORT, LONG)
    _submit(net)
    start = net.now
    seen: list[float] = []

    def watch(frame: Any) -> bool:
        if isinstance(frame.message, LeaseRenew):
            seen.append(frame.at)
        return False

    net.drop = watch
    net.run_for(6.0)
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    assert seen and seen[0] - start <= SHORT.lease_ttl
    assert gaps and max(gaps) < SHORT.lease_ttl / 2  # ttl/3 + one round trip


def test_holder_using_its_own_ttl_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planted bug of the issue: renewing at the holder's own ttl/3."""
    monkeypatch.setattr(Holder, "_renew_interval", lambda self, held: self.t.renew_interval)
    net = _net(SHORT, LONG)
    with pytest.raises(AssertionError):
        _run_long_job(net)


def test_restarted_owner_keeps_the_granted_ttl() -> None:
    """An owner restarted with a shorter ``--lease-ttl`` judges the leases it
    granted before by the ttl they carry: the holder renews by that one."""
    net = _net(LONG, Timings())
    node, exec_id = _submit(net)
    net.run_for(2.0)
    net.crash("a")
    net.node_timings["a"] = SHORT
    net.start("a")
    net.run_for(2 * LONG.lease_ttl)  # (within the task timeout)
    assert net.running_anywhere() == [(node, exec_id)]
    assert len(net.notes_of("lease_granted")) == 1
    net.finish(node, exec_id)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")


def test_bid_outlives_the_owners_window() -> None:
    """The owner's bid window (in its ask) is longer than the bidder's own
    ``bid_hold``: the winner's reservation still waits for the grant."""
    owner = Timings(bid_window=3.0)
    bidder = Timings(bid_window=0.1, bid_hold=0.5)
    net = _net(owner, bidder)
    net.partition("a", "c")  # "c" never answers: the auction waits its whole window
    node, exec_id = _submit(net)
    assert node == "b"
    assert not [n for n in net.notes_of("dropped") if "did not bid" in n["reason"]]
    net.finish(node, exec_id)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")
    assert len(net.notes_of("lease_granted")) == 1


def test_grant_with_a_tiny_ttl_is_refused() -> None:
    net = _net(Timings(lease_ttl=0.1, lease_grace=0.1), Timings())
    released: list[str] = []

    def watch(frame: Any) -> bool:
        if isinstance(frame.message, LeaseRelease):
            released.append(frame.message.reason)
        return False

    net.drop = watch
    net.run_for(1.0)
    net.feed("a", SubmitJob("j1", batch_spec()))
    net.run_until(lambda: net.job_state("a", "j1") == "failed")
    assert not net.notes_of("execution_started")
    assert not net.running_anywhere()
    assert released and "below the minimum" in released[0]


def test_grant_with_exactly_the_minimum_ttl_is_taken() -> None:
    net = _net(Timings(lease_ttl=MIN_LEASE_TTL, lease_grace=0.5), Timings())
    node, exec_id = _submit(net)
    net.finish(node, exec_id)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")


# --- defect 4: lost executions never use up retries ------------------------------------


ONE_ATTEMPT = batch_spec(retry={"attempts": 1, "backoff": 1000})


def test_holder_restart_is_lost_not_failed() -> None:
    net = _net(Timings(), Timings())
    node, _ = _submit(net, ONE_ATTEMPT)
    net.crash(node)
    net.start(node)
    net.run_until(lambda: bool(net.running_anywhere()) and _slot(net)["epoch"] == 2)
    slot = _slot(net)
    assert (slot["failures"], slot["lost"]) == (0, 1)
    assert slot["executions"][0]["state"] == "lost"
    assert not net.notes_of("execution_failed")
    [(node2, exec2)] = net.running_anywhere()
    net.finish(node2, exec2)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")


def test_lease_lapse_is_lost_not_failed() -> None:
    net = _net(SHORT, Timings())
    node, exec_id = _submit(net, ONE_ATTEMPT)
    net.partition("a", node)
    net.run_until(lambda: _slot(net)["epoch"] == 2)
    net.heal()
    net.run_until(lambda: any(e != exec_id for _, e in net.running_anywhere()))
    slot = _slot(net)
    assert (slot["failures"], slot["lost"]) == (0, 1)
    [(node2, exec2)] = [(n, e) for n, e in net.running_anywhere() if e != exec_id]
    net.finish(node2, exec2)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")


def test_a_real_failure_still_uses_the_attempt() -> None:
    net = _net(Timings(), Timings())
    node, exec_id = _submit(net, ONE_ATTEMPT)
    net.finish(node, exec_id, status="failed", exit_code=1)
    net.run_until(lambda: net.job_state("a", "j1") == "failed")
    assert _slot(net)["failures"] == 1


def test_the_run_starts_only_once_the_owner_acknowledged_the_accept() -> None:
    """A grant may arrive late (delayed, or a retransmitted copy) while the
    owner counts the lease from its first send: a holder that started at the
    grant's receipt could still run when the owner re-grants.  It starts on
    the owner's answer to its accept instead."""
    net = _net(SHORT, Timings())
    net.drop = lambda f: isinstance(f.message, (LeaseAccept, LeaseRenew))  # never acknowledged
    net.run_for(1.0)
    net.feed("a", SubmitJob("j1", batch_spec()))
    net.run_until(lambda: len(net.notes_of("lease_granted")) >= 2)  # the first lease expired
    assert not any(isinstance(a, StartExecution) for _, acts in net.actions for a in acts)
    net.drop = lambda f: False
    net.run_until(lambda: bool(net.running_anywhere()))
    [(node, exec_id)] = net.running_anywhere()
    net.finish(node, exec_id)
    net.run_until(lambda: net.job_state("a", "j1") == "completed")
    assert _slot(net)["failures"] == 0


def test_the_holder_ends_a_task_its_executor_let_run_past_its_timeout() -> None:
    """The executor enforces ``task.timeout``; the holder's own timer is the
    backstop when it does not (here: nothing ever finishes the task): one
    second past the timeout the holder stops it and reports "timeout", and
    the attempt counts as failed."""
    net = _net(Timings(), Timings())
    _submit(net, batch_spec(timeout=5_000, retry={"attempts": 1, "backoff": 1000}))
    started = net.now
    net.run_until(lambda: not net.running_anywhere(), limit=started + 5.0 + 1.5)
    net.run_until(lambda: net.job_state("a", "j1") == "failed", limit=net.now + 2)
    (execution,) = _slot(net)["executions"]
    assert execution["state"] == "timeout", execution
    assert _slot(net)["failures"] == 1
