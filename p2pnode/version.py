"""The installed p2pnode's version (``p2pnode version``, the ``ping`` answer)."""

from __future__ import annotations

import functools


@functools.cache
def package_version() -> str:
    """The version of the installed distribution ("unknown" when run from a
    source tree that was never installed)."""
    from importlib.metadata import PackageNotFoundError, version  # ~10 ms: only when asked

    try:
        return version("p2pnode")
    except PackageNotFoundError:
        return "unknown"
