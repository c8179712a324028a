"""Time as the APIs show it: RFC 3339 UTC strings, and short human forms for the CLI."""

from __future__ import annotations

import datetime as dt
import re


def iso(ts: float | None) -> str | None:
    """Seconds since the epoch as `2026-11-22T01:02:03.456Z`; None stays None."""
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


MAX_UNIX = 253402300799.0
"""9999-12-31T23:59:59Z: the last second `datetime` can show."""
_SPANS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_UNIX = re.compile(r"[0-9]{1,12}(?:\.[0-9]{0,9})?")
_AGO = re.compile(r"([0-9]{1,9}(?:\.[0-9]{0,9})?)\s*([smhdw])")


def parse_since(text: str, now: float) -> float:
    """A point in time as `--since` takes it, in unix seconds: unix seconds (`1733580000`, `1733580000.5`), an ISO
    8601 time (`2026-12-07T14:00:00Z`, `2026-12-07 14:00`, `2026-12-07`; the local time zone when none is given),
    or a duration before `now` (`90s`, `30m`, `1h`, `2d`, `1w`). Raises ValueError with a one-line reason."""
    value = text.strip()
    if _UNIX.fullmatch(value):
        seconds = float(value)
    elif match := _AGO.fullmatch(value.lower()):
        seconds = now - float(match.group(1)) * _SPANS[match.group(2)]
        if seconds < 0:
            raise ValueError(f"{text!r} reaches back before 1970")
    else:
        try:
            iso_text = value[:-1] + "+00:00" if value[-1:] in ("z", "Z") else value
            seconds = dt.datetime.fromisoformat(iso_text).timestamp()
        except (ValueError, OverflowError, OSError):
            raise ValueError(
                f"expected unix seconds (1733580000), an ISO time (2026-12-07T14:00:00Z; local time without a zone) "
                f"or a duration ago (30m, 1h, 2d, 1w); got {text[:60]!r}"
            ) from None
    if not 0 <= seconds <= MAX_UNIX:
        raise ValueError(f"{text[:60]!r} is out of range: give a time from 1970 to 9999")
    return seconds
