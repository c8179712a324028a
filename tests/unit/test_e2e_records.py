"""`ztm.e2e` streams and records: resume with stream numbers, the replay window, tampered / reordered / dropped /
replayed / truncated records, END, key update, both directions at once, session lifetime."""

from __future__ import annotations

import os
import time
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from e2e_mesh import Mesh, handshake

from ztm.e2e import (
    DATA,
    END,
    KEY_UPDATE,
    MAX_PAYLOAD,
    OK,
    OPEN,
    OVERHEAD,
    REFUSE,
    RESUME,
    SESSION_MAX_AGE,
    Channel,
    E2EError,
    FrameReader,
    Session,
    error_frame,
    frames,
    parse_resume,
    resume_frame,
    unknown_frame,
)
from ztm.e2e.session import MAX_STREAMS, REPLAY_WINDOW


def _pair(key_update_after: int | None = None, stream: int = 0) -> tuple[Channel, Channel]:
    mesh = Mesh()
    s_a, s_b = handshake(mesh.creds("alice"), mesh.creds("bob"))
    kw = {} if key_update_after is None else {"key_update_after": key_update_after}
    return s_a.channel(stream, **kw), s_b.channel(stream, **kw)


def _sessions() -> tuple[Session, Session]:
    mesh = Mesh()
    return handshake(mesh.creds("alice"), mesh.creds("bob"))


def test_resume_with_stream_numbers() -> None:
    s_a, s_b = _sessions()
    for _ in range(3):
        n = s_a.next_stream()
        frame = resume_frame(s_a.id, n)
        reader = FrameReader()
        ca = s_a.channel(n)
        reader.feed(frame + ca.seal(OPEN, b'{"app":"tunnel","service":"tcp/x"}'))
        got = reader.next()
        assert got is not None and got[0] == RESUME
        sid, m = parse_resume(got[1])
        assert sid == s_b.id and m == n
        s_b.admit(m)
        cb = s_b.channel(m)
        assert cb.feed(reader.take_rest()) == [(OPEN, b'{"app":"tunnel","service":"tcp/x"}')]
        assert ca.feed(cb.seal(OK)) == [(OK, b"")]
    assert n == 3
    # a channel of another stream number does not open stream 3's records
    with pytest.raises(E2EError) as e:
        s_b.channel(2).feed(s_a.channel(3).seal(DATA, b"x"))
    assert e.value.reason == "integrity"


def test_replayed_stream_number_refused() -> None:
    _, s_b = _sessions()
    s_b.admit(5)
    for n in (5, 0):
        with pytest.raises(E2EError) as e:
            s_b.admit(n)
        assert e.value.reason == "replay"
    s_b.admit(3)  # late but new, within the window
    s_b.admit(4)
    with pytest.raises(E2EError):
        s_b.admit(3)
    s_b.admit(5 + REPLAY_WINDOW)
    with pytest.raises(E2EError) as e:  # below the window now, never seen: refused all the same
        s_b.admit(2)
    assert e.value.reason == "replay"
    s_b.admit(6)  # the lowest number still inside the window
    with pytest.raises(E2EError):
        s_b.admit(6)
    with pytest.raises(E2EError):
        s_b.admit(MAX_STREAMS + 1)


def test_initiator_runs_out_of_streams() -> None:
    s_a, _ = _sessions()
    s_a._last = MAX_STREAMS - 1
    assert s_a.next_stream() == MAX_STREAMS
    assert not s_a.usable(time.monotonic(), s_a.peer.not_after - timedelta(minutes=1))
    with pytest.raises(E2EError) as e:
        s_a.next_stream()
    assert e.value.reason == "expired"


def test_session_lifetime() -> None:
    s_a, s_b = _sessions()
    now = s_a.peer.not_after - timedelta(hours=1)
    mono = time.monotonic()
    assert s_a.usable(mono, now) and s_b.usable(mono, now)
    assert not s_a.usable(s_a.created + SESSION_MAX_AGE + 0.001, now)  # float: a millisecond past
    assert not s_a.usable(mono, s_a.peer.not_after)  # the peer's certificate ends
    assert not s_b.usable(mono, s_b.own_not_after + timedelta(seconds=1))  # this side's own ends
    ca = s_a.channel(1)
    s_a.close()
    assert not s_a.usable(mono, now)
    with pytest.raises(E2EError) as e:
        s_a.channel(2)
    assert e.value.reason == "unknown_session"
    assert s_b.channel(1).feed(ca.seal(DATA, b"still")) == [(DATA, b"still")]  # open streams go on


