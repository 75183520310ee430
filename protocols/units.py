"""Durations and byte sizes as people write them in job specs.

Durations
    ``500ms``, ``30s``, ``1.5m``, ``2h``, ``7d`` and compounds written from the
    largest unit down, each unit at most once: ``1h30m``, ``1m30s500ms``.
    Units are lower case (``m`` is minutes; there is no ``M``).  A bare int or
    float means seconds (``30`` = 30s), as YAML and JSON give numbers.  The
    result is an exact whole number of milliseconds: ``1.5m`` is 90000 and
    ``0.0001s`` is an error rather than silently rounded, so two spellings of
    one duration can never parse to different values.

Byte sizes
    ``256MiB``, ``1GiB``, ``512Mi`` (binary: powers of 1024) and ``100KB``,
    ``512M``, ``1G`` (decimal: powers of 1000, as the SI prefixes mean), or a
    bare int of bytes.  The decimal/binary split follows Kubernetes; Docker's
    ``512m`` (= MiB) is rejected as ambiguous instead of being guessed.

All functions are pure and raise :class:`UnitError` (a ``ValueError``) whose
message reads well after a field path: ``task.timeout: must be a duration ...``.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = [
    "UnitError",
    "format_duration_ms",
    "format_size",
    "human_duration",
    "human_size",
    "parse_duration_ms",
    "parse_size",
]

# Longer strings are never a sensible duration or size; bounding the input
# also bounds the work done on it.
MAX_UNIT_TEXT = 64

_DURATION_UNITS_MS: dict[str, int] = {
    "d": 86_400_000,
    "h": 3_600_000,
    "m": 60_000,
    "s": 1_000,
    "ms": 1,
}
_DURATION_ORDER = list(_DURATION_UNITS_MS)  # largest first
# "ms" must be tried before "m" and "s", hence its place in the alternation.
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")

_KIB = 1024
_SIZE_UNITS: dict[str, int] = {
    "": 1,
    "B": 1,
    "k": 1000,
    "K": 1000,
    "kB": 1000,
    "KB": 1000,
    "M": 1000**2,
    "MB": 1000**2,
    "G": 1000**3,
    "GB": 1000**3,
    "T": 1000**4,
    "TB": 1000**4,
    "Ki": _KIB,
    "KiB": _KIB,
    "Mi": _KIB**2,
    "MiB": _KIB**2,
    "Gi": _KIB**3,
    "GiB": _KIB**3,
    "Ti": _KIB**4,
    "TiB": _KIB**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?) ?([A-Za-z]*)")

_DURATION_HINT = "a duration like 30s, 1.5m, 1h30m or 500ms"
_SIZE_HINT = "a size like 256MiB, 1GiB, 512M or a whole number of bytes"


class UnitError(ValueError):
    """A value is not a valid duration or size; ``str(err)`` says why."""


def _show(value: object) -> str:
    if isinstance(value, int) and abs(value) >= 10**18:
        return "a number of over 18 digits"  # repr() of a huge int may even raise
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _number_fraction(value: int | float) -> Fraction:
    # repr() of a float is the shortest text that round-trips, i.e. what the
    # user wrote (0.1, not 0.1000000000000000055...), so Fraction(repr) is exact.
    return Fraction(repr(value)) if isinstance(value, float) else Fraction(value)


def parse_duration_ms(value: object) -> int:
    """Parse a duration into whole milliseconds (see the module docstring).

    >>> parse_duration_ms("1h30m"), parse_duration_ms("1.5m"), parse_duration_ms(2)
    (5400000, 90000, 2000)
    """
    if isinstance(value, bool):
        raise UnitError(f"must be {_DURATION_HINT}, got a boolean ({value!r})")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise UnitError(f"must be {_DURATION_HINT}, got {_show(value)}")
        if value < 0:
            raise UnitError(f"must not be negative, got {_show(value)}")
        total = _number_fraction(value) * 1000
    elif isinstance(value, str):
        total = _parse_duration_text(value)
    else:
        raise UnitError(f"must be {_DURATION_HINT}, got {type(value).__name__}")
    if total.denominator != 1:
        raise UnitError(f"must be a whole number of milliseconds, got {_show(value)}")
    return int(total)


def _parse_duration_text(text: str) -> Fraction:
    stripped = text.strip()
    if not stripped or len(stripped) > MAX_UNIT_TEXT:
        raise UnitError(f"must be {_DURATION_HINT}, got {_show(text)}")
    if _NUMBER.fullmatch(stripped):
        raise UnitError(f"needs a unit: write '{stripped}s' for seconds (got {_show(text)})")
    total = Fraction(0)
    pos = 0
    last_rank = -1
    for match in _DURATION_PART.finditer(stripped):
        if match.start() != pos:
            break
        number, unit = match.groups()
        rank = _DURATION_ORDER.index(unit)
        if rank <= last_rank:
            raise UnitError(
                f"must list units from largest to smallest, each once "
                f"(like 1h30m), got {_show(text)}"
            )
        last_rank = rank
        total += Fraction(number) * _DURATION_UNITS_MS[unit]
        pos = match.end()
    if pos != len(stripped) or pos == 0:
        raise UnitError(f"must be {_DURATION_HINT} (units d, h, m, s, ms), got {_show(text)}")
    return total


def parse_size(value: object) -> int:
    """Parse a byte size into a whole number of bytes (see the module docstring).

    >>> parse_size("256MiB"), parse_size("1G"), parse_size(512)
    (268435456, 1000000000, 512)
    """
    if isinstance(value, bool):
        raise UnitError(f"must be {_SIZE_HINT}, got a boolean ({value!r})")
    if isinstance(value, int):
        if value < 0:
            raise UnitError(f"must not be negative, got {value}")
        return value
    if isinstance(value, float):
        # Bare floats are almost always a unit left out (memory: 0.5).
        raise UnitError(f"must be {_SIZE_HINT}, got {_show(value)}")
    if not isinstance(value, str):
        raise UnitError(f"must be {_SIZE_HINT}, got {type(value).__name__}")
    stripped = value.strip()
    match = _SIZE.fullmatch(stripped) if len(stripped) <= MAX_UNIT_TEXT else None
    if match is None:
        raise UnitError(f"must be {_SIZE_HINT}, got {_show(value)}")
    number, unit = match.groups()
    if unit not in _SIZE_UNITS:
        raise UnitError(
            f"unknown size unit {unit!r} in {_show(value)} "
            f"(use B, KB, MB, GB, TB or KiB, MiB, GiB, TiB)"
        )
    total = Fraction(number) * _SIZE_UNITS[unit]
    if total.denominator != 1:
        raise UnitError(f"must be a whole number of bytes, got {_show(value)}")
    return int(total)


def format_duration_ms(ms: int) -> str:
    """The shortest compound spelling of ``ms`` that parses back to it.

    >>> format_duration_ms(5400000), format_duration_ms(1500), format_duration_ms(0)
    ('1h30m', '1s500ms', '0s')
    """
    if ms < 0:
        raise UnitError(f"must not be negative, got {ms}")
    if ms == 0:
        return "0s"
    parts = []
    rest = ms
    for unit in _DURATION_ORDER:
        size = _DURATION_UNITS_MS[unit]
        amount, rest = divmod(rest, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return "".join(parts)


def format_size(n: int) -> str:
    """The exact spelling of ``n`` bytes with the smallest number.

    >>> format_size(268435456), format_size(512_000_000), format_size(100)
    ('256MiB', '512MB', '100B')
    """
    if n < 0:
        raise UnitError(f"must not be negative, got {n}")
    best = (n, "B")
    # Binary units first: on a tie (never, in practice) they win.
    for unit in ("KiB", "MiB", "GiB", "TiB", "KB", "MB", "GB", "TB"):
        size = _SIZE_UNITS[unit]
        if n and n % size == 0 and n // size < best[0]:
            best = (n // size, unit)
    return f"{best[0]}{best[1]}"


def human_size(n: int) -> str:
    """``n`` bytes for people: exact when a binary unit divides it, else one
    decimal in the largest binary unit not above it.

    >>> human_size(268435456), human_size(3 * 1024**3 + 1), human_size(100)
    ('256MiB', '3.0GiB', '100B')
    """
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        size = _SIZE_UNITS[unit]
        if n >= size:
            return f"{n // size}{unit}" if n % size == 0 else f"{n / size:.1f}{unit}"
    return f"{n}B"


def human_duration(seconds: float) -> str:
    """``seconds`` for people, to the millisecond: ``300`` -> ``5m``, ``90`` -> ``1m30s``."""
    return format_duration_ms(max(0, round(seconds * 1000)))
