"""The chunk protocol (`wire`) over an `h2.Stream`: `StreamReader` reads lines and blocks from a stream, and
`ChunkChannel` is the downloader's side, one request at a time on one stream to one source."""

from __future__ import annotations

from collections.abc import Callable

from ztm import h2
from ztm.apps.files import wire
from ztm.errors import Unavailable


class StreamReader:
    def __init__(self, stream: h2.Stream) -> None:
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
    """Requests chunks from one source over one stream; any failure leaves the channel unusable (`close()` it)."""

    def __init__(self, stream: h2.Stream, name: str, count: Callable[[int], None] | None = None) -> None:
        self.stream = stream
        self.name = name
        self.reader = StreamReader(stream)
        self.count = count

    async def get(self, request: wire.ChunkRequest) -> bytes:
        await self.stream.write(request.encode())
        line = await self.reader.line()
        if line is None:
            raise Unavailable(f"{self.name} ended the stream without answering")
        size = wire.parse_header(line)
        data = await self.reader.exactly(size)
        if self.count is not None:
            self.count(len(data))
        return data

    def close(self) -> None:
        if not self.stream.closed:
            self.stream.reset()
