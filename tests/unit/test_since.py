"""`ztm.timefmt.parse_since`, the `--since T` of `ztm get audit`: unix seconds, ISO times and durations ago map to
the right instant; anything else is a ValueError with one line that says what is accepted (never another exception,
never a time outside 1970-9999)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from ztm.timefmt import MAX_UNIX, parse_since

NOW = 1_796_652_000.0  # 2026-12-07T14:00:00Z
SPANS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@given(st.integers(min_value=0, max_value=int(MAX_UNIX) - 1))
def test_unix_seconds_are_taken_as_they_are(seconds: int) -> None:
    assert parse_since(str(seconds), NOW) == seconds
    assert parse_since(f" {seconds}.5 ", NOW) == seconds + 0.5


@given(st.integers(min_value=0, max_value=20_000), st.sampled_from(sorted(SPANS)), st.booleans())
def test_a_duration_is_that_long_before_now(amount: int, unit: str, upper: bool) -> None:
    text = f"{amount}{unit.upper() if upper else unit}"
    if amount * SPANS[unit] > NOW:
        with pytest.raises(ValueError, match="before 1970"):
            parse_since(text, NOW)
    else:
        assert parse_since(text, NOW) == NOW - amount * SPANS[unit]


@given(
    st.datetimes(min_value=dt.datetime(1970, 1, 2), max_value=dt.datetime(9999, 12, 30)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
@example(dt.datetime(2026, 12, 7, 14, 0), 0)
def test_iso_times_with_a_zone_are_that_instant(when: dt.datetime, offset_minutes: int) -> None:
    aware = when.replace(tzinfo=dt.timezone(dt.timedelta(minutes=offset_minutes)))
    assert parse_since(aware.isoformat(), NOW) == pytest.approx(aware.timestamp(), abs=1e-6)
    if offset_minutes == 0:
        assert parse_since(aware.isoformat().replace("+00:00", "Z"), NOW) == pytest.approx(aware.timestamp(), abs=1e-6)


def test_iso_times_without_a_zone_are_local_and_dates_are_midnight() -> None:
    assert parse_since("2026-12-07 14:00", NOW) == dt.datetime(2026, 12, 7, 14, 0).timestamp()
    assert parse_since("2026-12-07", NOW) == dt.datetime(2026, 12, 7).timestamp()
    assert parse_since("2026-12-07T14:00:00Z", NOW) == NOW


@given(st.text(max_size=40))
@example("")
@example("yesterday")
@example("-5")
@example("1e9")
@example("inf")
@example("nan")
@example("99999999999999")
@example("1969-12-31T00:00:00Z")
@example("10000000000w")
@example("0001-01-01")
def test_anything_else_is_a_one_line_value_error(text: str) -> None:
    try:
        got = parse_since(text, NOW)
    except ValueError as exc:
        message = str(exc)
        assert message and "\n" not in message
        return
    assert 0 <= got <= MAX_UNIX


@pytest.mark.parametrize("text", ["", "yesterday", "-5", "1e9", "inf", "nan", "1969-12-31T00:00:00Z", "5 years"])
def test_refusals_say_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError) as raised:
        parse_since(text, NOW)
    message = str(raised.value)
    assert "unix seconds" in message or "out of range" in message or "before 1970" in message, message


def test_the_last_second_is_9999() -> None:
    assert parse_since(str(int(MAX_UNIX)), NOW) == MAX_UNIX
    with pytest.raises(ValueError, match="out of range"):
        parse_since(f"{int(MAX_UNIX)}.5", NOW)
