"""Tiny inline-SVG drawing for the run report (:mod:`simnet.report`).

No plotting library: a report must be one self-contained file, and its bytes
a function of the run alone.  So every number is written with a fixed number
of decimals, and nothing here reads a clock, a locale or a random source.
Each drawn datum carries ``data-*`` attributes with its exact value: the
tests (and anyone scripting over a report) read the plot's data from them.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable

WIDTH = 900
LEFT, RIGHT, TOP, BOTTOM = 60, 30, 16, 36  # margins around the plot area (px)


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def num(x: float) -> str:
    """A coordinate: one decimal, no "-0.0"."""
    text = f"{x:.1f}"
    return "0.0" if text == "-0.0" else text


def value(x: float) -> str:
    """A datum in an attribute or a label: integers bare, else 3 decimals."""
    if float(x).is_integer():
        return str(int(x))
    return f"{x:.3f}"


def nice_ticks(hi: float, count: int = 6, integer: bool = False) -> list[float]:
    """Round tick values from 0 to at least ``hi`` (``integer``: whole steps,
    for counts)."""
    if hi <= 0:
        return [0.0, 1.0]
    raw = hi / count
    mag = 10.0 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10)
                if m * mag >= raw and not (integer and not float(m * mag).is_integer()))
    if integer:
        step = max(1.0, step)
    ticks = [0.0]
    while ticks[-1] < hi - 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


TIME_STEPS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600,
              7200, 10800, 21600, 43200, 86400)


def time_ticks(hi: float, count: int = 8) -> list[float]:
    """Tick values in virtual seconds that read well as times (30 s, 1 m, 5 m, ...)."""
    if hi <= 0:
        return [0.0, 1.0]
    step = next((s for s in TIME_STEPS if s >= hi / count), TIME_STEPS[-1])
    ticks = [0.0]
    while ticks[-1] < hi - 1e-9:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def seconds_label(t: float) -> str:
    """Virtual seconds as a short axis label (90 -> "1m30s")."""
    if t < 120:
        return f"{value(round(t, 3))}s"
    minutes, secs = divmod(round(t), 60)
    if minutes < 120:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if minutes else f"{hours}h"


class Canvas:
    """A plot area with linear x and y scales; ``parts`` is the SVG body."""

    def __init__(self, plot: str, height: int, x_hi: float, y_hi: float,
                 title: str) -> None:
        self.plot = plot
        self.height = height
        self.x_hi = x_hi if x_hi > 0 else 1.0
        self.y_hi = y_hi if y_hi > 0 else 1.0
        self.title = title
        self.parts: list[str] = []

    @property
    def inner_w(self) -> float:
        return WIDTH - LEFT - RIGHT

    @property
    def inner_h(self) -> float:
        return self.height - TOP - BOTTOM

    def x(self, v: float) -> float:
        return LEFT + self.inner_w * v / self.x_hi

    def y(self, v: float) -> float:
        return TOP + self.inner_h * (1.0 - v / self.y_hi)

    def add(self, part: str) -> None:
        self.parts.append(part)

    def x_axis(self, ticks: Iterable[float], label: str, seconds: bool = False) -> None:
        base = self.height - BOTTOM
        self.add(f'<line class="axis" x1="{LEFT}" y1="{base}" x2="{WIDTH - RIGHT}" '
                 f'y2="{base}"/>')
        for t in ticks:
            if t > self.x_hi + 1e-9:
                continue
            x = num(self.x(t))
            text = seconds_label(t) if seconds else value(t)
            self.add(f'<line class="tick" x1="{x}" y1="{base}" x2="{x}" y2="{base + 4}"/>'
                     f'<text class="tl" x="{x}" y="{base + 16}" '
                     f'text-anchor="middle">{esc(text)}</text>')
        self.add(f'<text class="al" x="{LEFT + self.inner_w / 2:.1f}" y="{self.height - 4}" '
                 f'text-anchor="middle">{esc(label)}</text>')

    def y_axis(self, ticks: Iterable[float], label: str) -> None:
        self.add(f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" '
                 f'y2="{self.height - BOTTOM}"/>')
        for t in ticks:
            if t > self.y_hi + 1e-9:
                continue
            y = num(self.y(t))
            self.add(f'<line class="grid" x1="{LEFT}" y1="{y}" x2="{WIDTH - RIGHT}" y2="{y}"/>'
                     f'<text class="tl" x="{LEFT - 6}" y="{y}" text-anchor="end" '
                     f'dominant-baseline="middle">{esc(value(t))}</text>')
        mid = TOP + self.inner_h / 2
        self.add(f'<text class="al" x="12" y="{mid:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {mid:.1f})">{esc(label)}</text>')

    def svg(self, **data: str) -> str:
        attrs = "".join(f' data-{k}="{esc(v)}"' for k, v in sorted(data.items()))
        return (f'<svg xmlns="http://www.w3.org/2000/svg" data-plot="{esc(self.plot)}"{attrs} '
                f'width="{WIDTH}" height="{self.height}" viewBox="0 0 {WIDTH} {self.height}" '
                f'role="img" aria-label="{esc(self.title)}"><title>{esc(self.title)}</title>'
                + "".join(self.parts) + "</svg>")


def legend(items: Iterable[tuple[str, str, str]]) -> str:
    """(css colour, label, value) swatches under a plot, as HTML."""
    cells = "".join(
        f'<span class="key"><i style="background:{esc(colour)}"></i>{esc(label)}'
        f'{" " + esc(text) if text else ""}</span>'
        for colour, label, text in items)
    return f'<div class="legend">{cells}</div>'
