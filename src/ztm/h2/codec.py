"""A lean sans-IO HTTP/2 codec (RFC 9113) for the subset `ztm` uses: no I/O, no asyncio, no clock.

Bytes in, events out: `receive(data)` parses frames and returns `ztm.h2.events` objects; `send_headers`,
`send_data`, `end_stream`, `reset_stream`, `acknowledge`, `ping`, `update_settings` and `close` queue frames, and
`take_output()` / `data_to_send()` hand them over. The asyncio driver is `ztm.h2.connection`.

What it speaks: DATA, HEADERS (+CONTINUATION), SETTINGS, WINDOW_UPDATE, RST_STREAM, PING, GOAWAY. Received header
blocks are decoded with the `hpack` package; ours are encoded statelessly by `ztm.h2.fields.encode`. PRIORITY frames
and unknown frame types are ignored; PUSH_PROMISE is refused (push is disabled). Only clients open streams.

Streams follow RFC 9113 section 5.1 as a table, `_TRANSITIONS[(state, input)] -> next state`; a received frame that
has no entry is a protocol error: a stream error (RST_STREAM, reported as a local `StreamReset` event) where the
RFC allows one, else a connection error (GOAWAY, `ConnectionTerminated`, after which the codec ignores its input).
`receive()` never raises. Local calls the protocol does not allow raise `CodecError` and change nothing.

Enforced: the client preface and SETTINGS as the first frame, frame sizes (ours for what we receive, the peer's for
what we send), header list size (HPACK decoder limit) and the size of a CONTINUATION sequence, flow-control windows
both ways (we never send beyond the peer's window; a peer exceeding ours is a FLOW_CONTROL_ERROR), max concurrent
streams both ways (excess peer streams are refused with REFUSED_STREAM), stream id parity and monotonicity, SETTINGS
acknowledgements, header-block rules (`ztm.h2.fields`) and content-length.

Flow control is end to end: received DATA is credited back only when the application calls `acknowledge(stream_id,
n)` for bytes it consumed; WINDOW_UPDATEs are batched (sent once a quarter of the window is consumed). Data nobody
will read (streams already closed or reset) is credited by the codec itself.

Hot path: DATA payloads are reported as they arrive, as views of the caller's buffer (`DataReceived.data`), without
waiting for the whole frame and without copying; only incomplete frame headers and incomplete non-DATA frames are
kept (copied) between calls. Large outgoing DATA payloads are queued as they are, next to their 9-byte header, for
`transport.writelines()`; small frames are coalesced into one buffer.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence

from hpack import Decoder
from hpack.exceptions import HPACKError, OversizedHeaderListError

from ztm.h2 import fields
from ztm.h2 import frames as f
from ztm.h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    GoAway,
    InformationalResponseReceived,
    PingAcked,
    PingReceived,
    RequestReceived,
    ResponseReceived,
    SettingsAcked,
    SettingsChanged,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from ztm.h2.settings import H2Settings

log = logging.getLogger("ztm.h2")

Buffer = bytes | bytearray | memoryview

DIRECT_MIN = 16 * 1024
"""DATA payloads at least this large are queued by reference (own output chunk) instead of copied."""
_RESET_MEMORY = 4096  # streams we reset, remembered to ignore the frames the peer had in flight
_MAX_CONTINUATIONS = 512  # CONTINUATION frames per header block

# ---- stream states and the transition table (RFC 9113 section 5.1; no push, so no reserved states) -----------

IDLE, OPEN, HALF_CLOSED_LOCAL, HALF_CLOSED_REMOTE, CLOSED = range(5)
SEND_HEADERS, SEND_DATA, SEND_END, SEND_RST, RECV_HEADERS, RECV_DATA, RECV_END, RECV_RST = range(8)

STATE_NAMES = ("idle", "open", "half-closed (local)", "half-closed (remote)", "closed")
INPUT_NAMES = (
    "send HEADERS",
    "send DATA",
    "send END_STREAM",
    "send RST_STREAM",
    "receive HEADERS",
    "receive DATA",
    "receive END_STREAM",
    "receive RST_STREAM",
)

_TRANSITIONS: dict[tuple[int, int], int] = {
    (IDLE, SEND_HEADERS): OPEN,
    (IDLE, RECV_HEADERS): OPEN,
    (OPEN, SEND_HEADERS): OPEN,
    (OPEN, SEND_DATA): OPEN,
    (OPEN, SEND_END): HALF_CLOSED_LOCAL,
    (OPEN, SEND_RST): CLOSED,
    (OPEN, RECV_HEADERS): OPEN,
    (OPEN, RECV_DATA): OPEN,
    (OPEN, RECV_END): HALF_CLOSED_REMOTE,
    (OPEN, RECV_RST): CLOSED,
    (HALF_CLOSED_LOCAL, SEND_RST): CLOSED,
    (HALF_CLOSED_LOCAL, RECV_HEADERS): HALF_CLOSED_LOCAL,
    (HALF_CLOSED_LOCAL, RECV_DATA): HALF_CLOSED_LOCAL,
    (HALF_CLOSED_LOCAL, RECV_END): CLOSED,
    (HALF_CLOSED_LOCAL, RECV_RST): CLOSED,
    (HALF_CLOSED_REMOTE, SEND_HEADERS): HALF_CLOSED_REMOTE,
    (HALF_CLOSED_REMOTE, SEND_DATA): HALF_CLOSED_REMOTE,
    (HALF_CLOSED_REMOTE, SEND_END): CLOSED,
    (HALF_CLOSED_REMOTE, SEND_RST): CLOSED,
    (HALF_CLOSED_REMOTE, RECV_RST): CLOSED,
}
"""(state, input) -> next state. Anything missing is not allowed: see `_RECV_ERRORS` for received frames."""

_RECV_ERRORS = {HALF_CLOSED_REMOTE: f.STREAM_CLOSED}
"""A received frame missing from the table in these states is a stream error with this code (RFC 9113 5.1);
elsewhere it is a connection error PROTOCOL_ERROR."""


class CodecError(Exception):
    """A local call that the protocol (or the codec's state) does not allow; nothing was queued."""


class StreamClosedError(CodecError):
    """The stream is closed, unknown, or in a state that does not allow this."""


class TooManyStreamsError(CodecError):
    """Opening a stream would exceed the peer's SETTINGS_MAX_CONCURRENT_STREAMS."""


class NoStreamIdsError(CodecError):
    """All client stream ids (up to 2^31-1) are used: open a new connection."""


class _ConnectionError(Exception):
    """Internal: unwinds `receive()` to a GOAWAY."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class _Stream:
    """The codec's record of one open stream."""

    __slots__ = (
        "content_length",
        "head",
        "headers_in",
        "id",
        "in_flight",
        "local",
        "received",
        "recv_window",
        "send_window",
        "state",
        "unacked",
    )

    def __init__(self, stream_id: int, local: bool, send_window: int, recv_window: int) -> None:
        self.id = stream_id
        self.state = IDLE
        self.local = local  # we opened it
        self.send_window = send_window  # what we may still send
        self.recv_window = recv_window  # what the peer may still send (as we last announced)
        self.in_flight = 0  # received, not yet acknowledged by the application
        self.unacked = 0  # acknowledged by the application, not yet announced (WINDOW_UPDATE)
        self.headers_in = False  # the request (server) / final response (client) arrived
        self.head = False  # client: a HEAD request (its response has no body whatever content-length says)
        self.content_length: int | None = None
        self.received = 0  # DATA payload bytes received


class H2Codec:
    """One HTTP/2 connection's protocol state, client or server side; see the module docstring."""

    def __init__(self, *, client: bool, settings: H2Settings = H2Settings()) -> None:  # noqa: B008 (frozen)
        self.client = client
        self.closed = False  # GOAWAY sent (close() or a connection error): no more input or output
        self._settings = settings
        self._streams: dict[int, _Stream] = {}
        self._table_size_sent = False  # our first header block announces a dynamic table size of 0
        self._decoder = Decoder(max_header_list_size=settings.max_header_list_size)
        # our settings in force (those of update_settings() apply when the peer acknowledges them)
        self._local_max_frame = settings.max_frame_size
        self._local_initial_window = settings.stream_window
        self._local_max_streams = settings.max_concurrent_streams
        self._local_max_block = settings.max_header_list_size + 1024
        self._pending_settings: deque[dict[int, int]] = deque()
        # the peer's settings
        self.max_outbound_frame_size = f.DEFAULT_MAX_FRAME_SIZE
        self._peer_initial_window = f.DEFAULT_WINDOW
        self._peer_max_streams = f.MAX_STREAM_ID
        # connection flow control
        self._send_window = f.DEFAULT_WINDOW
        self._recv_window = settings.connection_window  # initiate() announces it
        self._conn_target = settings.connection_window
        self._conn_in_flight = 0
        self._conn_unacked = 0
        # stream ids
        self._next_id = 1 if client else 2
        self._last_peer_id = 0
        self._local_open = 0
        self._peer_open = 0
        self._reset_ids: dict[int, None] = {}
        self._goaway_received = False
        # receive state
        self._preface_left = 0 if client else len(f.PREFACE)
        self._settings_seen = False
        self._pending = bytearray()  # an incomplete frame header, DATA header or non-DATA frame
        self._data_left = 0  # bytes (payload + padding) of the DATA frame being received
        self._data_payload = 0  # of which payload
        self._data_extra = 0  # flow-controlled bytes not yet reported (the pad length byte)
        self._data_end = False
        self._data_stream: _Stream | None = None  # None: the frame's bytes are dropped (and credited)
        self._cont_sid = 0  # stream whose header block continues in CONTINUATION frames
        self._cont_block = bytearray()
        self._cont_end = False
        self._cont_frames = 0
        self._cont_self_dep = False
        self._events: list[Event] = []
        # output
        self._out: list[Buffer] = []
        self._buf = bytearray()
        self._tail_sid = 0  # stream of the small DATA frame that ends `_buf` (0: none), for `end_stream`
        self._tail_end = 0  # len(_buf) just after that frame
        self._tail_flags = 0  # index of its flags byte in `_buf`

    # ---- output --------------------------------------------------------------------------------------------

    @property
    def has_output(self) -> bool:
        """Frames are queued."""
        return bool(self._buf or self._out)

    @property
    def output_size(self) -> int:
        """Bytes queued."""
        return len(self._buf) + sum(map(len, self._out))

    def take_output(self) -> list[Buffer]:
        """The queued frames as chunks for `transport.writelines()` (large DATA payloads are not copied)."""
        out = self._out
        if self._buf:
            out.append(self._buf)
            self._buf = bytearray()
        self._out = []
        self._tail_sid = 0
        return out

    def data_to_send(self) -> bytes:
        """The queued frames as one bytes object."""
        return b"".join(self.take_output())

    # ---- local actions -------------------------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue our preface: the client magic (client), SETTINGS, and the connection window increase."""
        s = self._settings
        values = {
            f.MAX_FRAME_SIZE: s.max_frame_size,
            f.INITIAL_WINDOW_SIZE: s.stream_window,
            f.MAX_CONCURRENT_STREAMS: s.max_concurrent_streams,
            f.MAX_HEADER_LIST_SIZE: s.max_header_list_size,
        }
        if self.client:
            values = {f.ENABLE_PUSH: 0, **values}
            self._buf += f.PREFACE
        self._buf += f.settings(values)
        # These values only widen the protocol defaults, so they are in force at once (before the peer's ACK).
        self._pending_settings.append({})
        if s.connection_window > f.DEFAULT_WINDOW:
            self._buf += f.window_update(0, s.connection_window - f.DEFAULT_WINDOW)

    def update_settings(self, values: dict[int, int]) -> None:
        """Announce new values of INITIAL_WINDOW_SIZE, MAX_FRAME_SIZE, MAX_CONCURRENT_STREAMS or
        MAX_HEADER_LIST_SIZE; they apply when the peer acknowledges them (`SettingsAcked`)."""
        self._check_open()
        for code, value in values.items():
            if not 0 <= value <= 0xFFFFFFFF:
                raise CodecError(f"setting value {value} out of range")
            if code == f.INITIAL_WINDOW_SIZE and not 0 <= value <= f.MAX_WINDOW:
                raise CodecError(f"INITIAL_WINDOW_SIZE {value} out of range")
            if code == f.MAX_FRAME_SIZE and not f.DEFAULT_MAX_FRAME_SIZE <= value <= f.MAX_FRAME_SIZE_LIMIT:
                raise CodecError(f"MAX_FRAME_SIZE {value} out of range")
            if code not in (f.INITIAL_WINDOW_SIZE, f.MAX_FRAME_SIZE, f.MAX_CONCURRENT_STREAMS, f.MAX_HEADER_LIST_SIZE):
                raise CodecError(f"setting 0x{code:x} cannot be changed")
        self._buf += f.settings(values)
        self._pending_settings.append(dict(values))

    def next_stream_id(self) -> int:
        """The id `send_headers` opens the next stream with (client)."""
        if not self.client:
            raise CodecError("only clients open streams")
        if self._next_id > f.MAX_STREAM_ID:
            raise NoStreamIdsError("no stream ids left on this connection")
        return self._next_id

    def send_headers(self, stream_id: int, headers: Sequence[tuple[str, str]], *, end_stream: bool = False) -> None:
        """Send a header block: opens stream `next_stream_id()` (client), or answers / continues an open stream."""
        self._check_open()
        try:
            block = fields.encode(headers)
        except ValueError as exc:
            raise CodecError(str(exc)) from None
        st = self._streams.get(stream_id)
        if st is None:
            if not self.client or stream_id != self.next_stream_id():
                raise StreamClosedError(f"stream {stream_id} is not open (the next new stream is {self._next_id})")
            if self._goaway_received:
                raise CodecError("the peer sent GOAWAY: no new streams")
            if self._local_open >= self._peer_max_streams:
                raise TooManyStreamsError(f"the peer allows {self._peer_max_streams} concurrent streams")
            st = _Stream(stream_id, True, self._peer_initial_window, self._local_initial_window)
            st.head = (":method", "HEAD") in headers
            self._streams[stream_id] = st
            self._next_id += 2
            self._local_open += 1
        self._local_transition(st, SEND_HEADERS)
        if not self._table_size_sent:
            self._table_size_sent = True
            block = fields.TABLE_SIZE_ZERO + block
        self._buf += f.headers(stream_id, block, end_stream, self.max_outbound_frame_size)
        if end_stream:
            self._local_transition(st, SEND_END)

    def send_data(self, stream_id: int, data: Buffer, *, end_stream: bool = False) -> None:
        """Send one DATA frame. `len(data)` must fit `send_window(stream_id)` and `max_outbound_frame_size`.

        Payloads of `DIRECT_MIN` bytes or more are queued by reference: do not modify `data` until it was written.
        """
        self._check_open()
        st = self._streams.get(stream_id)
        if st is None:
            raise StreamClosedError(f"stream {stream_id} is not open")
        if (st.state, SEND_DATA) not in _TRANSITIONS:
            raise StreamClosedError(f"stream {stream_id}: cannot send DATA in state {STATE_NAMES[st.state]}")
        n = len(data)
        if n > st.send_window or n > self._send_window:
            window = min(st.send_window, self._send_window)
            raise CodecError(f"{n} bytes exceed the send window of stream {stream_id} ({window})")
        if n > self.max_outbound_frame_size:
            raise CodecError(f"{n} bytes exceed the peer's frame size ({self.max_outbound_frame_size})")
        st.send_window -= n
        self._send_window -= n
        buf = self._buf
        start = len(buf)
        buf += f.HEADER.pack(n << 8, f.END_STREAM if end_stream else 0, stream_id)
        if n >= DIRECT_MIN:
            self._out.append(buf)
            self._out.append(data)
            self._buf = bytearray()
            self._tail_sid = 0
        else:
            buf += data
            self._tail_sid, self._tail_end, self._tail_flags = stream_id, len(buf), start + 4
        if end_stream:
            self._local_transition(st, SEND_END)

    def end_stream(self, stream_id: int) -> None:
        """Half-close: END_STREAM on the stream's DATA frame that is still the last one queued (the same frame
        then carries the bytes and the end, as `send_data(end_stream=True)` would: one frame less to send, parse
        and relay per direction), else an empty DATA frame with END_STREAM."""
        self._check_open()
        st = self._streams.get(stream_id)
        if st is None:
            raise StreamClosedError(f"stream {stream_id} is not open")
        self._local_transition(st, SEND_END)
        buf = self._buf
        if self._tail_sid == stream_id and len(buf) == self._tail_end:
            buf[self._tail_flags] |= f.END_STREAM
            self._tail_sid = 0
            return
        buf += f.HEADER.pack(f.DATA, f.END_STREAM, stream_id)

    def reset_stream(self, stream_id: int, error_code: int = f.CANCEL) -> None:
        """Abort a stream with RST_STREAM; the frames the peer still has in flight for it are ignored."""
        self._check_open()
        st = self._streams.get(stream_id)
        if st is None:
            raise StreamClosedError(f"stream {stream_id} is not open")
        self._local_transition(st, SEND_RST)
        self._buf += f.rst_stream(stream_id, error_code)
        self._remember_reset(stream_id)

    def acknowledge(self, stream_id: int, n: int) -> bool:
        """The application consumed `n` received bytes of `stream_id`: credit them back to the peer (batched).
        Whether that queued a WINDOW_UPDATE."""
        if n <= 0:
            return False
        queued = len(self._buf)
        # Each count caps only its own credit (never more than was received): the stream's credit does not depend
        # on the connection's count, so a miscount on one can never swallow the other's WINDOW_UPDATE (issue 18).
        conn = min(n, self._conn_in_flight)
        if conn > 0:
            self._conn_in_flight -= conn
            self._credit_connection(conn)
        st = self._streams.get(stream_id)
        if st is not None:
            n = min(n, st.in_flight)
            if n > 0:
                st.in_flight -= n
                if st.state == OPEN or st.state == HALF_CLOSED_LOCAL:  # the peer may still send
                    st.unacked += n
                    if st.unacked >= self._local_initial_window >> 2 and not self.closed:
                        self._buf += f.window_update(stream_id, st.unacked)
                        st.recv_window += st.unacked
                        st.unacked = 0
        return len(self._buf) != queued

    def ping(self, data: bytes) -> None:
        """Send a PING with 8 bytes of `data`; the peer's answer is a `PingAcked` event."""
        self._check_open()
        if len(data) != 8:
            raise CodecError("PING data must be 8 bytes")
        self._buf += f.ping(data)

    def close(self, error_code: int = f.NO_ERROR, additional_data: bytes = b"") -> None:
        """Send GOAWAY; afterwards the codec neither sends nor processes anything. Idempotent."""
        if self.closed:
            return
        self.closed = True
        self._buf += f.goaway(self._last_peer_id, error_code, additional_data)

    # ---- queries ----------------------------------------------------------------------------------------------

    def send_window(self, stream_id: int) -> int:
        """How many bytes may be sent on `stream_id` now (stream and connection window); may be <= 0."""
        st = self._streams.get(stream_id)
        if st is None or (st.state, SEND_DATA) not in _TRANSITIONS:
            raise StreamClosedError(f"stream {stream_id} cannot send data")
        return min(st.send_window, self._send_window)

    def stream_state(self, stream_id: int) -> str:
        """The RFC 9113 state name of a stream ("closed" for any stream not open)."""
        st = self._streams.get(stream_id)
        return STATE_NAMES[st.state] if st is not None else "closed"

    @property
    def open_streams(self) -> int:
        return len(self._streams)

    # ---- receiving ------------------------------------------------------------------------------------------

    def receive(self, data: Buffer) -> list[Event]:
        """Process received bytes; return what happened. Never raises: errors become events and queued frames."""
        events = self._events = []
        if self.closed:
            return events
        view = data if isinstance(data, memoryview) else memoryview(data)
        try:
            self._receive(view)
        except _ConnectionError as exc:
            self._terminate(exc.code, exc.reason)
        except Exception as exc:  # a bug: the peer must not crash the caller; say so loudly
            log.exception("HTTP/2 codec failure")
            self._terminate(f.INTERNAL_ERROR, f"internal error: {exc!r}")
        return events

    def _receive(self, view: memoryview) -> None:
        pos = 0
        end = len(view)
        if self._preface_left:
            n = min(self._preface_left, end)
            start = len(f.PREFACE) - self._preface_left
            if view[:n] != f.PREFACE[start : start + n]:
                raise _ConnectionError(f.PROTOCOL_ERROR, "invalid connection preface")
            self._preface_left -= n
            pos = n
        pending = self._pending
        unpack = f.HEADER.unpack_from
        while pos < end:
            if self._data_left:
                pos = self._data_part(view, pos, end)
                continue
            if pending:
                pos = self._fill_pending(view, pos, end)
                continue
            if end - pos < 9:
                pending += view[pos:end]
                return
            a, flags, sid = unpack(view, pos)
            length = a >> 8
            type_ = a & 0xFF
            sid &= f.MAX_STREAM_ID
            if length > self._local_max_frame:
                raise _ConnectionError(f.FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds {self._local_max_frame}")
            if type_ == f.DATA:
                need = 10 if flags & f.PADDED and length else 9
                if end - pos < need:
                    pending += view[pos:end]
                    return
                self._data_start(sid, length, flags, view[pos + 9] if need == 10 else 0)
                pos += need
            else:
                if end - pos < 9 + length:
                    pending += view[pos:end]
                    return
                self._frame(type_, flags, sid, view[pos + 9 : pos + 9 + length])
                pos += 9 + length

    def _fill_pending(self, view: memoryview, pos: int, end: int) -> int:
        """Complete the unit (frame header, DATA header, non-DATA frame) begun in `_pending`; handle it if whole."""
        pending = self._pending
        if len(pending) < 9:
            take = min(9 - len(pending), end - pos)
            pending += view[pos : pos + take]
            pos += take
            if len(pending) < 9:
                return pos
        a, flags, sid = f.HEADER.unpack_from(pending)
        length = a >> 8
        type_ = a & 0xFF
        sid &= f.MAX_STREAM_ID
        if length > self._local_max_frame:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds {self._local_max_frame}")
        need = (10 if flags & f.PADDED and length else 9) if type_ == f.DATA else 9 + length
        take = min(need - len(pending), end - pos)
        if take > 0:
            pending += view[pos : pos + take]
            pos += take
        if len(pending) < need:
            return pos
        unit = bytes(pending)  # handlers get views of a copy: `_pending` itself is never exported
        pending.clear()
        if type_ == f.DATA:
            self._data_start(sid, length, flags, unit[9] if need == 10 else 0)
        else:
            self._frame(type_, flags, sid, memoryview(unit)[9:])
        return pos

    # ---- DATA ---------------------------------------------------------------------------------------------

    def _data_start(self, sid: int, length: int, flags: int, pad: int) -> None:
        """A DATA frame header (and its pad length byte, if PADDED) arrived; its payload follows."""
        if not self._settings_seen:
            raise _ConnectionError(f.PROTOCOL_ERROR, "the first frame must be SETTINGS")
        if self._cont_sid:
            raise _ConnectionError(f.PROTOCOL_ERROR, "DATA frame in the middle of a header block")
        if sid == 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "DATA frame on stream 0")
        extra = 0
        if flags & f.PADDED:
            if length == 0:
                raise _ConnectionError(f.FRAME_SIZE_ERROR, "padded DATA frame without a pad length")
            if pad >= length:
                raise _ConnectionError(f.PROTOCOL_ERROR, "DATA padding exceeds the frame")
            extra = 1
        if length > self._recv_window:
            raise _ConnectionError(f.FLOW_CONTROL_ERROR, f"DATA of {length} bytes exceeds the connection window")
        self._recv_window -= length
        self._conn_in_flight += length
        payload = length - extra - pad
        st = self._streams.get(sid)
        if st is None:
            self._closed_stream_frame(sid, "DATA")
        else:
            nxt = _TRANSITIONS.get((st.state, RECV_DATA))
            if nxt is None:
                self._recv_error(st, "DATA")
                st = None
            elif not st.headers_in:
                self._stream_error(st, f.PROTOCOL_ERROR)
                st = None
            elif length > st.recv_window:
                self._stream_error(st, f.FLOW_CONTROL_ERROR)
                st = None
            elif st.content_length is not None and st.received + payload > st.content_length:
                self._stream_error(st, f.PROTOCOL_ERROR)
                st = None
            else:
                st.recv_window -= length
                st.in_flight += length
                st.received += payload
        if st is None:  # nobody will read it: the codec credits it, the pad length byte now, the rest as it passes
            if extra:
                self._conn_in_flight -= extra
                self._credit_connection(extra)
            extra = 0
        self._data_stream = st
        self._data_left = payload + pad
        self._data_payload = payload
        self._data_extra = extra
        self._data_end = bool(flags & f.END_STREAM)
        if not self._data_left:
            if extra and st is not None:
                self._events.append(DataReceived(sid, memoryview(b""), extra))
            self._data_done()

    def _data_part(self, view: memoryview, pos: int, end: int) -> int:
        """Report the next bytes of the DATA frame being received."""
        n = self._data_left
        if n > end - pos:
            n = end - pos
        payload = self._data_payload
        if payload > n:
            payload = n
        self._data_payload -= payload
        self._data_left -= n
        st = self._data_stream
        if st is not None:
            if self._streams.get(st.id) is st:
                flow = n + self._data_extra
                self._data_extra = 0
                self._events.append(DataReceived(st.id, view[pos : pos + payload], flow))
            else:  # reset locally since the frame began: drop the rest
                self._data_stream = None
                st = None
        if st is None:
            dropped = n + self._data_extra
            self._data_extra = 0
            self._conn_in_flight -= dropped
            self._credit_connection(dropped)
        if not self._data_left:
            self._data_done()
        return pos + n

    def _data_done(self) -> None:
        st = self._data_stream
        self._data_stream = None
        if self._data_end and st is not None and self._streams.get(st.id) is st:
            self._recv_end(st)

    # ---- other frames --------------------------------------------------------------------------------------

    def _frame(self, type_: int, flags: int, sid: int, payload: memoryview) -> None:
        if not self._settings_seen and (type_ != f.SETTINGS or flags & f.ACK):
            raise _ConnectionError(f.PROTOCOL_ERROR, "the first frame must be SETTINGS")
        if self._cont_sid and type_ != f.CONTINUATION:
            raise _ConnectionError(f.PROTOCOL_ERROR, "expected a CONTINUATION frame")
        if type_ == f.WINDOW_UPDATE:
            self._on_window_update(sid, payload)
        elif type_ == f.HEADERS:
            self._on_headers(flags, sid, payload)
        elif type_ == f.SETTINGS:
            self._on_settings(flags, sid, payload)
        elif type_ == f.PING:
            self._on_ping(flags, sid, payload)
        elif type_ == f.RST_STREAM:
            self._on_rst_stream(sid, payload)
        elif type_ == f.CONTINUATION:
            self._on_continuation(flags, sid, payload)
        elif type_ == f.GOAWAY:
            self._on_goaway(sid, payload)
        elif type_ == f.PRIORITY:
            if sid == 0:
                raise _ConnectionError(f.PROTOCOL_ERROR, "PRIORITY frame on stream 0")
            if len(payload) != 5:
                raise _ConnectionError(f.FRAME_SIZE_ERROR, "PRIORITY frame not 5 bytes long")
        elif type_ == f.PUSH_PROMISE:
            raise _ConnectionError(f.PROTOCOL_ERROR, "PUSH_PROMISE received, but push is disabled")
        # other frame types are ignored (RFC 9113 5.5)

    def _on_headers(self, flags: int, sid: int, p: memoryview) -> None:
        if sid == 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "HEADERS frame on stream 0")
        start, end = 0, len(p)
        if flags & f.PADDED:
            if end < 1:
                raise _ConnectionError(f.FRAME_SIZE_ERROR, "padded HEADERS frame without a pad length")
            end -= p[0]
            start = 1
        depends_on_itself = False
        if flags & f.PRIORITY_FLAG:
            if len(p) - start < 5:
                raise _ConnectionError(f.FRAME_SIZE_ERROR, "HEADERS frame too short for its priority")
            depends_on_itself = f.parse_u32(p, start) & f.MAX_STREAM_ID == sid
            start += 5
        if end < start:
            raise _ConnectionError(f.PROTOCOL_ERROR, "HEADERS padding exceeds the frame")
        block = p[start:end]
        if flags & f.END_HEADERS:
            self._header_block(sid, bytes(block), bool(flags & f.END_STREAM), depends_on_itself)
            return
        if len(block) > self._local_max_block:
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, "header block too large")
        self._cont_sid = sid
        self._cont_block = bytearray(block)
        self._cont_end = bool(flags & f.END_STREAM)
        self._cont_frames = 0
        self._cont_self_dep = depends_on_itself

    def _on_continuation(self, flags: int, sid: int, p: memoryview) -> None:
        if sid != self._cont_sid or not sid:
            raise _ConnectionError(f.PROTOCOL_ERROR, "unexpected CONTINUATION frame")
        self._cont_block += p
        self._cont_frames += 1
        if len(self._cont_block) > self._local_max_block or self._cont_frames > _MAX_CONTINUATIONS:
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, "header block too large")
        if flags & f.END_HEADERS:
            block = bytes(self._cont_block)
            self._cont_sid = 0
            self._cont_block = bytearray()
            self._header_block(sid, block, self._cont_end, self._cont_self_dep)

    def _header_block(self, sid: int, block: bytes, end_stream: bool, depends_on_itself: bool) -> None:
        """A complete header block of stream `sid` arrived."""
        raw = self._decode(block)  # first, always: the HPACK state is shared by the whole connection
        st = self._streams.get(sid)
        if st is None:
            if (sid & 1) == self._peer_parity and sid > self._last_peer_id:
                self._new_peer_stream(sid, raw, end_stream, depends_on_itself)
            elif sid in self._reset_ids and not self._idle(sid):
                pass  # we reset it; the peer had sent this before it knew
            else:
                what = "idle" if self._idle(sid) else "closed"
                raise _ConnectionError(f.PROTOCOL_ERROR, f"HEADERS on {what} stream {sid}")
            return
        if (st.state, RECV_HEADERS) not in _TRANSITIONS:
            self._recv_error(st, "HEADERS")
            return
        if depends_on_itself:
            self._stream_error(st, f.PROTOCOL_ERROR)
            return
        try:
            if self.client and not st.headers_in:
                r = fields.check_received(raw, fields.RESPONSE)
                assert r.status is not None
                if r.status < 200:
                    if end_stream:
                        raise fields.Malformed("informational response with END_STREAM")
                    self._events.append(InformationalResponseReceived(sid, r.headers))
                    return
                st.headers_in = True
                if not st.head and r.status != 204 and r.status != 304:
                    st.content_length = r.content_length
                self._events.append(ResponseReceived(sid, r.headers))
            else:
                if not end_stream:
                    raise fields.Malformed("trailers without END_STREAM")
                r = fields.check_received(raw, fields.TRAILERS)
                self._events.append(TrailersReceived(sid, r.headers))
        except fields.Malformed:
            self._stream_error(st, f.PROTOCOL_ERROR)
            return
        if end_stream:
            self._recv_end(st)

    def _decode(self, block: bytes) -> Iterable[tuple[bytes, bytes]]:
        raw = fields.decode_simple(block, self._decoder.max_header_list_size)
        if raw is not None:
            return raw
        try:
            decoded: Iterable[tuple[bytes, bytes]] = self._decoder.decode(block, raw=True)
        except OversizedHeaderListError:
            raise _ConnectionError(f.ENHANCE_YOUR_CALM, "header list exceeds SETTINGS_MAX_HEADER_LIST_SIZE") from None
        except (HPACKError, IndexError, TypeError, ValueError) as exc:
            raise _ConnectionError(f.COMPRESSION_ERROR, f"cannot decode a header block: {exc}") from None
        return decoded

    def _new_peer_stream(
        self, sid: int, raw: Iterable[tuple[bytes, bytes]], end_stream: bool, depends_on_itself: bool
    ) -> None:
        if self.client:
            raise _ConnectionError(f.PROTOCOL_ERROR, f"server-initiated stream {sid} (push is disabled)")
        self._last_peer_id = sid
        if depends_on_itself:
            self._refuse(sid, f.PROTOCOL_ERROR)
            return
        if self._peer_open >= self._local_max_streams:
            self._refuse(sid, f.REFUSED_STREAM)
            return
        try:
            r = fields.check_received(raw, fields.REQUEST)
        except fields.Malformed:
            self._refuse(sid, f.PROTOCOL_ERROR)
            return
        st = _Stream(sid, False, self._peer_initial_window, self._local_initial_window)
        st.state = _TRANSITIONS[(IDLE, RECV_HEADERS)]
        st.headers_in = True
        st.content_length = r.content_length
        self._streams[sid] = st
        self._peer_open += 1
        self._events.append(RequestReceived(sid, r.headers))
        if end_stream:
            self._recv_end(st)

    def _recv_end(self, st: _Stream) -> None:
        if st.content_length is not None and st.received != st.content_length:
            self._stream_error(st, f.PROTOCOL_ERROR)
            return
        nxt = _TRANSITIONS.get((st.state, RECV_END))
        if nxt is None:
            self._recv_error(st, "END_STREAM")
            return
        st.state = nxt
        self._events.append(StreamEnded(st.id))
        if nxt == CLOSED:
            self._forget(st)

    def _on_rst_stream(self, sid: int, p: memoryview) -> None:
        if sid == 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "RST_STREAM frame on stream 0")
        if len(p) != 4:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "RST_STREAM frame not 4 bytes long")
        st = self._streams.get(sid)
        if st is None:
            if self._idle(sid):
                raise _ConnectionError(f.PROTOCOL_ERROR, f"RST_STREAM on idle stream {sid}")
            return
        st.state = _TRANSITIONS[(st.state, RECV_RST)]
        self._forget(st)
        self._events.append(StreamReset(sid, f.parse_u32(p), True))

    def _on_window_update(self, sid: int, p: memoryview) -> None:
        if len(p) != 4:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "WINDOW_UPDATE frame not 4 bytes long")
        increment = f.parse_u32(p) & f.MAX_WINDOW
        if sid == 0:
            if increment == 0:
                raise _ConnectionError(f.PROTOCOL_ERROR, "WINDOW_UPDATE with increment 0")
            self._send_window += increment
            if self._send_window > f.MAX_WINDOW:
                raise _ConnectionError(f.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            self._events.append(WindowUpdated(0, increment))
            return
        st = self._streams.get(sid)
        if st is None:
            if self._idle(sid):
                raise _ConnectionError(f.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {sid}")
            return
        if increment == 0:
            self._stream_error(st, f.PROTOCOL_ERROR)
            return
        st.send_window += increment
        if st.send_window > f.MAX_WINDOW:
            self._stream_error(st, f.FLOW_CONTROL_ERROR)
            return
        self._events.append(WindowUpdated(sid, increment))

    def _on_settings(self, flags: int, sid: int, p: memoryview) -> None:
        if sid != 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "SETTINGS frame on a stream")
        if flags & f.ACK:
            if len(p):
                raise _ConnectionError(f.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            if not self._pending_settings:
                raise _ConnectionError(f.PROTOCOL_ERROR, "SETTINGS ACK without SETTINGS")
            self._apply_local(self._pending_settings.popleft())
            self._events.append(SettingsAcked())
            return
        if len(p) % 6:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "SETTINGS frame length not a multiple of 6")
        changed: dict[int, int] = {}
        for code, value in f.parse_settings(p):
            if code == f.INITIAL_WINDOW_SIZE:
                if value > f.MAX_WINDOW:
                    raise _ConnectionError(f.FLOW_CONTROL_ERROR, "INITIAL_WINDOW_SIZE above 2^31-1")
                delta = value - self._peer_initial_window
                self._peer_initial_window = value
                for st in self._streams.values():
                    st.send_window += delta
                    if st.send_window > f.MAX_WINDOW:
                        raise _ConnectionError(f.FLOW_CONTROL_ERROR, f"window of stream {st.id} above 2^31-1")
            elif code == f.MAX_FRAME_SIZE:
                if not f.DEFAULT_MAX_FRAME_SIZE <= value <= f.MAX_FRAME_SIZE_LIMIT:
                    raise _ConnectionError(f.PROTOCOL_ERROR, f"MAX_FRAME_SIZE {value} out of range")
                self.max_outbound_frame_size = value
            elif code == f.MAX_CONCURRENT_STREAMS:
                self._peer_max_streams = value
            elif code == f.ENABLE_PUSH:
                if value > 1 or (value and self.client):
                    raise _ConnectionError(f.PROTOCOL_ERROR, f"ENABLE_PUSH {value}")
            elif code == f.ENABLE_CONNECT_PROTOCOL and value > 1:
                raise _ConnectionError(f.PROTOCOL_ERROR, f"ENABLE_CONNECT_PROTOCOL {value}")
            changed[code] = value
        self._settings_seen = True
        self._buf += f.settings_ack()
        self._events.append(SettingsChanged(changed))

    def _apply_local(self, values: dict[int, int]) -> None:
        """Our SETTINGS `values` were acknowledged: from now on the peer follows them."""
        for code, value in values.items():
            if not 0 <= value <= 0xFFFFFFFF:
                raise CodecError(f"setting value {value} out of range")
            if code == f.INITIAL_WINDOW_SIZE:
                delta = value - self._local_initial_window
                self._local_initial_window = value
                for st in self._streams.values():
                    st.recv_window += delta
                    if st.unacked and st.unacked >= value >> 2:  # a smaller window: credit sooner
                        self._buf += f.window_update(st.id, st.unacked)
                        st.recv_window += st.unacked
                        st.unacked = 0
            elif code == f.MAX_FRAME_SIZE:
                self._local_max_frame = value
            elif code == f.MAX_CONCURRENT_STREAMS:
                self._local_max_streams = value
            elif code == f.MAX_HEADER_LIST_SIZE:
                self._decoder.max_header_list_size = value
                self._local_max_block = value + 1024

    def _on_ping(self, flags: int, sid: int, p: memoryview) -> None:
        if sid != 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "PING frame on a stream")
        if len(p) != 8:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "PING frame not 8 bytes long")
        data = bytes(p)
        if flags & f.ACK:
            self._events.append(PingAcked(data))
        else:
            self._buf += f.ping(data, ack=True)
            self._events.append(PingReceived(data))

    def _on_goaway(self, sid: int, p: memoryview) -> None:
        if sid != 0:
            raise _ConnectionError(f.PROTOCOL_ERROR, "GOAWAY frame on a stream")
        if len(p) < 8:
            raise _ConnectionError(f.FRAME_SIZE_ERROR, "GOAWAY frame shorter than 8 bytes")
        last, code, debug = f.parse_goaway(p)
        self._goaway_received = True
        self._events.append(GoAway(code, last, debug))
        for st in [s for s in self._streams.values() if s.local and s.id > last]:  # never processed by the peer
            st.state = CLOSED
            self._forget(st)
            self._events.append(StreamReset(st.id, f.REFUSED_STREAM, True))

    # ---- helpers ----------------------------------------------------------------------------------------------

    @property
    def _peer_parity(self) -> int:
        return 0 if self.client else 1

    def _idle(self, sid: int) -> bool:
        """Stream `sid` was never opened (by either side)."""
        if (sid & 1) == self._peer_parity:
            return sid > self._last_peer_id
        return sid >= self._next_id

    def _closed_stream_frame(self, sid: int, what: str) -> None:
        """A DATA frame for a stream that is not open."""
        if self._idle(sid):
            raise _ConnectionError(f.PROTOCOL_ERROR, f"{what} on idle stream {sid}")
        if sid not in self._reset_ids:  # closed normally: the peer should know
            self._buf += f.rst_stream(sid, f.STREAM_CLOSED)
            self._remember_reset(sid)

    def _recv_error(self, st: _Stream, what: str) -> None:
        code = _RECV_ERRORS.get(st.state)
        if code is None:
            raise _ConnectionError(f.PROTOCOL_ERROR, f"{what} on stream {st.id} in state {STATE_NAMES[st.state]}")
        self._stream_error(st, code)

    def _stream_error(self, st: _Stream, code: int) -> None:
        """Reset an open stream because of what the peer sent; the application hears a local StreamReset."""
        st.state = CLOSED
        self._forget(st)
        self._buf += f.rst_stream(st.id, code)
        self._remember_reset(st.id)
        self._events.append(StreamReset(st.id, code, False))

    def _refuse(self, sid: int, code: int) -> None:
        """Reset a new peer stream before the application heard of it."""
        self._buf += f.rst_stream(sid, code)
        self._remember_reset(sid)

    def _remember_reset(self, sid: int) -> None:
        ids = self._reset_ids
        ids[sid] = None
        if len(ids) > _RESET_MEMORY:
            del ids[next(iter(ids))]

    def _forget(self, st: _Stream) -> None:
        """Drop a closed stream."""
        if self._streams.pop(st.id, None) is not None:
            if st.local:
                self._local_open -= 1
            else:
                self._peer_open -= 1

    def _local_transition(self, st: _Stream, action: int) -> None:
        nxt = _TRANSITIONS.get((st.state, action))
        if nxt is None:
            raise StreamClosedError(f"stream {st.id}: cannot {INPUT_NAMES[action]} in state {STATE_NAMES[st.state]}")
        st.state = nxt
        if nxt == CLOSED:
            self._forget(st)

    def _credit_connection(self, n: int) -> None:
        self._conn_unacked += n
        if self._conn_unacked >= self._conn_target >> 2 and not self.closed:
            self._buf += f.window_update(0, self._conn_unacked)
            self._recv_window += self._conn_unacked
            self._conn_unacked = 0

    def _check_open(self) -> None:
        if self.closed:
            raise CodecError("the connection is closed (GOAWAY sent)")

    def _terminate(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self._buf += f.goaway(self._last_peer_id, code, reason.encode()[:200])
        self._events.append(ConnectionTerminated(code, reason))
