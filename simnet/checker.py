"""The base of simnet's invariant checkers.

A checker watches a run through the engine's observer hooks
(:class:`simnet.engine.Observer`: notifications, executor ground truth,
crashes, starts, pauses) and reports each broken rule with
:meth:`Checker.violate`.  What every checker shares lives here:

* notification dispatch: a method marked ``@handles("lease_granted", ...)``
  is called for those ``Notify`` kinds, every other kind is ignored (the
  table is built per class when it is defined);
* reporting: ``violate(now, text)`` goes to the callback the harness gives
  (the core checker, :class:`simnet.invariants.Invariants`, records it and
  halts the run on the first one);
* the harness's hooks, no-ops unless a checker needs them: ``expect`` (a job
  is about to be submitted, with its spec), ``cancelled`` (the harness
  stopped a job) and ``on_fault`` (a fault was injected).

Each subclass holds only its own state and rules.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

from simnet.engine import Observer

# (checker, node, notification data, now)
NotifyHandler = Callable[[Any, str, dict[str, Any], float], None]
Violate = Callable[[float, str], None]
_Handler = TypeVar("_Handler", bound=NotifyHandler)


def handles(*kinds: str) -> Callable[[_Handler], _Handler]:
    """Mark a checker method as the handler of the ``Notify`` kinds named."""

    def mark(method: _Handler) -> _Handler:
        method.notify_kinds = kinds  # type: ignore[attr-defined]
        return method

    return mark


class Checker(Observer):
    """One set of rules over a run; subclasses add state, handlers and checks."""

    # Notify kind -> handler, built from the ``@handles`` marks of the class
    # and its bases (a method overriding a handler is marked again).
    handlers: ClassVar[dict[str, NotifyHandler]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        table = dict(cls.handlers)  # the base's, which this class may override
        for value in vars(cls).values():
            for kind in getattr(value, "notify_kinds", ()):
                table[kind] = value
        cls.handlers = table

    def __init__(self, violate: Violate) -> None:
        self._violate = violate

    def violate(self, now: float, text: str) -> None:
        """Report a broken rule at virtual time ``now``."""
        self._violate(now, text)

    def on_notify(self, node: str, kind: str, data: dict[str, Any], now: float) -> None:
        handler = self.handlers.get(kind)
        if handler is not None:
            self.noticed(now)
            handler(self, node, data, now)

    def noticed(self, now: float) -> None:
        """Called before each handled notification (a checker's clock, counters)."""

    # --- the harness's hooks ---------------------------------------------------------

    def expect(self, job_id: str, spec: Mapping[str, Any]) -> None:
        """``job_id`` is about to be submitted with ``spec``."""

    def cancelled(self, job_id: str) -> None:
        """The harness stopped ``job_id``: from now on it must end, whatever its kind."""

    def on_fault(self, now: float, what: str = "") -> None:
        """A fault was injected (``what``: crash, partition, pause, join, ...)."""
