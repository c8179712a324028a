"""ztm.h2 connection set-up: certificates, ALPN, on_connect, timeouts and the errors `connect` reports."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time

import pytest
from h2_certs import LOOPS, h2_client, h2_server, pki, run

from ztm.h2 import Connection, H2Error, Stream, connect

pytestmark = pytest.mark.timeout(30)


async def ok(stream: Stream, conn: Connection) -> None:
    await stream.respond(200, end_stream=True)


def _no_loud_logs(caplog: pytest.LogCaptureFixture) -> None:
    loud = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not loud, [r.getMessage() for r in loud]
    assert not [r for r in caplog.records if r.name == "ztm.h2" and r.exc_info]


@pytest.mark.parametrize("loop", LOOPS)
def test_client_without_certificate_is_refused(loop: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with h2_server(ok) as srv:
            with pytest.raises(H2Error, match=r"127\.0\.0\.1:\d+ closed the connection during the handshake") as info:
                async with h2_client(srv.port, cert="none"):
                    pass
            assert "certificate" in str(info.value)
            assert srv.connections == []  # on_connect never ran

    with caplog.at_level(logging.DEBUG):
        run(main(), loop)
    _no_loud_logs(caplog)
    assert any("TLS handshake from" in r.getMessage() for r in caplog.records if r.name == "ztm.h2")


@pytest.mark.parametrize("loop", LOOPS)
def test_client_certificate_from_another_ca_is_refused(loop: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with h2_server(ok) as srv:
            with pytest.raises(H2Error, match="closed the connection during the handshake"):
                async with h2_client(srv.port, cert="other"):
                    pass
            assert srv.connections == []
            # a good client still gets in
            async with h2_client(srv.port) as conn:
                assert (await conn.request("GET", "/"))[0] == 200

    with caplog.at_level(logging.DEBUG):
        run(main(), loop)
    _no_loud_logs(caplog)


def test_client_that_does_not_trust_the_server() -> None:
    async def main() -> None:
        async with h2_server(ok) as srv:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.load_verify_locations(pki().other_ca)
            ctx.load_cert_chain(pki().client_cert, pki().client_key)
            with pytest.raises(H2Error, match="certificate verify failed"):
                await connect("127.0.0.1", srv.port, ctx, timeout=5)

    run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_on_connect_false_closes_the_connection(loop: str) -> None:
    seen: list[bytes | None] = []

    async def refuse(conn: Connection) -> bool:
        seen.append(conn.peer_cert_der)
        await asyncio.sleep(0.01)
        return False

    async def main() -> None:
        async with h2_server(ok, on_connect=refuse) as srv:
            with pytest.raises(H2Error, match="closed the connection during the handshake"):
                await connect("127.0.0.1", srv.port, pki().client_context(), timeout=5)
            assert seen == [pki().client_der]
            await asyncio.wait_for(srv.connections[0].wait_closed(), 5)
            assert srv.connections[0].closed

    run(main(), loop)


def test_on_connect_true_lets_requests_through() -> None:
    async def accept(conn: Connection) -> bool:
        await asyncio.sleep(0.05)  # e.g. a database lookup; the client's first request waits
        return conn.peer_cert_der == pki().client_der

    async def main() -> None:
        async with h2_server(ok, on_connect=accept) as srv, h2_client(srv.port) as conn:
            assert (await conn.request("GET", "/"))[0] == 200

    run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_server_without_h2_alpn(loop: str) -> None:
    async def main() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(pki().server_cert, pki().server_key)
        ctx.set_alpn_protocols(["http/1.1"])

        async def serve_http11(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await reader.read(100)
            writer.close()

        server = await asyncio.start_server(serve_http11, "127.0.0.1", 0, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(H2Error, match=r"does not speak HTTP/2 over TLS \(ALPN\)"):
                await connect("127.0.0.1", port, pki().client_context(), timeout=5)
        finally:
            server.close()
            await server.wait_closed()

    run(main(), loop)


@pytest.mark.parametrize("loop", LOOPS)
def test_plain_http11_server(loop: str) -> None:
    async def main() -> None:
        async def http11(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1000)
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(http11, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            start = time.monotonic()
            with pytest.raises(H2Error, match=r"TLS handshake with 127\.0\.0\.1:\d+ failed") as info:
                await connect("127.0.0.1", port, pki().client_context(), timeout=2)
            assert time.monotonic() - start < 2.5
            assert "TLS server" in str(info.value)
        finally:
            server.close()
            await server.wait_closed()

    run(main(), loop)


def test_silent_server_times_out() -> None:
    async def main() -> None:
        writers: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)
            await reader.read()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            start = time.monotonic()
            with pytest.raises(H2Error, match=r"no answer from 127\.0\.0\.1:\d+ within 0\.3s"):
                await connect("127.0.0.1", port, pki().client_context(), timeout=0.3)
            assert time.monotonic() - start < 1.5
        finally:
            for w in writers:
                w.close()
            server.close()
            await server.wait_closed()

    run(main())


def test_connection_refused_and_unknown_host() -> None:
    async def main() -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with pytest.raises(H2Error, match=rf"connection refused by 127\.0\.0\.1:{port}"):
            await connect("127.0.0.1", port, pki().client_context(), timeout=5)
        with pytest.raises(H2Error, match=r"cannot resolve nonexistent\.invalid"):
            await connect("nonexistent.invalid", 8888, pki().client_context(), timeout=5)

    run(main())


@pytest.mark.parametrize("loop", LOOPS)
def test_server_drops_silent_and_non_h2_clients_quietly(loop: str, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with h2_server(ok, handshake_timeout=0.3) as srv:
            # a TCP client that never starts TLS
            reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
            start = time.monotonic()
            assert await asyncio.wait_for(reader.read(), 5) == b""
            assert time.monotonic() - start < 2
            writer.close()
            await writer.wait_closed()
            # a TLS client that offers only http/1.1
            ctx = pki().client_context()
            ctx.set_alpn_protocols(["http/1.1"])
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", srv.port, ssl=ctx)
            except (ssl.SSLError, ConnectionError):
                pass  # refused during the handshake: fine too
            else:
                data = b"x"
                try:
                    data = await asyncio.wait_for(reader.read(), 5)
                except (ssl.SSLError, ConnectionError):
                    data = b""
                assert data == b""
                writer.close()
                with contextlib.suppress(ssl.SSLError, ConnectionError):
                    await writer.wait_closed()
            assert srv.connections == []

    with caplog.at_level(logging.DEBUG):
        run(main(), loop)
    _no_loud_logs(caplog)


def test_ssl_context_is_asked_for_each_connection() -> None:
    """The hub swaps contexts at runtime (e.g. after an eviction) without restarting the listener."""
    trust = {"ca": pki().ca}
    made = []

    def context() -> ssl.SSLContext:
        made.append(trust["ca"])
        return pki().server_context(client_ca=trust["ca"])

    async def main() -> None:
        async with h2_server(ok, ssl_context=context) as srv:
            async with h2_client(srv.port) as conn:
                assert (await conn.request("GET", "/"))[0] == 200
            trust["ca"] = pki().other_ca
            with pytest.raises(H2Error):
                async with h2_client(srv.port):
                    pass
            async with h2_client(srv.port, cert="other") as conn:
                assert (await conn.request("GET", "/"))[0] == 200
            assert made == [pki().ca, pki().other_ca, pki().other_ca]

    run(main())
