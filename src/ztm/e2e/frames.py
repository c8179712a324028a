"""Framing of the end-to-end layer: `type (1) | length (3, big-endian) | body`, on the outer stream's bytes.

This module owns the frame types and their size limits, `encode`, the incremental `FrameReader` (the handshake side
of a stream: it yields whole frames and hands the rest to a `Channel`), the tiny RESUME/ERROR frames, and `Cursor`,
the bounds-checked reader the handshake messages are parsed with. Anything that does not fit (unknown type,
over-long or short body, trailing bytes, non-ASCII ids) is `E2EError("malformed")`. No I/O here.
"""

from __future__ import annotations

import struct

from ztm.e2e.errors import E2EError

HELLO, HELLO_R, AUTH, RESUME, UNKNOWN, RECORD, ERROR = 1, 2, 3, 4, 5, 6, 7
NAMES = {
    HELLO: "HELLO",
    HELLO_R: "HELLO_R",
    AUTH: "AUTH",
    RESUME: "RESUME",
    UNKNOWN: "UNKNOWN",
    RECORD: "RECORD",
    ERROR: "ERROR",
}

MAX_HANDSHAKE_BODY = 16384
"""Largest body of a handshake frame (every type but RECORD)."""
MAX_PAYLOAD = 65536
"""Largest payload of one record."""
TAG = 16
MIN_RECORD_BODY = 1 + TAG
MAX_RECORD_BODY = 1 + MAX_PAYLOAD + TAG
HEADER = 4
MAX_ERROR_TEXT = 300
SESSION_ID_LEN = 16

_U32 = struct.Struct(">I")
_RESUME = struct.Struct(">16sQ")


def encode(ftype: int, body: bytes) -> bytes:
    """One frame: the 4-byte header then `body`; `ValueError` if the body is over the type's limit."""
    limit = MAX_RECORD_BODY if ftype == RECORD else MAX_HANDSHAKE_BODY
    if ftype not in NAMES or len(body) > limit:
        raise ValueError(f"cannot encode a frame of type {ftype} with a {len(body)}-byte body")
    return _U32.pack(ftype << 24 | len(body)) + body


def check_header(ftype: int, length: int) -> None:
    """`E2EError("malformed")` unless a frame of this type may have a body of this length."""
    if ftype == RECORD:
        if not MIN_RECORD_BODY <= length <= MAX_RECORD_BODY:
            raise E2EError("malformed", f"malformed end-to-end frame: a RECORD of {length} bytes")
    elif ftype not in NAMES:
        raise E2EError("malformed", f"malformed end-to-end frame: unknown type {ftype} (is the peer a ztm agent?)")
    elif length > MAX_HANDSHAKE_BODY:
        raise E2EError("malformed", f"malformed end-to-end frame: a {NAMES[ftype]} of {length} bytes")


def body_of(frame: bytes, ftype: int) -> bytes:
    """The body of a whole frame of type `ftype`; `E2EError("malformed")` if the frame is not one."""
    if len(frame) < HEADER:
        raise E2EError("malformed", "malformed end-to-end frame: shorter than its header")
    (word,) = _U32.unpack_from(frame)
    got, length = word >> 24, word & 0xFFFFFF
    if got != ftype:
        name = NAMES.get(got, f"type {got}")
        raise E2EError("malformed", f"malformed end-to-end handshake: expected {NAMES[ftype]}, got {name}")
    check_header(got, length)
    if len(frame) != HEADER + length:
        raise E2EError("malformed", f"malformed end-to-end frame: {NAMES[ftype]} length does not match its header")
    return bytes(frame[HEADER:])


