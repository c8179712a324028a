"""One HTTP/2 stream of a `ztm.h2.Connection`: headers, a body read and written as bytes, end, reset.

The same class serves both sides. On the server a stream arrives with the request headers and the handler answers
with `respond()`; on the client `Connection.open_stream()` makes one and `response()` waits for the answer. Either
side reads the peer's body with `read()` and writes its own with `write()`, so a stream is a full-duplex byte pipe
(CONNECT tunnels, event streams).

Flow control: bytes are credited back to the peer only when `read()` returns them, so at most one stream window is
ever buffered here; `write()` waits for the peer's window and for the transport. Writes on a stream are serialized
(one `write()` completes before the next starts), so concurrent writers never interleave their bytes.

Copies: received data arrives as `bytes` chunks (as large as the TLS reads), and `read()` returns a whole chunk
without copying it; only small chunks are joined. Large writes of immutable data go to the transport by reference.

Stalls are visible: `credit_wait` is the time `write()` spent waiting for the peer's flow-control credit (including
a wait in progress, `credit_waiting`); the connection sums them and warns about a long wait while the peer is alive.

Errors: after the peer reset the stream, `read()`/`write()`/`response()` raise `StreamReset`; after the connection
is gone they raise `ConnectionClosed`. Data the peer fully sent (END_STREAM received) stays readable either way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from ztm.h2.codec import DIRECT_MIN, CodecError
from ztm.h2.errors import ConnectionClosed, H2Error, StreamReset

if TYPE_CHECKING:
    from ztm.h2.connection import Connection

_COALESCE = 64 * 1024  # read() joins buffered chunks up to this size


class StreamSink(Protocol):
    """Receives a stream's body from the receive path itself (`Stream.set_sink`), instead of a task calling `read()`.

    Exactly one of `stream_end`/`stream_error` is called, once, after the last `stream_data`; the sink is then
    detached. Callbacks run inside the connection's `buffer_updated` (or inside `set_sink`/`resume_sink`/`reset`),
    so they must not block; they may call `pause_sink()` (and any other non-blocking stream method).
    """

    def stream_data(self, data: bytes) -> None: ...

    def stream_end(self) -> None: ...

    def stream_error(self, exc: H2Error) -> None: ...


class Stream:
    """One request/response exchange, or a bidirectional byte stream."""

    __slots__ = (
        "_buffered",
        "_chunks",
        "_closed_event",
        "_conn",
        "_conn_error",
        "_credit_wait",
        "_credit_warned",
        "_eof",
        "_finished",
        "_headers_waiter",
        "_local_ended",
        "_offset",
        "_read_waiter",
        "_reset_code",
        "_reset_local",
        "_responded",
        "_sink",
        "_sink_paused",
        "_status",
        "_wait_start",
        "_window_waiter",
        "_withheld",
        "_write_waiters",
        "_writing",
        "bytes_received",
        "bytes_sent",
        "headers",
        "id",
        "label",
        "trailers",
    )

    def __init__(self, conn: Connection, stream_id: int, headers: list[tuple[str, str]] | None = None) -> None:
        self.id = stream_id
        self.headers: list[tuple[str, str]] = headers if headers is not None else []
        self.trailers: list[tuple[str, str]] | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self._conn = conn
        self._chunks: deque[bytes] = deque()
        self._offset = 0  # bytes of _chunks[0] already read
        self._buffered = 0  # received, not yet read (not yet credited to the peer)
        self._eof = False  # peer sent END_STREAM
        self._local_ended = False  # we sent END_STREAM
        self._reset_code: int | None = None
        self._reset_local = False
        self._conn_error: str | None = None
        self._status: int | None = None  # client: response status
        self._responded = False  # server: response headers sent
        self._finished = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._window_waiter: asyncio.Future[None] | None = None
        self._headers_waiter: asyncio.Future[None] | None = None
        self._closed_event: asyncio.Event | None = None
        self._writing = False  # a write() or end() is in progress (the write "lock", held without awaiting)
        self._write_waiters: deque[asyncio.Future[None]] | None = None  # writers queued behind it
        self._sink: StreamSink | None = None
        self._sink_paused = False
        self._withheld = 0  # delivered to the paused sink, not yet credited to the peer
        self._credit_wait = 0.0  # seconds write() waited for the peer's credit (finished waits)
        self._wait_start: float | None = None  # loop time the current wait for credit began
        self._credit_warned = False
        self.label = ""  # what the stream carries, for log messages (e.g. "tunnel tcp/web")

    def __repr__(self) -> str:
        return f"<ztm.h2.Stream {self.id} on {self._conn!r}>"

    # ---- headers -----------------------------------------------------------------------------------------------

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def method(self) -> str | None:
        """Server side: the request's `:method`."""
        return self.header(":method")

    @property
    def path(self) -> str | None:
        """Server side: the request's `:path` (None for CONNECT)."""
        return self.header(":path")

    @property
    def authority(self) -> str | None:
        """Server side: the request's `:authority` (the target, for CONNECT)."""
        return self.header(":authority")

    @property
    def status(self) -> int | None:
        """Client side: the response status once `response()` has it."""
        return self._status

    @property
    def credit_waiting(self) -> float:
        """Seconds the write in progress has been waiting for the peer's flow-control credit (0.0: not waiting)."""
        start = self._wait_start
        return 0.0 if start is None else self._conn._loop.time() - start

    @property
    def credit_wait(self) -> float:
        """Seconds writes on this stream spent waiting for the peer's flow-control credit, the current wait included."""
        return self._credit_wait + self.credit_waiting

    # ---- reading -----------------------------------------------------------------------------------------------

    async def read(self, max_bytes: int = 1 << 20) -> bytes:
        """Up to `max_bytes` of the peer's body; b"" once the peer ended the stream."""
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if self._sink is not None:
            raise H2Error(f"stream {self.id} has a sink (set_sink); it cannot be read")
        chunks = self._chunks
        while not chunks:
            if self._eof:
                return b""
            self._raise_failure()
            if self._read_waiter is not None:
                raise H2Error(f"stream {self.id} is already being read by another task")
            if self._conn._hold_handle is not None:  # held HEADERS (open_stream(hold=True)): the peer needs them
                self._conn._flush()
            waiter = self._read_waiter = self._conn._loop.create_future()
            try:
                await waiter
            finally:
                self._read_waiter = None
        chunk = chunks[0]
        start = self._offset
        n = len(chunk) - start
        if n > max_bytes:  # a part of the first chunk; the rest stays where it is (no copy of it)
            self._offset = start + max_bytes
            chunk = chunk[start : start + max_bytes]
            n = max_bytes
        else:
            chunks.popleft()
            self._offset = 0
            if start:
                chunk = chunk[start:]
            limit = min(max_bytes, _COALESCE)
            if n < limit and chunks and len(chunks[0]) <= limit - n:
                # join small chunks (fewer wake-ups for the reader); large ones are handed over as they are
                parts = [chunk]
                while chunks and len(chunks[0]) <= limit - n:
                    part = chunks.popleft()
                    parts.append(part)
                    n += len(part)
                chunk = b"".join(parts)
        self._buffered -= n
        self.bytes_received += n
        self._conn._consumed(self.id, n)
        return chunk

    def take_buffered(self, limit: int) -> bytes:
        """Up to `limit` bytes of the peer's body that already arrived (read and credited, as by `read()`), without
        waiting; b"" if none arrived yet (or the stream has a sink or a reader)."""
        if self._sink is not None or self._read_waiter is not None:
            return b""
        parts: list[bytes] = []
        n = 0
        chunks = self._chunks
        while chunks and n < limit:
            chunk = chunks[0]
            start = self._offset
            take = min(len(chunk) - start, limit - n)
            parts.append(chunk[start : start + take])
            if start + take == len(chunk):
                chunks.popleft()
                self._offset = 0
            else:
                self._offset = start + take
            n += take
        if n:
            self._buffered -= n
            self.bytes_received += n
            self._conn._consumed(self.id, n)
        return b"".join(parts)

    def set_sink(self, sink: StreamSink) -> None:
        """Deliver the peer's body to `sink` as it arrives, without a reading task (see `StreamSink`).

        Flow control is as with `read()`: bytes are credited to the peer once `stream_data` returned, unless the
        sink called `pause_sink()`; then the credit waits for `resume_sink()`, and so does any further delivery, so
        at most one stream window is buffered. Data already buffered is delivered at once (inside this call).
        """
        if self._read_waiter is not None:
            raise H2Error(f"stream {self.id} is already being read by another task")
        if self._sink is not None:
            raise H2Error(f"stream {self.id} already has a sink")
        self._sink = sink
        self._deliver()

    def pause_sink(self) -> None:
        """Stop delivering to the sink and withhold the credit of what it got since (until `resume_sink()`)."""
        self._sink_paused = True

    def resume_sink(self) -> None:
        """Credit what the sink got while paused, and deliver what arrived meanwhile."""
        if not self._sink_paused:
            return
        self._sink_paused = False
        n = self._withheld
        if n:
            self._withheld = 0
            self._conn._consumed(self.id, n)
        self._deliver()

    def _deliver(self) -> None:
        chunks = self._chunks
        while (sink := self._sink) is not None:
            if not self._eof:  # a failure before END_STREAM drops the data (as for read()), paused or not
                exc = self._failure()
                if exc is not None:
                    self._sink = None
                    n = self._withheld
                    if n:
                        self._withheld = 0
                        self._conn._consumed(self.id, n)
                    sink.stream_error(exc)
                    return
            if self._sink_paused:
                return
            if not chunks:
                if self._eof:
                    self._sink = None
                    sink.stream_end()
                return
            chunk = chunks.popleft()
            if self._offset:
                chunk = chunk[self._offset :]
                self._offset = 0
            n = len(chunk)
            self._buffered -= n
            self.bytes_received += n
            sink.stream_data(chunk)
            if self._sink_paused and self._sink is sink:  # a sink failed meanwhile: nothing will resume it
                self._withheld += n
            else:
                self._conn._consumed(self.id, n)

    async def read_all(self, limit: int = 1 << 20) -> bytes:
        """The whole remaining body; H2Error if it exceeds `limit` bytes."""
        parts: list[bytes] = []
        total = 0
        while True:
            chunk = await self.read()
            if not chunk:
                break
            total += len(chunk)
            if total > limit:
                raise H2Error(f"body exceeds {limit} bytes")
            parts.append(chunk)
        if len(parts) == 1:
            return parts[0]
        return b"".join(parts)

    # ---- writing -----------------------------------------------------------------------------------------------

    async def write(self, data: bytes | memoryview, *, end_stream: bool = False) -> None:
        """Send `data` (waiting for flow-control credit); with `end_stream`, the last frame carries END_STREAM.

        A writable buffer (memoryview of a bytearray) is copied frame by frame as it is sent; bytes and read-only
        views are sent without copying.
        """
        if self._writing:
            await self._wait_turn()
        else:
            self._writing = True  # uncontended: no lock object, no extra coroutine
        try:
            await self._write(data, end_stream)
        finally:
            self._next_writer()

    async def _wait_turn(self) -> None:
        """Queue behind the writer in progress; returns owning the write turn (`_writing` stays True)."""
        waiters = self._write_waiters
        if waiters is None:
            waiters = self._write_waiters = deque()
        waiter = self._conn._loop.create_future()
        waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._next_writer()  # the turn was handed to us: pass it on
            else:
                with contextlib.suppress(ValueError):
                    waiters.remove(waiter)
            raise

    def _next_writer(self) -> None:
        """End this write turn: hand it to the first queued writer, if any (FIFO, like asyncio.Lock)."""
        waiters = self._write_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._writing = False

    def write_nowait(self, data: bytes | memoryview) -> int:
        """Send as much of `data` as the flow-control windows and the transport take now, without waiting.

        Returns the number of bytes sent (0 while another `write()` is in progress or the transport is paused);
        the caller sends the rest later, e.g. with `write()`. `data` must be immutable (bytes or a read-only view):
        it is sent by reference. Raises H2Error like `write()` if the stream cannot send.
        """
        self._check_can_send()
        conn = self._conn
        if self._writing or conn._write_paused:
            return 0
        codec = conn._codec
        total = len(data)
        offset = 0
        big = False
        while offset < total:
            try:
                window = codec.send_window(self.id)
            except CodecError:
                self._raise_failure()
                raise H2Error(f"stream {self.id} is closed") from None
            if window <= 0:
                break
            n = min(total - offset, window, codec.max_outbound_frame_size)
            chunk = data if n == total else data[offset : offset + n]
            try:
                codec.send_data(self.id, chunk, end_stream=False)
            except CodecError as exc:
                self._raise_failure()
                raise H2Error(f"cannot send on stream {self.id}: {exc}") from None
            offset += n
            big = big or n >= DIRECT_MIN
        if offset:
            self.bytes_sent += offset
            if big:
                conn._flush()
            else:
                conn._flush_soon()
        return offset

    @property
    def max_frame_size(self) -> int:
        """The largest DATA frame the peer takes (its SETTINGS_MAX_FRAME_SIZE): a write is cut into frames of this."""
        return int(self._conn._codec.max_outbound_frame_size)

    def send_capacity(self) -> int:
        """How many bytes `write_nowait` would take now (0 while a write is in progress, the transport is paused, or
        the stream cannot send)."""
        conn = self._conn
        if self._writing or conn._write_paused or conn._closing or self._local_done:
            return 0
        try:
            return max(0, conn._codec.send_window(self.id))
        except CodecError:
            return 0

    def end_nowait(self) -> None:
        """`end()` without waiting: at once if no `write()` is in progress, else from a task after it."""
        if self._local_done:
            return
        if self._writing:
            task = asyncio.ensure_future(self.end())
            task.add_done_callback(_ignore_result)
            return
        if self._conn._closing:
            return
        if not self._conn.is_client and not self._responded:
            raise H2Error(f"stream {self.id}: respond() must come before end()")
        self._send_end()

    async def _write(self, data: bytes | memoryview, end_stream: bool) -> None:
        view = data if isinstance(data, memoryview) else memoryview(data)
        if view.ndim != 1 or view.itemsize != 1:
            view = view.cast("B")
        total = len(view)
        self._check_can_send()
        if total == 0:
            if end_stream:
                self._send_end()
            return
        conn = self._conn
        codec = conn._codec
        copy = not view.readonly  # the caller may change a writable buffer once write() returns
        offset = 0
        while offset < total:
            if conn._write_paused:
                await conn._drain()
                self._check_can_send()
                continue
            try:
                window = codec.send_window(self.id)
            except CodecError:
                self._raise_failure()
                raise H2Error(f"stream {self.id} is closed") from None
            if window <= 0:
                await self._wait_window()
                self._check_can_send()
                continue
            n = min(total - offset, window, codec.max_outbound_frame_size)
            end = offset + n
            last = end_stream and end == total
            chunk = view[offset:end]
            try:  # small payloads are copied into the output buffer by the codec anyway
                codec.send_data(self.id, bytes(chunk) if copy and n >= DIRECT_MIN else chunk, end_stream=last)
            except CodecError as exc:
                self._raise_failure()
                raise H2Error(f"cannot send on stream {self.id}: {exc}") from None
            offset = end
            self.bytes_sent += n
            if last:
                self._local_ended = True
            if n >= DIRECT_MIN:
                conn._flush()  # at once: the transport's buffer limits are what pause this loop
            else:
                conn._flush_soon()
        if end_stream:
            self._maybe_finish()

    async def _wait_window(self) -> None:
        conn = self._conn
        loop = conn._loop
        waiter = self._window_waiter = loop.create_future()
        conn._blocked.add(self)
        start = self._wait_start = loop.time()
        try:
            await waiter
        finally:
            self._window_waiter = None
            conn._blocked.discard(self)
            self._wait_start = None
            waited = loop.time() - start
            self._credit_wait += waited
            conn._credit_wait_done += waited
            if self._credit_warned:
                self._credit_warned = False
                conn._credit_resumed(self, waited)

    def _check_can_send(self) -> None:
        self._raise_failure()
        if self._conn._closing:
            raise ConnectionClosed(self._conn._closed_message())
        if self._local_ended:
            raise H2Error(f"stream {self.id} already ended (end() was called)")
        if not self._conn.is_client and not self._responded:
            raise H2Error(f"stream {self.id}: respond() must come before the response body")

    async def end(self) -> None:
        """Send END_STREAM (half-close). Idempotent; a no-op once the stream was reset or the connection closed."""
        if self._local_done:
            return
        if self._writing:
            await self._wait_turn()
        else:
            self._writing = True
        try:
            if self._local_done or self._conn._closing:
                return
            if not self._conn.is_client and not self._responded:
                raise H2Error(f"stream {self.id}: respond() must come before end()")
            self._send_end()
        finally:
            self._next_writer()

    def _send_end(self) -> None:
        conn = self._conn
        with contextlib.suppress(CodecError):
            conn._codec.end_stream(self.id)
        self._local_ended = True
        conn._flush_soon()
        self._maybe_finish()

    def stream_finished(self) -> None:
        """An end-to-end stream over this one ended cleanly both ways (`ztm.agent.e2estream.Outer`): nothing to do."""

    def reset(self, error_code: int = 8) -> None:
        """Abort the stream with RST_STREAM (default CANCEL). Idempotent, never raises."""
        if self._reset_code is not None or self._conn_error is not None or (self._local_ended and self._eof):
            return
        self._reset_code = error_code
        self._reset_local = True
        conn = self._conn
        if not conn._closing:
            with contextlib.suppress(CodecError):
                conn._codec.reset_stream(self.id, error_code)
            conn._flush_soon()
        if not self._eof:
            self._drop_buffered()
        self._wake_all()
        self._maybe_finish()
        if self._sink is not None:
            self._deliver()

    # ---- server side -------------------------------------------------------------------------------------------

    async def respond(
        self, status: int, headers: Sequence[tuple[str, str]] = (), *, end_stream: bool = False, hold: bool = False
    ) -> None:
        """Server side: send the response headers (and END_STREAM with `end_stream`, for an empty body). `hold`: they
        wait for the stream's first bytes, as with `Connection.open_stream(hold=True)`, for a client that does not
        wait for them."""
        conn = self._conn
        if conn.is_client:
            raise H2Error("respond() is only for streams received by a server")
        if self._responded:
            raise H2Error(f"stream {self.id}: response already sent")
        self._raise_failure()
        if conn._closing:
            raise ConnectionClosed(conn._closed_message())
        hdrs = [(":status", str(status))]
        hdrs.extend(headers)
        try:
            conn._codec.send_headers(self.id, hdrs, end_stream=end_stream)
        except CodecError as exc:
            raise H2Error(f"cannot send the response on stream {self.id}: {exc}") from None
        self._responded = True
        if end_stream:
            self._local_ended = True
            conn._flush_soon()
            self._maybe_finish()
        elif hold:
            conn._hold()
        else:
            conn._flush_soon()

    # ---- client side -------------------------------------------------------------------------------------------

    async def response(self) -> tuple[int, list[tuple[str, str]]]:
        """Client side: wait for the response headers; (status, headers without pseudo-headers)."""
        if not self._conn.is_client:
            raise H2Error("response() is only for streams opened by a client")
        while self._status is None:
            self._raise_failure()
            if self._eof:
                raise H2Error(f"stream {self.id} ended without a response")
            if self._conn._hold_handle is not None:  # held HEADERS: no answer comes before they went out
                self._conn._flush()
            waiter = self._headers_waiter
            if waiter is None or waiter.done():
                waiter = self._headers_waiter = self._conn._loop.create_future()
            await asyncio.shield(waiter)
        return self._status, [(k, v) for k, v in self.headers if not k.startswith(":")]

    async def wait_closed(self) -> None:
        """Return once both directions are done (or the stream was reset, or the connection closed)."""
        if self._finished:
            return
        if self._closed_event is None:
            self._closed_event = asyncio.Event()
        await self._closed_event.wait()

    # ---- state -------------------------------------------------------------------------------------------------

    @property
    def _local_done(self) -> bool:
        return self._local_ended or self._reset_code is not None or self._conn_error is not None

    @property
    def _remote_done(self) -> bool:
        return self._eof or self._reset_code is not None or self._conn_error is not None

    @property
    def closed(self) -> bool:
        """Both directions are done, or the stream was reset, or the connection is gone."""
        return self._finished

    def _failure(self) -> H2Error | None:
        if self._reset_code is not None:
            return StreamReset(self._reset_code, stream_id=self.id, local=self._reset_local)
        if self._conn_error is not None:
            return ConnectionClosed(self._conn_error)
        return None

    def _raise_failure(self) -> None:
        exc = self._failure()
        if exc is not None:
            raise exc

    def _maybe_finish(self) -> None:
        if self._finished or not (self._local_done and self._remote_done):
            return
        self._finished = True
        self._conn._stream_done(self)
        if self._closed_event is not None:
            self._closed_event.set()

    def _drop_buffered(self) -> None:
        """Discard unread data and credit it to the connection window (nobody will read it)."""
        n = self._buffered
        self._chunks.clear()
        self._offset = 0
        self._buffered = 0
        if n:
            self._conn._consumed(self.id, n)

    def _wake_all(self) -> None:
        for waiter in (self._read_waiter, self._window_waiter, self._headers_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _wake_writer(self) -> None:
        waiter = self._window_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # ---- called by the connection for codec events ------------------------------------------------------------

    def _on_response(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers
        for key, value in headers:
            if key == ":status":
                self._status = int(value)
                break
        waiter = self._headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_data(self, data: bytes, flow_controlled_length: int) -> None:
        n = len(data)
        if self._reset_code is not None or self._conn_error is not None:
            self._conn._consumed(self.id, flow_controlled_length)
            return
        if flow_controlled_length > n:  # padding: nothing to hand over, credit it now
            self._conn._consumed(self.id, flow_controlled_length - n)
        if n:
            self._chunks.append(data)
            self._buffered += n
            if self._sink is not None:
                self._deliver()
                return
            waiter = self._read_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def _on_end(self) -> None:
        self._eof = True
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        waiter = self._headers_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self._maybe_finish()
        if self._sink is not None:
            self._deliver()

    def _on_reset(self, error_code: int, *, local: bool = False) -> None:
        if self._finished:
            return
        self._reset_code = error_code
        self._reset_local = local
        if not self._eof:
            self._drop_buffered()
        self._wake_all()
        self._maybe_finish()
        if self._sink is not None:
            self._deliver()

    def _on_conn_closed(self, message: str) -> None:
        if self._finished:
            return
        self._conn_error = message
        if not self._eof:
            self._chunks.clear()
            self._offset = 0
            self._buffered = 0
        self._wake_all()
        self._finished = True
        if self._closed_event is not None:
            self._closed_event.set()
        if self._sink is not None:
            self._deliver()


def _ignore_result(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()
