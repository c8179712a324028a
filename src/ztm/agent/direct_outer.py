"""The outer stream of a direct channel: one TLS connection carrying the end-to-end layer, one stream at a time.

A direct channel (`ztm.agent.direct`) is a mutual-TLS connection between two endpoints of a mesh. Each tunnelled
connection over it is an end-to-end stream exactly like a relayed one (`ztm.agent.e2e`, PROTOCOL.md section 11):
the first flight is RESUME + OPEN on an existing session or a handshake, then sealed records. `DirectOuter` offers
what `E2EStream` and `MeshE2E` use of an outer stream (`ztm.agent.e2estream.Outer`) on top of the TLS transport,
and `DirectConn` is the transport's asyncio protocol, which carries one `DirectOuter` at a time.

A TLS transport cannot half-close, so the end-to-end END record is the half-close: `end`/`end_stream` send nothing
more. A reset aborts the TLS connection. Once both END records went through (`E2EStream` calls `stream_finished`),
the connection carries the next stream: the client puts it back in its pool, the server waits for the next first
flight. Bytes that follow the peer's END (the next stream's first flight) are cut off at the frame boundary and kept
for the next stream: only a record of the END's size can be the END, so the chunk is split only after those.

Back-pressure is the transport's: the outer's send capacity is what fits under `WINDOW` in the transport's write
buffer (`pause_writing` makes it 0 and `write` waits), and a paused sink pauses the transport's reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from ztm import h2
from ztm.e2e.frames import MIN_RECORD_BODY, RECORD

WINDOW = 256 * 1024
"""Bytes the TLS transport's write buffer may hold before writers wait (its high-water mark)."""
IDLE_BUFFER = 256 * 1024
"""Bytes an idle connection buffers (the next stream's first flight) before its reading is paused."""

if TYPE_CHECKING:
    from ztm.agent.direct import PeerCert

_END_WORD = RECORD << 24 | MIN_RECORD_BODY
"""The header of a record of the END's size (END, an empty DATA or a KEY_UPDATE)."""
_ids = itertools.count(1)


class DirectConn(asyncio.Protocol):
    """One TLS connection of a direct channel (the transport's protocol): idle, or carrying one `DirectOuter`."""

    def __init__(self, *, server: bool) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.outer: DirectOuter | None = None
        self.idle = bytearray()
        """Bytes received while no stream was on the connection (the next stream's first flight)."""
        self.lost = False
        self.made = time.monotonic()
        self.on_made: Callable[[DirectConn], None] | None = None
        self.peer: PeerCert | None = None
        """Who is on the other side (its verified certificate), once the owner adopted the connection."""
        self.on_lost: Callable[[], object] | None = None
        self.kind = "direct"
        """How the channel was made, the path of its streams: `direct` (dialled to the peer's listener), `lan` or
        `punched` (`ztm.agent.punch`)."""
        self.idle_limit: float | None = None
        """Seconds it may stay idle (pooled, or waiting for the next stream) if not the default of its side."""
        self.on_release: Callable[[DirectConn], None] | None = None
        """Called after a stream finished cleanly: the owner reuses the connection (pool, or the next stream)."""
        self.write_paused = False
        self._drain: list[asyncio.Future[None]] = []
        self._arrived: asyncio.Future[None] | None = None
        self._idle_paused = False

    # ---- asyncio.Protocol ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = tls = cast(asyncio.Transport, transport)
        tls.set_write_buffer_limits(high=WINDOW)
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        outer = self.outer
        if outer is not None:
            outer.data_received(data)
        else:
            self.idle_data(data)

    def idle_data(self, data: bytes | memoryview) -> None:
        """Bytes for no stream: a server keeps them for the next one; a client gets nothing unasked (abort)."""
        if not self.server:
            self.abort()
            return
        self.idle += data
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)
        if len(self.idle) > IDLE_BUFFER and not self._idle_paused and self.transport is not None:
            self._idle_paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.on_lost is not None:
            self.on_lost()
        for waiter in self._drain:
            if not waiter.done():
                waiter.set_result(None)
        self._drain.clear()
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)
        if self.outer is not None:
            self.outer.lost(exc)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        for waiter in self._drain:
            if not waiter.done():
                waiter.set_result(None)
        self._drain.clear()

    # ---- for the owner and the outer -------------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.lost and not self.transport.is_closing()

    async def first_flight(self) -> None:
        """Wait until the next stream's first bytes arrived (or the connection closed)."""
        while not self.idle and not self.lost:
            self._arrived = asyncio.get_running_loop().create_future()
            await self._arrived

    async def drain(self) -> None:
        while self.write_paused and not self.lost:
            waiter = asyncio.get_running_loop().create_future()
            self._drain.append(waiter)
            await waiter

    def attach(self, outer: DirectOuter) -> None:
        """Start a stream on this connection; what arrived for it while idle goes to it first."""
        self.outer = outer
        if self.idle:
            data = bytes(self.idle)
            self.idle.clear()
            outer.data_received(data)
        if self._idle_paused and self.transport is not None:
            self._idle_paused = False
            self.transport.resume_reading()

    def release(self, outer: DirectOuter) -> None:
        """`outer` finished cleanly: the connection is idle again, and its owner reuses it."""
        if self.outer is outer:
            self.outer = None
            if self.on_release is not None and self.usable:
                self.on_release(self)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        """Close after what is written went out (e.g. an ERROR frame)."""
        if self.transport is not None:
            self.transport.close()


