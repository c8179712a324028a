"""What is asked for at an endpoint (`AppTarget`: "tunnel/tcp/pg", "proxy/10.0.0.5:5432", "terminal",
"files/shared/a", "files-write/users/ann/x", "app/chat", "ip/tcp:22", "ip/10.20.1.5/udp:53") and the APP-PART
patterns of a policy's `dst` entries that match them ("tunnel/*", "proxy/10.0.0.0/8:5000-5999", "files/shared/",
"ip/udp:5000-5100", "ip/10.20.0.0/16/*", ...).

A pattern is parsed once into a `Part` with a `matches(target)` test. Proxy hosts are matched with `ipaddress`: an IP
or CIDR pattern matches a target asked for by IP literal (an IPv4-mapped IPv6 address counts as its IPv4 address);
a name pattern (exact, or `*.suffix`) matches a target asked for by name, case-insensitively. File prefixes match at
`/` boundaries only, and never a path with empty, `.` or `..` names (such a path is matched only by `files/`,
`files/*` or `*`). Network-mode packets (kind "ip", `ztm.policy.ip`) are matched by protocol and port, and a packet
routed through the endpoint (its detail starts with the destination address) only by a part naming a CIDR that holds
that address: never by `*` nor by an `ip/` part without a CIDR, which cover the endpoint's own mesh addresses.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from dataclasses import dataclass

from ztm import validate
from ztm.errors import BadInput
from ztm.policy import ip

KINDS = ("tunnel", "proxy", "terminal", "files", "files-write", "app", "ip")
"""The kinds of app target, as `AppTarget.kind` and `Policy.decide_kind` take them."""
FORMS = (
    "tunnel/tcp/NAME, tunnel/udp/NAME, proxy/HOST:PORT, terminal, files/PATH, files-write/PATH, app/NAME or "
    "ip/[ADDRESS/]PROTO (e.g. tunnel/tcp/pg, proxy/10.0.0.5:5432, files/shared/notes, ip/tcp:22, "
    "ip/10.20.1.5/udp:53)"
)
PART_FORMS = (
    "*, tunnel/*, tunnel/tcp/NAME, tunnel/udp/NAME, tunnel/tcp/*, tunnel/udp/*, proxy/HOST:PORT (HOST: a name, "
    "*.suffix, an IP, a CIDR or *; PORT: a number, A-B or *), terminal, files/PATH-PREFIX, files-write/PATH-PREFIX, "
    "app/NAME, app/*, ip/* or ip/[CIDR/]PROTO (PROTO: tcp:PORT, udp:PORT, icmp, proto:N or *)"
)
_HOST_NAME = re.compile(r"(?=.{1,253}\.?$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_-]{1,63})*\.?")
_NUMERIC = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PartError(ValueError):
    """A pattern or target that is not one of the accepted forms; the message says what is wrong."""


@dataclass(frozen=True)
class AppTarget:
    """What is asked for at the place. `detail`: tunnel "tcp/NAME" or "udp/NAME"; proxy "HOST:PORT"; terminal "";
    files and files-write an absolute mesh path; app the app's name."""

    kind: str
    detail: str

    def __str__(self) -> str:
        if self.kind == "terminal":
            return "terminal"
        if self.kind in ("files", "files-write"):
            return f"{self.kind}{self.detail}"
        return f"{self.kind}/{self.detail}"


def parse_app_target(text: str) -> AppTarget:
    """An `AppTarget` from its text ("tunnel/tcp/pg", "terminal", "files/users/root/x", "proxy/db.lan:5432", ...);
    BadInput (one line, naming the accepted forms) otherwise."""
    try:
        return _target(text)
    except PartError as exc:
        raise BadInput(f"invalid app target {text[:80]!r}: {exc}") from None


def _target(text: str) -> AppTarget:
    kind, _, rest = text.partition("/")
    if kind == "terminal" and text == "terminal":
        return AppTarget("terminal", "")
    if kind == "tunnel":
        proto, _, name = rest.partition("/")
        if proto not in ("tcp", "udp") or not validate.NAME.fullmatch(name):
            raise PartError("a tunnel is tunnel/tcp/NAME or tunnel/udp/NAME (NAME: letters, digits, '.', '_', '-')")
        return AppTarget("tunnel", rest)
    if kind == "proxy":
        _host_port(rest)
        if _proxy_target(rest) is None:
            raise PartError("a proxy target is one HOST:PORT, HOST a name or an IP (e.g. proxy/db.lan:5432)")
        return AppTarget("proxy", rest)
    if kind in ("files", "files-write") and "/" in text:
        path = "/" + rest
        if not canonical(path):
            raise PartError("a file path has no empty, '.' or '..' names and no control characters")
        return AppTarget(kind, path)
    if kind == "app":
        if not validate.APP_NAME.fullmatch(rest):
            raise PartError("an app is app/NAME (NAME: lowercase letters, digits and '-')")
        return AppTarget("app", rest)
    if kind == "ip":
        try:
            ip.parse_detail(rest)
        except ip.IpError as exc:
            raise PartError(str(exc)) from None
        return AppTarget("ip", rest)
    raise PartError(f"use {FORMS}")


