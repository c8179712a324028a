"""The chunk protocol (`wire`) over a byte stream: `StreamReader` reads lines and blocks from a stream, and
`ChunkChannel` is the downloader's side, one request at a time on one stream to one source.

The stream is an `h2.Stream` through the hub's relay, or a `DirectStream`: the same read/write/end/reset interface
on a direct channel (`ztm.agent.direct`) to the source, in the direct channel's frames (`ztm.agent.direct_pipe`: a
4-byte big-endian length, then the bytes; length 0 ends that direction). Both ends speak exactly the same chunk
protocol over either. After both directions ended cleanly the direct channel's TLS connection is recycled (the
client's pool, the server's next greeting), as a tunnel's is.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from ztm.agent.direct_pipe import END, HEADER, MAX_FRAME
from ztm.apps.files import wire
from ztm.errors import Unavailable

if TYPE_CHECKING:
    from ztm.agent.direct import DirectChannel

READ_LIMIT = 4 << 20
"""Bytes a `DirectStream` buffers before it stops reading the TLS connection (until its reader catches up)."""
END_TIMEOUT = 10.0
"""Seconds a `DirectStream` waits, after its own end frame, for the peer's before it aborts the connection."""


class ByteStream(Protocol):
    """What the files app uses of an `h2.Stream` (and `DirectStream` offers)."""

    async def read(self, max_bytes: int = 1 << 20) -> bytes: ...

    async def write(self, data: bytes, *, end_stream: bool = False) -> None: ...

    async def end(self) -> None: ...

    def reset(self) -> None: ...

    @property
    def closed(self) -> bool: ...


class StreamReader:
    def __init__(self, stream: ByteStream) -> None:
        self.stream = stream
        self.buffer = wire.LineBuffer()
        self.eof = False

    async def _fill(self) -> None:
        data = await self.stream.read()
        if not data:
            self.eof = True
        self.buffer.feed(data)

    async def line(self) -> bytes | None:
        """The next line; None when the peer ended its side cleanly between lines."""
        while (line := self.buffer.line()) is None:
            if self.eof:
                if len(self.buffer):
                    raise Unavailable("the stream ended in the middle of a line")
                return None
            await self._fill()
        return line

    async def exactly(self, n: int) -> bytes:
        while (block := self.buffer.take(n)) is None:
            if self.eof:
                raise Unavailable(f"the stream ended before {n} bytes arrived")
            await self._fill()
        return block


class ChunkChannel:
    """Requests chunks from one source over one stream; any failure leaves the channel unusable (`close()` it).

    `direct`: the stream is a `DirectStream` (chunks counted as direct); closed after a complete answer, its
    connection is handed back for reuse instead of reset."""

    def __init__(self, stream: ByteStream, name: str, count: Callable[[int], None] | None = None) -> None:
        self.stream = stream
        self.name = name
        self.reader = StreamReader(stream)
        self.count = count
        self.direct = isinstance(stream, DirectStream)
        self._busy = False
        """A request is out whose answer was not read in full: the stream is not clean."""

    async def get(self, request: wire.ChunkRequest) -> bytes:
        self._busy = True
        await self.stream.write(request.encode())
        line = await self.reader.line()
        if line is None:
            raise Unavailable(f"{self.name} ended the stream without answering")
        try:
            size = wire.parse_header(line)
        except wire.NotHeld:
            self._busy = False  # the one refusal after which the stream goes on
            raise
        data = await self.reader.exactly(size)
        self._busy = False
        if self.count is not None:
            self.count(len(data))
        return data

    def close(self) -> None:
        stream = self.stream
        if isinstance(stream, DirectStream) and not self._busy and not len(self.reader.buffer):
            stream.finish()
        elif not stream.closed:
            stream.reset()


