"""Moving bytes between local sockets and mesh streams, with back-pressure in both directions.

TCP: no task per direction; the socket's transport gets a protocol that writes what it receives into the stream
(pausing the socket's reading while the stream's windows are full) and is the stream's sink (pausing the sink, and
so the HTTP/2 credit, while the socket's transport is full), so memory per connection is bounded by one chunk plus
the stream window.
Half-close travels: EOF from the socket ends the stream, the stream's end shuts down the socket's write side.
A reset travels too: a socket error resets the stream, a reset stream resets the socket (RST, not a clean FIN, so a
client can tell a broken connection from a complete answer).

UDP: datagrams keep their boundaries inside a stream as 2-byte big-endian length prefixes (`frame`/`Deframer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import cast

from ztm import h2
from ztm.agent.e2estream import E2EStream
from ztm.agent.early import EarlyReader

CHUNK = 256 * 1024
MAX_DATAGRAM = 65535


async def splice_socket(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stream: E2EStream,
    count: Callable[[int, int], None],
    early: EarlyReader | None = None,
) -> None:
    """Copy socket <-> stream until both directions ended; errors on either side abort both.

    The socket's transport is taken over from the StreamReader/StreamWriter pair, or from the `EarlyReader` that
    fed the opening's early data (those bytes went out already), by a `_SocketSplice` protocol (no task per
    direction: bytes move in the transport's and the h2 connection's callbacks).
    """
    transport = cast(asyncio.Transport, writer.transport)
    splice = _SocketSplice(transport, stream, count)
    if early is None:
        # what the StreamReader already holds (the client may speak first, while the exit stream was being opened)
        buffered = bytes(getattr(reader, "_buffer", b""))
        failed = reader.exception() is not None
        eof = reader.at_eof() or getattr(reader, "_eof", False)
    else:
        buffered = early.take()
        if early.early.sent_total:
            count(early.early.sent_total, 0)
        failed, eof = early.early.lost, early.early.eof
    splice.was_closing = transport.is_closing()  # connection_lost may have gone to the StreamReader already
    transport.set_protocol(splice)
    if failed or (transport.is_closing() and not eof):
        splice.fail()
    else:
        if buffered:
            splice.data_received(buffered)
        if eof:
            splice.eof_received()
        elif not splice.reading_paused:
            transport.resume_reading()  # the StreamReader may have paused it (full buffer)
        stream.set_sink(splice)
    try:
        await splice.closed
    except BaseException:
        splice.fail()
        raise


class _SocketSplice(asyncio.Protocol):
    """A socket transport's protocol that feeds the stream, and the stream's sink that feeds the socket.

    Up (socket -> stream): received bytes go out with `write_nowait`; what the windows do not take now is written
    by a task while the socket's reading is paused (so at most one chunk waits here). Down (stream -> socket):
    DATA goes to the transport as it arrives; while the transport is paused (`pause_writing`) the stream's sink is
    paused, which withholds the HTTP/2 credit, so the peer stops after one window.
    """

    def __init__(self, transport: asyncio.Transport, stream: E2EStream, count: Callable[[int, int], None]) -> None:
        self.transport = transport
        self.stream = stream
        self.count = count
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reading_paused = False
        self.was_closing = False
        self._writer: asyncio.Future[None] | None = None
        self._eof_pending = False
        self._up_done = False
        self._down_done = False
        self._failed = False

    # ---- socket side (asyncio.Protocol) ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        pass

    def data_received(self, data: bytes) -> None:
        if self._failed or self._up_done:
            return
        try:
            n = self.stream.write_nowait(data)
        except h2.H2Error:
            self.fail()
            return
        if n:
            self.count(n, 0)
        if n < len(data):
            self.reading_paused = True
            self.transport.pause_reading()
            self._writer = asyncio.ensure_future(self._write_rest(memoryview(data)[n:].toreadonly()))

    async def _write_rest(self, rest: memoryview) -> None:
        try:
            await self.stream.write(rest)
        except h2.H2Error:
            self.fail()
            return
        self._writer = None
        self.count(len(rest), 0)
        if self._eof_pending:
            self._end_up()
        elif not self._failed:
            self.reading_paused = False
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        if self._writer is not None:
            self._eof_pending = True
        else:
            self._end_up()
        return True  # keep the write side open: half-close

    def _end_up(self) -> None:
        if self._failed or self._up_done:
            return
        self._up_done = True
        try:
            self.stream.end_nowait()
        except h2.H2Error:
            self.fail()
            return
        self._maybe_close()

    def pause_writing(self) -> None:
        self.stream.pause_sink()

    def resume_writing(self) -> None:
        self.stream.resume_sink()

    def connection_lost(self, exc: Exception | None) -> None:
        if not (self._up_done and self._down_done):
            self._failed = True
            self.stream.reset()
        if self._writer is not None:
            self._writer.cancel()
        if not self.closed.done():
            self.closed.set_result(None)

    # ---- stream side (h2.StreamSink) ---------------------------------------------------------------------------

    def stream_data(self, data: bytes) -> None:
        self.transport.write(data)
        self.count(0, len(data))

    def stream_end(self) -> None:
        if self._failed:
            return
        transport = self.transport
        if transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:
                self.fail()
                return
        self._down_done = True
        self._maybe_close()

    def stream_error(self, exc: h2.H2Error) -> None:
        self.fail()

    # ---- both --------------------------------------------------------------------------------------------------

    def _maybe_close(self) -> None:
        if self._up_done and self._down_done:
            self.transport.close()  # connection_lost (once the buffer is written) resolves `closed`
            if self.was_closing and not self.closed.done():
                self.closed.set_result(None)

    def fail(self) -> None:
        """Reset both sides (idempotent)."""
        if self._failed:
            return
        self._failed = True
        self.stream.reset()
        if self._writer is not None:
            self._writer.cancel()
        _reset_transport(self.transport)
        if not self.closed.done():
            self.closed.set_result(None)


def reset_socket(writer: asyncio.StreamWriter) -> None:
    """Close at once with an RST (SO_LINGER 0): the peer sees "connection reset", not the end of the data."""
    _reset_transport(writer.transport)


def _reset_transport(transport: asyncio.WriteTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def frame(datagram: bytes) -> bytes:
    return struct.pack("!H", len(datagram)) + datagram


class Deframer:
    """Splits a byte stream back into datagrams."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out = []
        while len(self._buf) >= 2:
            (size,) = struct.unpack_from("!H", self._buf)
            if len(self._buf) < 2 + size:
                break
            out.append(bytes(self._buf[2 : 2 + size]))
            del self._buf[: 2 + size]
        return out
