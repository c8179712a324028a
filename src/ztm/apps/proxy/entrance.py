"""The proxy entrance: one client connection on the listen port, SOCKS5 or HTTP told apart by its first byte.

`serve_client` reads the handshake with the sans-IO parsers (`socks`, `http1`) under a deadline, asks the app for a
stream to a matching exit, answers the client in its own protocol (a SOCKS5 reply code, an HTTP status with a
one-line reason), then splices the socket with the stream (the tunnel app's `splice_socket`). Bytes the client sent
after its handshake go to the stream first; a plain HTTP request goes with the opening itself (early data,
`ztm.agent.early`), while SOCKS5 and CONNECT clients wait for the exit's answer, which their reply code needs.
A SOCKS5 UDP ASSOCIATE gets a UDP relay socket on the same address; each destination it sends to becomes one
stream (`udp/HOST/PORT`) carrying length-prefixed datagrams, for as long as the client keeps its TCP connection open.

With credentials configured (`ProxyApp.auth`), a SOCKS5 client must take method 0x02 (RFC 1929 username/password;
offering only "no authentication" gets 0xFF, wrong credentials status 0x01, and the connection closes) and an HTTP
client must send `Proxy-Authorization: Basic` (407 with `Proxy-Authenticate: Basic realm="ztm"` otherwise). Any
connection, and each UDP destination, may go over a direct channel instead of the hub (`ProxyApp.open_to_exit`);
the splice and the datagram framing are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ztm import h2
from ztm.agent.e2estream import E2EStream
from ztm.agent.early import EarlyData
from ztm.apps import paths
from ztm.apps.proxy import http1, socks, spec
from ztm.apps.proxy.spec import Destination, Refused
from ztm.apps.tunnel.app import UDP_QUEUE, udp_flow
from ztm.apps.tunnel.pipe import MAX_DATAGRAM, reset_socket

if TYPE_CHECKING:
    from ztm.apps.proxy.app import Exit, ProxyApp

log = logging.getLogger("ztm.proxy")

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a client has to send its whole SOCKS handshake or HTTP request head."""
LINGER = 2.0
"""Seconds (and at most 1 MiB) of a refused client's further input read and dropped after the answer, so that the
answer is not lost to a reset."""
MAX_FLOWS = 64
"""UDP destinations per SOCKS association."""

T = TypeVar("T")


class _Closed(Exception):
    """The client ended or stalled during the handshake: close without an answer."""


