"""The CLI's WebSocket codec (`ztm.cli.wscodec`): handshake, masking, framing, and what it refuses."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztm.cli import wscodec as wc


def server_frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0, mask: bytes | None = None) -> bytes:
    """A frame as a server sends it (unmasked unless `mask` is given, which servers must not do)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    m = 0x80 if mask is not None else 0
    if n < 126:
        head = struct.pack("!BB", b0, m | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, m | 126, n)
    else:
        head = struct.pack("!BBQ", b0, m | 127, n)
    if mask is None:
        return head + payload
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def unmask_client_frame(frame: bytes) -> tuple[int, bytes]:
    """Decode one client frame the way a server does: (opcode, payload)."""
    assert frame[0] & 0x80, "client frames here are final"
    assert frame[1] & 0x80, "client frames must be masked"
    n, pos = frame[1] & 0x7F, 2
    if n == 126:
        n, pos = struct.unpack_from("!H", frame, 2)[0], 4
    elif n == 127:
        n, pos = struct.unpack_from("!Q", frame, 2)[0], 10
    mask, body = frame[pos : pos + 4], frame[pos + 4 :]
    assert len(body) == n
    return frame[0] & 0x0F, bytes(b ^ mask[i % 4] for i, b in enumerate(body))


def test_accept_matches_the_rfc_example() -> None:
    assert wc.accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_handshake_request_and_answer() -> None:
    key = wc.new_key()
    request = wc.handshake_request("127.0.0.1:7777", "/api/x", key, {"Authorization": "Bearer t"})
    assert request.startswith(b"GET /api/x HTTP/1.1\r\nHost: 127.0.0.1:7777\r\n") and request.endswith(b"\r\n\r\n")
    assert f"Sec-WebSocket-Key: {key}".encode() in request and b"Authorization: Bearer t" in request
    with pytest.raises(ValueError, match="line break"):
        wc.handshake_request("h", "/", key, {"X": "a\r\nInjected: 1"})

    head = (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {wc.accept_for(key)}\r\n\r\n"
    ).encode()
    assert wc.parse_answer(head[:-1]) is None  # not complete yet
    parsed = wc.parse_answer(head + b"\x81\x00")
    assert parsed is not None
    answer, used = parsed
    assert answer.status == 101 and used == len(head)
    wc.check_accept(answer, key)
    with pytest.raises(wc.WsError, match="does not match"):
        wc.check_accept(answer, wc.new_key())


@pytest.mark.parametrize(
    ("head", "reason"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP status line"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "not an HTTP status line"),
        (b"HTTP/1.1 101 OK\r\nno colon here\r\n\r\n", "malformed header"),
    ],
)
def test_malformed_answers_are_refused(head: bytes, reason: str) -> None:
    with pytest.raises(wc.WsError, match=reason):
        wc.parse_answer(head)


def test_an_endless_answer_head_is_refused() -> None:
    with pytest.raises(wc.WsError, match="over"):
        wc.parse_answer(b"HTTP/1.1 101 OK\r\n" + b"X: y\r\n" * 4000)


@given(st.sampled_from([wc.TEXT, wc.BINARY]), st.binary(max_size=70_000), st.binary(min_size=4, max_size=4))
def test_client_frames_are_masked_and_decode_back(opcode: int, payload: bytes, mask: bytes) -> None:
    assert unmask_client_frame(wc.encode(opcode, payload, mask)) == (opcode, payload)


def test_control_frames_are_at_most_125_bytes() -> None:
    wc.encode(wc.PING, b"x" * 125)
    with pytest.raises(ValueError, match="125"):
        wc.encode(wc.PING, b"x" * 126)


@given(
    st.lists(st.tuples(st.sampled_from([wc.TEXT, wc.BINARY]), st.binary(max_size=300)), max_size=8),
    st.integers(min_value=1, max_value=64),
    st.data(),
)
def test_messages_split_anywhere_and_fragmented_come_back_whole(
    messages: list[tuple[int, bytes]], step: int, data: st.DataObject
) -> None:
    wire = b""
    for opcode, payload in messages:
        cut = data.draw(st.integers(min_value=0, max_value=len(payload)))
        if cut and data.draw(st.booleans()):  # two fragments with a ping in between
            wire += server_frame(opcode, payload[:cut], fin=False)
            wire += server_frame(wc.PING, b"p")
            wire += server_frame(wc.CONT, payload[cut:])
        else:
            wire += server_frame(opcode, payload)
    decoder = wc.Decoder(max_size=1 << 20)
    got: list[wc.Message] = []
    for i in range(0, len(wire), step):
        got += decoder.feed(wire[i : i + step])
    assert [(m.opcode, m.data) for m in got if m.opcode != wc.PING] == messages


@pytest.mark.parametrize(
    ("wire", "reason"),
    [
        (server_frame(wc.TEXT, b"hi", mask=b"abcd"), "masked"),
        (server_frame(wc.TEXT, b"hi", rsv=0x40), "reserved bits"),
        (server_frame(0x3, b"hi"), "unknown opcode"),
        (server_frame(wc.PING, b"x" * 126), "control frame"),
        (server_frame(wc.PING, b"x", fin=False), "control frame"),
        (server_frame(wc.CONT, b"x"), "continuation"),
        (server_frame(wc.TEXT, b"a", fin=False) + server_frame(wc.TEXT, b"b"), "before the fragmented one ended"),
        (server_frame(wc.BINARY, b"x" * 101), "over 100 bytes"),
        (server_frame(wc.BINARY, b"x" * 60, fin=False) + server_frame(wc.CONT, b"x" * 60), "over 100 bytes"),
        (b"\x82\x7f" + struct.pack("!Q", 1 << 63), "top bit"),
    ],
)
def test_protocol_violations_are_refused(wire: bytes, reason: str) -> None:
    with pytest.raises(wc.WsError, match=reason):
        wc.Decoder(max_size=100).feed(wire)


@given(st.binary(max_size=400))
def test_any_bytes_give_messages_or_a_wserror(wire: bytes) -> None:
    decoder = wc.Decoder(max_size=256)
    try:
        for message in decoder.feed(wire):
            assert message.opcode in (wc.TEXT, wc.BINARY, wc.CLOSE, wc.PING, wc.PONG)
    except wc.WsError as exc:
        assert str(exc) and "\n" not in str(exc)
