"""HTTP/2 frame layout (RFC 9113 section 4 and 6): type, flag, error and setting codes, and frame builders.

A frame is a 9-byte header (24-bit payload length, 8-bit type, 8-bit flags, 31-bit stream id) and its payload.
The builders return complete frames as bytes; `data_header` returns only the header of a DATA frame, so that a large
payload can be written after it without being copied into one buffer (`transport.writelines([header, payload])`).
No I/O here and no state: `ztm.h2.codec` does the parsing, the checks and the bookkeeping.
"""

from __future__ import annotations

import struct

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The client connection preface (RFC 9113 section 3.4), followed by the client's SETTINGS frame."""

HEADER = struct.Struct(">LBL")
"""Frame header: (length << 8 | type, flags, R bit | stream id)."""
HEADER_SIZE = 9

# frame types
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# error codes
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
SETTINGS_TIMEOUT = 0x4
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
CONNECT_ERROR = 0xA
ENHANCE_YOUR_CALM = 0xB

# settings
HEADER_TABLE_SIZE = 0x1
ENABLE_PUSH = 0x2
MAX_CONCURRENT_STREAMS = 0x3
INITIAL_WINDOW_SIZE = 0x4
MAX_FRAME_SIZE = 0x5
MAX_HEADER_LIST_SIZE = 0x6
ENABLE_CONNECT_PROTOCOL = 0x8

DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME_SIZE = 16384
MAX_WINDOW = (1 << 31) - 1
MAX_FRAME_SIZE_LIMIT = (1 << 24) - 1
MAX_STREAM_ID = (1 << 31) - 1

_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")
_GOAWAY = struct.Struct(">LL")


def frame(type_: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    """One complete frame."""
    return HEADER.pack(len(payload) << 8 | type_, flags, stream_id) + payload


def data_header(stream_id: int, length: int, end_stream: bool) -> bytes:
    """The 9-byte header of a DATA frame carrying `length` payload bytes (the payload follows it)."""
    return HEADER.pack(length << 8 | DATA, END_STREAM if end_stream else 0, stream_id)


def headers(stream_id: int, block: bytes, end_stream: bool, max_frame_size: int) -> bytes:
    """A HEADERS frame with header block `block`, and CONTINUATION frames if the block exceeds `max_frame_size`."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= max_frame_size:
        return HEADER.pack(len(block) << 8 | HEADERS, flags | END_HEADERS, stream_id) + block
    parts = [block[i : i + max_frame_size] for i in range(0, len(block), max_frame_size)]
    out = [HEADER.pack(len(parts[0]) << 8 | HEADERS, flags, stream_id), parts[0]]
    for i, part in enumerate(parts[1:], 2):
        out.append(HEADER.pack(len(part) << 8 | CONTINUATION, END_HEADERS if i == len(parts) else 0, stream_id))
        out.append(part)
    return b"".join(out)


def settings(values: dict[int, int]) -> bytes:
    """A SETTINGS frame announcing `values` (setting code -> value)."""
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values.items()))


def settings_ack() -> bytes:
    return frame(SETTINGS, ACK, 0)


def window_update(stream_id: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, stream_id, _U32.pack(increment))


def rst_stream(stream_id: int, error_code: int) -> bytes:
    return frame(RST_STREAM, 0, stream_id, _U32.pack(error_code))


def ping(data: bytes, ack: bool = False) -> bytes:
    return frame(PING, ACK if ack else 0, 0, data)


def goaway(last_stream_id: int, error_code: int, debug: bytes = b"") -> bytes:
    return frame(GOAWAY, 0, 0, _GOAWAY.pack(last_stream_id, error_code) + debug)


def parse_settings(payload: bytes | memoryview) -> list[tuple[int, int]]:
    """The (code, value) pairs of a SETTINGS payload (its length is a multiple of 6, checked by the caller)."""
    return [_SETTING.unpack_from(payload, i) for i in range(0, len(payload), 6)]


def parse_u32(payload: bytes | memoryview, offset: int = 0) -> int:
    value: int = _U32.unpack_from(payload, offset)[0]
    return value


def parse_goaway(payload: bytes | memoryview) -> tuple[int, int, bytes]:
    """(last stream id, error code, debug data) of a GOAWAY payload (at least 8 bytes, checked by the caller)."""
    last, code = _GOAWAY.unpack_from(payload)
    return last & MAX_STREAM_ID, code, bytes(payload[8:])