def test_flipped_bit_in_record_refused_and_channel_stays_failed() -> None:
    ca, cb = _pair()
    rec = ca.seal(DATA, b"hello")
    for i in range(len(rec)):  # every bit of the header, the sealed inner type, payload and tag
        for bit in range(8):
            _, fresh = _pair()
            bad = bytearray(rec)
            bad[i] ^= 1 << bit
            try:
                got = fresh.feed(bytes(bad))
            except E2EError as err:
                assert err.reason in ("integrity", "malformed", "refused") and (i < 4 or err.reason == "integrity")
            else:  # a longer length in the header: the record waits for bytes that never come
                assert got == [] and i in (1, 2, 3)
    bad = bytearray(rec)
    bad[7] ^= 0x80
    with pytest.raises(E2EError) as e:
        cb.feed(bytes(bad))
    assert e.value.reason == "integrity"
    with pytest.raises(E2EError) as e:  # failed for good, even for a good record
        cb.feed(rec)
    assert e.value.reason == "integrity"


@pytest.mark.parametrize("attack", ["reorder", "drop", "replay"])
def test_reordered_dropped_replayed_record_refused(attack: str) -> None:
    ca, cb = _pair()
    r0, r1, r2 = (ca.seal(DATA, bytes([i])) for i in range(3))
    first, *rest = {"reorder": [r0, r2, r1], "drop": [r0, r2], "replay": [r0, r0, r1]}[attack]
    assert cb.feed(first) == [(DATA, b"\x00")]
    with pytest.raises(E2EError) as e:
        cb.feed(b"".join(rest))
    assert e.value.reason == "integrity"


def test_reorder_first_record_refused() -> None:
    ca, cb = _pair()
    ca.seal(DATA, b"a")
    with pytest.raises(E2EError) as e:
        cb.feed(ca.seal(DATA, b"b"))
    assert e.value.reason == "integrity"


def test_truncated_record_is_held_and_reported_pending() -> None:
    ca, cb = _pair()
    rec = ca.seal(DATA, b"0123456789")
    assert cb.feed(rec[:-3]) == [] and cb.pending == len(rec) - 3
    assert cb.feed(rec[-3:]) == [(DATA, b"0123456789")] and cb.pending == 0
    # a cut stream: END is authenticated, so a stream whose bytes stop without it is known to be truncated
    end = ca.seal(END)
    assert cb.feed(end[:5]) == [] and not cb.ended and cb.pending == 5
    assert cb.feed(end[5:]) == [(END, b"")] and cb.ended


def test_data_after_end_refused() -> None:
    ca, cb = _pair()
    with pytest.raises(E2EError) as e:
        cb.feed(ca.seal(END) + ca.seal(DATA, b"more"))
    assert e.value.reason == "malformed"


def test_unknown_inner_type_refused() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    key = bytes(32)
    header = (6 << 24 | 18).to_bytes(4, "big")
    frame = header + AESGCM(key).encrypt(bytes(12), b"\x09x", header)
    with pytest.raises(E2EError) as e:
        Channel(key, key).feed(frame)
    assert e.value.reason == "malformed"
    with pytest.raises(ValueError):
        Channel(key, key).seal(9, b"")
    with pytest.raises(ValueError):
        Channel(key, key).seal(DATA, bytes(MAX_PAYLOAD + 1))


def test_inner_types_and_sizes() -> None:
    ca, cb = _pair()
    for inner, payload in ((OPEN, b"{}"), (OK, b""), (REFUSE, b'{"error":"no"}'), (DATA, bytes(MAX_PAYLOAD))):
        rec = ca.seal(inner, payload)
        assert len(rec) == len(payload) + OVERHEAD
        assert cb.feed(rec) == [(inner, payload)]
    big = bytes(range(256)) * 1000
    sealed = ca.seal_data(big)
    assert len(sealed) == len(big) + 4 * OVERHEAD  # 256000 bytes: 4 records
    assert b"".join(p for _, p in cb.feed(sealed)) == big
    assert ca.records_sent == cb.records_received == 8


def test_key_update_across_many_records() -> None:
    ca, cb = _pair(key_update_after=3)
    sent = [bytes([i]) * (i + 1) for i in range(20)]
    wire = b"".join(ca.seal(DATA, p) for p in sent)
    assert ca.records_sent == 20 + 6  # a KEY_UPDATE after every 3 records
    got = []
    for i in range(0, len(wire), 7):
        got += cb.feed(wire[i : i + 7])
    assert got == [(DATA, p) for p in sent]
    assert all(t != KEY_UPDATE for t, _ in got)
    # the keys really changed: the 4th DATA record does not open under the first key
    ca2, cb2 = _pair(key_update_after=3)
    recs = [ca2.seal(DATA, b"x") for _ in range(5)]
    assert len(recs[3]) == OVERHEAD + (1 + OVERHEAD)  # KEY_UPDATE then the 4th DATA
    assert cb2.feed(b"".join(recs[:3])) == [(DATA, b"x")] * 3
    with pytest.raises(E2EError) as e:
        cb2.feed(recs[3][OVERHEAD:])  # without its KEY_UPDATE
    assert e.value.reason == "integrity"
    # a sender that skips the KEY_UPDATE: the receiver refuses the record past the limit
    k = bytes(32)
    cheat = Channel(k, k, key_update_after=4)
    honest = Channel(k, k, key_update_after=3)
    with pytest.raises(E2EError) as e:
        honest.feed(b"".join(cheat.seal(DATA, b"x") for _ in range(4)))
    assert e.value.reason == "integrity"


