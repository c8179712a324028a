"""Early data: the bytes an initiator's app has before the peer answered the opening (PROTOCOL.md section 11).

A tunnel entrance's client usually speaks first (a request, a TLS ClientHello): waiting for the exit's OK before
reading it costs a second trip entrance -> hub -> exit. `EarlyData` holds those bytes (at most `LIMIT`) while the
opening runs; `ztm.agent.e2e.MeshE2E.open` seals them as DATA records right after the OPEN record (in the first
flight when they are already here, as they arrive otherwise), with the stream's i2r key and the counters that
follow the OPEN. Reads from the peer still wait for its OK or REFUSE.

The bytes stay here until the opening ended, so an opening that must start again (an UNKNOWN session: a full
handshake and the same records on the new session's stream 0; or the next exit after a refusal) sends them again,
in order, byte-exact. Only after a refusal the peer authenticated (its REFUSE record: it dropped them unread) may they
go to another peer; after any other failure of an attempt that sent some (a timeout, a cut stream) the peer's app
may have taken them, so `maybe_delivered` stops a second delivery elsewhere: early data is sent at most once. Once
the opening succeeded the app takes over (`done`: what did not fit the outer window yet) and the copy goes.

`EarlyReader` fills one from a client socket: it takes over the transport from the `asyncio.StreamReader` (what
that reader held comes along), pauses reading at `LIMIT`, and remembers EOF and a lost connection for the splice
that follows (`ztm.apps.tunnel.pipe.splice_socket`). No task: bytes move in the transport's callbacks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from ztm.e2e.frames import MAX_PAYLOAD
from ztm.e2e.record import DATA, OVERHEAD

LIMIT = 64 * 1024
"""Bytes of early data an initiator holds and sends before the answer; the rest waits for the peer's OK."""


class Sink(Protocol):
    """Where sealed early records go while the opening waits for its answer (the outer stream)."""

    def send_capacity(self) -> int: ...

    def write_nowait(self, data: bytes | memoryview) -> int: ...


class EarlyData:
    """The initiator app's bytes before the answer (see the module docstring)."""

    __slots__ = ("_buf", "_sent", "_sink", "eof", "lost", "maybe_delivered", "refused", "sent_total")

    def __init__(self, data: bytes = b"") -> None:
        if len(data) > LIMIT:
            raise ValueError(f"early data holds at most {LIMIT} bytes, not {len(data)}: feed() takes what fits")
        self._buf = bytearray(data)
        self._sent = 0
        """Bytes of `_buf` sealed on the current attempt."""
        self._sink: tuple[Sink, Callable[[int, bytes | memoryview], bytes]] | None = None
        self.eof = False
        """The client ended its side (the splice sends the END after the answer)."""
        self.lost = False
        """The client's connection failed (an error, not a clean end) before the answer."""
        self.sent_total = 0
        """Bytes sealed on the attempt that succeeded (set when it ends)."""
        self.refused = False
        """The last attempt ended with the peer's authenticated REFUSE: it dropped the bytes unread."""
        self.maybe_delivered = False
        """An attempt that sent bytes failed without the peer's REFUSE (a timeout, a cut stream): its app may have
        accepted and taken them, so they must not go to another peer (at most once)."""

    def __len__(self) -> int:
        return len(self._buf)

    @property
    def sent(self) -> int:
        """Bytes sealed so far on the current attempt."""
        return self._sent

    @property
    def full(self) -> bool:
        return len(self._buf) >= LIMIT

    def feed(self, data: bytes) -> int:
        """Hold (and, while an attempt is attached, send) up to the room left; the number of bytes taken."""
        take = min(len(data), LIMIT - len(self._buf))
        if take:
            self._buf += data[:take]
            self._flush()
        return take

    def first_records(self, seal_data: Callable[[bytearray], bytes]) -> bytes:
        """DATA records of everything held, sealed by `seal_data` (a new attempt's `Channel.seal_data`), for the
        first flight; nothing when nothing is held."""
        self._sent = len(self._buf)
        return seal_data(self._buf) if self._buf else b""

    def attach(self, sink: Sink, seal: Callable[[int, bytes | memoryview], bytes]) -> None:
        """The first flight went out: bytes arriving from now on go to `sink` as records, as the window allows."""
        self._sink = (sink, seal)
        self._flush()

    def detach(self) -> None:
        """The attempt ended (answered, refused or failed): nothing more goes out from here."""
        self._sink = None

    def _flush(self) -> None:
        if self._sink is None or self._sent >= len(self._buf):
            return
        sink, seal = self._sink
        room = sink.send_capacity() - OVERHEAD
        records = []
        view = memoryview(self._buf)
        while self._sent < len(view) and room > 0:
            n = min(len(view) - self._sent, room, MAX_PAYLOAD)
            record = seal(DATA, view[self._sent : self._sent + n])
            records.append(record)
            room -= len(record) + OVERHEAD
            self._sent += n
        view.release()
        if records:
            sink.write_nowait(b"".join(records))

    def done(self) -> bytes:
        """The opening succeeded: what was held but not sent (it goes first once the app takes over); the copy
        goes."""
        self.detach()
        rest = bytes(self._buf[self._sent :])
        self.sent_total = self._sent
        self._buf = bytearray()
        self._sent = 0
        return rest


class EarlyReader(asyncio.Protocol):
    """Takes a client socket's transport over from its StreamReader and feeds `early` until the opening ended."""

    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.Transport, early: EarlyData) -> None:
        self.transport = transport
        self.early = early
        self.paused = False
        self.overflow = b""
        """Bytes that arrived past the limit (at most one read), in order after the held ones."""
        held = bytes(getattr(reader, "_buffer", b""))
        early.lost = reader.exception() is not None
        transport.set_protocol(self)
        if held:
            self.data_received(held)
        if reader.at_eof() or getattr(reader, "_eof", False):
            early.eof = True
        elif not self.paused and not early.lost:
            transport.resume_reading()  # the StreamReader may have paused it (full buffer)

    def data_received(self, data: bytes) -> None:
        if self.overflow or self.early.eof:
            self.overflow += data
            return
        taken = self.early.feed(data)
        if taken < len(data):
            self.overflow = data[taken:]
        if self.early.full and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self.early.eof = True
        return True  # keep the write side open: half-close

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.early.lost = True

    def take(self) -> bytes:
        """The opening succeeded: the bytes the app must send first (held but not sent, then any overflow)."""
        rest = self.early.done() + self.overflow
        self.overflow = b""
        return rest
