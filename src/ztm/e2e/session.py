"""An end-to-end session between two endpoints: its secret, its peer, its lifetime and its stream numbers.

A `Session` is what a handshake leaves: the session secret, the verified peer, and the bookkeeping for the streams
opened on it. The initiator numbers streams 1, 2, ... (`next_stream`); the responder admits each number once
(`admit`: a sliding window of `REPLAY_WINDOW` numbers, so a replayed RESUME is refused). `channel(n)` derives the
two keys of stream n and returns this side's `Channel`. `close()` drops the secret (forward secrecy: after it,
nothing on this side can derive keys of the session's streams; the channels already made keep theirs until they end).
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING

from ztm.e2e.errors import E2EError
from ztm.e2e.record import KEY_UPDATE_AFTER, Channel, expand

if TYPE_CHECKING:
    from ztm.e2e.handshake import Peer

SESSION_MAX_AGE = 3600.0
"""Seconds a session takes NEW streams for (streams already open go on until they end)."""
REPLAY_WINDOW = 4096
"""How far below the highest stream number seen a responder still admits a number it has not seen."""
MAX_STREAMS = 2**32
"""Streams per session; the initiator then makes a new handshake."""

SUITE = "X25519-ECDSA-P256-AES256GCM"
_WINDOW_MASK = (1 << REPLAY_WINDOW) - 1


class Session:
    """One side of an end-to-end session (made by `Initiator.on_hello_r` or `Responder.on_auth`)."""

    suite: str = SUITE

    def __init__(
        self,
        session_id: bytes,
        secret: bytes,
        *,
        peer: Peer,
        initiator: bool,
        own_not_after: datetime,
        created: float | None = None,
    ) -> None:
        self.id = session_id
        self.peer = peer
        self.initiator = initiator
        self.own_not_after = own_not_after
        self.created = time.monotonic() if created is None else created
        self._secret: bytes | None = secret
        self._last = 0  # initiator: the last stream number handed out (0: the handshake stream)
        self._highest = 0  # responder: the highest stream number admitted
        self._seen = 1  # responder: bit i set = stream (highest - i) admitted; stream 0 is the handshake's

    def __repr__(self) -> str:
        side = "initiator" if self.initiator else "responder"
        return f"<Session {self.id.hex()} {side} peer={self.peer.ep_id}>"

    def usable(self, now_mono: float, now: datetime) -> bool:
        """Whether a NEW stream may use this session: younger than `SESSION_MAX_AGE`, both certificates still
        valid at `now`, stream numbers left, not closed."""
        return (
            self._secret is not None
            and now_mono - self.created < SESSION_MAX_AGE
            and now < self.peer.not_after
            and now < self.own_not_after
            and self._last < MAX_STREAMS
        )

    def next_stream(self) -> int:
        """Initiator: the number of the next stream (1, 2, ...); `E2EError("expired")` once all are used."""
        if not self.initiator:
            raise RuntimeError("only the initiator of a session numbers its streams")
        if self._last >= MAX_STREAMS:
            raise E2EError("expired", "the end-to-end session has used all its stream numbers: start a new one")
        self._last += 1
        return self._last

    def admit(self, stream_no: int) -> None:
        """Responder: accept stream number `stream_no` once; `E2EError("replay")` for a number seen before or too
        far below the highest seen."""
        if self.initiator:
            raise RuntimeError("only the responder of a session admits stream numbers")
        if not 0 < stream_no <= MAX_STREAMS:
            raise E2EError("replay", f"end-to-end stream number {stream_no} is out of range: refused")
        highest = self._highest
        if stream_no > highest:
            self._seen = ((self._seen << (stream_no - highest)) | 1) & _WINDOW_MASK
            self._highest = stream_no
            return
        back = highest - stream_no
        if back >= REPLAY_WINDOW or (self._seen >> back) & 1:
            raise E2EError("replay", f"end-to-end stream {stream_no} was already used (a replay?): refused")
        self._seen |= 1 << back

    def channel(self, stream_no: int, *, key_update_after: int = KEY_UPDATE_AFTER) -> Channel:
        """This side's record layer for stream `stream_no` (0: the handshake stream)."""
        secret = self._secret
        if secret is None:
            raise E2EError("unknown_session", "the end-to-end session was closed: start a new one")
        if not 0 <= stream_no < 2**64:
            raise ValueError("stream number out of range")
        n = stream_no.to_bytes(8, "big")
        i2r = expand(secret, b"ztm-e2e v1 stream i2r" + n)
        r2i = expand(secret, b"ztm-e2e v1 stream r2i" + n)
        send, recv = (i2r, r2i) if self.initiator else (r2i, i2r)
        return Channel(send, recv, key_update_after=key_update_after)

    def close(self) -> None:
        """Drop the session secret: no new stream can be keyed from it (streams already open go on)."""
        self._secret = None

    @property
    def closed(self) -> bool:
        return self._secret is None
