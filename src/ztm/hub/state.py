"""`HubState`: the one owner of the hub's state. Every change (enrolment, sessions, labels, invitations,
evictions, relayed calls) goes through it; it keeps an in-memory view with `HubStore` behind it.

No I/O but the store and the sessions' queues: the routes module turns HTTP/2 requests into calls on this class.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec

from ztm import pki, validate
from ztm.errors import BadInput, Conflict, Forbidden, NotFound, Timeout, Unauthorized, Unavailable
from ztm.hub import limits, meshaddr, meshnet
from ztm.hub.audit import AuditLog
from ztm.hub.authority import ROOT_USER, Authority
from ztm.hub.conns import Connections
from ztm.hub.interest import Interest
from ztm.hub.meshnet import MeshNet
from ztm.hub.policy import HubPolicy
from ztm.hub.store import AddressTaken, EndpointRecord, HubInfo, HubStore, Presence, UserRecord
from ztm.timefmt import iso
from ztm.version import __version__

if TYPE_CHECKING:
    from ztm.hub.cluster import Cluster

log = logging.getLogger("ztm.hub")
JOINING_GRACE = 15.0
"""Seconds an endpoint enrolled but not yet online keeps its name against another endpoint of the same user: two
joins with one name at once (at two hubs of a cluster) give one success and one conflict, not a takeover."""
SEEN_FLUSH = 60.0
"""Seconds between writes of a connected endpoint's last-seen time to the store (it is exact in memory, and written
when the session ends): agents no longer POST heartbeats, so this is what keeps idle sessions from costing writes."""


def encode_event(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode() + b"\n"


@dataclass(frozen=True)
class Peer:
    """Who is on the other end of a connection, taken from its verified certificate only."""

    user: str
    ep_id: str | None
    serial: int
    not_after: float
    address: tuple[str, int] | None
    hub_id: str | None = None
    """Set for another hub of the mesh (a hub certificate; `user` is "" and `ep_id` None): such a peer may use only
    the two forwarding routes (`ztm.hub.peers`)."""


@dataclass
class Session:
    """An endpoint's live control session: its event queue and heartbeat clock."""

    ep_id: str
    user: str
    close_connection: Callable[[], None]
    address: tuple[str, int] | None
    cert_not_after: float
    since: float = field(default_factory=time.time)
    last_heartbeat: float = field(default_factory=time.time)
    received: Callable[[], int] = lambda: 0
    """Bytes received so far on the session's connection: traffic proves the endpoint alive when its heartbeats
    wait behind tunnel data on a slow link."""
    last_traffic: float = field(default_factory=time.time)
    received_at_sweep: int = 0
    seen_stored: float = field(default_factory=time.time)
    """When the sweep last queued this endpoint's last-seen time for the store (at most every `SEEN_FLUSH` s)."""
    conn_key: int | None = None
    """The `Connections` key of the session's connection (the session closes it after its last event)."""
    queue: asyncio.Queue[tuple[str, bytes, str | None] | None] = field(default_factory=asyncio.Queue)
    """(kind, line, key): a keyed item's line is the latest one in `latest` when it is taken."""
    latest: dict[str, bytes] = field(default_factory=dict)
    """Key -> the newest line of a keyed event still waiting (one `endpoint` event per endpoint): a peer that
    changes its labels or goes on- and offline in a loop replaces its waiting event instead of adding one."""
    queued_bytes: int = 0
    e2e: str = ""
    """The end-to-end layer version the agent announced on its event stream (`ztm-e2e`); "" for older agents."""
    interest: Interest = field(default_factory=Interest)
    """Which `endpoint` events the session gets (`ztm.hub.interest`): all, or those about the ids it watches."""
    """Bytes of event lines waiting in `queue`: a budget (`limits.EVENT_QUEUE_BYTES`), not a count of events."""
    closed: bool = False

    def push(self, event: dict[str, Any]) -> None:
        self.push_line(str(event.get("type")), encode_event(event))

    def push_line(self, kind: str, line: bytes, key: str | None = None) -> None:
        """Queue an already encoded event line (broadcasts encode once for every session); a line with a `key`
        replaces a waiting one with the same key. An endpoint that lets more than `EVENT_QUEUE_BYTES` pile up does
        not read its events: its session ends and its connection closes."""
        if self.closed:
            return
        waiting = self.latest.get(key) if key is not None else None
        grows = len(line) - (len(waiting) if waiting is not None else 0)
        if self.queued_bytes + grows > limits.EVENT_QUEUE_BYTES:
            log.warning("endpoint %s does not read its events; closing its session", self.ep_id)
            self.end()
            self.close_connection()  # what is queued would wait behind the stalled stream: drop it with the connection
            return
        if key is not None:
            self.latest[key] = line
            self.queued_bytes += grows
            if waiting is None:
                self.queue.put_nowait((kind, b"", key))
            return
        self._put(kind, line)

    def offer(self, event: dict[str, Any]) -> bool:
        """Queue an event another endpoint caused (a `call` or a `stream`) if that fits in the share of the budget
        such events may take (`PEER_EVENT_BYTES`); False when it does not: the caller is refused, and a flood
        never ends this session."""
        line = encode_event(event)
        if self.closed or self.queued_bytes + len(line) > limits.PEER_EVENT_BYTES:
            return False
        self._put(str(event.get("type")), line)
        return True

    def _put(self, kind: str, line: bytes) -> None:
        self.queued_bytes += len(line)
        self.queue.put_nowait((kind, line, None))

    async def take(self, most: int) -> list[tuple[str, bytes] | None]:
        """Wait for queued events and take up to `most` of them (None: the session ended)."""
        raw = [await self.queue.get()]
        while not self.queue.empty() and len(raw) < most:
            raw.append(self.queue.get_nowait())
        items: list[tuple[str, bytes] | None] = []
        for item in raw:
            if item is None:
                items.append(None)
                continue
            kind, line, key = item
            if key is not None:
                line = self.latest.pop(key, b"")
            self.queued_bytes -= len(line)
            items.append((kind, line))
        return items

    def end(self) -> None:
        """Stop the session: the event writer drains what is queued, then closes the connection."""
        if not self.closed:
            self.closed = True
            self.queue.put_nowait(None)


