"""The client side of the WebSocket protocol (RFC 6455), sans I/O: the opening handshake and the framing.

`ztm terminal` talks to the agent's session route over a WebSocket on loopback. A full client library (aiohttp) costs
the CLI about 0.1 s of imports per command; this module is the part of the protocol such a client needs: the
upgrade request and the check of its answer, masked frames out, and a `Decoder` that turns the server's bytes into
whole messages, refusing what RFC 6455 forbids with a `WsError` that says what was wrong. No extensions, no
subprotocols.
"""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from dataclasses import dataclass

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

CONT, TEXT, BINARY, CLOSE, PING, PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA = (TEXT, BINARY)
_CONTROL = (CLOSE, PING, PONG)

MAX_HEAD = 16 * 1024
"""Bytes the server's handshake answer (status line and headers) may take."""


class WsError(Exception):
    """The server broke the protocol; `str()` is a one-line reason."""


@dataclass(frozen=True, slots=True)
class Message:
    """A whole message (fragments joined) or a control frame: `opcode` is TEXT, BINARY, CLOSE, PING or PONG."""

    opcode: int
    data: bytes


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()  # noqa: S324 (RFC 6455 asks SHA-1)


def handshake_request(host: str, path: str, key: str, headers: dict[str, str]) -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in headers.items()),
    ]
    for line in lines:
        if "\r" in line or "\n" in line:
            raise ValueError(f"a line break in the WebSocket request line {line.split(':')[0]!r}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


@dataclass(frozen=True, slots=True)
class Answer:
    """The server's answer to the upgrade request."""

    status: int
    headers: dict[str, str]
    body: bytes
    """What came after the head (for a refusal: its start, e.g. a JSON error)."""


def parse_answer(buf: bytes) -> tuple[Answer, int] | None:
    """The answer head in `buf` and the bytes it used, or None if it is not complete yet."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > MAX_HEAD:
            raise WsError(f"the agent's WebSocket answer head is over {MAX_HEAD} bytes")
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not (parts[1].isascii() and parts[1].isdigit()):
        raise WsError(f"the agent answered the WebSocket upgrade with {lines[0][:80]!r}, not an HTTP status line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise WsError(f"a malformed header line in the agent's WebSocket answer: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(parts[1]), headers, b""), end + 4


def check_accept(answer: Answer, key: str) -> None:
    """Raise WsError unless `answer` (a 101) completes the handshake for `key`."""
    if answer.headers.get("upgrade", "").lower() != "websocket":
        raise WsError("the agent's 101 answer does not upgrade to websocket")
    if "upgrade" not in answer.headers.get("connection", "").lower():
        raise WsError("the agent's 101 answer lacks 'Connection: Upgrade'")
    if answer.headers.get("sec-websocket-accept") != accept_for(key):
        raise WsError("the agent's Sec-WebSocket-Accept does not match our key")
    if answer.headers.get("sec-websocket-extensions"):
        raise WsError("the agent chose a WebSocket extension we did not offer")


def encode(opcode: int, payload: bytes, mask: bytes | None = None) -> bytes:
    """One final frame, masked as a client's must be (`mask`: 4 bytes, random by default)."""
    if opcode in _CONTROL and len(payload) > 125:
        raise ValueError("a control frame carries at most 125 bytes")
    mask = os.urandom(4) if mask is None else mask
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + mask + _xor(payload, mask)


def close_payload(code: int = 1000, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()[:123]


def _xor(data: bytes, mask: bytes) -> bytes:
    if not data:
        return b""
    n = len(data)
    key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(n, "big")


class Decoder:
    """The server's frames in, whole messages out. Fragments are joined; a message over `max_size` is an error."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._fragment_op = 0
        self._fragment_size = 0

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        while (frame := self._frame()) is not None:
            fin, opcode, payload = frame
            if opcode in _CONTROL:
                out.append(Message(opcode, payload))
            elif opcode == CONT:
                if not self._fragment_op:
                    raise WsError("a continuation frame with no message to continue")
                self._add(payload)
                if fin:
                    out.append(Message(self._fragment_op, b"".join(self._fragments)))
                    self._fragments, self._fragment_op, self._fragment_size = [], 0, 0
            else:
                if self._fragment_op:
                    raise WsError("a new message began before the fragmented one ended")
                if fin:
                    self._check_size(len(payload))
                    out.append(Message(opcode, payload))
                else:
                    self._fragment_op = opcode
                    self._add(payload)
        return out

    def _add(self, payload: bytes) -> None:
        self._fragment_size += len(payload)
        self._check_size(self._fragment_size)
        self._fragments.append(payload)

    def _check_size(self, size: int) -> None:
        if size > self.max_size:
            raise WsError(f"a WebSocket message over {self.max_size} bytes")

    def _frame(self) -> tuple[bool, int, bytes] | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        b0, b1 = buf[0], buf[1]
        fin, rsv, opcode = bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F
        if rsv:
            raise WsError("a WebSocket frame with reserved bits set (no extension was agreed)")
        if opcode not in _DATA and opcode not in _CONTROL and opcode != CONT:
            raise WsError(f"a WebSocket frame with unknown opcode {opcode:#x}")
        if b1 & 0x80:
            raise WsError("a masked WebSocket frame from the server")
        n, pos = b1 & 0x7F, 2
        if opcode in _CONTROL and (n > 125 or not fin):
            raise WsError("a WebSocket control frame that is fragmented or over 125 bytes")
        if n == 126:
            if len(buf) < 4:
                return None
            n, pos = struct.unpack_from("!H", buf, 2)[0], 4
        elif n == 127:
            if len(buf) < 10:
                return None
            n, pos = struct.unpack_from("!Q", buf, 2)[0], 10
            if n >> 63:
                raise WsError("a WebSocket frame length with the top bit set")
        if n > self.max_size:
            raise WsError(f"a WebSocket frame over {self.max_size} bytes")
        if len(buf) < pos + n:
            return None
        payload = bytes(buf[pos : pos + n])
        del buf[: pos + n]
        return fin, opcode, payload
