"""`ztm.net.filter`: `detail_of` for each kind of packet, and `InboundFilter.check` end to end with a real policy
(`ztm.policy`) behind `allow`: spoofed sources refused, routed destinations only for the routes this endpoint serves,
the policy's ports and CIDRs, fragments, the memo and `forget`, the counters; and a hypothesis fuzz (any bytes from
any peer: a reason, never an exception)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st
from net_packets import A4, A6, B4, B6, addr, ext, frag6, icmp, ipv4, ipv6, tcp, udp

from ztm.net.filter import REASONS, InboundFilter, detail_of
from ztm.net.packet import F_NEEDS_CSUM, GSO_TCPV4, GSO_UDP_L4, NO_VNET, PacketInfo, VnetHdr, pack_vnet, parse
from ztm.net.table import PeerAddrs, RouteTable
from ztm.policy import AppTarget, Place, Policy, Subject

LAN = addr("10.20.1.5")
POLICY = """{
  "acls": [
    {"action": "accept", "src": ["bob"], "dst": ["*:ip/tcp:22", "*:ip/udp:5000-5100", "*:ip/icmp",
                                                 "me:ip/10.20.0.0/16/tcp:80", "me:ip/fd00:20::/64/*"]},
    {"action": "accept", "src": ["carol"], "dst": ["*:ip/tcp:*"]},
  ],
}"""
LOADED = Policy.load(POLICY, 3)


class World:
    def __init__(self, served: Sequence[str] = ("10.20.0.0/16", "fd00:20::/64")) -> None:
        self.table = RouteTable([A4, A6])
        self.table.update(
            [
                PeerAddrs("ep-bob", (B4, B6), ("192.168.7.0/24",), True),
                PeerAddrs("ep-carol", (addr("100.64.0.9"),), (), True),
            ],
            accept_routes=True,
        )
        self.served = list(served)
        self.policy = LOADED
        self.asked: list[tuple[str, str]] = []
        self.filter = InboundFilter(self.table, lambda: frozenset({A4, A6}), lambda: self.served, self.allow)

    def allow(self, ep_id: str, detail: str) -> str | None:
        self.asked.append((ep_id, detail))
        user = {"ep-bob": "bob", "ep-carol": "carol"}[ep_id]
        decision = self.policy.decide(Subject(user, ep_id), Place("me"), AppTarget("ip", detail))
        return None if decision.allowed else decision.why()


def test_detail_of() -> None:
    assert detail_of(parse(ipv4(B4, A4, 6, tcp(1, 22))), True) == "tcp:22"
    assert detail_of(parse(ipv4(B4, A4, 17, udp(1, 53))), True) == "udp:53"
    assert detail_of(parse(ipv4(B4, A4, 1, icmp())), True) == "icmp"
    assert detail_of(parse(ipv6(B6, A6, 58, icmp(128))), True) == "icmp"
    assert detail_of(parse(ipv4(B4, A4, 47, b"\0" * 8)), True) == "proto:47"
    assert detail_of(parse(ipv4(B4, A4, 6, b"\0" * 16, offset=9)), True) == "tcp:*"
    assert detail_of(parse(ipv6(B6, A6, 44, frag6(17, 9, False) + b"\0" * 8)), True) == "udp:*"
    assert detail_of(parse(ipv4(B4, LAN, 6, tcp(1, 22))), False) == "10.20.1.5/tcp:22"
    assert detail_of(parse(ipv6(B6, addr("fd00:20::5"), 17, udp(1, 53))), False) == "fd00:20::5/udp:53"


def test_policy_ports_and_protocols() -> None:
    world = World()
    check = world.filter.check
    assert check("ep-bob", ipv4(B4, A4, 6, tcp(40000, 22))) is None
    assert check("ep-bob", ipv4(B4, A4, 6, tcp(40000, 23))) == "policy"
    assert check("ep-bob", ipv4(B4, A4, 17, udp(1, 5050))) is None
    assert check("ep-bob", ipv4(B4, A4, 17, udp(1, 5101))) == "policy"
    assert check("ep-bob", ipv6(B6, A6, 58, icmp(128))) is None
    assert check("ep-bob", ipv4(B4, A4, 47, b"\0" * 8)) == "policy"
    assert check("ep-bob", ipv4(B4, A4, 6, b"\0" * 16, offset=9)) == "policy"  # a fragment: port unknown
    assert check("ep-carol", ipv4(addr("100.64.0.9"), A4, 6, b"\0" * 16, offset=9)) is None  # tcp:* covers it
    assert check("ep-carol", ipv4(addr("100.64.0.9"), A4, 17, udp(1, 5050))) == "policy"
    assert world.filter.counters == {"delivered": 4, "policy": 5}


def test_a_refused_packet_passes_only_when_replies_says_it_answers_our_flow() -> None:
    world = World()
    asked: list[tuple[bytes, int | None, int | None]] = []

    def replies(info: PacketInfo) -> bool:
        asked.append((info.src, info.sport, info.dport))
        return info.sport == 23 and info.dport == 40000

    world.filter = InboundFilter(world.table, lambda: frozenset({A4, A6}), lambda: world.served, world.allow, replies)
    check = world.filter.check
    assert check("ep-bob", ipv4(B4, A4, 6, tcp(23, 40000))) is None  # the answer to our connection to bob's port 23
    assert check("ep-bob", ipv4(B4, A4, 6, tcp(24, 40000))) == "policy"
    assert check("ep-bob", ipv4(B4, A4, 6, tcp(40000, 22))) is None  # allowed: replies is not asked
    assert check("ep-bob", ipv4(addr("100.64.0.9"), A4, 6, tcp(23, 40000))) == "spoofed-source"  # never reaches it
    assert asked == [(B4, 23, 40000), (B4, 24, 40000)]
    assert world.filter.counters == {"reply": 1, "policy": 1, "delivered": 1, "spoofed-source": 1}


def test_spoofed_sources_are_dropped_before_the_policy() -> None:
    world = World()
    check = world.filter.check
    assert check("ep-bob", ipv4(addr("100.64.0.9"), A4, 6, tcp(1, 22))) == "spoofed-source"  # carol's address
    assert check("ep-bob", ipv4(A4, A4, 6, tcp(1, 22))) == "spoofed-source"  # our own
    assert check("ep-bob", ipv4(addr("8.8.8.8"), A4, 6, tcp(1, 22))) == "spoofed-source"
    assert check("ep-carol", ipv4(addr("192.168.7.9"), A4, 6, tcp(1, 22))) == "spoofed-source"  # bob's route
    assert check("ep-bob", ipv4(addr("192.168.7.9"), A4, 6, tcp(1, 22))) is None  # bob's LAN, through bob
    assert check("ep-unknown", ipv4(B4, A4, 6, tcp(1, 22))) == "spoofed-source"
    assert world.filter.counters["spoofed-source"] == 5
    assert ("ep-bob", "tcp:22") in world.asked and len(world.asked) == 1


def test_routed_destinations_only_for_served_routes() -> None:
    world = World()
    check = world.filter.check
    assert check("ep-bob", ipv4(B4, LAN, 6, tcp(1, 80))) is None
    assert check("ep-bob", ipv4(B4, LAN, 6, tcp(1, 22))) == "policy"  # tcp:22 covers our own addresses only
    assert check("ep-carol", ipv4(addr("100.64.0.9"), LAN, 6, tcp(1, 80))) == "policy"  # tcp:* ditto
    assert check("ep-bob", ipv6(B6, addr("fd00:20::7"), 17, udp(1, 9))) is None
    assert check("ep-bob", ipv4(B4, addr("10.21.0.1"), 6, tcp(1, 80))) == "not-for-us"
    assert check("ep-bob", ipv4(B4, addr("100.64.0.9"), 6, tcp(1, 22))) == "not-for-us"  # carol's, not ours
    world.served = []  # no longer a router
    assert check("ep-bob", ipv4(B4, LAN, 6, tcp(1, 80))) == "not-for-us"
    world.served = ["10.20.1.0/24"]
    assert check("ep-bob", ipv4(B4, LAN, 6, tcp(1, 80))) is None
    assert check("ep-bob", ipv4(B4, addr("10.20.2.1"), 6, tcp(1, 80))) == "not-for-us"


def test_malformed_packets_are_counted() -> None:
    world = World()
    assert world.filter.check("ep-bob", b"") == "malformed"
    assert world.filter.check("ep-bob", ipv4(B4, A4, 6, tcp(1, 22))[:30]) == "malformed"
    assert world.filter.check("ep-bob", ipv4(B4, A4, 6, b"\0" * 16, offset=1)) == "malformed"
    assert world.filter.check("ep-bob", ipv6(B6, A6, 60, ext(0) + ext(6) + tcp(1, 22))) == "malformed"
    assert world.filter.counters == {"malformed": 4} and not world.asked


def test_decisions_are_memoised_until_forget() -> None:
    world = World()
    for port in (40000, 40001, 40002):
        assert world.filter.check("ep-bob", ipv4(B4, A4, 6, tcp(port, 22))) is None
        assert world.filter.check("ep-bob", memoryview(ipv4(B4, A4, 6, tcp(port, 23)))) == "policy"
    assert sorted(world.asked) == [("ep-bob", "tcp:22"), ("ep-bob", "tcp:23")]
    world.policy = Policy.load('{"acls": [{"action": "accept", "src": ["bob"], "dst": ["*:ip/tcp:23"]}]}', 4)
    assert world.filter.check("ep-bob", ipv4(B4, A4, 6, tcp(1, 22))) is None  # the old decision, until...
    world.filter.forget()
    assert world.filter.check("ep-bob", ipv4(B4, A4, 6, tcp(1, 22))) == "policy"
    assert world.filter.check("ep-bob", ipv4(B4, A4, 6, tcp(1, 23))) is None


def test_no_policy_allows_everything_for_us_but_still_drops_spoofing() -> None:
    table = RouteTable([A4])
    table.update([PeerAddrs("ep-bob", (B4,), (), True)], accept_routes=False)
    inbound = InboundFilter(table, lambda: frozenset({A4}), tuple, lambda ep, detail: None)
    assert inbound.check("ep-bob", ipv4(B4, A4, 6, tcp(1, 9999))) is None
    assert inbound.check("ep-bob", ipv4(addr("100.64.0.99"), A4, 6, tcp(1, 9999))) == "spoofed-source"
    assert inbound.check("ep-bob", ipv4(B4, LAN, 6, tcp(1, 9999))) == "not-for-us"


def test_check_frame_takes_the_vnet_header_and_refuses_one_that_does_not_fit() -> None:
    world = World()
    check = world.filter.check_frame
    packet = ipv4(B4, A4, 6, tcp(1, 22, b"x" * 4000))
    assert check("ep-bob", NO_VNET + packet) is None
    tso = pack_vnet(VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 40, 1200, 20, 16))
    assert check("ep-bob", memoryview(tso + packet)) is None
    assert check("ep-bob", pack_vnet(VnetHdr(F_NEEDS_CSUM, GSO_UDP_L4, 28, 1200, 20, 6)) + packet) == "malformed"
    assert check("ep-bob", pack_vnet(VnetHdr(0, 0, 0, 0, 20, 9000)) + packet) is None  # no checksum asked for
    assert check("ep-bob", pack_vnet(VnetHdr(F_NEEDS_CSUM, 0, 0, 0, 20, 9000)) + packet) == "malformed"
    assert check("ep-bob", tso) == "malformed" and check("ep-bob", b"\0" * 9) == "malformed"
    assert check("ep-bob", tso + ipv4(B4, A4, 6, tcp(1, 23, b"x" * 4000))) == "policy"
    assert world.filter.counters == {"delivered": 3, "malformed": 4, "policy": 1}


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=16), st.binary(max_size=100))
def test_fuzz_check_frame(head: bytes, body: bytes) -> None:
    world = World()
    assert world.filter.check_frame("ep-bob", head + body) in (None, *REASONS)
    assert world.filter.check_frame("ep-bob", head[:10].ljust(10, b"\0") + ipv4(B4, A4, 6, tcp(1, 22, body))) in (
        None,
        *REASONS,
    )


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=120), st.sampled_from(["ep-bob", "ep-carol", "ep-x"]))
def test_fuzz_check_any_bytes(data: bytes, ep_id: str) -> None:
    world = World()
    assert world.filter.check(ep_id, data) in (None, *REASONS)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([4, 6]),
    st.sampled_from([B4, LAN, A4, addr("10.20.9.9"), addr("8.8.8.8")]),
    st.sampled_from([1, 6, 17, 44, 47, 58, 0, 60]),
    st.binary(max_size=60),
)
def test_fuzz_check_plausible_packets(version: int, dst: bytes, proto: int, body: bytes) -> None:
    world = World()
    packet = ipv4(B4, dst, proto, body) if version == 4 else ipv6(B6, A6 if dst == A4 else B6, proto, body)
    assert world.filter.check("ep-bob", packet) in (None, *REASONS)
    assert sum(world.filter.counters.values()) == 1