def canonical(path: str) -> bool:
    """True for an absolute path without empty, '.' or '..' names (a trailing '/' allowed) or control characters."""
    if not path.startswith("/") or any(ord(c) < 0x20 or c == "\x7f" for c in path):
        return False
    names = path[1:].split("/")
    if names[-1] == "":
        names.pop()
    return all(name not in ("", ".", "..") for name in names)


def _host_port(text: str) -> tuple[str, str]:
    """HOST and PORT of "HOST:PORT" (the last ':' splits, so "fd00::/8:443" is fd00::/8 port 443; "[::1]:22" too).
    Checks the port (1-65535, "A-B" or "*") but not the host."""
    host, colon, port = text.rpartition(":")
    if not colon or not host:
        raise PartError("a proxy target is proxy/HOST:PORT (e.g. proxy/db.lan:5432 or proxy/10.0.0.0/8:*)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    _ports(port)
    return host, port


def _port(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 5 or not 1 <= int(text) <= 65535:
        raise PartError(f"port {text[:12]!r} is not a number from 1 to 65535")
    if text[0] == "0":
        raise PartError(f"port {text!r} has a leading zero: write {int(text)}")
    return int(text)


def host_name(text: str) -> bool:
    """True for a DNS host name (letters, digits, '_', '-' in dot-separated labels, an optional final dot) that no
    resolver reads as an IP address: the last label is not a number (inet_aton takes "10.5", "0x0a000005",
    "012.0.0.5" and "167772165" as addresses, so those are neither names nor, unless canonical, IPs here)."""
    if not _HOST_NAME.fullmatch(text):
        return False
    return not _NUMERIC.fullmatch(text.rstrip(".").rpartition(".")[2])


def _ports(text: str) -> tuple[int, int]:
    if text == "*":
        return 1, 65535
    low, dash, high = text.partition("-")
    if not dash:
        port = _port(text)
        return port, port
    first, last = _port(low), _port(high)
    if first > last:
        raise PartError(f"port range {text!r} runs backwards: write {last}-{first}")
    return first, last


def _ip(text: str) -> IpAddress | None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def _proxy_target(detail: str) -> tuple[IpAddress | None, str, int] | None:
    """(IP or None, lowercase name without a trailing dot, port) of a proxy target's detail; None if malformed."""
    try:
        host, port = _host_port(detail)
        first, last = _ports(port)
    except PartError:
        return None
    if first != last:
        return None
    address = _ip(host)
    if address is not None:
        return address, "", first
    if not host_name(host):
        return None
    return None, host.lower().rstrip("."), first


class Part:
    """A compiled APP-PART pattern: the text as written, the kinds it can match, and `matches`."""

    kinds: frozenset[str] = frozenset(KINDS)

    def __init__(self, text: str) -> None:
        self.text = text

    def matches(self, what: AppTarget) -> bool:
        return what.kind != "ip" or "/" not in what.detail  # `*` covers the mesh addresses, not a routed LAN

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.text!r})"


class _Tunnel(Part):
    kinds = frozenset({"tunnel"})

    def __init__(self, text: str, proto: str, name: str) -> None:
        super().__init__(text)
        self.proto, self.name = proto, name  # "" = any

    def matches(self, what: AppTarget) -> bool:
        if what.kind != "tunnel":
            return False
        proto, _, name = what.detail.partition("/")
        return (not self.proto or proto == self.proto) and (not self.name or name == self.name)


class _Terminal(Part):
    kinds = frozenset({"terminal"})

    def matches(self, what: AppTarget) -> bool:
        return what.kind == "terminal"


class _App(Part):
    kinds = frozenset({"app"})

    def __init__(self, text: str, name: str) -> None:
        super().__init__(text)
        self.name = name  # "" = any

    def matches(self, what: AppTarget) -> bool:
        return what.kind == "app" and (not self.name or what.detail == self.name)


