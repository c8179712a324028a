"""One HTTP/2-over-TLS connection: the asyncio protocol shared by client and server.

`Connection` is an `asyncio.BufferedProtocol` wrapping `h2.connection.H2Connection` (sans-IO). It turns h2 events
into `Stream` state, writes what h2 produces to the TLS transport, and implements flow control end to end:

* Receive: DATA is credited back to the peer (`acknowledge_received_data`) only when `Stream.read()` hands the bytes
  to the consumer, so a slow reader back-pressures the sender and a stream never buffers more than its window.
  Padding and data nobody will read (reset streams) are credited at once.
* Send: `Stream.write()` waits for the peer's window (woken by WINDOW_UPDATE and SETTINGS) and for the transport
  (`pause_writing`/`resume_writing`); frames are as large as the peer allows.

Hot-path notes (DESIGN.md section 5):

* **h2's eager frame repr.** h2 4.4.1 calls `self.config.logger.trace("Received frame: %s", repr(frame))` in
  `H2Connection._receive_frame` for every received frame; the `repr()` runs whatever the logger is, and
  `DataFrame.__repr__` re-serializes and hex-encodes the whole payload (~70% of receive CPU for bulk data). A logger
  in `H2Configuration` cannot help. We do not patch h2 or hyperframe globally: each connection gets its own
  `_FrameBuffer` (a `FrameBuffer` subclass installed as `incoming_buffer`) that re-classes parsed DATA frames as
  `_QuietDataFrame`, a `DataFrame` subclass whose `__repr__` is a short constant-cost string, and registers that
  class in the connection's `_frame_dispatch_table` so h2 dispatches it like any DATA frame. The same buffer also
  parses frame bodies from a memoryview instead of copying each frame out of the buffer first.
* **Sending without copies.** Large DATA payloads bypass `Frame.serialize()` (which joins header and body into a new
  bytes object): `_H2Connection._prepare_for_sending` queues the 9-byte header and the payload itself, and the
  connection hands the list to `transport.writelines`. Memoryview slices of the caller's (immutable) data travel in
  a `_Payload` wrapper, because `H2Stream.send_data` would otherwise copy memoryviews with `tobytes()`.
* **Reads** go into one 256 KiB buffer shared by all connections of a thread: h2 copies received bytes into its own
  frame buffer before anything else runs, so the shared buffer is free again when `buffer_updated` returns. This
  keeps an idle connection small.

Other notes: h2 moves the connection to CLOSED as soon as a GOAWAY is sent or received (no graceful drain), so a
GOAWAY ends the connection at once. Answers to control frames (PING, SETTINGS) are not flow controlled; if the
transport stays paused while its backlog grows far beyond the high-water mark, the peer is not reading and the
connection is aborted.

All of this relies on h2 4.4.1 internals (`incoming_buffer`, `_frame_dispatch_table`, `_prepare_for_sending`,
`_data_to_send`); the version is pinned in pyproject.toml and the tests exercise every path.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import h2.events
import h2.exceptions
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.exceptions import FrameDataMissingError, ProtocolError
from h2.frame_buffer import FrameBuffer
from h2.settings import SettingCodes, Settings
from hyperframe.exceptions import InvalidDataError, InvalidFrameError
from hyperframe.frame import DataFrame, Frame

from ztm.h2.errors import ConnectionClosed, H2Error, StreamReset, error_name, tls_error_message
from ztm.h2.settings import H2Settings
from ztm.h2.stream import Stream

log = logging.getLogger("ztm.h2")

_READ_BUFFER_SIZE = 256 * 1024
_DIRECT_MIN = 16 * 1024  # DATA payloads at least this large are written without serializing the frame
_MAX_PENDING = 1 << 20  # bytes accepted from a server-side peer before HTTP/2 starts (during on_connect)
_CLOSE_GRACE = 5.0  # seconds a closing transport may take for its TLS shutdown before it is aborted
_FRAME_HEADER = struct.Struct(">HBBBL")


# --------------------------------------------------------------------------------------------------------------
# h2 adaptations (see the module docstring)


class _QuietDataFrame(DataFrame):
    """A received DATA frame whose repr does not serialize and hex-encode the payload."""

    def __repr__(self) -> str:
        return f"DataFrame(stream_id={self.stream_id}, length={self.body_len})"


class _FrameBuffer(FrameBuffer):
    """h2's `FrameBuffer`, parsing bodies in place and yielding DATA frames as `_QuietDataFrame`."""

    def __next__(self) -> Frame:
        data = self._data
        while True:
            if len(data) < 9:
                raise StopIteration
            view = memoryview(data)
            try:
                try:
                    frame, length = Frame.parse_frame_header(view[:9])
                except (InvalidDataError, InvalidFrameError) as err:
                    raise ProtocolError(f"Received frame with invalid header: {err!s}") from err
                if len(data) < length + 9:
                    raise StopIteration
                self._validate_frame_length(length)
                if frame.__class__ is DataFrame:
                    frame.__class__ = _QuietDataFrame
                body = view[9 : 9 + length]
                try:
                    frame.parse_body(body)
                except InvalidDataError as err:
                    raise ProtocolError("Received frame with non-compliant data") from err
                except InvalidFrameError as err:
                    raise FrameDataMissingError("Frame data missing or invalid") from err
                finally:
                    body.release()
            finally:
                view.release()
            try:
                del data[: 9 + length]
            except BufferError:  # a view of the buffer is still alive somewhere: copy instead
                data = self._data = bytearray(data[9 + length :])
            result = self._update_header_buffer(frame)
            if result is not None:
                return result


