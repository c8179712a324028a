"""Local API routes of the terminal app, under `/api/meshes/{mesh}/apps/terminal` (guarded like every agent route):
its configuration as JSON, and sessions to other endpoints carried over a WebSocket.

`GET .../apps/terminal/endpoints/{ep}/session` upgrades to a WebSocket (for the CLI and for a browser terminal).
The client's first message is a text frame `{"type": "open", "mode": "shell"|"exec", ...}`; the agent then opens a
mesh stream to the terminal app on `ep` and bridges the two: the client's binary frames are stdin and its text frames
control messages (resize, signal, eof); the target's output comes back as binary frames with a channel byte, its
`started`/`exit`/`error` as text frames (formats in `ztm.apps.terminal.protocol`). The WebSocket is closed after
`exit` or `error`; closing it ends the session (the target hangs up the process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSMsgType, web

from ztm import h2, validate
from ztm.agent.e2estream import E2EStream
from ztm.agent.service import Agent
from ztm.apps.terminal.app import UNSET, TerminalApp
from ztm.apps.terminal.protocol import (
    MAX_PAYLOAD,
    STDIN,
    Data,
    Decoder,
    Error,
    Exit,
    Open,
    ProtocolError,
    Started,
    encode,
    parse_ws_text,
    ws_output,
    ws_text,
)
from ztm.errors import BadInput, ZtmError

log = logging.getLogger("ztm.terminal")

Json = Callable[[Any, int], web.Response]
OPEN_WAIT = 30.0
"""Seconds a WebSocket client has to send its open message."""
WS_CLOSE_ERROR = 4000
"""Close code after an `error` message (4000-4999: private use); 1000 after `exit`."""


def add_routes(app: web.Application, agent: Agent, reply: Json) -> None:
    base = "/api/meshes/{mesh}/apps/terminal"

    def terminal_app(request: web.Request) -> TerminalApp:
        return agent.app(request.match_info["mesh"], "terminal", TerminalApp, running=False)

    async def describe(request: web.Request) -> web.Response:
        return reply(terminal_app(request).describe(), 200)

    async def configure(request: web.Request) -> web.Response:
        body = validate.json_object(await request.read())
        unknown = set(body) - {"enabled", "shell", "add_users", "del_users"}
        if unknown:
            raise BadInput(f"unknown field {sorted(unknown)[0]!r}: expected enabled, shell, add_users, del_users")
        terminal = terminal_app(request)
        result = terminal.configure(
            body.get("shell", UNSET), body.get("add_users"), body.get("del_users"), body.get("enabled", UNSET)
        )
        return reply(result, 200)

    async def session(request: web.Request) -> web.StreamResponse:
        terminal = terminal_app(request)
        ep = validate.name(request.match_info["ep"], "endpoint")
        ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=MAX_PAYLOAD + 1)
        if not ws.can_prepare(request).ok:
            raise BadInput("this route is a WebSocket: connect with a WebSocket client (Upgrade: websocket)")
        await ws.prepare(request)
        try:
            await _bridge(ws, terminal, ep)
        except Exception:  # after the upgrade no error page can be sent: the client gets an error message
            log.exception("terminal session to %s failed", ep)
            await _fail(ws, Error("internal", "internal error; see the agent log"))
        finally:
            await ws.close()
        return ws

    handlers: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
        ("GET", base, describe),
        ("POST", base + "/config", configure),
        ("GET", base + "/endpoints/{ep}/session", session),
    ]
    for method, path, handler in handlers:
        app.router.add_route(method, path, handler)


async def _fail(ws: web.WebSocketResponse, error: Error) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        if not ws.closed:
            await ws.send_str(ws_text(error))
            await ws.close(code=WS_CLOSE_ERROR, message=error.code.encode())


async def _first(ws: web.WebSocketResponse) -> Open | None:
    """The client's open message; None (after telling it why) if it sent something else or nothing."""
    try:
        msg = await ws.receive(timeout=OPEN_WAIT)
    except TimeoutError:
        await _fail(ws, Error("protocol", f"no open message within {OPEN_WAIT:g} s"))
        return None
    if msg.type != WSMsgType.TEXT:
        if msg.type not in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            await _fail(ws, Error("protocol", 'the first message must be a text frame {"type": "open", ...}'))
        return None
    try:
        opened = parse_ws_text(msg.data)
    except ProtocolError as exc:
        await _fail(ws, Error(exc.code, exc.message))
        return None
    if not isinstance(opened, Open):
        await _fail(ws, Error("protocol", 'the first message must be {"type": "open", ...}'))
        return None
    return opened


async def _bridge(ws: web.WebSocketResponse, terminal: TerminalApp, ep: str) -> None:
    opened = await _first(ws)
    if opened is None:
        return
    try:
        stream = await terminal.open_session(ep, opened)
    except ZtmError as exc:
        await _fail(ws, Error(exc.code, exc.message))
        return
    down = asyncio.ensure_future(_down(stream, ws))
    up = asyncio.ensure_future(_up(ws, stream))
    try:
        await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
        if up.done() and not down.done():
            problem = up.exception()
            if isinstance(problem, ProtocolError):
                await _fail(ws, Error(problem.code, problem.message))
            # else the client closed the WebSocket: the session ends with it (below)
        elif down.done():
            problem = down.exception()
            if isinstance(problem, ProtocolError | h2.H2Error):
                await _fail(ws, Error("unavailable", f"the session with {ep} broke: {problem}"))
    finally:
        for task in (down, up):
            task.cancel()
        await asyncio.gather(down, up, return_exceptions=True)
        stream.reset()  # a no-op after a clean end; otherwise the target hangs up the process


async def _down(stream: E2EStream, ws: web.WebSocketResponse) -> None:
    """Target -> client, until the target's exit or error (then the WebSocket is closed)."""
    decoder = Decoder()
    while data := await stream.read():
        for message in decoder.feed(data):
            if isinstance(message, Data) and message.channel != STDIN:
                await ws.send_bytes(ws_output(message))
            elif isinstance(message, Started):
                await ws.send_str(ws_text(message))
            elif isinstance(message, Exit):
                await ws.send_str(ws_text(message))
                await ws.close(code=1000, message=message.describe().encode()[:120])
                return
            elif isinstance(message, Error):
                await _fail(ws, message)
                return
            else:
                raise ProtocolError(f"unexpected {type(message).__name__.lower()} frame from the target")
    await _fail(ws, Error("unavailable", "the target ended the session without an exit status"))


async def _up(ws: web.WebSocketResponse, stream: E2EStream) -> None:
    """Client -> target, until the client closes the WebSocket."""
    async for msg in ws:
        if msg.type == WSMsgType.BINARY:
            if msg.data:
                await stream.write(encode(Data(STDIN, msg.data)))
        elif msg.type == WSMsgType.TEXT:
            message = parse_ws_text(msg.data)
            if isinstance(message, Open | Started | Exit | Error):
                raise ProtocolError(f"a client does not send {type(message).__name__.lower()} messages")
            await stream.write(encode(message))
