"""The sans-IO HTTP/2 codec (`ztm.h2.codec`): two codecs pumping bytes in memory, raw frames, interop with `h2`, fuzz.

No sockets here. `Pair` moves bytes between a client and a server codec; `Raw` builds frames by hand to break the
rules; the `h2` library (kept as a test-only peer) checks that we interoperate with an independent implementation in
both directions; hypothesis feeds random and mutated frames, and the codec must only ever answer with protocol
errors (RST_STREAM / GOAWAY), never raise.
"""

from __future__ import annotations

import os
import random

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest
from hpack import Decoder, Encoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ztm.h2 import events as ev
from ztm.h2 import fields
from ztm.h2 import frames as f
from ztm.h2.codec import CodecError, H2Codec, StreamClosedError, TooManyStreamsError
from ztm.h2.settings import H2Settings

SMALL = H2Settings(max_frame_size=16384, stream_window=65535, connection_window=65535)
REQUEST = [(":method", "GET"), (":scheme", "https"), (":authority", "ztm"), (":path", "/x")]


def names(events: list[ev.Event]) -> list[str]:
    return [type(e).__name__ for e in events]


def data_of(events: list[ev.Event], stream_id: int) -> bytes:
    return b"".join(bytes(e.data) for e in events if isinstance(e, ev.DataReceived) and e.stream_id == stream_id)


