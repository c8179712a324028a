"""`ztm.net.packet` and `ztm.net.filter` on packets the kernel itself wrote to a TUN device with IFF_VNET_HDR and
offloads on (tests/lab/net_capture.py, run as root in a fresh network namespace that dies with it): ICMP and ICMPv6
echoes, IPv4 and IPv6 fragments, a UDP GSO (USO) packet, TCP over IPv4 and IPv6 with TSO packets of several segments.

Each frame's virtio-net header and packet parse and pass `check_vnet`; the filter, as the receiving peer, delivers
what the policy allows, drops the rest for the policy, drops every frame claimed by another peer as spoofed, and
every cut or flipped version of every frame gives a reason, never an exception.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ztm.net.filter import REASONS, InboundFilter
from ztm.net.packet import (
    GSO_NONE,
    GSO_TCPV4,
    GSO_TCPV6,
    GSO_UDP_L4,
    VNET_HDR_LEN,
    PacketInfo,
    check_vnet,
    parse,
    parse_vnet,
)
from ztm.net.table import PeerAddrs, RouteTable
from ztm.policy import AppTarget, Place, Policy, Subject

pytestmark = [pytest.mark.lab]

HERE = Path(__file__).resolve().parent
SENDER4, SENDER6 = bytes([100, 64, 0, 2]), bytes.fromhex("fd123456789a00000000000064400002")
US4, US6 = bytes([100, 64, 0, 3]), bytes.fromhex("fd123456789a00000000000064400003")
POLICY = Policy.load(
    '{"acls": [{"action": "accept", "src": ["ann"], "dst": ["*:ip/icmp", "*:ip/udp:53", "*:ip/udp:5000-5353"]}]}', 1
)


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (a TUN device in a new network namespace)"
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare (util-linux) and ip (iproute2)"
    if not Path("/dev/net/tun").exists():
        return "needs /dev/net/tun"
    return None


@pytest.fixture(scope="module")
def frames() -> Iterator[tuple[list[tuple[str, bytes]], bool]]:
    reason = _unavailable()
    if reason:
        pytest.skip(reason)
    done = subprocess.run(
        ["unshare", "--net", sys.executable, str(HERE / "net_capture.py")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines and lines[-1].get("done"), done.stdout[-2000:]
    yield [(line["case"], bytes.fromhex(line["frame"])) for line in lines[:-1]], bool(lines[-1]["uso"])


def _read(frame: bytes) -> tuple[int, PacketInfo]:
    header = parse_vnet(frame)
    info = parse(memoryview(frame)[VNET_HDR_LEN:])
    check_vnet(header, info, len(frame) - VNET_HDR_LEN)
    return header.gso_type, info


def test_the_kernels_frames_parse(frames: tuple[list[tuple[str, bytes]], bool]) -> None:
    captured, uso = frames
    cases: dict[str, list[tuple[int, PacketInfo]]] = {}
    for case, frame in captured:
        cases.setdefault(case, []).append(_read(frame))
    for gso, info in cases["icmp4"] + cases["icmp6"]:
        assert gso == GSO_NONE and info.icmp_type in (8, 128) and info.dst in (US4, US6)
    first, *later = cases["icmp4-fragments"]
    assert first[1].icmp_type == 8 and not first[1].fragment and len(later) == 2
    assert all(info.fragment and info.icmp_type is None for _, info in later)
    for case in ("udp4-fragments", "udp6-fragments"):
        first, *later = cases[case]
        assert first[1].dport == 5353 and later and all(info.fragment and info.dport is None for _, info in later)
    assert cases["udp4"][0][1].dport == 53
    if uso:
        [(gso, info)] = cases["udp4-gso"]
        assert gso == GSO_UDP_L4 and info.dport == 5000 and info.length > 6000
    tcp4 = [gso for gso, info in cases["tcp4"] if info.version == 4]
    tcp6 = [gso for gso, info in cases["tcp6"] if info.version == 6]
    assert GSO_TCPV4 in tcp4 and GSO_TCPV6 in tcp6, (tcp4, tcp6)  # several segments in one read
    assert all(info.dport == 5001 for _, info in cases["tcp4"] + cases["tcp6"] + cases["tcp4-syn"])


def _filter() -> InboundFilter:
    table = RouteTable([US4, US6])
    table.update(
        [PeerAddrs("ep-ann", (SENDER4, SENDER6), (), True), PeerAddrs("ep-eve", (bytes([100, 64, 0, 9]),), (), True)],
        accept_routes=False,
    )

    def allow(ep_id: str, detail: str) -> str | None:
        who = Subject({"ep-ann": "ann", "ep-eve": "eve"}[ep_id], ep_id)
        decision = POLICY.decide(who, Place("us"), AppTarget("ip", detail))
        return None if decision.allowed else decision.why()

    return InboundFilter(table, lambda: frozenset({US4, US6}), tuple, allow)


def test_the_filter_on_the_kernels_frames(frames: tuple[list[tuple[str, bytes]], bool]) -> None:
    captured, _ = frames
    inbound = _filter()
    expected = {
        "icmp4": None, "icmp6": None, "icmp4-fragments": None, "udp4": None, "udp4-gso": None,
        "udp4-fragments": "policy", "udp6-fragments": "policy", "tcp4-syn": "policy", "tcp4": "policy",
        "tcp6-syn": "policy", "tcp6": "policy",
    }  # fmt: skip
    for case, frame in captured:
        packet = frame[VNET_HDR_LEN:]
        want = expected[case]
        if case.startswith("udp") and case.endswith("-fragments") and not parse(packet).fragment:
            want = None  # the first fragment has its port, udp:5353, which is allowed; the later ones are udp:*
        assert inbound.check("ep-ann", packet) == want, (case, parse(packet))
        assert inbound.check_frame("ep-ann", frame) == want, (case, parse_vnet(frame))  # with its vnet header
        assert inbound.check("ep-eve", packet) == "spoofed-source"  # another peer sending ann's packets
    assert inbound.counters["spoofed-source"] >= len(captured) - 4


def test_every_cut_and_flip_of_the_kernels_frames_is_a_reason(frames: tuple[list[tuple[str, bytes]], bool]) -> None:
    captured, _ = frames
    inbound = _filter()
    for _, frame in captured[:12]:
        packet = frame[VNET_HDR_LEN:]
        for end in range(0, min(len(packet), 120)):
            assert inbound.check("ep-ann", packet[:end]) in (None, *REASONS)
        for at in range(0, min(len(packet), 80)):
            flipped = bytearray(packet)
            flipped[at] ^= 0xFF
            assert inbound.check("ep-ann", bytes(flipped)) in (None, *REASONS)
