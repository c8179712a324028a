"""`DirectStream`: the files app's chunk protocol over a direct channel, in the direct channel's frames.

Against a fake transport: frames split anywhere are reassembled, an oversized or early frame resets, a full read
buffer pauses the transport, the peer's end frame reads as EOF and (once ours went out too) hands the connection
back with what followed it. Over a real socket pair: a `ChunkChannel` asks a tiny chunk server for a 1 MiB chunk
and a `not_held`, then closes cleanly, and both ends recycle the connection; a reset reaches the other end as a
failure."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from ztm.agent.direct_pipe import END, HEADER, MAX_FRAME
from ztm.apps.files import channel as channel_mod
from ztm.apps.files import wire
from ztm.apps.files.channel import ChunkChannel, DirectStream, StreamReader
from ztm.errors import Unavailable


def sync(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    def run() -> None:
        asyncio.run(asyncio.wait_for(test(), 20))

    run.__doc__ = test.__doc__
    return run


class FakeTransport:
    def __init__(self) -> None:
        self.protocol: Any = None
        self.written = bytearray()
        self.paused = True
        self.closing = False
        self.aborted = False

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closing

    def abort(self) -> None:
        self.aborted = self.closing = True


class FakeChannel:
    """What `DirectStream` uses of a `DirectChannel`."""

    def __init__(self, transport: Any, rest: bytes = b"") -> None:
        self.transport = transport
        self.rest = rest
        self.aborted = False
        self.recycled: tuple[Any, bytes] | None = None

    def abort(self) -> None:
        self.aborted = True
        self.transport.abort()

    def recycle(self, transport: Any, rest: bytes) -> None:
        self.recycled = (transport, rest)


def frame(data: bytes) -> bytes:
    return HEADER.pack(len(data)) + data


def make(rest: bytes = b"") -> tuple[FakeTransport, FakeChannel, DirectStream]:
    transport = FakeTransport()
    fake = FakeChannel(transport, rest)
    return transport, fake, DirectStream(cast(Any, fake))


@sync
async def test_frames_split_anywhere_are_reassembled_and_the_end_frame_reads_as_eof() -> None:
    wire_bytes = frame(b"hello ") + frame(b"world\n") + END + b"next greeting\n"
    transport, fake, stream = make(rest=wire_bytes[:3])
    assert not transport.paused and transport.protocol is stream
    for i in range(3, len(wire_bytes)):
        stream.data_received(wire_bytes[i : i + 1])
    assert fake.aborted, "bytes after the peer's end frame while ours is still open are a protocol error"

    transport, fake, stream = make()
    for i in range(0, len(wire_bytes) - len(b"next greeting\n")):
        stream.data_received(wire_bytes[i : i + 1])
    assert await stream.read() == b"hello world\n"
    assert await stream.read() == b"" and not stream.closed
    await stream.write(b"answer")
    assert fake.recycled is None
    await stream.end()
    assert bytes(transport.written) == frame(b"answer") + END
    assert fake.recycled == (transport, b"") and stream.closed and not fake.aborted
    stream.data_received(b"ignored: the connection belongs to the next owner")


@sync
async def test_what_follows_the_peers_end_frame_goes_with_the_recycled_connection() -> None:
    transport, fake, stream = make()
    stream.finish()  # our end first (the downloader closing an idle channel)
    assert bytes(transport.written) == END and fake.recycled is None
    stream.data_received(frame(b"last") + END + b'{"app":')
    assert fake.recycled == (transport, b'{"app":')
    assert await stream.read() == b"last" and await stream.read() == b""


@sync
async def test_oversized_frames_and_lost_connections_fail_the_stream() -> None:
    _transport, fake, stream = make()
    stream.data_received(HEADER.pack(MAX_FRAME + 1))
    assert fake.aborted and stream.closed
    with pytest.raises(Unavailable):
        await stream.read()
    with pytest.raises(Unavailable):
        await stream.write(b"x")

    _transport, fake, stream = make()
    reader = asyncio.ensure_future(stream.read())
    await asyncio.sleep(0)
    stream.connection_lost(None)
    with pytest.raises(Unavailable):
        await reader
    assert fake.aborted


@sync
async def test_a_full_read_buffer_pauses_the_transport_until_read() -> None:
    transport, _fake, stream = make()
    block = os.urandom(1 << 20)
    for _ in range(channel_mod.READ_LIMIT // len(block)):
        stream.data_received(frame(block))
    assert transport.paused
    got = bytearray()
    while len(got) < channel_mod.READ_LIMIT:
        got += await stream.read()
    assert not transport.paused and bytes(got) == block * (channel_mod.READ_LIMIT // len(block))


@sync
async def test_a_write_waits_while_the_transport_is_full() -> None:
    _transport, _fake, stream = make()
    stream.pause_writing()
    writer = asyncio.ensure_future(stream.write(b"data"))
    await asyncio.sleep(0.01)
    assert not writer.done()
    stream.resume_writing()
    await asyncio.wait_for(writer, 1)


# ------------------------------------------------------------------------------------------ over a socket pair


async def pair() -> tuple[tuple[asyncio.Transport, FakeChannel], tuple[asyncio.Transport, FakeChannel]]:
    loop = asyncio.get_running_loop()
    ends = []
    for sock in socket.socketpair():
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=sock)
        transport.pause_reading()  # as the greeting's LineProtocol leaves it
        ends.append((transport, FakeChannel(transport)))
    return ends[0], ends[1]


async def serve_chunks(stream: DirectStream, chunk: bytes) -> None:
    """A tiny source: chunk 0 is `chunk`, every other index `not_held`; ends when the client ends."""
    reader = StreamReader(stream)
    while (line := await reader.line()) is not None:
        request = wire.parse_request(line)
        if request.index:
            await stream.write(wire.error_header(wire.NotHeld(f"no chunk {request.index}")))
            continue
        await stream.write(wire.ok_header(len(chunk), "0" * 64))
        await stream.write(chunk)
    await stream.end()


@sync
async def test_a_chunk_channel_over_a_direct_stream_and_a_clean_close_recycles_both_ends() -> None:
    (client_t, client_ch), (server_t, server_ch) = await pair()
    chunk = os.urandom(1 << 20)
    server = asyncio.ensure_future(serve_chunks(DirectStream(cast(Any, server_ch)), chunk))
    counted: list[int] = []
    chunks = ChunkChannel(DirectStream(cast(Any, client_ch)), "src", counted.append)
    assert chunks.direct
    request = wire.ChunkRequest("/shared/root/x.bin", "a" * 64, 0)
    assert await asyncio.wait_for(chunks.get(request), 5) == chunk
    with pytest.raises(wire.NotHeld):
        await asyncio.wait_for(chunks.get(wire.ChunkRequest(request.path, request.hash, 1)), 5)
    assert await asyncio.wait_for(chunks.get(request), 5) == chunk
    assert counted == [len(chunk), len(chunk)]
    chunks.close()
    await asyncio.wait_for(server, 5)
    for _ in range(100):
        if client_ch.recycled is not None:
            break
        await asyncio.sleep(0.01)
    assert client_ch.recycled == (client_t, b"") and server_ch.recycled == (server_t, b"")
    assert not client_ch.aborted and not server_ch.aborted
    client_t.close()
    server_t.close()


@sync
async def test_a_reset_reaches_the_other_end_as_a_failure() -> None:
    (client_t, client_ch), (_server_t, server_ch) = await pair()
    server = DirectStream(cast(Any, server_ch))
    chunks = ChunkChannel(DirectStream(cast(Any, client_ch)), "src")
    getting = asyncio.ensure_future(chunks.get(wire.ChunkRequest("/shared/root/x.bin", "a" * 64, 0)))
    assert (await asyncio.wait_for(StreamReader(server).line(), 5)) is not None
    chunks.close()  # mid-request: not clean, so reset
    assert client_ch.aborted and client_ch.recycled is None and client_t.is_closing()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(server.read(), 5)
    assert server_ch.aborted
    with pytest.raises((Unavailable, asyncio.CancelledError)):
        await asyncio.wait_for(getting, 5)
