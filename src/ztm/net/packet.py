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


_H0, _H1, _H2, _H3, _H4, _H5 = (getattr(VnetHdr, name).__set__ for name in VnetHdr.__slots__)
_new_object = object.__new__


def parse_vnet(buf: bytes | memoryview) -> VnetHdr:
    """The virtio-net header at the start of `buf`; BadPacket("short") if `buf` is shorter than VNET_HDR_LEN."""
    if len(buf) < VNET_HDR_LEN:
        raise BadPacket("short", f"a virtio-net header is {VNET_HDR_LEN} bytes, got {len(buf)}")
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = _VNET.unpack_from(buf, 0)
    header = _new_object(VnetHdr)  # set through the slots: a frozen dataclass's __init__ is slower, and per frame
    _H0(header, flags), _H1(header, gso_type), _H2(header, hdr_len), _H3(header, gso_size)
    _H4(header, csum_start), _H5(header, csum_offset)
    return header


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


Fields = tuple[int, int, bytes, bytes, int | None, int | None, int | None, int, bool]
"""`PacketInfo`'s fields as a plain tuple, in its order (what `scan` returns: no object to build per packet)."""
_S0, _S1, _S2, _S3, _S4, _S5, _S6, _S7, _S8 = (getattr(PacketInfo, name).__set__ for name in PacketInfo.__slots__)


def info_of(f: Fields) -> PacketInfo:
    """A `PacketInfo` set through its slots: a frozen dataclass's own __init__ goes through object.__setattr__ per
    field, about three times slower, and this is per packet."""
    info = _new_object(PacketInfo)
    _S0(info, f[0]), _S1(info, f[1]), _S2(info, f[2]), _S3(info, f[3]), _S4(info, f[4])
    _S5(info, f[5]), _S6(info, f[6]), _S7(info, f[7]), _S8(info, f[8])
    return info


def parse(buf: bytes | memoryview) -> PacketInfo:
    """The fields of the IP packet `buf` (after the virtio-net header); BadPacket on any malformed input."""
    return info_of(scan(buf))


_V4 = struct.Struct("!BxHxxHxBxx4s4s")  # version/IHL, total length, flags/offset, protocol, source, destination
_V6 = struct.Struct("!xxxxHBx16s16s")  # payload length, next header, source, destination
_PORTS = struct.Struct("!HH")
_NOT_FIRST = (_HOP, _ROUTING, _FRAGMENT, _DSTOPTS, _AH)


def scan(buf: bytes | memoryview) -> Fields:
    """`parse`'s fields as a tuple in `PacketInfo`'s order (the inbound filter's per-packet form)."""
    size = len(buf)
    if size < 20:
        if size and buf[0] >> 4 not in (4, 6):
            raise BadPacket("version", f"IP version {buf[0] >> 4}: only 4 and 6")
        raise BadPacket("short", f"an IP header is at least 20 bytes, got {size}")
    first, total, frag, proto, src, dst = _V4.unpack_from(buf)
    version = first >> 4
    if version == 6:
        return _scan6(buf, size)
    if version != 4:
        raise BadPacket("version", f"IP version {version}: only 4 and 6")
    ihl = (first & 15) << 2
    if ihl < 20:
        raise BadPacket("header", f"IPv4 header length {ihl} is under 20")
    if total < ihl:
        raise BadPacket("length", f"IPv4 total length {total} is under the header's {ihl}")
    if total > size:
        raise BadPacket("short", f"IPv4 total length {total} is over the {size} bytes read")
    if frag & 0x8000:
        raise BadPacket("header", "the IPv4 reserved flag is set")
    offset = frag & 0x1FFF
    if offset:
        if offset == 1 and proto == PROTO_TCP:
            raise BadPacket("fragment", "a TCP fragment at offset 8 overlaps the TCP header")
        return 4, proto, src, dst, None, None, None, total, True
    return _upper(buf, ihl, total, 4, proto, src, dst)


def _scan6(buf: bytes | memoryview, size: int) -> Fields:
    if size < 40:
        raise BadPacket("short", "an IPv6 header is 40 bytes")
    payload, proto, src, dst = _V6.unpack_from(buf)
    total = 40 + payload
    if total > size:
        raise BadPacket("short", f"IPv6 length {total} is over the {size} bytes read")
    at = 40
    seen = 0
    while proto in _NOT_FIRST:
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
                if following in _NOT_FIRST:
                    raise BadPacket("header", "an IPv6 later fragment names an extension header")
                return 6, following, src, dst, None, None, None, total, True
        elif proto == _AH:
            at += (buf[at + 1] + 2) << 2
        else:
            at += (buf[at + 1] + 1) << 3
        proto = following
    if at > total:
        raise BadPacket("short", "an IPv6 extension header runs past the packet")
    return _upper(buf, at, total, 6, proto, src, dst)


