"""ztm.h2 callback API for relays: `Stream.set_sink` (pause/resume, credit), `write_nowait`, `end_nowait`, and the
lock-free write turn of `write()`/`end()`."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
from h2_certs import LOOPS, h2_client, h2_server, poll, run

from ztm.h2 import Connection, H2Error, H2Settings, Stream, StreamReset

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


class Sink:
    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        self.received = 0
        self.outcome: asyncio.Future[H2Error | None] = asyncio.get_running_loop().create_future()
        self.pause_after: int | None = None
        self.stream: Stream | None = None

    def stream_data(self, data: bytes) -> None:
        assert not self.outcome.done()
        self.digest.update(data)
        self.received += len(data)
        if self.pause_after is not None and self.received >= self.pause_after and self.stream is not None:
            self.stream.pause_sink()

    def stream_end(self) -> None:
        self.outcome.set_result(None)

    def stream_error(self, exc: H2Error) -> None:
        self.outcome.set_result(exc)


@pytest.mark.parametrize("loop", LOOPS)
def test_sink_gets_everything_and_pausing_it_back_pressures_the_sender(loop: str) -> None:
    window = MiB
    settings = H2Settings(stream_window=window, connection_window=4 * MiB)
    data = os.urandom(6 * MiB)
    sinks: list[Sink] = []

    async def handler(stream: Stream, conn: Connection) -> None:
        await stream.respond(200)
        sink = Sink()
        sink.stream = stream
        sink.pause_after = MiB // 2
        sinks.append(sink)
        stream.set_sink(sink)
        with pytest.raises(H2Error):
            await stream.read()
        assert await sink.outcome is None
        await stream.write(sink.digest.hexdigest().encode(), end_stream=True)

    async def main() -> None:
        async with h2_server(handler, settings=settings) as srv, h2_client(srv.port) as conn:
            stream = await conn.open_stream("PUT", "/sink")
            writer = asyncio.create_task(stream.write(data, end_stream=True))
            await poll(lambda: bool(sinks) and sinks[0].received >= MiB // 2)
            await asyncio.sleep(0.2)
            assert not writer.done(), "a paused sink withholds the credit: the writer must wait"
            # what the sink got before pausing, plus at most one window buffered in the stream
            assert stream.bytes_sent <= sinks[0].received + window
            sink = sinks[0]
            sink.pause_after = None
            assert sink.stream is not None
            sink.stream.resume_sink()
            await asyncio.wait_for(writer, 10)
            await stream.response()
            assert await stream.read_all() == hashlib.sha256(data).hexdigest().encode()
            assert sink.received == len(data)

    run(main(), loop)


def test_sink_gets_the_reset_and_write_nowait_stops_at_the_window() -> None:
    window = 64 * 1024
    settings = H2Settings(stream_window=window, connection_window=4 * MiB)
    outcome: list[H2Error | None] = []
    server_side: list[Stream] = []

    async def handler(stream: Stream, conn: Connection) -> None:
        await stream.respond(200)
        server_side.append(stream)
        sink = Sink()
        stream.set_sink(sink)
        outcome.append(await sink.outcome)

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port, settings=settings) as conn:
            stream = await conn.open_stream("CONNECT", "x:y")
            await stream.response()
            assert stream.write_nowait(b"hello") == 5
            await poll(lambda: bool(server_side))
            big = os.urandom(4 * window)
            sent = server_side[0].write_nowait(big)
            assert 0 < sent <= window  # the client's stream window, not more
            assert server_side[0].write_nowait(big[sent:]) == 0  # window exhausted until the client reads
            chunk = await stream.read(window)
            assert chunk == big[: len(chunk)]
            stream.reset()
            await poll(lambda: bool(outcome))
            assert isinstance(outcome[0], StreamReset)
            with pytest.raises(H2Error):
                stream.write_nowait(b"x")

    run(main())


def test_end_nowait_and_queued_writers_keep_order_and_survive_cancellation() -> None:
    async def handler(stream: Stream, conn: Connection) -> None:
        body = await stream.read_all(limit=16 * MiB)
        await stream.respond(200)
        await stream.write(body, end_stream=True)

    async def main() -> None:
        settings = H2Settings(stream_window=128 * 1024)
        async with h2_server(handler, settings=settings) as srv, h2_client(srv.port) as conn:
            stream = await conn.open_stream("POST", "/x")
            first = asyncio.create_task(stream.write(b"A" * (2 * MiB)))
            await asyncio.sleep(0)
            cancelled = asyncio.create_task(stream.write(b"C" * 10))
            third = asyncio.create_task(stream.write(b"B" * MiB))
            await asyncio.sleep(0)
            assert stream.write_nowait(b"nope") == 0  # a write() is in progress
            cancelled.cancel()
            await asyncio.gather(first, third)
            assert cancelled.cancelled()
            stream.end_nowait()
            await stream.response()
            assert await stream.read_all(limit=16 * MiB) == b"A" * (2 * MiB) + b"B" * MiB

    run(main())