class FrameReader:
    """Splits the bytes of a stream into whole frames (before keys exist; records go to a `Channel`)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next(self) -> tuple[int, bytes] | None:
        """The next complete frame as (type, whole frame bytes), None until one is complete."""
        buf = self._buf
        if len(buf) < HEADER:
            return None
        (word,) = _U32.unpack_from(buf)
        ftype, length = word >> 24, word & 0xFFFFFF
        check_header(ftype, length)
        end = HEADER + length
        if len(buf) < end:
            return None
        frame = bytes(buf[:end])
        del buf[:end]
        return ftype, frame

    def take_rest(self) -> bytes:
        """The bytes buffered but not yet returned as a frame; the buffer is emptied."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest


def error_frame(text: str) -> bytes:
    """An ERROR frame: `text` made printable (one line) and cut to 300 bytes of UTF-8."""
    clean = "".join(c if c.isprintable() else "?" for c in text[:MAX_ERROR_TEXT])
    data = clean.encode("utf-8", "replace")[:MAX_ERROR_TEXT].decode("utf-8", "ignore").encode("utf-8")
    return encode(ERROR, data)


def parse_error(frame: bytes) -> str:
    """The text of an ERROR frame, printable and at most 300 bytes (it is unauthenticated: show, never trust)."""
    body = body_of(frame, ERROR)[:MAX_ERROR_TEXT]
    text = body.decode("utf-8", "replace")
    return "".join(c if c.isprintable() else "?" for c in text)


def unknown_frame() -> bytes:
    """The UNKNOWN frame: "no such session here, do a full handshake on this stream"."""
    return encode(UNKNOWN, b"")


def resume_frame(session_id: bytes, stream_no: int) -> bytes:
    """The RESUME frame that opens stream `stream_no` of session `session_id`."""
    if len(session_id) != SESSION_ID_LEN or not 0 < stream_no < 2**64:
        raise ValueError("a RESUME needs a 16-byte session id and a stream number in 1..2**64-1")
    return encode(RESUME, _RESUME.pack(session_id, stream_no))


def parse_resume(frame: bytes) -> tuple[bytes, int]:
    """(session id, stream number) of a RESUME frame; `E2EError("malformed")` if it is not one."""
    body = body_of(frame, RESUME)
    if len(body) != _RESUME.size:
        raise E2EError("malformed", f"malformed end-to-end RESUME: {len(body)} bytes instead of {_RESUME.size}")
    session_id, stream_no = _RESUME.unpack(body)
    if stream_no == 0:
        raise E2EError("malformed", "malformed end-to-end RESUME: stream 0 is the handshake stream")
    return session_id, int(stream_no)


class Cursor:
    """Reads the fields of a handshake body in order; `E2EError("malformed")` on a short or over-long body."""

    def __init__(self, body: bytes, what: str) -> None:
        self._body = body
        self._pos = 0
        self._what = what

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if end > len(self._body):
            raise E2EError("malformed", f"malformed end-to-end {self._what}: too short")
        out = self._body[self._pos : end]
        self._pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u8_bytes(self) -> bytes:
        return self.take(self.u8())

    def u16_bytes(self) -> bytes:
        return self.take(int.from_bytes(self.take(2), "big"))

    def ascii(self) -> str:
        raw = self.u8_bytes()
        if not printable_ascii(raw):
            raise E2EError("malformed", f"malformed end-to-end {self._what}: an id is not printable ASCII")
        return raw.decode("ascii")

    def end(self) -> None:
        if self._pos != len(self._body):
            raise E2EError("malformed", f"malformed end-to-end {self._what}: trailing bytes")


def printable_ascii(raw: bytes) -> bool:
    """Every byte is a printable ASCII character other than space (as in mesh and endpoint ids)."""
    return all(0x21 <= b < 0x7F for b in raw)


def u8_bytes(data: bytes) -> bytes:
    """`data` prefixed with its length as one byte."""
    if len(data) > 0xFF:
        raise ValueError("field too long for a one-byte length")
    return bytes([len(data)]) + data


def u16_bytes(data: bytes) -> bytes:
    """`data` prefixed with its length as two big-endian bytes."""
    if len(data) > 0xFFFF:
        raise ValueError("field too long for a two-byte length")
    return len(data).to_bytes(2, "big") + data