class HubState:
    def __init__(
        self,
        store: HubStore,
        authority: Authority,
        *,
        endpoints: list[EndpointRecord],
        users: list[UserRecord],
        revoked: list[int],
        max_agents: int,
        cert_ttl: float,
        heartbeat: float,
        max_endpoints_per_user: int = 100,
        mesh_range: str = meshaddr.DEFAULT_RANGE,
        mesh_range6: str | None = None,
    ) -> None:
        """Use `load` (the store is asynchronous)."""
        self.store = store
        self.authority = authority
        self.max_agents = max_agents
        self.max_endpoints_per_user = max_endpoints_per_user
        """Most endpoint records a user other than root may hold (`--max-endpoints-per-user`)."""
        self.cert_ttl = cert_ttl
        self.heartbeat = heartbeat
        self.started = time.time()
        self.endpoints: dict[str, EndpointRecord] = {ep.id: ep for ep in endpoints}
        self.users = {u.name: u for u in users}
        self.sessions: dict[str, Session] = {}
        self._calls: dict[str, tuple[asyncio.Future[Any], str]] = {}
        self.pending_calls = limits.PendingCounts(
            "calls", limits.MAX_PENDING_CALLS_PER_CALLER, limits.MAX_PENDING_CALLS_PER_TARGET
        )
        self._seen: dict[str, float] = {}
        self._touch_failed = False
        self.counters: collections.Counter[str] = collections.Counter()
        self.offline_hooks: list[Callable[[str], None]] = []
        """Called with an endpoint id when its session ends (the relay fails streams waiting on it)."""
        self.version = 0
        """Bumped on every change of the endpoint list (not on heartbeats); keys the list cache."""
        self._list_cache: tuple[int, float, bytes] | None = None
        self.services: dict[str, dict[str, list[str]]] = {}
        """Per endpoint id, per app: the services it offers (published by agents after every hello)."""
        self.direct: dict[str, str] = {}
        """Per online endpoint id: the `HOST:PORT` where it accepts direct connections from peers (POST /api/direct)."""
        self.hubs: dict[str, HubInfo] = {}
        """Every hub of the mesh, this one included, as last read from the store (`ztm.hub.cluster`)."""
        self.remote: dict[str, Presence] = {}
        """Endpoint id -> its session on another online hub of the cluster (empty on a single hub)."""
        self.cluster: Cluster | None = None
        """This hub among the hubs of its store (`ztm.hub.cluster`; it sets itself here)."""
        self.conns = Connections()
        """Every live connection and its peer: closed on eviction, revocation and certificate expiry."""
        self._revoked: set[int] = set(revoked)
        authority.rebuild_crl(self._revoked)
        self.audit = AuditLog(store, authority.hub_id, self.endpoints, self.counters)
        """The append-only audit log (`ztm.hub.audit`)."""
        self.policy = HubPolicy(self)
        """The mesh's access policy (`ztm.hub.policy`; loaded by `load`)."""
        self.net = MeshNet(self, mesh_range, mesh_range6 or str(meshaddr.ula48(authority.mesh_id)))
        """Endpoint addresses and subnet routes (`ztm.hub.meshnet`; loaded by `load`)."""

    @classmethod
    async def load(
        cls,
        store: HubStore,
        authority: Authority,
        *,
        max_agents: int,
        cert_ttl: float,
        heartbeat: float,
        max_endpoints_per_user: int = 100,
        mesh_range: str = meshaddr.DEFAULT_RANGE,
        mesh_range6: str | None = None,
    ) -> HubState:
        state = cls(
            store,
            authority,
            endpoints=await store.endpoints(),
            users=await store.users(),
            revoked=await store.revoked_serials(time.time()),
            max_agents=max_agents,
            cert_ttl=cert_ttl,
            heartbeat=heartbeat,
            max_endpoints_per_user=max_endpoints_per_user,
            mesh_range=mesh_range,
            mesh_range6=mesh_range6,
        )
        await state.policy.load()
        await state.net.load()
        return state

    # identity
    def refusal(self, peer: Peer) -> str | None:
        """Why `peer` may do nothing now (None: it may). Checked at accept and on every request, behind the CRL:
        a revoked serial, an evicted or unknown user, an expired certificate."""
        if peer.serial in self._revoked:
            return "this certificate is revoked; ask root for a new permit"
        if peer.hub_id is not None:
            if peer.hub_id not in self.hubs:
                return f"hub {peer.hub_id} is not a hub of this mesh (not in the store's hubs table)"
            return "this hub certificate expired" if time.time() >= peer.not_after else None
        user = self.users.get(peer.user)
        if user is None:
            return f"user {peer.user!r} is not a member of this mesh; ask root for a permit (ztm invite)"
        if user.evicted_at is not None:
            return f"user {peer.user!r} was evicted from this mesh; ask root for a new permit"
        if time.time() >= peer.not_after:
            return "this certificate expired; the agent enrols again with its permit"
        return None

    def check_peer(self, peer: Peer) -> None:
        """Raise `Unauthorized` if `peer` may do nothing now (`refusal`)."""
        reason = self.refusal(peer)
        if reason is not None:
            raise Unauthorized(reason)

    def is_online(self, ep_id: str) -> bool:
        """Whether the endpoint has a live session on this hub or on another online hub of the cluster."""
        return ep_id in self.sessions or ep_id in self.remote

    def location(self, ep_id: str) -> str | None:
        """The id of the other hub that holds the endpoint's live session; None when it is here or offline."""
        if ep_id in self.sessions:
            return None
        presence = self.remote.get(ep_id)
        return presence.hub_id if presence is not None else None

    def require_ep(self, peer: Peer) -> EndpointRecord:
        if peer.ep_id is None:
            raise Forbidden("this route needs an endpoint certificate; enrol first (POST /api/enroll)")
        ep = self.endpoints.get(peer.ep_id)
        if ep is None or ep.user != peer.user:
            raise Forbidden("unknown endpoint certificate; enrol again")
        return ep

    async def _require_root(self, peer: Peer, what: str, target: str) -> None:
        """403 unless `peer` is root; the refusal is audited (`denied`)."""
        if peer.user != ROOT_USER:
            refusal = f"only root may {what}; you are {peer.user!r}"
            await self.audit.denied(peer, what, target, refusal)
            raise Forbidden(refusal)

    # enrolment
    async def enroll(
        self,
        peer: Peer,
        *,
        ep_id: str,
        name: str,
        public_key: ec.EllipticCurvePublicKey,
        hostname: str,
        version: str,
        labels: list[str],
    ) -> tuple[EndpointRecord, str]:
        """Register (or re-register) an endpoint of the peer's user; returns it and a short-lived cert PEM."""
        if peer.ep_id is not None:
            raise Forbidden("enrol with a user certificate (the permit's), not an endpoint certificate")
        self.check_peer(peer)
        existing = self.endpoints.get(ep_id)
        if existing is not None and existing.user != peer.user:
            raise Forbidden(f"endpoint id {ep_id} belongs to another user")
        if existing is None and len(self.sessions) >= self.max_agents:
            raise Unavailable(f"the hub is full: it serves at most {self.max_agents} endpoints (--max-agents)")
        if existing is None and peer.user != ROOT_USER:
            held = sum(1 for e in self.endpoints.values() if e.user == peer.user and e.name != name)
            if held >= self.max_endpoints_per_user:
                raise Conflict(
                    f"user {peer.user!r} has {held} endpoints, the most this hub allows per user "
                    "(--max-endpoints-per-user); root can remove one with `ztm delete ep NAME`, "
                    "or join with the name of one of them"
                )
        now = time.time()
        ttl = self._ttl_within(peer.user, peer.not_after, now)  # the user certificate (permit) bounds the endpoint's
        replaces: list[str] = []
        for other in list(self.endpoints.values()):
            if other.name == name and other.id != ep_id:
                owner = self.users.get(other.user)
                released = owner is None or owner.evicted_at is not None  # an evicted user holds no names
                if other.user != peer.user and not released:
                    raise Conflict(f"endpoint name {name!r} is taken by user {other.user!r}; join with another --as")
                if self.is_online(other.id):
                    raise Conflict(f"endpoint name {name!r} is in use by an online endpoint; join with another --as")
                if other.last_seen == other.first_seen and now - (other.first_seen or 0) < JOINING_GRACE:
                    # enrolled moments ago (perhaps at another hub of the cluster) and not online yet: a join in
                    # progress, not an old record to take over
                    raise Conflict(
                        f"endpoint name {name!r} was just taken by another join; join with another --as, or try "
                        f"again in {JOINING_GRACE:g} s"
                    )
                replaces.append(other.id)
        kept = existing.labels if existing is not None else []
        self.policy.check_tags(peer.user, [x for x in labels if x not in kept])
        mesh_ip = existing.mesh_ip if existing is not None else None
        if existing is not None and mesh_ip is None and self.store.shared:
            stored = await self.store.endpoint(ep_id)  # another hub may have given it one since this hub loaded it
            mesh_ip = stored.mesh_ip if stored is not None else None
        for other_id in replaces:  # a re-join under the same name keeps the replaced endpoint's address
            mesh_ip = mesh_ip or self.endpoints[other_id].mesh_ip
        tried: set[str] = set()
        if mesh_ip is None:
            try:
                mesh_ip = self.net.pick()
            except Conflict:
                if existing is None:
                    raise  # a full range refuses a new endpoint before anything is written
                # an endpoint recorded before addresses existed, in a full range: it enrols as before
        picked = {mesh_ip} if mesh_ip is not None else set()
        self.net.held |= picked  # no other enrolment here picks it while this one writes it
        try:
            ep = EndpointRecord(
                id=ep_id,
                name=name,
                user=peer.user,
                labels=labels if existing is None or labels else existing.labels,
                version=version,
                hostname=hostname,
                first_seen=existing.first_seen if existing else now,
                last_seen=now,
                user_not_after=peer.not_after,
                mesh_ip=mesh_ip,
            )
            detail = {"ep": ep_id, "hostname": hostname, "version": version, "labels": ep.labels, "replaces": replaces}
            await self.audit.record(peer, "join" if existing is None else "enroll", name, detail)
            while True:
                try:
                    await self.store.enroll_endpoint(ep, replaces=replaces)  # first: a failed write changes nothing
                    break
                except AddressTaken:  # another hub of the cluster gave this address to another endpoint meanwhile
                    self.counters["mesh_ip_retries"] += 1
                    log.info("mesh address %s was taken at another hub; %s picks again", ep.mesh_ip, name)
                    tried.add(str(ep.mesh_ip))
                    if len(tried) >= meshnet.PICK_TRIES:
                        raise Unavailable("the hubs of this mesh keep taking the same addresses; try again") from None
                    ep.mesh_ip = self.net.pick(tried)
                    self.net.held.add(ep.mesh_ip)
            cert = await self.authority.issue_endpoint(peer.user, ep_id, public_key, ttl)
            for other_id in replaces:
                self.endpoints.pop(other_id, None)
                self.services.pop(other_id, None)
                self.net.forget(other_id)
            self.endpoints[ep_id] = ep
        finally:  # in the registry now (or failed): no longer held
            self.net.held -= picked | tried | {str(ep.mesh_ip)}
        self.version += 1
        self.counters["enrollments"] += 1
        for changed in [*replaces, ep_id]:
            await self.publish_endpoint(changed)
        log.info("enrolled endpoint %s (%s) of user %s", name, ep_id, peer.user)
        return ep, pki.cert_to_pem(cert)

    async def renew(self, peer: Peer, public_key: ec.EllipticCurvePublicKey) -> str:
        self.check_peer(peer)
        ep = self.require_ep(peer)
        user_end = ep.user_not_after if ep.user_not_after is not None else await self.store.user_cert_end(ep.user)
        if user_end is not None and user_end <= peer.not_after + 1:
            raise Forbidden(
                f"the invitation of user {ep.user!r} ends at {iso(user_end)} and this endpoint certificate already "
                "lasts until then; ask root for a new permit (ztm invite) and join with it"
            )
        ttl = self._ttl_within(ep.user, user_end)
        await self.audit.record(peer, "renew", ep.name, {"ep": ep.id, "ttl": round(ttl)})
        cert = await self.authority.issue_endpoint(ep.user, ep.id, public_key, ttl)
        log.info("renewed the certificate of endpoint %s (%s)", ep.name, ep.id)
        return pki.cert_to_pem(cert)

    def _ttl_within(self, user: str, user_end: float | None, now: float | None = None) -> float:
        """An endpoint certificate's lifetime: `--cert-ttl`, cut at the end of the user's invitation (the user
        certificate), so that `ztm invite --days N` bounds the access it grants."""
        if user_end is None:
            return self.cert_ttl
        left = user_end - (time.time() if now is None else now)
        if left < 1.0:
            raise Forbidden(
                f"the invitation of user {user!r} expired at {iso(user_end)}; ask root for a new permit (ztm invite)"
            )
        return min(self.cert_ttl, left)

    # sessions
    def open_session(
        self,
        peer: Peer,
        close_connection: Callable[[], None],
        received: Callable[[], int] = lambda: 0,
        conn_key: int | None = None,
    ) -> Session:
        self.check_peer(peer)
        ep = self.require_ep(peer)
        old = self.sessions.get(ep.id)
        if old is None and len(self.sessions) >= self.max_agents:
            raise Unavailable(f"the hub is full: it serves at most {self.max_agents} endpoints (--max-agents)")
        session = Session(
            ep_id=ep.id,
            user=ep.user,
            close_connection=close_connection,
            received=received,
            address=peer.address,
            cert_not_after=peer.not_after,
            conn_key=conn_key,
        )
        self.sessions[ep.id] = session
        if old is not None:
            old.end()
        else:
            log.info("endpoint %s (%s) is online from %s", ep.name, ep.id, _addr(peer.address))
        ep.last_seen = time.time()
        session.push(
            {
                "type": "hello",
                "ep": self.endpoint_view(ep),
                "heartbeat": self.heartbeat,
                "liveness": "ping",  # an HTTP/2 PING every `heartbeat` s will do: no POST /api/heartbeat needed
                "hub": self.status(),
            }
        )
        self.policy.push_to(session)  # right after the hello, before any endpoint, stream or call event
        self.broadcast({"type": "endpoint", "ep": self.endpoint_view(ep)}, exclude=ep.id)
        if self.cluster is not None:
            self.cluster.session_changed(session)
        return session

    def close_session(self, session: Session) -> None:
        session.end()
        if self.sessions.get(session.ep_id) is session:
            del self.sessions[session.ep_id]
            self.direct.pop(session.ep_id, None)
            ep = self.endpoints.get(session.ep_id)
            if ep is not None:
                ep.last_seen = time.time()
                self._seen[ep.id] = ep.last_seen
                log.info("endpoint %s (%s) is offline", ep.name, ep.id)
                self.broadcast({"type": "endpoint", "ep": self.endpoint_view(ep)})
            if self.cluster is not None:
                self.cluster.session_changed(session)
            self._session_gone(session)

    def supersede(self, session: Session, why: str) -> None:
        """The endpoint opened a newer session at another hub (it moved): end this one without calling the
        endpoint offline. Its connection stays until its streams end (the agent retires it)."""
        if self.sessions.get(session.ep_id) is not session:
            return
        log.info("endpoint %s moved: %s", session.ep_id, why)
        session.end()
        del self.sessions[session.ep_id]
        self.direct.pop(session.ep_id, None)
        self._session_gone(session)

    def _session_gone(self, session: Session) -> None:
        """Fail what waits on the session: streams it was offered, calls it was asked."""
        for hook in self.offline_hooks:
            hook(session.ep_id)
        for call_id, (future, target) in list(self._calls.items()):
            if target == session.ep_id and not future.done():
                future.set_exception(Unavailable("the endpoint went offline before it answered"))
                self._calls.pop(call_id, None)

    def beat(self, peer: Peer) -> dict[str, Any]:
        ep = self.require_ep(peer)
        session = self.sessions.get(ep.id)
        if session is None:
            raise Unavailable("no event stream is open for this endpoint; open GET /api/events first")
        session.last_heartbeat = ep.last_seen = time.time()
        self.counters["heartbeats"] += 1
        self._seen[ep.id] = ep.last_seen
        return {"time": iso(session.last_heartbeat), "interval": self.heartbeat}

    async def sweep(self) -> None:
        """Close sessions whose heartbeats stopped or whose certificate expired; flush last-seen times."""
        now = time.time()
        for session in list(self.sessions.values()):
            received = session.received()
            if received != session.received_at_sweep:
                session.received_at_sweep, session.last_traffic = received, now
                ep = self.endpoints.get(session.ep_id)
                if ep is not None:  # heard from (a PING, a call, tunnel data): what a heartbeat used to record
                    ep.last_seen = now
                    if now - session.seen_stored >= SEEN_FLUSH:
                        session.seen_stored, self._seen[ep.id] = now, now
            alive = max(session.last_heartbeat, session.last_traffic)
            if now - alive > 3 * self.heartbeat or now > session.cert_not_after:
                log.info("endpoint %s missed its heartbeats or its certificate expired; closing", session.ep_id)
                self.close_session(session)
                session.close_connection()
        seen, self._seen = self._seen, {}
        try:
            await self.store.touch_endpoints(seen)
        except Unavailable as exc:  # a full disk must not stop the sweeper: keep the times for the next sweep
            self._seen = {**seen, **self._seen}
            if not self._touch_failed:
                log.warning("%s", exc.message)
            self._touch_failed = True
        else:
            self._touch_failed = False

    async def refresh_crl(self) -> None:
        """Re-sign the CRL (it carries a next-update time) and drop revoked serials that have expired anyway."""
        now = time.time()
        await self.store.prune_certs(now)
        await self._crl_changed(now)

    async def _crl_changed(self, now: float, *, spare: set[int] | None = None) -> None:
        """After revocations changed: a new CRL (and TLS context), agents told (`crl`: they reload it for direct
        channels), and every connection of a revoked certificate closed but those in `spare` (closed by their
        sessions after a last event)."""
        self._revoked = set(await self.store.revoked_serials(now))
        self.authority.rebuild_crl(self._revoked)
        self.broadcast({"type": "crl", "number": self.authority.crl_number})
        revoked = self._revoked
        self.conns.close_where(lambda p: p.serial in revoked, spare=spare or set())

    def broadcast(self, event: dict[str, Any], *, exclude: str | None = None, bump: bool = True) -> None:
        """Queue `event` for every session here; `bump`: it changes the endpoint list (drop the list cache)."""
        if bump:
            self.version += 1
        kind, line = str(event.get("type")), encode_event(event)
        if kind != "endpoint":
            for ep_id, session in self.sessions.items():
                if ep_id != exclude:
                    session.push_line(kind, line)
            return
        about = str(event["ep"]["id"])
        key = f"endpoint/{about}"  # only the newest view matters
        sent = 0
        for ep_id, session in self.sessions.items():  # only to those that keep the whole list or watch `about`
            if ep_id != exclude and (ep_id == about or session.interest.wants(about)):
                session.push_line(kind, line, key)
                sent += 1
        self.counters["endpoint_events"] += sent

    def watch(self, ep_id: str, other: str) -> None:
        """The endpoint `ep_id` (a session here, or nothing happens) deals with endpoint `other` (it looked it up, or
        a stream or call went between them): its session gets `endpoint` events about `other` from now on; an id
        forgotten to make room is told to the agent (`unwatch`), which drops its copy."""
        session = self.sessions.get(ep_id)
        if session is None or session.closed or other == ep_id:
            return
        forgotten = session.interest.watch(other)
        if forgotten is not None:
            session.push({"type": "unwatch", "ep": forgotten})

    def want_everything(self, peer: Peer) -> dict[str, Any]:
        """The endpoint's live session gets every `endpoint` event from now on (its agent now keeps the whole list:
        a policy arrived, or network mode started); the agent then loads the list."""
        ep = self.require_ep(peer)
        session = self.sessions.get(ep.id)
        if session is None or session.closed:
            raise Unavailable("no event stream is open for this endpoint; open GET /api/events first")
        session.interest.want_everything()
        return {"events": "all"}

    # views
    def status(self) -> dict[str, Any]:
        return {
            "hub_id": self.authority.hub_id,
            "mesh_id": self.authority.mesh_id,
            "version": __version__,
            "names": [str(a) for a in self.authority.names],
            "endpoints": len(self.endpoints),
            "online": len(self.sessions),
            "max_agents": self.max_agents,
            "started": iso(self.started),
            "zone": self.cluster.me.zone if self.cluster is not None else "",
            "hubs": self.cluster.hub_views() if self.cluster is not None else [],
            "mesh_range": str(self.net.range4),
            "mesh_range6": str(self.net.range6),
        }

    def endpoint_view(self, ep: EndpointRecord) -> dict[str, Any]:
        session = self.sessions.get(ep.id)
        address = session.address if session else None
        remote = self.remote.get(ep.id) if session is None else None
        if remote is not None and remote.address:
            host, _, port = remote.address.rpartition(":")
            address = (host.strip("[]"), int(port)) if port.isdecimal() else None
        return {
            "id": ep.id,
            "name": ep.name,
            "user": ep.user,
            "online": session is not None or remote is not None,
            "hub": (session and self.authority.hub_id) or (remote.hub_id if remote is not None else None),
            "labels": list(ep.labels),
            "version": ep.version,
            "hostname": ep.hostname,
            "ip": address[0] if address else None,
            "port": address[1] if address else None,
            "first_seen": iso(ep.first_seen),
            "last_seen": iso(ep.last_seen),
            "heartbeat": iso(session.last_heartbeat) if session else None,
            "online_since": iso(session.since) if session else (iso(remote.since) if remote is not None else None),
            **self.net.view_fields(ep),
        }

    def find_endpoint(self, ref: str) -> EndpointRecord:
        ep = self.endpoints.get(ref)
        if ep is not None:
            return ep
        if validate.looks_like_id(ref):  # never a name: one enrolled before names that read as ids were refused
            raise NotFound(f"no endpoint with id {ref!r} in this mesh")
        named = [e for e in self.endpoints.values() if e.name == ref]
        if not named:
            raise NotFound(f"no endpoint named {ref!r} in this mesh")
        return max(named, key=lambda e: (self.is_online(e.id), e.last_seen or 0))

    def list_endpoints(self) -> list[dict[str, Any]]:
        return [self.endpoint_view(ep) for ep in sorted(self.endpoints.values(), key=lambda e: (e.name, e.id))]

    def list_endpoints_json(self, max_age: float = 1.0) -> bytes:
        """The endpoint list, encoded; reused while nothing changed but heartbeat times, for at most `max_age` s.

        With a thousand endpoints listing at once this turns a thousand encodings into one per second."""
        now = time.monotonic()
        cached = self._list_cache
        if cached is not None and cached[0] == self.version and now - cached[1] < max_age:
            return cached[2]
        body = json.dumps(self.list_endpoints(), separators=(",", ":")).encode()
        self._list_cache = (self.version, now, body)
        return body

    def list_users(self) -> list[dict[str, Any]]:
        counts: dict[str, int] = {}
        for ep in self.endpoints.values():
            counts[ep.user] = counts.get(ep.user, 0) + 1
        return [
            {
                "name": u.name,
                "evicted": u.evicted_at is not None,
                "evicted_at": iso(u.evicted_at),
                "created": iso(u.created),
                "endpoints": counts.get(u.name, 0),
            }
            for u in self.users.values()
        ]

    # services
    async def set_services(self, peer: Peer, app: str, services: list[str]) -> None:
        ep = self.require_ep(peer)
        offered = self.services.setdefault(ep.id, {})
        if services and app not in offered and len(offered) >= limits.MAX_APPS_PER_ENDPOINT:
            raise BadInput(
                f"this endpoint announces services for {len(offered)} apps, the most the hub keeps; withdraw some "
                "(an empty list of services) first"
            )
        if offered.get(app, []) != sorted(set(services)):  # a change (agents publish again after every hello)
            await self.audit.record(peer, "app-publish", app, {"ep": ep.id, "services": sorted(set(services))})
            offered = self.services.setdefault(ep.id, {})
        if services:
            offered[app] = sorted(set(services))
        else:
            offered.pop(app, None)
        session = self.sessions.get(ep.id)
        if session is not None and self.cluster is not None:
            self.cluster.session_changed(session)

    def find_services(self, app: str, service: str | None) -> list[dict[str, Any]]:
        found = []
        everywhere = dict(self.services)
        for ep_id, presence in self.remote.items():
            if ep_id not in self.sessions:  # live elsewhere: newer than what it announced here before it moved
                everywhere[ep_id] = presence.services
        for ep_id, offered in everywhere.items():
            ep = self.endpoints.get(ep_id)
            if ep is None:
                continue
            for name in offered.get(app, []):
                if service is None or name == service:
                    found.append(
                        {
                            "ep": ep.id,
                            "name": ep.name,
                            "user": ep.user,
                            "online": self.is_online(ep.id),
                            "app": app,
                            "service": name,
                            "direct": self._direct_of(ep.id),
                        }
                    )
        return sorted(found, key=lambda f: (f["service"], f["name"]))

    def _direct_of(self, ep_id: str) -> str | None:
        here = self.direct.get(ep_id)
        if here is not None or ep_id in self.sessions:
            return here
        remote = self.remote.get(ep_id)
        return (remote.direct or None) if remote is not None else None

    def set_direct(self, peer: Peer, host: str | None, port: int | None) -> dict[str, Any]:
        """Record (port None: forget) where an online endpoint accepts direct connections; a wildcard or missing
        host means the address the hub sees it connect from (right unless it is behind NAT, and then direct
        attempts fail and peers use the relay)."""
        ep = self.require_ep(peer)
        session = self.sessions.get(ep.id)
        if session is None:
            raise Unavailable("open the event stream (GET /api/events) before announcing a direct address")
        if self.cluster is not None:
            self.cluster.session_changed(session)
        if port is None:
            self.direct.pop(ep.id, None)
            return {"direct": None}
        if host in (None, "", "0.0.0.0", "::"):
            host = session.address[0] if session.address else None
        if host is None:
            raise BadInput("the hub cannot tell this endpoint's address; give host")
        self.direct[ep.id] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return {"direct": self.direct[ep.id]}

    # labels
    async def set_labels(self, peer: Peer, ref: str, add: list[str], delete: list[str]) -> dict[str, Any]:
        ep = self.find_endpoint(ref)
        if peer.user not in (ep.user, ROOT_USER):
            raise Forbidden(f"only {ep.user!r} (the owner) or root may label endpoint {ep.name!r}")
        labels = [x for x in ep.labels if x not in delete]
        labels += [x for x in add if x not in labels]
        if len(labels) > 32:
            raise BadInput("an endpoint has at most 32 labels")
        self.policy.check_tags(peer.user, [x for x in labels if x not in ep.labels])
        await self.audit.record(peer, "label", ep.name, {"ep": ep.id, "add": add, "delete": delete, "labels": labels})
        await self.store.save_endpoint(dataclasses.replace(ep, labels=labels))  # first: a failed write changes nothing
        ep.labels = labels
        view = self.endpoint_view(ep)
        self.broadcast({"type": "endpoint", "ep": view})
        await self.publish_endpoint(ep.id)
        return view

    # users
    async def invite(self, peer: Peer, user: str, public_key: ec.EllipticCurvePublicKey, days: int) -> dict[str, Any]:
        await self._require_root(peer, "invite users", user)
        if user == ROOT_USER:
            raise BadInput("root exists already; invite another user name")
        await self.audit.record(peer, "invite", user, {"days": days})
        cert = await self.authority.issue_user(user, public_key, days)
        await self.store.upsert_user(user, evicted_at=None)
        self.users = {u.name: u for u in await self.store.users()}
        await self.publish("users", {"user": user})
        log.info("root invited user %s (certificate valid %d days)", user, days)
        return {
            "ca": self.authority.ca_pem,
            "agent": {"certificate": pki.cert_to_pem(cert)},
            "bootstraps": self.bootstraps(),
        }

    def bootstraps(self) -> list[str]:
        """Every address of every hub of the mesh, this hub's first: what permits list."""
        addresses = [str(a) for a in self.authority.names]
        for hub in sorted(self.hubs.values(), key=lambda h: h.id):
            addresses += [a for a in hub.addresses if a not in addresses]
        return addresses

    async def evict(self, peer: Peer, user: str) -> dict[str, Any]:
        await self._require_root(peer, "evict users", user)
        if user == ROOT_USER:
            raise BadInput("root cannot be evicted")
        if user not in self.users:
            raise NotFound(f"no user named {user!r}; see `ztm get user`")
        now = time.time()
        await self.audit.record(peer, "evict", user)
        await self.store.evict_user(user, now)
        self.users = {u.name: u for u in await self.store.users()}
        await self._cut_user(user, now)
        await self.publish("evict", {"user": user})
        self.counters["evictions"] += 1
        log.info("root evicted user %s; its certificates are revoked and its sessions closed", user)
        return next(u for u in self.list_users() if u["name"] == user)

    async def _cut_user(self, user: str, now: float) -> None:
        """The user is evicted (here or at another hub): new CRL, sessions told and closed, connections closed."""
        # Each live session ends with an `evicted` event (its writer closes the connection once it is out, within
        # 0.5 s at worst); every other connection of the user closes now. Requests in between are refused.
        sessions = [s for s in self.sessions.values() if s.user == user]
        spare = {s.conn_key for s in sessions if s.conn_key is not None}
        await self._crl_changed(now, spare=spare)
        self.conns.close_where(lambda p: p.user == user, spare=spare)
        for session in sessions:
            session.push({"type": "evicted", "reason": "root evicted this user from the mesh"})
            self.close_session(session)
            asyncio.get_running_loop().call_later(0.5, session.close_connection)

    async def delete_endpoint(self, peer: Peer, ref: str) -> dict[str, Any]:
        """Root removes an endpoint record: its name and its user's quota slot are free again, its certificates
        are revoked and its connections closed (its agent has to join again). Returns the record as it was."""
        await self._require_root(peer, "delete endpoints", ref)
        ep = self.find_endpoint(ref)
        if ep.id == peer.ep_id:
            raise BadInput(f"{ep.name!r} is the endpoint you ask from; delete it from another one, or `ztm leave`")
        view = self.endpoint_view(ep)
        await self.audit.record(peer, "leave", ep.name, {"ep": ep.id, "user": ep.user})
        await self.store.delete_endpoint(ep.id)  # saved first: a failed write changes nothing
        del self.endpoints[ep.id]
        self.services.pop(ep.id, None)
        self.net.forget(ep.id)
        session = self.sessions.get(ep.id)
        if session is not None:
            self.close_session(session)
        await self._crl_changed(time.time())
        self.conns.close_where(lambda p: p.ep_id == ep.id)
        self.broadcast({"type": "endpoint", "ep": {**view, "online": False, "deleted": True}})
        await self.publish_endpoint(ep.id)
        log.info("root deleted endpoint %s (%s) of user %s", ep.name, ep.id, ep.user)
        return view

    # changes made at other hubs of the cluster (`ztm.hub.cluster` applies their notifications here)
    async def publish(self, kind: str, payload: dict[str, Any]) -> None:
        """Tell the other hubs of the cluster that shared state changed (after the store write)."""
        if self.cluster is not None:
            await self.cluster.publish(kind, payload)

    async def publish_endpoint(self, ep_id: str) -> None:
        """Tell the other hubs that the endpoint's record changed, with the record when it fits (they then need no
        store call), or that it was deleted."""
        ep = self.endpoints.get(ep_id)
        payload: dict[str, Any] = {"id": ep_id, "deleted": True}
        if ep is not None:
            payload = {"id": ep_id, "record": dataclasses.asdict(ep)}
            if len(json.dumps(payload)) > 6000:
                payload = {"id": ep_id}
        await self.publish("endpoint", payload)

    async def reload_endpoint(self, ep_id: str, sent: dict[str, Any] | None = None, *, deleted: bool = False) -> None:
        """Another hub enrolled, relabelled or deleted this endpoint: take the record it sent, or the store's."""
        if deleted:
            record = None
        elif sent is not None:
            record = EndpointRecord(**sent)
            if record.id != ep_id or not isinstance(record.labels, list):
                raise ValueError("the record names another endpoint")
        else:
            record = await self.store.endpoint(ep_id)
        old = self.endpoints.get(ep_id)
        if record is None:
            if old is None:
                return
            view = self.endpoint_view(old)
            del self.endpoints[ep_id]
            self.services.pop(ep_id, None)
            self.net.forget(ep_id)
            self.remote.pop(ep_id, None)
            session = self.sessions.get(ep_id)
            if session is not None:
                self.close_session(session)
            await self._crl_changed(time.time())
            self.conns.close_where(lambda p: p.ep_id == ep_id)
            self.broadcast({"type": "endpoint", "ep": {**view, "online": False, "deleted": True}})
            return
        if old is not None and (old.last_seen or 0) > (record.last_seen or 0):
            record.last_seen = old.last_seen
        self.endpoints[ep_id] = record
        if old is None and not self.is_online(ep_id):
            self.version += 1  # new and not online yet: its presence, a moment later, tells the agents
        elif record != old:
            self.broadcast({"type": "endpoint", "ep": self.endpoint_view(record)})

    async def ensure_endpoint(self, ep_id: str) -> None:
        """Before refusing an endpoint certificate as unknown: read its record from the store (a hub that missed
        the enrolment at another hub, e.g. while it reloads, still knows every endpoint that exists)."""
        if ep_id not in self.endpoints and self.store.shared:
            record = await self.store.endpoint(ep_id)
            if record is not None and ep_id not in self.endpoints:
                self.endpoints[ep_id] = record
                self.version += 1

    async def reload_users(self) -> None:
        self.users = {u.name: u for u in await self.store.users()}

    async def reload_crl(self) -> None:
        await self._crl_changed(time.time())

    async def evicted_elsewhere(self, user: str) -> None:
        """Root evicted `user` at another hub: the same cut here (CRL, sessions, connections)."""
        await self.reload_users()
        await self._cut_user(user, time.time())
        log.info("user %s was evicted at another hub; its sessions here are closed", user)

    async def reload_all(self) -> None:
        """Notifications may have been missed (the store was away): reload what other hubs change."""
        records = {ep.id: ep for ep in await self.store.endpoints()}
        for ep_id in set(self.endpoints) | set(records):
            if self.endpoints.get(ep_id) != records.get(ep_id):
                await self.reload_endpoint(ep_id)
        evicted_before = {u.name for u in self.users.values() if u.evicted_at is not None}
        await self.reload_users()
        for user in self.users.values():
            if user.evicted_at is not None and user.name not in evicted_before:
                await self._cut_user(user.name, time.time())
        await self._crl_changed(time.time())
        await self.policy.load()
        await self.net.reload_all()

    # relayed calls (hub -> endpoint requests ride the endpoint's event stream)
    async def call(self, peer: Peer, ref: str, method: str, params: Any, timeout: float) -> Any:
        return await self.call_as(self.require_ep(peer), ref, method, params, timeout)

    async def call_as(
        self, caller: EndpointRecord, ref: str, method: str, params: Any, timeout: float, *, forwarded: bool = False
    ) -> Any:
        """A call from `caller` (verified here, or by the hub that `forwarded` it) to an endpoint of this hub."""
        target = self.find_endpoint(ref)
        session = self.sessions.get(target.id)
        if session is None or session.closed:
            if forwarded:  # never forwarded twice: a stale presence or a loop ends here
                raise Unavailable(f"endpoint {target.name!r} is not on this hub")
            raise Unavailable(f"endpoint {target.name!r} is offline")
        self.watch(target.id, caller.id)
        size = len(json.dumps(params, separators=(",", ":")).encode())
        if size > limits.MAX_CALL_PARAMS:
            raise BadInput(f"call params are {size} bytes of JSON; the hub relays at most {limits.MAX_CALL_PARAMS}")
        self.pending_calls.reserve(caller.id, target.id, target.name)
        try:
            call_id = uuid.uuid4().hex
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            event = {
                "type": "call",
                "id": call_id,
                "from": {"ep": caller.id, "name": caller.name, "user": caller.user},
                "method": method,
                "params": params,
            }
            if not session.offer(event):
                self.counters["calls_refused"] += 1
                raise Unavailable(f"endpoint {target.name!r} has too many events waiting to be read; try again later")
            self.counters["calls"] += 1
            self._calls[call_id] = (future, target.id)
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise Timeout(f"endpoint {target.name!r} did not answer within {timeout:g}s") from None
            finally:
                self._calls.pop(call_id, None)
        finally:
            self.pending_calls.release(caller.id, target.id)

    def answer(self, peer: Peer, call_id: str, body: dict[str, Any]) -> None:
        ep = self.require_ep(peer)
        entry = self._calls.get(call_id)
        if entry is None:
            raise NotFound("no such call (it may have timed out)")
        future, target = entry
        if target != ep.id:
            raise Forbidden("this call was not addressed to you")
        if not future.done():
            future.set_result(body)


def _addr(address: tuple[str, int] | None) -> str:
    return f"{address[0]}:{address[1]}" if address else "?"
