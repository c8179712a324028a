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

**Attested addresses.** The hub that relays a `punch` call tells each side the other's public address as the hub
sees that side's connection (`Caller.ip` at the exit, `E2EStream.hub_seen` at the entrance; not a claim of the peer).
With it, a peer's `reflexive` candidate is dialled only at that address (`attested` refusals), and its LAN
candidates only when that address is this endpoint's own public one.

**The birthday attempt.** Between a symmetric NAT and a router that filters, no ordinary punch meets (the symmetric
side's next mapping cannot be known). After an ordinary punch to a peer timed out, the next one may ask for a
birthday attempt (`"birthday": K` in the offer, and in the answer when the exit agrees): each side opens K sockets
from fresh ports to the other's reflexive mapping (the symmetric side's router gives each a random port) and K from
its punch port to random ports of the other's address (the eim side's guesses); about 1 - exp(-K*K/64,512) of them
meet. Such a burst goes only to the peer's hub-attested address, and only when that is the address of its reflexive
candidate (`birthday_refusal`), at most once per peer pair per `Birthday.every` seconds and `Birthday.total` times
per agent per `Birthday.window` (`Birthday.take`); `spray` plans the targets.
"""

from __future__ import annotations

import ipaddress
import random
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
SEEN_HEADER = "ztm-seen"
"""The hub's word on an attested stream (`ztm.hub.relay`): in its 200 to the caller, the target's address as its hub
sees it; in a `CONNECT` one hub forwards to another, the caller's address as the forwarding hub sees it."""
MAX_BIRTHDAY = 1024
"""Sockets per side of a birthday attempt at most (`--p2p-birthday`): the agent holds 2 K sockets for its window."""
BIRTHDAY_PORTS = range(1024, 65536)
"""The ports a birthday attempt guesses from (where NATs pick their mappings)."""
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
    birthday: int = 0
    """Sockets a side for a birthday attempt: asked for in an offer, agreed to in an answer (0: an ordinary punch)."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"v": VERSION, "id": self.id, "candidates": [c.to_json() for c in self.candidates]}
        if self.birthday:
            out["birthday"] = self.birthday
        return out

    @property
    def reflexive(self) -> Candidate | None:
        return next((c for c in self.candidates if c.kind == "reflexive"), None)

    @property
    def public_ip(self) -> str | None:
        """The peer's address as its hub sees it (its reflexive candidate's), if it sent one."""
        return next((c.ip for c in self.candidates if c.kind == "reflexive"), None)


def parse(value: object) -> Punch:
    """An offer or answer from a peer; BadInput (one line: what is wrong) if it is not one."""
    if not isinstance(value, dict):
        raise BadInput('a punch message is a JSON object {"v": 1, "id": NONCE, "candidates": [...]}')
    unknown = set(value) - {"v", "id", "candidates", "birthday"}
    if unknown:
        raise BadInput(f"a punch message has no field {sorted(unknown)[0]!r} (fields: v, id, candidates, birthday)")
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
    birthday = value.get("birthday", 0)
    if isinstance(birthday, bool) or not isinstance(birthday, int) or not 0 <= birthday <= MAX_BIRTHDAY:
        raise BadInput(f"a punch message's birthday is the number of sockets a side, 0 to {MAX_BIRTHDAY}")
    return Punch(nonce, tuple(_candidate(item, i) for i, item in enumerate(raw)), birthday)


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


def normal_ip(text: object) -> str | None:
    """`text` as an IP address in canonical form (an IPv4-mapped IPv6 address as IPv4), or None if it is not one."""
    if not isinstance(text, str) or len(text) > 45:
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _scope(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether `ip` is an address a peer may be reached at (not loopback, link-local, multicast, ...)."""
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved:
        return False
    return not (isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"))


def refusal(
    candidate: Candidate, peer: Punch, our_public: str | None, family: int, attested: str | None = None
) -> str | None:
    """Why `candidate` of `peer` is not dialled (None: it is dialled). `our_public`: this endpoint's reflexive address
    (None if unknown); `family`: 4 or 6, that of this endpoint's punch socket; `attested`: the peer's public address
    as the hub saw it (None: the hub did not say), which a reflexive candidate must have, and which decides whether
    the peer shares this endpoint's NAT."""
    ip = ipaddress.ip_address(candidate.ip)
    if ip.version != family:
        return "family"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return "mapped"
    if not _scope(ip):
        return "scope"
    if candidate.port < MIN_PORT:
        return "port"
    if candidate.kind == "reflexive" and attested is not None and candidate.ip != attested:
        return "attested"
    if candidate.kind == "lan":
        public = attested if attested is not None else peer.public_ip
        same_nat = public is not None and our_public is not None and public == our_public
        if not same_nat and candidate.ip != public:
            return "lan"
    return None


def plausible(
    peer: Punch, our_public: str | None, family: int, attested: str | None = None
) -> tuple[list[Candidate], list[str]]:
    """The candidates of `peer` to dial, LAN ones first, without duplicates; and the reasons of those dropped
    (`attested`: the peer's address as the hub saw it, see `refusal`)."""
    kept: list[Candidate] = []
    dropped: list[str] = []
    seen: set[tuple[str, int]] = set()
    reflexive = 0
    for candidate in sorted(peer.candidates, key=lambda c: c.kind != "lan"):
        reason = refusal(candidate, peer, our_public, family, attested)
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


def birthday_refusal(peer: Punch, attested: str | None, our_public: str | None, family: int) -> str | None:
    """Why no birthday attempt may aim at `peer` (None: it may): `unattested` when the hub did not say the peer's
    address, or the peer's reflexive candidate is not at that address (a member claiming someone else's address);
    `scope` when that address is not one to send a burst to (loopback, ..., another family, or this endpoint's own
    public address: the peer shares its NAT, and the LAN candidates serve)."""
    reflexive = peer.reflexive
    if attested is None or reflexive is None or reflexive.ip != attested:
        return "unattested"
    ip = ipaddress.ip_address(attested)
    if ip.version != family or not _scope(ip) or attested == our_public or reflexive.port < MIN_PORT:
        return "scope"
    return None


@dataclass(frozen=True)
class Spray:
    """The targets of one side's birthday burst: `k` sockets from fresh local ports to `mapping` (the peer's
    reflexive candidate), and from the punch port one to each of `ports` at `ip` (the peer's attested address)."""

    mapping: tuple[str, int]
    ip: str
    ports: tuple[int, ...]
    k: int

    def targets(self) -> list[tuple[bool, tuple[str, int]]]:
        """(from the punch port?, remote) in the order to send: the two halves interleaved, so that both start at
        once and are paced together."""
        out: list[tuple[bool, tuple[str, int]]] = []
        for port in self.ports:
            out.append((False, self.mapping))
            out.append((True, (self.ip, port)))
        return out


def spray(peer: Punch, k: int, rng: random.Random | None = None) -> Spray:
    """The burst towards `peer` (its `birthday_refusal` was None): K distinct random ports of `BIRTHDAY_PORTS`."""
    reflexive = peer.reflexive
    assert reflexive is not None and 0 < k <= MAX_BIRTHDAY
    ports = (rng or random.SystemRandom()).sample(BIRTHDAY_PORTS, k)
    return Spray(reflexive.address, reflexive.ip, tuple(ports), k)


class Birthday:
    """This agent's birthday budget: `k` sockets a side (0: off), at most one attempt per peer pair per `every`
    seconds and `total` attempts per `window` seconds in all (one agent, all its meshes, both roles)."""

    def __init__(
        self, k: int, every: float = 300.0, total: int = 4, window: float = 600.0, clock: Any = time.monotonic
    ) -> None:
        self.k = k
        self.every = every
        self.total = total
        self.window = window
        self._clock = clock
        self._last: dict[str, float] = {}
        self._all: deque[float] = deque()
        self.running = 0
        """Attempts holding their sockets now (at most one at a time: 2 K descriptors)."""

    def refusal(self, pair: str) -> str | None:
        """Why no birthday attempt with `pair` may start now: `off`, `rate` (None: it may; `take` then)."""
        if self.k <= 0:
            return "off"
        now = self._clock()
        while self._all and now - self._all[0] >= self.window:
            self._all.popleft()
        last = self._last.get(pair)
        if self.running or len(self._all) >= self.total or (last is not None and now - last < self.every):
            return "rate"
        return None

    def take(self, pair: str) -> bool:
        """Count an attempt with `pair` if `refusal` allows one now; whether it did."""
        if self.refusal(pair) is not None:
            return False
        now = self._clock()
        self._all.append(now)
        self._last[pair] = now
        self.running += 1
        if len(self._last) > 4096:  # pairs of the past
            for key in [key for key, when in self._last.items() if now - when >= self.every]:
                del self._last[key]
        return True

    def done(self) -> None:
        """An attempt `take` allowed closed its sockets."""
        self.running = max(0, self.running - 1)


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
