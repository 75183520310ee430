"""``python -m simnet run ... --report FILE.html``: one self-contained page.

Inline CSS and inline SVG only (nothing fetched, no script), built from the
run's summary (:func:`simnet.runner.run_recorded`) and what its
:class:`simnet.recorder.RunRecorder` saw.  Four plots, each one ``<svg
data-plot=...>``:

* ``jobs``: jobs over virtual time by state (stacked area);
* ``latency``: client submit -> terminal, histogram stacked by final state,
  with p50 / p90 / p99 over every job that ended;
* ``messages``: messages delivered per job, by message type;
* ``faults``: the injected faults on a virtual-time line.

The page holds virtual time only (no wall time, no memory peak, no output
path), so a seed's report is byte-identical from run to run.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from simnet.network import DIRECTORY_TYPES
from simnet.recorder import PENDING, FaultMark, RunRecorder
from simnet.svgplot import (
    BOTTOM,
    LEFT,
    RIGHT,
    TOP,
    WIDTH,
    Canvas,
    esc,
    legend,
    nice_ticks,
    num,
    time_ticks,
    value,
)

STATE_COLOURS = {
    PENDING: "#b8b8b8", "queued": "#f2c14e", "scheduled": "#9ecae1", "suspended": "#c6dbef",
    "running": "#4a90d9", "completed": "#3aa655", "failed": "#d64541", "stopped": "#8e6c8a",
}
OTHER_COLOUR = "#555555"
SAMPLES = 240  # points of the jobs-over-time plot
LATENCY_BINS = 30  # about this many histogram bins
PERCENTILES = (50, 90, 99)
FAULT_ROWS = ("network", "partition", "oneway", "crash", "restart", "join", "pause")
FAULT_COLOURS = {"network": "#cfd8e3", "partition": "#8e44ad", "oneway": "#16a085",
                 "crash": "#d64541", "restart": "#3aa655", "join": "#4a90d9",
                 "pause": "#e67e22"}
# What the summary table shows (wall time and memory are left out: not a
# function of the seed).
SUMMARY_KEYS = ("completed", "failed", "stopped", "lost", "executions", "messages_sent",
                "messages_delivered", "messages_per_job", "job_messages_per_job",
                "directory_messages", "crashes", "frame_crashes", "partitions", "pauses",
                "oneway_failures", "byzantine_frames", "events", "virtual_seconds",
                "trace_hash")


def _state_order(states: set[str]) -> list[str]:
    known = [s for s in STATE_COLOURS if s in states]
    return known + sorted(states - set(STATE_COLOURS))


def state_counts(recorder: RunRecorder) -> tuple[list[float], dict[str, list[int]]]:
    """Sample times 0..end and, per state, how many jobs were in it then."""
    end = recorder.end
    times = [end * i / (SAMPLES - 1) for i in range(SAMPLES)] if end > 0 else [0.0]
    states = _state_order({s for _, _, s in recorder.transitions})
    series = {s: [0] * len(times) for s in states}
    current: dict[str, str] = {}
    counts = dict.fromkeys(states, 0)
    # The client's submits were all recorded before the run: sort (stable, so
    # a job accepted at its submit time stays pending first).
    moves = sorted(recorder.transitions, key=lambda move: move[0])
    k = 0
    for i, t in enumerate(times):
        while k < len(moves) and (moves[k][0] <= t or i == len(times) - 1):
            _, job, state = moves[k]
            old = current.get(job)
            if old is not None:
                counts[old] -= 1
            current[job] = state
            counts[state] += 1
            k += 1
        for s in states:
            series[s][i] = counts[s]
    return times, series


def jobs_plot(recorder: RunRecorder) -> str:
    times, series = state_counts(recorder)
    total = max((sum(v[i] for v in series.values()) for i in range(len(times))), default=0)
    c = Canvas("jobs", 300, times[-1], max(1, total), "Jobs over virtual time by state")
    c.y_axis(nice_ticks(max(1, total), 5, integer=True), "jobs")
    c.x_axis(time_ticks(times[-1]), "virtual time", seconds=True)
    below = [0] * len(times)
    for state, values in series.items():
        above = [b + v for b, v in zip(below, values, strict=True)]
        top = " ".join(f"{num(c.x(t))},{num(c.y(a))}" for t, a in zip(times, above, strict=True))
        bottom = " ".join(f"{num(c.x(t))},{num(c.y(b))}"
                          for t, b in reversed(list(zip(times, below, strict=True))))
        colour = STATE_COLOURS.get(state, OTHER_COLOUR)
        c.add(f'<polygon class="area" data-state="{esc(state)}" '
              f'data-values="{" ".join(map(str, values))}" fill="{colour}" '
              f'points="{top} {bottom}"><title>{esc(state)}: {values[-1]} at the end'
              f'</title></polygon>')
        below = above
    data = {"times": " ".join(value(round(t, 3)) for t in times)}
    keys = legend((STATE_COLOURS.get(s, OTHER_COLOUR), s, f"({v[-1]} at the end)")
                  for s, v in series.items())
    return c.svg(**data) + keys


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_plot(recorder: RunRecorder) -> str:
    by_state = recorder.latencies()
    everything = sorted(v for values in by_state.values() for v in values)
    if not everything:
        c = Canvas("latency", 120, 1.0, 1.0, "Job latency: no job ended")
        c.add(f'<text class="empty" x="{WIDTH / 2}" y="60" text-anchor="middle">'
              f'no batch job ended</text>')
        return c.svg()
    # Bins of a round width (about LATENCY_BINS of them), the last one holding the slowest.
    width = nice_ticks(everything[-1] or 1.0, LATENCY_BINS)[1]
    count = int(everything[-1] / width) + 1
    hi = count * width
    bins = {s: [0] * count for s in by_state}
    for state, values in by_state.items():
        for v in values:
            bins[state][min(count - 1, int(v / width))] += 1
    tallest = max(sum(b[i] for b in bins.values()) for i in range(count))
    c = Canvas("latency", 300, hi, tallest, "Job latency: client submit to terminal state")
    c.y_axis(nice_ticks(tallest, 5, integer=True), "jobs")
    c.x_axis(time_ticks(hi), "latency (virtual time)", seconds=True)
    for i in range(count):
        lo_v, hi_v = i * width, (i + 1) * width
        stacked = 0
        for state in _state_order(set(bins)):
            count = bins[state][i]
            if not count:
                continue
            y0, y1 = c.y(stacked), c.y(stacked + count)
            colour = STATE_COLOURS.get(state, OTHER_COLOUR)
            c.add(f'<rect class="bin" data-state="{esc(state)}" data-lo="{value(round(lo_v, 3))}" '
                  f'data-hi="{value(round(hi_v, 3))}" data-count="{count}" '
                  f'x="{num(c.x(lo_v) + 0.5)}" y="{num(y1)}" '
                  f'width="{num(c.x(hi_v) - c.x(lo_v) - 1)}" height="{num(y0 - y1)}" '
                  f'fill="{colour}"><title>{count} {esc(state)} in '
                  f'{value(round(lo_v, 3))}-{value(round(hi_v, 3))} s</title></rect>')
            stacked += count
    marks = []
    for pct in PERCENTILES:
        at = percentile(everything, pct)
        x = num(c.x(at))
        near_right = c.x(at) > WIDTH - RIGHT - 110
        anchor = 'text-anchor="end" dx="-3"' if near_right else 'dx="3"'
        c.add(f'<line class="pct" data-pct="p{pct}" data-value="{value(round(at, 3))}" '
              f'x1="{x}" y1="{TOP}" x2="{x}" y2="{300 - BOTTOM}"/>'
              f'<text class="pctl" x="{x}" y="{TOP + 10 + 12 * PERCENTILES.index(pct)}" '
              f'{anchor}>p{pct} {esc(value(round(at, 3)))}s</text>')
        marks.append(f"p{pct} {value(round(at, 3))} s")
    keys = legend((STATE_COLOURS.get(s, OTHER_COLOUR), s, f"({len(v)})")
                  for s, v in by_state.items())
    note = (f'<p class="note">{len(everything)} jobs ended: {esc(", ".join(marks))} '
            f'(nearest rank, over every final state; long-running kinds left out)</p>')
    return c.svg(jobs=str(len(everything))) + keys + note


def messages_plot(summary: Mapping[str, Any]) -> str:
    delivered: dict[str, int] = dict(summary.get("delivered_by_type") or {})
    sent: dict[str, int] = dict(summary.get("sent_by_type") or {})
    jobs = max(1, int(summary.get("jobs") or 0))
    types = sorted(set(delivered) | set(sent), key=lambda t: (-delivered.get(t, 0), t))
    row = 18
    height = TOP + BOTTOM + row * max(1, len(types))
    hi = max([delivered.get(t, 0) / jobs for t in types] + [0.0])
    c = Canvas("messages", height, hi, 1.0, "Messages delivered per job, by message type")
    left = 190  # room for the type names
    scale = (WIDTH - left - RIGHT - 70) / (hi or 1.0)
    for i, mtype in enumerate(types):
        count = delivered.get(mtype, 0)
        per_job = count / jobs
        y = TOP + i * row
        kind = "directory" if mtype in DIRECTORY_TYPES else "job"
        fill = "#9aa5b1" if kind == "directory" else "#4a90d9"
        c.add(f'<text class="tl" x="{left - 6}" y="{y + row / 2:.1f}" text-anchor="end" '
              f'dominant-baseline="middle">{esc(mtype)}</text>'
              f'<rect class="bar" data-type="{esc(mtype)}" data-count="{count}" '
              f'data-sent="{sent.get(mtype, 0)}" data-per-job="{value(round(per_job, 3))}" '
              f'data-traffic="{kind}" x="{left}" y="{y + 2}" '
              f'width="{num(per_job * scale)}" height="{row - 4}" fill="{fill}">'
              f'<title>{esc(mtype)}: {count} delivered, {sent.get(mtype, 0)} sent '
              f'({value(round(per_job, 3))} per job)</title></rect>'
              f'<text class="tl" x="{num(left + per_job * scale + 4)}" y="{y + row / 2:.1f}" '
              f'dominant-baseline="middle">{per_job:.2f}</text>')
    if not types:
        c.add(f'<text class="empty" x="{WIDTH / 2}" y="{TOP + 12}" text-anchor="middle">'
              f'no message delivered</text>')
    keys = legend((("#4a90d9", "job traffic", ""), ("#9aa5b1", "directory traffic", "")))
    return c.svg(jobs=str(jobs)) + keys


def _network_text(options: Mapping[str, Any]) -> str:
    parts = [f"{name} {options[key]:g}" for key, name in (
        ("loss", "loss"), ("duplicate", "duplicate"), ("reorder", "reorder"),
        ("latency_tail", "latency tail")) if options.get(key)]
    return ", ".join(parts)


def faults_plot(recorder: RunRecorder, options: Mapping[str, Any]) -> str:
    end = recorder.end or 1.0
    row, top = 26, TOP
    height = top + BOTTOM + row * len(FAULT_ROWS)
    c = Canvas("faults", height, end, 1.0, "Faults injected over virtual time")
    c.x_axis(time_ticks(end), "virtual time", seconds=True)
    lane = {name: top + i * row for i, name in enumerate(FAULT_ROWS)}
    for name, y in lane.items():
        c.add(f'<text class="tl" x="{LEFT - 6}" y="{y + row / 2}" text-anchor="end" '
              f'dominant-baseline="middle">{esc(name)}</text>'
              f'<line class="grid" x1="{LEFT}" y1="{y + row}" x2="{WIDTH - RIGHT}" '
              f'y2="{y + row}"/>')
    network = _network_text(options)
    if network:
        until = recorder.network_calm if recorder.network_calm is not None else end
        y = lane["network"]
        c.add(f'<rect class="fault" data-kind="network" data-t="0" '
              f'data-end="{value(round(until, 3))}" x="{LEFT}" y="{y + 4}" '
              f'width="{num(c.x(until) - LEFT)}" height="{row - 8}" '
              f'fill="{FAULT_COLOURS["network"]}"><title>{esc(network)} until '
              f'{value(round(until, 3))} s</title></rect>'
              f'<text class="tl" x="{LEFT + 4}" y="{y + row / 2}" '
              f'dominant-baseline="middle">{esc(network)}</text>')
    if recorder.faults_stop is not None:
        x = num(c.x(recorder.faults_stop))
        c.add(f'<line class="phase" data-t="{value(round(recorder.faults_stop, 3))}" '
              f'x1="{x}" y1="{top}" x2="{x}" y2="{height - BOTTOM}"><title>fault phase ends '
              f'at {value(round(recorder.faults_stop, 3))} s</title></line>')
    for mark in recorder.faults:
        c.add(_fault_mark(c, mark, lane[mark.kind], row))
    if not recorder.faults and not network:
        c.add(f'<text class="empty" x="{WIDTH / 2}" y="{height / 2 - 10}" '
              f'text-anchor="middle">no fault injected</text>')
    counts = {k: sum(1 for f in recorder.faults if f.kind == k) for k in FAULT_ROWS[1:]}
    keys = legend((FAULT_COLOURS[k], k, f"({n})") for k, n in counts.items())
    return c.svg(faults=str(len(recorder.faults))) + keys


def _fault_mark(c: Canvas, mark: FaultMark, y: float, row: int) -> str:
    nodes = " ".join(mark.nodes)
    colour = FAULT_COLOURS[mark.kind]
    start = value(round(mark.start, 3))
    common = (f'class="fault" data-kind="{mark.kind}" data-t="{start}" '
              f'data-nodes="{esc(nodes)}"')
    if mark.end is None:
        x = num(c.x(mark.start))
        return (f'<line {common} x1="{x}" y1="{y + 3}" x2="{x}" y2="{y + row - 3}" '
                f'stroke="{colour}"><title>{mark.kind} {esc(nodes)} at {start} s</title></line>')
    end = value(round(mark.end, 3))
    tail = " (still in force at the end)" if mark.open_at_end else ""
    x0, x1 = c.x(mark.start), c.x(mark.end)
    return (f'<rect {common} data-end="{end}" x="{num(x0)}" y="{y + 5}" '
            f'width="{num(max(1.0, x1 - x0))}" height="{row - 10}" fill="{colour}" '
            f'fill-opacity="0.6"><title>{mark.kind} {esc(nodes)} {start}-{end} s{tail}'
            f'</title></rect>')


STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:960px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:17px;margin:28px 0 6px}
.verdict{display:inline-block;padding:2px 10px;border-radius:4px;color:#fff;font-weight:600}
.pass{background:#3aa655}.fail{background:#d64541}
pre{background:#f4f4f4;padding:8px;white-space:pre-wrap;word-break:break-all}
table{border-collapse:collapse;margin:6px 0}td,th{padding:1px 8px 1px 0;text-align:left}
th{font-weight:500;color:#555}td{font-family:ui-monospace,monospace;padding-right:22px}
svg{display:block;background:#fff}.axis{stroke:#333}.tick{stroke:#333}.grid{stroke:#eee}
.tl{font-size:11px;fill:#333}.al{font-size:12px;fill:#555}.empty{fill:#888}
.pct{stroke:#222;stroke-dasharray:4 3}.pctl{font-size:11px;fill:#222}
.phase{stroke:#888;stroke-dasharray:2 3}line.fault{stroke-width:2}
.legend{margin:4px 0 0 60px}.key{margin-right:14px;font-size:12px}
.key i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
.note{font-size:12px;color:#555;margin:2px 0 0 60px}.violations li{color:#a00}
"""


