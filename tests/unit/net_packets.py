"""Packets built by hand for the network-mode tests: IPv4 (with options, fragments), IPv6 (with extension headers,
fragments), TCP, UDP, ICMP and ICMPv6, with the checksums a kernel would accept."""

from __future__ import annotations

import socket
import struct

A4 = socket.inet_pton(socket.AF_INET, "100.64.0.2")
B4 = socket.inet_pton(socket.AF_INET, "100.64.0.3")
A6 = socket.inet_pton(socket.AF_INET6, "fd12:3456:789a::6440:2")
B6 = socket.inet_pton(socket.AF_INET6, "fd12:3456:789a::6440:3")


def addr(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def tcp(sport: int, dport: int, payload: bytes = b"", flags: int = 0x02, offset: int = 5) -> bytes:
    options = b"\x01" * ((offset - 5) * 4) if offset >= 5 else b""
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, offset << 4, flags, 65535, 0, 0) + options + payload


def udp(sport: int, dport: int, payload: bytes = b"") -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def icmp(kind: int = 8, code: int = 0, payload: bytes = b"abcd") -> bytes:
    head = struct.pack("!BBHHH", kind, code, 0, 1, 1) + payload
    return head[:2] + struct.pack("!H", checksum(head)) + head[4:]


def ipv4(
    src: bytes,
    dst: bytes,
    proto: int,
    payload: bytes,
    *,
    options: bytes = b"",
    offset: int = 0,
    more: bool = False,
    total: int | None = None,
    ihl: int | None = None,
    dont_fragment: bool = False,
) -> bytes:
    length = 20 + len(options)
    words = ihl if ihl is not None else length // 4
    frag = (0x4000 if dont_fragment else 0) | (0x2000 if more else 0) | offset
    size = total if total is not None else length + len(payload)
    head = struct.pack("!BBHHHBBH4s4s", 0x40 | words, 0, size, 7, frag, 64, proto, 0, src, dst) + options
    head = head[:10] + struct.pack("!H", checksum(head)) + head[12:]
    return head + payload


def ipv6(src: bytes, dst: bytes, proto: int, payload: bytes, *, length: int | None = None) -> bytes:
    size = len(payload) if length is None else length
    return struct.pack("!IHBB16s16s", 6 << 28, size, proto, 64, src, dst) + payload


def ext(following: int, body: bytes = b"\0" * 6) -> bytes:
    """A hop-by-hop, routing or destination options header: next header, length in 8-byte units after the first 8,
    then `body` (6 bytes plus a multiple of 8)."""
    assert (len(body) + 2) % 8 == 0
    return bytes([following, (len(body) + 2) // 8 - 1]) + body


def frag6(following: int, offset: int, more: bool, ident: int = 99) -> bytes:
    return struct.pack("!BBHI", following, 0, (offset << 3) | int(more), ident)


def ah(following: int, words: int = 4) -> bytes:
    """An authentication header of (words + 2) * 4 bytes."""
    return bytes([following, words, 0, 0]) + b"\0" * ((words + 2) * 4 - 4)
