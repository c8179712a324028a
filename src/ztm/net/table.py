"""Which peer a packet goes to (`RouteTable.lookup`) and which source addresses a peer may send from
(`RouteTable.may_send_from`), from the mesh's endpoint list (`PeerAddrs`: each peer's mesh addresses, its approved
routes, whether it is online and its rank).

Lookup: a peer's own mesh address first (whether the peer is online or not: the sender finds out); else, when this
endpoint accepts routes, the longest prefix among the approved routes that have an online router. Several online
routers of one route: the one chosen before while it stays online (sticky: a connection does not hop between
routers when their RTTs cross), else the lowest rank, then the lowest ep_id. An offline router is skipped, so its
route fails over to the next router, or to a shorter prefix, at the next `update`.

Addresses are packed bytes (4 or 16) and routes integers under a mask, kept per prefix length: a lookup is one dict
lookup for a mesh address, and one per distinct prefix length (longest first) for a routed one, memoised per address
until the next `update`. No `ipaddress` objects on the packet path: they are used only to read the CIDRs in `update`.

Defence in depth against a bad endpoint list (the hub already refuses these): an address claimed by two peers is
dropped for both; a route of prefix 0 (an exit node, a later issue), one that is not a network address, or one that
holds a mesh address (this endpoint's or a peer's) is ignored; a peer may never send from this endpoint's own
addresses nor from another peer's mesh address, whatever its routes.

Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

MEMO_SIZE = 65536
"""Routed destinations remembered between updates (the memo is emptied when full)."""


@dataclass(frozen=True)
class PeerAddrs:
    ep_id: str
    addrs: tuple[bytes, ...]
    """Its mesh_ip and mesh_ip6 (packed)."""
    routes: tuple[str, ...]
    """The approved CIDRs it routes."""
    online: bool
    rank: float = 0.0
    """Lower is better (e.g. RTT; direct path first), for failover among routers."""


@dataclass(frozen=True, slots=True)
class Sources:
    """The source addresses one peer may send from: its mesh addresses, and any address in its approved routes."""

    addrs: frozenset[bytes]
    nets: tuple[tuple[int, int, int], ...]
    """(address length 4 or 16, mask, network) as integers."""

    def covers(self, src: bytes) -> bool:
        """True if `src` is one of `addrs` or inside one of `nets` (the caller rules out other peers' addresses)."""
        if src in self.addrs:
            return True
        if not self.nets:
            return False
        size = len(src)
        value = int.from_bytes(src, "big")
        return any(length == size and value & mask == net for length, mask, net in self.nets)


NO_SOURCES = Sources(frozenset(), ())


def network(cidr: str) -> tuple[int, int, int, str] | None:
    """(address length, mask, network, canonical text) of an IPv4 or IPv6 CIDR written as a network address with a
    prefix of 1 or more; None otherwise."""
    try:
        net = ipaddress.ip_network(cidr, strict=True)
    except ValueError:
        return None
    if net.prefixlen == 0:
        return None
    size = 4 if net.version == 4 else 16
    return size, int(net.netmask), int(net.network_address), str(net)


class RouteTable:
    def __init__(self, own: Iterable[bytes] = ()) -> None:
        self.own: frozenset[bytes] = frozenset(own)
        """This endpoint's own mesh addresses: never looked up to a peer, never a peer's source."""
        self.accept_routes = False
        self._exact: dict[bytes, str] = {}
        self._sources: dict[str, Sources] = {}
        self._chosen: dict[str, str] = {}  # canonical cidr -> ep_id, kept across updates while that router is online
        self._levels: dict[int, tuple[tuple[int, dict[int, str]], ...]] = {}  # length -> ((mask, {net: cidr}), ...)
        self._memo: dict[bytes, str | None] = {}
        self._peers: tuple[PeerAddrs, ...] = ()

    def set_own(self, own: Iterable[bytes]) -> None:
        """This endpoint's addresses changed (allocated, or the view came later): rebuild with the same peers."""
        self.own = frozenset(own)
        self.update(self._peers, accept_routes=self.accept_routes)

    def update(self, peers: Iterable[PeerAddrs], *, accept_routes: bool) -> None:
        """Replace the whole view with `peers`; routes are looked up only with `accept_routes`."""
        peers = tuple(sorted(peers, key=lambda p: p.ep_id))
        own = self.own
        claims: dict[bytes, set[str]] = {}
        for peer in peers:
            for addr in peer.addrs:
                if len(addr) in (4, 16) and addr not in own:
                    claims.setdefault(addr, set()).add(peer.ep_id)
        exact = {addr: next(iter(eps)) for addr, eps in claims.items() if len(eps) == 1}
        sources: dict[str, Sources] = {}
        routers: dict[str, list[tuple[float, str]]] = {}
        parsed: dict[str, tuple[int, int, int, str]] = {}
        meshed = [(len(a), int.from_bytes(a, "big")) for a in (*claims, *own)]
        for peer in peers:
            nets = []
            for cidr in peer.routes:
                found = network(cidr)
                if found is None or any(n == found[0] and v & found[1] == found[2] for n, v in meshed):
                    continue
                nets.append(found[:3])
                parsed[found[3]] = found
                if peer.online:
                    routers.setdefault(found[3], []).append((peer.rank, peer.ep_id))
            mine = frozenset(a for a in peer.addrs if exact.get(a) == peer.ep_id)
            sources[peer.ep_id] = Sources(mine, tuple(dict.fromkeys(nets)))
        chosen: dict[str, str] = {}
        if accept_routes:
            for cidr, candidates in routers.items():
                before = self._chosen.get(cidr)
                stays = before is not None and any(ep == before for _, ep in candidates)
                chosen[cidr] = before if before is not None and stays else min(candidates)[1]
        levels: dict[int, dict[int, dict[int, str]]] = {}  # length -> prefix mask -> {net: cidr}
        for cidr in chosen:
            size, mask, net, _ = parsed[cidr]
            levels.setdefault(size, {}).setdefault(mask, {})[net] = cidr
        self._peers = peers
        self.accept_routes = accept_routes
        self._exact = exact
        self._sources = sources
        self._chosen = chosen
        self._levels = {
            size: tuple(sorted(by_mask.items(), key=lambda item: -item[0].bit_count()))
            for size, by_mask in levels.items()
        }
        self._memo = {}

    def lookup(self, dst: bytes) -> str | None:
        """The ep_id to send a packet for `dst` to (None: no peer has it)."""
        found = self._exact.get(dst)
        if found is not None:
            return found
        memo = self._memo
        try:
            return memo[dst]
        except KeyError:
            pass
        found = self._longest(dst)
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[dst] = found
        return found

    def _longest(self, dst: bytes) -> str | None:
        levels = self._levels.get(len(dst))
        if not levels or dst in self.own:
            return None
        value = int.from_bytes(dst, "big")
        for mask, nets in levels:
            cidr = nets.get(value & mask)
            if cidr is not None:
                return self._chosen[cidr]
        return None

    def sources_of(self, ep_id: str) -> Sources:
        """What `ep_id` may send from (its mesh addresses and approved routes); empty for an unknown peer."""
        return self._sources.get(ep_id, NO_SOURCES)

    def may_send_from(self, ep_id: str, src: bytes) -> bool:
        """True if `src` is one of `ep_id`'s own mesh addresses, or inside one of its approved routes and neither
        another peer's mesh address nor one of this endpoint's."""
        sources = self._sources.get(ep_id)
        if sources is None:
            return False
        if src in sources.addrs:
            return True
        if src in self._exact or src in self.own:
            return False
        return sources.covers(src)

    def routes_in_use(self) -> dict[str, str]:
        """cidr -> the ep_id it goes to now (only routes with an online router, and only with accept_routes)."""
        return dict(sorted(self._chosen.items()))

    def peers(self) -> tuple[PeerAddrs, ...]:
        """The view of the last `update`, sorted by ep_id."""
        return self._peers
