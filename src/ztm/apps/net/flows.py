"""Replies to what this endpoint sent, let through the policy (sans-IO).

The mesh policy decides which packets a peer may send here (`InboundFilter`, `ip/tcp:22` ...); a connection this
endpoint opened to a peer gets its replies from that peer's port to one of ours, which no rule names. `Flows` keeps
the flows this endpoint sent (peer address, protocol, peer port, our port) for `TTL` seconds after their last
packet, and a packet the policy refused passes when it answers one of them: the packet's source, protocol, source
port and destination port are a flow's peer, protocol, peer port and our port. ICMP (echo replies, errors such as
"port unreachable" or "fragmentation needed") passes from a peer this endpoint sent anything to within `TTL`.
Only kept while a policy is in force (without one everything passes anyway)."""

from __future__ import annotations

from ztm.net.packet import PacketInfo

TTL = 120.0
MAX_FLOWS = 65536
ICMP = (1, 58)


class Flows:
    __slots__ = ("_flows", "_peers")

    def __init__(self) -> None:
        self._flows: dict[tuple[bytes, int, int | None, int | None], float] = {}
        self._peers: dict[bytes, float] = {}

    def __len__(self) -> int:
        return len(self._flows)

    def sent(self, info: PacketInfo, now: float) -> None:
        """This endpoint sent `info` (from the TUN, to a peer)."""
        flows = self._flows
        if len(flows) >= MAX_FLOWS:
            self.expire(now)
            if len(flows) >= MAX_FLOWS:
                flows.clear()
        until = now + TTL
        flows[(info.dst, info.proto, info.dport, info.sport)] = until
        peers = self._peers
        if len(peers) >= MAX_FLOWS:
            peers.clear()
        peers[info.dst] = until

    def answers(self, info: PacketInfo, now: float) -> bool:
        """Whether `info`, from a peer, replies to a flow this endpoint sent (or is ICMP from a peer it sent to)."""
        if info.proto in ICMP:
            until = self._peers.get(info.src)
        else:
            until = self._flows.get((info.src, info.proto, info.sport, info.dport))
        return until is not None and until >= now

    def expire(self, now: float) -> None:
        self._flows = {k: t for k, t in self._flows.items() if t >= now}
        self._peers = {k: t for k, t in self._peers.items() if t >= now}

    def clear(self) -> None:
        self._flows.clear()
        self._peers.clear()
