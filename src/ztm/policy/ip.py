"""The policy's network-mode parts (issue 17): the detail of a packet as the inbound filter names it
(`ztm.net.filter.detail_of`) and the `ip/` APP-PART patterns that match it.

Details (after `ip/`): `tcp:22`, `udp:53`, `tcp:*` / `udp:*` (a fragment after the first: its port is unknown),
`icmp` (ICMP and ICMPv6), `proto:N` (any other IP protocol number); a packet routed through the endpoint to its LAN
has the destination address first: `10.20.1.5/tcp:22`, `fd00:20::5/icmp`.

Patterns (after `ip/`): `*`, `tcp:PORTS`, `udp:PORTS` (PORTS: a number 1-65535, a range `A-B` or `*`), `icmp`,
`proto:N` (0-255, other than tcp, udp and icmp's numbers, which have their own forms); each may be preceded by a
CIDR or an address (`10.20.0.0/16/tcp:22`, `10.20.1.5/*`, `fd00:20::/64/udp:*`) for packets routed to that
destination. Without one a pattern covers only the endpoint's own mesh addresses; with one, only routed packets.
Only `*` and `tcp:*` (`udp:*`) cover a later fragment; a range, even 1-65535, does not (its port is unknown).

Pure: `ipaddress` is used here, never on the packet path (the filter memoises decisions per flow).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
PROTOS = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}
PATTERN_FORMS = (
    "ip/*, ip/tcp:PORTS, ip/udp:PORTS (PORTS: 22, 5000-5100 or *), ip/icmp, ip/proto:N, or a routed form with a "
    "CIDR first: ip/10.20.0.0/16/tcp:22, ip/10.20.0.0/16/*"
)
DETAIL_FORMS = "ip/tcp:PORT, ip/udp:PORT, ip/tcp:*, ip/udp:*, ip/icmp, ip/proto:N, or ip/ADDRESS/... when routed"


class IpError(ValueError):
    """An `ip/` pattern or detail that is not one of the accepted forms; the message says what is wrong."""


def _number(text: str, what: str, low: int, high: int) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not low <= int(text) <= high:
        raise IpError(f"{what} {text[:12]!r} is not a number from {low} to {high}")
    if text[0] == "0" and text != "0":
        raise IpError(f"{what} {text!r} has a leading zero: write {int(text)}")
    return int(text)


def _protocol(text: str, what: str) -> tuple[str, int]:
    """("proto", N) of "proto:N", refusing tcp's, udp's and icmp's numbers (their own forms say it)."""
    number = _number(text, what, 0, 255)
    for name, value in PROTOS.items():
        if value == number:
            form = "ip/icmp" if name.startswith("icmp") else f"ip/{name}:PORTS"
            raise IpError(f"protocol {number} is {name}: write {form}")
    return "proto", number


@dataclass(frozen=True)
class IpPattern:
    """A compiled `ip/` pattern: `network` None for the endpoint's own addresses; `proto` "" (any), "tcp", "udp",
    "icmp" or "proto" (`number`); `ports` (first, last) and `any_port` for tcp and udp."""

    network: IpNetwork | None
    proto: str
    ports: tuple[int, int] = (0, 65535)
    any_port: bool = True
    number: int = -1

    def matches(self, detail: str) -> bool:
        """True if this pattern covers the packet detail `detail` (False for a malformed one)."""
        try:
            address, proto, value = parse_detail(detail)
        except IpError:
            return False
        network = self.network
        if network is None:
            if address is not None:
                return False
        elif address is None or address.version != network.version or address not in network:
            return False
        if not self.proto:
            return True
        if proto != self.proto:
            return False
        if proto == "proto":
            return value == self.number
        if proto == "icmp":
            return True
        if value is None:  # a later fragment: its port is unknown
            return self.any_port
        return self.ports[0] <= value <= self.ports[1]