def ack_all(codec: H2Codec, events: list[ev.Event]) -> None:
    """Consume every DataReceived at once (credit it back)."""
    for e in events:
        if isinstance(e, ev.DataReceived):
            codec.acknowledge(e.stream_id, e.flow_controlled_length)


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of every frame in `data` (a client preface is skipped)."""
    if data.startswith(f.PREFACE):
        data = data[len(f.PREFACE) :]
    out = []
    while data:
        a, flags, sid = f.HEADER.unpack_from(data)
        length = a >> 8
        out.append((a & 0xFF, flags, sid, data[9 : 9 + length]))
        data = data[9 + length :]
    return out


class Pair:
    """A client and a server codec connected in memory."""

    def __init__(self, client: H2Settings = H2Settings(), server: H2Settings = H2Settings()) -> None:  # noqa: B008
        self.client = H2Codec(client=True, settings=client)
        self.server = H2Codec(client=False, settings=server)
        self.client.initiate()
        self.server.initiate()
        self.pump()

    def to_server(self) -> list[ev.Event]:
        return self.server.receive(self.client.data_to_send())

    def to_client(self) -> list[ev.Event]:
        return self.client.receive(self.server.data_to_send())

    def pump(self) -> tuple[list[ev.Event], list[ev.Event]]:
        """Move bytes both ways until both sides are quiet; (client events, server events)."""
        client_events: list[ev.Event] = []
        server_events: list[ev.Event] = []
        while self.client.has_output or self.server.has_output:
            server_events += self.to_server()
            client_events += self.to_client()
        return client_events, server_events


# ---------------------------------------------------------------------------------------------- codec <-> codec


def test_handshake_exchanges_settings_and_acks() -> None:
    client = H2Codec(client=True)
    server = H2Codec(client=False)
    client.initiate()
    server.initiate()
    out = client.data_to_send()
    assert out.startswith(f.PREFACE)
    frames = parse_frames(out)
    assert [t for t, *_ in frames] == [f.SETTINGS, f.WINDOW_UPDATE]
    assert dict(f.parse_settings(frames[0][3])) == {
        f.ENABLE_PUSH: 0,
        f.MAX_FRAME_SIZE: 1 << 20,
        f.INITIAL_WINDOW_SIZE: 16 << 20,
        f.MAX_CONCURRENT_STREAMS: 100000,
        f.MAX_HEADER_LIST_SIZE: 65536,
    }
    events = server.receive(out)
    assert names(events) == ["SettingsChanged", "WindowUpdated"]
    assert isinstance(events[0], ev.SettingsChanged) and events[0].changed[f.MAX_FRAME_SIZE] == 1 << 20
    assert server.max_outbound_frame_size == 1 << 20
    assert names(client.receive(server.data_to_send())) == ["SettingsChanged", "WindowUpdated", "SettingsAcked"]
    assert names(server.receive(client.data_to_send())) == ["SettingsAcked"]
    assert not client.has_output and not server.has_output


def test_request_response() -> None:
    p = Pair()
    sid = p.client.next_stream_id()
    assert sid == 1
    p.client.send_headers(sid, [*REQUEST, ("X-Test", "  yes "), ("Connection", "close")], end_stream=True)
    events = p.to_server()
    assert names(events) == ["RequestReceived", "StreamEnded"]
    request = events[0]
    assert isinstance(request, ev.RequestReceived)
    assert request.headers == [*REQUEST, ("x-test", "yes")]  # normalized as h2 does; connection dropped
    assert p.server.stream_state(1) == "half-closed (remote)"
    p.server.send_headers(1, [(":status", "200"), ("content-length", "5")])
    p.server.send_data(1, b"hello", end_stream=True)
    assert p.server.stream_state(1) == "closed" and p.server.open_streams == 0
    events = p.to_client()
    assert names(events) == ["ResponseReceived", "DataReceived", "StreamEnded"]
    assert isinstance(events[0], ev.ResponseReceived) and events[0].headers[0] == (":status", "200")
    assert data_of(events, 1) == b"hello"
    assert p.client.open_streams == 0
    assert p.client.next_stream_id() == 3


def test_connect_is_a_bidirectional_byte_stream_with_half_close() -> None:
    p = Pair()
    p.client.send_headers(1, [(":method", "CONNECT"), (":authority", "ep-1:tunnel")])
    (request,) = p.to_server()
    assert isinstance(request, ev.RequestReceived)
    assert request.headers == [(":method", "CONNECT"), (":authority", "ep-1:tunnel")]
    p.server.send_headers(1, [(":status", "200")])
    assert names(p.to_client()) == ["ResponseReceived"]
    for word in (b"one", b"two", b"three"):
        p.client.send_data(1, word)
        events = p.to_server()
        assert data_of(events, 1) == word
        ack_all(p.server, events)
        p.server.send_data(1, word.upper())
        assert data_of(p.to_client(), 1) == word.upper()
    p.client.end_stream(1)
    assert names(p.to_server()) == ["StreamEnded"]
    p.server.send_data(1, b"after the client's half-close")
    assert data_of(p.to_client(), 1) == b"after the client's half-close"
    p.server.end_stream(1)
    assert names(p.to_client()) == ["StreamEnded"]
    assert p.client.open_streams == p.server.open_streams == 0
    with pytest.raises(StreamClosedError):
        p.client.send_data(1, b"x")


def test_malformed_connect_requests_are_refused() -> None:
    p = Pair()
    p.client.send_headers(1, [(":method", "CONNECT"), (":authority", "x"), (":path", "/")])
    assert p.to_server() == []  # never reported: refused with RST_STREAM(PROTOCOL_ERROR)
    assert names(p.to_client()) == ["StreamReset"]


def test_flow_control_window_exhaustion_and_batched_window_updates() -> None:
    p = Pair(client=SMALL, server=SMALL)
    p.client.send_headers(1, [(":method", "POST"), *REQUEST[1:]])
    p.to_server()
    assert p.client.send_window(1) == 65535
    sent = 0
    while p.client.send_window(1) > 0:
        n = min(p.client.send_window(1), p.client.max_outbound_frame_size)
        p.client.send_data(1, b"x" * n)
        sent += n
    assert sent == 65535
    with pytest.raises(CodecError, match="send window"):
        p.client.send_data(1, b"x")
    events = p.to_server()
    assert len(data_of(events, 1)) == 65535
    flows = [e for e in events if isinstance(e, ev.DataReceived)]
    # nothing consumed yet: no credit
    assert not p.server.has_output
    # consuming less than a quarter of the window sends nothing; a quarter sends one WINDOW_UPDATE per level
    p.server.acknowledge(1, 10000)
    assert not p.server.has_output
    p.server.acknowledge(1, 10000)
    frames = parse_frames(p.server.data_to_send())
    assert [(t, sid, f.parse_u32(payload)) for t, _, sid, payload in frames] == [
        (f.WINDOW_UPDATE, 0, 20000),
        (f.WINDOW_UPDATE, 1, 20000),
    ]
    p.client.receive(b"".join(f.frame(t, fl, sid, pl) for t, fl, sid, pl in frames))
    assert p.client.send_window(1) == 20000
    rest = sum(e.flow_controlled_length for e in flows) - 20000
    p.server.acknowledge(1, rest)
    p.to_client()
    assert p.client.send_window(1) == 65535
    # more than was received is never credited
    p.server.acknowledge(1, 10**6)
    assert not p.server.has_output


def test_connection_window_bounds_all_streams_together() -> None:
    p = Pair(server=H2Settings(max_frame_size=16384, stream_window=65535, connection_window=100000))
    for sid in (1, 3):
        p.client.send_headers(sid, [(":method", "POST"), *REQUEST[1:]])
    p.to_server()
    total = 0
    for sid in (1, 3, 1, 3, 1, 3, 1, 3):
        n = min(p.client.send_window(sid), 16384)
        if n > 0:
            p.client.send_data(sid, b"y" * n)
            total += n
    assert total == 100000
    assert p.client.send_window(1) == p.client.send_window(3) == 0
    events = p.to_server()
    assert len(data_of(events, 1)) + len(data_of(events, 3)) == 100000
    ack_all(p.server, events)
    p.to_client()
    assert p.client.send_window(1) > 0


def test_peer_exceeding_our_windows_is_a_flow_control_error() -> None:
    raw = Raw(server_settings=H2Settings(max_frame_size=16384, stream_window=65535, connection_window=1 << 20))
    raw.request(1, end_stream=False)
    events = raw.send(f.frame(f.DATA, 0, 1, b"a" * 16384) * 4)  # the 4th frame exceeds 65535
    assert len(data_of(events, 1)) == 3 * 16384
    assert events[-1] == ev.StreamReset(1, f.FLOW_CONTROL_ERROR, False)
    assert raw.sent_rst(1) == f.FLOW_CONTROL_ERROR
    assert not raw.codec.closed
    # beyond the connection window: a connection error
    raw = Raw(server_settings=SMALL)
    raw.request(1, end_stream=False)
    raw.request(3, end_stream=False)
    events = raw.send(f.frame(f.DATA, 0, 1, b"a" * 16384) * 2 + f.frame(f.DATA, 0, 3, b"b" * 16384) * 2)
    assert isinstance(events[-1], ev.ConnectionTerminated) and events[-1].error_code == f.FLOW_CONTROL_ERROR
    assert raw.sent_goaway() == f.FLOW_CONTROL_ERROR


def test_interleaved_streams_fed_in_random_pieces() -> None:
    p = Pair(server=H2Settings(max_frame_size=16384))
    bodies = {sid: os.urandom(50000 + sid) for sid in (1, 3, 5)}
    for sid in bodies:
        p.client.send_headers(sid, [(":method", "POST"), *REQUEST[1:]])
    offsets = dict.fromkeys(bodies, 0)
    rng = random.Random(7)
    while any(offsets[s] < len(b) for s, b in bodies.items()):
        for sid, body in bodies.items():
            n = min(rng.randrange(1, 9000), len(body) - offsets[sid])
            if n:
                p.client.send_data(sid, body[offsets[sid] : offsets[sid] + n], end_stream=offsets[sid] + n == len(body))
                offsets[sid] += n
    wire = p.client.data_to_send()
    received: dict[int, bytearray] = {sid: bytearray() for sid in bodies}
    ended = []
    pos = 0
    while pos < len(wire):
        n = rng.choice([1, 2, 7, 9, 10, 100, 4096, 20000])
        events = p.server.receive(bytearray(wire[pos : pos + n]))  # a buffer the caller reuses afterwards
        pos += n
        for e in events:
            if isinstance(e, ev.DataReceived):
                received[e.stream_id] += e.data
            elif isinstance(e, ev.StreamEnded):
                ended.append(e.stream_id)
    assert received == bodies
    assert sorted(ended) == [1, 3, 5]


def test_reset_by_either_side_and_frames_in_flight_are_ignored() -> None:
    p = Pair()
    p.client.send_headers(1, [(":method", "POST"), *REQUEST[1:]])
    p.client.send_headers(3, [(":method", "POST"), *REQUEST[1:]])
    p.to_server()
    p.server.send_headers(1, [(":status", "200")])
    p.server.send_data(1, b"z" * 30000)  # in flight when the client resets
    p.client.reset_stream(1, f.CANCEL)
    assert p.client.stream_state(1) == "closed"
    events = p.to_client()
    assert names(events) == []  # ignored, and credited to the connection window at once
    events = p.to_server()
    assert events == [ev.StreamReset(1, f.CANCEL, True)]
    with pytest.raises(StreamClosedError):
        p.server.send_data(1, b"late")
    p.server.reset_stream(3, f.INTERNAL_ERROR)
    assert p.to_client() == [ev.StreamReset(3, f.INTERNAL_ERROR, True)]
    with pytest.raises(StreamClosedError):
        p.client.reset_stream(3)
    assert p.client.open_streams == p.server.open_streams == 0


def test_reset_while_a_data_frame_is_half_received_drops_the_rest() -> None:
    p = Pair()
    p.client.send_headers(1, [(":method", "POST"), *REQUEST[1:]])
    p.to_server()
    p.client.send_data(1, b"q" * 100000)
    wire = p.client.data_to_send()
    events = p.server.receive(wire[:50000])
    got = sum(e.flow_controlled_length for e in events if isinstance(e, ev.DataReceived))
    p.server.reset_stream(1)
    assert p.server.receive(wire[50000:]) == []
    p.server.acknowledge(1, got)
    assert p.server._conn_in_flight == 0  # everything credited, by the application or the codec


def test_goaway_ends_new_streams_and_refuses_unprocessed_ones() -> None:
    p = Pair()
    p.client.send_headers(1, REQUEST, end_stream=True)
    p.to_server()
    p.client.send_headers(3, REQUEST, end_stream=True)  # not yet delivered when the server goes away
    p.server.close(f.NO_ERROR, b"shutting down")
    with pytest.raises(CodecError):
        p.server.send_headers(1, [(":status", "200")])
    events = p.to_client()
    assert events == [ev.GoAway(f.NO_ERROR, 1, b"shutting down"), ev.StreamReset(3, f.REFUSED_STREAM, True)]
    with pytest.raises(CodecError, match="GOAWAY"):
        p.client.send_headers(5, REQUEST)
    assert p.to_server() == []  # a closed codec ignores its input


def test_settings_changes_mid_stream() -> None:
    p = Pair(client=SMALL, server=SMALL)
    p.client.send_headers(1, [(":method", "POST"), *REQUEST[1:]])
    p.to_server()
    p.client.send_data(1, b"a" * 10000)
    events = p.to_server()
    ack_all(p.server, events)
    assert p.client.send_window(1) == 65535 - 10000
    # the server shrinks the stream window: the client's window goes down by the difference (may go negative)
    p.server.update_settings({f.INITIAL_WINDOW_SIZE: 5000, f.MAX_FRAME_SIZE: 20000})
    client_events, server_events = p.pump()
    assert ev.SettingsChanged({f.INITIAL_WINDOW_SIZE: 5000, f.MAX_FRAME_SIZE: 20000}) in client_events
    assert ev.SettingsAcked() in server_events
    # the client had 55535 left: 5000 - 65535 less is -5000, but with a smaller window the server credits the 10000
    # bytes consumed at once (they were below the old quarter-window threshold, not the new one)
    assert p.client.send_window(1) == 55535 + (5000 - 65535) + 10000 == 5000
    assert p.client.max_outbound_frame_size == 20000
    # growing it again
    p.server.update_settings({f.INITIAL_WINDOW_SIZE: 100000})
    p.pump()
    assert p.client._streams[1].send_window == 5000 + 100000 - 5000
    assert p.client.send_window(1) == 65535 - 10000  # now the connection window limits
    p.client.send_data(1, b"b" * 20000)
    events = p.to_server()
    assert len(data_of(events, 1)) == 20000  # within the new window, no error
    with pytest.raises(CodecError, match="cannot be changed"):
        p.client.update_settings({f.HEADER_TABLE_SIZE: 0})


def test_server_may_not_exceed_the_clients_concurrency_limit_and_vice_versa() -> None:
    p = Pair(server=H2Settings(max_concurrent_streams=2))
    p.client.send_headers(1, REQUEST)
    p.client.send_headers(3, REQUEST)
    with pytest.raises(TooManyStreamsError):
        p.client.send_headers(5, REQUEST)
    p.client.reset_stream(1)
    p.client.send_headers(5, REQUEST)  # a slot is free again
    assert names(p.to_server()) == ["RequestReceived", "RequestReceived", "StreamReset", "RequestReceived"]


def test_excess_peer_streams_are_refused() -> None:
    raw = Raw(server_settings=H2Settings(max_concurrent_streams=1))
    assert names(raw.request(1, end_stream=False)) == ["RequestReceived"]
    assert raw.request(3) == []
    assert raw.sent_rst(3) == f.REFUSED_STREAM
    raw.send(f.rst_stream(1, f.CANCEL))
    assert names(raw.request(5)) == ["RequestReceived", "StreamEnded"]


def test_large_header_blocks_use_continuation_both_ways() -> None:
    p = Pair(client=SMALL, server=SMALL)
    big = [(f"x-h{i}", os.urandom(500).hex()) for i in range(50)]  # ~50 KB, more than three 16 KiB frames
    p.client.send_headers(1, [*REQUEST, *big], end_stream=True)
    wire = p.client.data_to_send()
    frames = parse_frames(wire)
    assert [t for t, *_ in frames] == [f.HEADERS] + [f.CONTINUATION] * (len(frames) - 1)
    assert len(frames) >= 3
    assert frames[0][1] == f.END_STREAM and frames[-1][1] == f.END_HEADERS
    events = []
    for i in range(0, len(wire), 1000):
        events += p.server.receive(wire[i : i + 1000])
    assert names(events) == ["RequestReceived", "StreamEnded"]
    assert isinstance(events[0], ev.RequestReceived) and events[0].headers == [*REQUEST, *big]


def test_header_list_size_is_limited() -> None:
    p = Pair(server=H2Settings(max_header_list_size=4096))
    p.client.send_headers(1, [*REQUEST, ("x-big", "v" * 5000)])
    events = p.to_server()
    assert isinstance(events[-1], ev.ConnectionTerminated) and events[-1].error_code == f.ENHANCE_YOUR_CALM


def test_ping_both_ways() -> None:
    p = Pair()
    p.client.ping(b"12345678")
    assert p.to_server() == [ev.PingReceived(b"12345678")]
    assert p.to_client() == [ev.PingAcked(b"12345678")]
    with pytest.raises(CodecError):
        p.client.ping(b"short")


def test_trailers_informational_responses_and_content_length() -> None:
    raw = Raw(client=True)
    raw.codec.send_headers(1, [(":method", "POST"), *REQUEST[1:]])
    raw.codec.send_headers(3, [(":method", "HEAD"), *REQUEST[1:]], end_stream=True)
    raw.codec.send_headers(5, REQUEST, end_stream=True)
    raw.codec.data_to_send()
    events = raw.headers(1, [(":status", "100")])
    assert names(events) == ["InformationalResponseReceived"]
    raw.headers(1, [(":status", "200"), ("content-length", "4")])
    events = raw.send(f.frame(f.DATA, 0, 1, b"abcd"))
    assert data_of(events, 1) == b"abcd"
    events = raw.headers(1, [("x-checksum", "ok")], end_stream=True)
    assert names(events) == ["TrailersReceived", "StreamEnded"]
    # HEAD: content-length without a body is fine
    assert names(raw.headers(3, [(":status", "200"), ("content-length", "10")], end_stream=True)) == [
        "ResponseReceived",
        "StreamEnded",
    ]
    # a body shorter than its content-length is malformed
    raw.headers(5, [(":status", "200"), ("content-length", "10")])
    events = raw.send(f.frame(f.DATA, f.END_STREAM, 5, b"short"))
    assert events[-1] == ev.StreamReset(5, f.PROTOCOL_ERROR, False)


def test_header_encoding_is_stateless_hpack() -> None:
    headers = [
        (":status", "200"),  # static table field
        (":method", "CONNECT"),  # static name
        ("content-type", "application/json"),
        ("X-Mixed-Case", "  padded  "),
        ("x-long", "v" * 300),  # multi-byte length
        ("x-utf8", "grüße ✓"),
        ("authorization", "Bearer secret"),
        ("cookie", "short=1"),
        ("connection", "keep-alive"),  # dropped
    ]
    block = fields.TABLE_SIZE_ZERO + fields.encode(headers)
    assert fields.encode(headers) == block[1:]  # cached: same bytes
    decoder = Decoder()
    decoded = [(bytes(n).decode(), bytes(v).decode()) for n, v in decoder.decode(block, raw=True)]
    assert decoded == [
        (":status", "200"),
        (":method", "CONNECT"),
        ("content-type", "application/json"),
        ("x-mixed-case", "padded"),
        ("x-long", "v" * 300),
        ("x-utf8", "grüße ✓"),
        ("authorization", "Bearer secret"),
        ("cookie", "short=1"),
    ]
    assert decoder.header_table_size == 0 and len(decoder.header_table.dynamic_entries) == 0
    never = [h for h in Decoder().decode(block, raw=True) if not h.indexable]
    assert [bytes(h[0]) for h in never] == [b"authorization", b"cookie"]
    assert fields.encode([(":status", "200")]) == b"\x88"
    with pytest.raises(ValueError, match="invalid header"):
        fields.encode([("x", "a\nb")])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([":path", "content-length", "x-a", "accept", "via"])
            | st.from_regex(r"[a-z][a-z0-9-]{0,40}", fullmatch=True),
            st.text(st.characters(blacklist_characters="\x00\r\n", blacklist_categories=["Cs"]), max_size=300),
        ),
        max_size=12,
    )
)
def test_header_encoding_round_trips(headers: list[tuple[str, str]]) -> None:
    expected = [(n, v.strip()) for n, v in headers if n not in ("connection", "upgrade", "keep-alive")]
    expected = [(n, v) for n, v in expected if n not in ("proxy-connection", "transfer-encoding")]
    block = fields.encode(headers)
    decoded = [(bytes(n).decode(), bytes(v).decode()) for n, v in Decoder().decode(block, raw=True)]
    assert decoded == expected


def _hpack(block: bytes) -> list[tuple[bytes, bytes]]:
    return [(bytes(n), bytes(v)) for n, v in Decoder().decode(block, raw=True)]


def test_simple_blocks_are_decoded_without_the_hpack_decoder() -> None:
    block = fields.encode([*REQUEST, ("x-long", "v" * 200), ("authorization", "secret")])
    assert fields.decode_simple(block, 65536) == _hpack(block)
    assert fields.decode_simple(block, 100) is None  # over the limit: the full decoder reports it
    hpack_block = Encoder().encode(REQUEST)  # incremental indexing and Huffman coding: not simple
    assert fields.decode_simple(hpack_block, 65536) is None
    assert fields.decode_simple(b"\x80", 65536) is None  # index 0: an error, left to the full decoder
    assert fields.decode_simple(b"\x00\x05ab", 65536) is None  # truncated


@settings(max_examples=500, deadline=None)
@given(
    st.binary(max_size=40)
    | st.builds(lambda a, b: a + b, st.sampled_from([b"\x88", b"\x04\x02/x"]), st.binary(max_size=8))
)
def test_simple_decoding_agrees_with_hpack(block: bytes) -> None:
    result = fields.decode_simple(block, 65536)
    if result is not None:
        assert result == _hpack(block)


# ---------------------------------------------------------------------------------------------- rule breaking


class Raw:
    """A codec under test and a hand-made peer: frames are built with `ztm.h2.frames` and an HPACK encoder."""

    def __init__(self, *, client: bool = False, server_settings: H2Settings = H2Settings()) -> None:  # noqa: B008
        self.codec = H2Codec(client=client, settings=server_settings)
        self.codec.initiate()
        self.codec.data_to_send()
        self.encoder = Encoder()
        self.out = b""
        hello = f.settings({}) + f.settings_ack()
        events = self.codec.receive(hello if client else f.PREFACE + hello)
        assert names(events) == ["SettingsChanged", "SettingsAcked"]
        self.codec.data_to_send()

    def send(self, data: bytes) -> list[ev.Event]:
        events = self.codec.receive(data)
        self.out += self.codec.data_to_send()
        return events

    def headers(self, sid: int, headers: list[tuple[str, str]], *, end_stream: bool = False) -> list[ev.Event]:
        return self.send(f.headers(sid, self.encoder.encode(headers), end_stream, 16384))

    def request(self, sid: int, *, end_stream: bool = True) -> list[ev.Event]:
        return self.headers(sid, REQUEST, end_stream=end_stream)

    def sent(self, type_: int) -> list[tuple[int, int, int, bytes]]:
        return [fr for fr in parse_frames(self.out) if fr[0] == type_]

    def sent_rst(self, sid: int) -> int | None:
        codes = [f.parse_u32(p) for _, _, s, p in self.sent(f.RST_STREAM) if s == sid]
        return codes[-1] if codes else None

    def sent_goaway(self) -> int | None:
        frames = self.sent(f.GOAWAY)
        return f.parse_goaway(frames[-1][3])[1] if frames else None


def _enc(headers: list[tuple[str, str]]) -> bytes:
    return bytes(Encoder().encode(headers))


CONNECTION_ERRORS = [
    ("DATA on stream 0", f.frame(f.DATA, 0, 0, b"x"), f.PROTOCOL_ERROR),
    ("DATA on an idle stream", f.frame(f.DATA, 0, 9, b"x"), f.PROTOCOL_ERROR),
    ("HEADERS on stream 0", f.frame(f.HEADERS, f.END_HEADERS, 0, _enc(REQUEST)), f.PROTOCOL_ERROR),
    ("even stream id from a client", f.headers(2, _enc(REQUEST), True, 16384), f.PROTOCOL_ERROR),
    ("frame larger than MAX_FRAME_SIZE", f.HEADER.pack((1 << 20 | 1) << 8 | f.HEADERS, 0, 3), f.FRAME_SIZE_ERROR),
    ("PING of 7 bytes", f.frame(f.PING, 0, 0, b"1234567"), f.FRAME_SIZE_ERROR),
    ("PING on a stream", f.frame(f.PING, 0, 1, b"12345678"), f.PROTOCOL_ERROR),
    ("SETTINGS of 5 bytes", f.frame(f.SETTINGS, 0, 0, b"12345"), f.FRAME_SIZE_ERROR),
    ("SETTINGS ACK with payload", f.frame(f.SETTINGS, f.ACK, 0, b"\0" * 6), f.FRAME_SIZE_ERROR),
    ("unexpected SETTINGS ACK", f.settings_ack(), f.PROTOCOL_ERROR),
    ("SETTINGS on a stream", f.frame(f.SETTINGS, 0, 1), f.PROTOCOL_ERROR),
    ("INITIAL_WINDOW_SIZE too large", f.settings({f.INITIAL_WINDOW_SIZE: 1 << 31}), f.FLOW_CONTROL_ERROR),
    ("MAX_FRAME_SIZE too small", f.settings({f.MAX_FRAME_SIZE: 100}), f.PROTOCOL_ERROR),
    ("ENABLE_PUSH 2", f.settings({f.ENABLE_PUSH: 2}), f.PROTOCOL_ERROR),
    ("WINDOW_UPDATE 0 on the connection", f.window_update(0, 0), f.PROTOCOL_ERROR),
    ("connection window overflow", f.window_update(0, (1 << 31) - 1), f.FLOW_CONTROL_ERROR),
    ("WINDOW_UPDATE on an idle stream", f.window_update(7, 1), f.PROTOCOL_ERROR),
    ("WINDOW_UPDATE of 3 bytes", f.frame(f.WINDOW_UPDATE, 0, 0, b"\0\0\1"), f.FRAME_SIZE_ERROR),
    ("RST_STREAM on stream 0", f.rst_stream(0, 0), f.PROTOCOL_ERROR),
    ("RST_STREAM on an idle stream", f.rst_stream(11, 0), f.PROTOCOL_ERROR),
    ("PUSH_PROMISE", f.frame(f.PUSH_PROMISE, f.END_HEADERS, 1, b"\0\0\0\2"), f.PROTOCOL_ERROR),
    ("GOAWAY of 4 bytes", f.frame(f.GOAWAY, 0, 0, b"\0\0\0\0"), f.FRAME_SIZE_ERROR),
    ("PRIORITY on stream 0", f.frame(f.PRIORITY, 0, 0, b"\0" * 5), f.PROTOCOL_ERROR),
    ("CONTINUATION without HEADERS", f.frame(f.CONTINUATION, f.END_HEADERS, 1, b""), f.PROTOCOL_ERROR),
    (
        "header block interrupted",
        f.frame(f.HEADERS, 0, 3, _enc(REQUEST)) + f.ping(b"12345678"),
        f.PROTOCOL_ERROR,
    ),
    (
        "CONTINUATION on another stream",
        f.frame(f.HEADERS, 0, 3, _enc(REQUEST)) + f.frame(f.CONTINUATION, f.END_HEADERS, 5, b""),
        f.PROTOCOL_ERROR,
    ),
    ("undecodable header block", f.frame(f.HEADERS, f.END_HEADERS, 3, b"\xff\xff\xff\xff"), f.COMPRESSION_ERROR),
    ("HEADERS on a closed stream", f.headers(1, _enc(REQUEST), True, 16384), f.PROTOCOL_ERROR),
    ("padding longer than the DATA frame", f.frame(f.DATA, f.PADDED, 1, b"\x05abc"), f.PROTOCOL_ERROR),
    ("padded DATA frame of 0 bytes", f.frame(f.DATA, f.PADDED, 1, b""), f.FRAME_SIZE_ERROR),
]


@pytest.mark.parametrize(("what", "frame", "code"), CONNECTION_ERRORS, ids=[c[0] for c in CONNECTION_ERRORS])
def test_connection_errors(what: str, frame: bytes, code: int) -> None:
    raw = Raw()
    raw.request(1, end_stream=False)
    raw.send(f.frame(f.DATA, f.END_STREAM, 1, b""))
    raw.codec.send_headers(1, [(":status", "204")], end_stream=True)  # stream 1 is closed now
    raw.codec.data_to_send()
    events = raw.send(frame)
    assert events and isinstance(events[-1], ev.ConnectionTerminated), names(events)
    assert events[-1].error_code == code, events[-1]
    assert raw.sent_goaway() == code
    assert raw.codec.closed
    assert raw.send(f.ping(b"12345678")) == []  # nothing more is processed


STREAM_ERRORS = [
    ("uppercase header name", [*REQUEST, ("X-Upper", "1")], f.PROTOCOL_ERROR),
    ("connection header", [*REQUEST, ("connection", "keep-alive")], f.PROTOCOL_ERROR),
    ("te other than trailers", [*REQUEST, ("te", "gzip")], f.PROTOCOL_ERROR),
    ("no :path", REQUEST[:3], f.PROTOCOL_ERROR),
    ("empty :path", [*REQUEST[:3], (":path", "")], f.PROTOCOL_ERROR),
    ("unknown pseudo-header", [*REQUEST, (":custom", "1")], f.PROTOCOL_ERROR),
    ("pseudo-header after a regular one", [*REQUEST[:3], ("a", "1"), REQUEST[3]], f.PROTOCOL_ERROR),
    ("repeated pseudo-header", [*REQUEST, (":path", "/y")], f.PROTOCOL_ERROR),
    ("response pseudo-header in a request", [*REQUEST, (":status", "200")], f.PROTOCOL_ERROR),
    ("value with a newline", [*REQUEST, ("x", "a\nb")], f.PROTOCOL_ERROR),
    ("value with surrounding space", [*REQUEST, ("x", " a")], f.PROTOCOL_ERROR),
    ("authority and host differ", [*REQUEST, ("host", "other")], f.PROTOCOL_ERROR),
    ("bad content-length", [*REQUEST, ("content-length", "-1")], f.PROTOCOL_ERROR),
]


@pytest.mark.parametrize(("what", "headers", "code"), STREAM_ERRORS, ids=[c[0] for c in STREAM_ERRORS])
def test_malformed_requests_are_stream_errors(what: str, headers: list[tuple[str, str]], code: int) -> None:
    raw = Raw()
    assert raw.headers(1, headers, end_stream=True) == []
    assert raw.sent_rst(1) == code
    # the connection (and its HPACK state) is fine
    assert names(raw.request(3)) == ["RequestReceived", "StreamEnded"]


def test_frames_on_streams_in_the_wrong_state() -> None:
    raw = Raw()
    raw.request(1)  # END_STREAM: half-closed (remote)
    events = raw.send(f.frame(f.DATA, 0, 1, b"more"))
    assert events == [ev.StreamReset(1, f.STREAM_CLOSED, False)]
    assert raw.sent_rst(1) == f.STREAM_CLOSED
    # DATA before the request headers of an open stream cannot happen; DATA beyond content-length can
    raw.headers(3, [(":method", "POST"), *REQUEST[1:], ("content-length", "2")])
    assert raw.send(f.frame(f.DATA, 0, 3, b"abc")) == [ev.StreamReset(3, f.PROTOCOL_ERROR, False)]
    # WINDOW_UPDATE of 0 on a stream is a stream error; PRIORITY and unknown frame types are ignored
    raw.request(5, end_stream=False)
    assert raw.send(f.window_update(5, 0)) == [ev.StreamReset(5, f.PROTOCOL_ERROR, False)]
    raw.request(7, end_stream=False)
    assert raw.send(f.frame(f.PRIORITY, 0, 7, b"\0\0\0\1\x10") + f.frame(0x42, 0xFF, 7, b"?")) == []
    assert raw.send(f.frame(f.DATA, f.PADDED | f.END_STREAM, 7, b"\x02ok\0\0")) == [
        ev.DataReceived(7, memoryview(b"ok"), 5),
        ev.StreamEnded(7),
    ]


def test_preface_and_first_frame() -> None:
    server = H2Codec(client=False)
    server.initiate()
    events = server.receive(b"GET / HTTP/1.1\r\n\r\n")
    assert isinstance(events[-1], ev.ConnectionTerminated) and events[-1].error_code == f.PROTOCOL_ERROR
    server = H2Codec(client=False)
    events = server.receive(f.PREFACE[:5])
    assert events == []
    events = server.receive(f.PREFACE[5:] + f.ping(b"12345678"))
    assert isinstance(events[-1], ev.ConnectionTerminated)
    assert "SETTINGS" in events[-1].reason
    client = H2Codec(client=True)
    events = client.receive(f.settings_ack())
    assert isinstance(events[-1], ev.ConnectionTerminated)


def test_local_misuse_raises_and_changes_nothing() -> None:
    p = Pair()
    with pytest.raises(StreamClosedError):
        p.client.send_headers(3, REQUEST)  # not the next stream id
    with pytest.raises(CodecError):
        p.server.next_stream_id()
    with pytest.raises(StreamClosedError):
        p.server.send_headers(2, [(":status", "200")])
    with pytest.raises(CodecError, match="invalid header"):
        p.client.send_headers(1, [*REQUEST, ("x", "a\r\nb")])
    p.client.send_headers(1, REQUEST, end_stream=True)
    with pytest.raises(StreamClosedError, match="half-closed"):
        p.client.send_data(1, b"x")
    with pytest.raises(CodecError, match="frame size"):
        p.to_server()
        p.server.send_headers(1, [(":status", "200")])
        p.server.send_data(1, b"x" * (p.server.max_outbound_frame_size + 1))


# ---------------------------------------------------------------------------------------------- interop with h2


def h2_peer(client: bool, **settings: int) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client, header_encoding="utf-8"))
    conn.initiate_connection()
    if settings:
        conn.update_settings({getattr(h2.settings.SettingCodes, k): v for k, v in settings.items()})
    return conn


class Interop:
    """Our codec on one side, h2 on the other; `pump()` moves bytes until quiet, consuming all data on both."""

    def __init__(self, ours_is_client: bool, **h2_settings: int) -> None:
        self.ours = H2Codec(client=ours_is_client)
        self.ours.initiate()
        self.theirs = h2_peer(not ours_is_client, **h2_settings)
        self.our_events: list[ev.Event] = []
        self.their_events: list[h2.events.Event] = []
        self.pump()

    def pump(self, *, consume: bool = True) -> None:
        while True:
            moved = False
            data = self.ours.data_to_send()
            if data:
                moved = True
                for e in self.theirs.receive_data(data):
                    self.their_events.append(e)
                    if consume and isinstance(e, h2.events.DataReceived) and e.stream_id:
                        self.theirs.acknowledge_received_data(e.flow_controlled_length, e.stream_id)
            data = self.theirs.data_to_send()
            if data:
                moved = True
                events = self.ours.receive(data)
                for e in events:  # views of `data`: keep copies
                    self.our_events.append(
                        ev.DataReceived(e.stream_id, memoryview(bytes(e.data)), e.flow_controlled_length)
                        if isinstance(e, ev.DataReceived)
                        else e
                    )
                if consume:
                    ack_all(self.ours, events)
            if not moved:
                return

    def their_data(self, stream_id: int) -> bytes:
        return b"".join(
            e.data for e in self.their_events if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id
        )

    def send_all(self, stream_id: int, data: bytes, *, end_stream: bool = False) -> None:
        """Our side sends `data`, as fast as the windows allow."""
        view = memoryview(data)
        while view:
            window = self.ours.send_window(stream_id)
            if window <= 0:
                self.pump()
                continue
            n = min(window, self.ours.max_outbound_frame_size, len(view))
            self.ours.send_data(stream_id, view[:n], end_stream=end_stream and n == len(view))
            view = view[n:]
        self.pump()


def test_interop_our_client_h2_server() -> None:
    t = Interop(ours_is_client=True)
    sid = t.ours.next_stream_id()
    t.ours.send_headers(sid, [(":method", "POST"), *REQUEST[1:], ("cookie", "a=1"), ("authorization", "x")])
    body = os.urandom(300_000)  # several h2 default windows (65535): needs its WINDOW_UPDATEs
    t.send_all(sid, body, end_stream=True)
    requests = [e for e in t.their_events if isinstance(e, h2.events.RequestReceived)]
    assert requests and dict(requests[0].headers)[":path"] == "/x"
    assert t.their_data(sid) == body
    assert any(isinstance(e, h2.events.StreamEnded) for e in t.their_events)
    # h2 answers with padding, trailers and a body larger than our... frames it chooses
    t.theirs.send_headers(sid, [(":status", "200"), ("x-a", "1")])
    t.theirs.send_data(sid, b"p" * 1000, pad_length=20)
    answer = os.urandom(200_000)
    for i in range(0, len(answer), 16384):
        t.theirs.send_data(sid, answer[i : i + 16384])
        t.pump()
    t.theirs.send_headers(sid, [("x-trailer", "done")], end_stream=True)
    t.pump()
    assert names(t.our_events).count("ResponseReceived") == 1
    assert data_of(t.our_events, sid) == b"p" * 1000 + answer
    assert [e for e in t.our_events if isinstance(e, ev.TrailersReceived)] == [
        ev.TrailersReceived(sid, [("x-trailer", "done")])
    ]
    assert isinstance(t.our_events[-1], ev.StreamEnded)
    # ping both ways, then GOAWAY from h2
    t.ours.ping(b"ourping!")
    t.theirs.ping(b"h2ping!!")
    t.pump()
    assert ev.PingAcked(b"ourping!") in t.our_events and ev.PingReceived(b"h2ping!!") in t.our_events
    t.theirs.close_connection(error_code=h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, additional_data=b"bye")
    t.pump()
    assert t.our_events[-1] == ev.GoAway(f.ENHANCE_YOUR_CALM, sid, b"bye")


def test_interop_h2_client_our_server() -> None:
    t = Interop(ours_is_client=False)
    c = t.theirs
    c.send_headers(1, [(":method", "CONNECT"), (":authority", "ep:tunnel")])
    big = [(f"x-h{i}", "v" * 1000) for i in range(40)]  # 40 KB: h2 splits it into HEADERS + CONTINUATION
    c.send_headers(3, [*REQUEST, *big], end_stream=True)
    c.send_headers(5, [(":method", "POST"), *REQUEST[1:]])
    t.pump()
    requests = [e for e in t.our_events if isinstance(e, ev.RequestReceived)]
    assert [r.stream_id for r in requests] == [1, 3, 5]
    assert requests[1].headers == [*REQUEST, *big]
    # our large response headers need CONTINUATION for h2 (16 KiB frames)
    t.ours.send_headers(3, [(":status", "200"), *big], end_stream=True)
    t.ours.send_headers(1, [(":status", "200")])
    t.pump()
    responses = [e for e in t.their_events if isinstance(e, h2.events.ResponseReceived)]
    assert [r.stream_id for r in responses] == [3, 1]
    assert list(responses[0].headers) == [(":status", "200"), *big]
    # tunnel data both ways through h2's 64 KiB windows, interleaved with stream 5
    up = os.urandom(250_000)
    for i in range(0, len(up), 10_000):
        c.send_data(1, up[i : i + 10_000])
        c.send_data(5, b"5" * 100)
        t.pump()
    assert data_of(t.our_events, 1) == up
    down = os.urandom(500_000)
    t.send_all(1, down)
    assert t.their_data(1) == down
    # h2 changes its settings mid-stream: larger stream windows and frames apply to the open stream at once
    before = t.ours._streams[1].send_window
    c.update_settings(
        {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 20, h2.settings.SettingCodes.MAX_FRAME_SIZE: 1 << 17}
    )
    t.pump()
    assert t.ours._streams[1].send_window == before + (1 << 20) - 65535
    assert t.ours.max_outbound_frame_size == 1 << 17
    t.send_all(1, b"after settings" * 10000)
    assert t.their_data(1).endswith(b"after settings" * 10000)
    # resets both ways, half-close
    c.reset_stream(5, h2.errors.ErrorCodes.CANCEL)
    t.pump()
    assert ev.StreamReset(5, f.CANCEL, True) in t.our_events
    t.ours.reset_stream(1, f.CONNECT_ERROR)
    t.pump()
    resets = [e for e in t.their_events if isinstance(e, h2.events.StreamReset)]
    assert [(r.stream_id, r.error_code) for r in resets] == [(1, f.CONNECT_ERROR)]
    # our GOAWAY reaches h2
    t.ours.close(f.NO_ERROR, b"done")
    t.pump()
    assert isinstance(t.their_events[-1], h2.events.ConnectionTerminated)
    assert t.their_events[-1].additional_data == b"done" and t.their_events[-1].last_stream_id == 5


def test_interop_h2_violations_are_reported_by_h2() -> None:
    """A sanity check of our checks: h2 agrees that a peer exceeding its stream window is in error."""
    t = Interop(ours_is_client=True)
    t.ours.send_headers(1, [(":method", "POST"), *REQUEST[1:]])
    t.pump()
    t.ours._streams[1].send_window = 10**6  # cheat: pretend the window is larger
    t.ours._send_window = 10**6
    t.ours.send_data(1, b"x" * 16384)
    t.ours.send_data(1, b"x" * 16384)
    t.ours.send_data(1, b"x" * 16384)
    t.ours.send_data(1, b"x" * 16384)
    t.ours.send_data(1, b"x" * 16384)
    with pytest.raises(h2.exceptions.FlowControlError):
        t.theirs.receive_data(t.ours.data_to_send())


# ---------------------------------------------------------------------------------------------- fuzzing


def _transcript() -> bytes:
    """What a client sends in a typical session: preface, settings, requests, data, pings, resets."""
    p = Pair(client=SMALL)
    c = p.client
    c.send_headers(1, [(":method", "POST"), *REQUEST[1:], ("content-length", "5")])
    c.send_data(1, b"hello", end_stream=True)
    c.send_headers(3, [(":method", "CONNECT"), (":authority", "a:b")])
    c.send_data(3, b"x" * 16384)
    c.send_data(3, b"x" * 3616)
    c.ping(b"pingpong")
    c.reset_stream(3)
    c.send_headers(5, [*REQUEST, ("x-long", "y" * 300)], end_stream=True)
    c.acknowledge(0, 0)
    return f.PREFACE + f.settings({f.MAX_FRAME_SIZE: 16384}) + f.settings_ack() + c.data_to_send()


TRANSCRIPT = _transcript()

FRAME_TYPES = st.sampled_from([*range(10), 0x42])
raw_frames = st.builds(
    lambda t, flags, sid, payload: f.frame(t, flags, sid, payload),
    FRAME_TYPES,
    st.integers(0, 255),
    st.sampled_from([0, 1, 2, 3, 5, 7, 0x7FFFFFFF]) | st.integers(0, (1 << 31) - 1),
    st.binary(max_size=64),
)


def _feed(codec: H2Codec, chunks: list[bytes]) -> None:
    terminated = False
    for chunk in chunks:
        events = codec.receive(chunk)
        if terminated:
            assert events == []
        for e in events:
            assert isinstance(e, ev.Event)
            if isinstance(e, ev.ConnectionTerminated):
                assert e.error_code != f.INTERNAL_ERROR, e.reason
                assert e is events[-1]
                terminated = True
        out = codec.data_to_send()
        for t, _, _, _ in parse_frames(out[len(f.PREFACE) :] if out.startswith(f.PREFACE) else out):
            assert t in (f.SETTINGS, f.WINDOW_UPDATE, f.RST_STREAM, f.PING, f.GOAWAY, f.HEADERS, f.DATA)
        # the application consumes whatever arrived and answers what it can
        for e in events:
            if isinstance(e, ev.DataReceived):
                codec.acknowledge(e.stream_id, e.flow_controlled_length)
            elif isinstance(e, ev.RequestReceived) and codec.stream_state(e.stream_id) != "closed" and not codec.closed:
                codec.send_headers(e.stream_id, [(":status", "200")])


# ZTM_FUZZ_EXAMPLES=20000 for a long run
FUZZ = settings(
    max_examples=int(os.environ.get("ZTM_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@FUZZ
@given(st.lists(raw_frames, max_size=20), st.randoms())
def test_fuzz_random_frames_after_a_valid_start(frames: list[bytes], rnd: random.Random) -> None:
    codec = H2Codec(client=False, settings=SMALL)
    codec.initiate()
    wire = f.PREFACE + f.settings({}) + b"".join(frames)
    cuts = sorted(rnd.randrange(len(wire)) for _ in range(rnd.randrange(4)))
    _feed(codec, [wire[a:b] for a, b in zip([0, *cuts], [*cuts, len(wire)], strict=True)])


@FUZZ
@given(st.lists(raw_frames, max_size=20))
def test_fuzz_random_frames_to_a_client(frames: list[bytes]) -> None:
    codec = H2Codec(client=True, settings=SMALL)
    codec.initiate()
    codec.send_headers(1, REQUEST)
    codec.send_headers(3, [(":method", "CONNECT"), (":authority", "a:b")])
    _feed(codec, [f.settings({}) + b"".join(frames)])


@FUZZ
@given(st.data())
def test_fuzz_mutated_transcript(data: st.DataObject) -> None:
    wire = bytearray(TRANSCRIPT)
    for _ in range(data.draw(st.integers(1, 8))):
        kind = data.draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = data.draw(st.integers(0, len(wire) - 1))
        if kind == "flip":
            wire[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set":
            wire[pos] = data.draw(st.integers(0, 255))
        elif kind == "cut":
            del wire[pos:]
            if not wire:
                wire += b"\0"
        elif kind == "insert":
            wire[pos:pos] = data.draw(st.binary(min_size=1, max_size=12))
        else:
            del wire[pos : pos + data.draw(st.integers(1, 12))]
            if not wire:
                wire += b"\0"
    codec = H2Codec(client=False, settings=SMALL)
    codec.initiate()
    step = data.draw(st.sampled_from([1, 7, 64, 1000, len(wire)]))
    _feed(codec, [bytes(wire[i : i + step]) for i in range(0, len(wire), step)])


def test_transcript_is_valid() -> None:
    """The fuzz seed itself is accepted without any error."""
    codec = H2Codec(client=False, settings=SMALL)
    codec.initiate()
    events = codec.receive(TRANSCRIPT)
    assert "ConnectionTerminated" not in names(events)
    assert names(events).count("RequestReceived") == 3
