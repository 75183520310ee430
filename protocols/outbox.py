"""Collects the actions of one ``handle()`` call, and retransmits until settled.

Every machine of a node core writes its effects through the same ``Outbox``:
frames (encoded here, with a fresh message id per transmission), timers,
persistence, executions and notifications.  Order is preserved, which is how a
``Persist`` precedes the ``Send`` that depends on it.

Gossipsub and direct streams are best effort, so state-changing messages go out
through ``send_reliably``: retransmitted with exponential backoff until the
caller ``settle``s the key (acknowledged, or made moot), or until its deadline.
Each retransmission has a new message id, so the receiver's duplicate filter
never swallows a retransmission that a lost acknowledgement made necessary;
receivers are idempotent instead.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import attrs

from protocols import codec
from protocols.config import Timings
from protocols.events import (
    Action,
    CancelTimer,
    Notify,
    Persist,
    Publish,
    ReadItems,
    Send,
    SetTimer,
    StartExecution,
    StopExecution,
)
from protocols.messages import Message

RETX_TIMER = "retx"
# A message retransmitted until a deadline (a grant until its lease would
# expire, a renewal until the holder's lease lapses) gets at least this many
# more tries as the deadline nears: the retry delay shrinks to a share of the
# time left, never below MIN_RETRY_DELAY.  With 1-2 s leases the plain
# back-off sent two copies of a grant before its lease expired (and renewals
# left room for one loss), so 30 % loss lapsed healthy leases.
TRIES_BEFORE_DEADLINE = 5
MIN_RETRY_DELAY = 0.05


def retry_delay(backoff: float, left: float, tries: int = TRIES_BEFORE_DEADLINE) -> float:
    """The next retry's delay: the back-off, or sooner when less than
    ``tries`` back-offs fit in the ``left`` seconds.

    With no time left (a deadline already passed) there is nothing to hurry
    for: the plain back-off.  The floor would otherwise make it a storm, as it
    did for a holder still reporting after its lease lapsed (20 renewals a
    second for up to REPORT_AFTER_LAPSE ttls)."""
    if left <= 0:
        return backoff
    return min(backoff, max(left / tries, MIN_RETRY_DELAY))


@attrs.define
class _Pending:
    to: str
    message: Message
    delay: float
    give_up_at: float


class Outbox:
    def __init__(self, node_id: str, incarnation: int, timings: Timings) -> None:
        self.node_id = node_id
        self.incarnation = incarnation
        self.timings = timings
        self.now = 0.0
        self.wall_offset = 0.0  # wall clock = now + wall_offset (set at Started)
        self.actions: list[Action] = []
        self.sent_by_type: dict[str, int] = {}
        self._counter = 0
        self._pending: dict[Hashable, _Pending] = {}

    # --- the batch of one handle() call -------------------------------------

    def wall_ms(self) -> int:
        """Wall-clock unix ms of ``now`` (from the offset ``Started.wall`` gave)."""
        return round((self.now + self.wall_offset) * 1000)

    def begin(self, now: float) -> None:
        self.now = now
        self.actions = []

    def drain(self) -> list[Action]:
        actions, self.actions = self.actions, []
        return actions

    # --- frames ---------------------------------------------------------------

    def _frame(self, message: Message) -> bytes:
        self._counter += 1
        msg_id = f"{self.node_id}:{self.incarnation}:{self._counter}"
        self.sent_by_type[message.TYPE] = self.sent_by_type.get(message.TYPE, 0) + 1
        return codec.encode(message, msg_id=msg_id, sender=self.node_id)

    def send(self, to: str, message: Message) -> None:
        self.actions.append(Send(to=to, data=self._frame(message)))

    def send_many(self, peers: list[str], message: Message) -> None:
        """``send(peer, message)`` for each peer in order (the same frames and
        ids), the message encoded once."""
        if len(peers) < 2:
            for to in peers:
                self.send(to, message)
            return
        prefix = f"{self.node_id}:{self.incarnation}:"
        start = self._counter + 1
        self._counter += len(peers)
        ids = [f"{prefix}{n}" for n in range(start, start + len(peers))]
        self.sent_by_type[message.TYPE] = self.sent_by_type.get(message.TYPE, 0) + len(peers)
        frames = codec.encode_many(message, msg_ids=ids, sender=self.node_id)
        self.actions.extend(Send(to=to, data=data) for to, data in zip(peers, frames, strict=True))

    def publish(self, topic: str, message: Message) -> None:
        self.actions.append(Publish(topic=topic, data=self._frame(message)))

    def send_reliably(self, key: Hashable, to: str, message: Message, give_up_after: float) -> None:
        """Send now and again with backoff until ``settle(key)`` or the deadline."""
        self.send(to, message)
        delay = self.timings.retransmit_base
        self._pending[key] = _Pending(to, message, delay, self.now + give_up_after)
        self.timer((RETX_TIMER, key), self.now + retry_delay(delay, give_up_after))

    def settle(self, key: Hashable) -> None:
        if self._pending.pop(key, None) is not None:
            self.cancel_timer((RETX_TIMER, key))

    def is_pending(self, key: Hashable) -> bool:
        return key in self._pending

    def on_retransmit_timer(self, key: Hashable) -> None:
        pending = self._pending.get(key)
        if pending is None:
            return
        if self.now >= pending.give_up_at:
            del self._pending[key]
            return
        self.send(pending.to, pending.message)
        pending.delay = min(pending.delay * 2, self.timings.retransmit_max)
        left = pending.give_up_at - self.now
        self.timer((RETX_TIMER, key), self.now + retry_delay(pending.delay, left))

    # --- everything else --------------------------------------------------------

    def timer(self, key: Hashable, at: float) -> None:
        self.actions.append(SetTimer(key=key, at=at))

    def cancel_timer(self, key: Hashable) -> None:
        self.actions.append(CancelTimer(key=key))

    def persist(self, table: str, key: str, value: dict[str, Any] | None) -> None:
        self.actions.append(Persist(table=table, key=key, value=value))

    def notify(self, kind: str, **data: Any) -> None:
        self.actions.append(Notify(kind=kind, data=data))

    def start(self, start: StartExecution) -> None:
        self.actions.append(start)

    def read_items(self, job_id: str, task: str, refs: list[tuple[str, str]]) -> None:
        self.actions.append(ReadItems(job_id=job_id, task=task, refs=tuple(refs)))

    def stop(self, execution_id: str, reason: str) -> None:
        self.actions.append(StopExecution(execution_id=execution_id, reason=reason))
