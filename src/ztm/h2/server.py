"""The HTTP/2-over-TLS server: `serve(handler, ...)`.

`serve` listens on plain TCP and upgrades each accepted connection with `loop.start_tls(..., server_side=True)`,
asking `ssl_context()` for the context of *that* connection, so the hub can swap contexts at runtime (a new CRL after
an eviction) without restarting the listener. Handshakes that fail, time out or do not negotiate ALPN `h2` are
closed quietly (one debug line). After a good handshake `on_connect(conn)` may look at `conn.peer_cert_der` and
refuse the peer by returning False; until it answers nothing from the peer is processed and the server has not sent
its HTTP/2 preface, so a refused client sees its `connect()` fail.

Each request stream runs `handler(stream, conn)` in its own task. The handler answers with `stream.respond()` and
writes the body; when it returns, the response is ended for it, and an unread request body is cancelled with
RST_STREAM(NO_ERROR) (RFC 9113 section 8.1). If the handler raises before responding, the client gets a JSON error:
the status and body of a `ztm.errors.ZtmError`, otherwise 500 `{"error": "internal error"}` and the traceback goes to
the log; after responding the stream is reset instead. When the connection closes, handler tasks still running are
cancelled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

from ztm.errors import ZtmError
from ztm.h2.connection import Connection
from ztm.h2.errors import ConnectionClosed, H2Error, StreamReset
from ztm.h2.settings import H2Settings
from ztm.h2.stream import Stream

log = logging.getLogger("ztm.h2")

Handler = Callable[[Stream, Connection], Awaitable[None]]

T = TypeVar("T")

_INTERNAL_ERROR = 0x2
_CANCEL = 0x8
_NO_ERROR = 0x0
MAX_UNAUTHENTICATED_PER_SOURCE = 128
"""Connections one source address may have in the TLS handshake (or `on_connect`) at once."""
BACKLOG = 4096
"""Connections the kernel completes and queues for the listener while its loop is busy (capped by
net.core.somaxconn). asyncio's default of 100 made a hub whose loop was busy for a moment drop the SYNs of the rest
of a crowd (a dead hub's agents failing over at once): each dropped one waited 1, 3, 7 s for its retransmissions."""


async def serve(
    handler: Handler,
    host: str,
    port: int,
    ssl_context: Callable[[], ssl.SSLContext],
    *,
    on_connect: Callable[[Connection], Awaitable[bool]] | None = None,
    on_handshake_failure: Callable[[str, str], None] | None = None,
    settings: H2Settings = H2Settings(),  # noqa: B008 (frozen dataclass)
    handshake_timeout: float = 10.0,
    reuse_port: bool = False,
    max_unauthenticated_per_source: int = MAX_UNAUTHENTICATED_PER_SOURCE,
    backlog: int = BACKLOG,
) -> asyncio.Server:
    """Listen on host:port; serve each TLS (ALPN h2) connection's request streams with `handler`.

    `ssl_context()` is called once per accepted connection; ALPN `h2` is set on the context it returns. Closing the
    returned server stops accepting; connections already accepted stay open until closed (track them with
    `on_connect` and `Connection.add_close_callback` to close them on shutdown). `on_handshake_failure(peer,
    reason)` hears of every TLS handshake that failed or negotiated no HTTP/2 (for counters and logs).

    At most `max_unauthenticated_per_source` connections from one source address may be between accept and the end
    of `on_connect` (each may take `handshake_timeout`): one more is closed at once, so a single host cannot hold
    the listener's file descriptors with connections that never authenticate.
    """
    loop = asyncio.get_running_loop()
    accepting: set[asyncio.Task[None]] = set()
    pending: dict[str, int] = {}

    def release(source: str) -> None:
        left = pending[source] - 1
        if left:
            pending[source] = left
        else:
            del pending[source]

    def on_request(stream: Stream) -> None:
        conn = stream._conn
        task = loop.create_task(_run_handler(handler, stream, conn))
        conn._tasks.add(task)
        task.add_done_callback(conn._tasks.discard)

    def on_raw(conn: Connection, raw: asyncio.Transport) -> None:
        # Called from connection_made of the plain TCP transport: start TLS before anything is read.
        source = _source(raw)
        if pending.get(source, 0) >= max_unauthenticated_per_source:
            raw.abort()
            conn._abandon("too many unauthenticated connections from its source")
            if on_handshake_failure is not None:
                on_handshake_failure(
                    conn._label, f"more than {max_unauthenticated_per_source} unauthenticated connections from {source}"
                )
            return
        pending[source] = pending.get(source, 0) + 1
        try:
            context = ssl_context()
            context.set_alpn_protocols(["h2"])
        except Exception:
            log.exception("no TLS context for the connection from %s", conn._label)
            raw.abort()
            conn._abandon("no TLS context")
            release(source)
            return
        handshake = _start_tls_now(loop, raw, conn, context, handshake_timeout)
        task = loop.create_task(_accept(conn, raw, handshake, on_connect, handshake_timeout, on_handshake_failure))
        accepting.add(task)
        task.add_done_callback(accepting.discard)
        task.add_done_callback(lambda _task: release(source))

    def factory() -> Connection:
        conn = Connection(is_client=False, settings=settings)
        conn._raw_hook = on_raw
        conn._on_request = on_request
        return conn

    return await loop.create_server(factory, host, port, reuse_port=reuse_port or None, backlog=backlog)


def _source(raw: asyncio.Transport) -> str:
    """The source address (no port) of an accepted connection, the key of the per-source cap."""
    peer = raw.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "?"


def _start_tls_now(
    loop: asyncio.AbstractEventLoop,
    raw: asyncio.Transport,
    conn: Connection,
    context: ssl.SSLContext,
    timeout: float,
) -> asyncio.Future[asyncio.Transport | None]:
    """`loop.start_tls(raw, conn, context, server_side=True)`, its first step run synchronously, right now.

    Called from `connection_made` of the accepted TCP transport. `start_tls` pauses reading and swaps in its TLS
    protocol before its first suspension; running that part at once (instead of in a new task, one loop iteration
    later) matters on uvloop, which starts reading *after* `connection_made` returns and ignores a
    `pause_reading()` made inside it: a ClientHello that is already queued would otherwise be delivered to this
    plain-TCP protocol, or to the TLS protocol before its `connection_made`, and the handshake would fail. The rest
    of the coroutine is driven by a task, exactly as a task would drive it (results, exceptions, cancellation).
    """
    coro = loop.start_tls(raw, conn, context, server_side=True, ssl_handshake_timeout=timeout)
    try:
        yielded = coro.send(None)
    except StopIteration as stop:
        done: asyncio.Future[asyncio.Transport | None] = loop.create_future()
        done.set_result(stop.value)
        return done
    except Exception as exc:
        failed: asyncio.Future[asyncio.Transport | None] = loop.create_future()
        failed.set_exception(exc)
        return failed
    return loop.create_task(_drive(coro, yielded))


async def _drive(coro: Coroutine[Any, Any, T], yielded: Any) -> T:
    """Finish a coroutine whose first step already ran and yielded `yielded` (a future, or None)."""
    while True:
        try:
            if yielded is None:
                await asyncio.sleep(0)
            else:
                yielded._asyncio_future_blocking = False  # as Task.__step does before waiting on it
                await yielded
        except asyncio.CancelledError as exc:  # we were cancelled (the awaited future too, maybe): pass it on
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return cast(T, stop.value)
            continue
        except Exception:  # noqa: S110 - the future failed; the coroutine sees that when it resumes
            pass
        try:
            yielded = coro.send(None)
        except StopIteration as stop:
            return cast(T, stop.value)


async def _accept(
    conn: Connection,
    raw: asyncio.Transport,
    handshake: asyncio.Future[asyncio.Transport | None],
    on_connect: Callable[[Connection], Awaitable[bool]] | None,
    handshake_timeout: float,
    on_failure: Callable[[str, str], None] | None = None,
) -> None:
    label = conn._label
    try:
        async with asyncio.timeout(handshake_timeout):
            tls = await handshake
    except asyncio.CancelledError:
        raw.abort()
        conn._abandon("cancelled during the TLS handshake")
        raise
    except Exception as exc:
        text = "timed out" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
        log.debug("TLS handshake from %s failed: %s", label, text)
        if on_failure is not None:
            on_failure(label, text)
        raw.close()  # start_tls closed it already; close() (not abort) lets queued bytes go out
        conn._abandon(f"TLS handshake failed: {text}")
        return
    if tls is None or conn.closed:
        raw.abort()
        conn._abandon("closed during the TLS handshake")
        return
    conn._tls_ready(tls)
    if conn.alpn != "h2":
        log.debug("connection from %s did not negotiate HTTP/2 (ALPN %r); closing", label, conn.alpn)
        if on_failure is not None:
            on_failure(label, f"no HTTP/2 (ALPN {conn.alpn!r})")
        conn._close("no HTTP/2 (ALPN)", goaway=False)
        return
    if on_connect is not None:
        tls.pause_reading()
        try:
            accepted = await on_connect(conn)
        except asyncio.CancelledError:
            conn._close("cancelled", goaway=False, abort=True)
            raise
        except Exception:
            log.exception("on_connect failed for the connection from %s", label)
            accepted = False
        if conn.closed:
            return
        if not accepted:
            log.debug("connection from %s refused by on_connect", label)
            conn._close("refused", goaway=False)
            return
        tls.resume_reading()
    conn._start_h2()


async def _run_handler(handler: Handler, stream: Stream, conn: Connection) -> None:
    try:
        await handler(stream, conn)
    except asyncio.CancelledError:
        stream.reset()
        raise
    except (StreamReset, ConnectionClosed) as exc:
        log.debug("stream %d from %s: %s", stream.id, conn._label, exc)
        if stream._failure() is None:  # it came from another stream (a relay): answer or cancel this one
            await _fail(stream, 502, {"error": str(exc)}, reset_code=_CANCEL)
    except ZtmError as exc:
        log.debug("%s %s from %s: %s", stream.method, stream.path, conn._label, exc.message)
        await _fail(stream, exc.status, exc.to_json())
    except Exception:
        log.exception("handler failed for %s %s from %s", stream.method, stream.path, conn._label)
        await _fail(stream, 500, {"error": "internal error"})
    else:
        if not stream._responded:
            log.error("handler for %s %s returned without responding", stream.method, stream.path)
            await _fail(stream, 500, {"error": "internal error"})
        else:
            try:
                await stream.end()
            except H2Error:
                stream.reset(_INTERNAL_ERROR)
    if not stream._remote_done:
        stream.reset(_NO_ERROR)


async def _fail(stream: Stream, status: int, body: dict[str, str], *, reset_code: int = _INTERNAL_ERROR) -> None:
    """Answer with a JSON error if nothing was sent yet, else reset the stream."""
    if stream._responded or stream._failure() is not None:
        stream.reset(reset_code)
        return
    data = json.dumps(body).encode()
    try:
        await stream.respond(status, [("content-type", "application/json"), ("content-length", str(len(data)))])
        await stream.write(data, end_stream=True)
    except H2Error:
        stream.reset(_INTERNAL_ERROR)
