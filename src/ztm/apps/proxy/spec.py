"""Proxy configuration and routing as data (no I/O).

* `Destination`: where a client wants to go (a domain name or an IP literal, and a port), and the stream service name
  that carries it to an exit (`tcp/HOST/PORT`, `udp/HOST/PORT`).
* `TargetSpec`: `DOMAIN` (exactly that name), `*.DOMAIN` (any name below it), `CIDR` or a bare IP, `*` (anything).
* `TargetSet`: an exit's targets minus its exclusions; how it is published to the mesh (`target/KIND/VALUE`) and read
  back by entrances, and the entrance's routing question "may this exit serve that destination?".
* `Rule`: allow or deny a user (or `*`) a target; `decide` applies a rule list, first match wins, no match allows.
  A deny rule on a name also denies that host by address (the exit resolves the names `deny_names` lists and
  passes their addresses in); a deny rule on `*.DOMAIN` also denies addresses given without a name.
* `Credentials` (what a client sent) and `ProxyAuth` (the entrance's user name and scrypt-hashed password).
* Refusal reasons: an exit refuses a stream with `CODE: message`, so the entrance can answer its client in the
  client's own protocol (a SOCKS5 reply code, an HTTP status).

Every parse failure is a `BadInput` naming the value and the accepted form.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ztm import validate
from ztm.errors import BadInput

IP = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
NamedAddresses = Mapping[str, frozenset[IP]]
"""A deny rule's name -> the addresses it resolves to at the exit."""

MAX_HOST = 118
"""Longest destination host: a service name holds at most 128 characters (`tcp/` + host + `/65535`)."""
MAX_SPECS = 100
"""Targets and exclusions an exit may have, each (the hub takes at most 256 services per app)."""
MAX_RULES = 200
ANY = "*"

_LABEL = r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DOMAIN = re.compile(rf"{_LABEL}(\.{_LABEL})*")
PROTOCOLS = ("tcp", "udp")


