"""``job run``'s retry policy (p2pnode.cli.retry), on a scripted sequence of
control-socket outcomes and trio's autojump clock (the waits take no real
time).  The real-process version, a SIGKILLed node, is test_real_submit.py."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from p2pnode.cli.retry import Attempts, OutcomeUnknown, new_key
from p2pnode.control import ConnectionLost, ControlClient, ControlError, NodeNotRunning

CLIENT = ControlClient(Path("/nonexistent"))


def script(
    *outcomes: Exception | str,
) -> tuple[Callable[[ControlClient], Awaitable[str]], list[float]]:
    """An op returning or raising ``outcomes`` in turn; records when it was called."""
    calls: list[float] = []
    queue = list(outcomes)

    async def op(client: ControlClient) -> str:
        calls.append(trio.current_time())
        outcome = queue.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return op, calls


async def test_a_lost_connection_is_retried_until_the_node_answers(
    autojump_clock: trio.abc.Clock,
) -> None:
    op, calls = script(ConnectionLost("gone"), NodeNotRunning("down"), NodeNotRunning("down"), "j")
    assert await Attempts("k", 30.0).run(op, CLIENT) == "j"
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps == pytest.approx([0.2, 0.4, 0.8])  # backing off


async def test_nothing_sent_is_not_retried(autojump_clock: trio.abc.Clock) -> None:
    op, calls = script(NodeNotRunning("no node"), "j")
    with pytest.raises(NodeNotRunning):
        await Attempts("k", 30.0).run(op, CLIENT)
    assert len(calls) == 1


async def test_a_refusal_is_final(autojump_clock: trio.abc.Clock) -> None:
    op, calls = script(ConnectionLost("gone"), ControlError("different spec"), "j")
    with pytest.raises(ControlError, match="different spec"):
        await Attempts("k", 30.0).run(op, CLIENT)
    assert len(calls) == 2


async def test_retries_run_out_into_outcome_unknown_naming_the_key(
    autojump_clock: trio.abc.Clock,
) -> None:
    op, calls = script(*[ConnectionLost("gone")] * 100)
    start = trio.current_time()
    with pytest.raises(OutcomeUnknown, match="--idempotency-key k-1 ") as info:
        await Attempts("k-1", 10.0).run(op, CLIENT)
    assert info.value.key == "k-1"
    assert trio.current_time() - start == pytest.approx(10.0)
    assert 5 < len(calls) < 12  # 0.2, 0.4, 0.8, 1.6, then every 2 s


async def test_each_outage_gets_its_own_window(autojump_clock: trio.abc.Clock) -> None:
    """The node answered between two outages (e.g. it died again during
    --wait): the second outage is not charged the first one's time."""
    attempts = Attempts("k", 5.0)
    first, _ = script(*[ConnectionLost("gone")] * 3, "j")
    assert await attempts.run(first, CLIENT) == "j"
    attempts.reached()
    await trio.sleep(100)
    second, calls = script(*[ConnectionLost("gone")] * 4, "j")
    assert await attempts.run(second, CLIENT) == "j"
    assert len(calls) == 5


def test_keys_are_fresh_per_invocation() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100 and all(k.startswith("cli-") and len(k) == 36 for k in keys)