DIRECT_FRAME = 16384
"""Records on a direct channel are sized as on the relay (four of these, less the record overhead)."""


class DirectOuter:
    """One end-to-end stream's outer stream on a `DirectConn` (the `ztm.agent.e2estream.Outer` interface)."""

    def __init__(self, conn: DirectConn, on_done: Callable[[DirectOuter], None] = lambda _o: None) -> None:
        assert conn.transport is not None
        self.conn = conn
        self.transport: asyncio.Transport = conn.transport
        self.id = next(_ids)
        self.label = ""
        self.finished = False
        """Both END records went through and the connection went back to its owner."""
        self._on_done = on_done
        self._chunks: deque[bytes] = deque()
        self._sink: h2.StreamSink | None = None
        self._sink_paused = False
        self._reading_paused = False
        self._error: h2.H2Error | None = None
        self._reader: asyncio.Future[None] | None = None
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._need = 0
        """Bytes still to come of the current frame."""
        self._head = b""
        """A frame header split across reads."""
        self._small = False
        """The current frame has the END record's size."""
        conn.attach(self)

    # ---- receive path --------------------------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Bytes from the connection: delivered up to the peer's END record; what follows is the next stream's."""
        end = len(data)
        if not self._need and not self._head and end > 4:  # the common case: one whole record, not END-sized
            word = int.from_bytes(data[:4], "big")
            if word & 0xFFFFFF == end - 4 and word != _END_WORD:
                sink = self._sink  # `_deliver`'s common case, inline (a frame less per message)
                if sink is not None and not (self._sink_paused or self._chunks or self._error or self.finished):
                    sink.stream_data(data)
                else:
                    self._deliver(data)
                return
        pos = start = 0
        while pos < end:
            if self._need:
                take = min(self._need, end - pos)
                self._need -= take
                pos += take
                if self._need or not self._small or pos == end:
                    continue
                self._deliver(data[start:pos])  # a possible END: is the stream finished after it?
                start = pos
                if self.finished:
                    self.conn.idle_data(memoryview(data)[pos:])
                    return
                continue
            head = self._head + data[pos : pos + 4 - len(self._head)]
            pos += len(head) - len(self._head)
            if len(head) < 4:
                self._head = head
                break
            self._head = b""
            word = int.from_bytes(head, "big")
            self._need = word & 0xFFFFFF
            self._small = word == _END_WORD
        if start < end:
            self._deliver(data[start:] if start else data)

    def _deliver(self, data: bytes) -> None:
        if self._error is not None or self.finished:
            return
        sink = self._sink
        if sink is not None and not self._sink_paused and not self._chunks:
            sink.stream_data(data)
            return
        self._chunks.append(data)
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)

    def lost(self, exc: Exception | None) -> None:
        """The TLS connection closed under the stream."""
        if self.finished:
            return
        # Closed without both END records: a reset, as RST_STREAM is on the relay (the TLS peer is the end-to-end
        # peer itself, so a cut here is its own doing; no hub in between could have truncated the stream).
        self._fail(h2.H2Error(f"the direct channel closed{f': {exc}' if exc else ''}"))

    def _fail(self, exc: h2.H2Error) -> None:
        if self._error is None:
            self._error = exc
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)
        sink = self._sink
        if sink is not None and not self._chunks:
            self._sink = None
            sink.stream_error(exc)
        self._done()

    def _done(self) -> None:
        if not self._closed.done():
            self._closed.set_result(None)
            self._on_done(self)

    async def read(self, max_bytes: int = 1 << 20) -> bytes:
        """The next bytes received (before a sink is set: the end-to-end opening)."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        chunk = self._chunks.popleft()
        if len(chunk) > max_bytes:
            self._chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        return chunk

    def set_sink(self, sink: h2.StreamSink) -> None:
        self._sink = sink
        self._flush()

    def pause_sink(self) -> None:
        self._sink_paused = True
        if not self._reading_paused and not self.finished:
            self._reading_paused = True
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()

    def resume_sink(self) -> None:
        self._sink_paused = False
        self._flush()
        if self._reading_paused and not self._sink_paused:
            self._reading_paused = False
            if not self.finished:
                with contextlib.suppress(RuntimeError):
                    self.transport.resume_reading()

    def _flush(self) -> None:
        while (sink := self._sink) is not None and self._chunks and not self._sink_paused:
            sink.stream_data(self._chunks.popleft())
        if self._sink is not None and not self._chunks and self._error is not None:
            self._fail(self._error)

    # ---- send path -----------------------------------------------------------------------------------------------

    def send_capacity(self) -> int:
        """`WINDOW` until the transport's buffer passes its high-water mark (`pause_writing`), then 0."""
        if self._error is not None or self.conn.write_paused:
            return 0
        return WINDOW

    def write_nowait(self, data: bytes | memoryview) -> int:
        if self._error is not None:
            raise self._error
        self.transport.write(data)
        return len(data)

    async def write(self, data: bytes | memoryview, *, end_stream: bool = False) -> None:
        """Write `data`, waiting while the transport's buffer is full; `end_stream` adds nothing (the END record
        is the half-close)."""
        if self._error is not None:
            raise self._error
        self.transport.write(data)
        if self.conn.write_paused:
            await self.conn.drain()
            if self._error is not None:
                raise self._error

    def end_nowait(self) -> None:
        """Nothing to send: the END record (already written) is the half-close on a direct channel."""

    async def end(self) -> None:
        """As `end_nowait`."""

    def reset(self, error_code: int = 8) -> None:
        """Abort the TLS connection (the peer's stream fails). Idempotent; nothing once the stream finished."""
        if self.finished or self._closed.done():
            return
        self._fail(h2.H2Error(f"stream reset (code {error_code})"))
        self.conn.abort()

    def close(self) -> None:
        """End the connection after what was written (a refusal before any keys existed)."""
        if not self.finished:
            self.conn.close()
            self._fail(h2.H2Error("the direct channel closed"))

    def stream_finished(self) -> None:
        """Both END records went through: the connection goes back to its owner for the next stream."""
        if self.finished or self._error is not None:
            return
        self.finished = True
        self._sink = None
        if self._reading_paused:
            self._reading_paused = False
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()
        self._done()
        self.conn.release(self)

    @property
    def closed(self) -> bool:
        return self._closed.done()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    @property
    def credit_wait(self) -> float:
        return 0.0

    @property
    def max_frame_size(self) -> int:
        """No frames here (the TLS connection carries the records as they are); what sizes the records."""
        return DIRECT_FRAME

    @property
    def credit_waiting(self) -> float:
        return 0.0
