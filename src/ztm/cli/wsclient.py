"""A small asyncio WebSocket client on `ztm.cli.wscodec`: what `ztm terminal` needs to talk to its agent.

`connect` opens the TCP connection, upgrades it (a refusal raises `Refused` with the agent's status and JSON body),
and returns a `WebSocket` that sends text and binary messages, answers the server's pings, and yields the server's
text and binary messages until the closing handshake or the end of the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

from ztm.cli import wscodec as wc

MAX_ERROR_BODY = 64 * 1024
CLOSE_WAIT = 2.0
"""Seconds `close()` waits for the server's answering close frame."""


class Refused(Exception):
    """The agent answered the upgrade with `status` (not 101); `body` is its JSON error, if it sent one."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body


class WebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, decoder: wc.Decoder) -> None:
        self._reader = reader
        self._writer = writer
        self._decoder = decoder
        self._pending: list[wc.Message] = []
        self._sent_close = False
        self.closed = False

    async def send_str(self, text: str) -> None:
        await self._send(wc.TEXT, text.encode())

    async def send_bytes(self, data: bytes) -> None:
        await self._send(wc.BINARY, data)

    async def _send(self, opcode: int, payload: bytes) -> None:
        if self.closed or self._sent_close:
            raise ConnectionError("the WebSocket is closed")
        self._writer.write(wc.encode(opcode, payload))
        await self._writer.drain()

    async def receive(self) -> wc.Message | None:
        """The next text or binary message, or None once the connection ended (closing handshake or EOF)."""
        while not self.closed:
            while self._pending:
                message = self._pending.pop(0)
                if message.opcode == wc.PING:
                    with contextlib.suppress(ConnectionError):
                        self._writer.write(wc.encode(wc.PONG, message.data))
                elif message.opcode == wc.CLOSE:
                    if not self._sent_close:
                        self._sent_close = True
                        with contextlib.suppress(ConnectionError):
                            self._writer.write(wc.encode(wc.CLOSE, message.data[:2]))
                    self._end()
                    return None
                elif message.opcode != wc.PONG:
                    return message
            data = await self._reader.read(1 << 16)
            if not data:
                self._end()
                return None
            self._pending.extend(self._decoder.feed(data))
        return None

    def __aiter__(self) -> AsyncIterator[wc.Message]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[wc.Message]:
        while (message := await self.receive()) is not None:
            yield message

    async def close(self) -> None:
        """The closing handshake (waiting at most CLOSE_WAIT for the server's answer), then the connection's end."""
        if self.closed:
            return
        if not self._sent_close:
            self._sent_close = True
            with contextlib.suppress(ConnectionError):
                self._writer.write(wc.encode(wc.CLOSE, wc.close_payload()))
        with contextlib.suppress(TimeoutError, ConnectionError, wc.WsError):
            async with asyncio.timeout(CLOSE_WAIT):
                while await self.receive() is not None:
                    pass
        self._end()
        await asyncio.gather(self._writer.wait_closed(), return_exceptions=True)  # its error, e.g. EPIPE, is ours

    def _end(self) -> None:
        if not self.closed:
            self.closed = True
            self._writer.close()


async def connect(
    host: str, port: int, path: str, headers: dict[str, str], max_size: int, sock: socket.socket | None = None
) -> WebSocket:
    """Open and upgrade a connection to ws://HOST:PORT/PATH (over `sock` when given: a connected socket, e.g. the
    agent's local UNIX socket; HOST:PORT is then only the Host header). Raises OSError, `Refused` or `WsError`."""
    if sock is not None:
        sock.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=sock)
    else:
        reader, writer = await asyncio.open_connection(host, port)
    try:
        key = wc.new_key()
        name = f"[{host}]" if ":" in host else host
        writer.write(wc.handshake_request(f"{name}:{port}", path, key, headers))
        buf = b""
        while (parsed := wc.parse_answer(buf)) is None:
            data = await reader.read(1 << 16)
            if not data:
                raise wc.WsError("the agent closed the connection during the WebSocket handshake")
            buf += data
        answer, used = parsed
        rest = buf[used:]
        if answer.status != 101:
            raise Refused(answer.status, await _error_body(reader, answer, rest))
        wc.check_accept(answer, key)
        decoder = wc.Decoder(max_size)
        ws = WebSocket(reader, writer, decoder)
        ws._pending.extend(decoder.feed(rest))
        return ws
    except BaseException:
        writer.close()
        raise


async def _error_body(reader: asyncio.StreamReader, answer: wc.Answer, rest: bytes) -> Any:
    length = answer.headers.get("content-length", "")
    want = min(int(length), MAX_ERROR_BODY) if length.isascii() and length.isdigit() else 0
    with contextlib.suppress(TimeoutError, OSError):
        async with asyncio.timeout(2.0):
            while len(rest) < want:
                data = await reader.read(want - len(rest))
                if not data:
                    break
                rest += data
    try:
        return json.loads(rest[:want]) if want else None
    except ValueError:
        return None
