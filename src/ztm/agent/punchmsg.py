"""Punch messages of NAT traversal and what an endpoint accepts in them (sans-IO: no sockets here).

Two endpoints that want a direct channel but cannot dial each other's listener exchange candidates through an
end-to-end call (`punch`, `ztm.agent.peercall`: the hub relays it sealed, the callee knows the caller from its
certificate), then both `connect()` from their punch port to the other's candidates at once (TCP simultaneous open,
`ztm.agent.punch`). PROTOCOL.md section 13 has the exchange; this module has the messages and the rules:

    {"v": 1, "id": "NONCE", "candidates": [{"kind": "lan" | "reflexive", "ip": "A.B.C.D", "port": N}, ...]}

the offer (entrance to exit) and the answer (exit to entrance, same id) have this one shape.

Candidates come from a peer, which may lie (a member trying to use this endpoint to probe its LAN or to send SYNs to
a third party). So `plausible` keeps only what the peer could have: at most `MAX_CANDIDATES`, ports from `MIN_PORT`
(the ephemeral and NAT ranges: no privileged service is ever a target), never loopback, link-local, multicast,
unspecified or reserved addresses; a peer's LAN candidate only when the peer sits behind the same public address as
this endpoint (same NAT: the LAN is shared) or when it is the peer's public address itself (a host without NAT).
`RateLimit` bounds how often a peer (and all peers together) can make this endpoint punch.
"""

from __future__ import annotations

import ipaddress
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ztm.errors import BadInput

VERSION = 1
MAX_CANDIDATES = 4
"""Candidates per message at most: one reflexive (the hub's view), LAN addresses, a `--direct-announce` one."""
MIN_PORT = 1024
KINDS = ("lan", "reflexive")
_NONCE_RX = re.compile(r"[0-9a-f]{16,64}")


@dataclass(frozen=True)
class Candidate:
    """An address where a peer's punch port may be reached: `lan` (its own interface address) or `reflexive` (the
    address and port its hub saw the punch port come from: its NAT mapping)."""

    kind: str
    ip: str
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.port)

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "ip": self.ip, "port": self.port}


@dataclass(frozen=True)
class Punch:
    """An offer or an answer."""

    id: str
    candidates: tuple[Candidate, ...]

    def to_json(self) -> dict[str, Any]:
        return {"v": VERSION, "id": self.id, "candidates": [c.to_json() for c in self.candidates]}

    @property
    def public_ip(self) -> str | None:
        """The peer's address as its hub sees it (its reflexive candidate's), if it sent one."""
        return next((c.ip for c in self.candidates if c.kind == "reflexive"), None)


def parse(value: object) -> Punch:
    """An offer or answer from a peer; BadInput (one line: what is wrong) if it is not one."""
    if not isinstance(value, dict):
        raise BadInput('a punch message is a JSON object {"v": 1, "id": NONCE, "candidates": [...]}')
    unknown = set(value) - {"v", "id", "candidates"}
    if unknown:
        raise BadInput(f"a punch message has no field {sorted(unknown)[0]!r} (fields: v, id, candidates)")
    if value.get("v") != VERSION:
        raise BadInput(f"punch message version {value.get('v')!r} is not supported (this endpoint speaks {VERSION})")
    nonce = value.get("id")
    if not isinstance(nonce, str) or not _NONCE_RX.fullmatch(nonce):
        raise BadInput("a punch message's id is 16 to 64 lowercase hex digits")
    raw = value.get("candidates")
    if not isinstance(raw, list):
        raise BadInput("a punch message's candidates are a list")
    if len(raw) > MAX_CANDIDATES:
        raise BadInput(f"a punch message has {len(raw)} candidates; at most {MAX_CANDIDATES} are taken")
    return Punch(nonce, tuple(_candidate(item, i) for i, item in enumerate(raw)))


