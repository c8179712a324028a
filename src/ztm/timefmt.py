"""Time as the APIs show it: RFC 3339 UTC strings, and short human forms for the CLI."""

from __future__ import annotations

import datetime as dt


def iso(ts: float | None) -> str | None:
    """Seconds since the epoch as `2026-11-22T01:02:03.456Z`; None stays None."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