class _Client:
    def __init__(self, app: ProxyApp, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.app = app
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.deadline = asyncio.get_running_loop().time() + HANDSHAKE_TIMEOUT

    async def fill(self) -> None:
        remaining = self.deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise _Closed("handshake timeout")
        try:
            data = await asyncio.wait_for(self.reader.read(1 << 16), remaining)
        except TimeoutError:
            raise _Closed("handshake timeout") from None
        except OSError as exc:
            raise _Closed(str(exc)) from None
        if not data:
            raise _Closed("the client closed the connection")
        self.buf += data

    async def parse(self, parser: Callable[[bytes], tuple[T, int] | None]) -> T:
        while True:
            found = parser(bytes(self.buf))
            if found is not None:
                message, used = found
                del self.buf[:used]
                return message
            await self.fill()

    def rest(self) -> bytes:
        data = bytes(self.buf)
        self.buf.clear()
        return data

    async def finish(self, answer: bytes) -> None:
        """Send a final answer, end our side, drain what the client still sends for a moment, close."""
        writer = self.writer
        try:
            writer.write(answer)
            if writer.can_write_eof():
                writer.write_eof()
            await writer.drain()
            dropped = 0
            async with asyncio.timeout(LINGER):
                while dropped < (1 << 20) and (data := await self.reader.read(1 << 16)):
                    dropped += len(data)
        except (OSError, TimeoutError):
            pass
        writer.close()

    # ---- SOCKS5 --------------------------------------------------------------------------------------------

    async def serve_socks(self) -> None:
        app, c = self.app, self.app.counters
        try:
            greeting = await self.parse(socks.parse_greeting)
        except socks.SocksError as exc:
            c["entrance:malformed"] += 1
            log.info("mesh %s: proxy client %s: %s", app.ctx.mesh, self.peer, exc.message)
            await self.finish(socks.choice(socks.NO_ACCEPTABLE))
            return
        if app.auth is not None:
            if not await self.socks_login(greeting):
                return
        elif not greeting.no_auth:
            c["entrance:malformed"] += 1
            await self.finish(socks.choice(socks.NO_ACCEPTABLE))
            return
        else:
            self.writer.write(socks.choice(socks.NO_AUTH))
        try:
            request = await self.parse(socks.parse_request)
        except socks.SocksError as exc:
            c["entrance:malformed"] += 1
            log.info("mesh %s: proxy client %s: %s", app.ctx.mesh, self.peer, exc.message)
            await self.finish(socks.reply(exc.reply if exc.reply is not None else socks.GENERAL_FAILURE))
            return
        if request.command == socks.UDP_ASSOCIATE:
            await self.udp_associate(request)
            return
        dest = request.destination
        assert dest is not None
        try:
            stream, exit_ep = await app.open_to_exit(dest, "tcp")
        except Refused as refused:
            self.refused(f"socks {dest}", refused)
            await self.finish(socks.reply(socks.REPLY_OF.get(refused.code, socks.GENERAL_FAILURE)))
            return
        c["entrance:streams"] += 1
        self.writer.write(socks.reply(socks.SUCCEEDED))
        await self.splice(stream, exit_ep, self.rest())

    async def socks_login(self, greeting: socks.Greeting) -> bool:
        """RFC 1929: True once the client's user name and password matched; else it was answered and closed."""
        app, c = self.app, self.app.counters
        if not greeting.userpass:
            c["entrance:unauthorized"] += 1
            log.info("mesh %s: proxy client %s: no username/password method offered", app.ctx.mesh, self.peer)
            await self.finish(socks.choice(socks.NO_ACCEPTABLE))
            return False
        self.writer.write(socks.choice(socks.USERPASS))
        try:
            creds = await self.parse(socks.parse_userpass)
        except socks.SocksError as exc:
            c["entrance:malformed"] += 1
            log.info("mesh %s: proxy client %s: %s", app.ctx.mesh, self.peer, exc.message)
            await self.finish(socks.auth_status(socks.AUTH_FAILED))
            return False
        if not await app.authenticate(creds):
            self.unauthorized(creds, "socks")
            await self.finish(socks.auth_status(socks.AUTH_FAILED))
            return False
        self.writer.write(socks.auth_status(socks.AUTH_OK))
        return True

    def unauthorized(self, creds: spec.Credentials | None, protocol: str) -> None:
        self.app.counters["entrance:unauthorized"] += 1
        who = "no credentials" if creds is None else f"wrong user name or password (user {creds.user[:64]!r})"
        log.info("mesh %s: proxy client %s (%s): %s", self.app.ctx.mesh, self.peer, protocol, who)

    async def udp_associate(self, request: socks.Request) -> None:
        loop = asyncio.get_running_loop()
        client_ip = str(self.writer.get_extra_info("peername")[0])
        local_ip = str(self.writer.get_extra_info("sockname")[0])
        relay = _UdpRelay(self.app, client_ip, request.port)
        try:
            transport, _ = await loop.create_datagram_endpoint(lambda: relay, local_addr=(local_ip, 0))
        except OSError as exc:
            log.info("mesh %s: proxy UDP relay for %s: %s", self.app.ctx.mesh, self.peer, exc)
            await self.finish(socks.reply(socks.GENERAL_FAILURE))
            return
        self.app.counters["entrance-udp:associations"] += 1
        bound = transport.get_extra_info("sockname")
        try:
            self.writer.write(socks.reply(socks.SUCCEEDED, str(bound[0]), int(bound[1])))
            with contextlib.suppress(OSError):
                while await self.reader.read(1 << 16):  # the association lives as long as this connection
                    pass
        finally:
            relay.close()
            self.writer.close()

    # ---- HTTP ----------------------------------------------------------------------------------------------

    async def serve_http(self) -> None:
        app, c = self.app, self.app.counters
        try:
            request = await self.parse(http1.parse_head)
        except http1.HttpError as exc:
            c["entrance:malformed"] += 1
            log.info("mesh %s: proxy client %s: HTTP %d %s", app.ctx.mesh, self.peer, exc.status, exc.message)
            await self.finish(http1.response(exc.status, exc.message))
            return
        if app.auth is not None and not await self.http_login(request):
            return
        dest = request.destination
        # A plain HTTP request is in hand: it goes with the opening (early data); CONNECT waits for the exit's answer
        # (its client needs the 200 before it speaks).
        early = first = None
        if not request.is_connect:
            first = request.upstream_head() + self.rest()
            early = EarlyData()
            first = first[early.feed(first) :]
        try:
            stream, exit_ep = await app.open_to_exit(dest, "tcp", early)
        except Refused as refused:
            self.refused(f"http {request.method} {dest}", refused)
            status = http1.STATUS_OF.get(refused.code, 502)
            await self.finish(http1.response(status, f"ztm proxy: {refused.code}: {refused.message}"))
            return
        c["entrance:streams"] += 1
        if early is None:
            self.writer.write(http1.ESTABLISHED)
            first = self.rest()
        else:
            first = early.done() + (first or b"")
        await self.splice(stream, exit_ep, first)

    async def http_login(self, request: http1.HttpRequest) -> bool:
        """`Proxy-Authorization: Basic`: True once it matched; else the client got a 407 (or a 400) and is closed."""
        try:
            creds = http1.proxy_credentials(request.headers)
        except http1.HttpError as exc:
            self.app.counters["entrance:unauthorized" if exc.status == 407 else "entrance:malformed"] += 1
            log.info("mesh %s: proxy client %s: HTTP %d %s", self.app.ctx.mesh, self.peer, exc.status, exc.message)
            await self.finish(http1.response(exc.status, f"ztm proxy: {exc.message}"))
            return False
        if creds is None or not await self.app.authenticate(creds):
            self.unauthorized(creds, "http")
            what = "proxy authentication required" if creds is None else "wrong user name or password"
            await self.finish(http1.response(407, f"ztm proxy: {what}"))
            return False
        return True

    # ---- both ----------------------------------------------------------------------------------------------

    @property
    def peer(self) -> str:
        peer = self.writer.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "?"

    def refused(self, what: str, refused: Refused) -> None:
        self.app.counters["entrance:refused"] += 1
        log.info("mesh %s: proxy %s for %s refused: %s", self.app.ctx.mesh, what, self.peer, refused.reason)

    async def splice(self, stream: E2EStream, exit_ep: Exit, first: bytes) -> None:
        if first:
            try:
                await stream.write(first)
            except h2.H2Error:
                stream.reset()
                reset_socket(self.writer)
                return
        await self.app.pipe("entrance", self.reader, self.writer, stream, exit_ep)


async def serve_client(app: ProxyApp, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    app.counters["entrance:connections"] += 1
    client = _Client(app, reader, writer)
    try:
        await client.fill()
        first = client.buf[0]
        if first == socks.VERSION:
            await client.serve_socks()
        elif first == 4:  # SOCKS4: "request rejected or failed", in its own format
            app.counters["entrance:malformed"] += 1
            await client.finish(b"\x00\x5b" + bytes(6))
        elif 0x41 <= first <= 0x5A or 0x61 <= first <= 0x7A or first == 0x0D:
            await client.serve_http()
        else:
            app.counters["entrance:malformed"] += 1
            await client.finish(b"")
    except _Closed:
        writer.close()
    except BaseException:
        writer.transport.abort()  # cancelled (the agent stops), or a bug: never leave the client hanging
        raise


class _UdpRelay(asyncio.DatagramProtocol):
    """The UDP side of one SOCKS association: datagrams from the client's address only; one stream per
    destination, replies wrapped in the SOCKS UDP header with the destination as their source."""

    def __init__(self, app: ProxyApp, client_ip: str, client_port: int) -> None:
        self.app = app
        self.client_ip = client_ip
        self.client_port = client_port
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[tuple[Any, Destination], asyncio.Queue[bytes]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        c = self.app.counters
        if addr[0] != self.client_ip or (self.client_port and addr[1] != self.client_port) or len(data) > MAX_DATAGRAM:
            c["entrance-udp:dropped"] += 1
            return
        try:
            dest, payload = socks.parse_datagram(data)
        except socks.SocksError:
            c["entrance-udp:dropped"] += 1
            return
        key = (addr, dest)
        queue = self.flows.get(key)
        if queue is None:
            if len(self.flows) >= MAX_FLOWS:
                c["entrance-udp:dropped"] += 1
                return
            queue = self.flows[key] = asyncio.Queue(UDP_QUEUE)
            task = asyncio.ensure_future(self._flow(addr, dest, queue))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(payload)

    async def _flow(self, addr: Any, dest: Destination, queue: asyncio.Queue[bytes]) -> None:
        app = self.app
        try:
            try:
                stream, _exit = await app.open_to_exit(dest, "udp")
            except Refused as refused:
                app.counters["entrance-udp:refused"] += 1
                log.info("mesh %s: proxy UDP to %s dropped: %s", app.ctx.mesh, dest, refused.reason)
                return
            app.counters["entrance-udp:streams"] += 1
            paths.count(app.counters, "entrance-udp", stream.path)

            def send(datagram: bytes) -> None:
                if self.transport is not None:
                    self.transport.sendto(socks.encode_datagram(dest, datagram), addr)

            await udp_flow(stream, queue, send, app.counters, "entrance-udp")
        finally:
            self.flows.pop((addr, dest), None)

    def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.transport is not None:
            self.transport.close()
