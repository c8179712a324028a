"""`Connection.open_stream(hold=True)` (issue 13/18): the HEADERS of a held stream go out with its first bytes in one
write, and never wait longer than `HOLD_MAX` or past a reader waiting on the stream. Real TLS over loopback."""

from __future__ import annotations

import asyncio
import time

import pytest
from h2_certs import LOOPS, h2_client, h2_server, run

from ztm.h2 import Connection, Stream
from ztm.h2 import connection as h2conn

pytestmark = pytest.mark.timeout(30)


HEADERS, DATA = 1, 0


def _types(chunks: list[bytes | bytearray | memoryview]) -> list[int]:
    """The HTTP/2 frame types in `chunks` (whole frames, as the codec queues them)."""
    data, types, i = b"".join(bytes(c) for c in chunks), [], 0
    while i + 9 <= len(data):
        types.append(data[i + 3])
        i += 9 + int.from_bytes(data[i : i + 3], "big")
    return types


async def _echo(stream: Stream, conn: Connection) -> None:
    await stream.respond(200)
    while chunk := await stream.read():
        await stream.write(chunk)
    await stream.end()


async def _answer_at_once(stream: Stream, conn: Connection) -> None:
    await stream.respond(200)
    await stream.write(b"hi", end_stream=True)


@pytest.mark.parametrize("loop", LOOPS)
def test_held_headers_go_out_with_the_first_bytes_in_one_write(loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h2conn, "HOLD_MAX", 30.0)  # only the first write may release them

    async def main() -> None:
        async with h2_server(_echo) as srv, h2_client(srv.port) as conn:
            before = conn.bytes_sent
            stream = await conn.open_stream("CONNECT", "x", hold=True)
            for _ in range(5):  # loop iterations in which an unheld stream's HEADERS would have been written
                await asyncio.sleep(0)
            assert conn.bytes_sent == before, "held HEADERS went out alone"
            writes: list[list[int]] = []  # the frame types of each flush (one transport write each)
            take = conn._codec.take_output
            monkeypatch.setattr(conn._codec, "take_output", lambda: (out := take(), writes.append(_types(out)))[0])
            await stream.write(b"ping")
            status, _ = await stream.response()
            assert status == 200
            assert await stream.read() == b"ping"
            assert writes[0] == [HEADERS, DATA], f"HEADERS and DATA did not go out in one write: {writes}"
            await stream.end()

    run(main(), loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_held_headers_go_out_after_hold_max_without_bytes(loop: str) -> None:
    async def main() -> None:
        seen = asyncio.Event()

        async def handler(stream: Stream, conn: Connection) -> None:
            seen.set()
            await _answer_at_once(stream, conn)

        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            start = time.monotonic()
            await conn.open_stream("CONNECT", "x", hold=True)
            await asyncio.wait_for(seen.wait(), 10)
            assert time.monotonic() - start >= h2conn.HOLD_MAX * 0.9

    run(main(), loop)


@pytest.mark.parametrize("wait", ["read", "response"])
def test_a_reader_waiting_on_a_held_stream_releases_its_headers(wait: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(h2conn, "HOLD_MAX", 30.0)  # the test's timeout (30 s) fails it if only the timer helps

    async def main() -> None:
        async with h2_server(_answer_at_once) as srv, h2_client(srv.port) as conn:
            stream = await conn.open_stream("CONNECT", "x", hold=True)
            if wait == "read":
                assert await asyncio.wait_for(stream.read(), 10) == b"hi"
            else:
                assert (await asyncio.wait_for(stream.response(), 10))[0] == 200

    run(main(), "uvloop")


@pytest.mark.parametrize("loop", LOOPS)
def test_a_held_response_goes_out_with_the_first_bytes(loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's 200 to a target that does not wait for it (`Stream.respond(hold=True)`): one write with the first
    DATA, even though the client's DATA the server consumed meanwhile was credited (WINDOW_UPDATE not due yet)."""
    monkeypatch.setattr(h2conn, "HOLD_MAX", 30.0)
    writes: list[list[int]] = []

    async def handler(stream: Stream, conn: Connection) -> None:
        take = conn._codec.take_output
        monkeypatch.setattr(conn._codec, "take_output", lambda: (out := take(), writes.append(_types(out)))[0])
        await stream.respond(200, hold=True)
        assert await stream.read() == b"early"  # consumed and credited: must not flush the held HEADERS
        for _ in range(5):
            await asyncio.sleep(0)
        assert writes == [], f"the held response went out alone: {writes}"  # else the stream is reset: main fails
        await stream.write(b"answer", end_stream=True)

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            stream = await conn.open_stream("CONNECT", "x")
            await stream.write(b"early")
            assert await asyncio.wait_for(stream.read_all(), 10) == b"answer"
            assert writes and writes[0][:2] == [HEADERS, DATA], f"not in one write: {writes}"

    run(main(), loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_reading_another_streams_data_does_not_release_held_headers(loop: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exit's held accept and the hub's held 200s wait for their side's next write, not for the next bytes the
    peer sends on another stream (issue 13: the hub's 200 to a target otherwise went out alone, before the echo it
    relayed to the entrance)."""
    monkeypatch.setattr(h2conn, "HOLD_MAX", 30.0)
    go = asyncio.Event()

    async def handler(stream: Stream, conn: Connection) -> None:
        if stream.authority == "talker":
            await stream.respond(200)
            await go.wait()
            await stream.write(b"tick")
            await stream.read_all()
            await stream.end()
        else:
            await _echo(stream, conn)

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            talker = await conn.open_stream("CONNECT", "talker")
            assert (await asyncio.wait_for(talker.response(), 10))[0] == 200
            tick = asyncio.ensure_future(talker.read())  # waiting before anything is held
            await asyncio.sleep(0)
            held = await conn.open_stream("CONNECT", "x", hold=True)
            before = conn.bytes_sent
            go.set()
            assert await asyncio.wait_for(tick, 10) == b"tick"  # received, processed, consumed
            for _ in range(5):
                await asyncio.sleep(0)
            assert conn.bytes_sent == before, "reading the other stream's DATA released the held HEADERS"
            writes: list[list[int]] = []
            take = conn._codec.take_output
            monkeypatch.setattr(conn._codec, "take_output", lambda: (out := take(), writes.append(_types(out)))[0])
            await held.write(b"ping")
            assert await asyncio.wait_for(held.read(), 10) == b"ping"
            assert writes[0] == [HEADERS, DATA], f"HEADERS and DATA did not go out in one write: {writes}"
            await held.end()
            await talker.end()

    run(main(), loop)
