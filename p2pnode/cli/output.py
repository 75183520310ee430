"""Rendering of command results for ``--output table|json|yaml``.

json and yaml print one document on stdout (machine-readable); table is
for people and is rendered by each command.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import click

# Characters a terminal may act on (C0/C1 controls: escape sequences, cursor
# moves, \r overwriting a line) or that reorder what is shown (bidi controls,
# zero-width marks).  Task-chosen strings (file names, logs, reasons from
# peers) are shown with these escaped; json/yaml output keeps them exact.
_TERMINAL_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")
_NAME_UNSAFE = re.compile(_TERMINAL_UNSAFE.pattern[:-1] + "\\\\]")


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_text(text: str, *, keep: str = "") -> str:
    """``text`` with every terminal control character shown as ``\\xNN`` /
    ``\\uNNNN``, but those in ``keep`` (e.g. "\\n\\t" for logs)."""
    return _TERMINAL_UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escaped(m), text)


def escape_name(name: str) -> str:
    """A file name for people: controls escaped, and backslashes doubled so
    that an escape shown cannot be confused with a name's own text."""
    return _NAME_UNSAFE.sub(_escaped, name)


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def to_yaml(data: Any) -> str:
    import yaml  # here: json and table output never need it

    text: str = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return text.rstrip("\n")


def emit_document(data: Mapping[str, Any], fmt: str) -> None:
    """Print ``data`` as JSON or YAML on stdout (``fmt`` is not table)."""
    if fmt == "json":
        click.echo(to_json(data))
    elif fmt == "yaml":
        click.echo(to_yaml(data))
    else:  # a command forgot to render its table
        raise ValueError(f"emit_document cannot render {fmt!r}")


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# Columns that hold peer ids: tables show their last SHORT_ID characters
# (a libp2p id is 52, all starting "12D3KooW"), whole ones with --wide.
PEER_COLUMNS = frozenset({"node", "node_id", "owner", "holder", "peer", "asker", "from", "to"})
SHORT_ID = 12


def short_id(peer_id: str, wide: bool = False) -> str:
    """``peer_id`` as tables show it: its last ``SHORT_ID`` characters unless ``wide``."""
    return peer_id if wide or len(peer_id) <= SHORT_ID else peer_id[-SHORT_ID:]


def wide_tables() -> bool:
    """Whether the command running asked for whole ids (``--wide``)."""
    ctx = click.get_current_context(silent=True)
    return bool(getattr(ctx.obj, "wide", False)) if ctx is not None else False


def _cell(column: str, value: Any, wide: bool) -> str:
    if value is None:
        return ""
    text = str(value)
    if column in PEER_COLUMNS and " " not in text:  # "<id> (self)" is shortened by its maker
        text = short_id(text, wide)
    return escape_text(text)


def render_table(
    rows: list[dict[str, Any]], columns: list[str], *, wide: bool | None = None
) -> str:
    """Plain aligned columns (stable in pipes, unlike a width-dependent renderer).

    Peer ids in ``PEER_COLUMNS`` are shortened unless ``wide`` (default: the
    command's ``--wide``)."""
    if not rows:
        return "(none)"
    whole = wide_tables() if wide is None else wide
    cells = [[str(c).upper() for c in columns]]
    cells += [[_cell(c, r.get(c), whole) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )
