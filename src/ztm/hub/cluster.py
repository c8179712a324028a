"""`Cluster`: this hub as one of several serving a mesh from one shared store (PostgreSQL), or alone (SQLite).

It owns the hub's row in the store's hubs table (registered at start, refreshed every `BEAT` seconds, removed at a
clean stop), the view of the other hubs (`HubState.hubs`: a hub whose heartbeat is older than `DEAD_AFTER` seconds
of the store's clock is offline), the publication of this hub's sessions (presence rows and notifications), and the
application of other hubs' notifications to `HubState`: endpoints enrolled, relabelled or deleted elsewhere,
invitations and evictions (the CRL and the evicted user's sessions here), file entries, policy versions (the
newest is reloaded from the store and sent to this hub's agents), an endpoint's subnet routes (reloaded from the
store, then its `endpoint` event), and endpoints going on- or
offline on other hubs (`HubState.remote`). On a single hub the same code runs against `SqliteStore`, which has no
other hub: the hubs table holds this hub alone and no notification ever arrives.

Other hubs' notifications are applied one at a time, in the order they came, by one task (`_consume`): no
burst of them can take every store connection. One that cannot be applied (the store is away or busy past its
deadline) is never just dropped: the hub reloads everything once the store answers again (`resync`), and so it
does when more notifications wait than `MAX_INBOX`. Endpoint records travel inside their notification when they fit,
so applying one usually costs no store call at all.

A store outage stops nothing that runs: sessions and relayed streams live in memory; heartbeats and presence
writes fail, are logged once, and are made again when the store is back (a `resync` reloads everything).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ztm.aio import spawn
from ztm.errors import Unavailable, ZtmError
from ztm.hub.keyedqueue import KeyedQueue
from ztm.hub.state import HubState, Session
from ztm.hub.store import HubInfo, HubStore, Presence
from ztm.timefmt import iso
from ztm.version import __version__

log = logging.getLogger("ztm.hub")

BEAT = 1.0
"""Seconds between two refreshes of this hub's row (and reads of the others')."""
DEAD_AFTER = 3.5
"""A hub whose row is older than this (store clock) is offline: its endpoints are offline until they reconnect
elsewhere, and agents are told (`hubs` event)."""
MAX_NOTIFY = 7000
"""Bytes of a notification payload: PostgreSQL's limit is 8000."""
REPAIR_EVERY = 10
"""Beats between two reads of the whole presence table, compared with what the notifications built (anti-entropy:
a change missed for any reason is repaired within this many seconds, and counted in `presence_repairs`)."""
PUBLISHERS = 2
"""Presence writes in flight at once (each holds a store connection for two statements): however many sessions
change at once, the rest of the pool stays free for enrolments and reads (`ztm.hub.keyedqueue`)."""
MAX_INBOX = 20_000
"""Notifications waiting to be applied; past this they are dropped for one `resync` (a hub that fell that far
behind reloads faster than it would apply them one by one)."""


