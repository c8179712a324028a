"""`H2Codec.end_stream` sets END_STREAM on the stream's DATA frame that is still the last one queued (issue 13): one
frame less per direction and hop for a stream that ends right after its last bytes (an end-to-end END record), the
same bytes, windows and events for the peer. Anything queued after that frame, another stream's frame, a flush or a
payload queued by reference keeps the empty END_STREAM frame. In memory, and against the `h2` library."""

from __future__ import annotations

import h2.events
import pytest
from test_h2_codec import REQUEST, Interop, Pair, data_of, names, parse_frames

from ztm.h2 import frames as f
from ztm.h2.codec import DIRECT_MIN, H2Codec, StreamClosedError
from ztm.h2.settings import H2Settings

CONNECT = [(":method", "CONNECT"), (":authority", "ep-1:tunnel")]


def _open(p: Pair, *sids: int) -> None:
    for sid in sids:
        p.client.send_headers(sid, CONNECT)
    p.pump()


def _data_frames(codec: H2Codec) -> list[tuple[int, int, int]]:
    """(stream id, flags, payload length) of each DATA frame `codec` queued, in order."""
    return [(sid, flags, len(body)) for t, flags, sid, body in parse_frames(codec.data_to_send()) if t == f.DATA]


def test_end_right_after_a_small_data_frame_rides_on_it() -> None:
    p = Pair()
    _open(p, 1)
    p.client.send_data(1, b"end record")
    p.client.end_stream(1)
    out = p.client.data_to_send()
    assert [(t, flags, sid, bytes(b)) for t, flags, sid, b in parse_frames(out)] == [
        (f.DATA, f.END_STREAM, 1, b"end record")
    ]
    events = p.server.receive(out)
    assert names(events) == ["DataReceived", "StreamEnded"]
    assert data_of(events, 1) == b"end record"
    assert p.client.stream_state(1) == "half-closed (local)" and p.server.stream_state(1) == "half-closed (remote)"
    with pytest.raises(StreamClosedError):
        p.client.send_data(1, b"x")
    with pytest.raises(StreamClosedError):
        p.client.end_stream(1)  # already ended: nothing changes in what was queued
    assert not p.client.has_output


@pytest.mark.parametrize(
    ("between", "expected"),
    [
        ("other stream's data", [(1, 0, 3), (3, 0, 5), (1, f.END_STREAM, 0)]),
        ("ping", [(1, 0, 3), (1, f.END_STREAM, 0)]),
        ("flush", [(1, f.END_STREAM, 0)]),  # the DATA frame was taken (written) already
        ("other stream's end", [(1, 0, 3), (3, f.END_STREAM, 0), (1, f.END_STREAM, 0)]),
    ],
)
def test_an_end_after_anything_else_queued_is_its_own_frame(between: str, expected: list[tuple[int, int, int]]) -> None:
    p = Pair()
    _open(p, 1, 3)
    p.client.send_data(1, b"one")
    if between == "other stream's data":
        p.client.send_data(3, b"three")
    elif between == "ping":
        p.client.ping(b"12345678")
    elif between == "flush":
        assert _data_frames(p.client) == [(1, 0, 3)]
    else:
        p.client.end_stream(3)
    p.client.end_stream(1)
    assert _data_frames(p.client) == expected


def test_an_end_after_a_payload_queued_by_reference_is_its_own_frame() -> None:
    """Large payloads are queued as the caller's buffer (not copied) and their header as a separate chunk: neither
    is ever changed once queued."""
    p = Pair()
    _open(p, 1)
    big = bytes(DIRECT_MIN)
    p.client.send_data(1, big)
    p.client.end_stream(1)
    assert _data_frames(p.client) == [(1, 0, DIRECT_MIN), (1, f.END_STREAM, 0)]


def test_a_frame_that_filled_the_windows_takes_the_end_without_flow_control_trouble() -> None:
    p = Pair(server=H2Settings(stream_window=65535, connection_window=65535))
    _open(p, 1)
    p.client.send_data(1, bytes(65535 - 100))  # by reference
    p.client.send_data(1, b"w" * 100)  # the stream's window is now 0
    assert p.client.send_window(1) == 0
    p.client.end_stream(1)  # END_STREAM costs no window
    out = p.client.data_to_send()
    assert [(t, flags, len(b)) for t, flags, _, b in parse_frames(out)] == [
        (f.DATA, 0, 65535 - 100), (f.DATA, f.END_STREAM, 100)
    ]  # fmt: skip
    events = p.server.receive(out)
    assert names(events) == ["DataReceived", "DataReceived", "StreamEnded"]
    assert not p.server.has_output  # no protocol error queued (RST_STREAM / GOAWAY)


def test_the_merged_end_is_plain_http2_to_an_independent_peer() -> None:
    t = Interop(ours_is_client=True)
    sid = t.ours.next_stream_id()
    t.ours.send_headers(sid, [(":method", "POST"), *REQUEST[1:]])
    t.ours.send_data(sid, b"body")
    t.ours.end_stream(sid)
    t.pump()
    assert t.their_data(sid) == b"body"
    ended = [e for e in t.their_events if isinstance(e, h2.events.StreamEnded)]
    assert [e.stream_id for e in ended] == [sid]
    assert not [e for e in t.their_events if isinstance(e, h2.events.StreamReset)]
