"""The lab's topology as data (sans-IO): which namespaces, cables, addresses, routes and router rules a set of sites
needs. `tests/lab/netlab.py` builds what `plan()` returns; nothing here touches the system.

A *site* is a place where an endpoint lives (home, workplace, ...), of one *kind* (`KINDS`):

* `eim`: a NAT router with endpoint-independent mapping: nft `masquerade`, which keeps the source port when it is free
  (filtering stays conntrack's: address-and-port dependent); new inbound connections are dropped, never reset.
* `symmetric`: a NAT router whose mapping depends on the destination: `masquerade random,fully-random` picks a new
  random external port for every connection.
* `firewall`: a router without translation: the site's LAN is a subnet routed on the "Internet" (198.19.N.0/24), the
  router forwards outbound connections and their replies only; new inbound connections are dropped.
* `public`: no router: the site's host sits on the Internet bridge with an address of its own.

Site number N (it picks the addresses): `home` is 1, `workplace` 2, any other site 3, 4, ... in the order given.

    router of site N    198.18.0.(20+N) on the Internet; LAN side 10.77.N.1 (eim, symmetric) or 198.19.N.1 (firewall)
    host of site N      10.77.N.10 (eim, symmetric), 198.19.N.10 (firewall), 198.18.0.(40+N) (public)
    its twin            10.77.N.11 / 198.19.N.11 (a second host on the same LAN, `twins=`)

Names: the host is the site's name, its router `home-rtr` for home, `work-rtr` for the workplace and `S-rtr` for any
other site S, a twin `S2`. Site names are 1 to 7 lowercase letters and digits starting with a letter (interface
names are built from them and Linux allows 15 characters); "workplace" is the one longer name allowed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

KINDS = ("eim", "symmetric", "firewall", "public")
NAT_KINDS = ("eim", "symmetric")
LAN_KINDS = ("eim", "symmetric", "firewall")
"""Kinds with a router and a LAN behind it (the ones a twin can be added to)."""
DEFAULT_SITES: Mapping[str, str] = {"home": "eim", "workplace": "eim"}
INFRA = ("inet", "datacenter", "dc2", "db")
"""Hosts every lab has, whatever its sites: the Internet bridge, two data centers, PostgreSQL."""
INFRA_ADDR = {"inet": "198.18.0.1", "db": "198.18.0.5", "datacenter": "198.18.0.10", "dc2": "198.18.0.11"}
RESERVED = (*INFRA, "dc1")
MAX_SITES = 19
_FIXED_NUMBER = {"home": 1, "workplace": 2}
_ROUTER_NAME = {"home": "home-rtr", "workplace": "work-rtr"}
_SITE_RX = re.compile(r"[a-z][a-z0-9]{0,6}")
INET_BRIDGE = "br0"
LAN_BRIDGE = "lan0"


class PlanError(ValueError):
    """A lab that cannot be built as asked (the message says what is wrong and what is allowed)."""


@dataclass
class Cable:
    """A veth pair: `ifname` (address `cidr`) in `host`, `far_if` in `far`, with address `far_cidr`, or a port of
    bridge `far_bridge` when `far_cidr` is None."""

    host: str
    ifname: str
    cidr: str
    far: str
    far_if: str
    far_cidr: str | None
    far_bridge: str | None = None


@dataclass
class Plan:
    kinds: dict[str, str]
    """site -> kind."""
    hosts: list[str]
    """Every namespace's host name, in the order they are made."""
    routers: list[str]
    addr: dict[str, str]
    """Each host's main address (a router's WAN side)."""
    lan_addr: dict[str, str]
    """Routers' LAN side."""
    site_of: dict[str, str]
    """host (site host, twin, router) -> its site."""
    cables: list[Cable]
    bridges: dict[str, tuple[str, str]]
    """host -> (bridge name, its address/prefix): `inet`'s br0, and lan0 of a router with twins behind it."""
    default_route: dict[str, str]
    """host -> gateway."""
    routes: list[tuple[str, str, str]] = field(default_factory=list)
    """(host, subnet, via): the routed LANs of firewall sites, on every host of the Internet bridge."""
    neighbour: dict[str, str] = field(default_factory=dict)
    """The host at the other end of a host's own cable (a router's: its site host); hosts not in it: `inet`."""
    router_nft: dict[str, str] = field(default_factory=dict)
    """router -> its nft ruleset."""

    def uplink(self, host: str) -> Cable:
        for cable in self.cables:
            if cable.host == host:
                return cable
        raise KeyError(f"{host!r} has no uplink; hosts with one: {', '.join(c.host for c in self.cables)}")


def router_name(site: str) -> str:
    return _ROUTER_NAME.get(site, f"{site}-rtr")


def router_nft(kind: str) -> str:
    """The nft ruleset of a router of `kind`: NAT (per kind) out of `wan0`, forward only outbound and replies, drop
    new connections from the WAN to the router itself."""
    nat = {"eim": "masquerade", "symmetric": "masquerade random,fully-random"}.get(kind)
    postrouting = (
        ""
        if nat is None
        else f"""\
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" {nat}
    }}
"""
    )
    return f"""\
table inet ztmlab {{
{postrouting}    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan0" oifname "wan0" accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        iifname "wan0" ct state established,related accept
        iifname "wan0" drop
    }}
}}
"""


