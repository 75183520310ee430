"""Building blocks of the validator: an error collector and typed field readers.

Every reader records an error and returns a placeholder of the right type
instead of raising, so validation goes on and reports *all* problems at once.
The placeholders never escape: the validator raises if any error was recorded.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import attrs

from protocols.messages import MAX_TEXT_LEN
from protocols.spec.errors import DOCUMENT, SpecError
from protocols.units import (
    UnitError,
    format_duration_ms,
    format_size,
    parse_duration_ms,
    parse_size,
)

# Past this many errors the document is garbage; stop listing (and growing).
MAX_ERRORS = 100


def join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def index(path: str, i: int) -> str:
    return f"{path}[{i}]"


def show(value: object) -> str:
    """``value``'s kind for a message, with the value itself when it is short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int) and abs(value) >= 10**18:
        return f"an integer ({amount(value)})"
    kinds: list[tuple[type, str]] = [
        (int, "an integer"),
        (float, "a number"),
        (str, "a string"),
        (list, "a list"),
        (dict, "a mapping"),
    ]
    for cls, name in kinds:
        if isinstance(value, cls):
            if isinstance(value, list | dict):
                return name
            text = repr(value)
            return f"{name} ({text if len(text) <= 40 else text[:37] + '...'})"
    return f"a {type(value).__name__}"