def parse_ip(text: str) -> IP | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def domain(text: str) -> str | None:
    """`text` as a normalised domain name (lowercase, no trailing dot), or None if it is not one."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253 or not name.isascii() or not _DOMAIN.fullmatch(name):
        return None
    return name.lower()


# ------------------------------------------------------------------------------------------------- destinations


@dataclass(frozen=True)
class Destination:
    host: str
    """A normalised domain name, or an IP address in its compressed text form."""
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def ip(self) -> IP | None:
        return parse_ip(self.host)

    @property
    def name(self) -> str | None:
        """The domain name, or None for an IP literal."""
        return None if self.ip is not None else self.host

    @classmethod
    def make(cls, host: str, port: int) -> Destination:
        if not 0 < port < 65536:
            raise BadInput(f"invalid port {port}: expected 1 to 65535")
        ip = parse_ip(host)
        if ip is not None:
            if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            return cls(str(ip), port)
        name = domain(host)
        if name is None:
            raise BadInput(f"invalid host name {host[:80]!r}: letters, digits, '-', '_' and dots")
        if len(name) > MAX_HOST:
            raise BadInput(f"host name of {len(name)} characters: at most {MAX_HOST} pass through the mesh")
        return cls(name, port)

    @classmethod
    def parse(cls, text: str) -> Destination:
        """`HOST:PORT` or `[V6]:PORT` (an HTTP CONNECT target, a Host header with its port)."""
        if text.startswith("["):
            host, sep, port = text[1:].partition("]:")
            if not sep or parse_ip(host) is None or ":" not in host:
                raise BadInput(f"invalid address {text[:80]!r}: expected HOST:PORT or [IPv6]:PORT")
        else:
            host, sep, port = text.rpartition(":")
            if not sep or ":" in host:
                raise BadInput(f"invalid address {text[:80]!r}: expected HOST:PORT or [IPv6]:PORT")
        if not (port.isascii() and port.isdigit() and len(port) <= 5):
            raise BadInput(f"invalid port in {text[:80]!r}: expected 1 to 65535")
        return cls.make(host, int(port))

    def service(self, protocol: str) -> str:
        return f"{protocol}/{self.host}/{self.port}"

    @classmethod
    def from_service(cls, service: str) -> tuple[str, Destination]:
        protocol, _, rest = service.partition("/")
        host, _, port = rest.rpartition("/")
        if protocol not in PROTOCOLS or not host or not (port.isascii() and port.isdigit() and len(port) <= 5):
            raise BadInput(f"invalid proxy service {service[:140]!r}: expected tcp/HOST/PORT or udp/HOST/PORT")
        return protocol, cls.make(host, int(port))


# ------------------------------------------------------------------------------------------------------ targets

KINDS = ("any", "domain", "suffix", "cidr")


@dataclass(frozen=True)
class TargetSpec:
    kind: str
    """`any`, `domain` (exact name), `suffix` (names below it), `cidr`."""
    value: str

    def __str__(self) -> str:
        return {"any": ANY, "suffix": f"*.{self.value}"}.get(self.kind, self.value)

    @classmethod
    def parse(cls, text: object, what: str = "target") -> TargetSpec:
        hint = "expected DOMAIN, *.DOMAIN, an IP address, a CIDR such as 10.0.0.0/8, or *"
        if not isinstance(text, str) or not text.strip():
            raise BadInput(f"{what}: empty; {hint}")
        text = text.strip()
        if text == ANY:
            return cls("any", "")
        if text.startswith("*."):
            name = domain(text[2:])
            if name is None:
                raise BadInput(f"{what} {text[:80]!r}: not a domain after '*.'; {hint}")
            return cls("suffix", name)
        if "/" in text or parse_ip(text) is not None:
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise BadInput(f"{what} {text[:80]!r}: not an IP address or CIDR; {hint}") from None
            return cls("cidr", str(network))
        name = domain(text)
        if name is None:
            raise BadInput(f"{what} {text[:80]!r}: {hint}")
        return cls("domain", name)

    @property
    def network(self) -> Network | None:
        return ipaddress.ip_network(self.value) if self.kind == "cidr" else None

    def matches_name(self, name: str) -> bool:
        if self.kind == "any":
            return True
        if self.kind == "domain":
            return name == self.value
        if self.kind == "suffix":
            return name.endswith("." + self.value)
        return False

    def matches_ip(self, ip: IP) -> bool:
        if self.kind == "any":
            return True
        network = self.network
        return network is not None and network.version == ip.version and ip in network

    def matches(self, name: str | None, ip: IP | None) -> bool:
        return (name is not None and self.matches_name(name)) or (ip is not None and self.matches_ip(ip))

    def service(self, role: str) -> str:
        return f"{role}/{self.kind}" + (f"/{self.value}" if self.value else "")

    @classmethod
    def from_service(cls, service: str) -> tuple[str, TargetSpec] | None:
        """(role, spec) from a published `target/...` or `exclusion/...`; None for anything else."""
        role, _, rest = service.partition("/")
        kind, _, value = rest.partition("/")
        if role not in ("target", "exclusion") or kind not in KINDS:
            return None
        try:
            spec = cls.parse({"any": ANY, "suffix": f"*.{value}"}.get(kind, value))
        except BadInput:
            return None
        return (role, spec) if spec.kind == kind else None


def specs(values: Iterable[object], what: str) -> tuple[TargetSpec, ...]:
    return tuple(dict.fromkeys(TargetSpec.parse(v, what) for v in values))


@dataclass(frozen=True)
class TargetSet:
    """What an exit serves: its targets minus its exclusions."""

    targets: tuple[TargetSpec, ...] = ()
    exclusions: tuple[TargetSpec, ...] = ()

    def allows(self, name: str | None, ip: IP | None) -> bool:
        """May this exit connect for `name` (None for an IP literal), at address `ip` (None: not resolved yet)?"""
        hit = any(t.matches(name, ip) for t in self.targets)
        return hit and not any(e.matches(name, ip) for e in self.exclusions)

    def route(self, dest: Destination) -> int:
        """The entrance's view: 2 = the exit serves `dest`, 1 = it may (a name it would resolve into one of its
        networks), 0 = it does not."""
        ip = dest.ip
        if ip is not None:
            return 2 if self.allows(None, ip) else 0
        name = dest.host
        if any(e.matches_name(name) for e in self.exclusions):
            return 0
        if any(t.matches_name(name) for t in self.targets):
            return 2
        return 1 if any(t.kind == "cidr" for t in self.targets) else 0

    def services(self) -> list[str]:
        return [t.service("target") for t in self.targets] + [e.service("exclusion") for e in self.exclusions]

    @classmethod
    def from_services(cls, services: Iterable[str]) -> TargetSet:
        targets: list[TargetSpec] = []
        exclusions: list[TargetSpec] = []
        for service in services:
            found = TargetSpec.from_service(service)
            if found is not None:
                (targets if found[0] == "target" else exclusions).append(found[1])
        return cls(tuple(targets), tuple(exclusions))


# -------------------------------------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class Rule:
    action: str
    """`allow` or `deny`."""
    user: str
    """A user name or `*`."""
    target: TargetSpec

    def __str__(self) -> str:
        return f"{self.action} {self.user} {self.target}"

    def matches(self, user: str, name: str | None, ip: IP | None, named: NamedAddresses | None = None) -> bool:
        """Does the rule apply to `user` going to `name` (None: an IP literal) at `ip`? A deny rule on a name also
        covers that host by address: the addresses the exit resolved the name to (`named`); a deny rule on
        `*.DOMAIN`, whose names cannot be resolved, covers every address given without a name."""
        if self.user not in (ANY, user):
            return False
        if self.target.matches(name, ip):
            return True
        if self.action != "deny" or ip is None:
            return False
        if self.target.kind == "domain":
            return ip in (named or {}).get(self.target.value, frozenset())
        return self.target.kind == "suffix" and name is None

    def to_json(self) -> dict[str, str]:
        return {"action": self.action, "user": self.user, "target": str(self.target)}

    @classmethod
    def parse(cls, body: object) -> Rule:
        if not isinstance(body, dict):
            raise BadInput("a rule must be an object {action, user, target}")
        action = body.get("action")
        if action not in ("allow", "deny"):
            raise BadInput(f"rule action {action!r}: expected allow or deny")
        user = body.get("user")
        if not isinstance(user, str) or not (user == ANY or validate.USER.fullmatch(user)):
            raise BadInput(f"rule user {user!r}: expected a user name (lowercase letters, digits, . _ -) or *")
        return cls(action, user, TargetSpec.parse(body.get("target"), "rule target"))


def parse_rules(value: object) -> tuple[Rule, ...]:
    items = validate.list_of(value, dict, "rules")
    if len(items) > MAX_RULES:
        raise BadInput(f"rules: at most {MAX_RULES}")
    return tuple(Rule.parse(i) for i in items)


def deny_names(rules: Sequence[Rule], user: str) -> list[str]:
    """The names of the deny rules that apply to `user`: the exit resolves them (`NamedAddresses`) so that the same
    hosts are denied by address too."""
    return list(dict.fromkeys(r.target.value for r in rules if r.action == "deny" and r.target.kind == "domain"
                              and r.user in (ANY, user)))  # fmt: skip


def decide(
    rules: Sequence[Rule], user: str, name: str | None, ip: IP | None, named: NamedAddresses | None = None
) -> tuple[bool, int | None]:
    """(allowed, 1-based number of the deciding rule or None): the first rule that matches decides; none allows.
    `named`: the addresses of the names in `deny_names`, as the exit resolved them."""
    for i, rule in enumerate(rules, 1):
        if rule.matches(user, name, ip, named):
            return rule.action == "allow", i
    return True, None


def decide_by_name(rules: Sequence[Rule], user: str, name: str) -> tuple[bool, int] | None:
    """What `decide` answers for `name` whatever it resolves to, or None when a network rule may come first (the
    exit must resolve the name to know). Lets an exit refuse a denied name without looking it up."""
    for i, rule in enumerate(rules, 1):
        if rule.user not in (ANY, user):
            continue
        if rule.target.kind == "cidr":
            return None
        if rule.target.matches_name(name):
            return rule.action == "allow", i
    return None


# ----------------------------------------------------------------------------------------------------- refusals

DENIED = "denied"
"""A rule or the exit's targets do not allow it."""
NO_EXIT = "no-exit"
"""No exit of the mesh offers the destination (at the entrance)."""
UNRESOLVED = "unresolved"
UNREACHABLE = "unreachable"
NET_UNREACHABLE = "net-unreachable"
REFUSED = "refused"
TIMEOUT = "timeout"
FAILED = "failed"
CODES = (DENIED, NO_EXIT, UNRESOLVED, UNREACHABLE, NET_UNREACHABLE, REFUSED, TIMEOUT, FAILED)