def _check(sites: Mapping[str, str], twins: Sequence[str]) -> None:
    if not sites:
        raise PlanError("a lab needs at least one site, e.g. sites={'home': 'eim'}")
    if len(sites) > MAX_SITES:
        raise PlanError(f"{len(sites)} sites asked for; a lab has at most {MAX_SITES}")
    for site, kind in sites.items():
        if site in RESERVED:
            raise PlanError(f"site name {site!r} is taken by a lab host ({', '.join(RESERVED)}); pick another name")
        if site != "workplace" and not _SITE_RX.fullmatch(site):
            raise PlanError(
                f"bad site name {site!r}: use 1 to 7 lowercase letters and digits, starting with a letter "
                "(interface names are built from it)"
            )
        if kind not in KINDS:
            raise PlanError(f"site {site!r}: unknown kind {kind!r}; kinds: {', '.join(KINDS)}")
    for site in twins:
        if site not in sites:
            raise PlanError(f"twin of {site!r}: no such site; sites: {', '.join(sites)}")
        if sites[site] not in LAN_KINDS:
            raise PlanError(
                f"twin of {site!r}: a {sites[site]} site has no LAN to share; twins need one of {', '.join(LAN_KINDS)}"
            )
        if f"{site}2" in sites:
            raise PlanError(f"twin of {site!r} would be named {site}2, which is already a site; rename that site")
    if len(set(twins)) != len(twins):
        raise PlanError(f"a site is named twice in twins={list(twins)}")


def numbers(sites: Mapping[str, str]) -> dict[str, int]:
    """site -> N: home 1, workplace 2, the others 3, 4, ... in the order given."""
    out: dict[str, int] = {}
    n = 3
    for site in sites:
        if site in _FIXED_NUMBER:
            out[site] = _FIXED_NUMBER[site]
        else:
            out[site] = n
            n += 1
    return out


def plan(sites: Mapping[str, str] | None = None, twins: Sequence[str] = ()) -> Plan:
    """Everything a lab of these `sites` (name -> kind; default `DEFAULT_SITES`) and `twins` is made of."""
    sites = dict(DEFAULT_SITES if sites is None else sites)
    twins = list(twins)
    _check(sites, twins)
    p = Plan(
        kinds=sites,
        hosts=list(INFRA),
        routers=[],
        addr=dict(INFRA_ADDR),
        lan_addr={},
        site_of={},
        cables=[
            Cable(h, "eth0", f"{INFRA_ADDR[h]}/24", "inet", f"p-{h}", None, INET_BRIDGE)
            for h in ("datacenter", "dc2", "db")
        ],
        bridges={"inet": (INET_BRIDGE, f"{INFRA_ADDR['inet']}/24")},
        default_route={},
    )
    number = numbers(sites)
    ordered = sorted(sites, key=lambda s: number[s])
    lan_cables: list[Cable] = []
    site_hosts: list[str] = []
    for site in ordered:
        kind, n = sites[site], number[site]
        if kind == "public":
            site_hosts.append(site)
            p.addr[site] = f"198.18.0.{40 + n}"
            p.site_of[site] = site
            p.cables.append(Cable(site, "eth0", f"{p.addr[site]}/24", "inet", f"p-{site}", None, INET_BRIDGE))
            continue
        router = router_name(site)
        p.routers.append(router)
        p.site_of[router] = site
        p.addr[router] = f"198.18.0.{20 + n}"
        p.cables.append(Cable(router, "wan0", f"{p.addr[router]}/24", "inet", f"p-{router}", None, INET_BRIDGE))
        net = f"10.77.{n}" if kind in NAT_KINDS else f"198.19.{n}"
        p.lan_addr[router] = f"{net}.1"
        p.router_nft[router] = router_nft(kind)
        members = [site, f"{site}2"] if site in twins else [site]
        if len(members) > 1:
            p.bridges[router] = (LAN_BRIDGE, f"{net}.1/24")
        for i, host in enumerate(members):
            site_hosts.append(host)
            p.site_of[host] = site
            p.addr[host] = f"{net}.{10 + i}"
            p.default_route[host] = p.lan_addr[router]
            if len(members) > 1:
                lan_cables.append(Cable(host, "eth0", f"{p.addr[host]}/24", router, f"l-{host}", None, LAN_BRIDGE))
            else:
                lan_cables.append(Cable(host, "eth0", f"{p.addr[host]}/24", router, "lan0", f"{net}.1/24"))
        p.neighbour[site] = router
        p.neighbour[router] = site
        if len(members) > 1:
            p.neighbour[f"{site}2"] = router
        if kind == "firewall":
            on_inet = [*INFRA, *(router_name(s) for s in ordered if sites[s] != "public" and s != site)]
            on_inet += [s for s in ordered if sites[s] == "public"]
            p.routes += [(h, f"{net}.0/24", p.addr[router]) for h in on_inet]
    p.hosts += p.routers + site_hosts
    p.cables += lan_cables
    return p
