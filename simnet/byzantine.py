"""Byzantine peers: nodes an adversary speaks through.

A share of the nodes (``--byzantine F``) runs a real core (it gossips and is
known to everyone) but never computes and is never handed a job; on top of
it an omniscient adversary, which sees every lease granted and every frame
sent, makes the node lie at seeded times:

* forged ``execution_result`` (succeeded or failed), ``lease_release``,
  ``cancel``, ``renew_ack`` and ``lease_grant`` for real, live executions;
* the same while *claiming another sender*: the envelope's ``from`` names the
  real owner or holder, the transport says the byzantine node;
* replayed frames: a recorded frame resent byte for byte (its ``from`` is
  somebody else), or its message re-sent under the byzantine node's name;
* invented asks (``ask_for_bid`` for jobs that do not exist, or for a real
  job's next attempt), which make honest holders reserve capacity.

Safety must hold for the honest nodes whatever the byzantine ones say (their
own reports are ignored by the checkers); liveness may suffer only as much
as capacity reserved for invented asks costs.
"""

from __future__ import annotations

import random
from typing import Any

from protocols import codec
from protocols.events import StartExecution
from protocols.messages import (
    AskForBid,
    Cancel,
    ExecutionResult,
    LeaseGrant,
    LeaseRelease,
    Message,
    RenewAck,
)
from simnet.engine import Observer, derive_seed
from simnet.view import ClusterView
from simnet.workload import sim_task

ATTACK_RATE = 2.0  # lies per byzantine node per virtual second
FRESH = 8  # lies aim at the newest leases mostly (they are still running)
RECORDED_FRAMES = 256  # replay buffer (most recent frames seen on the wire)
ATTACKS = ("result", "result", "release", "cancel", "renew_ack", "grant", "ask",
           "replay", "reencode")


class Lease:
    __slots__ = ("eid", "epoch", "holder", "job", "owner", "slot")

    def __init__(self, owner: str, data: dict[str, Any]) -> None:
        self.owner = owner
        self.job = str(data.get("job_id"))
        self.slot = int(data.get("slot", 0))
        self.epoch = int(data.get("epoch", 1))
        self.eid = str(data.get("execution_id"))
        self.holder = str(data.get("holder"))