def amount(value: float, fmt: Callable[[int], str] | None = None) -> str:
    """A number for a message; huge ints are not spelled out (str() of a
    5000-digit int raises, and nobody reads it anyway)."""
    if isinstance(value, int) and abs(value) >= 10**18:
        return "a number of over 18 digits"
    if fmt is not None and isinstance(value, int):
        return fmt(value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def suggest(word: str, choices: Collection[str]) -> str:
    """`` (did you mean 'x'?)`` for a near miss, else the list if it is short."""
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    if close:
        return f" (did you mean '{close[0]}'?)"
    if len(choices) <= 12:
        return f" (expected one of: {', '.join(sorted(choices))})"
    return ""


@attrs.define
class Ctx:
    """The error collector of one validation run.

    ``canonical``: the input is in canonical form (durations are integer
    milliseconds, sizes integer bytes), as sent between peers.
    """

    canonical: bool = False
    errors: list[SpecError] = attrs.field(factory=list)
    dropped: int = 0

    def error(self, path: str, message: str) -> None:
        if len(self.errors) >= MAX_ERRORS:
            self.dropped += 1
            return
        self.errors.append(SpecError(path or DOCUMENT, message))

    def final_errors(self) -> list[SpecError]:
        if self.dropped:
            more = SpecError(DOCUMENT, f"too many errors; {self.dropped} more not shown")
            return [*self.errors, more]
        return list(self.errors)

    def mapping(
        self,
        value: Any,
        path: str,
        allowed: Collection[str],
        misplaced: Mapping[str, str] | None = None,
    ) -> Fields | None:
        """Check ``value`` is a mapping with only ``allowed`` keys.

        ``misplaced`` maps keys valid elsewhere to a better message than
        "unknown key".  Returns None (error recorded) if not a mapping.
        """
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, got {show(value)}")
            return None
        known: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.error(join(path, key), f"keys must be strings, got {show(key)}")
            elif key in allowed:
                known[key] = item
            elif misplaced and key in misplaced:
                self.error(join(path, key), misplaced[key])
            else:
                self.error(join(path, key), "unknown key" + suggest(key, allowed))
        return Fields(self, known, path)

    # --- value checks: return None after recording an error -------------------

    def string(
        self,
        value: Any,
        path: str,
        *,
        max_len: int = MAX_TEXT_LEN,
        pattern: re.Pattern[str] | None = None,
        pattern_hint: str = "",
        allow_empty: bool = False,
    ) -> str | None:
        if not isinstance(value, str):
            hint = ""
            if isinstance(value, bool | int | float):
                # YAML turns `no`, `on`, `1.0` into non-strings; say how to keep text.
                hint = " (quote it to make it text)"
            self.error(path, f"must be a string, got {show(value)}{hint}")
            return None
        if not value and not allow_empty:
            self.error(path, "must not be empty")
            return None
        if len(value) > max_len:
            self.error(path, f"must be at most {max_len} characters, got {len(value)}")
            return None
        if "\x00" in value:
            self.error(path, "must not contain NUL characters")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            self.error(path, f"{pattern_hint or 'has an invalid format'}, got {value!r}")
            return None
        return value

    def choice(self, value: Any, path: str, choices: Collection[str]) -> str | None:
        text = self.string(value, path, max_len=64)
        if text is None:
            return None
        if text not in choices:
            self.error(path, f"unknown value {text!r}" + suggest(text, choices))
            return None
        return text

    def integer(self, value: Any, path: str, *, lo: int, hi: int) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(path, f"must be an integer, got {show(value)}")
            return None
        if not lo <= value <= hi:
            self.error(path, f"must be between {lo} and {hi}, got {amount(value)}")
            return None
        return value

    def number(
        self, value: Any, path: str, *, lo: float, hi: float, lo_open: bool = False
    ) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(path, f"must be a number, got {show(value)}")
            return None
        if isinstance(value, float) and not math.isfinite(value):
            self.error(path, f"must be a finite number, got {value}")
            return None
        too_low = value <= lo if lo_open else value < lo
        if too_low or value > hi:
            low = f"above {lo:g}" if lo_open else f"at least {lo:g}"
            self.error(path, f"must be {low} and at most {hi:g}, got {amount(value)}")
            return None
        # Always a float: 1 and 1.0 must give the same canonical bytes.
        return float(value)

    def boolean(self, value: Any, path: str) -> bool | None:
        if not isinstance(value, bool):
            self.error(path, f"must be true or false, got {show(value)}")
            return None
        return value

    def duration(self, value: Any, path: str, *, lo: int, hi: int) -> int | None:
        """Milliseconds: parsed from text, or taken as is in canonical mode."""
        if self.canonical:
            if isinstance(value, bool) or not isinstance(value, int):
                self.error(path, f"must be integer milliseconds, got {show(value)}")
                return None
            ms = value
        else:
            try:
                ms = parse_duration_ms(value)
            except UnitError as err:
                self.error(path, str(err))
                return None
        return self._in_range(ms, path, lo, hi, format_duration_ms)

    def size(self, value: Any, path: str, *, lo: int, hi: int) -> int | None:
        """Bytes: parsed from text, or taken as is in canonical mode."""
        if self.canonical:
            if isinstance(value, bool) or not isinstance(value, int):
                self.error(path, f"must be integer bytes, got {show(value)}")
                return None
            n = value
        else:
            try:
                n = parse_size(value)
            except UnitError as err:
                self.error(path, str(err))
                return None
        return self._in_range(n, path, lo, hi, format_size)

    def _in_range(
        self, n: int, path: str, lo: int, hi: int, fmt: Callable[[int], str]
    ) -> int | None:
        if n < lo:
            shown = amount(n, fmt) if n >= 0 else amount(n)  # fmt rejects negatives
            self.error(path, f"must be at least {fmt(lo)}, got {shown}")
            return None
        if n > hi:
            self.error(path, f"must be at most {fmt(hi)}, got {amount(n, fmt)}")
            return None
        return n

    def str_list(
        self,
        value: Any,
        path: str,
        *,
        min_items: int,
        max_items: int,
        unique: bool = False,
        **string_checks: Any,
    ) -> list[str] | None:
        """A list of strings, each checked like :meth:`string`.

        None if ``value`` is not a list of an allowed length; otherwise the
        valid items (an error is recorded for each invalid one).
        """
        if not isinstance(value, list | tuple):  # tuple: from a msgpack peer
            self.error(path, f"must be a list, got {show(value)}")
            return None
        if len(value) < min_items:
            what = "must not be empty" if not value else f"must have at least {min_items} items"
            self.error(path, f"{what}, got {len(value)}" if value else what)
            return None
        if len(value) > max_items:
            self.error(path, f"must have at most {max_items} items, got {len(value)}")
            return None
        # Bad items are reported and dropped; the good ones are still returned
        # so later checks (unknown DAG dependencies, cycles) can run on them.
        items: list[str] = []
        seen: dict[str, int] = {}
        for i, raw in enumerate(value):
            item = self.string(raw, index(path, i), **string_checks)
            if item is None:
                continue
            if unique and item in seen:
                self.error(index(path, i), f"duplicate {item!r} (also at [{seen[item]}])")
                continue
            seen[item] = i
            items.append(item)
        return items

    def str_map(
        self,
        value: Any,
        path: str,
        *,
        max_items: int,
        key_pattern: re.Pattern[str],
        key_hint: str,
        max_key_len: int,
        max_value_len: int,
        reserved_prefix: str | None = None,
    ) -> dict[str, str] | None:
        """A mapping of string to string (env vars, labels)."""
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, got {show(value)}")
            return None
        if len(value) > max_items:
            self.error(path, f"must have at most {max_items} entries, got {len(value)}")
            return None
        out: dict[str, str] = {}
        ok = True
        for raw_key, raw_value in value.items():
            key_path = join(path, raw_key)
            key = self.string(
                raw_key, key_path, max_len=max_key_len, pattern=key_pattern, pattern_hint=key_hint
            )
            if key is not None and reserved_prefix and key.upper().startswith(reserved_prefix):
                self.error(key_path, f"names starting with {reserved_prefix} are reserved")
                key = None
            item = self.string(raw_value, key_path, max_len=max_value_len, allow_empty=True)
            if key is None or item is None:
                ok = False
                continue
            out[key] = item
        return out if ok else None


@attrs.define
class Fields:
    """The known keys of one mapping, read with defaults.

    A key that is absent or null takes its default; a required key (no
    default) that is missing is an error.  Readers return a placeholder of the
    right type after an error.
    """

    ctx: Ctx
    data: dict[str, Any]
    path: str

    def at(self, key: str) -> str:
        return join(self.path, key)

    def has(self, key: str) -> bool:
        return self.data.get(key) is not None

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def missing(self, key: str, why: str = "") -> None:
        self.ctx.error(self.at(key), f"required{why}")

    def string(self, key: str, default: str | None = None, **checks: Any) -> str:
        if not self.has(key):
            if default is None:
                self.missing(key)
                return ""
            return default
        return self.ctx.string(self.get(key), self.at(key), **checks) or ""

    def opt_string(self, key: str, **checks: Any) -> str | None:
        if not self.has(key):
            return None
        return self.ctx.string(self.get(key), self.at(key), **checks)

    def choice(self, key: str, choices: Collection[str], default: str) -> str:
        if not self.has(key):
            return default
        return self.ctx.choice(self.get(key), self.at(key), choices) or default

    def integer(self, key: str, default: int, *, lo: int, hi: int) -> int:
        if not self.has(key):
            return default
        value = self.ctx.integer(self.get(key), self.at(key), lo=lo, hi=hi)
        return default if value is None else value

    def number(self, key: str, default: float, *, lo: float, hi: float, **kw: Any) -> float:
        if not self.has(key):
            return default
        value = self.ctx.number(self.get(key), self.at(key), lo=lo, hi=hi, **kw)
        return default if value is None else value

    def boolean(self, key: str, default: bool) -> bool:
        if not self.has(key):
            return default
        value = self.ctx.boolean(self.get(key), self.at(key))
        return default if value is None else value

    def duration(self, key: str, default: int, *, lo: int, hi: int) -> int:
        if not self.has(key):
            return default
        value = self.ctx.duration(self.get(key), self.at(key), lo=lo, hi=hi)
        return default if value is None else value

    def opt_duration(self, key: str, *, lo: int, hi: int) -> int | None:
        if not self.has(key):
            return None
        return self.ctx.duration(self.get(key), self.at(key), lo=lo, hi=hi)

    def size(self, key: str, default: int, *, lo: int, hi: int) -> int:
        if not self.has(key):
            return default
        value = self.ctx.size(self.get(key), self.at(key), lo=lo, hi=hi)
        return default if value is None else value