class _Payload:
    """A memoryview DATA payload passed through h2 untouched (h2 would copy a bare memoryview)."""

    __slots__ = ("view",)

    def __init__(self, view: memoryview) -> None:
        self.view = view

    def __len__(self) -> int:
        return len(self.view)


_Chunk = bytes | bytearray | memoryview


class _H2Connection(H2Connection):
    """`H2Connection` with our settings, the quiet frame buffer and copy-free output of large DATA frames."""

    def __init__(self, client: bool, settings: H2Settings) -> None:
        config = H2Configuration(client_side=client, header_encoding="utf-8", validate_inbound_headers=True)
        super().__init__(config=config)
        values: dict[SettingCodes, int] = {
            SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
            SettingCodes.INITIAL_WINDOW_SIZE: settings.stream_window,
            SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
        }
        if client:
            values[SettingCodes.ENABLE_PUSH] = 0
        # Values given here are in force at once (they go out in our first SETTINGS frame, before the peer may
        # use anything but the defaults), so the derived limits are set to match.
        self.local_settings = Settings(client=client, initial_values=values)
        self.max_inbound_frame_size = settings.max_frame_size
        self.decoder.max_header_list_size = settings.max_header_list_size
        self.incoming_buffer = _FrameBuffer(server=not client)
        self._frame_dispatch_table[_QuietDataFrame] = self._receive_data_frame
        self.out: list[_Chunk] = []

    def _prepare_for_sending(self, frames: list[Frame]) -> None:
        for f in frames:
            if f.__class__ is DataFrame and len(f.data) >= _DIRECT_MIN and "PADDED" not in f.flags:
                payload: Any = f.data
                n = len(payload)
                f.body_len = n
                flags = 0x1 if "END_STREAM" in f.flags else 0
                buf = self._data_to_send
                buf += _FRAME_HEADER.pack(n >> 8, n & 0xFF, 0, flags, f.stream_id)
                self.out.append(buf)
                self._data_to_send = bytearray()
                self.out.append(payload.view if payload.__class__ is _Payload else payload)
            else:
                self._data_to_send += f.serialize()

    def pending_output(self) -> bool:
        return bool(self._data_to_send or self.out)

    def take_output(self) -> list[_Chunk]:
        out = self.out
        if self._data_to_send:
            out.append(self._data_to_send)
            self._data_to_send = bytearray()
        self.out = []
        return out

    def data_to_send(self, amount: int | None = None) -> bytes:
        data = b"".join(self.take_output())
        if amount is not None and amount < len(data):
            self._data_to_send = bytearray(data[amount:])
            data = data[:amount]
        return data

    def send_view(self, stream_id: int, data: bytes | memoryview, end_stream: bool) -> None:
        if isinstance(data, memoryview) and len(data) >= _DIRECT_MIN:
            payload: Any = _Payload(data)
            self.send_data(stream_id, payload, end_stream=end_stream)
        else:
            self.send_data(stream_id, data, end_stream=end_stream)


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
        self.alpn: str | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self._settings = settings
        self._label = label
        self._loop = asyncio.get_running_loop()
        self._h2 = _H2Connection(is_client, settings)
        self._transport: asyncio.Transport | None = None
        self._streams: dict[int, Stream] = {}
        self._blocked: set[Stream] = set()
        self._write_paused = False
        self._drain_waiters: list[asyncio.Future[None]] = []
        self._pings: dict[bytes, asyncio.Future[float]] = {}
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
    ) -> Stream:
        """Open a request stream (client side) and send its headers.

        For `CONNECT` (RFC 9113 section 8.5) `path` is the target in authority form and is sent as `:authority`
        (falling back to `authority` when empty); `:scheme` and `:path` are omitted.
        """
        if not self.is_client:
            raise H2Error("open_stream() is only for client connections")
        self._check_open()
        h2c = self._h2
        try:
            stream_id = h2c.get_next_available_stream_id()
        except h2.exceptions.NoAvailableStreamIDError:
            raise H2Error(f"no stream IDs left on the connection to {self._label}; reconnect") from None
        if method == "CONNECT":
            hdrs = [(":method", method), (":authority", path or authority)]
        else:
            hdrs = [(":method", method), (":scheme", "https"), (":authority", authority), (":path", path)]
        hdrs.extend(headers)
        stream = Stream(self, stream_id)
        self._streams[stream_id] = stream
        try:
            h2c.send_headers(stream_id, hdrs, end_stream=end_stream)
        except h2.exceptions.TooManyStreamsError:
            del self._streams[stream_id]
            raise H2Error(f"too many concurrent streams on the connection to {self._label}") from None
        except h2.exceptions.H2Error as exc:
            del self._streams[stream_id]
            raise H2Error(f"cannot open a stream for {method} {path}: {exc}") from None
        if end_stream:
            stream._local_ended = True
        self._flush()
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
            raise H2Error(f"no answer within {timeout:g}s to {method} {path} from {self._label}") from None
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
                self._h2.ping(data)
            except h2.exceptions.H2Error:
                raise ConnectionClosed(self._closed_message()) from None
            self._flush()
            async with asyncio.timeout(timeout):
                end = await fut
        except TimeoutError:
            raise H2Error(f"no PING answer from {self._label} within {timeout:g}s") from None
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
        if not self._label:
            self._label = _peer_label(self.peer_address)
        frame = self._settings.max_frame_size
        transport.set_write_buffer_limits(high=2 * frame, low=frame // 2)

    def _start_h2(self) -> None:
        """Send our preface (SETTINGS, connection WINDOW_UPDATE) and feed what arrived meanwhile."""
        if self._closing:
            return
        self._ready = True
        h2c = self._h2
        h2c.initiate_connection()
        extra = self._settings.connection_window - 65535
        if extra > 0:
            h2c.increment_flow_control_window(extra)
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

    async def _keepalive(self, interval: float, timeout: float) -> None:
        while not self.closed:
            await asyncio.sleep(interval)
            if self.closed:
                return
            try:
                await self.ping(timeout)
            except ConnectionClosed:
                return
            except H2Error:
                log.info("no PING answer from %s within %gs; closing the connection", self._label, timeout)
                self._close(f"no PING answer within {timeout:g}s (keepalive)", abort=True)
                return

    def _check_open(self) -> None:
        if self.closed or self._closing:
            raise ConnectionClosed(self._closed_message())

    def _closed_message(self) -> str:
        where = "to" if self.is_client else "from"
        return f"connection {where} {self._label} closed: {self._close_reason or 'closing'}"

    # ---- data path ---------------------------------------------------------------------------------------------

    def _process(self, data: bytes | bytearray | memoryview) -> None:
        try:
            events = self._h2.receive_data(data)
        except h2.exceptions.ProtocolError as exc:
            log.info("HTTP/2 protocol error on the connection with %s: %s", self._label, exc)
            self._flush()  # the GOAWAY h2 prepared
            self._close(f"HTTP/2 protocol error: {exc}", goaway=False)
            return
        dispatch = _DISPATCH
        for event in events:
            handler = dispatch.get(event.__class__)
            if handler is not None:
                handler(self, event)
        self._flush()
        if self._write_paused:
            transport = self._transport
            if transport is not None and transport.get_write_buffer_size() > self._max_backlog:
                # DATA writers stop at the transport's high-water mark; a backlog far beyond it means the peer
                # keeps making us answer (PING, SETTINGS, RST_STREAM...) without reading the answers.
                log.info("closing the connection with %s: it does not read what we send", self._label)
                self._close("the peer does not read what we send", abort=True)

    def _flush(self) -> None:
        h2c = self._h2
        if not h2c.pending_output():
            return
        out = h2c.take_output()
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

    def _consumed(self, stream_id: int, n: int) -> None:
        """Credit `n` received bytes of `stream_id` back to the peer (the consumer took them)."""
        if n <= 0 or self._closing:
            return
        try:
            self._h2.acknowledge_received_data(n, stream_id)
        except h2.exceptions.H2Error:
            return
        self._flush()

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

    # ---- h2 events -----------------------------------------------------------------------------------------

    def _on_request_received(self, event: h2.events.RequestReceived) -> None:
        if self.is_client or self._closing or event.stream_id is None:
            return
        headers = [(str(k), str(v)) for k, v in event.headers or ()]
        stream = Stream(self, event.stream_id, headers)
        self._streams[event.stream_id] = stream
        if self._on_request is not None:
            self._on_request(stream)
        else:
            stream.reset(0x7)  # REFUSED_STREAM

    def _on_response_received(self, event: h2.events.ResponseReceived) -> None:
        stream = self._streams.get(event.stream_id or 0)
        if stream is not None:
            stream._on_response([(str(k), str(v)) for k, v in event.headers or ()])

    def _on_trailers_received(self, event: h2.events.TrailersReceived) -> None:
        stream = self._streams.get(event.stream_id or 0)
        if stream is not None:
            stream.trailers = [(str(k), str(v)) for k, v in event.headers or ()]

    def _on_data_received(self, event: h2.events.DataReceived) -> None:
        stream = self._streams.get(event.stream_id or 0)
        flow = event.flow_controlled_length or 0
        if stream is None:
            self._consumed(event.stream_id or 0, flow)
        else:
            stream._on_data(event.data or b"", flow)

    def _on_stream_ended(self, event: h2.events.StreamEnded) -> None:
        stream = self._streams.get(event.stream_id or 0)
        if stream is not None:
            stream._on_end()

    def _on_stream_reset(self, event: h2.events.StreamReset) -> None:
        stream = self._streams.get(event.stream_id or 0)
        if stream is not None:
            stream._on_reset(event.error_code if event.error_code is not None else 0)

    def _on_window_updated(self, event: h2.events.WindowUpdated) -> None:
        if event.stream_id == 0:
            for stream in list(self._blocked):
                stream._wake_writer()
        else:
            target = self._streams.get(event.stream_id or 0)
            if target is not None:
                target._wake_writer()

    def _on_settings_changed(self, event: h2.events.RemoteSettingsChanged) -> None:
        for stream in list(self._blocked):
            stream._wake_writer()
        if not self._settings_received:
            self._settings_received = True
            fut = self._ready_fut
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _on_ping_ack(self, event: h2.events.PingAckReceived) -> None:
        fut = self._pings.pop(event.ping_data or b"", None)
        if fut is not None and not fut.done():
            fut.set_result(time.perf_counter())

    def _on_goaway(self, event: h2.events.ConnectionTerminated) -> None:
        # h2 moves the whole connection to CLOSED on GOAWAY (it supports no graceful drain: any later frame in or
        # out is a protocol error), so the connection ends here. Data already received stays readable.
        code = event.error_code if event.error_code is not None else 0
        detail = f"GOAWAY {error_name(code)}"
        if event.additional_data:
            detail += ": " + event.additional_data.decode("utf-8", "replace")
        self._goaway = detail
        self._close(f"the peer went away ({detail})", goaway=False)

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
                try:
                    self._h2.close_connection(error_code, additional_data=message.encode() if message else None)
                except Exception:  # h2 may refuse in some states; the transport closes anyway
                    log.debug("could not send GOAWAY to %s", self._label, exc_info=True)
                self._flush()
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


_DISPATCH: dict[type[h2.events.Event], Callable[[Connection, Any], None]] = {
    h2.events.DataReceived: Connection._on_data_received,
    h2.events.WindowUpdated: Connection._on_window_updated,
    h2.events.StreamEnded: Connection._on_stream_ended,
    h2.events.RequestReceived: Connection._on_request_received,
    h2.events.ResponseReceived: Connection._on_response_received,
    h2.events.TrailersReceived: Connection._on_trailers_received,
    h2.events.StreamReset: Connection._on_stream_reset,
    h2.events.RemoteSettingsChanged: Connection._on_settings_changed,
    h2.events.PingAckReceived: Connection._on_ping_ack,
    h2.events.ConnectionTerminated: Connection._on_goaway,
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
