"""Packets as the kernel writes them to a TUN device with `IFF_VNET_HDR` and offloads on: a capture for the tests of
`ztm.net.packet` and `ztm.net.filter` (tests/lab/test_lab_net_packets.py), run as root in a fresh network namespace:

    unshare --net python tests/lab/net_capture.py

It opens TUN `ztmt0` (IFF_TUN | IFF_NO_PI | IFF_VNET_HDR, vnet header 10 bytes, TUN_F_CSUM | TSO4 | TSO6 and USO4 |
USO6 when the kernel takes them), gives it 100.64.0.2/10 and fd12:3456:789a::6440:2/48, MTU 1280, and makes the
kernel send through it to the peer 100.64.0.3 (fd12:3456:789a::6440:3): an ICMP echo and an ICMPv6 echo; a 3000-byte
ICMP echo and UDP datagrams over IPv4 and IPv6 (fragmented by the kernel); a UDP GSO send (one USO packet); and a TCP
connection over IPv4 and one over IPv6 whose handshake this script answers as the peer, after which the kernel sends
its first window as one TSO packet. Prints one JSON line per frame read: {"case": NAME, "frame": HEX} (the frame is
the 10-byte virtio-net header then the IP packet), then {"done": true, "uso": bool}. The namespace dies with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_USO4, TUN_F_USO6 = 0x01, 0x02, 0x04, 0x20, 0x40
UDP_SEGMENT = 103
SOL_UDP = 17
IP_MTU_DISCOVER, IP_PMTUDISC_DONT = 10, 0
ME4, PEER4 = "100.64.0.2", "100.64.0.3"
ME6, PEER6 = "fd12:3456:789a::6440:2", "fd12:3456:789a::6440:3"
NAME = "ztmt0"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, stdin=subprocess.DEVNULL)


def open_tun() -> tuple[int, bool]:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", NAME.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
    fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", 10))
    base = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, base | TUN_F_USO4 | TUN_F_USO6)
        uso = True
    except OSError:
        fcntl.ioctl(fd, TUNSETOFFLOAD, base)
        uso = False
    ip("link", "set", "lo", "up")
    ip("addr", "add", f"{ME4}/10", "dev", NAME)
    ip("addr", "add", f"{ME6}/48", "dev", NAME, "nodad")
    ip("link", "set", NAME, "mtu", "1280", "up")
    return fd, uso


def read_frames(fd: int, case: str, wait: float = 0.5, want: int = 0) -> list[bytes]:
    """Frames read within `wait` seconds (or until `want` of them); each printed as a JSON line."""
    frames: list[bytes] = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and (not want or len(frames) < want):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        frame = os.read(fd, 70000)
        if frame[10] >> 4 == 6 and frame[16] == 58 and frame[50] in (133, 135, 143):
            continue  # router and neighbour solicitations, MLD reports: the kernel's own chatter
        frames.append(frame)
        print(json.dumps({"case": case, "frame": frame.hex()}), flush=True)
    return frames


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def syn_ack(frame: bytes) -> bytes:
    """The peer's SYN-ACK (window 65535, scale 7, MSS 1200) to the kernel's SYN in `frame`, with a vnet header."""
    packet = frame[10:]
    v6 = packet[0] >> 4 == 6
    head = 40 if v6 else (packet[0] & 15) * 4
    src, dst = (packet[8:24], packet[24:40]) if v6 else (packet[12:16], packet[16:20])
    sport, dport, seq = struct.unpack("!HHI", packet[head : head + 8])
    options = b"\x02\x04\x04\xb0" + b"\x01\x03\x03\x07"  # MSS 1200, NOP, window scale 7
    tcp = struct.pack("!HHIIBBHHH", dport, sport, 1000, seq + 1, (5 + len(options) // 4) << 4, 0x12, 65535, 0, 0)
    tcp += options
    pseudo = dst + src + (struct.pack("!IxxxB", len(tcp), 6) if v6 else struct.pack("!xBH", 6, len(tcp)))
    tcp = tcp[:16] + struct.pack("!H", csum(pseudo + tcp)) + tcp[18:]
    if v6:
        ip_head = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, dst, src)
    else:
        ip_head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, dst, src)
        ip_head = ip_head[:10] + struct.pack("!H", csum(ip_head)) + ip_head[12:]
    return b"\0" * 10 + ip_head + tcp


def tcp_case(fd: int, family: int, peer: str, case: str) -> None:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        sock.connect((peer, 5001))
    [syn] = read_frames(fd, f"{case}-syn", 2.0, want=1)
    os.write(fd, syn_ack(syn))
    select.select([], [sock], [], 2.0)
    sock.setblocking(True)
    sender = threading.Thread(target=lambda: sock.sendall(b"z" * 60000), daemon=True)
    sender.start()
    read_frames(fd, case, 1.0)
    sock.close()


def main() -> int:
    fd, uso = open_tun()
    read_frames(fd, "chatter", 0.3)
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    echo = b"\x08\x00\x00\x00\x12\x34\x00\x01" + b"p" * 56
    raw.sendto(echo[:2] + struct.pack("!H", csum(echo)) + echo[4:], (PEER4, 0))
    read_frames(fd, "icmp4", 0.5, want=1)
    raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    raw6.sendto(b"\x80\x00\x00\x00\x12\x34\x00\x01" + b"p" * 56, (PEER6, 0))  # the kernel fills the checksum
    read_frames(fd, "icmp6", 0.5, want=1)
    big = b"\x08\x00\x00\x00\x12\x34\x00\x02" + b"q" * 2992
    raw.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
    raw.sendto(big[:2] + struct.pack("!H", csum(big)) + big[4:], (PEER4, 0))
    read_frames(fd, "icmp4-fragments", 0.5, want=3)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
    udp.sendto(b"u" * 3000, (PEER4, 5353))
    read_frames(fd, "udp4-fragments", 0.5, want=3)
    udp.sendto(b"d" * 100, (PEER4, 53))
    read_frames(fd, "udp4", 0.5, want=1)
    udp6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    udp6.sendto(b"u" * 3000, (PEER6, 5353))
    read_frames(fd, "udp6-fragments", 0.5, want=3)
    if uso:
        gso = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        gso.setsockopt(SOL_UDP, UDP_SEGMENT, 1200)
        gso.sendto(b"g" * 6000, (PEER4, 5000))
        read_frames(fd, "udp4-gso", 0.5, want=1)
    tcp_case(fd, socket.AF_INET, PEER4, "tcp4")
    tcp_case(fd, socket.AF_INET6, PEER6, "tcp6")
    print(json.dumps({"done": True, "uso": uso}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