def _upper(buf: bytes | memoryview, at: int, total: int, version: int, proto: int, src: bytes, dst: bytes) -> Fields:
    """The upper-layer fields of a whole packet or a first fragment, its header at `at`."""
    left = total - at
    if proto == PROTO_TCP:
        if left < 20:
            raise BadPacket("short", "the TCP header runs past the packet")
        if buf[at + 12] < 0x50:
            raise BadPacket("header", "a TCP data offset under 5")
        sport, dport = _PORTS.unpack_from(buf, at)
        return version, proto, src, dst, sport, dport, None, total, False
    if proto == PROTO_UDP:
        if left < 8:
            raise BadPacket("short", "the UDP header runs past the packet")
        sport, dport = _PORTS.unpack_from(buf, at)
        return version, proto, src, dst, sport, dport, None, total, False
    if proto in (PROTO_ICMP, PROTO_ICMPV6):
        if left < 4:
            raise BadPacket("short", "the ICMP header runs past the packet")
        return version, proto, src, dst, None, None, buf[at], total, False
    return version, proto, src, dst, None, None, None, total, False


_GSO_OF = {PROTO_TCP: (GSO_TCPV4, GSO_TCPV6), PROTO_UDP: (GSO_UDP_L4, GSO_UDP_L4)}


def check_vnet(h: VnetHdr, info: PacketInfo, size: int) -> None:
    """BadPacket("vnet") unless `h` fits the packet `info` of `size` bytes: a GSO type that is the packet's own
    (TCPv4 for IPv4 TCP, TCPv6 for IPv6 TCP, UDP_L4 for UDP; ECN only with TCP; never the old UFO), with a segment
    size and a header length inside the packet; a checksum request whose 2 bytes lie inside the packet's upper-layer
    part; no other flags. The kernel checks these too: this keeps a peer from handing it the odd ones at all."""
    _fits((h.flags, h.gso_type, h.hdr_len, h.gso_size, h.csum_start, h.csum_offset), info.version, info.proto,
          info.fragment, size)  # fmt: skip


VnetFields = tuple[int, int, int, int, int, int]
"""`VnetHdr`'s fields as a plain tuple, in its order."""


def scan_frame(frame: bytes | memoryview) -> tuple[VnetFields, Fields]:
    """The virtio-net header's and the packet's fields of `frame` (the header then the IP packet, as the TUN reads
    and writes it), checked against each other (`check_vnet`); BadPacket otherwise."""
    if len(frame) < VNET_HDR_LEN:
        raise BadPacket("short", f"a virtio-net header is {VNET_HDR_LEN} bytes, got {len(frame)}")
    vnet: VnetFields = _VNET.unpack_from(frame)
    packet = memoryview(frame)[VNET_HDR_LEN:]
    fields = scan(packet)
    _fits(vnet, fields[0], fields[1], fields[8], len(packet))
    return vnet, fields


def _fits(vnet: VnetFields, version: int, proto: int, fragment: bool, size: int) -> None:
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = vnet
    if flags & ~(F_NEEDS_CSUM | F_DATA_VALID):
        raise BadPacket("vnet", f"unknown virtio-net flags {flags:#x}")
    if gso_type:
        gso = gso_type & ~GSO_ECN
        pair = _GSO_OF.get(proto)
        if gso == GSO_NONE:
            raise BadPacket("vnet", "ECN without GSO")
        if pair is None or gso != pair[version == 6] or fragment:
            raise BadPacket("vnet", f"GSO type {gso_type} does not fit this packet")
        if gso_type & GSO_ECN and proto != PROTO_TCP:
            raise BadPacket("vnet", "ECN with a non-TCP GSO type")
        if not 0 < gso_size <= size or hdr_len > size:
            raise BadPacket("vnet", "a GSO segment size or header length outside the packet")
        if not flags & F_NEEDS_CSUM:
            raise BadPacket("vnet", "GSO without a checksum request")
    elif gso_size:
        raise BadPacket("vnet", "a segment size without GSO")
    if flags & F_NEEDS_CSUM and (csum_start < 20 or csum_start + csum_offset + 2 > size):
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
    "info_of",
    "pack_vnet",
    "parse",
    "parse_vnet",
    "scan",
    "scan_frame",
]