def refusal(code: str, message: str) -> str:
    return f"{code}: {message}"


def refusal_code(reason: str) -> str:
    code, sep, _ = reason.partition(": ")
    return code if sep and code in CODES else FAILED


def view_config(
    listen: str | None, targets: TargetSet, rules: Sequence[Rule], auth: ProxyAuth | None = None
) -> dict[str, Any]:
    return {
        "listen": listen,
        "auth": auth.view() if auth is not None else None,
        "targets": [str(t) for t in targets.targets],
        "exclusions": [str(e) for e in targets.exclusions],
        "rules": [r.to_json() for r in rules],
    }


class Refused(Exception):
    """A proxied connection cannot be made; `code` is one of `CODES`, `message` says why in one line."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def reason(self) -> str:
        return refusal(self.code, self.message)

    @classmethod
    def from_reason(cls, reason: str) -> Refused:
        code = refusal_code(reason)
        return cls(code, reason.partition(": ")[2] if reason.startswith(code + ": ") else reason)


# ------------------------------------------------------------------------------------------------ authentication

MAX_CREDENTIAL = 255
"""Longest user name and password, in UTF-8 bytes (RFC 1929 gives each one length byte)."""
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1
"""scrypt cost: about 16 MiB and a few tens of milliseconds per check (entrances cache successful checks)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Credentials:
    """A user name and password as a client sent them (bytes: neither RFC 1929 nor Basic pins an encoding)."""

    user: bytes
    password: bytes

    def __repr__(self) -> str:  # never the password, not even in a traceback
        return f"Credentials(user={self.user!r}, password=...)"