def _table(rows: Sequence[tuple[str, object]], per_row: int) -> str:
    lines = []
    for i in range(0, len(rows), per_row):
        cells = "".join(f"<th>{esc(k)}</th><td>{esc(v)}</td>" for k, v in rows[i:i + per_row])
        lines.append(f"<tr>{cells}</tr>")
    return f"<table>{''.join(lines)}</table>"


def render(summary: Mapping[str, Any], recorder: RunRecorder, command: str,
           passed: bool) -> str:
    """The page, as text: a function of the run (virtual time only)."""
    options: Mapping[str, Any] = summary.get("options") or {}
    violations: list[str] = list(summary.get("invariant_violations") or [])
    verdict = "PASS" if passed else "FAIL"
    lost = summary.get("lost_jobs") or []
    if passed:
        detail = "every invariant held and no job was lost"
    else:
        detail = f"{len(violations)} invariant violation(s), {summary.get('lost', 0)} lost job(s)"
    items = "".join(f"<li><pre>{esc(v)}</pre></li>" for v in violations)
    problems = f'<ul class="violations">{items}</ul>' if items else ""
    if lost:
        problems += f"<p>lost: {esc(', '.join(lost))}</p>"
    params = [(k, "-" if v is None else v) for k, v in options.items()]
    facts = [(k, summary[k]) for k in SUMMARY_KEYS if k in summary]
    sections = [
        ("jobs", "Jobs over time by state", jobs_plot(recorder)),
        ("latency", "Job latency", latency_plot(recorder)),
        ("messages", "Messages per job by type", messages_plot(summary)),
        ("faults", "Faults injected", faults_plot(recorder, options)),
    ]
    body = "".join(f'<section id="{sid}"><h2>{esc(title)}</h2>{plot}</section>'
                   for sid, title, plot in sections)
    seed = summary.get("seed")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>simnet run, seed {esc(seed)}: {verdict}</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<header><h1>simnet run, seed {esc(seed)} "
        f'<span class="verdict {verdict.lower()}">{verdict}</span></h1>'
        f"<p>Invariant checkers: {esc(detail)}.</p>{problems}"
        f"<p>Reproduce (this page: add <code>--report FILE.html</code>):</p>"
        f"<pre class=\"cmd\">{esc(command)}</pre>"
        f"<h2>Parameters</h2>{_table(params, 4)}"
        f"<h2>Summary</h2>{_table([f for f in facts if f[0] != 'trace_hash'], 4)}"
        f"{_table([f for f in facts if f[0] == 'trace_hash'], 1)}</header>"
        f"<main>{body}</main>"
        "<footer><p class=\"note\">All times are virtual seconds of the simulation.</p>"
        "</footer></body></html>\n")


def check_writable(path: str) -> str | None:
    """Why a report cannot be written to ``path`` (None: it can, as far as
    can be told before the run)."""
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"{path} is a directory"
    if not os.path.exists(parent):
        return f"directory {parent} does not exist"
    if not os.path.isdir(parent):
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"directory {parent} is not writable"
    return None


def check_folder(path: str) -> str | None:
    """Why report pages cannot be written into folder ``path`` (None: they
    can; a missing folder is created, if its parent exists)."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path} is not a directory"
    probe = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(probe):
        return f"directory {probe} does not exist"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"directory {probe} is not writable"
    return None


def write(path: str, page: str) -> None:
    """Write ``page`` whole or not at all (a temporary file, then a rename)."""
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as out:
            out.write(page)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
