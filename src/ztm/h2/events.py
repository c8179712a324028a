"""What `H2Codec.receive()` reports: one small frozen dataclass per thing that happened; callers dispatch on type.

Headers are lists of (name, value) str pairs, names lowercase, pseudo-headers first, as received.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Event:
    """Base class of every codec event."""


@dataclass(frozen=True, slots=True)
class RequestReceived(Event):
    """Server: the peer opened stream `stream_id` with request `headers`."""

    stream_id: int
    headers: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class ResponseReceived(Event):
    """Client: the final (non-1xx) response `headers` of stream `stream_id` arrived."""

    stream_id: int
    headers: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class InformationalResponseReceived(Event):
    """Client: a 1xx response of stream `stream_id` arrived; the final response follows."""

    stream_id: int
    headers: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class TrailersReceived(Event):
    """The trailing header block of stream `stream_id` (a StreamEnded follows)."""

    stream_id: int
    headers: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class DataReceived(Event):
    """Payload bytes of a DATA frame of `stream_id`, possibly a part of one (frames are reported as they arrive).

    `data` is a view of the buffer given to `receive()`: valid until the caller reuses that buffer, so copy what
    must outlive it. Credit `flow_controlled_length` (payload plus padding) back with `H2Codec.acknowledge()` once
    the bytes are consumed; it may exceed `len(data)`, and `data` may be empty (padding only).
    """

    stream_id: int
    data: memoryview
    flow_controlled_length: int


@dataclass(frozen=True, slots=True)
class StreamEnded(Event):
    """The peer sent END_STREAM on `stream_id`: no more data or headers from it on this stream."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset(Event):
    """Stream `stream_id` is closed with `error_code`: reset by the peer (`remote`), or by the codec on a stream
    error it detected (it sent the RST_STREAM)."""

    stream_id: int
    error_code: int
    remote: bool


@dataclass(frozen=True, slots=True)
class WindowUpdated(Event):
    """The peer granted `delta` more bytes of send window on `stream_id` (0: the connection)."""

    stream_id: int
    delta: int


@dataclass(frozen=True, slots=True)
class SettingsChanged(Event):
    """The peer's SETTINGS frame was applied (and acknowledged); `changed` maps setting codes to their new values."""

    changed: dict[int, int]


@dataclass(frozen=True, slots=True)
class SettingsAcked(Event):
    """The peer acknowledged our oldest unacknowledged SETTINGS; its values are now in force."""


@dataclass(frozen=True, slots=True)
class PingReceived(Event):
    """The peer sent a PING with `data` (8 bytes); the codec has queued the ACK."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PingAcked(Event):
    """The peer answered our PING with `data`."""

    data: bytes


@dataclass(frozen=True, slots=True)
class GoAway(Event):
    """The peer sent GOAWAY: it will process no stream above `last_stream_id`; we may open no new stream."""

    error_code: int
    last_stream_id: int
    additional_data: bytes


@dataclass(frozen=True, slots=True)
class ConnectionTerminated(Event):
    """We detected a connection error: a GOAWAY with `error_code` is queued and the codec accepts nothing more."""

    error_code: int
    reason: str
