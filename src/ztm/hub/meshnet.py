"""`MeshNet`: the hub's side of network mode (issue 17): endpoint addresses allocated through the store, and the
subnet routes endpoints advertise and root approves.

* The mesh's range is fixed when the mesh is created (`settle_range`: stored in the store's meta as `mesh_range`
  and `mesh_range6`; a hub started later with a different `--mesh-range` refuses to start).
* Addresses: `pick` gives the lowest free address (`ztm.hub.meshaddr`); `HubState.enroll` saves it with the
  endpoint record, and a store's `AddressTaken` (another hub of the cluster took it first) makes it pick again.
  Endpoints from before addresses existed get theirs at load (`claim_address`: only if the record still has none).
* Routes: `change` (the endpoint's owner or root advertises or withdraws CIDRs; new ones are pending), `approve`
  (root only; the CIDRs of the one endpoint named). Each change is audited before it is stored, then the endpoint's
  `endpoint` event goes to every session here and a `routes` notification to the other hubs (they reload that
  endpoint's routes from the store). Route changes are rate-limited per user (`CHANGES_PER_MINUTE`): a member looping
  them cannot fill the audit log or keep every agent busy with events.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Any

from ztm.errors import BadInput, Conflict, Forbidden, NotFound, Unavailable
from ztm.hub import meshaddr
from ztm.hub.authority import ROOT_USER
from ztm.hub.store import AddressTaken, EndpointRecord, HubStore, RouteRecord
from ztm.timefmt import iso

if TYPE_CHECKING:
    from ztm.hub.state import HubState, Peer

log = logging.getLogger("ztm.hub")

CHANGES_PER_MINUTE = 60
"""Route changes (advertise, withdraw, approve) one user may make per minute; more are refused (503)."""
PICK_TRIES = 32
"""Addresses an enrolment tries when other hubs of the cluster keep taking the one it picked."""


async def settle_range(store: HubStore, mesh_id: str, given: str | None) -> tuple[str, str]:
    """The mesh's (IPv4 range, IPv6 /48), stored in the meta on the first start (the range given, or the default);
    `BadInput` (one line) when `given` differs from the stored one."""
    meta = await store.get_meta()
    stored = meta.get("mesh_range")
    if stored is None:
        stored = str(meshaddr.parse_range(given or meshaddr.DEFAULT_RANGE))
        values = {"mesh_range": stored, "mesh_range6": str(meshaddr.ula48(mesh_id))}
        await store.set_meta(values)
        return values["mesh_range"], values["mesh_range6"]
    if given is not None and meshaddr.parse_range(given) != meshaddr.parse_range(stored, "the stored mesh range"):
        raise BadInput(
            f"the mesh was created with range {stored}; --mesh-range {given} differs (a mesh's range cannot change)"
        )
    return stored, meta.get("mesh_range6") or str(meshaddr.ula48(mesh_id))


class MeshNet:
    def __init__(self, state: HubState, mesh_range: str, mesh_range6: str) -> None:
        self.state = state
        self.range4 = meshaddr.parse_range(mesh_range, "the mesh range")
        self.range6 = ipaddress.IPv6Network(mesh_range6)
        self.routes: dict[str, dict[str, RouteRecord]] = {}
        """Endpoint id -> CIDR -> its route (approved or pending)."""
        self._changes: dict[str, tuple[float, int]] = {}
        self.held: set[str] = set()
        """Addresses enrolments in flight here picked and are writing (`HubState.enroll`): not picked again."""

    @property
    def store(self) -> HubStore:
        return self.state.store

    # loading
    async def load(self) -> None:
        """Routes from the store; an address for every endpoint that has none (records from before issue 17)."""
        self._set_all(await self.store.routes())
        for ep in sorted(self.state.endpoints.values(), key=lambda e: (e.first_seen, e.id)):
            if ep.mesh_ip is None:
                await self._give_address(ep)

    def _set_all(self, rows: list[RouteRecord]) -> None:
        self.routes = {}
        for row in rows:
            self.routes.setdefault(row.ep_id, {})[row.cidr] = row

    async def _give_address(self, ep: EndpointRecord) -> None:
        tried: set[str] = set()
        for _ in range(PICK_TRIES):
            try:
                candidate = self.pick(tried)
            except Conflict as exc:
                log.warning("endpoint %s (%s) has no mesh address: %s", ep.name, ep.id, exc.message)
                return
            try:
                got = await self.store.claim_address(ep.id, candidate)
            except AddressTaken:
                tried.add(candidate)
                continue
            ep.mesh_ip = got
            if got is not None:
                log.info("endpoint %s (%s) has mesh address %s", ep.name, ep.id, got)
                await self.state.publish_endpoint(ep.id)
            return

    async def reload(self, ep_id: str) -> None:
        """Another hub changed the endpoint's routes: take them from the store and tell the sessions here."""
        rows = await self.store.routes(ep_id)
        if rows:
            self.routes[ep_id] = {r.cidr: r for r in rows}
        else:
            self.routes.pop(ep_id, None)
        self._broadcast(ep_id)

    async def reload_all(self) -> None:
        before = self.routes
        self._set_all(await self.store.routes())
        for ep_id in set(before) | set(self.routes):
            if before.get(ep_id) != self.routes.get(ep_id):
                self._broadcast(ep_id)

    def forget(self, ep_id: str) -> None:
        """The endpoint's record is gone (its routes went with it in the store)."""
        self.routes.pop(ep_id, None)

    # addresses
    def pick(self, tried: set[str] | None = None) -> str:
        """The lowest free address of the range (not held by a record here, by an enrolment in flight here
        (`held`), nor in `tried`); `Conflict` (one line) when
        the range is full. After a collision (`tried`), a free address anywhere in the range, at random: a hub
        whose view lags behind the others' enrolments (a crowd joining at every hub) would otherwise take turns
        colliding with them on the lowest ones, a store round trip each."""
        used = {e.mesh_ip for e in self.state.endpoints.values() if e.mesh_ip is not None} | (tried or set())
        free = meshaddr.first_free(self.range4, used | self.held, anywhere=bool(tried))
        if free is None:
            raise Conflict(
                f"the mesh range {self.range4} is full ({meshaddr.capacity(self.range4)} endpoint addresses); root "
                "can free addresses with `ztm delete ep NAME` (a mesh's range cannot change)"
            )
        return free

    def ip6(self, mesh_ip: str | None) -> str | None:
        return meshaddr.ip6_of(self.range6, mesh_ip) if mesh_ip is not None else None

    def view_fields(self, ep: EndpointRecord) -> dict[str, Any]:
        """What `HubState.endpoint_view` adds for network mode."""
        routes = self.routes.get(ep.id, {})
        return {
            "mesh_ip": ep.mesh_ip,
            "mesh_ip6": self.ip6(ep.mesh_ip),
            "routes": meshaddr.sorted_cidrs(c for c, r in routes.items() if r.approved),
            "routes_pending": meshaddr.sorted_cidrs(c for c, r in routes.items() if not r.approved),
        }

    # routes
    def list_routes(self) -> list[dict[str, Any]]:
        """Every route of every endpoint (GET /api/routes)."""
        out = []
        for ep_id, routes in self.routes.items():
            ep = self.state.endpoints.get(ep_id)
            if ep is None:
                continue
            for cidr in meshaddr.sorted_cidrs(routes):
                r = routes[cidr]
                out.append(
                    {
                        "ep": ep.id,
                        "name": ep.name,
                        "cidr": cidr,
                        "approved": r.approved,
                        "advertised_at": iso(r.advertised_at),
                        "approved_by": r.approved_by,
                    }
                )
        return sorted(out, key=lambda x: (x["name"], x["ep"], meshaddr.sort_key(x["cidr"])))

    async def change(self, peer: Peer, ref: str, advertise: list[str], withdraw: list[str]) -> dict[str, Any]:
        """The endpoint's owner or root advertises (pending until root approves) or withdraws routes; returns the
        endpoint's view."""
        ep = self.state.find_endpoint(ref)
        if peer.user not in (ep.user, ROOT_USER):
            refusal = f"only {ep.user!r} (the owner) or root may change the routes of endpoint {ep.name!r}"
            await self.state.audit.denied(peer, "route.advertise" if advertise else "route.withdraw", ep.name, refusal)
            raise Forbidden(refusal)
        current = self.routes.get(ep.id, {})
        missing = [c for c in withdraw if c not in current]
        if missing:
            raise NotFound(
                f"endpoint {ep.name!r} does not advertise {missing[0]}; see `ztm get route` for what it advertises"
            )
        added = [c for c in advertise if c not in current]
        total = len(current) + len(added) - len(withdraw)
        if total > meshaddr.MAX_ROUTES:
            raise BadInput(
                f"endpoint {ep.name!r} would advertise {total} routes; at most {meshaddr.MAX_ROUTES}: withdraw some, "
                "or advertise a shorter prefix that covers several"
            )
        if not added and not withdraw:
            return self.state.endpoint_view(ep)
        self._spend(peer.user)
        now = time.time()
        rows = {c: r for c, r in current.items() if c not in withdraw}
        for cidr in added:
            rows[cidr] = RouteRecord(ep.id, cidr, False, now, None)
        if added:
            await self.state.audit.record(peer, "route.advertise", ep.name, {"ep": ep.id, "cidrs": added})
        if withdraw:
            was = {c: current[c].approved for c in withdraw}
            await self.state.audit.record(
                peer, "route.withdraw", ep.name, {"ep": ep.id, "cidrs": withdraw, "approved": was}
            )
        await self._save(ep, rows)
        log.info("%s changed the routes of endpoint %s: +%s -%s", peer.user, ep.name, added, withdraw)
        return self.state.endpoint_view(ep)

    async def approve(self, peer: Peer, ref: str, cidrs: list[str], approved: bool) -> dict[str, Any]:
        """Root approves (or unapproves) routes the endpoint `ref` advertises; only that endpoint's routes change."""
        action = "route.approve" if approved else "route.unapprove"
        if peer.user != ROOT_USER:
            refusal = f"only root may approve routes; you are {peer.user!r}"
            await self.state.audit.denied(peer, action, ref, refusal)
            raise Forbidden(refusal)
        ep = self.state.find_endpoint(ref)
        current = self.routes.get(ep.id, {})
        missing = [c for c in cidrs if c not in current]
        if missing:
            have = ", ".join(meshaddr.sorted_cidrs(current)) or "none"
            raise NotFound(f"endpoint {ep.name!r} does not advertise {missing[0]} (it advertises: {have})")
        changing = [c for c in cidrs if current[c].approved != approved]
        if not changing:
            return self.state.endpoint_view(ep)
        self._spend(peer.user)
        rows = dict(current)
        for cidr in changing:
            rows[cidr] = dataclasses.replace(
                current[cidr], approved=approved, approved_by=peer.user if approved else None
            )
        await self.state.audit.record(peer, action, ep.name, {"ep": ep.id, "cidrs": changing})
        await self._save(ep, rows)
        log.info("root %s routes %s of endpoint %s", "approved" if approved else "unapproved", changing, ep.name)
        return self.state.endpoint_view(ep)

    async def _save(self, ep: EndpointRecord, rows: dict[str, RouteRecord]) -> None:
        await self.store.set_routes(ep.id, list(rows.values()))  # first: a failed write changes nothing
        if rows:
            self.routes[ep.id] = rows
        else:
            self.routes.pop(ep.id, None)
        self._broadcast(ep.id)
        await self.state.publish("routes", {"ep": ep.id})

    def _broadcast(self, ep_id: str) -> None:
        ep = self.state.endpoints.get(ep_id)
        if ep is not None:
            self.state.broadcast({"type": "endpoint", "ep": self.state.endpoint_view(ep)})

    def _spend(self, user: str) -> None:
        """Count one route change of `user`; `Unavailable` past `CHANGES_PER_MINUTE` in the current minute."""
        now = time.monotonic()
        start, count = self._changes.get(user, (now, 0))
        if now - start >= 60:
            start, count = now, 0
        if count >= CHANGES_PER_MINUTE:
            self.state.counters["route_changes_refused"] += 1
            raise Unavailable(
                f"user {user!r} made {CHANGES_PER_MINUTE} route changes this minute, the most the hub takes; try "
                f"again in {max(1, round(60 - (now - start)))} s"
            )
        self._changes[user] = (start, count + 1)
        if len(self._changes) > 10_000:
            self._changes = {u: w for u, w in self._changes.items() if now - w[0] < 60}