def _candidate(item: object, index: int) -> Candidate:
    where = f"candidate {index + 1}"
    if not isinstance(item, dict) or set(item) != {"kind", "ip", "port"}:
        raise BadInput(f'{where}: a candidate is {{"kind": "lan" or "reflexive", "ip": ADDRESS, "port": PORT}}')
    kind, ip, port = item["kind"], item["ip"], item["port"]
    if kind not in KINDS:
        raise BadInput(f"{where}: kind {kind!r} is not one of {', '.join(KINDS)}")
    if not isinstance(ip, str) or len(ip) > 45:
        raise BadInput(f"{where}: ip must be an IPv4 or IPv6 address (a string)")
    try:
        parsed = ipaddress.ip_address(ip)
    except ValueError:
        raise BadInput(f"{where}: {ip!r} is not an IP address") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BadInput(f"{where}: port must be an integer from 1 to 65535")
    return Candidate(kind, str(parsed), port)


def refusal(candidate: Candidate, peer: Punch, our_public: str | None, family: int) -> str | None:
    """Why `candidate` of `peer` is not dialled (None: it is dialled). `our_public`: this endpoint's reflexive address
    (None if unknown); `family`: 4 or 6, that of this endpoint's punch socket."""
    ip = ipaddress.ip_address(candidate.ip)
    if ip.version != family:
        return "family"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return "mapped"
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return "scope"
    if isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"):
        return "scope"
    if candidate.port < MIN_PORT:
        return "port"
    if candidate.kind == "lan":
        public = peer.public_ip
        same_nat = public is not None and our_public is not None and public == our_public
        if not same_nat and candidate.ip != public:
            return "lan"
    return None


def plausible(peer: Punch, our_public: str | None, family: int) -> tuple[list[Candidate], list[str]]:
    """The candidates of `peer` to dial, LAN ones first, without duplicates; and the reasons of those dropped."""
    kept: list[Candidate] = []
    dropped: list[str] = []
    seen: set[tuple[str, int]] = set()
    reflexive = 0
    for candidate in sorted(peer.candidates, key=lambda c: c.kind != "lan"):
        reason = refusal(candidate, peer, our_public, family)
        if reason is None and candidate.kind == "reflexive":
            reflexive += 1
            if reflexive > 1:  # a NAT maps one port one way: a second "reflexive" is invented
                reason = "reflexive"
        if reason is not None:
            dropped.append(reason)
        elif candidate.address not in seen:
            seen.add(candidate.address)
            kept.append(candidate)
    return kept, dropped


def path_kind(remote: tuple[str, int], peer: Punch, our_public: str | None) -> str:
    """How a punched channel to `remote` goes: `lan` (the peer shares our NAT and we reached its LAN address), else
    `punched` (through the routers' mappings, or to a host without NAT)."""
    lan = any(c.kind == "lan" and c.address == remote for c in peer.candidates)
    return "lan" if lan and peer.public_ip is not None and peer.public_ip == our_public else "punched"


class RateLimit:
    """At most `per_peer` events per `window` seconds for one key, and `total` for all keys together."""

    def __init__(self, per_peer: int, total: int, window: float, clock: Any = time.monotonic) -> None:
        self.per_peer = per_peer
        self.total = total
        self.window = window
        self._clock = clock
        self._all: deque[float] = deque()
        self._by: dict[str, deque[float]] = {}

    def allow(self, key: str) -> bool:
        now = self._clock()
        self._expire(self._all, now)
        mine = self._by.setdefault(key, deque())
        self._expire(mine, now)
        if len(self._all) >= self.total or len(mine) >= self.per_peer:
            if not mine:
                del self._by[key]
            return False
        self._all.append(now)
        mine.append(now)
        if len(self._by) > 4 * self.total:  # keys of the past: drop the empty ones
            for k in [k for k, q in self._by.items() if not q or now - q[-1] > self.window]:
                del self._by[k]
        return True

    def _expire(self, q: deque[float], now: float) -> None:
        while q and now - q[0] >= self.window:
            q.popleft()
