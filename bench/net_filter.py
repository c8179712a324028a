"""The per-packet cost of network mode's pure parts (issue 17): `parse`, `RouteTable.lookup` and
`InboundFilter.check`, in ns per packet. Pure Python in this process, no network.

The view: 1,000 peers with an IPv4 and an IPv6 mesh address each, 100 of them routers of 2 routes each (8 prefix
lengths in all, /16 to /30), routes accepted. The filter's policy is a real `ztm.policy.Policy` (a few `ip/` rules),
decided once per flow and then memoised, as the agent runs it. Figures (ns per packet, over `--packets` packets):

* parse: a TCP/IPv4 packet from `bytes`; a TCP/IPv6 packet with two extension headers from a `memoryview`;
  the vnet header: `parse_vnet` + `check_vnet` of a TSO packet;
* lookup: a peer's mesh address; a routed address (memoised: the same 256 destinations again and again); a first
  lookup of a routed address (every one new: the memo emptied between rounds);
* check: a packet to our address, delivered (memoised decision); the same with its vnet header (`check_frame` of a
  TSO frame, header checked against the packet); one routed through us, delivered; one refused by
  the policy (memoised); a spoofed source; a malformed packet.

Times are this process's CPU time (`time.process_time`), so other work on a shared machine does not count. Prints
the median of `--runs` runs (default 5) and the spread.

Run:  .venv/bin/python -m bench.net_filter [--runs 5] [--packets 200000]
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import cpu_per_call, figures_table, machine_facts, tree_facts
from ztm.net.filter import InboundFilter
from ztm.net.packet import F_NEEDS_CSUM, GSO_TCPV4, VnetHdr, check_vnet, pack_vnet, parse, parse_vnet
from ztm.net.table import PeerAddrs, RouteTable
from ztm.policy import AppTarget, Place, Policy, Subject

PEERS = 1000
ROUTERS = 100
US4 = socket.inet_aton("100.64.0.2")
US6 = socket.inet_pton(socket.AF_INET6, "fd12:3456:789a::6440:2")
POLICY = """{"acls": [
  {"action": "accept", "src": ["u7"], "dst": ["*:ip/tcp:22", "*:ip/icmp", "*:ip/10.50.0.0/16/tcp:80"]},
]}"""


def v4(n: int) -> bytes:
    return struct.pack("!I", (100 << 24 | 64 << 16) + n)


def v6(n: int) -> bytes:
    return bytes.fromhex("fd123456789a00000000000064400000")[:12] + v4(n)


def tcp4(src: bytes, dst: bytes, dport: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, dport, 1, 0, 5 << 4, 0x10, 65535, 0, 0) + b"x" * 1200
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, src, dst) + tcp


def tcp6_ext(src: bytes, dst: bytes) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 40000, 22, 1, 0, 5 << 4, 0x10, 65535, 0, 0) + b"x" * 1200
    chain = bytes([60, 0]) + b"\0" * 6 + bytes([6, 0]) + b"\0" * 6 + tcp  # hop-by-hop, destination options
    return struct.pack("!IHBB16s16s", 6 << 28, len(chain), 0, 64, src, dst) + chain


def view() -> list[PeerAddrs]:
    peers = []
    for n in range(3, PEERS + 3):
        routes: tuple[str, ...] = ()
        if n < ROUTERS + 3:
            routes = (f"10.{n}.0.0/16", f"10.{n}.0.0/{18 + 2 * (n % 7)}")
        peers.append(PeerAddrs(f"ep{n}", (v4(n), v6(n)), routes, True, float(n % 7)))
    peers.append(PeerAddrs("ep-router", (v4(2000),), ("10.50.0.0/16",), True))
    return peers


def per_packet(fn: Callable[[int], object], count: int) -> float:
    """Nanoseconds per call of fn(i), i in range(count)."""
    return cpu_per_call(fn, count, 1e9)


def one_run(count: int) -> dict[str, float]:
    peers = view()
    routes = RouteTable([US4, US6])
    routes.update(peers, accept_routes=True)
    policy = Policy.load(POLICY, 1)
    users = {p.ep_id: "u7" for p in peers}

    def allow(ep_id: str, detail: str) -> str | None:
        decision = policy.decide(Subject(users[ep_id], ep_id), Place("us"), AppTarget("ip", detail))
        return None if decision.allowed else decision.why()

    inbound = InboundFilter(routes, lambda: frozenset({US4, US6}), lambda: ("10.50.0.0/16",), allow)
    sender = v4(7)
    packet4 = tcp4(sender, US4, 22)
    packet6 = memoryview(tcp6_ext(v6(7), US6))
    tso = pack_vnet(VnetHdr(F_NEEDS_CSUM, GSO_TCPV4, 40, 1200, 20, 16)) + packet4
    routed = [tcp4(v4(2000), bytes([10, 50, 1, i]), 80) for i in range(256)]
    denied = tcp4(sender, US4, 23)
    spoofed = tcp4(v4(8), US4, 22)
    malformed = packet4[:30]
    routed_dsts = [bytes([10, 3 + (i % ROUTERS), i >> 8 & 255, i & 255]) for i in range(count)]
    mesh_dsts = [v4(3 + i % PEERS) for i in range(1024)]

    def vnet(i: int) -> None:
        header = parse_vnet(tso)
        check_vnet(header, parse(memoryview(tso)[10:]), len(tso) - 10)

    def first_lookup(i: int) -> object:
        if i & 1023 == 0:
            routes._memo.clear()  # every destination new, as a sweep would be (the memo's worst case)
        return routes.lookup(routed_dsts[i])

    figures = {
        "parse TCP/IPv4 (ns)": per_packet(lambda i: parse(packet4), count),
        "parse TCP/IPv6, 2 ext headers, memoryview (ns)": per_packet(lambda i: parse(packet6), count),
        "parse_vnet + check_vnet, TSO (ns)": per_packet(vnet, count),
        "lookup mesh address (ns)": per_packet(lambda i: routes.lookup(mesh_dsts[i & 1023]), count),
        "lookup routed, memoised (ns)": per_packet(lambda i: routes.lookup(routed[i & 255][16:20]), count),
        "lookup routed, first (ns)": per_packet(first_lookup, count),
        "check own address, delivered (ns)": per_packet(lambda i: inbound.check("ep7", packet4), count),
        "check_frame TSO, delivered (ns)": per_packet(lambda i: inbound.check_frame("ep7", tso), count),
        "check routed, delivered (ns)": per_packet(lambda i: inbound.check("ep-router", routed[i & 255]), count),
        "check policy-denied (ns)": per_packet(lambda i: inbound.check("ep7", denied), count),
        "check spoofed source (ns)": per_packet(lambda i: inbound.check("ep7", spoofed), count),
        "check malformed (ns)": per_packet(lambda i: inbound.check("ep7", malformed), count),
    }
    assert inbound.check("ep7", packet4) is None and inbound.check("ep-router", routed[5]) is None
    assert inbound.check("ep7", denied) == "policy" and inbound.check("ep7", spoofed) == "spoofed-source"
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--packets", type=int, default=200_000)
    args = parser.parse_args()
    print(machine_facts())
    print(tree_facts())
    print(f"view: {PEERS} peers, {ROUTERS} routers of 2 routes each (8 prefix lengths); runs: {args.runs}\n")
    runs = [one_run(args.packets) for _ in range(max(1, args.runs))]
    print(figures_table(runs, 0))


if __name__ == "__main__":
    main()
