"""ztm.h2 over real loopback sockets with TLS 1.3 and client certificates: requests, streams, resets, closing."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from h2_certs import LOOPS, h2_client, h2_server, pki, run

from ztm.errors import NotFound
from ztm.h2 import Connection, ConnectionClosed, H2Error, Stream, StreamReset

pytestmark = pytest.mark.timeout(30)


async def echo(stream: Stream, conn: Connection) -> None:
    """Answers with the request body reversed and the request line in headers."""
    body = await stream.read_all()
    await stream.respond(
        200,
        [("x-method", stream.method or ""), ("x-path", stream.path or ""), ("x-seen", stream.header("x-test") or "")],
    )
    await stream.write(body[::-1], end_stream=True)


@pytest.mark.parametrize("loop", LOOPS)
def test_request_response_with_bodies(loop: str) -> None:
    async def main() -> None:
        async with h2_server(echo) as srv, h2_client(srv.port) as conn:
            status, headers, body = await conn.request(
                "POST", "/echo?x=1", body=b"hello world", headers=[("x-test", "yes")]
            )
            assert status == 200
            assert body == b"dlrow olleh"
            assert dict(headers)["x-method"] == "POST"
            assert dict(headers)["x-path"] == "/echo?x=1"
            assert dict(headers)["x-seen"] == "yes"
            status, _, body = await conn.request("GET", "/empty")
            assert (status, body) == (200, b"")
            assert conn.is_client and not conn.closed
            assert conn.bytes_sent > 0 and conn.bytes_received > 0

    run(main(), loop)


def test_many_concurrent_requests() -> None:
    async def handler(stream: Stream, conn: Connection) -> None:
        body = await stream.read_all()
        await asyncio.sleep(0.001 * (int(body) % 7))
        await stream.respond(200)
        await stream.write(b"r" + body, end_stream=True)

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            results = await asyncio.gather(*(conn.request("POST", f"/n/{i}", body=str(i).encode()) for i in range(300)))
            assert [r[2] for r in results] == [b"r%d" % i for i in range(300)]
            assert all(r[0] == 200 for r in results)
            assert srv.connections[0].open_streams == 0
            assert conn.open_streams == 0

    run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_event_stream_while_other_requests_proceed(loop: str) -> None:
    async def handler(stream: Stream, conn: Connection) -> None:
        if stream.path == "/events":
            await stream.respond(200, [("content-type", "application/x-ndjson")])
            for i in range(5):
                await stream.write(json.dumps({"event": i}).encode() + b"\n")
                await asyncio.sleep(0.02)
            await stream.end()
        else:
            await echo(stream, conn)

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            events = await conn.open_stream("GET", "/events", end_stream=True)
            status, headers = await events.response()
            assert status == 200 and ("content-type", "application/x-ndjson") in headers
            assert events.status == 200 and events.header(":status") == "200"
            lines: list[dict[str, int]] = []
            buffer = b""
            calls = 0
            while True:
                chunk = await events.read()
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    lines.append(json.loads(line))
                # other calls go through while the event stream is open
                _, _, body = await conn.request("POST", "/x", body=b"ab")
                assert body == b"ba"
                calls += 1
            assert lines == [{"event": i} for i in range(5)]
            assert calls >= 5
            await events.wait_closed()

    run(main(), loop)


def test_half_close_then_read_response() -> None:
    async def handler(stream: Stream, conn: Connection) -> None:
        received = await stream.read_all()  # returns once the client ended its side
        await stream.respond(200)
        for _ in range(3):
            await stream.write(b"%d;" % len(received))
        await stream.end()

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            stream = await conn.open_stream("POST", "/upload")
            await stream.write(b"x" * 1000)
            await stream.write(memoryview(b"y" * 500))
            await stream.end()
            await stream.end()  # idempotent
            with pytest.raises(H2Error, match="already ended"):
                await stream.write(b"more")
            status, _ = await stream.response()
            assert status == 200
            assert await stream.read_all() == b"1500;1500;1500;"
            assert stream.bytes_sent == 1500 and stream.bytes_received == 15
            await stream.wait_closed()
            assert stream.closed

    run(main())


def test_client_reset_reaches_server_handler() -> None:
    seen: asyncio.Queue[BaseException] = asyncio.Queue()

    async def handler(stream: Stream, conn: Connection) -> None:
        await stream.respond(200)
        try:
            while await stream.read():
                pass
        except StreamReset as exc:
            await seen.put(exc)
            raise

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            stream = await conn.open_stream("POST", "/r")
            await stream.write(b"data")
            await stream.response()
            stream.reset()
            stream.reset()  # idempotent
            exc = await asyncio.wait_for(seen.get(), 5)
            assert isinstance(exc, StreamReset) and exc.error_code == 8
            assert "CANCEL" in str(exc)
            with pytest.raises(StreamReset):
                await stream.read()
            with pytest.raises(StreamReset):
                await stream.write(b"x")
            # the connection is still fine
            _, _, body = await conn.request("GET", "/r2")
            assert body == b""

    run(main())


def test_server_reset_reaches_client() -> None:
    async def handler(stream: Stream, conn: Connection) -> None:
        await stream.respond(200)
        await stream.write(b"partial")
        stream.reset(0x2)  # INTERNAL_ERROR

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            stream = await conn.open_stream("GET", "/r", end_stream=True)
            assert (await stream.response())[0] == 200
            with pytest.raises(StreamReset) as info:
                while await stream.read():
                    pass
            assert info.value.error_code == 2
            assert "INTERNAL_ERROR" in str(info.value) and "by the peer" in str(info.value)
            # request() also turns a reset into StreamReset
            with pytest.raises(StreamReset):
                await conn.request("GET", "/r")

    run(main())


def test_handler_errors() -> None:
    async def handler(stream: Stream, conn: Connection) -> None:
        if stream.path == "/boom":
            raise RuntimeError("boom")
        if stream.path == "/missing":
            raise NotFound("no such endpoint: x")
        if stream.path == "/late":
            await stream.respond(200)
            await stream.write(b"some")
            raise RuntimeError("late boom")
        if stream.path == "/silent":
            return
        await stream.respond(204, end_stream=True)

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            status, _, body = await conn.request("GET", "/boom")
            assert status == 500 and json.loads(body) == {"error": "internal error"}
            status, _, body = await conn.request("GET", "/missing")
            assert status == 404 and json.loads(body) == {"error": "no such endpoint: x", "code": "not_found"}
            status, _, body = await conn.request("GET", "/silent")
            assert status == 500
            with pytest.raises(StreamReset):
                await conn.request("GET", "/late")
            status, _, body = await conn.request("GET", "/ok")
            assert (status, body) == (204, b"")

    run(main())


def test_handler_traceback_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(stream: Stream, conn: Connection) -> None:
        raise RuntimeError("kaboom")

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            assert (await conn.request("GET", "/x"))[0] == 500

    with caplog.at_level("ERROR", logger="ztm.h2"):
        run(main())
    records = [r for r in caplog.records if r.name == "ztm.h2" and r.exc_info]
    assert records and "kaboom" in str(records[0].exc_info[1])


def test_server_answers_early_and_cancels_request_body() -> None:
    async def handler(stream: Stream, conn: Connection) -> None:
        await stream.respond(413, end_stream=True)  # never reads the body

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            status, _, body = await conn.request("POST", "/big", body=b"z" * (8 << 20))
            assert (status, body) == (413, b"")
            status, _, _ = await conn.request("POST", "/big", body=b"z")
            assert status == 413

    run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_connect_tunnel_is_a_bidirectional_byte_stream(loop: str) -> None:
    async def handler(stream: Stream, conn: Connection) -> None:
        assert stream.method == "CONNECT" and stream.path is None
        await stream.respond(200, [("x-target", stream.authority or "")])
        while chunk := await stream.read():
            await stream.write(chunk.upper())
        await stream.end()

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            tunnel = await conn.open_stream("CONNECT", "ep-1234:tunnel")
            status, headers = await tunnel.response()
            assert status == 200 and dict(headers)["x-target"] == "ep-1234:tunnel"
            for word in (b"one", b"two", b"three"):
                await tunnel.write(word)
                assert await tunnel.read() == word.upper()
            await tunnel.end()
            assert await tunnel.read() == b""
            await tunnel.wait_closed()

    run(main(), loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_ping_rtt(loop: str) -> None:
    async def main() -> None:
        async with h2_server(echo) as srv, h2_client(srv.port) as conn:
            rtts = [await conn.ping() for _ in range(5)]
            assert all(0 < rtt < 1 for rtt in rtts)

    run(main(), loop)


def test_peer_certificate_on_server_side() -> None:
    async def handler(stream: Stream, conn: Connection) -> None:
        assert conn.peer_cert_der == pki().client_der
        await stream.respond(200, end_stream=True)

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            assert (await conn.request("GET", "/who"))[0] == 200
            server_conn = srv.connections[0]
            assert server_conn.peer_cert_der == pki().client_der
            assert server_conn.peer_address is not None and server_conn.peer_address[0] == "127.0.0.1"
            assert not server_conn.is_client
            assert conn.peer_cert_der is not None and conn.peer_cert_der != pki().client_der

    run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_connection_loss_fails_pending_operations(loop: str) -> None:
    async def handler(stream: Stream, conn: Connection) -> None:
        if stream.path == "/respond":
            await stream.respond(200)
        await asyncio.Event().wait()  # hold the stream open; cancelled when the connection goes

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            closed: list[Connection] = []
            conn.add_close_callback(closed.append)
            reading = await conn.open_stream("GET", "/respond", end_stream=True)
            await reading.response()
            waiting = await conn.open_stream("GET", "/never", end_stream=True)
            read_task = asyncio.create_task(reading.read())
            response_task = asyncio.create_task(waiting.response())
            await asyncio.sleep(0.05)
            assert not read_task.done() and not response_task.done()
            server_conn = srv.connections[0]
            assert server_conn._transport is not None
            server_conn._transport.abort()  # the connection dies without GOAWAY
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(read_task, 5)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(response_task, 5)
            await asyncio.wait_for(conn.wait_closed(), 5)
            assert conn.closed and closed == [conn]
            with pytest.raises(ConnectionClosed):
                await conn.request("GET", "/")
            with pytest.raises(ConnectionClosed):
                await conn.ping()
            late: list[Connection] = []
            conn.add_close_callback(late.append)
            await asyncio.sleep(0)
            assert late == [conn]
            assert len(closed) == 1
            await asyncio.wait_for(server_conn.wait_closed(), 5)

    run(main(), loop)


def test_server_close_sends_goaway() -> None:
    async def main() -> None:
        async with h2_server(echo) as srv, h2_client(srv.port) as conn:
            assert (await conn.request("GET", "/"))[0] == 200
            stream = await conn.open_stream("POST", "/pending")
            srv.connections[0].close(0, "hub shutting down")
            with pytest.raises(ConnectionClosed) as info:
                await asyncio.wait_for(stream.response(), 5)
            assert "GOAWAY" in str(info.value) or "closed" in str(info.value)
            await asyncio.wait_for(conn.wait_closed(), 5)
            assert "hub shutting down" in conn.close_reason

    run(main())


def test_client_close_sends_goaway_and_server_connection_closes() -> None:
    async def main() -> None:
        async with h2_server(echo) as srv, h2_client(srv.port) as conn:
            assert (await conn.request("GET", "/"))[0] == 200
            server_conn = srv.connections[0]
            conn.close(0, "bye")
            conn.close()  # idempotent
            await asyncio.wait_for(server_conn.wait_closed(), 5)
            assert server_conn.closed
            assert "GOAWAY" in server_conn.close_reason and "bye" in server_conn.close_reason

    run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_keepalive_closes_a_connection_whose_peer_does_not_answer(loop: str) -> None:
    async def main() -> None:
        async with h2_server(echo) as srv, h2_client(srv.port, keepalive=0.05, keepalive_timeout=0.2) as conn:
            assert (await conn.request("GET", "/"))[0] == 200
            await asyncio.sleep(0.2)  # a few keepalive rounds, all answered
            assert not conn.closed
            stream = await conn.open_stream("GET", "/hang")
            server_transport = srv.connections[0]._transport
            assert server_transport is not None
            server_transport.pause_reading()  # the hub stops answering
            start = time.monotonic()
            with pytest.raises(ConnectionClosed, match="PING"):
                await asyncio.wait_for(stream.response(), 5)
            assert time.monotonic() - start < 2
            assert conn.closed
            if not server_transport.is_closing():
                server_transport.resume_reading()  # let the server see the client go

    run(main(), loop)


@pytest.mark.parametrize("receiving", [True, False], ids=["bytes-arriving", "silent"])
def test_keepalive_keeps_a_connection_that_is_receiving_while_ping_answers_are_late(receiving: bool) -> None:
    async def trickle(stream: Stream, conn: Connection) -> None:
        await stream.respond(200)
        while receiving:
            await stream.write(b"x" * 100)
            await asyncio.sleep(0.02)  # the server's pace: a slow download
        await asyncio.sleep(10)

    async def main() -> None:
        async with h2_server(trickle) as srv, h2_client(srv.port, keepalive=0.05, keepalive_timeout=0.2) as conn:
            stream = await conn.open_stream("GET", "/slow-download")
            await stream.response()
            # The server stops answering PINGs, as if each answer waited behind data on a slow link.
            srv.connections[0]._codec._on_ping = lambda flags, sid, payload: None
            deadline = time.monotonic() + 1.5  # several keepalive rounds, each one unanswered
            while time.monotonic() < deadline and not conn.closed:
                await asyncio.sleep(0.05)
            assert conn.closed is not receiving, conn.close_reason

    run(main())


def test_request_timeout() -> None:
    async def handler(stream: Stream, conn: Connection) -> None:
        await asyncio.sleep(10)

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            start = time.monotonic()
            with pytest.raises(H2Error, match=r"no answer within 0\.2s"):
                await conn.request("GET", "/slow", timeout=0.2)
            assert time.monotonic() - start < 2
            assert conn.open_streams == 0  # the stream was reset

    run(main())


def test_read_all_limit_and_response_on_server_stream() -> None:
    async def handler(stream: Stream, conn: Connection) -> None:
        with pytest.raises(H2Error, match="only for streams opened by a client"):
            await stream.response()
        with pytest.raises(H2Error, match="respond"):
            await stream.write(b"x")
        await stream.respond(200)
        with pytest.raises(H2Error, match="already sent"):
            await stream.respond(200)
        await stream.write(b"a" * 5000, end_stream=True)

    async def main() -> None:
        async with h2_server(handler) as srv, h2_client(srv.port) as conn:
            with pytest.raises(H2Error, match="body exceeds 1000 bytes"):
                await conn.request("GET", "/big", limit=1000)
            status, _, body = await conn.request("GET", "/big", limit=5000)
            assert (status, len(body)) == (200, 5000)
            with pytest.raises(H2Error, match="only for client"):
                await srv.connections[0].open_stream("GET", "/")

    run(main())