class Adversary(Observer):
    """Speaks through ``cluster.byzantine``; an observer of honest reports."""

    def __init__(self, cluster: ClusterView) -> None:
        self.cluster = cluster
        self.rng = random.Random(derive_seed(cluster.seed, "byzantine"))
        self.nodes = sorted(cluster.byzantine)
        self.honest = [n for n in cluster.ids if n not in cluster.byzantine]
        self.leases: dict[tuple[str, int], Lease] = {}
        self.recent: list[Lease] = []  # the newest FRESH leases granted
        self.frames: list[tuple[int, bytes]] = []  # (destination, frame)
        self.active = False
        self.sent: dict[str, int] = {}  # attack -> frames sent
        self._ids = 0

    def start(self) -> None:
        if not self.nodes:
            return
        self.active = True
        self.cluster.engine.sniffer = self._sniff
        for node in self.nodes:
            self._next(node)

    def stop(self) -> None:
        self.active = False
        self.cluster.engine.sniffer = None

    # --- what the adversary sees --------------------------------------------------------

    def _sniff(self, src: int, dst: int, data: bytes) -> None:
        frames = self.frames
        if len(frames) < RECORDED_FRAMES:
            frames.append((dst, data))
        else:
            frames[self.rng.randrange(RECORDED_FRAMES)] = (dst, data)

    def on_notify(self, node: str, kind: str, data: dict[str, Any], now: float) -> None:
        if kind == "lease_granted":
            lease = Lease(node, data)
            self.leases[(lease.job, lease.slot)] = lease
            self.recent = [*self.recent[-(FRESH - 1):], lease]

    def on_exec_start(self, node: str, action: StartExecution, now: float) -> None:
        pass

    # --- lying ----------------------------------------------------------------------------

    def _next(self, node: str) -> None:
        at = self.cluster.now + self.rng.expovariate(ATTACK_RATE)
        self.cluster.at(at, lambda: self._attack(node))

    def _attack(self, node: str) -> None:
        if not self.active:
            return
        if self.cluster.is_up(node):
            attack = self.rng.choice(ATTACKS)
            if getattr(self, "_" + attack)(node):
                self.sent[attack] = self.sent.get(attack, 0) + 1
        self._next(node)

    def _send(self, node: str, to: str, message: Message, claim: str | None = None) -> bool:
        """Send ``message`` from ``node``'s transport, its envelope claiming ``claim``."""
        self._ids += 1
        sender = claim or node
        data = codec.encode(message, msg_id=f"{sender}:99999:{self._ids}", sender=sender)
        self.cluster.engine.send(node, to, data)
        return True

    def _lease(self) -> Lease | None:
        if not self.leases:
            return None
        if self.recent and self.rng.random() < 0.7:
            return self.recent[self.rng.randrange(len(self.recent))]
        return self.leases[self.rng.choice(sorted(self.leases))]

    def _claim(self, node: str, other: str) -> str:
        """Half the lies name the node itself, half someone else (a stolen name)."""
        return node if self.rng.random() < 0.5 else other

    def _result(self, node: str) -> bool:
        lease = self._lease()
        if lease is None:
            return False
        status = self.rng.choice(("succeeded", "failed"))
        msg = ExecutionResult(execution_id=lease.eid, epoch=lease.epoch, status=status,
                              exit_code=0 if status == "succeeded" else 1, error="forged")
        return self._send(node, lease.owner, msg, self._claim(node, lease.holder))

    def _release(self, node: str) -> bool:
        lease = self._lease()
        if lease is None:
            return False
        msg = LeaseRelease(execution_id=lease.eid, epoch=lease.epoch, reason="forged")
        return self._send(node, lease.owner, msg, self._claim(node, lease.holder))

    def _cancel(self, node: str) -> bool:
        lease = self._lease()
        if lease is None:
            return False
        msg = Cancel(execution_id=lease.eid, epoch=lease.epoch, reason="forged")
        return self._send(node, lease.holder, msg, self._claim(node, lease.owner))

    def _renew_ack(self, node: str) -> bool:
        lease = self._lease()
        if lease is None:
            return False
        msg = RenewAck(execution_id=lease.eid, epoch=lease.epoch, seq=2**31,
                       valid=self.rng.random() < 0.5, reason="forged")
        return self._send(node, lease.holder, msg, self._claim(node, lease.owner))

    def _grant(self, node: str) -> bool:
        lease = self._lease()
        if lease is None:
            return False
        epoch = lease.epoch + self.rng.randint(0, 1)
        to = self.rng.choice(self.honest)
        msg = LeaseGrant(execution_id=f"{lease.job}/{lease.slot}/{epoch}", job_id=lease.job,
                         slot=lease.slot, attempt=1, epoch=epoch, ttl_ms=10_000,
                         timeout_ms=60_000, task=sim_task(1000))
        return self._send(node, to, msg, self._claim(node, lease.owner))

    def _ask(self, node: str) -> bool:
        lease = self._lease()
        if lease is not None and self.rng.random() < 0.5:  # squat a real job's next attempt
            job, slot, attempt = lease.job, lease.slot, self.rng.randint(1, 4)
        else:
            self._ids += 1
            job, slot, attempt = f"byz-{node}-{self._ids}", 0, 1
        msg = AskForBid(job_id=job, slot=slot, attempt=attempt, engine="sim", cpu=0.5,
                        memory=256 * 2**20, bid_window_ms=500)
        return self._send(node, self.rng.choice(self.honest), msg)

    def _replay(self, node: str) -> bool:
        if not self.frames:
            return False
        dst, data = self.frames[self.rng.randrange(len(self.frames))]
        to = self.cluster.ids[dst] if self.rng.random() < 0.5 else self.rng.choice(self.honest)
        self.cluster.engine.send(node, to, data)
        return True

    def _reencode(self, node: str) -> bool:
        if not self.frames:
            return False
        dst, data = self.frames[self.rng.randrange(len(self.frames))]
        try:
            message = codec.decode(data).message
        except Exception:
            return False
        return self._send(node, self.cluster.ids[dst], message)
