"""Printing results: tables for people (rich), JSON for scripts; progress goes to stderr."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_output_option(parser: argparse.ArgumentParser, default: str = "table") -> None:
    parser.add_argument("--output", choices=("table", "json"), default=default,
                        help=f"result format on stdout (default: {default})")


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()


def print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    """Print rows (dicts with the same keys) as a rich table on stdout."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    columns = list(rows[0]) if rows else []
    for column in columns:
        table.add_column(str(column))
    for row in rows:
        table.add_row(*(_format_cell(row.get(column)) for column in columns))
    Console(file=sys.stdout, width=200).print(table)


def print_mapping(data: dict[str, Any], title: str | None = None) -> None:
    print_table([{"key": k, "value": v} for k, v in data.items()], title=title)


def _format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def stderr_console():
    """Return a rich console on stderr for progress bars and status lines."""
    from rich.console import Console

    return Console(file=sys.stderr)
