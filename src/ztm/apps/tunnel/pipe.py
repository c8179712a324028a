"""Moving bytes between local sockets and mesh streams, with back-pressure in both directions.

TCP: one task per direction; a read from one side happens only after the previous chunk was written to the other
(and, on the socket side, drained), so memory per connection is bounded by one chunk plus the stream window.
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

from ztm import h2

CHUNK = 256 * 1024
MAX_DATAGRAM = 65535


async def splice_socket(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stream: h2.Stream,
    count: Callable[[int, int], None],
) -> None:
    """Copy socket <-> stream until both directions ended; errors on either side abort both."""

    async def up() -> None:
        while data := await reader.read(CHUNK):
            await stream.write(data)
            count(len(data), 0)
        await stream.end()

    async def down() -> None:
        while data := await stream.read(CHUNK):
            writer.write(data)
            count(0, len(data))
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    tasks = [asyncio.ensure_future(up()), asyncio.ensure_future(down())]
    try:
        for task in asyncio.as_completed(tasks):
            await task
    except (h2.H2Error, OSError):
        stream.reset()
        for task in tasks:
            task.cancel()
        reset_socket(writer)
        return
    finally:
        for task in tasks:
            task.cancel()
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def reset_socket(writer: asyncio.StreamWriter) -> None:
    """Close at once with an RST (SO_LINGER 0): the peer sees "connection reset", not the end of the data."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


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
