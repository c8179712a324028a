"""Replies to this endpoint's own flows pass the policy (`ztm.apps.net.flows`, sans-IO)."""

from __future__ import annotations

import ipaddress

from ztm.apps.net.flows import MAX_FLOWS, TTL, Flows
from ztm.net.packet import PacketInfo

ME, PEER, OTHER = (ipaddress.ip_address(a).packed for a in ("100.64.0.2", "100.64.0.3", "100.64.0.4"))


def info(src: bytes, dst: bytes, proto: int = 6, sport: int | None = 40000, dport: int | None = 22) -> PacketInfo:
    return PacketInfo(4, proto, src, dst, sport, dport, 8 if proto == 1 else None, 60)


def test_a_reply_passes_and_nothing_else_does() -> None:
    flows = Flows()
    flows.sent(info(ME, PEER), now=0.0)
    assert flows.answers(info(PEER, ME, sport=22, dport=40000), now=1.0)
    assert not flows.answers(info(PEER, ME, sport=22, dport=40001), now=1.0)  # another of our ports
    assert not flows.answers(info(PEER, ME, sport=23, dport=40000), now=1.0)  # another of its ports
    assert not flows.answers(info(OTHER, ME, sport=22, dport=40000), now=1.0)  # another peer
    assert not flows.answers(info(PEER, ME, proto=17, sport=22, dport=40000), now=1.0)  # another protocol


def test_flows_expire_unless_refreshed() -> None:
    flows = Flows()
    flows.sent(info(ME, PEER), now=0.0)
    flows.sent(info(ME, PEER), now=TTL)
    assert flows.answers(info(PEER, ME, sport=22, dport=40000), now=TTL * 1.5)
    assert not flows.answers(info(PEER, ME, sport=22, dport=40000), now=TTL * 2 + 1)
    flows.expire(now=TTL * 2 + 1)
    assert len(flows) == 0


def test_icmp_passes_from_a_peer_this_endpoint_sent_to() -> None:
    flows = Flows()
    assert not flows.answers(info(PEER, ME, proto=1, sport=None, dport=None), now=0.0)
    flows.sent(info(ME, PEER, proto=17, dport=53), now=0.0)
    assert flows.answers(info(PEER, ME, proto=1, sport=None, dport=None), now=1.0)
    assert not flows.answers(info(OTHER, ME, proto=1, sport=None, dport=None), now=1.0)


def test_the_table_stays_bounded() -> None:
    flows = Flows()
    for port in range(MAX_FLOWS + 10):
        flows.sent(info(ME, PEER, sport=port % 65536, dport=port // 65536), now=0.0)
    assert len(flows) <= MAX_FLOWS