def test_both_directions_at_once_interleaved() -> None:
    ca, cb = _pair(key_update_after=5, stream=7)
    a_out, b_out = [], []
    for i in range(40):
        a_out.append(ca.seal(DATA, b"a%d" % i))
        b_out.append(cb.seal(DATA, b"b%d" % i))
        if i % 3 == 2:
            assert [p for _, p in cb.feed(b"".join(a_out))] == [b"a%d" % j for j in range(i - 2, i + 1)]
            assert [p for _, p in ca.feed(b"".join(b_out))] == [b"b%d" % j for j in range(i - 2, i + 1)]
            a_out.clear()
            b_out.clear()


def test_error_and_unknown_frames_on_a_channel() -> None:
    ca, cb = _pair()
    with pytest.raises(E2EError) as e:
        ca.feed(unknown_frame())
    assert e.value.reason == "unknown_session"
    ca, cb = _pair()
    frame = error_frame("refused: not allowed")
    assert ca.feed(frame[:6]) == []
    with pytest.raises(E2EError) as e:
        ca.feed(frame[6:])
    assert e.value.reason == "refused" and "not allowed" in e.value.message
    ca, cb = _pair()
    cb.feed(ca.seal(DATA, b"x"))
    with pytest.raises(E2EError) as e:  # once records flowed, an unauthenticated frame is not believed
        cb.feed(error_frame("stop"))
    assert e.value.reason == "malformed"


def test_resume_frame_rules() -> None:
    sid = bytes(range(16))
    assert parse_resume(resume_frame(sid, 2**64 - 1)) == (sid, 2**64 - 1)
    for bad in (
        resume_frame(sid, 1)[:-1],
        resume_frame(sid, 1) + b"\\0",
        (4 << 24 | 24).to_bytes(4, "big") + sid + bytes(8),
    ):
        with pytest.raises(E2EError) as e:
            parse_resume(bad)
        assert e.value.reason == "malformed"
    with pytest.raises(ValueError):
        resume_frame(sid, 0)


def test_key_update_one_record_per_feed() -> None:
    """Each record fed on its own (the fast path), KEY_UPDATE records included."""
    ca, cb = _pair(key_update_after=2)
    wire = b"".join(ca.seal(DATA, b"%d" % i) for i in range(9)) + ca.seal(END)
    got = []
    pos = 0
    while pos < len(wire):
        end = pos + 4 + int.from_bytes(wire[pos + 1 : pos + 4], "big")
        got += cb.feed(wire[pos:end])
        pos = end
    assert got == [(DATA, b"%d" % i) for i in range(9)] + [(END, b"")]
    assert cb.records_received == ca.records_sent == 10 + 4 and cb.ended


def test_open_data_opens_only_one_whole_small_data_record_and_changes_nothing_otherwise() -> None:
    """`Channel.open_data` (the direct channel's per-message fast path) takes one whole DATA record that
    authenticates; anything else is None with the channel untouched, so `feed` then refuses it as before."""
    a, b = _pair()
    assert b.open_data(a.seal(DATA, b"x")) == b"x"
    end = a.seal(END)
    assert b.open_data(end) is None and b.records_received == 1  # not DATA: `feed`'s
    assert b.feed(end) == [(END, b"")]
    a, b = _pair()
    bad = bytearray(a.seal(DATA, b"y"))
    bad[-1] ^= 1
    assert b.open_data(bytes(bad)) is None
    with pytest.raises(E2EError) as failed:
        b.feed(bytes(bad))
    assert failed.value.reason == "integrity"
    a, b = _pair()
    payload = b"\x00" + os.urandom(MAX_PAYLOAD + 1)  # over the limit, sealed with the right key and counter
    header = (frames.RECORD << 24 | (len(payload) + frames.TAG)).to_bytes(4, "big")
    oversized = header + AESGCM(a._send_key).encrypt(bytes(12), payload, header)
    assert b.open_data(oversized) is None and b.records_received == 0
    with pytest.raises(E2EError) as failed:
        b.feed(oversized)
    assert failed.value.reason == "malformed"
