"""The client end of `ztm terminal open` and `ztm terminal exec`: a WebSocket to the agent's session route, joined
to this process's stdin, stdout and stderr (and, for `open`, to its terminal in raw mode).

Imported only by those two commands (it pulls in asyncio; the WebSocket is `ztm.cli.wsclient`'s, not aiohttp's,
which would cost every command 0.1 s of imports). The local terminal's settings are restored on every way out (the
session's end, an error, a signal). Stdin is read only as fast as the WebSocket takes it; output is written as it
arrives (blocking on a full pipe, which holds back the remote side through the stream's windows).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import termios
import tty
from collections.abc import Callable, Iterator
from typing import Any

from ztm.addr import Address
from ztm.apps.terminal.protocol import (
    DEFAULT_COLS,
    DEFAULT_ROWS,
    DEFAULT_TERM,
    MAX_PAYLOAD,
    MAX_SIZE,
    STDERR,
    Eof,
    Error,
    Exit,
    Open,
    ProtocolError,
    Resize,
    Signal,
    make_open,
    parse_ws_output,
    parse_ws_text,
    ws_text,
)
from ztm.cli import wsclient, wscodec
from ztm.cli.context import Context
from ztm.cli.wscodec import WsError
from ztm.errors import Unavailable, ZtmError, from_json

READ_CHUNK = 64 * 1024
_TERM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")


class Interrupted(ZtmError):
    """This command was told to stop (SIGTERM, SIGHUP) during a session."""

    code = "interrupted"


def open_shell(ctx: Context, ep: str, term: str | None) -> int:
    if term is None:
        env_term = os.environ.get("TERM", "")
        term = env_term if _TERM.fullmatch(env_term) else DEFAULT_TERM
    cols, rows = _size()
    opened = make_open("shell", (), cols, rows, term)
    raw = os.isatty(0)
    with _raw_mode(raw):
        return _run(ctx, ep, opened, raw=raw)


def run_command(ctx: Context, ep: str, command: list[str]) -> int:
    try:
        opened = make_open("exec", tuple(command))
    except ProtocolError as exc:
        raise ZtmError(f"cannot run that command: {exc.message}") from None
    return _run(ctx, ep, opened, raw=False)


def _size() -> tuple[int, int]:
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            size = os.get_terminal_size(fd)
            if size.columns > 0 and size.lines > 0:
                return min(size.columns, MAX_SIZE), min(size.lines, MAX_SIZE)
    return DEFAULT_COLS, DEFAULT_ROWS


@contextlib.contextmanager
def _raw_mode(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    saved = termios.tcgetattr(0)
    try:
        tty.setraw(0, termios.TCSANOW)  # not TCSAFLUSH: keep what was typed ahead
        yield
    finally:
        with contextlib.suppress(termios.error, OSError):  # the terminal may be gone (hung up)
            termios.tcsetattr(0, termios.TCSADRAIN, saved)


def _run(ctx: Context, ep: str, opened: Open, *, raw: bool) -> int:
    client = ctx.client()
    # A JSON call first: a wrong token, mesh or address gets the usual one-line error before the WebSocket.
    ctx.get_obj(ctx.mesh_path("apps", "terminal"))
    path = ctx.mesh_path("apps", "terminal", "endpoints", ep, "session")
    sock, auth = client.dial(ctx.timeout)
    result = asyncio.run(_session(client.address, sock, auth, path, opened, ctx.timeout, raw=raw))
    return result.status()


async def _session(
    address: Address, sock: socket.socket, auth: dict[str, str], path: str, opened: Open, timeout: float, *, raw: bool
) -> Exit:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    stopped: list[int] = []

    def stop(signum: int) -> None:
        stopped.append(signum)
        if main is not None:
            main.cancel()

    try:
        async with asyncio.timeout(timeout):
            ws = await wsclient.connect(address.host, address.port, path, auth, MAX_PAYLOAD + 1, sock=sock)
    except TimeoutError:
        raise Unavailable(f"the agent did not open the session within {timeout:g}s") from None
    except wsclient.Refused as exc:
        raise from_json(exc.status, exc.body) from None
    except (OSError, WsError) as exc:
        raise Unavailable(f"cannot open the session at the agent: {exc}") from None
    handlers: list[int] = []

    def on(signum: int, callback: Callable[[], None]) -> None:
        loop.add_signal_handler(signum, callback)
        handlers.append(signum)

    pump: asyncio.Task[None] | None = None
    try:
        await ws.send_str(ws_text(opened))
        on(signal.SIGINT, lambda: _forward(ws, Signal("INT")))
        on(signal.SIGTERM, lambda: stop(signal.SIGTERM))
        on(signal.SIGHUP, lambda: stop(signal.SIGHUP))
        if opened.mode == "shell":
            on(signal.SIGWINCH, lambda: _forward(ws, Resize(*_size())))
        pump = asyncio.ensure_future(_stdin_pump(ws, opened.mode, raw=raw))
        return await _receive(ws)
    except WsError as exc:
        raise Unavailable(f"the agent broke the session's WebSocket protocol: {exc}") from None
    except asyncio.CancelledError:
        if stopped:
            name = signal.Signals(stopped[0]).name
            raise Interrupted(f"stopped by {name}; the remote session was hung up") from None
        raise
    finally:
        for signum in handlers:
            loop.remove_signal_handler(signum)
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        await ws.close()


_SENDS: set[asyncio.Task[Any]] = set()


def _forward(ws: wsclient.WebSocket, message: Signal | Resize) -> None:
    if ws.closed:
        return
    task = asyncio.ensure_future(_send_quietly(ws, ws_text(message)))
    _SENDS.add(task)
    task.add_done_callback(_SENDS.discard)


async def _send_quietly(ws: wsclient.WebSocket, text: str) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.send_str(text)


async def _receive(ws: wsclient.WebSocket) -> Exit:
    async for msg in ws:
        if msg.opcode == wscodec.BINARY:
            data = parse_ws_output(msg.data)
            _write(2 if data.channel == STDERR else 1, data.data)
        elif msg.opcode == wscodec.TEXT:
            message = parse_ws_text(msg.data.decode("utf-8", "replace"))
            if isinstance(message, Exit):
                return message
            if isinstance(message, Error):
                error = from_json(500, {"error": message.message, "code": message.code})
                raise error
    raise Unavailable("the session ended without an exit status (the agent or the endpoint went away)")


def _write(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Stdin:
    """Reads fd 0 on the loop (a terminal, pipe or socket), or in a worker thread where the loop cannot watch it
    (a regular file, /dev/null: their reads never block)."""

    def __init__(self) -> None:
        self.watchable = True

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        if self.watchable:
            waiter: asyncio.Future[None] = loop.create_future()

            def wake() -> None:
                if not waiter.done():
                    waiter.set_result(None)

            try:
                loop.add_reader(0, wake)
            except (OSError, ValueError):
                self.watchable = False
            else:
                try:
                    await waiter
                finally:
                    loop.remove_reader(0)
                return _read0()
        return await loop.run_in_executor(None, _read0)


def _read0() -> bytes:
    try:
        return os.read(0, READ_CHUNK)
    except OSError:
        return b""


async def _stdin_pump(ws: wsclient.WebSocket, mode: str, *, raw: bool) -> None:
    stdin = _Stdin()
    with contextlib.suppress(ConnectionError, RuntimeError):
        while data := await stdin.read():
            await ws.send_bytes(data)
        if mode == "exec":
            await ws.send_str(ws_text(Eof()))
        elif not raw:  # a shell fed from a pipe: its end is a Ctrl-D
            await ws.send_bytes(b"\x04")
