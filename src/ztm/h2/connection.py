"""One HTTP/2-over-TLS connection: the asyncio protocol shared by client and server.

`Connection` is the I/O half of a connection whose protocol half is `ztm.h2.codec.H2Codec` (sans-IO): it feeds
received bytes to the codec, turns the codec's events into `Stream` state, writes what the codec queues to the TLS
transport, and implements flow control end to end:

* Receive: DATA is credited back to the peer (`H2Codec.acknowledge`) only when `Stream.read()` hands the bytes to
  the consumer, so a slow reader back-pressures the sender and a stream never buffers more than its window. Padding
  and data nobody will read (reset streams) are credited at once.
* Send: `Stream.write()` waits for the peer's window (woken by WINDOW_UPDATE and SETTINGS) and for the transport
  (`pause_writing`/`resume_writing`); frames are as large as the peer allows.

Hot path (bench/RESULTS.md): this is an `asyncio.BufferedProtocol` and *only* that (a class that also inherits
`asyncio.Protocol` makes the loop fall back to its copying path). Reads go into one 1 MiB buffer shared by all
connections of a thread; the codec parses frames in place from it and reports DATA payloads as views of it, which
are copied exactly once, into the `bytes` a stream buffers (anything the codec keeps between reads, it copies), so
the shared buffer is free again when `buffer_updated` returns and an idle connection stays small. Large DATA
payloads are written with `transport.writelines([header, payload])` without being copied; small frames queued
together go out as one buffer.

Stalls are visible: `credit_wait` sums the time streams waited for the peer's flow-control credit, `waiting_for_credit`
counts the streams waiting now, and the keepalive logs a warning for a stream that has waited `credit_warn` seconds
while the peer still answers PINGs (so the peer is alive, and that stream alone gets no credit).

A GOAWAY ends the connection at once, in both directions (no graceful drain). Answers to control frames (PING,
SETTINGS) are not flow controlled; if the transport stays paused while its backlog grows far beyond the high-water
mark, the peer is not reading and the connection is aborted.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from ztm.h2 import events as ev
from ztm.h2.codec import CodecError, H2Codec, NoStreamIdsError, TooManyStreamsError
from ztm.h2.errors import ConnectionClosed, H2Error, NoAnswer, StreamReset, error_name, tls_error_message
from ztm.h2.settings import H2Settings
from ztm.h2.stream import Stream

log = logging.getLogger("ztm.h2")

_READ_BUFFER_SIZE = 1 << 20
_MAX_PENDING = 1 << 20  # bytes accepted from a server-side peer before HTTP/2 starts (during on_connect)
_CLOSE_GRACE = 5.0  # seconds a closing transport may take for its TLS shutdown before it is aborted
_CORK = 64 * 1024  # small frames are collected for one write per loop iteration, up to this many bytes
HOLD_MAX = 0.05
"""Seconds the HEADERS of a stream opened with `hold=True` may wait for the stream's first bytes before they go out
alone (`Connection.open_stream`)."""
CREDIT_WARN = 30.0
"""Seconds a stream may wait for flow-control credit while the peer is alive before the keepalive warns about it."""


_local = threading.local()


def _read_buffer() -> memoryview:
    try:
        view: memoryview = _local.view
    except AttributeError:
        view = _local.view = memoryview(bytearray(_READ_BUFFER_SIZE))
    return view


def _peer_label(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = str(address[0]), address[1]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return "unknown peer"


# --------------------------------------------------------------------------------------------------------------


class Connection(asyncio.BufferedProtocol):
    """One HTTP/2 connection over TLS, client or server side. Made by `connect()` and `serve()`, not directly."""

    def __init__(self, *, is_client: bool, settings: H2Settings, label: str = "") -> None:
        self.is_client = is_client
        self.closed = False
        self.peer_cert_der: bytes | None = None
        self.peer_address: tuple[str, int] | None = None
        self.local_address: tuple[str, int] | None = None
        """This side's address and port of the TCP connection (what a NAT maps)."""
        self.alpn: str | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self._settings = settings
        self._label = label
        self._loop = asyncio.get_running_loop()
        self._codec = H2Codec(client=is_client, settings=settings)
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, Stream] = {}
        self._blocked: set[Stream] = set()  # streams waiting for the peer's flow-control credit
        self._credit_wait_done = 0.0  # seconds streams waited for credit (finished waits)
        self.credit_warn = CREDIT_WARN
        self._write_paused = False
        self._flush_scheduled = False
        self._hold_handle: asyncio.TimerHandle | None = None  # flushes held HEADERS (open_stream(hold=True))
        self._held = 0  # bytes queued when the last frames were held: a read that queues nothing more keeps them
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._pings: dict[bytes, asyncio.Future[float]] = {}
        self.pings_answered = 0
        """PINGs of ours the peer answered (keepalive's included): the liveness a caller can count."""
        self._ping_seq = 0
        self._ready = False  # h2 started: our preface is out, received bytes go to h2
        self._pending: bytearray | None = None if is_client else bytearray()
        self._ready_fut: asyncio.Future[None] | None = None
        self._ready_error: H2Error | None = None
        self._settings_received = False
        self._closing = False
        self._lost = False
        self._lost_event = asyncio.Event()
        self._close_reason = ""
        self._goaway: str | None = None
        self._close_callbacks: list[Callable[[Connection], None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._keepalive_task: asyncio.Task[None] | None = None
        self._abort_handle: asyncio.TimerHandle | None = None
        self._rview: memoryview | None = None
        self._max_backlog = 16 * settings.max_frame_size
        # Set by server.py: called with the raw TCP transport to start TLS, and for each new request stream.
        self._raw_hook: Callable[[Connection, asyncio.Transport], None] | None = None
        self._on_request: Callable[[Stream], None] | None = None

    def __repr__(self) -> str:
        side = "client" if self.is_client else "server"
        state = "closed" if self.closed else f"{len(self._streams)} streams"
        return f"<ztm.h2.Connection {side} {self._label} {state}>"

    # ---- public API ------------------------------------------------------------------------------------------

    async def open_stream(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        *,
        end_stream: bool = False,
        authority: str = "ztm",
        hold: bool = False,
    ) -> Stream:
        """Open a request stream (client side) and send its headers.

        For `CONNECT` (RFC 9113 section 8.5) `path` is the target in authority form and is sent as `:authority`
        (falling back to `authority` when empty); `:scheme` and `:path` are omitted.

        `hold`: the HEADERS wait for the stream's first bytes (or anything else written on the connection) and go out
        with them in one TLS record and syscall, instead of alone at the end of this loop iteration; at the latest
        after `HOLD_MAX` seconds, or as soon as a reader waits on the stream; bytes read from the peer meanwhile do not
        release them. For a stream whose peer sends nothing before this side has (an exit's accept of a relayed
        stream: the hub splices only after it).
        """
        if not self.is_client:
            raise H2Error("open_stream() is only for client connections")
        self._check_open()
        codec = self._codec
        try:
            stream_id = codec.next_stream_id()
        except NoStreamIdsError:
            raise H2Error(f"no stream IDs left on the connection to {self._label}; reconnect") from None
        if method == "CONNECT":
            hdrs = [(":method", method), (":authority", path or authority)]
        else:
            hdrs = [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path)]
        hdrs.extend(headers)
        stream = Stream(self, stream_id)
        self._streams[stream_id] = stream
        try:
            codec.send_headers(stream_id, hdrs, end_stream=end_stream)
        except TooManyStreamsError:
            del self._streams[stream_id]
            raise H2Error(f"too many concurrent streams on the connection to {self._label}") from None
        except CodecError as exc:
            del self._streams[stream_id]
            raise H2Error(f"cannot open a stream for {method} {path}: {exc}") from None
        if end_stream:
            stream._local_ended = True
        if hold and not end_stream:
            self._hold()
        else:
            self._flush_soon()
        return stream

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: Sequence[tuple[str, str]] = (),
        timeout: float = 10.0,
        limit: int = 1 << 24,
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """One call: send `body`, return (status, headers, whole response body) within `timeout` seconds."""
        stream: Stream | None = None
        hdrs = list(headers)
        if body and not any(k.lower() == "content-length" for k, _ in hdrs):
            hdrs.append(("content-length", str(len(body))))
        try:
            async with asyncio.timeout(timeout):
                stream = await self.open_stream(method, path, hdrs, end_stream=not body)
                if body:
                    try:
                        await stream.write(body, end_stream=True)
                    except StreamReset as exc:
                        if exc.error_code != 0:  # NO_ERROR: the server answered without reading it all
                            raise
                status, response_headers = await stream.response()
                data = await stream.read_all(limit)
                return status, response_headers, data
        except TimeoutError:
            raise NoAnswer(f"no answer within {timeout:g}s to {method} {path} from {self._label}") from None
        finally:
            if stream is not None:
                stream.reset()

    async def ping(self, timeout: float = 5.0) -> float:
        """Send a PING and return the round-trip time in seconds."""
        self._check_open()
        self._ping_seq += 1
        data = self._ping_seq.to_bytes(8, "big")
        fut: asyncio.Future[float] = self._loop.create_future()
        self._pings[data] = fut
        start = time.perf_counter()
        try:
            try:
                self._codec.ping(data)
            except CodecError:
                raise ConnectionClosed(self._closed_message()) from None
            self._flush_soon()
            async with asyncio.timeout(timeout):
                end = await fut
        except TimeoutError:
            raise NoAnswer(f"no PING answer from {self._label} within {timeout:g}s") from None
        finally:
            self._pings.pop(data, None)
        return end - start

    def close(self, error_code: int = 0, message: str = "") -> None:
        """Send GOAWAY, then close the transport. Idempotent. Pending stream operations raise ConnectionClosed."""
        reason = f"closed locally: {message}" if message else "closed locally"
        self._close(reason, error_code=error_code, message=message)

    async def wait_closed(self) -> None:
        """Return once the connection is closed and its transport is gone."""
        await self._lost_event.wait()

    def add_close_callback(self, cb: Callable[[Connection], None]) -> None:
        """Call `cb(connection)` once when the connection closes (at once, soon, if it already has)."""
        if self.closed:
            self._loop.call_soon(cb, self)
        else:
            self._close_callbacks.append(cb)

    @property
    def close_reason(self) -> str:
        """Why the connection closed ("" while open)."""
        return self._close_reason

    @property
    def open_streams(self) -> int:
        """Streams not yet closed in both directions."""
        return len(self._streams)

    @property
    def credit_wait(self) -> float:
        """Seconds the streams of this connection spent waiting for the peer's flow-control credit (waits in
        progress included)."""
        return self._credit_wait_done + sum(s.credit_waiting for s in self._blocked)

    @property
    def waiting_for_credit(self) -> int:
        """Streams waiting for the peer's flow-control credit now."""
        return len(self._blocked)

    # ---- asyncio protocol --------------------------------------------------------------------------------------

    def connection_made(self, base_transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, base_transport)  # uvloop's transports do not subclass asyncio's
        if self._raw_hook is not None:
            # Server side: a plain TCP connection. The hook (server.py) starts TLS on it right here, before the
            # loop reads anything, so the ClientHello goes to the TLS protocol and not to us.
            transport.pause_reading()
            self.peer_address = _address(transport.get_extra_info("peername"))
            self._label = _peer_label(self.peer_address)
            hook, self._raw_hook = self._raw_hook, None
            hook(self, transport)
            return
        # Client side: create_connection() completed the TLS handshake.
        self._ready_fut = self._loop.create_future()
        self._tls_ready(transport)
        if self.alpn != "h2":
            self._ready_error = H2Error(f"{self._label} does not speak HTTP/2 over TLS (ALPN)")
            self._close("no HTTP/2 (ALPN)", goaway=False)
            return
        self._start_h2()

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self._rview = _read_buffer()
        return view

    def buffer_updated(self, nbytes: int) -> None:
        view = self._rview
        assert view is not None
        if self._closing:
            return
        if self._ready:
            self.bytes_received += nbytes
            self._process(view[:nbytes])
            return
        pending = self._pending
        if pending is not None:  # server: TLS is up but HTTP/2 not started yet (on_connect pending)
            pending += view[:nbytes]
            if len(pending) > _MAX_PENDING:
                self._close("too much data before the connection was accepted", goaway=False, abort=True)

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._write_paused = False
        if self._abort_handle is not None:
            self._abort_handle.cancel()
            self._abort_handle = None
        if not self.closed:
            if self._goaway is not None:
                reason = f"the peer went away ({self._goaway})"
            elif exc is None:
                reason = "closed by the peer"
            else:
                reason = str(exc) or type(exc).__name__
            if self._ready_fut is not None and not self._ready_fut.done() and self._ready_error is None:
                self._ready_error = _handshake_error(self._label, exc)
            self._shutdown(reason)
        self._transport = None
        self._lost_event.set()

    # ---- internals used by server.py / client.py -----------------------------------------------------------

    def _tls_ready(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is not None:
            self.peer_cert_der = ssl_object.getpeercert(binary_form=True)
            self.alpn = ssl_object.selected_alpn_protocol()
        if self.peer_address is None:
            self.peer_address = _address(transport.get_extra_info("peername"))
        self.local_address = _address(transport.get_extra_info("sockname"))
        if not self._label:
            self._label = _peer_label(self.peer_address)
        frame = self._settings.max_frame_size
        transport.set_write_buffer_limits(high=2 * frame, low=frame // 2)

    def _start_h2(self) -> None:
        """Send our preface (SETTINGS, connection WINDOW_UPDATE) and feed what arrived meanwhile."""
        if self._closing:
            return
        self._ready = True
        self._codec.initiate()
        self._flush()
        pending, self._pending = self._pending, None
        if pending:
            self.bytes_received += len(pending)
            self._process(pending)

    async def _wait_ready(self) -> None:
        """Client: wait for the server's SETTINGS; raise H2Error if the connection fails before."""
        fut = self._ready_fut
        if fut is not None and not fut.done():
            await fut
        if self._ready_error is not None:
            raise self._ready_error
        if self.closed:
            raise ConnectionClosed(f"connection to {self._label} closed: {self._close_reason}")

    def _abandon(self, reason: str) -> None:
        """Server: the connection never became HTTP/2 (failed handshake); mark it closed."""
        self._closing = True
        self._shutdown(reason)
        self._transport = None
        self._lost_event.set()

    def _start_keepalive(self, interval: float, timeout: float) -> None:
        self._keepalive_task = self._loop.create_task(self._keepalive(interval, timeout))

    def set_keepalive(self, interval: float, timeout: float) -> None:
        """Send a PING every `interval` seconds from now on (replacing the current keepalive), closing the connection
        when one gets no answer within `timeout` seconds and nothing else arrived meanwhile."""
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            self._keepalive_task = None
        if not self.closed:
            self._start_keepalive(interval, timeout)

    @property
    def socket(self) -> Any:
        """The connection's TCP socket (for socket options), or None once it is closed."""
        return self._transport.get_extra_info("socket") if self._transport is not None else None

    async def _keepalive(self, interval: float, timeout: float) -> None:
        while not self.closed:
            await asyncio.sleep(interval)
            if self.closed:
                return
            received = self.bytes_received
            try:
                await self.ping(timeout)
            except ConnectionClosed:
                return
            except NoAnswer:
                if self.bytes_received != received:
                    # Bytes kept arriving: the peer is alive and its answer waits behind data on a slow link.
                    log.debug("PING answer from %s late, but the connection is receiving; keeping it", self._label)
                    self._warn_stalled()
                    continue
                log.info("no PING answer from %s within %gs; closing the connection", self._label, timeout)
                self._close(f"no PING answer within {timeout:g}s (keepalive)", abort=True)
                return
            self._warn_stalled()

    def _warn_stalled(self) -> None:
        """The peer answered a PING: warn (once per wait) about streams that have waited long for its credit."""
        for stream in list(self._blocked):
            waited = stream.credit_waiting
            if waited >= self.credit_warn and not stream._credit_warned:
                stream._credit_warned = True
                log.warning(
                    "stream %d%s with %s has waited %.0fs for flow-control credit (%d bytes sent on it) although the"
                    " peer answers PINGs: the far end does not read, or its credit was lost",
                    stream.id,
                    f" ({stream.label})" if stream.label else "",
                    self._label,
                    waited,
                    stream.bytes_sent,
                )

    def _credit_resumed(self, stream: Stream, waited: float) -> None:
        """A stream we warned about got credit again."""
        label = f" ({stream.label})" if stream.label else ""
        log.info("stream %d%s with %s got flow-control credit after %.0fs", stream.id, label, self._label, waited)

    def _check_open(self) -> None:
        if self.closed or self._closing:
            raise ConnectionClosed(self._closed_message())

    def _closed_message(self) -> str:
        where = "to" if self.is_client else "from"
        return f"connection {where} {self._label} closed: {self._close_reason or 'closing'}"

    # ---- data path ---------------------------------------------------------------------------------------------

    def _process(self, data: bytes | bytearray | memoryview) -> None:
        events = self._codec.receive(data)
        dispatch = _DISPATCH
        for event in events:
            handler = dispatch.get(event.__class__)
            if handler is not None:
                handler(self, event)
        if self._hold_handle is None or self._codec.output_size > self._held:
            self._flush()  # else only held HEADERS are queued: they wait for this side's next write (issue 13)
        if self._write_paused:
            transport = self._transport
            if transport is not None and transport.get_write_buffer_size() > self._max_backlog:
                # DATA writers stop at the transport's high-water mark; a backlog far beyond it means the peer
                # keeps making us answer (PING, SETTINGS, RST_STREAM...) without reading the answers.
                log.info("closing the connection with %s: it does not read what we send", self._label)
                self._close("the peer does not read what we send", abort=True)

    def _flush(self) -> None:
        if self._hold_handle is not None:  # held HEADERS (open_stream(hold=True)) go out now
            self._hold_handle.cancel()
            self._hold_handle = None
        codec = self._codec
        if not codec.has_output:
            return
        out = codec.take_output()
        transport = self._transport
        if transport is None or self._lost:
            return
        if len(out) == 1:
            chunk = out[0]
            self.bytes_sent += len(chunk)
            transport.write(chunk)
        else:
            self.bytes_sent += sum(map(len, out))
            transport.writelines(out)

    def _flush_soon(self) -> None:
        """Write what the codec queued at the end of this loop iteration, so that the small frames produced by one
        task step (HEADERS and a short body, END_STREAM, WINDOW_UPDATE...) go out in one TLS record and syscall."""
        if self._flush_scheduled:
            if self._codec.output_size >= _CORK:
                self._flush()
            return
        self._flush_scheduled = True
        self._loop.call_soon(self._flush_deferred)

    def _hold(self) -> None:
        """Frames just queued wait for the next flush, at the latest `HOLD_MAX` seconds. Reading from the peer does
        not release them (only a write, a reader waiting on a held stream, or the timer)."""
        if self._flush_scheduled:
            return
        if self._hold_handle is None:
            self._hold_handle = self._loop.call_later(HOLD_MAX, self._flush_held)
        self._held = self._codec.output_size

    def _flush_held(self) -> None:
        self._hold_handle = None
        self._flush()

    def _flush_deferred(self) -> None:
        self._flush_scheduled = False
        self._flush()

    def _consumed(self, stream_id: int, n: int) -> None:
        """Credit `n` received bytes of `stream_id` back to the peer (the consumer took them)."""
        if n <= 0 or self._closing:
            return
        if self._codec.acknowledge(stream_id, n):  # not just for frames queued before (held HEADERS)
            self._flush_soon()

    async def _drain(self) -> None:
        if self.closed:
            raise ConnectionClosed(self._closed_message())
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._drain_waiters.append(waiter)
        await waiter

    def _wake_drain(self) -> None:
        waiters = self._drain_waiters
        if waiters:
            self._drain_waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _stream_done(self, stream: Stream) -> None:
        self._streams.pop(stream.id, None)

    # ---- codec events ---------------------------------------------------------------------------------------

    def _on_request_received(self, event: ev.RequestReceived) -> None:
        if self.is_client or self._closing:
            return
        stream = Stream(self, event.stream_id, event.headers)
        self._streams[event.stream_id] = stream
        if self._on_request is not None:
            self._on_request(stream)
        else:
            stream.reset(0x7)  # REFUSED_STREAM

    def _on_response_received(self, event: ev.ResponseReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream._on_response(event.headers)

    def _on_trailers_received(self, event: ev.TrailersReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream.trailers = event.headers

    def _on_data_received(self, event: ev.DataReceived) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is None:
            self._consumed(event.stream_id, event.flow_controlled_length)
        else:  # the one copy: out of the (shared, reused) read buffer into bytes the stream may keep
            stream._on_data(event.data.tobytes(), event.flow_controlled_length)

    def _on_stream_ended(self, event: ev.StreamEnded) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream._on_end()

    def _on_stream_reset(self, event: ev.StreamReset) -> None:
        stream = self._streams.get(event.stream_id)
        if stream is not None:
            stream._on_reset(event.error_code, local=not event.remote)

    def _on_window_updated(self, event: ev.WindowUpdated) -> None:
        if event.stream_id == 0:
            for stream in list(self._blocked):
                stream._wake_writer()
        else:
            target = self._streams.get(event.stream_id)
            if target is not None:
                target._wake_writer()

    def _on_settings_changed(self, event: ev.SettingsChanged) -> None:
        for stream in list(self._blocked):
            stream._wake_writer()
        if not self._settings_received:
            self._settings_received = True
            fut = self._ready_fut
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _on_ping_acked(self, event: ev.PingAcked) -> None:
        fut = self._pings.pop(event.data, None)
        if fut is not None and not fut.done():
            self.pings_answered += 1
            fut.set_result(time.perf_counter())

    def _on_goaway(self, event: ev.GoAway) -> None:
        # No graceful drain: the connection ends here. Data already received stays readable.
        detail = f"GOAWAY {error_name(event.error_code)}"
        if event.additional_data:
            detail += ": " + event.additional_data.decode("utf-8", "replace")
        self._goaway = detail
        self._close(f"the peer went away ({detail})", goaway=False)

    def _on_connection_terminated(self, event: ev.ConnectionTerminated) -> None:
        log.info("HTTP/2 protocol error on the connection with %s: %s", self._label, event.reason)
        self._flush()  # the GOAWAY the codec queued
        self._close(f"HTTP/2 protocol error: {event.reason}", goaway=False)

    # ---- closing -----------------------------------------------------------------------------------------------

    def _close(
        self, reason: str, *, error_code: int = 0, message: str = "", goaway: bool = True, abort: bool = False
    ) -> None:
        transport = self._transport
        if self._closing:
            if abort and transport is not None and not self._lost:
                transport.abort()
            return
        self._closing = True
        if transport is not None and not self._lost:
            if goaway and self._ready:
                self._codec.close(error_code, message.encode())
            self._flush()  # the GOAWAY and whatever was still queued
            if abort:
                transport.abort()
            else:
                transport.close()
                self._abort_handle = self._loop.call_later(_CLOSE_GRACE, transport.abort)
        self._shutdown(reason)
        if transport is None:
            self._lost_event.set()

    def _shutdown(self, reason: str) -> None:
        """Fail everything pending, run close callbacks once."""
        if self.closed:
            return
        self.closed = True
        self._closing = True
        self._close_reason = reason
        message = self._closed_message()
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream._on_conn_closed(message)
        self._blocked.clear()
        if self._hold_handle is not None:
            self._hold_handle.cancel()
            self._hold_handle = None
        self._wake_drain()
        pings, self._pings = self._pings, {}
        for fut in pings.values():
            if not fut.done():
                fut.set_exception(ConnectionClosed(message))
        fut_ready = self._ready_fut
        if fut_ready is not None and not fut_ready.done():
            fut_ready.set_result(None)
        current = asyncio.current_task() if self._loop.is_running() else None
        if self._keepalive_task is not None and self._keepalive_task is not current:
            self._keepalive_task.cancel()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        callbacks, self._close_callbacks = self._close_callbacks, []
        for cb in callbacks:
            try:
                cb(self)
            except Exception:
                log.exception("close callback %r failed", cb)


_DISPATCH: dict[type[ev.Event], Callable[[Connection, Any], None]] = {
    ev.DataReceived: Connection._on_data_received,
    ev.WindowUpdated: Connection._on_window_updated,
    ev.StreamEnded: Connection._on_stream_ended,
    ev.RequestReceived: Connection._on_request_received,
    ev.ResponseReceived: Connection._on_response_received,
    ev.TrailersReceived: Connection._on_trailers_received,
    ev.StreamReset: Connection._on_stream_reset,
    ev.SettingsChanged: Connection._on_settings_changed,
    ev.PingAcked: Connection._on_ping_acked,
    ev.GoAway: Connection._on_goaway,
    ev.ConnectionTerminated: Connection._on_connection_terminated,
}


def _address(value: Any) -> tuple[str, int] | None:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])
    return None


def _handshake_error(label: str, exc: Exception | None) -> H2Error:
    """The error `connect()` raises when the connection dies before the server's first SETTINGS frame."""
    if exc is None:
        return H2Error(
            f"{label} closed the connection during the handshake"
            " (it did not accept our client certificate, or refused the connection)"
        )
    if isinstance(exc, ssl.SSLError):
        return H2Error(tls_error_message(label, exc))
    return H2Error(f"connection to {label} lost during the HTTP/2 handshake: {exc or type(exc).__name__}")
