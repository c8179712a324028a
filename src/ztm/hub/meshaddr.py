"""Mesh addresses and subnet routes (issue 17), without I/O: the mesh's IPv4 range and its IPv6 ULA /48, the
allocation of endpoint addresses, and the validation of the CIDRs endpoints advertise.

* The range is an IPv4 network of prefix 8..24 (`DEFAULT_RANGE` unless `--mesh-range` says otherwise at the mesh's
  creation); the IPv6 prefix is `fd` + the first 40 bits of sha256(mesh id): a /48 no other mesh is likely to share.
* An endpoint's address is the lowest free one of the range, never the network, broadcast or first host address
  (`.1`: kept for future use); its IPv6 address is the ULA prefix with the IPv4 address in the low 32 bits.
* A route is the network address of an IPv4 prefix 8..32 or IPv6 prefix 16..128 that overlaps neither the mesh's
  ranges nor loopback, link-local, multicast or the default route (exit nodes are a later issue).
"""

from __future__ import annotations

import hashlib
import ipaddress
import random
import socket
from collections.abc import Collection, Iterable

from ztm.errors import BadInput

DEFAULT_RANGE = "100.64.0.0/10"
MAX_ROUTES = 64
"""Routes (approved or pending) one endpoint may advertise."""
MAX_CIDR_TEXT = 64
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_range(text: object, what: str = "--mesh-range") -> ipaddress.IPv4Network:
    """The mesh's IPv4 range from `text` (`100.64.0.0/10`); `BadInput` (one line) otherwise."""
    if not isinstance(text, str) or "/" not in text:
        raise BadInput(f"{what} must be an IPv4 network with a prefix, e.g. {DEFAULT_RANGE}")
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise BadInput(f"{what} {text!r} is not an IPv4 network; e.g. {DEFAULT_RANGE}") from None
    if not isinstance(net, ipaddress.IPv4Network):
        raise BadInput(f"{what} must be IPv4 (the IPv6 range is derived from the mesh id); e.g. {DEFAULT_RANGE}")
    if not 8 <= net.prefixlen <= 24:
        raise BadInput(f"{what} {text} has prefix /{net.prefixlen}; give a prefix from /8 to /24")
    if str(net) != text.strip():
        raise BadInput(f"{what} {text} has host bits set; did you mean {net}")
    return net


def ula48(mesh_id: str) -> ipaddress.IPv6Network:
    """The mesh's IPv6 prefix: `fd` + the first 40 bits of sha256(mesh id), a /48."""
    digest = hashlib.sha256(mesh_id.encode()).digest()
    prefix = bytes([0xFD]) + digest[:5] + bytes(10)
    return ipaddress.IPv6Network((prefix, 48))


def ip6_of(prefix6: ipaddress.IPv6Network, ip4: str) -> str:
    """The endpoint's IPv6 address: the ULA prefix with its IPv4 address in the low 32 bits."""
    return str(ipaddress.IPv6Address(int(prefix6.network_address) | int(ipaddress.IPv4Address(ip4))))


def first_free(net: ipaddress.IPv4Network, used: Collection[str], *, anywhere: bool = False) -> str | None:
    """The lowest address of `net` that is not in `used` and is neither the network, broadcast nor first host
    address (`anywhere`: a free one at random, if one of 64 draws finds one); None when the range is full."""
    start, end = int(net.network_address) + 2, int(net.broadcast_address)
    taken = {n for n in map(_as_int, used) if start <= n < end}  # 10,000 endpoints: ~8 ms (ipaddress: ~130)
    if anywhere and end > start:
        for _ in range(64):
            candidate = random.randrange(start, end)
            if candidate not in taken:
                return str(ipaddress.IPv4Address(candidate))
    for candidate in range(start, end):
        if candidate not in taken:
            return str(ipaddress.IPv4Address(candidate))
    return None


def capacity(net: ipaddress.IPv4Network) -> int:
    """How many endpoint addresses the range holds."""
    return max(0, net.num_addresses - 3)


