"""The chunk protocol (`wire`) over a byte stream: `StreamReader` reads lines and blocks from a stream, and
`ChunkChannel` is the downloader's side, one request at a time on one stream to one source.

The stream is an end-to-end stream (`ztm.agent.e2estream.E2EStream`), through the hub's relay or over a direct
channel (`ztm.agent.direct`) to the source: the same stream either way (`path` says which). After both directions
ended cleanly a direct channel's TLS connection is reused (the client's pool, the server's next stream), as a
tunnel's is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ztm.apps.files import wire
from ztm.errors import Unavailable


class ByteStream(Protocol):
    """What the files app uses of an `E2EStream`."""

    path: str

    async def read(self, max_bytes: int = 1 << 20) -> bytes: ...

    async def write(self, data: bytes, *, end_stream: bool = False) -> None: ...

    async def end(self) -> None: ...

    def end_nowait(self) -> None: ...

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

    `direct`: the stream is over a direct channel (chunks counted as direct); closed after a complete answer, it
    ends cleanly so that its connection is reused, instead of being reset."""

    def __init__(self, stream: ByteStream, name: str, count: Callable[[int], None] | None = None) -> None:
        self.stream = stream
        self.name = name
        self.reader = StreamReader(stream)
        self.count = count
        self.direct = stream.path != "relay"
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
        if self.direct and not self._busy and not len(self.reader.buffer) and not stream.closed:
            stream.end_nowait()  # the source ends too: the channel carries the next stream
        elif not stream.closed:
            stream.reset()