class Cluster:
    def __init__(self, state: HubState, store: HubStore, *, zone: str = "", admin: str = "") -> None:
        self.state = state
        self.store = store
        self.me = HubInfo(
            id=state.authority.hub_id,
            addresses=[str(a) for a in state.authority.names],
            zone=zone,
            version=__version__,
            started=time.time(),
            heartbeat=time.time(),
            admin=admin,
        )
        self._task: asyncio.Task[None] | None = None
        self._dirty: set[str] = set()
        """Endpoint ids whose presence could not be written (store away): written again by the next beat."""
        self._store_ok = True
        self._clock = time.time()
        """The store's clock as of the last heartbeat (hubs compare heartbeats with it, not with their own)."""
        self.apply_hooks: list[Callable[[str, dict[str, Any]], Awaitable[None]]] = []
        """Called with every notification after the state applied it (the file index reloads its entries)."""
        self._inbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._consumer: asyncio.Task[None] | None = None
        self._presence = KeyedQueue()
        """Endpoints whose presence is to be written: each once, the latest state, by `PUBLISHERS` tasks."""
        self._publishers: list[asyncio.Task[None]] = []
        self.resync_needed = False
        """A notification could not be applied (or too many waited): reload everything at the next beat."""
        self.resyncs = 0
        self._beats = 0
        state.cluster = self

    # life
    async def start(self) -> None:
        await self.store.register_hub(self.me)
        self.store.subscribe(self._on_notify)
        await self._load_everything()
        await self.store.notify("hub", {"id": self.me.id})
        self._task = spawn(self._beat_loop(), name="hub-cluster")
        self._consumer = spawn(self._consume(), name="hub-notifications")
        self._publishers = [spawn(self._presence.run(self._publish), name="hub-presence") for _ in range(PUBLISHERS)]

    async def stop(self) -> None:
        for task in (self._task, self._consumer, *self._publishers):
            if task is not None:
                task.cancel()
        try:
            await self.store.remove_hub(self.me.id)
            await self.store.notify("hub", {"id": self.me.id})
        except ZtmError as exc:
            log.warning("could not remove this hub from the store at stop: %s", exc.message)

    async def _load_everything(self) -> None:
        await self._read_hubs()
        await self._load_remote()

    async def _load_remote(self) -> int:
        """Every session on another online hub, from the presence table; returns how many endpoints' presence
        differed from what this hub had (their views are sent to this hub's agents)."""
        live = {h.id for h in self.online_hubs()}
        remote: dict[str, Presence] = {}
        for presence in await self.store.presences():
            if presence.hub_id != self.me.id and presence.hub_id in live:
                remote[presence.ep_id] = presence
        before, self.state.remote = self.state.remote, remote
        changed = [e for e in set(before) | set(remote) if before.get(e) != remote.get(e)]
        if changed:
            self.state.version += 1
            for ep_id in changed:
                self._endpoint_changed(ep_id)
        return len(changed)

    async def _beat_loop(self) -> None:
        while True:
            await asyncio.sleep(BEAT)
            try:
                await self.beat()
            except Unavailable as exc:
                self._store_failed(exc)
            except Exception:  # the loop must outlive a bug in one beat
                log.exception("hub cluster: heartbeat failed")

    async def beat(self) -> None:
        self._clock = await self.store.heartbeat_hub(self.me.id, len(self.state.sessions))
        if not self._store_ok:  # back from an outage (not mere busy moments): the database may have lost rows
            log.info("hub cluster: the store answers again; publishing this hub and its sessions again")
            await self.store.register_hub(self.me)  # (this also clears this hub's presence rows: written again below)
            self._dirty.update(self.state.sessions)
            self._store_ok = True
        for ep_id in list(self._dirty):  # presence writes that failed (the rows of the others are still there)
            self._dirty.discard(ep_id)
            self._presence.put(ep_id)
        if self.resync_needed:
            await self._resync()
        self._beats += 1
        if self._beats % REPAIR_EVERY == 0 and self._inbox.empty():
            repaired = await self._load_remote()
            if repaired:
                self.state.counters["presence_repairs"] += repaired
                log.info("hub cluster: %d endpoints' presence repaired from the store", repaired)
        before = self._online_ids()
        await self._read_hubs()
        now = self._online_ids()
        if now != before:
            self._drop_dead_hubs()
            if now - before:  # a hub came (back): its sessions may predate what this hub heard
                await self._load_remote()
            self.push_hubs()

    # the hubs
    async def _read_hubs(self) -> None:
        hubs = {h.id: h for h in await self.store.hubs()}
        hubs.setdefault(self.me.id, self.me)
        self.state.hubs = hubs

    def online_hubs(self) -> list[HubInfo]:
        return [h for h in self.state.hubs.values() if h.id == self.me.id or self._clock - h.heartbeat < DEAD_AFTER]

    def _online_ids(self) -> set[str]:
        return {h.id for h in self.online_hubs()}

    def hub_views(self) -> list[dict[str, Any]]:
        """Every hub of the mesh, for `GET /api/hubs`, the `hubs` event and `ztm get hub`."""
        online = self._online_ids()
        views = []
        for hub in sorted(self.state.hubs.values(), key=lambda h: (h.zone, h.id)):
            mine = hub.id == self.me.id
            views.append(
                {
                    "id": hub.id,
                    "zone": hub.zone,
                    "addresses": list(hub.addresses),
                    "online": hub.id in online,
                    "endpoints": len(self.state.sessions) if mine else hub.online,
                    "version": hub.version,
                    "started": iso(hub.started),
                    "last_seen": iso(time.time() if mine else hub.heartbeat),
                }
            )
        return views

    def push_hubs(self) -> None:
        """Tell this hub's agents the current hub list (they fail over to any of them, and prefer their zone's)."""
        self.state.broadcast({"type": "hubs", "hubs": self.hub_views()}, bump=False)

    def _drop_dead_hubs(self) -> None:
        live = self._online_ids()
        for ep_id, presence in list(self.state.remote.items()):
            if presence.hub_id not in live:
                del self.state.remote[ep_id]
                self._endpoint_changed(ep_id)

    # this hub's sessions
    def session_changed(self, session: Session) -> None:
        """A session here opened, closed, or changed what it offers (services, direct address): publish it."""
        self._presence.put(session.ep_id)

    async def _publish(self, ep_id: str) -> None:
        session = self.state.sessions.get(ep_id)
        try:
            if session is None or session.closed:
                await self.store.clear_presence(ep_id, self.me.id)
                await self.store.notify("presence", {"ep": ep_id, "hub": self.me.id, "online": False})
                return
            presence = Presence(
                ep_id=ep_id,
                hub_id=self.me.id,
                since=session.since,
                address=_addr(session.address),
                direct=self.state.direct.get(ep_id, ""),
                e2e=session.e2e,
                services=self.state.services.get(ep_id, {}),
            )
            await self.store.set_presence(presence)
            payload = {"ep": ep_id, "hub": self.me.id, "online": True, "presence": _presence_json(presence)}
            if len(json.dumps(payload)) > MAX_NOTIFY:
                payload = {"ep": ep_id, "hub": self.me.id, "online": True, "reload": True}
            await self.store.notify("presence", payload)
        except Unavailable as exc:
            self._dirty.add(ep_id)  # written again by the next beat
            self._store_failed(exc, f"could not publish endpoint {ep_id}")

    def _store_failed(self, exc: Unavailable, what: str = "") -> None:
        """A store call failed: the store is away (log once; re-register when it is back), or only busy past a
        call's deadline (the call is made again by the next beat)."""
        if self.store.available:
            log.warning("hub cluster: %s", f"{what}: {exc.message}" if what else exc.message)
            return
        if self._store_ok:
            log.warning("hub cluster: %s", exc.message)
        self._store_ok = False

    async def publish(self, kind: str, payload: dict[str, Any]) -> None:
        """Tell the other hubs that shared state changed (after the store write succeeded)."""
        try:
            await self.store.notify(kind, payload)
        except Unavailable as exc:  # written but not announced: the others reload everything when the store is back
            log.warning("hub cluster: could not announce a change (%s): %s", kind, exc.message)

    # other hubs' changes
    def _on_notify(self, kind: str, payload: dict[str, Any]) -> None:
        if kind == "resync":
            self.resync_needed = True  # the listening connection was lost: notifications may be missing
        if self._inbox.qsize() >= MAX_INBOX:
            if not self.resync_needed:
                log.warning("hub cluster: %d changes from other hubs wait; reloading everything instead", MAX_INBOX)
            self.resync_needed = True
            while not self._inbox.empty():
                self._inbox.get_nowait()
            return
        self._inbox.put_nowait((kind, payload))

    async def _consume(self) -> None:
        while True:
            kind, payload = await self._inbox.get()
            if kind == "resync" or (self.resync_needed and self._inbox.empty()):
                await self._resync()
                continue
            try:
                await self._apply_one(kind, payload)
                for hook in self.apply_hooks:
                    await hook(kind, payload)
            except ZtmError as exc:  # the store is away or busy: reload everything once it answers
                if not self.resync_needed:
                    log.warning(
                        "hub cluster: could not apply a change from another hub (%s): %s; will reload", kind,
                        exc.message,
                    )  # fmt: skip
                self.resync_needed = True
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("hub cluster: ignored a malformed notification %s: %r", kind, exc)
            except Exception:  # a bug in one change must not stop the others
                log.exception("hub cluster: applying %s failed", kind)
                self.resync_needed = True

    async def _resync(self) -> None:
        """Reload what other hubs change (endpoints, users, CRL, files, presence, hubs); on failure, try again at
        the next beat."""
        self.resync_needed = False
        try:
            await self._load_everything()
            await self.state.reload_all()
            for hook in self.apply_hooks:
                await hook("resync", {})
        except ZtmError as exc:
            log.warning("hub cluster: reloading from the store failed: %s; trying again", exc.message)
            self.resync_needed = True
            return
        self.resyncs += 1
        self.push_hubs()

    async def _apply_one(self, kind: str, payload: dict[str, Any]) -> None:
        state = self.state
        if kind == "presence":
            ep_id, hub_id = str(payload["ep"]), str(payload["hub"])
            if hub_id == self.me.id:
                return
            if not payload.get("online"):
                current = state.remote.get(ep_id)
                if current is not None and current.hub_id == hub_id:
                    del state.remote[ep_id]
                    self._endpoint_changed(ep_id)
                return
            if payload.get("reload"):
                found = [p for p in await self.store.presences() if p.ep_id == ep_id]
                if not found:
                    return
                presence = found[0]
            else:
                presence = _presence_of(payload["presence"])
            if presence.hub_id not in self.state.hubs:
                await self._read_hubs()  # a hub that just started: its row is new
            state.remote[ep_id] = presence
            local = state.sessions.get(ep_id)
            if local is not None and local.since < presence.since:
                state.supersede(local, f"the endpoint connected to hub {presence.hub_id}")
            self._endpoint_changed(ep_id)
        elif kind == "endpoint":
            record = payload.get("record")
            await state.reload_endpoint(str(payload["id"]), record if isinstance(record, dict) else None,
                                        deleted=payload.get("deleted") is True)  # fmt: skip
        elif kind == "users":
            await state.reload_users()
        elif kind == "evict":
            await state.evicted_elsewhere(str(payload["user"]))
        elif kind == "crl":
            await state.reload_crl()
        elif kind == "policy":
            await state.policy.load()  # the newest version in the store (a later one may have come meanwhile)
        elif kind == "routes":
            await state.net.reload(str(payload["ep"]))
        elif kind == "hub":
            before = self._online_ids()
            await self._read_hubs()
            if self._online_ids() != before or payload.get("id") not in state.hubs:
                self._drop_dead_hubs()
            self.push_hubs()

    def _endpoint_changed(self, ep_id: str) -> None:
        ep = self.state.endpoints.get(ep_id)
        if ep is not None:
            self.state.broadcast({"type": "endpoint", "ep": self.state.endpoint_view(ep)})


def _addr(address: tuple[str, int] | None) -> str:
    if address is None:
        return ""
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _presence_json(p: Presence) -> dict[str, Any]:
    return {
        "ep": p.ep_id,
        "hub": p.hub_id,
        "since": p.since,
        "address": p.address,
        "direct": p.direct,
        "e2e": p.e2e,
        "services": p.services,
    }


def _presence_of(obj: dict[str, Any]) -> Presence:
    services = obj.get("services") or {}
    if not isinstance(services, dict):
        raise TypeError("services")
    return Presence(
        ep_id=str(obj["ep"]),
        hub_id=str(obj["hub"]),
        since=float(obj["since"]),
        address=str(obj.get("address", "")),
        direct=str(obj.get("direct", "")),
        e2e=str(obj.get("e2e", "")),
        services={str(k): [str(s) for s in v] for k, v in services.items()},
    )
