"""`InboundFilter`: the check of every packet a peer sends before it is written to the TUN, and `detail_of`, the
policy's name for what a packet asks for ("tcp:22", "10.20.1.5/tcp:22", ...).

The peer is the one the packet's stream authenticated (the stream's caller, from its verified certificate), never
anything the packet says. In order: the packet parses (`ztm.net.packet.parse`, else "malformed"); its source is the
peer's own mesh address or inside one of the peer's approved routes (`RouteTable.may_send_from`, else
"spoofed-source"); its destination is one of this endpoint's addresses or, when this endpoint is a router, inside
one of the routes it serves (else "not-for-us"); the policy allows the peer that detail (`allow`, else "policy").
Each outcome is counted in `counters` (a delivered packet as "delivered").

Decisions are memoised per (peer, detail) until `forget()` (a new policy, new tags, a new peer list): the packet path
is a parse, a few dict lookups and no string building once a flow has been decided. Memos are bounded (emptied
when full), so a peer sweeping ports or routed addresses costs memory only up to the bound.
"""

from __future__ import annotations

import collections
import socket
from collections.abc import Callable, Sequence

from ztm.net.packet import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_TCP,
    PROTO_UDP,
    BadPacket,
    Fields,
    PacketInfo,
    info_of,
    scan,
    scan_frame,
)
from ztm.net.table import RouteTable, network

Allow = Callable[[str, str], str | None]
"""(peer ep_id, detail) -> None when the policy allows it, else the reason (the policy's why)."""
MEMO_SIZE = 65536
"""Decisions (and routed destinations) remembered until `forget` (the memo is emptied when full)."""
REASONS = ("malformed", "spoofed-source", "not-for-us", "policy")
_NAMES = {PROTO_TCP: "tcp", PROTO_UDP: "udp"}


def detail_of(info: PacketInfo, own: bool) -> str:
    """The policy's detail of the packet `info`: "tcp:22", "udp:53", "icmp" (ICMP and ICMPv6), "proto:N" for
    other protocols, "tcp:*" ("udp:*") for a TCP (UDP) fragment after the first (its ports are unknown: only
    `ip/tcp:*`, `ip/*` and their routed forms allow it); prefixed with the destination address ("10.20.1.5/tcp:22")
    when it is routed (`own` False: not one of this endpoint's addresses)."""
    proto = info.proto
    name = _NAMES.get(proto)
    if name is not None:
        detail = f"{name}:{'*' if info.dport is None else info.dport}"
    elif proto in (PROTO_ICMP, PROTO_ICMPV6):
        detail = "icmp"
    else:
        detail = f"proto:{proto}"
    if own:
        return detail
    family = socket.AF_INET if len(info.dst) == 4 else socket.AF_INET6
    return f"{socket.inet_ntop(family, info.dst)}/{detail}"


class InboundFilter:
    """Checks a packet that arrived from peer ep_id (authenticated by the stream it came on) before it is written to
    the TUN: parse, source not spoofed (RouteTable.may_send_from), destination is one of our own addresses or (we are
    a router) inside one of our approved routes, then the policy (`allow`, memoised per (peer, detail) until
    `forget()`), with counters by reason. A packet the policy refuses still passes when `replies` says it answers
    one of this endpoint's own flows (counted "reply"): the packet is parsed once for both."""

    def __init__(
        self,
        table: RouteTable,
        own: Callable[[], frozenset[bytes]],
        served: Callable[[], Sequence[str]],
        allow: Allow,
        replies: Callable[[PacketInfo], bool] | None = None,
    ) -> None:
        self.table = table
        self._own = own
        self._served = served
        self._allow = allow
        self._replies = replies
        self.counters: collections.Counter[str] = collections.Counter()
        self._decided: dict[tuple[str, int, int | None, bytes], str | None] = {}
        self._served_key: tuple[str, ...] = ()
        self._served_nets: tuple[tuple[int, int, int], ...] = ()
        self._routed: dict[bytes, bool] = {}

    def check(self, ep_id: str, packet: bytes | memoryview) -> str | None:
        """None: deliver the packet; else the reason it is dropped ("malformed", "spoofed-source", "not-for-us",
        "policy"), counted in `counters` like a delivery ("delivered")."""
        try:
            fields = scan(packet)
        except BadPacket:
            self.counters["malformed"] += 1
            return "malformed"
        return self._check(ep_id, fields)

    def check_frame(self, ep_id: str, frame: bytes | memoryview) -> str | None:
        """`check` of a frame as the TUN takes it: the 10-byte virtio-net header, then the packet. A header that
        does not fit the packet (`ztm.net.packet.check_vnet`: a GSO type or checksum request a peer made up) is
        "malformed" too."""
        try:
            _, fields = scan_frame(frame)
        except BadPacket:
            self.counters["malformed"] += 1
            return "malformed"
        return self._check(ep_id, fields)

    def _check(self, ep_id: str, fields: Fields) -> str | None:
        _, proto, src, dst, _, dport, _, _, _ = fields
        if not self.table.may_send_from(ep_id, src):
            self.counters["spoofed-source"] += 1
            return "spoofed-source"
        if dst in self._own():
            routed = b""
        elif self._serves(dst):
            routed = dst
        else:
            self.counters["not-for-us"] += 1
            return "not-for-us"
        key = (ep_id, proto, dport, routed)
        decided = self._decided
        try:
            why = decided[key]
        except KeyError:
            why = self._allow(ep_id, detail_of(info_of(fields), not routed))
            if len(decided) >= MEMO_SIZE:
                decided.clear()
            decided[key] = why
        if why is not None:
            if self._replies is not None and self._replies(info_of(fields)):
                self.counters["reply"] += 1
                return None
            self.counters["policy"] += 1
            return "policy"
        self.counters["delivered"] += 1
        return None

    def _serves(self, dst: bytes) -> bool:
        """True if `dst` lies in one of the routes this endpoint serves now."""
        current = self._served()
        served = current if isinstance(current, tuple) else tuple(current)
        if served != self._served_key:
            nets = (network(cidr) for cidr in served)
            self._served_nets = tuple(n[:3] for n in nets if n is not None)
            self._served_key = served
            self._routed = {}
        if not self._served_nets:
            return False
        routed = self._routed
        found = routed.get(dst)
        if found is None:
            size, value = len(dst), int.from_bytes(dst, "big")
            found = any(length == size and value & mask == net for length, mask, net in self._served_nets)
            if len(routed) >= MEMO_SIZE:
                routed.clear()
            routed[dst] = found
        return found

    def forget(self) -> None:
        """A new policy, new tags or a new peer list: decide every (peer, detail) again."""
        self._decided = {}
        self._routed = {}
