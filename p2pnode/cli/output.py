"""Rendering of command results for ``--output table|json|yaml``.

json and yaml print one document on stdout (machine-readable); table is
for people and is rendered by each command.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import click
import yaml


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False)


def to_yaml(data: Any) -> str:
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


def render_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Plain aligned columns (stable in pipes, unlike a width-dependent renderer)."""
    if not rows:
        return "(none)"
    cells = [[str(c).upper() for c in columns]]
    cells += [["" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    )
