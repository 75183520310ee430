"""Durations and sizes: every accepted spelling, every rejection, round trips."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.units import (
    UnitError,
    format_duration_ms,
    format_size,
    parse_duration_ms,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("30s", 30_000),
        ("1.5m", 90_000),
        ("2h", 7_200_000),
        ("1h30m", 5_400_000),
        ("500ms", 500),
        ("7d", 604_800_000),
        ("1m30s500ms", 90_500),
        ("0.5s", 500),
        ("0s", 0),
        (" 30s ", 30_000),
        (30, 30_000),  # ints are seconds
        (0, 0),
        (1.5, 1_500),  # and so are floats
        (0.001, 1),
    ],
)
def test_parse_duration(text: object, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("30", "needs a unit: write '30s'"),
        ("abc", "must be a duration like 30s"),
        ("30S", "must be a duration"),  # units are lower case
        ("1M", "must be a duration"),
        ("1m1h", "largest to smallest"),
        ("1s1s", "largest to smallest"),
        ("0.0001s", "whole number of milliseconds"),
        ("1.5ms", "whole number of milliseconds"),
        ("-1s", "must be a duration"),
        ("", "must be a duration"),
        ("1s" * 40, "must be a duration"),  # over the text bound
        ("1 s", "must be a duration"),
        (-1, "must not be negative"),
        (True, "got a boolean"),
        (None, "must be a duration"),
        ([1], "must be a duration"),
        (math.nan, "must be a duration"),
        (math.inf, "must be a duration"),
    ],
)
def test_parse_duration_rejects(value: object, fragment: str) -> None:
    with pytest.raises(UnitError, match=None) as info:
        parse_duration_ms(value)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256MiB", 256 * 2**20),
        ("1GiB", 2**30),
        ("512Mi", 512 * 2**20),
        ("512M", 512_000_000),
        ("1G", 10**9),
        ("100KB", 100_000),
        ("100kB", 100_000),
        ("1.5KiB", 1536),
        ("2TiB", 2 * 2**40),
        ("10B", 10),
        ("10", 10),
        ("1 GiB", 2**30),
        (4096, 4096),
        (0, 0),
    ],
)
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("512m", "unknown size unit 'm'"),  # docker's m is ambiguous: refused
        ("1gib", "unknown size unit"),
        ("lots", "must be a size like 256MiB"),
        ("0.3KiB", "whole number of bytes"),
        ("-1KiB", "must be a size"),
        (1.5, "must be a size"),
        (True, "got a boolean"),
        (-1, "must not be negative"),
        (None, "must be a size"),
        ("1" * 100, "must be a size"),
    ],
)
def test_parse_size_rejects(value: object, fragment: str) -> None:
    with pytest.raises(UnitError) as info:
        parse_size(value)
    assert fragment in str(info.value)


def test_format_examples() -> None:
    assert format_duration_ms(5_400_000) == "1h30m"
    assert format_duration_ms(1500) == "1s500ms"
    assert format_duration_ms(0) == "0s"
    assert format_duration_ms(7 * 86_400_000) == "7d"
    assert format_size(268_435_456) == "256MiB"
    assert format_size(512_000_000) == "512MB"
    assert format_size(100) == "100B"
    assert format_size(0) == "0B"
    with pytest.raises(UnitError):
        format_duration_ms(-1)
    with pytest.raises(UnitError):
        format_size(-1)


@given(st.integers(min_value=0, max_value=10**13))
def test_duration_format_round_trips(ms: int) -> None:
    assert parse_duration_ms(format_duration_ms(ms)) == ms


@given(st.integers(min_value=0, max_value=2**50))
def test_size_format_round_trips(n: int) -> None:
    assert parse_size(format_size(n)) == n


@given(
    st.integers(0, 30),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 59),
    st.integers(0, 999),
)
def test_compound_durations_add_up(d: int, h: int, m: int, s: int, ms: int) -> None:
    parts = [(d, "d"), (h, "h"), (m, "m"), (s, "s"), (ms, "ms")]
    text = "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"
    expected = (((d * 24 + h) * 60 + m) * 60 + s) * 1000 + ms
    assert parse_duration_ms(text) == expected


@given(st.integers(0, 10**6))
def test_equivalent_spellings_are_equal(seconds: int) -> None:
    ms = seconds * 1000
    assert parse_duration_ms(f"{seconds}s") == ms
    assert parse_duration_ms(seconds) == ms
    assert parse_duration_ms(f"{ms}ms") == ms


@given(st.integers(0, 10**5))
def test_fractional_units_are_exact(quarters: int) -> None:
    # 0.25m, 2.5m, ...: decimal fractions parse exactly, no float rounding.
    assert parse_duration_ms(f"{quarters / 4}m") == quarters * 15_000
