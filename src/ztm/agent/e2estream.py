"""An app stream sealed end to end: the byte stream apps read and write, carried by an HTTP/2 stream through a hub.

`E2EStream` offers what apps use of `ztm.h2.Stream` (read/write/end/reset, the sink interface with pause/resume,
`write_nowait`, credit-wait figures), but every byte goes out as a `ztm.e2e` RECORD sealed with this stream's keys,
and every byte received was opened (authenticated) with the peer's: the hub in between forwards ciphertext. The
handshake or resume that made the keys happened before (`ztm.agent.e2e`); this module owns only the data phase.

Integrity: a record that fails to open (tampered, reordered, replayed, dropped by a hub) fails the stream: it is
reset, readers and the sink get `E2EStreamError`, and nothing after the bad record is delivered. The end of the
peer's data is the authenticated END record: an outer END_STREAM without it (a hub cutting the stream short) is a
failure too ("truncated"), never a clean end.

Flow control stays the outer stream's: while the app's sink is paused, or more than `READ_BUFFER` opened bytes wait
for a reader, the outer stream's sink is paused, so its credit is withheld and at most one window plus one chunk is
held here. Sealing costs `OVERHEAD` bytes per record, so `write_nowait` seals only what the outer window takes now.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Callable
from typing import Protocol

from ztm import h2
from ztm.e2e import E2EError, Peer
from ztm.e2e.frames import MAX_PAYLOAD
from ztm.e2e.record import DATA, END, OK, OPEN, OVERHEAD, REFUSE, Channel
from ztm.errors import ZtmError, from_json

READ_BUFFER = 256 * 1024
"""Opened bytes held for a reader before the outer stream's credit is withheld."""
WRITE_BATCH = 256 * 1024
"""Plaintext bytes sealed per outer write by `write()`."""
MIN_RECORD_PAYLOAD = 1024
"""The smallest payload `_record_size` gives a record: a write of up to this many bytes is one record."""


class Outer(Protocol):
    """What carries an end-to-end stream: an `h2.Stream` through the hub, or a direct channel's
    `ztm.agent.direct_outer.DirectOuter`. `stream_finished` is called once both END records went through and
    nothing is pending (a direct channel then carries the next stream)."""

    @property
    def id(self) -> int: ...

    label: str

    @property
    def closed(self) -> bool: ...

    @property
    def credit_wait(self) -> float: ...

    @property
    def credit_waiting(self) -> float: ...

    @property
    def max_frame_size(self) -> int: ...

    async def read(self, max_bytes: int = ...) -> bytes: ...

    async def write(self, data: bytes | memoryview, *, end_stream: bool = False) -> None: ...

    def write_nowait(self, data: bytes | memoryview) -> int: ...

    def send_capacity(self) -> int: ...

    def end_nowait(self) -> None: ...

    def reset(self, error_code: int = ...) -> None: ...

    def set_sink(self, sink: h2.StreamSink) -> None: ...

    def pause_sink(self) -> None: ...

    def resume_sink(self) -> None: ...

    async def wait_closed(self) -> None: ...

    def stream_finished(self) -> None: ...


