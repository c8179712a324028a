"""IP packets as the TUN device and the peers hand them over: the virtio-net header that `IFF_VNET_HDR` puts in front
of each packet (`VnetHdr`, `parse_vnet`, `pack_vnet`, `check_vnet`) and the few fields of the IP packet that
routing and the inbound filter need (`parse` -> `PacketInfo`).

`parse` reads IPv4 (with options) and IPv6 (walking at most `MAX_EXT_HEADERS` extension headers) and the first bytes
of TCP, UDP, ICMP and ICMPv6. It is strict: anything truncated, inconsistent or ambiguous is a `BadPacket` with a
short reason (a counter key), never an exception of another kind. Fragments: a first fragment must carry the whole
TCP (20 bytes) or UDP (8 bytes) header (RFC 1858's tiny-fragment attack hides the ports in a second fragment); a later
fragment has no ports (`sport`/`dport` None), and a later TCP fragment at offset 8 bytes, which could rewrite the
first fragment's flags on reassembly (RFC 1858's overlapping-fragment attack), is refused.

Pure: no I/O. The functions take `bytes` or a `memoryview` of bytes (format "B") and copy only the addresses.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

VNET_HDR_LEN = 10
"""`struct virtio_net_hdr` (IFF_VNET_HDR with TUNSETVNETHDRSZ 10): flags, gso_type, hdr_len, gso_size, csum_start,
csum_offset, in the host's byte order (a TUN without TUNSETVNETLE uses the native order)."""
GSO_NONE, GSO_TCPV4, GSO_UDP, GSO_TCPV6, GSO_UDP_L4 = 0, 1, 3, 4, 5
GSO_ECN = 0x80
"""Set in `gso_type` with a TCP GSO type when the segments carry ECN (CWR)."""
F_NEEDS_CSUM = 1
F_DATA_VALID = 2
MAX_EXT_HEADERS = 8
"""IPv6 extension headers walked before a packet is refused ("header")."""
PROTO_ICMP, PROTO_TCP, PROTO_UDP, PROTO_ICMPV6 = 1, 6, 17, 58
_HOP, _ROUTING, _FRAGMENT, _AH, _DSTOPTS = 0, 43, 44, 51, 60
_VNET = struct.Struct("=BBHHHH")
_U16 = struct.Struct("!H")


