"""`ztm.agent.early.EarlyData` (sans-IO): early data sealed after the OPEN with the stream's counters, in order,
bounded, sent again byte-exact on a new attempt, and whatever the window did not take handed back to the app."""

from __future__ import annotations

import os

from hypothesis import given
from hypothesis import strategies as st

from ztm.agent.early import LIMIT, EarlyData
from ztm.e2e.record import DATA, OPEN, Channel

KEY_I2R, KEY_R2I = os.urandom(32), os.urandom(32)


class Window:
    """An outer stream that takes at most `room` bytes (what `write_nowait` was given lands in `out`)."""

    def __init__(self, room: int) -> None:
        self.room = room
        self.out = bytearray()

    def send_capacity(self) -> int:
        return self.room

    def write_nowait(self, data: bytes | memoryview) -> int:
        assert len(data) <= self.room
        self.room -= len(data)
        self.out += data
        return len(data)


def _opened(wire: bytes) -> tuple[list[int], bytes]:
    """What the responder opens from `wire`: the inner types, and the DATA bytes in order."""
    records = Channel(KEY_R2I, KEY_I2R).feed(wire)
    return [inner for inner, _ in records], b"".join(p for inner, p in records if inner == DATA)


def test_records_follow_the_open_with_its_counters_and_later_bytes_follow_as_they_come() -> None:
    chan = Channel(KEY_I2R, KEY_R2I)
    early = EarlyData(b"GET / HTTP/1.1\r\n")
    flight = chan.seal(OPEN, b"{}") + early.first_records(chan.seal_data)
    window = Window(1 << 20)
    early.attach(window, chan.seal)
    assert early.feed(b"Host: x\r\n\r\n") == 11
    early.detach()
    assert early.feed(b"after the answer") == 16  # held, not sent: the app sends it after what went out
    inners, data = _opened(flight + bytes(window.out))
    assert inners == [OPEN, DATA, DATA]
    assert data == b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    assert early.sent == 27
    assert early.done() == b"after the answer"
    assert early.sent_total == 27 and len(early) == 0


def test_held_bytes_are_bounded_and_sent_again_on_a_new_attempt() -> None:
    early = EarlyData()
    big = os.urandom(LIMIT + 5000)
    assert early.feed(big) == LIMIT and early.full
    assert early.feed(b"more") == 0
    first = Channel(KEY_I2R, KEY_R2I)
    early.first_records(first.seal_data)  # an attempt that ended (UNKNOWN session, or a refusal)
    early.detach()
    again = Channel(KEY_I2R, KEY_R2I)  # the new session's stream: the same bytes, sealed with its keys
    inners, data = _opened(again.seal(OPEN, b"{}") + early.first_records(again.seal_data))
    assert inners[0] == OPEN and data == big[:LIMIT]


@given(st.lists(st.binary(min_size=1, max_size=9000), min_size=1, max_size=12), st.integers(0, 40000))
def test_a_short_window_never_reorders_or_loses_bytes(chunks: list[bytes], room: int) -> None:
    """Whatever the window takes goes out as whole records, the rest comes back from `done` in order."""
    chan = Channel(KEY_I2R, KEY_R2I)
    early = EarlyData()
    window = Window(room)
    flight = chan.seal(OPEN, b"{}") + early.first_records(chan.seal_data)
    early.attach(window, chan.seal)
    fed = b""
    for chunk in chunks:
        fed += chunk[: early.feed(chunk)]
    assert len(window.out) <= room
    rest = early.done()
    _inners, data = _opened(flight + bytes(window.out))
    assert data + rest == fed
