"""`ztm.net.packet`: IPv4 with options, IPv6 with extension headers, fragments (first, later, tiny, overlapping),
TCP, UDP, ICMP and ICMPv6; the virtio-net header and its checks; and a hypothesis fuzz of `parse`, `parse_vnet` and
`check_vnet` (any bytes: a `BadPacket` with a known reason, never another exception)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from net_packets import A4, A6, B4, B6, addr, ah, ext, frag6, icmp, ipv4, ipv6, tcp, udp

from ztm.net.packet import (
    F_DATA_VALID,
    F_NEEDS_CSUM,
    GSO_ECN,
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP,
    GSO_UDP_L4,
    MAX_EXT_HEADERS,
    NO_VNET,
    VNET_HDR_LEN,
    BadPacket,
    PacketInfo,
    VnetHdr,
    check_vnet,
    pack_vnet,
    parse,
    parse_vnet,
)

REASONS = {"short", "version", "header", "length", "fragment", "vnet"}


def reason(buf: bytes | memoryview) -> str:
    with pytest.raises(BadPacket) as caught:
        parse(buf)
    assert caught.value.reason in REASONS
    return caught.value.reason


def test_ipv4_tcp_udp_icmp() -> None:
    packet = ipv4(A4, B4, 6, tcp(40000, 22, b"hello"))
    assert parse(packet) == PacketInfo(4, 6, A4, B4, 40000, 22, None, len(packet))
    packet = ipv4(A4, B4, 17, udp(5353, 53, b"q"))
    assert parse(packet) == PacketInfo(4, 17, A4, B4, 5353, 53, None, len(packet))
    packet = ipv4(A4, B4, 1, icmp(8))
    assert parse(packet) == PacketInfo(4, 1, A4, B4, None, None, 8, len(packet))
    packet = ipv4(A4, B4, 47, b"\0" * 8)  # GRE: no ports
    assert parse(packet) == PacketInfo(4, 47, A4, B4, None, None, None, len(packet))


def test_ipv4_options_move_the_upper_header() -> None:
    options = b"\x94\x04\x00\x00" + b"\x01\x01\x01\x00"  # router alert, NOPs, end
    packet = ipv4(A4, B4, 6, tcp(1234, 443), options=options)
    info = parse(packet)
    assert (info.sport, info.dport) == (1234, 443)
    longest = ipv4(A4, B4, 17, udp(1, 2), options=b"\x01" * 40)  # IHL 15
    assert parse(longest).dport == 2


def test_a_memoryview_and_trailing_bytes() -> None:
    packet = ipv4(A4, B4, 6, tcp(1, 2))
    buffer = bytearray(b"\0" * 10 + packet + b"junk")
    info = parse(memoryview(buffer)[10 : 10 + len(packet) + 4])
    assert info.length == len(packet) and info.src == A4 and isinstance(info.src, bytes)


@pytest.mark.parametrize(
    ("packet", "why"),
    [
        (b"", "short"),
        (b"\x45" + b"\0" * 18, "short"),
        (b"\x55" + b"\0" * 39, "version"),
        (b"\x00" * 40, "version"),
        (ipv4(A4, B4, 6, tcp(1, 2), ihl=4), "header"),
        (ipv4(A4, B4, 6, tcp(1, 2), ihl=15), "length"),  # IHL past the total length
        (ipv4(A4, B4, 6, tcp(1, 2), total=19), "length"),
        (ipv4(A4, B4, 6, tcp(1, 2), total=100), "short"),
        (ipv4(A4, B4, 6, tcp(1, 2))[:30], "short"),
        (ipv4(A4, B4, 6, tcp(1, 2)[:19]), "short"),  # a TCP header cut short
        (ipv4(A4, B4, 17, udp(1, 2)[:7]), "short"),
        (ipv4(A4, B4, 1, b"\x08\0\0"), "short"),
        (ipv4(A4, B4, 6, tcp(1, 2, offset=4)), "header"),  # TCP data offset under 5
    ],
)
def test_malformed_ipv4(packet: bytes, why: str) -> None:
    assert reason(packet) == why


def test_ipv4_reserved_flag_is_refused() -> None:
    packet = bytearray(ipv4(A4, B4, 6, tcp(1, 2)))
    packet[6] |= 0x80
    assert reason(bytes(packet)) == "header"


def test_ipv4_fragments() -> None:
    whole = tcp(5000, 22, b"x" * 100)
    first = ipv4(A4, B4, 6, whole[:24], more=True)
    info = parse(first)
    assert (info.sport, info.dport, info.fragment) == (5000, 22, False)
    later = ipv4(A4, B4, 6, whole[24:], offset=3)
    info = parse(later)
    assert (info.proto, info.sport, info.dport, info.icmp_type, info.fragment) == (6, None, None, None, True)
    # RFC 1858: a first fragment too short to hold the TCP header (ports and flags in the next one)
    assert reason(ipv4(A4, B4, 6, whole[:8], more=True)) == "short"
    # RFC 1858: a later TCP fragment at offset 8 bytes rewrites the first one's flags on reassembly
    assert reason(ipv4(A4, B4, 6, b"\0" * 16, offset=1)) == "fragment"
    assert parse(ipv4(A4, B4, 17, b"\0" * 16, offset=1)).fragment  # UDP's header is 8 bytes: harmless
    udp_first = ipv4(A4, B4, 17, udp(1, 53, b"q" * 40)[:16], more=True)
    assert parse(udp_first).dport == 53
    icmp_later = parse(ipv4(A4, B4, 1, b"\0" * 8, offset=100))
    assert icmp_later.icmp_type is None and icmp_later.fragment


def test_ipv6_tcp_udp_icmpv6() -> None:
    packet = ipv6(A6, B6, 6, tcp(40000, 22))
    assert parse(packet) == PacketInfo(6, 6, A6, B6, 40000, 22, None, len(packet))
    packet = ipv6(A6, B6, 17, udp(1, 53, b"abc"))
    assert parse(packet).dport == 53
    packet = ipv6(A6, B6, 58, icmp(128))
    assert parse(packet) == PacketInfo(6, 58, A6, B6, None, None, 128, len(packet))
    assert parse(ipv6(A6, B6, 59, b"")).proto == 59  # no next header


def test_ipv6_extension_headers_are_walked() -> None:
    chain = ext(43) + ext(60, b"\x04\0" + b"\0" * 12) + ext(51, b"\0" * 14) + ah(6) + tcp(7, 8)
    info = parse(ipv6(A6, B6, 0, chain))
    assert (info.proto, info.sport, info.dport) == (6, 7, 8)
    info = parse(ipv6(A6, B6, 44, frag6(17, 0, True) + udp(9, 53, b"x" * 16)))
    assert (info.proto, info.dport, info.fragment) == (17, 53, False)  # a first fragment has its ports
    info = parse(ipv6(A6, B6, 44, frag6(17, 0, False) + udp(9, 53)))
    assert info.dport == 53  # an atomic fragment
    info = parse(ipv6(A6, B6, 60, ext(44) + frag6(6, 10, False) + b"\0" * 16))
    assert (info.proto, info.dport, info.fragment) == (6, None, True)
    info = parse(ipv6(A6, B6, 50, b"\0" * 24))  # ESP: the rest is encrypted
    assert (info.proto, info.dport) == (50, None)


@pytest.mark.parametrize(
    ("packet", "why"),
    [
        (ipv6(A6, B6, 6, tcp(1, 2))[:39], "short"),
        (ipv6(A6, B6, 6, tcp(1, 2), length=100), "short"),
        (ipv6(A6, B6, 6, tcp(1, 2)[:12]), "short"),
        (ipv6(A6, B6, 58, b"\x80\0"), "short"),
        (ipv6(A6, B6, 0, b"\x06\x05" + b"\0" * 6 + tcp(1, 2)), "short"),  # extension length past the end
        (ipv6(A6, B6, 0, b"\x06"), "short"),
        (ipv6(A6, B6, 60, ext(0) + ext(6) + tcp(1, 2)), "header"),  # hop-by-hop not first
        (ipv6(A6, B6, 60, ext(60) * MAX_EXT_HEADERS + ext(6) + tcp(1, 2)), "header"),
        (ipv6(A6, B6, 44, frag6(6, 1, False) + b"\0" * 16), "fragment"),
        (ipv6(A6, B6, 44, frag6(60, 5, False) + b"\0" * 16), "header"),
        (ipv6(A6, B6, 44, frag6(6, 0, True) + tcp(1, 2)[:8]), "short"),
    ],
)
def test_malformed_ipv6(packet: bytes, why: str) -> None:
    assert reason(packet) == why


def test_a_full_chain_of_extension_headers_is_read() -> None:
    chain = ext(60) * (MAX_EXT_HEADERS - 1) + ext(17) + udp(1, 2)
    assert parse(ipv6(A6, B6, 60, chain)).dport == 2


def test_vnet_header_round_trip_and_native_order() -> None:
    header = VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 52, 1448, 20, 16)
    packed = pack_vnet(header)
    assert len(packed) == VNET_HDR_LEN and parse_vnet(packed + b"rest") == header
    assert packed == struct.pack("=BBHHHH", 1, 1, 52, 1448, 20, 16)
    assert NO_VNET == b"\0" * VNET_HDR_LEN and parse_vnet(memoryview(NO_VNET)) == VnetHdr(0, 0, 0, 0, 0, 0)
    with pytest.raises(BadPacket) as caught:
        parse_vnet(b"\0" * 9)
    assert caught.value.reason == "short"


def test_check_vnet_takes_what_the_kernel_gives() -> None:
    tso4 = ipv4(A4, B4, 6, tcp(1, 2, b"x" * 60000))
    check_vnet(VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 40, 1448, 20, 16), parse(tso4), len(tso4))
    check_vnet(VnetHdr(F_NEEDS_CSUM, GSO_TCPV4 | GSO_ECN, 40, 1448, 20, 16), parse(tso4), len(tso4))
    tso6 = ipv6(A6, B6, 6, tcp(1, 2, b"x" * 60000))
    check_vnet(VnetHdr(F_NEEDS_CSUM, GSO_TCPV6, 60, 1428, 40, 16), parse(tso6), len(tso6))
    uso = ipv6(A6, B6, 17, udp(1, 2, b"x" * 9000))
    check_vnet(VnetHdr(F_NEEDS_CSUM, GSO_UDP_L4, 48, 1200, 40, 6), parse(uso), len(uso))
    small = ipv4(A4, B4, 17, udp(1, 2))
    check_vnet(VnetHdr(0, GSO_NONE, 0, 0, 0, 0), parse(small), len(small))
    check_vnet(VnetHdr(F_DATA_VALID, GSO_NONE, 0, 0, 0, 0), parse(small), len(small))
    check_vnet(VnetHdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 6), parse(small), len(small))


@pytest.mark.parametrize(
    "header",
    [
        VnetHdr(4, 0, 0, 0, 0, 0),  # unknown flag
        VnetHdr(0, 0, 0, 1448, 0, 0),  # a segment size without GSO
        VnetHdr(0, GSO_ECN, 0, 0, 0, 0),
        VnetHdr(F_NEEDS_CSUM, GSO_TCPV6, 40, 1448, 20, 16),  # IPv6 GSO on an IPv4 packet
        VnetHdr(F_NEEDS_CSUM, GSO_UDP, 28, 1448, 20, 6),  # the old UFO
        VnetHdr(F_NEEDS_CSUM, 7, 40, 1448, 20, 16),
        VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 40, 0, 20, 16),  # no segment size
        VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 40, 65535, 20, 16),  # larger than the packet
        VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 65535, 1448, 20, 16),
        VnetHdr(0, GSO_TCPV4, 40, 1448, 20, 16),  # GSO without a checksum request
        VnetHdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 10, 6),  # checksum inside the IP header
        VnetHdr(F_NEEDS_CSUM, GSO_NONE, 0, 0, 20, 65000),  # checksum past the end
    ],
)
def test_check_vnet_refuses_what_does_not_fit(header: VnetHdr) -> None:
    packet = ipv4(A4, B4, 6, tcp(1, 2, b"x" * 3000))
    with pytest.raises(BadPacket) as caught:
        check_vnet(header, parse(packet), len(packet))
    assert caught.value.reason == "vnet"


def test_check_vnet_refuses_gso_on_a_later_fragment_and_ecn_on_udp() -> None:
    later = ipv4(A4, B4, 6, b"\0" * 3000, offset=200)
    with pytest.raises(BadPacket):
        check_vnet(VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 40, 1448, 20, 16), parse(later), len(later))
    uso = ipv4(A4, B4, 17, udp(1, 2, b"x" * 3000))
    with pytest.raises(BadPacket):
        check_vnet(VnetHdr(F_NEEDS_CSUM, GSO_UDP_L4 | GSO_ECN, 28, 1200, 20, 6), parse(uso), len(uso))


def test_addresses_are_packed() -> None:
    info = parse(ipv4(addr("10.20.1.5"), addr("100.64.0.9"), 17, udp(1, 2)))
    assert info.src == bytes([10, 20, 1, 5]) and info.dst == bytes([100, 64, 0, 9])


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_parse_any_bytes(data: bytes) -> None:
    try:
        info = parse(data)
    except BadPacket as exc:
        assert exc.reason in REASONS
        return
    assert info.version in (4, 6) and len(info.src) == len(info.dst) == (4 if info.version == 4 else 16)
    assert info.length <= len(data)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([4, 6]),
    st.sampled_from([0, 1, 6, 17, 43, 44, 50, 51, 58, 59, 60]),
    st.binary(max_size=120),
    st.integers(0, 1),
)
def test_fuzz_parse_plausible_headers(version: int, proto: int, body: bytes, view: int) -> None:
    """Valid IP headers in front of random upper layers and extension chains: the paths random bytes rarely
    reach."""
    packet = ipv4(A4, B4, proto, body) if version == 4 else ipv6(A6, B6, proto, body)
    try:
        info = parse(memoryview(packet) if view else packet)
    except BadPacket as exc:
        assert exc.reason in REASONS
        return
    assert info.dst == (B4 if version == 4 else B6)
    if info.dport is not None:
        assert info.proto in (6, 17) and not info.fragment


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=16), st.binary(max_size=80))
def test_fuzz_vnet(head: bytes, body: bytes) -> None:
    try:
        header = parse_vnet(head)
    except BadPacket as exc:
        assert exc.reason == "short" and len(head) < VNET_HDR_LEN
        return
    assert pack_vnet(header) == head[:VNET_HDR_LEN]
    packet = ipv4(A4, B4, 6, tcp(1, 2, body))
    try:
        check_vnet(header, parse(packet), len(packet))
    except BadPacket as exc:
        assert exc.reason == "vnet"
