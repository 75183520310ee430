"""Lease renewals among peers whose timings differ, under load (L4).

Ten nodes, thirty jobs each, every node with its own timings (a grant's ttl
from 1 to 20 s, the owner's), a network that only loses (10 %), duplicates
and reorders frames.  Seeds 11, 12 and 19 expired three leases of one slot:
with a 1 s ttl the holder sent its next renewal a third of the ttl after the
previous one's ACK came (a slow round trip ate the room for retries) and
retried no faster as its lease ran out, so one lost renewal and one delayed
ack lapsed a healthy lease.  Now the cadence runs from the acknowledged
renewal's send and retries speed up near the lease's end
(``Holder._renew``, ``Holder.on_renew_ack``).
"""

from __future__ import annotations

from typing import Any

import pytest

from protocols.holder import Holder
from protocols.timers import RENEW, ExecTimer
from simnet.runner import RunOptions, run_scenario

SEEDS = (11, 12, 19)


def _loaded(seed: int) -> dict[str, Any]:
    return run_scenario(RunOptions(seed=seed, nodes=10, jobs=300, loss=0.1, duplicate=0.05,
                                   reorder=0.2, workload="plain", timings="mixed"))


@pytest.mark.parametrize("seed", SEEDS)
def test_short_leases_among_mixed_timings_survive_a_lossy_network(seed: int) -> None:
    report = _loaded(seed)
    assert report["invariant_violations"] == []
    assert report["lost"] == 0 and report["completed"] == 300


def _old_cadence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: the cadence before the fix (from the ack's arrival; retries
    never faster than the retransmission back-off)."""
    renew, on_ack = Holder._renew, Holder.on_renew_ack

    def renew_old(self: Any, held: Any) -> None:
        renew(self, held)
        held.next_renew = self.out.now + held.renew_delay
        self.out.timer(ExecTimer(RENEW, held.execution_id), held.next_renew)

    def on_ack_old(self: Any, sender: str, ack: Any) -> None:
        on_ack(self, sender, ack)
        held = self.held.get(ack.execution_id)
        if held is not None and held.renew_delay == 0.0 and ack.seq in held.sent_at:
            held.next_renew = self.out.now + self._renew_interval(held)
            self.out.timer(ExecTimer(RENEW, held.execution_id), held.next_renew)

    monkeypatch.setattr(Holder, "_renew", renew_old)
    monkeypatch.setattr(Holder, "on_renew_ack", on_ack_old)


def test_planted_old_cadence_lapses_healthy_leases(monkeypatch: pytest.MonkeyPatch) -> None:
    _old_cadence(monkeypatch)
    caught = [seed for seed in SEEDS
              if any("(L4" in v for v in _loaded(seed)["invariant_violations"])]
    assert caught, "the old renewal cadence went unnoticed"
