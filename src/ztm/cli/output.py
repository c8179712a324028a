"""Formatting for people (tables, key: value blocks, human units) and for scripts (the API's JSON, pretty, sorted).

Everything shown in a table can come from another machine of the mesh (names, labels, hostnames), so `cell` makes any
value printable on one line and neutralises terminal control characters.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

MISSING = "-"


def json_text(value: object) -> str:
    """The API's JSON as scripts get it: pretty, keys sorted."""
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False)


def clean(text: str, *, keep_newlines: bool = False) -> str:
    """`text` with control and format characters escaped, so it cannot rewrite the terminal."""
    out: list[str] = []
    for ch in text:
        if ch == "\n" and keep_newlines:
            out.append(ch)
        elif ch == "\t":
            out.append(" ")
        elif unicodedata.category(ch)[0] == "C":
            out.append(ch.encode("unicode_escape").decode("ascii") if ord(ch) < 0x10000 else "?")
        else:
            out.append(ch)
    return "".join(out)


def cell(value: object) -> str:
    """One table cell: `-` for null/empty, lists joined with commas, booleans as yes/no."""
    if value is None or value == "" or value == []:
        return MISSING
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return clean(json.dumps(value, sort_keys=True, ensure_ascii=False))
    return clean(str(value))


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces, no trailing blanks."""
    all_rows = [list(headers), *([str(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in all_rows) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in all_rows]
    return "\n".join(lines)


def key_values(pairs: Iterable[tuple[str, str]]) -> str:
    """`key: value` lines with the values aligned."""
    items = list(pairs)
    if not items:
        return ""
    width = max(len(k) for k, _ in items) + 1
    return "\n".join(f"{(k + ':').ljust(width)} {v}".rstrip() for k, v in items)


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 time from the API, or None if absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def duration(seconds: float) -> str:
    """`42s`, `5m`, `3h`, `2d`: a short rounded duration."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def ago(value: object, now: datetime | None = None) -> str:
    """`3s ago` for an RFC 3339 time in the past, `in 5m` for one in the future, `-` for none."""
    when = parse_time(value)
    if when is None:
        return MISSING if value in (None, "") else cell(value)
    delta = ((now or datetime.now(UTC)) - when).total_seconds()
    if delta >= -1:
        return f"{duration(delta)} ago"
    return f"in {duration(-delta)}"


def time_with_ago(value: object, now: datetime | None = None) -> str:
    """The time as the API gave it, followed by how long ago it was: `2024-05-01T10:00:00Z (3s ago)`."""
    if parse_time(value) is None:
        return cell(value)
    return f"{cell(value)} ({ago(value, now)})"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def human_bytes(value: object) -> str:
    """`512 B`, `1.5 KiB`, `12.0 MiB`, ... (binary units)."""
    n = _number(value)
    if n is None:
        return cell(value)
    if abs(n) < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if abs(n) < 1024:
            return f"{n:.1f} {unit}"
    return f"{n:.1f} PiB"


def human_rate(value: object) -> str:
    """A rate in bytes per second: `1.2 MiB/s`."""
    if _number(value) is None:
        return cell(value)
    return human_bytes(value) + "/s"


def milliseconds(value: object) -> str:
    """An RTT in milliseconds: `1.23 ms`."""
    n = _number(value)
    return MISSING if n is None else f"{n:.2f} ms"
