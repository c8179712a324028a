"""Fuzzing `ztm.e2e`: whatever bytes arrive, in whatever chunks, the layer raises `E2EError` and nothing else, and
chunking never changes what comes out; any sequence of records sealed and fed back in any chunking gives the same
records."""

from __future__ import annotations

import contextlib
import functools
import itertools

from e2e_mesh import Mesh
from hypothesis import given, settings
from hypothesis import strategies as st

from ztm.e2e import (
    AUTH,
    DATA,
    END,
    HELLO,
    HELLO_R,
    MAX_PAYLOAD,
    OK,
    OPEN,
    RECORD,
    REFUSE,
    RESUME,
    Channel,
    Credentials,
    E2EError,
    FrameReader,
    Initiator,
    Responder,
    encode,
    parse_resume,
)

FUZZ = settings(max_examples=300, deadline=None)


@functools.cache
def _creds() -> tuple[Credentials, Credentials]:
    mesh = Mesh()
    return mesh.creds("alice"), mesh.creds("bob")


@functools.cache
def _real_frames() -> tuple[bytes, bytes, bytes]:
    alice, bob = _creds()
    ini = Initiator(alice, bob.ep_id)
    hello = ini.hello()
    hello_r = Responder(bob).on_hello(hello)
    return hello, hello_r, ini.on_hello_r(hello_r)


def _chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


# handshake frames: a valid header with a random body is more interesting than random bytes alone
_types = st.sampled_from([HELLO, HELLO_R, AUTH, RESUME, 5, RECORD, 7, 0, 8, 255])
_framed = st.builds(lambda t, body: bytes([t]) + len(body).to_bytes(3, "big") + body, _types, st.binary(max_size=300))
_mutated = st.builds(
    lambda frame, i, bit: (
        frame[: i % len(frame)] + bytes([frame[i % len(frame)] ^ (1 << bit)]) + frame[i % len(frame) + 1 :]
    ),
    st.sampled_from([0, 1, 2]).map(lambda i: _real_frames()[i]),
    st.integers(0, 10**6),
    st.integers(0, 7),
)
_inputs = st.binary(max_size=400) | _framed | _mutated


def _read_all(chunks: list[bytes]) -> tuple[list[tuple[int, bytes]], str | None, bytes]:
    reader = FrameReader()
    out: list[tuple[int, bytes]] = []
    for chunk in chunks:
        reader.feed(chunk)
        try:
            while (got := reader.next()) is not None:
                out.append(got)
        except E2EError as e:
            return out, e.reason, b""
    return out, None, reader.take_rest()


@FUZZ
@given(st.lists(_inputs, max_size=4).map(b"".join), st.lists(st.integers(0, 2000), max_size=8))
def test_frame_reader_any_bytes_any_chunking(data: bytes, cuts: list[int]) -> None:
    whole = _read_all([data])
    assert _read_all(_chunks(data, cuts)) == whole
    assert whole[1] in (None, "malformed")


@FUZZ
@given(_inputs)
def test_responder_on_hello_only_e2e_errors(frame: bytes) -> None:
    with contextlib.suppress(E2EError):
        Responder(_creds()[1]).on_hello(frame)


@FUZZ
@given(_inputs)
def test_responder_on_auth_only_e2e_errors(frame: bytes) -> None:
    alice, bob = _creds()
    resp = Responder(bob)
    resp.on_hello(Initiator(alice, bob.ep_id).hello())
    try:
        resp.on_auth(frame)
    except E2EError:
        pass
    else:
        raise AssertionError("an AUTH made without the DH secret was accepted")


@FUZZ
@given(_inputs)
def test_initiator_on_hello_r_only_e2e_errors(frame: bytes) -> None:
    alice, bob = _creds()
    ini = Initiator(alice, bob.ep_id)
    ini.hello()
    try:
        ini.on_hello_r(frame)
    except E2EError:
        assert ini.session is None
    else:
        raise AssertionError("a HELLO_R made for another HELLO was accepted")


@FUZZ
@given(_inputs | st.binary(min_size=24, max_size=24).map(lambda b: encode(RESUME, b)))
def test_parse_resume_only_e2e_errors(frame: bytes) -> None:
    try:
        session_id, n = parse_resume(frame)
    except E2EError:
        return
    assert len(session_id) == 16 and 0 < n < 2**64


@FUZZ
@given(st.lists(_inputs, max_size=4).map(b"".join), st.lists(st.integers(0, 2000), max_size=8))
def test_channel_feed_any_bytes_only_e2e_errors(data: bytes, cuts: list[int]) -> None:
    key = bytes(32)
    chan = Channel(key, key)
    try:
        for chunk in _chunks(data, cuts):
            chan.feed(chunk)
    except E2EError:
        try:
            chan.feed(b"")
        except E2EError:
            return
        raise AssertionError("a failed channel accepted more input") from None


_payloads = st.lists(
    st.tuples(
        st.sampled_from([DATA, DATA, DATA, OPEN, OK, REFUSE]),
        st.binary(max_size=300) | st.sampled_from([b"", bytes(MAX_PAYLOAD)]),
    ),
    max_size=12,
)


@FUZZ
@given(_payloads, st.booleans(), st.lists(st.integers(0, 10**6), max_size=10), st.integers(1, 4))
def test_round_trip_any_chunking(
    records: list[tuple[int, bytes]], end: bool, cuts: list[int], key_update_after: int
) -> None:
    k1, k2 = bytes(range(32)), bytes(range(1, 33))
    sender = Channel(k1, k2, key_update_after=key_update_after)
    receiver = Channel(k2, k1, key_update_after=key_update_after)
    sent = records + ([(END, b"")] if end else [])
    wire = b"".join(sender.seal(inner, payload) for inner, payload in sent)
    got: list[tuple[int, bytes]] = []
    for i, chunk in enumerate(_chunks(wire, cuts)):
        got += receiver.feed((bytes, bytearray, memoryview)[i % 3](chunk))
    assert got == sent
    assert receiver.pending == 0 and receiver.ended == end
    assert receiver.records_received == sender.records_sent


@FUZZ
@given(_payloads, st.lists(st.integers(0, 10**6), min_size=1, max_size=3), st.integers(0, 7))
def test_any_flipped_bit_is_refused(records: list[tuple[int, bytes]], where: list[int], bit: int) -> None:
    k = bytes(range(32))
    sender, receiver = Channel(k, k, key_update_after=2), Channel(k, k, key_update_after=2)
    wire = bytearray(b"".join(sender.seal(inner, payload) for inner, payload in [*records, (END, b"")]))
    for w in {w % len(wire) for w in where}:
        wire[w] ^= 1 << bit
    try:
        got = receiver.feed(bytes(wire))
    except E2EError:
        return
    # a flip in a length field can leave the end waiting for bytes that never come: never a wrong record
    assert receiver.pending > 0 and got == [*records, (END, b"")][: len(got)]