class DirectStream(asyncio.Protocol):
    """An accepted `DirectChannel` as a byte stream with the interface of an `h2.Stream` the files app uses.

    It becomes the channel's TLS transport's protocol (from the bytes after the greeting on). `read()` returns the
    payload of the peer's frames (b"" after its end frame), `write()` sends one frame (waiting while the transport's
    buffer is full), `end()` the end frame, `reset()` aborts the connection (the peer sees it closed without an end
    frame). Failures raise `Unavailable`. Once both end frames went through, the connection goes back to the
    channel's owner (`DirectChannel.recycle`)."""

    def __init__(self, channel: DirectChannel) -> None:
        self.channel = channel
        self.transport: asyncio.Transport = channel.transport
        self._buf = bytearray()
        self._header = b""
        self._need = 0
        self._eof = False
        """The peer's end frame arrived."""
        self._ended = False
        """Our end frame went out."""
        self._failed = False
        self._recycled = False
        self._rest = b""
        self._reading_paused = True  # the greeting's LineProtocol paused it
        self._writing_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._end_timer: asyncio.TimerHandle | None = None
        rest = channel.rest
        self.transport.set_protocol(self)
        if self.transport.is_closing():
            self._fail()
            return
        if rest:
            self.data_received(rest)
        self._resume()

    # the interface
    @property
    def closed(self) -> bool:
        return self._failed or self._recycled

    async def read(self, max_bytes: int = 1 << 20) -> bytes:
        while not self._buf:
            if self._eof:
                return b""
            if self._failed:
                raise Unavailable("the direct channel closed")
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        data = bytes(self._buf[:max_bytes])
        del self._buf[:max_bytes]
        if self._reading_paused and len(self._buf) < READ_LIMIT // 2:
            self._resume()
        return data

    async def write(self, data: bytes, *, end_stream: bool = False) -> None:
        if self._failed or self._ended:
            raise Unavailable("the direct channel is closed for writing")
        view = memoryview(data)
        for pos in range(0, len(view), MAX_FRAME):
            piece = view[pos : pos + MAX_FRAME]
            self.transport.write(HEADER.pack(len(piece)))
            self.transport.write(piece)
        if end_stream:
            self._send_end()
        while self._writing_paused and not self._failed:
            self._drain = asyncio.get_running_loop().create_future()
            try:
                await self._drain
            finally:
                self._drain = None
        if self._failed and not self._recycled:
            raise Unavailable("the direct channel closed")

    async def end(self) -> None:
        self._send_end()

    def finish(self) -> None:
        """End cleanly without waiting: the end frame now; the connection is recycled when the peer's arrives (or
        aborted after `END_TIMEOUT`)."""
        self._send_end()
        if not self.closed and self._end_timer is None:
            self._end_timer = asyncio.get_running_loop().call_later(END_TIMEOUT, self.reset)

    def reset(self) -> None:
        if self.closed:
            return
        self._fail()

    # internals
    def _send_end(self) -> None:
        if self._failed or self._ended:
            return
        self._ended = True
        self.transport.write(END)
        self._maybe_recycle()

    def _maybe_recycle(self) -> None:
        if self._eof and self._ended and not self.closed:
            if self._end_timer is not None:
                self._end_timer.cancel()
            if self.transport.is_closing():
                self._fail()
                return
            self._recycled = True
            self._wake()
            self.channel.recycle(self.transport, self._rest)

    def _fail(self) -> None:
        if self._failed:
            return
        self._failed = True
        if self._end_timer is not None:
            self._end_timer.cancel()
        self.channel.abort()
        self._wake()

    def _wake(self) -> None:
        for waiter in (self._waiter, self._drain):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _resume(self) -> None:
        if self._reading_paused and not self.closed:
            self._reading_paused = False
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    # asyncio.Protocol
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        if self._eof:  # nothing may follow the peer's end frame before ours went out
            if self._ended:
                self._rest += data
            else:
                self._fail()
            return
        pos, total = 0, len(data)
        while pos < total:
            if self._need:
                take = min(self._need, total - pos)
                self._buf += data[pos : pos + take]
                self._need -= take
                pos += take
                continue
            missing = 4 - len(self._header)
            self._header += data[pos : pos + missing]
            pos += missing
            if len(self._header) < 4:
                break
            (size,) = HEADER.unpack(self._header)
            self._header = b""
            if size == 0:
                self._eof = True
                self._rest = data[pos:]
                if self._rest and not self._ended:
                    self._fail()
                    return
                self._wake()
                self._maybe_recycle()
                return
            if size > MAX_FRAME:
                self._fail()
                return
            self._need = size
        self._wake()
        if len(self._buf) >= READ_LIMIT and not self._reading_paused:
            self._reading_paused = True
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._recycled:
            self._fail()
