"""Which hub of a mesh an agent dials, sans-IO: the hub list parser, the zone check and the choice.

A mesh may have several hubs. Each hub tells its agents the current list (the `hubs` list of the `hello` event and
the `hubs` event, items `HUBVIEW`, see PROTOCOL.md); the agent keeps it (at most `MAX_HUBS`, each checked here) and
dials, in tiers:

0. online hubs of the agent's zone (only when the agent has a zone);
1. any other online hub;
2. hubs not known to be online, then the permit's bootstrap addresses no listed hub names.

Within a tier, the hub with the lowest measured round-trip time (the last TLS + HTTP/2 connect time, per hub id)
comes first; hubs never measured come after the measured ones, in id order. The hub that just failed is left out
unless nothing else is left. Nothing here does I/O: `HubLink` (agent/link.py) dials what `plan` returns.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ztm import validate
from ztm.addr import Address
from ztm.errors import BadInput, ZtmError

MAX_HUBS = 64
"""Hubs kept per mesh; entries past this in a hub's list are ignored."""
MAX_ADDRESSES = 8
"""Addresses kept per hub."""
MAX_TEXT = 128
"""Longest id, version or timestamp kept from a hub's list."""
ZONE_TIERS = 3
check_zone = validate.zone
"""A zone name (`[a-z0-9][a-z0-9-]{0,31}`) or "" (no zone); BadInput saying what to fix."""


@dataclass(frozen=True)
class HubView:
    """One hub of the mesh as the agent keeps it."""

    id: str
    zone: str = ""
    addresses: tuple[Address, ...] = ()
    online: bool = False
    endpoints: int = 0
    version: str = ""
    started: str = ""
    last_seen: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "zone": self.zone,
            "addresses": [str(a) for a in self.addresses],
            "online": self.online,
            "endpoints": self.endpoints,
            "version": self.version,
            "started": self.started,
            "last_seen": self.last_seen,
        }


def _text(value: object, what: str, *, required: bool = False) -> str:
    if value is None and not required:
        return ""
    if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable() or (required and not value):
        raise ValueError(f"{what} is not a short printable string")
    return value


def parse_hub(value: object) -> HubView:
    """One HUBVIEW object; ValueError saying what is wrong with it."""
    if not isinstance(value, dict):
        raise ValueError("an entry is not a JSON object")
    hub_id = _text(value.get("id"), "id", required=True)
    zone = _text(value.get("zone"), "zone")
    if zone:
        try:
            check_zone(zone, "zone")
        except BadInput as exc:
            raise ValueError(exc.message) from None
    raw = value.get("addresses")
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"hub {hub_id!r} lists no addresses")
    addresses: list[Address] = []
    for item in raw[:MAX_ADDRESSES]:
        if not isinstance(item, str) or len(item) > 300:
            raise ValueError(f"hub {hub_id!r} lists an address that is not a string")
        try:
            address = Address.parse(item, what=f"hub {hub_id!r} address")
        except ZtmError as exc:
            raise ValueError(exc.message) from None
        if address not in addresses:
            addresses.append(address)
    online = value.get("online", False)
    if not isinstance(online, bool):
        raise ValueError(f"hub {hub_id!r}: online is not true or false")
    endpoints = value.get("endpoints", 0)
    if not isinstance(endpoints, int) or isinstance(endpoints, bool) or not 0 <= endpoints < 1 << 31:
        endpoints = 0
    return HubView(
        id=hub_id,
        zone=zone,
        addresses=tuple(addresses),
        online=online,
        endpoints=endpoints,
        version=_text(value.get("version"), "version"),
        started=_text(value.get("started"), "started"),
        last_seen=_text(value.get("last_seen"), "last_seen"),
    )


def parse_hubs(value: object, problem: Callable[[str], None]) -> list[HubView] | None:
    """A hub's list (JSON) as valid `HubView`s: malformed entries are left out (`problem` is told why, once per list),
    duplicates of an id keep the first, at most `MAX_HUBS` are kept. None when `value` is not a list at all."""
    if not isinstance(value, list):
        return None
    hubs: list[HubView] = []
    seen: set[str] = set()
    dropped: list[str] = []
    cut = False
    for item in value:
        if len(hubs) >= MAX_HUBS:
            cut = True
            break
        try:
            hub = parse_hub(item)
        except ValueError as exc:
            dropped.append(str(exc))
            continue
        if hub.id not in seen:
            seen.add(hub.id)
            hubs.append(hub)
    said: list[str] = []
    if dropped:
        said.append(f"ignored {len(dropped)} malformed entr{'y' if len(dropped) == 1 else 'ies'} ({dropped[0]})")
    if cut:
        said.append(f"kept the first {MAX_HUBS} hubs of a list of {len(value)} entries")
    if said:
        problem("; ".join(said))
    return hubs


@dataclass(frozen=True)
class Candidate:
    """One address to dial. `hub_id` is what the list claims (None for a bare bootstrap address): the link trusts only
    the id the hub's certificate names."""

    address: Address
    hub_id: str | None
    tier: int


def tier(hub: HubView, zone: str) -> int:
    if hub.online:
        return 0 if zone and hub.zone == zone else 1
    return 2


def current_tier(hubs: Iterable[HubView], zone: str, hub_id: str | None) -> int:
    """The tier of the hub the agent is connected to (by its certificate's id); unlisted hubs count as tier 2."""
    for hub in hubs:
        if hub.id == hub_id:
            return tier(hub, zone)
    return ZONE_TIERS - 1


def plan(
    hubs: Iterable[HubView],
    bootstraps: Iterable[Address],
    zone: str,
    rtts: Mapping[str, float],
    *,
    skip: str | None = None,
    below: int = ZONE_TIERS,
) -> list[list[Candidate]]:
    """The addresses to dial, best tier first (empty tiers left out), each tier ordered by measured RTT.

    `skip`: a hub id (or an address, for hubs dialled by bare address) that just failed, left out unless that leaves
    nothing to dial. `below`: only tiers under this number (for a voluntary move to a strictly better tier)."""
    hubs = list(hubs)
    tiers: list[list[tuple[float, str, Candidate]]] = [[] for _ in range(ZONE_TIERS)]
    listed: set[Address] = set()
    for hub in hubs:
        t = tier(hub, zone)
        rtt = rtts.get(hub.id, math.inf)
        for address in hub.addresses:
            listed.add(address)
            tiers[t].append((rtt, hub.id, Candidate(address, hub.id, t)))
    last = ZONE_TIERS - 1
    for address in bootstraps:
        if address not in listed:
            listed.add(address)
            tiers[last].append((rtts.get(str(address), math.inf), "~" + str(address), Candidate(address, None, last)))

    def ordered(keep: Callable[[Candidate], bool]) -> list[list[Candidate]]:
        out: list[list[Candidate]] = []
        for number, entries in enumerate(tiers):
            if number >= below:
                break
            chosen = [c for _rtt, _id, c in sorted(entries, key=lambda e: (e[0], e[1])) if keep(c)]
            if chosen:
                out.append(chosen)
        return out

    if skip is None:
        return ordered(lambda c: True)
    without = ordered(lambda c: c.hub_id != skip and str(c.address) != skip)
    return without if without else ordered(lambda c: True)


def merge_one(hubs: list[HubView], hub: HubView) -> list[HubView]:
    """`hubs` with `hub` in place of the entry of the same id (or added, within `MAX_HUBS`): for a hub that does not
    send a list, which describes only itself."""
    out = [hub if h.id == hub.id else h for h in hubs]
    if all(h.id != hub.id for h in hubs):
        out = [hub, *out][:MAX_HUBS]
    return out