class _Files(Part):
    def __init__(self, text: str, kind: str, prefix: str | None) -> None:
        super().__init__(text)
        self.kind = kind
        self.kinds = frozenset({kind})
        self.prefix = prefix  # None = every path; else "/a/b" (no trailing '/')

    def matches(self, what: AppTarget) -> bool:
        if what.kind != self.kind:
            return False
        if self.prefix is None:
            return True
        path = what.detail
        return canonical(path) and (path == self.prefix or path.startswith(self.prefix + "/"))


class _Proxy(Part):
    kinds = frozenset({"proxy"})

    def __init__(self, text: str, host: str, ports: tuple[int, int]) -> None:
        super().__init__(text)
        self.ports = ports
        self.any_host = host == "*"
        self.network: IpNetwork | None = None
        self.name = ""
        self.suffix = ""
        if self.any_host:
            return
        address = _ip(host)
        if address is not None:
            self.network = ipaddress.ip_network(address)
        elif "/" in host:
            try:
                self.network = ipaddress.ip_network(host, strict=True)
            except ValueError as exc:
                raise PartError(f"{host!r} is not a CIDR such as 10.0.0.0/8 or fd00::/8 ({exc})") from None
        elif host.startswith("*.") and host_name(host[2:]):
            self.suffix = "." + host[2:].lower().rstrip(".")
        elif host_name(host):
            self.name = host.lower().rstrip(".")
        else:
            raise PartError(
                f"proxy host {host[:80]!r} is not a host name, *.suffix, an IP, a CIDR or * (an IP is written in "
                "full: 10.0.0.5, not 10.5 or 012.0.0.5)"
            )

    def matches(self, what: AppTarget) -> bool:
        if what.kind != "proxy":
            return False
        target = _proxy_target(what.detail)
        if target is None:
            return False
        address, name, port = target
        if not self.ports[0] <= port <= self.ports[1]:
            return False
        if self.any_host:
            return True
        if address is not None:
            return self.network is not None and address in self.network
        if self.suffix:
            return name.endswith(self.suffix)
        return bool(self.name) and name == self.name


class _Ip(Part):
    kinds = frozenset({"ip"})

    def __init__(self, text: str, pattern: ip.IpPattern) -> None:
        super().__init__(text)
        self.pattern = pattern

    def matches(self, what: AppTarget) -> bool:
        return what.kind == "ip" and self.pattern.matches(what.detail)


def parse_part(text: str) -> Part:
    """The compiled APP-PART pattern of a `dst` entry; PartError saying the accepted forms otherwise."""
    if text == "*":
        return Part(text)
    if text == "terminal":
        return _Terminal(text)
    kind, slash, rest = text.partition("/")
    if kind == "tunnel" and slash:
        if rest == "*":
            return _Tunnel(text, "", "")
        proto, _, name = rest.partition("/")
        if proto not in ("tcp", "udp"):
            raise PartError(f"a tunnel part is tunnel/*, tunnel/tcp/NAME or tunnel/udp/NAME, not {text[:80]!r}")
        if name != "*" and not validate.NAME.fullmatch(name):
            raise PartError(f"tunnel name {name[:80]!r}: use letters, digits, '.', '_' or '-', or * for any")
        return _Tunnel(text, proto, "" if name == "*" else name)
    if kind == "proxy" and slash:
        if rest == "*":
            return _Proxy(text, "*", (1, 65535))
        host, port = _host_port(rest)
        return _Proxy(text, host, _ports(port))
    if kind in ("files", "files-write") and slash:
        if rest in ("", "*"):
            return _Files(text, kind, None)
        prefix = "/" + rest.removesuffix("/*")
        if "*" in prefix or not canonical(prefix):
            raise PartError(
                f"file prefix {text[:80]!r}: write files/PATH-PREFIX such as files/shared/ (no '*' but a final "
                "one, no empty, '.' or '..' names)"
            )
        return _Files(text, kind, prefix.removesuffix("/"))
    if kind == "ip" and slash:
        try:
            return _Ip(text, ip.parse_pattern(rest))
        except ip.IpError as exc:
            raise PartError(str(exc)) from None
    if kind == "app" and slash:
        if rest == "*":
            return _App(text, "")
        if not validate.APP_NAME.fullmatch(rest):
            raise PartError(f"app name {rest[:80]!r}: use lowercase letters, digits and '-', or * for any")
        return _App(text, rest)
    raise PartError(f"unknown app part {text[:80]!r}: use {PART_FORMS}")
