"""Result tables: one Markdown table writer and JSON with NaN as null, for every tool."""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

from .atomic_write import write_text_atomically

__all__ = ["markdown_table", "format_number", "json_safe", "write_json"]


def format_number(value: Any, digits: int = 2) -> str:
    """A float with ``digits`` decimals ("n/a" for NaN / None); anything else as ``str``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A Markdown table (no trailing newline); floats get ``digits`` decimals."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(format_number(cell, digits) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def json_safe(value: Any) -> Any:
    """``value`` with every NaN float (in nested dicts, lists, tuples) replaced by None."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def write_json(path: str, value: Any) -> None:
    """``value`` as indented JSON (NaN -> null), written atomically."""
    write_text_atomically(path, json.dumps(json_safe(value), indent=2, allow_nan=False) + "\n")