class BadPacket(ValueError):
    """A packet that cannot be read; `reason` is a short counter key ("short", "version", "header", "length",
    "fragment", "vnet")."""

    def __init__(self, reason: str, message: str = "") -> None:
        super().__init__(message or reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class VnetHdr:
    flags: int
    gso_type: int
    hdr_len: int
    gso_size: int
    csum_start: int
    csum_offset: int


def parse_vnet(buf: bytes | memoryview) -> VnetHdr:
    """The virtio-net header at the start of `buf`; BadPacket("short") if `buf` is shorter than VNET_HDR_LEN."""
    if len(buf) < VNET_HDR_LEN:
        raise BadPacket("short", f"a virtio-net header is {VNET_HDR_LEN} bytes, got {len(buf)}")
    return VnetHdr(*_VNET.unpack_from(buf, 0))


def pack_vnet(h: VnetHdr) -> bytes:
    """The 10 bytes of `h` (each field must fit: flags and gso_type 0..255, the others 0..65535)."""
    return _VNET.pack(h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset)


NO_VNET: bytes = pack_vnet(VnetHdr(0, 0, 0, 0, 0, 0))
"""The header of a packet with no offload: no GSO, checksum complete."""


@dataclass(frozen=True, slots=True)
class PacketInfo:
    version: int
    """4 or 6."""
    proto: int
    """The upper-layer protocol: 6 tcp, 17 udp, 1 icmp, 58 icmpv6, other numbers as they are (IPv6: after the
    extension headers)."""
    src: bytes
    """4 or 16 bytes."""
    dst: bytes
    sport: int | None
    """None for a protocol other than TCP and UDP, or a fragment other than the first."""
    dport: int | None
    icmp_type: int | None
    """The ICMP (ICMPv6) type of a first or only fragment; None otherwise."""
    length: int
    """The packet's length by its header (IPv4 total length, IPv6 40 + payload length): at most len(buf)."""
    fragment: bool = False
    """True for a fragment other than the first (no upper-layer header)."""


def parse(buf: bytes | memoryview) -> PacketInfo:
    """The fields of the IP packet `buf` (after the virtio-net header); BadPacket on any malformed input."""
    size = len(buf)
    if size < 1:
        raise BadPacket("short", "an empty packet")
    version = buf[0] >> 4
    if version == 4:
        return _parse4(buf, size)
    if version == 6:
        return _parse6(buf, size)
    raise BadPacket("version", f"IP version {version}: only 4 and 6")


def _parse4(buf: bytes | memoryview, size: int) -> PacketInfo:
    if size < 20:
        raise BadPacket("short", "an IPv4 header is at least 20 bytes")
    ihl = (buf[0] & 15) << 2
    if ihl < 20:
        raise BadPacket("header", f"IPv4 header length {ihl} is under 20")
    total = (buf[2] << 8) | buf[3]
    if total < ihl:
        raise BadPacket("length", f"IPv4 total length {total} is under the header's {ihl}")
    if total > size:
        raise BadPacket("short", f"IPv4 total length {total} is over the {size} bytes read")
    frag = (buf[6] << 8) | buf[7]
    if frag & 0x8000:
        raise BadPacket("header", "the IPv4 reserved flag is set")
    offset = frag & 0x1FFF
    proto = buf[9]
    src, dst = bytes(buf[12:16]), bytes(buf[16:20])
    if offset:
        if offset == 1 and proto == PROTO_TCP:
            raise BadPacket("fragment", "a TCP fragment at offset 8 overlaps the TCP header")
        return PacketInfo(4, proto, src, dst, None, None, None, total, True)
    return _upper(buf, ihl, total, 4, proto, src, dst)


def _parse6(buf: bytes | memoryview, size: int) -> PacketInfo:
    if size < 40:
        raise BadPacket("short", "an IPv6 header is 40 bytes")
    total = 40 + ((buf[4] << 8) | buf[5])
    if total > size:
        raise BadPacket("short", f"IPv6 length {total} is over the {size} bytes read")
    src, dst = bytes(buf[8:24]), bytes(buf[24:40])
    proto = buf[6]
    at = 40
    seen = 0
    while proto in (_HOP, _ROUTING, _FRAGMENT, _DSTOPTS, _AH):
        if proto == _HOP and seen:
            raise BadPacket("header", "an IPv6 hop-by-hop header after the first")
        seen += 1
        if seen > MAX_EXT_HEADERS:
            raise BadPacket("header", f"more than {MAX_EXT_HEADERS} IPv6 extension headers")
        if at + 8 > total:
            raise BadPacket("short", "an IPv6 extension header runs past the packet")
        following = buf[at]
        if proto == _FRAGMENT:
            offset = ((buf[at + 2] << 8) | buf[at + 3]) >> 3
            at += 8
            if offset:
                if offset == 1 and following == PROTO_TCP:
                    raise BadPacket("fragment", "a TCP fragment at offset 8 overlaps the TCP header")
                if following in (_HOP, _ROUTING, _FRAGMENT, _DSTOPTS, _AH):
                    raise BadPacket("header", "an IPv6 later fragment names an extension header")
                return PacketInfo(6, following, src, dst, None, None, None, total, True)
        elif proto == _AH:
            at += (buf[at + 1] + 2) << 2
        else:
            at += (buf[at + 1] + 1) << 3
        proto = following
    if at > total:
        raise BadPacket("short", "an IPv6 extension header runs past the packet")
    return _upper(buf, at, total, 6, proto, src, dst)


def _upper(
    buf: bytes | memoryview, at: int, total: int, version: int, proto: int, src: bytes, dst: bytes
) -> PacketInfo:
    """The upper-layer fields of a whole packet or a first fragment, its header at `at`."""
    left = total - at
    if proto in (PROTO_TCP, PROTO_UDP):
        if left < (20 if proto == PROTO_TCP else 8):
            raise BadPacket("short", "the TCP or UDP header runs past the packet")
        if proto == PROTO_TCP and buf[at + 12] >> 4 < 5:
            raise BadPacket("header", "a TCP data offset under 5")
        return PacketInfo(
            version, proto, src, dst, (buf[at] << 8) | buf[at + 1], (buf[at + 2] << 8) | buf[at + 3], None, total
        )
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        if left < 4:
            raise BadPacket("short", "the ICMP header runs past the packet")
        return PacketInfo(version, proto, src, dst, None, None, buf[at], total)
    return PacketInfo(version, proto, src, dst, None, None, None, total)


_GSO_OF = {PROTO_TCP: (GSO_TCPV4, GSO_TCPV6), PROTO_UDP: (GSO_UDP_L4, GSO_UDP_L4)}


def check_vnet(h: VnetHdr, info: PacketInfo, size: int) -> None:
    """BadPacket("vnet") unless `h` fits the packet `info` of `size` bytes: a GSO type that is the packet's own
    (TCPv4 for IPv4 TCP, TCPv6 for IPv6 TCP, UDP_L4 for UDP; ECN only with TCP; never the old UFO), with a segment
    size and a header length inside the packet; a checksum request whose 2 bytes lie inside the packet's upper-layer
    part; no other flags. The kernel checks these too: this keeps a peer from handing it the odd ones at all."""
    if h.flags & ~(F_NEEDS_CSUM | F_DATA_VALID):
        raise BadPacket("vnet", f"unknown virtio-net flags {h.flags:#x}")
    gso = h.gso_type & ~GSO_ECN
    if gso == GSO_NONE:
        if h.gso_type or h.gso_size:
            raise BadPacket("vnet", "a segment size or ECN without GSO")
    else:
        pair = _GSO_OF.get(info.proto)
        if pair is None or gso != pair[info.version == 6] or info.fragment:
            raise BadPacket("vnet", f"GSO type {h.gso_type} does not fit this packet")
        if h.gso_type & GSO_ECN and info.proto != PROTO_TCP:
            raise BadPacket("vnet", "ECN with a non-TCP GSO type")
        if not 0 < h.gso_size <= size or h.hdr_len > size:
            raise BadPacket("vnet", "a GSO segment size or header length outside the packet")
        if not h.flags & F_NEEDS_CSUM:
            raise BadPacket("vnet", "GSO without a checksum request")
    if h.flags & F_NEEDS_CSUM and (h.csum_start < 20 or h.csum_start + h.csum_offset + 2 > size):
        raise BadPacket("vnet", "a checksum request outside the packet")


__all__ = [
    "F_DATA_VALID",
    "F_NEEDS_CSUM",
    "GSO_ECN",
    "GSO_NONE",
    "GSO_TCPV4",
    "GSO_TCPV6",
    "GSO_UDP",
    "GSO_UDP_L4",
    "MAX_EXT_HEADERS",
    "NO_VNET",
    "PROTO_ICMP",
    "PROTO_ICMPV6",
    "PROTO_TCP",
    "PROTO_UDP",
    "VNET_HDR_LEN",
    "BadPacket",
    "PacketInfo",
    "VnetHdr",
    "check_vnet",
    "pack_vnet",
    "parse",
    "parse_vnet",
]
