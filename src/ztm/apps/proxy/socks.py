"""SOCKS5 (RFC 1928) as a sans-IO codec: the greeting, the request, replies, and the UDP datagram header.

The parsers take the bytes received so far and return `(message, bytes consumed)`, or None while the message is
incomplete; malformed input raises `SocksError` (and nothing else), which carries the reply code to send, if any.
Without credentials configured the entrance offers "no authentication"; with them it requires username/password
(RFC 1929: `parse_userpass`, answered with `auth_status`).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from ztm.apps.proxy import spec
from ztm.errors import BadInput

VERSION = 5
NO_AUTH = 0x00
USERPASS = 0x02
NO_ACCEPTABLE = 0xFF
USERPASS_VERSION = 1
"""The version byte of the RFC 1929 sub-negotiation."""
AUTH_OK = 0x00
AUTH_FAILED = 0x01

CONNECT = 1
BIND = 2
UDP_ASSOCIATE = 3

ATYP_IPV4 = 1
ATYP_DOMAIN = 3
ATYP_IPV6 = 4

SUCCEEDED = 0x00
GENERAL_FAILURE = 0x01
NOT_ALLOWED = 0x02
NETWORK_UNREACHABLE = 0x03
HOST_UNREACHABLE = 0x04
CONNECTION_REFUSED = 0x05
TTL_EXPIRED = 0x06
COMMAND_NOT_SUPPORTED = 0x07
ADDRESS_NOT_SUPPORTED = 0x08

REPLY_OF = {
    spec.DENIED: NOT_ALLOWED,
    spec.NO_EXIT: NETWORK_UNREACHABLE,
    spec.NET_UNREACHABLE: NETWORK_UNREACHABLE,
    spec.UNRESOLVED: HOST_UNREACHABLE,
    spec.UNREACHABLE: HOST_UNREACHABLE,
    spec.TIMEOUT: HOST_UNREACHABLE,
    spec.REFUSED: CONNECTION_REFUSED,
    spec.FAILED: GENERAL_FAILURE,
}


class SocksError(Exception):
    """A malformed or unsupported SOCKS message; `reply` is the code to answer with (None: just close)."""

    def __init__(self, message: str, reply: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reply = reply


@dataclass(frozen=True)
class Greeting:
    methods: bytes

    @property
    def no_auth(self) -> bool:
        return NO_AUTH in self.methods

    @property
    def userpass(self) -> bool:
        return USERPASS in self.methods


@dataclass(frozen=True)
class Request:
    command: int
    destination: spec.Destination | None
    """None only for UDP ASSOCIATE with an unspecified client address (0.0.0.0:0 or port 0)."""
    host: str
    port: int


def parse_greeting(buf: bytes) -> tuple[Greeting, int] | None:
    if not buf:
        return None
    if buf[0] != VERSION:
        raise SocksError(f"not SOCKS version 5 (first byte {buf[0]:#04x})")
    if len(buf) < 2:
        return None
    count = buf[1]
    if count == 0:
        raise SocksError("SOCKS greeting offers no authentication method")
    if len(buf) < 2 + count:
        return None
    return Greeting(bytes(buf[2 : 2 + count])), 2 + count


def parse_userpass(buf: bytes) -> tuple[spec.Credentials, int] | None:
    """The RFC 1929 request: VER(1) ULEN(1) UNAME(1-255) PLEN(1-255) PASSWD. A wrong version or an empty user name
    or password is a `SocksError` (answer `auth_status(AUTH_FAILED)` and close)."""
    if not buf:
        return None
    if buf[0] != USERPASS_VERSION:
        raise SocksError(f"username/password sub-negotiation of version {buf[0]:#04x}, expected 0x01")
    if len(buf) < 2:
        return None
    ulen = buf[1]
    if ulen == 0:
        raise SocksError("empty user name in the username/password sub-negotiation")
    if len(buf) < 2 + ulen + 1:
        return None
    plen = buf[2 + ulen]
    if plen == 0:
        raise SocksError("empty password in the username/password sub-negotiation")
    end = 3 + ulen + plen
    if len(buf) < end:
        return None
    return spec.Credentials(bytes(buf[2 : 2 + ulen]), bytes(buf[3 + ulen : end])), end


def auth_status(status: int) -> bytes:
    return bytes([USERPASS_VERSION, status])


def _address(buf: bytes, at: int) -> tuple[str, int, int] | None:
    """(host text, port, end offset) of an ATYP-prefixed address at `at`; None if incomplete."""
    if len(buf) <= at:
        return None
    atyp = buf[at]
    if atyp == ATYP_IPV4:
        end = at + 1 + 4
        if len(buf) < end + 2:
            return None
        host = str(ipaddress.IPv4Address(bytes(buf[at + 1 : end])))
    elif atyp == ATYP_IPV6:
        end = at + 1 + 16
        if len(buf) < end + 2:
            return None
        host = str(ipaddress.IPv6Address(bytes(buf[at + 1 : end])))
    elif atyp == ATYP_DOMAIN:
        if len(buf) < at + 2:
            return None
        size = buf[at + 1]
        end = at + 2 + size
        if len(buf) < end + 2:
            return None
        raw = bytes(buf[at + 2 : end])
        if size == 0:
            raise SocksError("empty domain name", HOST_UNREACHABLE)
        try:
            host = raw.decode("ascii")
        except UnicodeDecodeError:
            raise SocksError("domain name is not ASCII", HOST_UNREACHABLE) from None
    else:
        raise SocksError(f"address type {atyp} is not supported", ADDRESS_NOT_SUPPORTED)
    (port,) = struct.unpack_from("!H", buf, end)
    return host, port, end + 2


def parse_request(buf: bytes) -> tuple[Request, int] | None:
    if not buf:
        return None
    if buf[0] != VERSION:
        raise SocksError(f"not SOCKS version 5 (request byte {buf[0]:#04x})", GENERAL_FAILURE)
    if len(buf) < 4:
        return None
    command = buf[1]
    if command not in (CONNECT, BIND, UDP_ASSOCIATE):
        raise SocksError(f"command {command} is not supported", COMMAND_NOT_SUPPORTED)
    found = _address(buf, 3)
    if found is None:
        return None
    host, port, end = found
    if command == BIND:
        raise SocksError("BIND is not supported", COMMAND_NOT_SUPPORTED)
    destination: spec.Destination | None = None
    unspecified = port == 0 or host in ("0.0.0.0", "::")
    if not (command == UDP_ASSOCIATE and unspecified):
        try:
            destination = spec.Destination.make(host, port)
        except BadInput as exc:
            raise SocksError(exc.message, HOST_UNREACHABLE) from None
    return Request(command, destination, host, port), end


def encode_address(host: str, port: int) -> bytes:
    ip = spec.parse_ip(host)
    if isinstance(ip, ipaddress.IPv4Address):
        head = bytes([ATYP_IPV4]) + ip.packed
    elif isinstance(ip, ipaddress.IPv6Address):
        head = bytes([ATYP_IPV6]) + ip.packed
    else:
        raw = host.encode("ascii")[:255]
        head = bytes([ATYP_DOMAIN, len(raw)]) + raw
    return head + struct.pack("!H", port)


def choice(method: int) -> bytes:
    return bytes([VERSION, method])


def reply(code: int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    return bytes([VERSION, code, 0]) + encode_address(host, port)


def parse_datagram(data: bytes) -> tuple[spec.Destination, bytes]:
    """A client's UDP datagram: RSV(2) FRAG(1) ADDRESS PORT DATA. Fragments are not supported (dropped)."""
    if len(data) < 4:
        raise SocksError("UDP datagram shorter than its header")
    if data[0] or data[1]:
        raise SocksError("UDP datagram with non-zero reserved bytes")
    if data[2]:
        raise SocksError("fragmented UDP datagrams are not supported")
    found = _address(data, 3)
    if found is None:
        raise SocksError("truncated UDP datagram header")
    host, port, end = found
    try:
        return spec.Destination.make(host, port), bytes(data[end:])
    except BadInput as exc:
        raise SocksError(exc.message) from None


def encode_datagram(source: spec.Destination, payload: bytes) -> bytes:
    return b"\x00\x00\x00" + encode_address(source.host, source.port) + payload
