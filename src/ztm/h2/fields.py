"""HTTP/2 header fields: checks on received header blocks (RFC 9113 8.2-8.3) and encoding of the ones we send.

A received block that breaks the rules makes the request or response *malformed*, a stream error of type
PROTOCOL_ERROR: `check_received` raises `Malformed` with the reason. The rules are the ones the `h2` library applies
with `validate_inbound_headers` (which this module replaces): no uppercase or control characters in names, no
NUL/CR/LF or surrounding whitespace in values, no connection-specific fields, `te` only as "trailers", pseudo-headers
first, known, not repeated and right for the kind of block (request, response, trailers), requests with :method,
:scheme, :path (CONNECT: :authority and neither :scheme nor :path), an :authority or a Host header, and equal if
both. Split `cookie` fields are joined again (RFC 9113 8.2.3).

Sending: `encode()` normalizes fields as `h2` does (lowercase names, stripped values, connection-specific fields
dropped, credentials never indexed) and encodes them with a *stateless* HPACK encoder (RFC 7541): static-table
indexes where a field or name is in the static table, literals without indexing otherwise, no Huffman coding, and
never the dynamic table (it announces a table size of 0 in the first block, `TABLE_SIZE_ZERO`). Compression is not
worth its CPU between agents and hubs; statelessness is what makes caching encoded fields possible, so a repeated
field costs one dictionary lookup. Receiving: `decode_simple()` decodes blocks made only of what that encoder
produces (static-table indexes, literals without indexing, no Huffman coding): such blocks neither read nor change
the decoder's state, and a repeated one is decoded once. Anything else goes to the `hpack` package's full decoder.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from hpack.table import HeaderTable

REQUEST = 0
RESPONSE = 1
TRAILERS = 2

_BAD_NAME = re.compile(rb"[\x00-\x20A-Z:\x7f-\xff]")
_BAD_VALUE = re.compile(rb"[\x00\r\n]|^[ \t]|[ \t]$")
_BAD_OUT_VALUE = re.compile(r"[\x00\r\n]")
_CONNECTION_SPECIFIC = frozenset((b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"))
_CONNECTION_SPECIFIC_STR = frozenset(name.decode() for name in _CONNECTION_SPECIFIC)
_PSEUDO = {
    REQUEST: frozenset((b":method", b":scheme", b":authority", b":path")),
    RESPONSE: frozenset((b":status",)),
    TRAILERS: frozenset(),
}
_SECRET = frozenset(("authorization", "proxy-authorization"))


class Malformed(Exception):
    """A received header block breaks RFC 9113; the message says how."""


class Received:
    """A checked, decoded header block and the facts the codec needs from it."""

    __slots__ = ("content_length", "headers", "method", "status")

    def __init__(
        self, headers: list[tuple[str, str]], status: int | None, method: str | None, content_length: int | None
    ) -> None:
        self.headers = headers
        self.status = status
        self.method = method
        self.content_length = content_length


def check_received(raw: Iterable[tuple[bytes, bytes]], kind: int) -> Received:
    """Check a decoded header block of `kind` (REQUEST, RESPONSE or TRAILERS); raise `Malformed` if it is not valid."""
    out: list[tuple[str, str]] = []
    pseudo: dict[bytes, bytes] = {}
    allowed = _PSEUDO[kind]
    regular = False
    cookies: list[str] = []
    host: bytes | None = None
    length: bytes | None = None
    for name, value in raw:
        if not name:
            raise Malformed("empty header name")
        if name[0] == 0x3A:  # ":"
            if regular:
                raise Malformed(f"pseudo-header {name!r} after a regular header")
            if name not in allowed:
                raise Malformed(f"pseudo-header {name!r} not allowed here")
            if name in pseudo:
                raise Malformed(f"repeated pseudo-header {name!r}")
            pseudo[name] = value
        else:
            regular = True
            if _BAD_NAME.search(name):
                raise Malformed(f"invalid header name {name!r}")
            if name in _CONNECTION_SPECIFIC:
                raise Malformed(f"connection-specific header {name!r}")
            if name == b"te" and value.lower() != b"trailers":
                raise Malformed(f"te: {value!r} (only 'trailers' is allowed)")
            if name == b"host":
                if host is not None:
                    raise Malformed("repeated host header")
                host = value
            elif name == b"content-length":
                if length is not None and length != value:
                    raise Malformed("conflicting content-length headers")
                length = value
        if value and _BAD_VALUE.search(value):
            raise Malformed(f"invalid value of header {name!r}")
        try:
            text = value.decode()
        except UnicodeDecodeError:
            raise Malformed(f"value of header {name!r} is not UTF-8") from None
        if name == b"cookie":
            cookies.append(text)
        else:
            out.append((name.decode("ascii"), text))
    if cookies:
        out.append(("cookie", "; ".join(cookies)))

    status = None
    method = None
    if kind == REQUEST:
        method_raw = pseudo.get(b":method")
        if not method_raw:
            raise Malformed("request without :method")
        method = method_raw.decode()
        if method == "CONNECT":
            if b":scheme" in pseudo or b":path" in pseudo:
                raise Malformed("CONNECT request with :scheme or :path")
            if not pseudo.get(b":authority"):
                raise Malformed("CONNECT request without :authority")
        else:
            if not pseudo.get(b":scheme"):
                raise Malformed("request without :scheme")
            if not pseudo.get(b":path"):
                raise Malformed("request without :path")
        authority = pseudo.get(b":authority")
        if authority is None and host is None:
            raise Malformed("request without :authority or host")
        if authority is not None and host is not None and authority != host:
            raise Malformed(":authority and host differ")
    elif kind == RESPONSE:
        code = pseudo.get(b":status", b"")
        if len(code) != 3 or not code.isdigit():
            raise Malformed(f"response with :status {code!r}")
        status = int(code)
    content_length = None
    if length is not None:
        if not length.isdigit() or len(length) > 18:
            raise Malformed(f"content-length: {length!r}")
        content_length = int(length)
    return Received(out, status, method, content_length)


TABLE_SIZE_ZERO = b"\x20"
"""A dynamic table size update to 0 (RFC 7541 6.3): starts our first header block on a connection."""

_STATIC_FIELDS: dict[tuple[str, str], int] = {}
_STATIC_NAMES: dict[str, int] = {}
for _index, (_name, _value) in enumerate(HeaderTable.STATIC_TABLE, 1):
    _STATIC_FIELDS.setdefault((_name.decode(), _value.decode()), _index)
    _STATIC_NAMES.setdefault(_name.decode(), _index)
_CACHE_LIMIT = 4096
_CACHE_VALUE_SIZE = 256
_cache: dict[tuple[str, str], bytes] = {}


def _integer(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 5.1) in a first byte whose high bits are `first`."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return _integer(len(raw), 7, 0) + raw


def _field(name: str, value: str) -> bytes:
    """One field, normalized and encoded (b"" for a field that is not sent); ValueError if it cannot be sent."""
    name = name.lower()
    value = value.strip()
    if name in _CONNECTION_SPECIFIC_STR:
        return b""
    if not name or (name[0] != ":" and _BAD_NAME.search(name.encode())) or _BAD_OUT_VALUE.search(value):
        raise ValueError(f"invalid header field {name!r}")
    secret = name in _SECRET or (name == "cookie" and len(value) < 20)
    if not secret:
        index = _STATIC_FIELDS.get((name, value))
        if index:
            return _integer(index, 7, 0x80)  # indexed field
    first = 0x10 if secret else 0x00  # literal never indexed / without indexing
    index = _STATIC_NAMES.get(name, 0)
    head = _integer(index, 4, first) if index else bytes((first,)) + _string(name)
    return head + _string(value)


def encode(headers: Iterable[tuple[str, str]]) -> bytes:
    """An HPACK header block of `headers` (see the module docstring). ValueError on a field that cannot be sent."""
    cache = _cache
    parts = []
    for header in headers:
        block = cache.get(header)
        if block is None:
            block = _field(*header)
            if len(header[1]) <= _CACHE_VALUE_SIZE:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                cache[header] = block
        parts.append(block)
    return b"".join(parts)


_decoded: dict[bytes, tuple[list[tuple[bytes, bytes]], int]] = {}


def decode_simple(block: bytes, max_list_size: int) -> list[tuple[bytes, bytes]] | None:
    """`block` decoded if it only uses static-table indexes and plain literals without indexing; else None (also
    for anything unusual, errors included: the full decoder then deals with it). Stateless, so results are cached."""
    cached = _decoded.get(block)
    if cached is not None:
        return cached[0] if cached[1] <= max_list_size else None
    static = HeaderTable.STATIC_TABLE
    out: list[tuple[bytes, bytes]] = []
    size = 0
    pos = 0
    end = len(block)
    try:
        while pos < end:
            first = block[pos]
            if first & 0x80:  # indexed field
                index, pos = _decode_integer(block, pos, 7)
                if not 0 < index <= len(static):
                    return None
                name, value = static[index - 1]
            elif first & 0xE0 == 0:  # literal without indexing (0000) or never indexed (0001)
                index, pos = _decode_integer(block, pos, 4)
                if index:
                    if index > len(static):
                        return None
                    name = static[index - 1][0]
                else:
                    if block[pos] & 0x80:  # Huffman coded
                        return None
                    length, pos = _decode_integer(block, pos, 7)
                    name = block[pos : pos + length]
                    pos += length
                if block[pos] & 0x80:
                    return None
                length, pos = _decode_integer(block, pos, 7)
                value = block[pos : pos + length]
                pos += length
                if pos > end:
                    return None
            else:  # incremental indexing or a table size update: stateful
                return None
            size += len(name) + len(value) + 32
            if size > max_list_size:
                return None
            out.append((name, value))
    except IndexError:
        return None
    if len(block) <= _CACHE_VALUE_SIZE:
        if len(_decoded) >= _CACHE_LIMIT:
            _decoded.clear()
        _decoded[block] = (out, size)
    return out


def _decode_integer(data: bytes, pos: int, prefix_bits: int) -> tuple[int, int]:
    """An HPACK integer at `pos`: (value, position after it). IndexError if truncated or absurdly long."""
    limit = (1 << prefix_bits) - 1
    value = data[pos] & limit
    pos += 1
    if value < limit:
        return value, pos
    shift = 0
    while shift <= 28:
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise IndexError("HPACK integer too long")