def _as_int(address: str) -> int:
    """A dotted-quad IPv4 address as an integer (-1 for anything else): cheaper than `ipaddress` by far."""
    try:
        packed = socket.inet_pton(socket.AF_INET, address)
    except (OSError, TypeError):
        return -1
    return int.from_bytes(packed, "big")


_FORBIDDEN: list[tuple[Network, str]] = [
    (ipaddress.ip_network("127.0.0.0/8"), "loopback"),
    (ipaddress.ip_network("169.254.0.0/16"), "link-local"),
    (ipaddress.ip_network("224.0.0.0/4"), "multicast"),
    (ipaddress.ip_network("::1/128"), "loopback"),
    (ipaddress.ip_network("fe80::/10"), "link-local"),
    (ipaddress.ip_network("ff00::/8"), "multicast"),
    (ipaddress.ip_network("0.0.0.0/8"), "the unspecified network"),
    (ipaddress.ip_network("::ffff:0:0/96"), "IPv4-mapped"),
]


def parse_route(text: object, mesh4: ipaddress.IPv4Network, mesh6: ipaddress.IPv6Network) -> str:
    """A route CIDR as advertised (`10.20.0.0/16`), normalised; `BadInput` (one line saying what is wrong and
    how to fix it) for anything else."""
    if not isinstance(text, str) or not text:
        raise BadInput("a route is a CIDR string, e.g. 10.20.0.0/16")
    if len(text) > MAX_CIDR_TEXT or "/" not in text:
        raise BadInput(f"route {text[:MAX_CIDR_TEXT]!r} is not a CIDR; give a network with a prefix, e.g. 10.20.0.0/16")
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise BadInput(f"route {text!r} is not a CIDR; give a network with a prefix, e.g. 10.20.0.0/16") from None
    if net.prefixlen == 0:
        raise BadInput(
            f"route {text} is a default route; exit nodes (routing all traffic) are a later issue: advertise the "
            "networks behind this endpoint instead"
        )
    low = 8 if net.version == 4 else 16
    if net.prefixlen < low:
        high = 32 if net.version == 4 else 128
        raise BadInput(
            f"route {text} has prefix /{net.prefixlen}; an IPv{net.version} route has a prefix /{low}..{high}"
        )
    host = ipaddress.ip_interface(text.strip())
    if host.ip != net.network_address:
        raise BadInput(f"route {text} has host bits set; did you mean {net}")
    mesh: Network = mesh4 if net.version == 4 else mesh6
    if net.overlaps(mesh):
        raise BadInput(f"route {net} overlaps the mesh range {mesh}; advertise a network outside it")
    for bad, why in _FORBIDDEN:
        if net.version == bad.version and net.overlaps(bad):
            raise BadInput(f"route {net} overlaps {bad} ({why}); advertise a LAN's network instead")
    return str(net)


def parse_routes(values: object, mesh4: ipaddress.IPv4Network, mesh6: ipaddress.IPv6Network) -> list[str]:
    """A request's list of CIDRs (1..`MAX_ROUTES`), each checked, duplicates dropped, in the order given."""
    if not isinstance(values, list) or not values:
        raise BadInput('give a list of CIDRs, e.g. ["10.20.0.0/16"]')
    if len(values) > MAX_ROUTES:
        raise BadInput(f"{len(values)} routes in one request; an endpoint advertises at most {MAX_ROUTES}")
    out: list[str] = []
    for value in values:
        cidr = parse_route(value, mesh4, mesh6)
        if cidr not in out:
            out.append(cidr)
    return out


def sort_key(cidr: str) -> tuple[int, int, int]:
    """Routes listed IPv4 first, then by address and prefix."""
    net = ipaddress.ip_network(cidr)
    return (net.version, int(net.network_address), net.prefixlen)


def sorted_cidrs(cidrs: Iterable[str]) -> list[str]:
    return sorted(cidrs, key=sort_key)