def check_credential(value: object, what: str) -> str:
    """A user name (`what` = "user", no ':') or password: 1 to 255 UTF-8 bytes, no control characters."""
    if not isinstance(value, str) or not value:
        raise BadInput(f"proxy auth {what}: expected a non-empty string")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > MAX_CREDENTIAL:
        raise BadInput(f"proxy auth {what}: {size} bytes, at most {MAX_CREDENTIAL} (UTF-8)")
    if _CONTROL.search(value) or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise BadInput(f"proxy auth {what}: control characters are not allowed")
    if what == "user" and (":" in value or value != value.strip()):
        raise BadInput("proxy auth user: no ':' and no leading or trailing spaces (HTTP Basic separates with ':')")
    return value


@dataclass(frozen=True, repr=False)
class ProxyAuth:
    """The credentials an entrance requires: a user name and the scrypt hash of the password, with its salt."""

    user: str
    salt: bytes
    digest: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P

    def __repr__(self) -> str:
        return f"ProxyAuth(user={self.user!r})"

    @classmethod
    def make(cls, user: object, password: object) -> ProxyAuth:
        user = check_credential(user, "user")
        password = check_credential(password, "password")
        salt = secrets.token_bytes(16)
        return cls(user, salt, _scrypt(password.encode(), salt, SCRYPT_N, SCRYPT_R, SCRYPT_P))

    def verify(self, creds: Credentials) -> bool:
        """Slow on purpose (scrypt): run it off the event loop. The hash is computed whatever the user name, and
        both comparisons are constant-time, so the answer's timing tells nothing about either."""
        if len(creds.password) > MAX_CREDENTIAL or len(creds.user) > MAX_CREDENTIAL:
            return False
        digest = _scrypt(creds.password, self.salt, self.n, self.r, self.p)
        same_user = hmac.compare_digest(creds.user, self.user.encode())
        return hmac.compare_digest(digest, self.digest) & same_user

    def view(self) -> dict[str, str]:
        return {"user": self.user, "password": "set"}

    def to_json(self) -> dict[str, Any]:
        return {"user": self.user, "kdf": "scrypt", "n": self.n, "r": self.r, "p": self.p,
                "salt": self.salt.hex(), "hash": self.digest.hex()}  # fmt: skip

    @classmethod
    def from_json(cls, value: object) -> ProxyAuth:
        if not isinstance(value, dict) or value.get("kdf") != "scrypt":
            raise BadInput("stored proxy auth: expected an scrypt record")
        try:
            n, r, p = (int(value[k]) for k in ("n", "r", "p"))
            salt, digest = bytes.fromhex(str(value["salt"])), bytes.fromhex(str(value["hash"]))
        except (KeyError, TypeError, ValueError):
            raise BadInput("stored proxy auth: malformed scrypt record") from None
        if not (2 <= n <= 1 << 20 and n & (n - 1) == 0 and 1 <= r <= 32 and 1 <= p <= 16 and salt and digest):
            raise BadInput("stored proxy auth: scrypt parameters out of range")
        return cls(check_credential(value.get("user"), "user"), salt, digest, n, r, p)


def _scrypt(password: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, maxmem=256 * r * (n + p + 2), dklen=32)
