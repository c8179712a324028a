"""`ztm.net.table.RouteTable`: exact mesh addresses, longest prefix among online routers, sticky failover, rank then
ep_id, offline routers skipped, routes only with accept_routes, the sources a peer may send from (spoofing refused),
and the defences against a bad endpoint list (an address claimed twice, a default route, a CIDR with host bits)."""

from __future__ import annotations

from net_packets import A4, A6, B4, B6, addr

from ztm.net.table import PeerAddrs, RouteTable

C4 = addr("100.64.0.4")


def peer(
    ep: str, addrs: tuple[bytes, ...], routes: tuple[str, ...] = (), *, online: bool = True, rank: float = 0.0
) -> PeerAddrs:
    return PeerAddrs(ep, addrs, routes, online, rank)


def table(*peers: PeerAddrs, accept: bool = True, own: tuple[bytes, ...] = (A4, A6)) -> RouteTable:
    routes = RouteTable(own)
    routes.update(peers, accept_routes=accept)
    return routes


def test_exact_mesh_addresses_first() -> None:
    routes = table(peer("b", (B4, B6), ("100.64.0.0/10",)), peer("c", (C4,), online=False))
    assert routes.lookup(B4) == "b" and routes.lookup(B6) == "b"
    assert routes.lookup(C4) == "c"  # an offline peer's own address still goes to it (the sender finds out)
    assert routes.lookup(A4) is None and routes.lookup(A6) is None  # our own addresses
    assert routes.lookup(addr("8.8.8.8")) is None


def test_longest_prefix_wins_and_falls_back_when_its_router_goes_offline() -> None:
    wide = peer("r1", (B4,), ("10.20.0.0/16",))
    narrow = peer("r2", (C4,), ("10.20.1.0/24",))
    routes = table(wide, narrow)
    assert routes.lookup(addr("10.20.1.5")) == "r2"
    assert routes.lookup(addr("10.20.2.5")) == "r1"
    assert routes.lookup(addr("10.21.0.1")) is None
    routes.update([wide, peer("r2", (C4,), ("10.20.1.0/24",), online=False)], accept_routes=True)
    assert routes.lookup(addr("10.20.1.5")) == "r1"
    assert routes.routes_in_use() == {"10.20.0.0/16": "r1"}


def test_ipv6_routes() -> None:
    routes = table(peer("r", (B4, B6), ("fd00:20::/64", "2001:db8::/32")))
    assert routes.lookup(addr("fd00:20::5")) == "r" and routes.lookup(addr("2001:db8:1::1")) == "r"
    assert routes.lookup(addr("fd00:21::5")) is None


def test_rank_then_ep_id_then_sticky_failover() -> None:
    cidr = "10.20.0.0/16"
    dst = addr("10.20.0.7")
    routes = table(peer("r2", (B4,), (cidr,), rank=5.0), peer("r1", (C4,), (cidr,), rank=9.0))
    assert routes.lookup(dst) == "r2"  # lowest rank
    routes.update([peer("r2", (B4,), (cidr,), rank=9.0), peer("r1", (C4,), (cidr,), rank=9.0)], accept_routes=True)
    assert routes.lookup(dst) == "r2"  # sticky: the current choice while it stays online
    routes.update([peer("r2", (B4,), (cidr,), rank=1.0), peer("r1", (C4,), (cidr,), rank=0.1)], accept_routes=True)
    assert routes.lookup(dst) == "r2"  # still sticky when the other becomes better
    routes.update([peer("r2", (B4,), (cidr,), online=False), peer("r1", (C4,), (cidr,), rank=0.1)], accept_routes=True)
    assert routes.lookup(dst) == "r1"  # failover
    routes.update([peer("r2", (B4,), (cidr,), rank=0.0), peer("r1", (C4,), (cidr,), rank=0.1)], accept_routes=True)
    assert routes.lookup(dst) == "r1"  # r2 is back and better: r1 stays (no flapping back)
    fresh = table(peer("rb", (B4,), (cidr,)), peer("ra", (C4,), (cidr,)))
    assert fresh.lookup(dst) == "ra"  # equal rank: the lowest ep_id
    routes.update([peer("r1", (C4,), (cidr,), online=False)], accept_routes=True)
    assert routes.lookup(dst) is None and routes.routes_in_use() == {}


def test_routes_only_with_accept_routes() -> None:
    routes = table(peer("r", (B4,), ("10.20.0.0/16",)), accept=False)
    assert routes.lookup(addr("10.20.0.7")) is None and routes.routes_in_use() == {}
    assert routes.lookup(B4) == "r"
    assert routes.may_send_from("r", addr("10.20.0.7"))  # its LAN may still answer us


def test_the_memo_is_emptied_by_update() -> None:
    routes = table(peer("r", (B4,), ("10.20.0.0/16",)))
    dst = addr("10.20.0.7")
    assert routes.lookup(dst) == "r" and routes.lookup(dst) == "r"
    routes.update([peer("s", (C4,), ("10.20.0.0/16",))], accept_routes=True)
    assert routes.lookup(dst) == "s"


def test_sources() -> None:
    routes = table(peer("b", (B4, B6)), peer("r", (C4,), ("10.20.0.0/16", "fd00:20::/64")))
    assert routes.may_send_from("b", B4) and routes.may_send_from("b", B6)
    assert not routes.may_send_from("b", C4)  # another peer's address
    assert not routes.may_send_from("b", A4) and not routes.may_send_from("b", A6)  # ours
    assert not routes.may_send_from("b", addr("10.20.0.5"))  # a route that is not its own
    assert routes.may_send_from("r", addr("10.20.255.255")) and routes.may_send_from("r", addr("fd00:20::9"))
    assert not routes.may_send_from("r", addr("10.21.0.1"))
    assert not routes.may_send_from("r", B4)
    assert not routes.may_send_from("nobody", B4)
    assert routes.sources_of("r").covers(addr("10.20.3.3")) and not routes.sources_of("nobody").covers(B4)


def test_a_bad_endpoint_list_is_defended_against() -> None:
    routes = table(
        peer("b", (B4,), ("0.0.0.0/0", "10.20.0.5/16", "nonsense", "::/0")),
        peer("evil", (B4, C4)),  # claims b's address too
        peer("thief", (A4,)),  # claims our address
        peer("r", (addr("100.64.0.9"),), ("100.64.0.0/10",)),  # a route over the mesh range
    )
    assert routes.lookup(B4) is None  # claimed twice: neither b nor evil (nor r's route over the mesh range)
    assert not routes.may_send_from("b", B4) and not routes.may_send_from("evil", B4)
    assert routes.may_send_from("evil", C4)
    assert not routes.may_send_from("thief", A4)
    assert routes.lookup(A4) is None
    assert routes.lookup(addr("8.8.8.8")) is None  # no default route
    assert not routes.may_send_from("b", addr("10.20.0.1"))  # host bits set: ignored
    assert not routes.may_send_from("r", C4) and not routes.may_send_from("r", addr("100.64.0.77"))  # route ignored
    assert routes.lookup(C4) == "evil"


def test_set_own_rebuilds() -> None:
    routes = RouteTable()
    routes.update([peer("b", (B4,)), peer("x", (A4,))], accept_routes=False)
    assert routes.lookup(A4) == "x"
    routes.set_own([A4])
    assert routes.lookup(A4) is None and not routes.may_send_from("x", A4) and routes.lookup(B4) == "b"