def _ports(text: str) -> tuple[tuple[int, int], bool]:
    if text == "*":
        return (0, 65535), True
    low, dash, high = text.partition("-")
    if not dash:
        port = _number(text, "port", 1, 65535)
        return (port, port), False
    first, last = _number(low, "port", 1, 65535), _number(high, "port", 1, 65535)
    if first > last:
        raise IpError(f"port range {text!r} runs backwards: write {last}-{first}")
    return (first, last), False


def _proto_pattern(text: str, network: IpNetwork | None) -> IpPattern:
    if text == "*":
        return IpPattern(network, "")
    if text == "icmp":
        return IpPattern(network, "icmp")
    name, colon, rest = text.partition(":")
    if colon and name in ("tcp", "udp"):
        ports, any_port = _ports(rest)
        return IpPattern(network, name, ports, any_port)
    if colon and name == "proto":
        return IpPattern(network, "proto", number=_protocol(rest, "protocol")[1])
    if text in ("tcp", "udp"):
        raise IpError(f"write ip/{text}:* for every {text.upper()} port, or ip/{text}:PORT")
    if text in ("icmpv6", "icmp6", "ipv6-icmp"):
        raise IpError("write ip/icmp: it covers ICMP and ICMPv6")
    raise IpError(f"{text[:40]!r} is not a protocol part: use {PATTERN_FORMS}")


def parse_pattern(text: str) -> IpPattern:
    """The pattern of an `ip/` part (the text after `ip/`); IpError saying what is wrong."""
    parts = text.split("/")
    if len(parts) == 1:
        return _proto_pattern(text, None)
    first = parts[0]
    try:
        if "%" in first:
            raise ValueError("a zone")
        address = ipaddress.ip_address(first)
    except ValueError:
        raise IpError(
            f"{first[:60]!r} is not an IP address or CIDR: a routed part is ip/CIDR/PROTO such as "
            f"ip/10.20.0.0/16/tcp:22 (use {PATTERN_FORMS})"
        ) from None
    if parts[1].isascii() and parts[1].isdigit():
        if len(parts) < 3:
            raise IpError(
                f"{text[:60]!r} says no protocol: write ip/{first}/{parts[1]}/* or ip/{first}/{parts[1]}/tcp:PORT"
            )
        cidr, rest = f"{first}/{parts[1]}", "/".join(parts[2:])
    else:
        cidr, rest = first, "/".join(parts[1:])
    try:
        network = ipaddress.ip_network(cidr, strict=True)
    except ValueError as exc:
        hint = ""
        if "host bits" in str(exc):
            hint = f": did you mean {ipaddress.ip_network(cidr, strict=False)}"
        elif not (parts[1].isdigit() and int(parts[1]) <= address.max_prefixlen):
            hint = f": the prefix length is 0 to {address.max_prefixlen}"
        raise IpError(f"{cidr[:60]!r} is not a CIDR such as 10.20.0.0/16 or fd00:20::/64{hint}") from None
    if "/" in rest:
        raise IpError(f"{rest[:40]!r} after the CIDR is not a protocol part: use {PATTERN_FORMS}")
    return _proto_pattern(rest, network)


@functools.lru_cache(maxsize=4096)
def parse_detail(detail: str) -> tuple[IpAddress | None, str, int | None]:
    """(routed destination or None, "tcp" | "udp" | "icmp" | "proto", port or protocol number; None for a later
    fragment's port and for icmp) of a packet detail; IpError if it is not one of the forms."""
    address: IpAddress | None = None
    what = detail
    head, slash, rest = detail.partition("/")
    if slash:
        try:
            if "%" in head:
                raise ValueError("a zone")
            address = ipaddress.ip_address(head)
        except ValueError:
            raise IpError(f"{head[:60]!r} is not an IP address: use {DETAIL_FORMS}") from None
        what = rest
    if what == "icmp":
        return address, "icmp", None
    name, colon, value = what.partition(":")
    if colon and name in ("tcp", "udp"):
        return address, name, None if value == "*" else _number(value, "port", 0, 65535)
    if colon and name == "proto":
        return (address, *_protocol(value, "protocol"))
    raise IpError(f"{what[:40]!r} is not a packet detail: use {DETAIL_FORMS}")
