"""Shared output helpers: JSON for machines, tables for people.

A table never cuts a fact (an address, a port, a namespace, an interface, an id): on a
terminal wide enough for it, it is a table; on a narrow terminal, or when the output is not
a terminal at all (a pipe, a file, `watch`), it is one record per line, `key=value` pairs
with every value whole, which `grep` and `awk` read as easily as people do.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)

# FASTPATH_TABLES=table|records forces one layout (e.g. a table into a pager).
TABLES_ENV = "FASTPATH_TABLES"


def where(iface: str, netns: str | None) -> str:
    """'eth0' or 'eth0 in lab1-server', as messages name an interface."""
    return f"{iface} in {netns}" if netns else iface


def print_json(data: Any) -> None:
    """Write `data` as indented JSON on stdout."""
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def make_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> Table:
    """A rich table whose cells wrap (folding a long word) rather than end in an ellipsis."""
    table = Table(title=title)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        # Text, not markup: an address like [fd00::1]:80 is not a style tag.
        table.add_row(*(Text(_cell(v)) for v in row))
    return table


def _natural_width(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> int:
    """Width of the table with no cell wrapped: rich's box drawing adds 3 per column + 1."""
    widths = [len(c) for c in columns]
    for row in rows:
        for i, cell in enumerate(row[: len(widths)]):
            widths[i] = max(widths[i], max((len(line) for line in cell.splitlines()), default=0))
    return sum(widths) + 3 * len(widths) + 1


def record_key(column: str) -> str:
    """`share %` -> `share_pct`, `prog id` -> `prog_id`: keys that survive a shell."""
    key = column.strip().lower().replace("%", "pct").replace("/", "_per_")
    return "_".join("".join(ch if ch.isalnum() else " " for ch in key).split())


def _quote(value: str) -> str:
    if value and not any(ch.isspace() or ch in "\"'=" for ch in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_records(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> str:
    keys = [record_key(c) for c in columns]
    lines = [f"# {title}"] if title else []
    for row in rows:
        cells = [_cell(v).replace("\n", " ") for v in row]
        lines.append(" ".join(f"{k}={_quote(v)}" for k, v in zip(keys, cells, strict=False)))
    return "\n".join(lines) + "\n"


def table_layout(columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """`table` when the whole table fits the terminal uncut, else `records`."""
    forced = os.environ.get(TABLES_ENV)
    if forced in ("table", "records"):
        return forced
    if not console.is_terminal:
        return "records"
    return "table" if _natural_width(columns, rows) <= console.width else "records"


def print_table(columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str | None = None) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    if table_layout(columns, cells) == "records":
        sys.stdout.write(format_records(columns, cells, title))
        sys.stdout.flush()
        return
    table = Table(title=title)
    for col in columns:
        table.add_column(col, no_wrap=True)
    for row in cells:
        table.add_row(*(Text(c) for c in row))
    width = _natural_width(columns, cells)
    out = console if width <= console.width else Console(width=width)
    out.print(table)


def info(message: str) -> None:
    """A progress or status line for people, on stderr so stdout stays parseable."""
    err_console.print(message, highlight=False, soft_wrap=True)
