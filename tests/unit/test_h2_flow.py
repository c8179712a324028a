"""ztm.h2 flow control: large transfers byte-exact, back-pressure both ways, frame splitting, write atomicity."""

from __future__ import annotations

import asyncio
import hashlib
import os

import h2.config
import h2.connection
import pytest
from h2_certs import LOOPS, h2_client, h2_server, poll, run

from ztm.h2 import Connection, ConnectionClosed, H2Settings, Stream, frames
from ztm.h2 import events as ev
from ztm.h2.codec import H2Codec

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


@pytest.mark.parametrize("loop", LOOPS)
def test_large_transfer_both_ways_is_byte_exact(loop: str) -> None:
    size = 64 * MiB
    up = os.urandom(MiB) * 64
    down = os.urandom(MiB) * 64

    async def handler(stream: Stream, conn: Connection) -> None:
        digest = hashlib.sha256()
        total = 0
        while chunk := await stream.read():
            digest.update(chunk)
            total += len(chunk)
        await stream.respond(200, [("x-sha256", digest.hexdigest()), ("x-size", str(total))])
        await stream.write(down, end_stream=True)

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            stream = await conn.open_stream("POST", "/transfer")
            await stream.write(up, end_stream=True)
            status, headers = await stream.response()
            assert status == 200
            assert dict(headers)["x-size"] == str(size)
            assert dict(headers)["x-sha256"] == hashlib.sha256(up).hexdigest()
            digest = hashlib.sha256()
            total = 0
            while chunk := await stream.read():
                digest.update(chunk)
                total += len(chunk)
            assert total == size
            assert digest.hexdigest() == hashlib.sha256(down).hexdigest()
            assert stream.bytes_sent == size and stream.bytes_received == size

    run(main(), loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_slow_server_reader_back_pressures_the_client_writer(loop: str) -> None:
    window = MiB
    settings = H2Settings(stream_window=window, connection_window=4 * MiB)
    gate = asyncio.Event()
    streams: list[Stream] = []
    data = os.urandom(8 * MiB)

    async def handler(stream: Stream, conn: Connection) -> None:
        streams.append(stream)
        await stream.respond(200)
        await gate.wait()
        digest = hashlib.sha256()
        while chunk := await stream.read(256 * 1024):
            digest.update(chunk)
        await stream.write(digest.hexdigest().encode(), end_stream=True)

    async def main() -> None:
        async with h2_server(handler, settings=settings) as srv, h2_client(srv.port) as conn:
            stream = await conn.open_stream("PUT", "/slow")
            writer = asyncio.create_task(stream.write(data, end_stream=True))
            await poll(lambda: bool(streams) and streams[0]._buffered >= window)
            await asyncio.sleep(0.2)
            assert not writer.done(), "the writer should wait for the window"
            assert streams[0]._buffered <= window
            assert stream.bytes_sent <= window
            gate.set()
            await asyncio.wait_for(writer, 10)
            await stream.response()
            assert await stream.read_all() == hashlib.sha256(data).hexdigest().encode()

    run(main(), loop)


def test_slow_client_reader_back_pressures_the_server_writer() -> None:
    window = MiB
    data = os.urandom(8 * MiB)
    progress: list[Stream] = []
    done = asyncio.Event()

    async def handler(stream: Stream, conn: Connection) -> None:
        progress.append(stream)
        await stream.respond(200)
        await stream.write(data, end_stream=True)
        done.set()

    async def main() -> None:
        settings = H2Settings(stream_window=window, connection_window=4 * MiB)
        async with h2_server(handler) as srv, h2_client(srv.port, settings=settings) as conn:
            stream = await conn.open_stream("GET", "/download", end_stream=True)
            await stream.response()
            await poll(lambda: stream._buffered >= window)
            await asyncio.sleep(0.2)
            assert not done.is_set()
            assert stream._buffered <= window
            assert progress[0].bytes_sent <= window
            received = await stream.read_all(limit=len(data))
            assert received == data
            await asyncio.wait_for(done.wait(), 5)

    run(main())


def test_connection_window_bounds_all_streams_together() -> None:
    conn_window = 2 * MiB
    blob = os.urandom(3 * MiB)

    async def handler(stream: Stream, conn: Connection) -> None:
        await stream.respond(200)
        await stream.write(blob, end_stream=True)

    async def main() -> None:
        settings = H2Settings(stream_window=MiB, connection_window=conn_window)
        async with h2_server(handler) as srv, h2_client(srv.port, settings=settings) as conn:
            streams = [await conn.open_stream("GET", f"/s{i}", end_stream=True) for i in range(4)]
            for s in streams:
                await s.response()
            await poll(lambda: sum(s._buffered for s in streams) >= conn_window - 64 * 1024)
            await asyncio.sleep(0.2)
            assert sum(s._buffered for s in streams) <= conn_window
            assert all(s._buffered <= MiB for s in streams)
            bodies = await asyncio.gather(*(s.read_all(limit=len(blob)) for s in streams))
            assert all(b == blob for b in bodies)

    run(main())


def test_small_peer_frames_and_windows() -> None:
    """A peer with 16 KiB frames and 64 KiB windows (the HTTP/2 defaults) still gets everything, in order."""
    small = H2Settings(max_frame_size=16384, stream_window=65535, connection_window=65535)
    data = os.urandom(3 * MiB + 123)

    async def handler(stream: Stream, conn: Connection) -> None:
        body = await stream.read_all(limit=len(data))
        await stream.respond(200)
        await stream.write(body, end_stream=True)

    async def main() -> None:
        async with h2_server(handler, settings=small) as srv, h2_client(srv.port, settings=small) as conn:
            status, _, body = await conn.request("POST", "/small", body=data, limit=len(data))
            assert status == 200 and body == data

    run(main())


def test_concurrent_writes_on_one_stream_do_not_interleave() -> None:
    a = b"A" * (3 * MiB)
    b = b"B" * (3 * MiB)

    async def handler(stream: Stream, conn: Connection) -> None:
        body = await stream.read_all(limit=8 * MiB)
        await stream.respond(200)
        await stream.write(body, end_stream=True)

    async def main() -> None:
        settings = H2Settings(stream_window=256 * 1024)
        async with h2_server(handler, settings=settings) as srv, h2_client(srv.port) as conn:
            stream = await conn.open_stream("POST", "/x")
            await asyncio.gather(stream.write(a), stream.write(b))
            await stream.end()
            await stream.response()
            body = await stream.read_all(limit=8 * MiB)
            assert body in (a + b, b + a)

    run(main())


def test_writable_buffer_is_copied_when_sent() -> None:
    async def handler(stream: Stream, conn: Connection) -> None:
        body = await stream.read_all(limit=4 * MiB)
        await stream.respond(200)
        await stream.write(hashlib.sha256(body).hexdigest().encode(), end_stream=True)

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            buffer = bytearray(os.urandom(2 * MiB))
            expected = hashlib.sha256(bytes(buffer) * 2).hexdigest().encode()
            stream = await conn.open_stream("POST", "/x")
            await stream.write(memoryview(buffer))
            original = bytes(buffer)
            buffer[:] = b"\0" * len(buffer)  # reuse the buffer after write() returned
            await stream.write(original, end_stream=True)
            await stream.response()
            assert await stream.read_all() == expected

    run(main())


def test_peer_that_never_reads_but_keeps_pinging_is_dropped() -> None:
    """Control-frame answers are not flow controlled; a peer that makes us answer but never reads gets cut off."""

    class StubTransport:
        def __init__(self) -> None:
            self.written = 0
            self.aborted = False

        def write(self, data: bytes) -> None:
            self.written += len(data)

        def writelines(self, chunks: list[bytes]) -> None:
            self.written += sum(map(len, chunks))

        def get_write_buffer_size(self) -> int:
            return self.written

        def is_closing(self) -> bool:
            return self.aborted

        def abort(self) -> None:
            self.aborted = True

        def close(self) -> None:
            self.aborted = True

    async def main() -> None:
        settings = H2Settings(max_frame_size=16384)
        conn = Connection(is_client=False, settings=settings)
        transport = StubTransport()
        conn._transport = transport  # type: ignore[assignment]
        conn._start_h2()
        peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        peer.initiate_connection()
        conn._process(peer.data_to_send())
        assert not conn.closed
        conn.pause_writing()  # the transport says: the peer is not reading
        pings = 0
        while not conn.closed:
            peer.ping(pings.to_bytes(8, "big"))
            conn._process(peer.data_to_send())
            pings += 1
            assert pings < 100_000
        assert transport.aborted
        assert "does not read" in conn.close_reason
        assert transport.written > 16 * 16384

    run(main())


def test_blocked_writer_and_reader_wake_up_on_close_and_cancel_cleanly() -> None:
    gate = asyncio.Event()

    async def handler(stream: Stream, conn: Connection) -> None:
        await stream.respond(200)
        await gate.wait()  # never reads: the client's writer runs out of window

    async def main() -> None:
        settings = H2Settings(stream_window=65535)
        async with h2_server(handler, settings=settings) as srv, h2_client(srv.port) as conn:
            stream = await conn.open_stream("POST", "/blocked")
            await stream.response()
            # a cancelled read leaves the stream usable
            reader = asyncio.create_task(stream.read())
            await asyncio.sleep(0.02)
            reader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await reader
            # a cancelled blocked write too
            writer = asyncio.create_task(stream.write(b"x" * MiB))
            await poll(lambda: stream.bytes_sent >= 65535)
            writer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await writer
            assert not conn._blocked
            # a writer blocked on the window fails with ConnectionClosed when the connection closes
            writer = asyncio.create_task(stream.write(b"y" * MiB))
            reader = asyncio.create_task(stream.read())
            await asyncio.sleep(0.05)
            assert not writer.done() and not reader.done()
            conn.close()
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(writer, 5)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(reader, 5)
            gate.set()

    run(main())


def test_received_data_is_reported_in_place_without_copies() -> None:
    """The receive path hands DATA payloads on as views of the read buffer: no per-frame copy or formatting."""
    server = H2Codec(client=False, settings=H2Settings())
    server.initiate()
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    client.initiate_connection()
    client.send_headers(1, [(":method", "POST"), (":scheme", "https"), (":authority", "x"), (":path", "/")])
    events = server.receive(client.data_to_send())
    assert [type(e).__name__ for e in events] == ["SettingsChanged", "RequestReceived"]
    client.receive_data(server.data_to_send())

    payload = os.urandom(60000)
    read_buffer = bytearray(frames.data_header(1, len(payload), False) + payload)
    events = server.receive(memoryview(read_buffer))
    assert len(events) == 1 and isinstance(events[0], ev.DataReceived)
    assert events[0].data == payload and events[0].flow_controlled_length == len(payload)
    assert events[0].data.obj is read_buffer  # a view of the buffer it arrived in, not a copy
    # a frame split over two reads is reported in two parts, each a view of its own read
    first, second = bytearray(read_buffer[:30000]), bytearray(read_buffer[30000:])
    parts = server.receive(first) + server.receive(second)
    assert [p.data.obj for p in parts if isinstance(p, ev.DataReceived)] == [first, second]
    assert b"".join(bytes(p.data) for p in parts if isinstance(p, ev.DataReceived)) == payload
