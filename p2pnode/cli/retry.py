"""``job run``'s retries: a lost connection to the node leaves a submit's
outcome unknown (the node may have stored the job before it died), so the
request is sent again, with the same idempotency key, until the node answers
or ``--retry-for`` runs out (then exit 6, EXIT_UNKNOWN)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

from p2pnode.client import AsyncClient
from p2pnode.errors import ConnectionLost, ControlError, NodeNotRunning, P2PNodeError

FIRST_DELAY = 0.2  # seconds before the first retry; doubled up to MAX_DELAY
MAX_DELAY = 2.0
DEFAULT_RETRY_FOR = 30.0  # a node restart takes ~3 s, ~10 s on a loaded machine

T = TypeVar("T")
C = TypeVar("C", bound=AsyncClient)


def new_key() -> str:
    """One idempotency key per ``job run`` invocation."""
    return f"cli-{secrets.token_hex(16)}"


# A node stopping mid-request answers "unavailable"; a full one "busy"
# (p2pnode/control_request.py): both say nothing of the outcome.
RETRYABLE_CODES = frozenset({"unavailable", "busy"})


class OutcomeUnknown(P2PNodeError):
    """The request was sent, the connection was lost, and the node did not
    answer again within the retry window."""

    def __init__(self, key: str, cause: Exception, waited: float) -> None:
        super().__init__(
            f"outcome unknown: {cause}; no answer after retrying for {waited:.0f} s. "
            f"The job may have been submitted: run the same command with "
            f"--idempotency-key {key} to get its id without a duplicate"
        )
        self.key = key


class Attempts:
    """Retry bookkeeping of one invocation: an outage's window starts at its
    first failure and ends when the node answers again (``reached``)."""

    def __init__(self, key: str, retry_for: float) -> None:
        self.key = key
        self.retry_for = retry_for
        self.deadline: float | None = None
        self.delay = FIRST_DELAY

    def reached(self) -> None:
        """The node answered: a later outage gets a fresh window."""
        self.deadline, self.delay = None, FIRST_DELAY

    async def run(self, op: Callable[[C], Awaitable[T]], client: C) -> T:
        """``op(client)``, again after a lost connection (and while the node is
        not running again); ``NodeNotRunning`` before anything was sent is
        raised as is: then nothing happened."""
        sent = False
        cause: Exception
        while True:
            try:
                return await op(client)
            except ConnectionLost as exc:
                sent, cause = True, exc
            except NodeNotRunning as exc:
                if not sent and self.deadline is None:
                    raise
                cause = exc
            except ControlError as exc:
                if exc.code not in RETRYABLE_CODES:
                    raise
                sent, cause = True, exc
            now = anyio.current_time()
            if self.deadline is None:
                self.deadline = now + self.retry_for
            if now >= self.deadline:
                raise OutcomeUnknown(self.key, cause, self.retry_for)
            await anyio.sleep(min(self.delay, self.deadline - now))
            self.delay = min(2 * self.delay, MAX_DELAY)
