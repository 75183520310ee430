"""Running a property against a planted bug.

A planted-bug test only needs the property to fail; hypothesis would then
shrink the failure, which for a stateful plant (each call depends on the calls
before) took minutes of CI.  ``without_shrinking`` rebuilds a ``@given`` test
from its undecorated body with the same strategies, generating only.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.strategies import SearchStrategy


def without_shrinking(
    test: Any, max_examples: int, **strategies: SearchStrategy[Any]
) -> Callable[[], None]:
    """``test`` (a ``@given`` test) with ``strategies``, explicit examples and
    generation only, no example database.  A hypothesis ``InvalidArgument``
    from the result is a broken test: callers must re-raise it, never count it
    as a caught bug."""
    quick = settings(
        max_examples=max_examples,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),
        database=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    run: Callable[[], None] = quick(given(**strategies)(test.hypothesis.inner_test))
    return run