class E2EStreamError(h2.H2Error):
    """The stream failed its end-to-end checks (integrity, truncation, protocol); `reason` is the counted reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"end-to-end {reason}: {message}")
        self.reason = reason


class E2EStream:
    """One app stream, end-to-end sealed, over `outer` (see the module docstring)."""

    __slots__ = (
        "__weakref__",
        "_buffered",
        "_channel",
        "_chunks",
        "_control",
        "_end_sent",
        "_eof",
        "_error",
        "_failed",
        "_held",
        "_local_ended",
        "_on_failure",
        "_outer",
        "_outer_paused",
        "_read_waiter",
        "_sink",
        "_sink_paused",
        "_spilling",
        "bytes_received",
        "bytes_sent",
        "hub_seen",
        "path",
        "peer",
        "session_id",
        "suite",
    )

    def __init__(
        self,
        outer: Outer,
        channel: Channel,
        peer: Peer,
        *,
        suite: str,
        session_id: bytes,
        on_failure: Callable[[E2EStreamError], None],
    ) -> None:
        self._outer = outer
        self._channel = channel
        self.peer = peer
        self.suite = suite
        self.session_id = session_id
        self.path = "relay"
        """"relay" (through the hub) or "direct" (a direct channel): the same protocol either way."""
        self.hub_seen: str | None = None
        """The peer's address as its hub saw it, on a stream the hub attests (a `punch` call, PROTOCOL.md section
        13): from the hub's 200, not from the peer."""
        self._on_failure = on_failure
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._eof = False  # the peer's END record arrived
        self._error: h2.H2Error | None = None
        self._failed = False  # an end-to-end failure was reported (once)
        self._local_ended = False
        self._end_sent = False  # the END record went to the outer stream (nothing of ours pending)
        self._sink: h2.StreamSink | None = None
        self._sink_paused = False
        self._outer_paused = False
        self._held = False
        self._read_waiter: asyncio.Future[None] | None = None
        self._control: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self._spilling = False
        self.bytes_sent = 0
        self.bytes_received = 0

    def start(self, rest: bytes) -> None:
        """Take over the outer stream's receive path; `rest` is what the handshake reader got past its last frame."""
        if rest:
            self.stream_data(rest)
        self._outer.set_sink(self)

    # ---- what h2.Stream users read ------------------------------------------------------------------------------

    @property
    def id(self) -> int:
        return self._outer.id

    @property
    def label(self) -> str:
        return self._outer.label

    @label.setter
    def label(self, value: str) -> None:
        self._outer.label = value

    @property
    def closed(self) -> bool:
        return self._outer.closed

    @property
    def credit_wait(self) -> float:
        return self._outer.credit_wait

    @property
    def credit_waiting(self) -> float:
        return self._outer.credit_waiting

    async def wait_closed(self) -> None:
        await self._outer.wait_closed()

    # ---- control records (opening) -------------------------------------------------------------------------------

    async def control(self) -> tuple[int, bytes]:
        """The first control record (OPEN on the responder, OK/REFUSE on the initiator); the caller bounds the wait."""
        return await self._control

    def send_control(self, inner: int, payload: bytes = b"") -> None:
        """Seal and queue a control record (OPEN/OK/REFUSE) before any data."""
        frame = self._channel.seal(inner, payload)
        if self._outer.write_nowait(frame) != len(frame):  # pragma: no cover - a fresh stream has a window
            raise h2.H2Error("the stream cannot take a control record")

    def hold(self) -> None:
        """Until the app accepts: take nothing more from the outer stream (its credit is withheld), so an opener's
        early data costs at most one window here; what arrived waits unread, and a refusal drops it."""
        self._held = True
        if not self._outer_paused:
            self._outer_paused = True
            self._outer.pause_sink()

    def accept(self) -> None:
        self.send_control(OK)
        if self._held:
            self._held = False
            self._maybe_resume_outer()

    @property
    def held_bytes(self) -> int:
        """The opener's early data waiting, unread, for the app's decision (0 once it accepted)."""
        return self._buffered if self._held else 0

    def refuse(self, error: ZtmError) -> None:
        """Send the refusal to the opener and end the stream; early data it sent is dropped unread."""
        self._chunks.clear()
        self._buffered = 0
        with contextlib.suppress(h2.H2Error):
            self.send_control(REFUSE, json.dumps(error.to_json()).encode())
            self.end_nowait()

    @staticmethod
    def refusal(payload: bytes) -> ZtmError:
        try:
            body = json.loads(payload)
        except ValueError:
            body = None
        return from_json(403, body)

    # ---- receive path (the outer stream's sink) ------------------------------------------------------------------

    def stream_data(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None and not (self._sink_paused or self._held or self._eof or self._chunks or self._error):
            # an interactive message: one small DATA record, straight to the app (`Channel.open_data` opens only
            # a whole DATA record that authenticates; anything else takes the general way, which says what it is)
            payload = self._channel.open_data(data)
            if payload:
                self.bytes_received += len(payload)
                sink.stream_data(payload)
                if self._sink_paused and not self._outer_paused:
                    self._outer_paused = True
                    self._outer.pause_sink()
                return
        if self._error is not None:
            return
        try:
            records = self._channel.feed(data)
        except E2EError as exc:
            self._fail(E2EStreamError(exc.reason, exc.message))
            return
        if len(records) == 1 and records[0][0] == DATA and not self._eof and not self._held:  # one record: to the sink
            payload = records[0][1]
            sink = self._sink
            if payload and sink is not None and not self._sink_paused and not self._chunks:
                self.bytes_received += len(payload)
                sink.stream_data(payload)
                if not self._outer_paused and (self._sink_paused or self._buffered > READ_BUFFER):
                    self._outer_paused = True
                    self._outer.pause_sink()
                return
        for inner, payload in records:
            if inner == DATA:
                if self._eof:
                    self._fail(E2EStreamError("malformed", "data after the end record"))
                    return
                if not payload:
                    continue
                self.bytes_received += len(payload)
                sink = self._sink
                if sink is not None and not self._sink_paused and not self._chunks:
                    sink.stream_data(payload)
                else:
                    self._chunks.append(payload)
                    self._buffered += len(payload)
                    self._wake()
            elif inner == END:
                if self._eof:
                    self._fail(E2EStreamError("malformed", "a second end record"))
                    return
                self._eof = True
                self._wake()
                self._sink_end()
                self._maybe_finished()
            elif inner in (OPEN, OK, REFUSE) and not self._control.done():
                if inner == OPEN:
                    self._held = True  # early data after it waits for the app's decision (`hold`, `accept`)
                self._control.set_result((inner, payload))
            else:
                self._fail(E2EStreamError("malformed", f"unexpected record type {inner}"))
                return
        if not self._outer_paused and (self._sink_paused or self._held or self._buffered > READ_BUFFER):
            self._outer_paused = True
            self._outer.pause_sink()

    def stream_end(self) -> None:
        if not self._eof and self._error is None:
            self._fail(E2EStreamError("truncated", "the stream ended without its end record (cut on the way)"))

    def stream_error(self, exc: h2.H2Error) -> None:
        if self._error is None and not (self._eof and not self._chunks):
            self._set_error(exc)

    def _fail(self, exc: E2EStreamError) -> None:
        if self._failed:
            return
        self._failed = True
        self._set_error(exc)
        self._outer.reset()
        self._on_failure(exc)

    def _set_error(self, exc: h2.H2Error) -> None:
        self._error = exc
        self._chunks.clear()
        self._buffered = 0
        if not self._control.done():
            self._control.set_exception(exc)
            self._control.exception()  # retrieved: nobody may be waiting
        self._wake()
        sink = self._sink
        if sink is not None:
            self._sink = None
            sink.stream_error(exc)

    def _sink_end(self) -> None:
        sink = self._sink
        if sink is not None and not self._chunks and not self._sink_paused:
            self._sink = None
            sink.stream_end()

    def _wake(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _maybe_resume_outer(self) -> None:
        if self._outer_paused and not self._sink_paused and not self._held and self._buffered <= READ_BUFFER // 2:
            self._outer_paused = False
            self._outer.resume_sink()

    # ---- reading --------------------------------------------------------------------------------------------------

    async def read(self, max_bytes: int = 1 << 20) -> bytes:
        """Up to `max_bytes` of the peer's data; b"" after its end record."""
        if self._sink is not None:
            raise h2.H2Error("stream has a sink (set_sink); it cannot be read")
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            if self._read_waiter is not None:
                raise h2.H2Error("stream is already being read by another task")
            waiter = self._read_waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._read_waiter = None
        chunk = self._chunks[0]
        if len(chunk) > max_bytes:
            self._chunks[0] = chunk[max_bytes:]
            chunk = chunk[:max_bytes]
        else:
            self._chunks.popleft()
        self._buffered -= len(chunk)
        self._maybe_resume_outer()
        return chunk

    async def read_all(self, limit: int = 1 << 20) -> bytes:
        parts: list[bytes] = []
        total = 0
        while chunk := await self.read():
            total += len(chunk)
            if total > limit:
                raise h2.H2Error(f"body exceeds {limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    def set_sink(self, sink: h2.StreamSink) -> None:
        if self._sink is not None or self._read_waiter is not None:
            raise h2.H2Error("stream is already being read")
        self._sink = sink
        self._deliver()

    def pause_sink(self) -> None:
        self._sink_paused = True
        if not self._outer_paused:
            self._outer_paused = True
            self._outer.pause_sink()

    def resume_sink(self) -> None:
        if not self._sink_paused:
            return
        self._sink_paused = False
        self._deliver()

    def _deliver(self) -> None:
        while (sink := self._sink) is not None:
            if self._error is not None:
                self._sink = None
                sink.stream_error(self._error)
                return
            if self._sink_paused:
                return
            if not self._chunks:
                if self._eof:
                    self._sink = None
                    sink.stream_end()
                    return
                break
            chunk = self._chunks.popleft()
            self._buffered -= len(chunk)
            sink.stream_data(chunk)
        self._maybe_resume_outer()

    # ---- writing --------------------------------------------------------------------------------------------------

    def _check_send(self) -> None:
        if self._error is not None:
            raise self._error
        if self._local_ended:
            raise h2.H2Error("stream already ended (end() was called)")

    def write_nowait(self, data: bytes | memoryview) -> int:
        """Seal and send as much of `data` as the outer windows take now; the number of bytes taken.

        The records go to the outer stream in one write (one flush; records fill whole frames), not one write
        each, which would cut the TLS records and the hub's reads into many more."""
        if self._error is not None or self._local_ended:
            self._check_send()
        outer = self._outer
        total = len(data)
        room = outer.send_capacity() - OVERHEAD  # a key update record may come first
        if 0 < total <= MIN_RECORD_PAYLOAD and total <= room - OVERHEAD:  # one small record (a ping): no sizing
            record = self._channel.seal(DATA, data)
            sent = outer.write_nowait(record)
            if sent < len(record):  # pragma: no cover - send_capacity said it fits
                self._spill(record[sent:])
            self.bytes_sent += total
            return total
        step = self._record_size()
        full, part = divmod(room, step + OVERHEAD)  # whole records of `step` bytes, then one shorter one
        offset = min(len(data), full * step + max(0, part - OVERHEAD))
        if offset <= 0:
            return 0
        out = self._channel.seal_batch(data if offset == len(data) else memoryview(data)[:offset], step)
        sent = outer.write_nowait(out)
        if sent < len(out):  # pragma: no cover - send_capacity said it fits
            self._spill(out[sent:])
        self.bytes_sent += offset
        return offset

    def _record_size(self) -> int:
        """Payload per DATA record: a record fills four outer DATA frames exactly (64 KiB with the usual 16 KiB
        frames), so the hub forwards as many frames as for plaintext (a 64 KiB payload would add a 21-byte frame per
        record: 11-14% more hub CPU per GiB), and the per-record cost is spread over 64 KiB (with one record per
        frame each endpoint spent about 1 CPU-second more per relayed GiB)."""
        return max(MIN_RECORD_PAYLOAD, min(MAX_PAYLOAD, 4 * self._outer.max_frame_size - OVERHEAD))

    def _spill(self, rest: bytes | memoryview) -> None:
        self._spilling = True
        task = asyncio.ensure_future(self._outer.write(rest))
        task.add_done_callback(self._spilled)

    def _spilled(self, task: asyncio.Future[None]) -> None:
        self._spilling = False
        if not task.cancelled() and task.exception() is not None:
            self._outer.reset()
        else:
            self._maybe_finished()

    async def write(self, data: bytes | memoryview, *, end_stream: bool = False) -> None:
        """Seal and send `data` (waiting for the outer windows); with `end_stream`, the end record follows.

        Records go out in batches of up to `WRITE_BATCH` bytes, one outer write each."""
        self._check_send()
        view = data if isinstance(data, memoryview) else memoryview(data)
        total = len(view)
        offset = 0
        step = self._record_size()
        seal = self._channel.seal
        while offset < total or end_stream:
            batch_end = min(total, offset + WRITE_BATCH)
            out = self._channel.seal_batch(view[offset:batch_end], step) if offset < batch_end else b""
            self.bytes_sent += batch_end - offset
            offset = batch_end
            last = end_stream and offset == total
            if last:
                if self._local_ended:
                    raise h2.H2Error("stream already ended (end() was called)")
                self._local_ended = True
                out = b"".join((out, seal(END)))
            await self._outer.write(out, end_stream=last)
            if last:
                self._sent_end()
                return

    async def end(self) -> None:
        """Send the end record and END_STREAM (half-close). Idempotent."""
        if self._local_ended or self._error is not None:
            return
        self._local_ended = True
        with contextlib.suppress(h2.H2Error):
            await self._outer.write(self._channel.seal(END), end_stream=True)
            self._sent_end()

    def end_nowait(self) -> None:
        if self._local_ended or self._error is not None:
            return
        self._local_ended = True
        frame = self._channel.seal(END)
        outer = self._outer
        if outer.send_capacity() >= len(frame) and not self._spilling:
            with contextlib.suppress(h2.H2Error):
                outer.write_nowait(frame)
                outer.end_nowait()
                self._sent_end()
            return
        task = asyncio.ensure_future(self._write_end(frame))
        task.add_done_callback(_ignore_result)

    async def _write_end(self, frame: bytes) -> None:
        await self._outer.write(frame, end_stream=True)
        self._sent_end()

    def _sent_end(self) -> None:
        self._end_sent = True
        self._maybe_finished()

    def _maybe_finished(self) -> None:
        """Both END records went through and nothing of ours is pending: tell the outer stream (once)."""
        if self._end_sent and self._eof and self._error is None and not self._spilling:
            self._end_sent = False  # once
            self._outer.stream_finished()

    def reset(self, error_code: int = 8) -> None:
        self._outer.reset(error_code)


def _ignore_result(task: asyncio.Future[None]) -> None:
    if not task.cancelled():
        task.exception()
