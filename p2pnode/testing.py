"""Fault injection for p2pnode's own tests: not part of the library API.

Real-network tests need nodes that misbehave on purpose (a holder that never
accepts a handover, a node killed halfway through a submit).  Those hooks live
here, out of ``NodeSettings``: a library user never sees them.  They are
reached through hidden entry points only:

- ``serve --fault-drop TYPE`` (a hidden CLI flag) becomes ``Faults(drop=...)``,
  handed to ``open_node(settings, _faults=...)``;
- ``serve --fault-loss SHARE --fault-seed N`` (hidden too) becomes
  ``Faults(loss=..., loss_seed=...)``: a lossy link, the simulator's ``--loss``
  over real libp2p; ``Faults(reset_every=...)`` (``serve --fault-reset``)
  cuts a connection now and then, as a broken path would;
- the ``P2PNODE_FAULT_SUBMIT`` environment variable makes a serving node kill
  itself at a named point of a control-socket submit (``fault_submit``).
"""

from __future__ import annotations

import os
import random
import signal
from typing import Protocol

import attrs
import trio

__all__ = ["FAULT_SUBMIT_ENV", "NO_FAULTS", "Faults", "cut_connections", "fault_submit"]


@attrs.frozen(kw_only=True)
class Faults:
    """Faults a node injects into itself."""

    # Incoming frames of these message types are dropped as if lost
    # (e.g. "handover_offer": a node that never accepts a handover).
    drop: frozenset[str] = frozenset()
    # This share of all incoming protocol frames, drawn from a generator seeded
    # with ``loss_seed``, is dropped as if lost: the lossy link of the
    # simulator's ``--loss``, so retransmission, lease pacing and re-auction are
    # proven over real libp2p too.  libp2p's own streams stay reliable; what is
    # lost is the frame a lossy path or a broken connection would lose.
    loss: float = attrs.field(
        default=0.0,
        validator=attrs.validators.and_(attrs.validators.ge(0.0), attrs.validators.lt(1.0)),
    )
    loss_seed: int = 0
    # Connection resets: about every ``reset_every`` seconds (exponential
    # gaps, drawn from a generator seeded with ``loss_seed``) the node cuts its
    # connection to one connected peer beneath the muxer, as a NAT timeout or
    # a broken path would (``Libp2pTransport.cut_connection``).  Frames in
    # flight either way are lost, and the next send must redial.
    reset_every: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))


NO_FAULTS = Faults()


class _Cutter(Protocol):
    def connected_peers(self) -> list[str]: ...

    async def cut_connection(self, peer: str) -> bool: ...


async def cut_connections(transport: _Cutter, faults: Faults) -> None:
    """Cut one connected peer's connection about every ``faults.reset_every``
    seconds, for as long as the node runs (a task of its nursery)."""
    rng = random.Random(f"reset:{faults.loss_seed}")
    while True:
        await trio.sleep(rng.expovariate(1.0 / faults.reset_every))
        peers = sorted(transport.connected_peers())
        if peers:
            await transport.cut_connection(rng.choice(peers))

FAULT_SUBMIT_ENV = "P2PNODE_FAULT_SUBMIT"


def fault_submit(point: str) -> None:
    """SIGKILL this node at ``point`` of a submit when ``P2PNODE_FAULT_SUBMIT``
    names it (``kill-before-store``: the request was read, nothing stored;
    ``kill-before-reply``: the job is stored, its id never sent).  The client
    sees the connection drop either way."""
    if os.environ.get(FAULT_SUBMIT_ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
