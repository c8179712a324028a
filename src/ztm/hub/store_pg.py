"""The hub store on PostgreSQL (`--store postgresql://...`): every hub started on the same database serves one mesh.

`await PgStore.open(url, password)` connects (see `ztm.hub.pgconn` for timeouts, outage and reconnect), creates or
migrates the schema, and starts listening for other hubs' notifications. Each method is one statement or one
transaction, so a failure (`Unavailable` while the server is away) writes nothing half.

Schema: `MIGRATIONS` is append-only (released entries are never edited); `ztm_schema(version)` records how many ran.
All pending ones run in one transaction under an advisory lock, so hubs starting together migrate once. A database
migrated by a newer ztm is refused. Tables: `meta`, `users`, `certs`, `endpoints` (names and `mesh_ip` unique),
`files` (as in the SQLite store), `policy_versions` and the append-only `audit` (issue 16), `routes` (issue 17) and,
for the cluster, `hubs` (heartbeats in the database's clock) and `presence`.

Cross-hub rules enforced here: `create_meta` stores a new mesh only if there is none (advisory lock), and a name
taken by a concurrent enrolment at another hub is a `Conflict` from the unique index, never a second record; a policy
version's number is taken under an advisory lock, so concurrent sets at two hubs get two numbers.
Notifications go out on channel `ztm_mesh` as `{"hub", "sender", "kind", "payload"}` JSON (< 8,000 bytes).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pgerrors

from ztm.errors import BadInput, Conflict, ZtmError
from ztm.hub.pgconn import CHANNEL, Conn, Notify, PgLink
from ztm.hub.store import (
    AddressTaken,
    AuditEntry,
    EndpointRecord,
    HubInfo,
    HubStore,
    PolicyVersion,
    Presence,
    RouteRecord,
    UserRecord,
)
from ztm.hub.storeurl import StoreUrl

if TYPE_CHECKING:
    from ztm.hub.migrate import MeshSnapshot

MIGRATIONS: list[str] = [
    # 1: what the SQLite store keeps
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE users (name TEXT PRIMARY KEY, created DOUBLE PRECISION NOT NULL, evicted_at DOUBLE PRECISION);
    CREATE TABLE certs (
        serial TEXT PRIMARY KEY, "user" TEXT NOT NULL, ep_id TEXT, kind TEXT NOT NULL,
        issued DOUBLE PRECISION NOT NULL, not_after DOUBLE PRECISION NOT NULL, revoked BOOLEAN NOT NULL DEFAULT FALSE
    );
    CREATE INDEX certs_user ON certs("user");
    CREATE INDEX certs_ep ON certs(ep_id);
    CREATE TABLE endpoints (
        id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, "user" TEXT NOT NULL, labels JSONB NOT NULL DEFAULT '[]',
        version TEXT NOT NULL DEFAULT '', hostname TEXT NOT NULL DEFAULT '',
        first_seen DOUBLE PRECISION NOT NULL, last_seen DOUBLE PRECISION, user_not_after DOUBLE PRECISION
    );
    CREATE TABLE files (path TEXT PRIMARY KEY, entry TEXT NOT NULL)
    """,
    # 2: the cluster: hubs and who holds which endpoint's session
    """
    CREATE TABLE hubs (
        id TEXT PRIMARY KEY, addresses JSONB NOT NULL DEFAULT '[]', zone TEXT NOT NULL DEFAULT '',
        version TEXT NOT NULL DEFAULT '', started DOUBLE PRECISION NOT NULL,
        heartbeat TIMESTAMPTZ NOT NULL DEFAULT now(), online INTEGER NOT NULL DEFAULT 0, admin TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE presence (
        ep_id TEXT PRIMARY KEY, hub_id TEXT NOT NULL, since DOUBLE PRECISION NOT NULL,
        address TEXT NOT NULL DEFAULT '', direct TEXT NOT NULL DEFAULT '', e2e TEXT NOT NULL DEFAULT '',
        services JSONB NOT NULL DEFAULT '{}'
    );
    CREATE INDEX presence_hub ON presence(hub_id)
    """,
    # 3: the access policy's versions and the append-only audit log (issue 16)
    """
    CREATE TABLE policy_versions (
        version INTEGER PRIMARY KEY, text TEXT NOT NULL, set_by TEXT NOT NULL, set_at DOUBLE PRECISION NOT NULL,
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE audit (
        seq BIGSERIAL PRIMARY KEY, at DOUBLE PRECISION NOT NULL, hub TEXT NOT NULL, actor TEXT NOT NULL,
        actor_ep TEXT NOT NULL DEFAULT '', action TEXT NOT NULL, target TEXT NOT NULL DEFAULT '',
        detail JSONB NOT NULL DEFAULT '{}', source TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_at ON audit(at);
    CREATE INDEX audit_actor ON audit(actor, seq)
    """,
    # 4: mesh addresses (unique) and subnet routes (issue 17)
    """
    ALTER TABLE endpoints ADD COLUMN mesh_ip TEXT;
    CREATE UNIQUE INDEX endpoints_mesh_ip ON endpoints(mesh_ip);
    CREATE TABLE routes (
        ep_id TEXT NOT NULL, cidr TEXT NOT NULL, approved BOOLEAN NOT NULL DEFAULT FALSE,
        advertised_at DOUBLE PRECISION NOT NULL, approved_by TEXT, PRIMARY KEY (ep_id, cidr)
    )
    """,
]

_MIGRATE_LOCK = 0x7A746D01  # advisory lock ids ("ztm" + n), so that hubs starting together never race
_META_LOCK = 0x7A746D02
_POLICY_LOCK = 0x7A746D03
MAX_NOTIFY = 8000
"""PostgreSQL refuses a NOTIFY payload of 8,000 bytes or more."""

_EP_SELECT = (
    'SELECT id, name, "user", labels, version, hostname, first_seen, last_seen, user_not_after, mesh_ip FROM endpoints'
)
_EP_UPSERT = (
    'INSERT INTO endpoints(id, name, "user", labels, version, hostname, first_seen, last_seen, user_not_after, '
    "mesh_ip) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s) "
    'ON CONFLICT (id) DO UPDATE SET name = excluded.name, "user" = excluded."user", labels = excluded.labels, '
    "version = excluded.version, hostname = excluded.hostname, first_seen = excluded.first_seen, "
    "last_seen = excluded.last_seen, user_not_after = excluded.user_not_after, mesh_ip = excluded.mesh_ip"
)
_ROUTE_INSERT = "INSERT INTO routes(ep_id, cidr, approved, advertised_at, approved_by) VALUES (%s,%s,%s,%s,%s)"
_HUB_SELECT = "SELECT id, addresses, zone, version, started, extract(epoch FROM heartbeat), online, admin FROM hubs"
_PRESENCE_SELECT = "SELECT ep_id, hub_id, since, address, direct, e2e, services FROM presence"
_POLICY_SELECT = "SELECT version, text, set_by, set_at, note FROM policy_versions"
_AUDIT_SELECT = "SELECT seq, at, hub, actor, actor_ep, action, target, detail, source FROM audit"
_AUDIT_INSERT = (
    "INSERT INTO audit(at, hub, actor, actor_ep, action, target, detail, source) VALUES (%s,%s,%s,%s,%s,%s,%s,%s) "
    "RETURNING seq"
)


class PgStore:
    """`HubStore` on PostgreSQL (see the module docstring)."""

    kind = "postgresql"
    shared = True

    def __init__(self, link: PgLink) -> None:
        self._link = link
        self.hub_id = ""
        """This hub's id, once `register_hub` ran: the sender named in its notifications."""

    @classmethod
    async def open(
        cls, url: StoreUrl, password: str | None, *, migrations: Sequence[str] = MIGRATIONS, pool_size: int = 4
    ) -> PgStore:
        """Connect, migrate, listen. Each failure is one line: unreachable, wrong or missing password, no such
        database, a schema from a newer ztm."""
        link = PgLink(url, password, size=pool_size)
        try:
            await link.connect_all()
        except (psycopg.Error, OSError) as exc:
            await link.close()
            raise link.open_error(exc) from None
        store = cls(link)
        try:
            await link.run(lambda c: _migrate(c, migrations, url.redacted()))
        except psycopg.Error as exc:
            await link.close()
            raise BadInput(
                f"the store {url.redacted()} refused to set up the ztm schema: {link.cause(exc)}; make user "
                f"{url.user!r} the owner of database {url.dbname!r} (ALTER DATABASE ... OWNER TO ...)"
            ) from None
        except BaseException:
            await link.close()
            raise
        return store

    @property
    def available(self) -> bool:
        """False while the server cannot be reached (calls raise `Unavailable`; it reconnects by itself)."""
        return self._link.available

    @property
    def problem(self) -> str:
        """Why it is unavailable ("" when available)."""
        return self._link.problem

    async def close(self) -> None:
        await self._link.close()

    # ------------------------------------------------------------------------------------------------ helpers

    async def _rows(self, sql: str, params: Sequence[object] | dict[str, object] = ()) -> list[tuple[Any, ...]]:
        async def work(c: Conn) -> list[tuple[Any, ...]]:
            cur = await c.execute(sql, params)
            return await cur.fetchall()

        return await self._link.run(work)

    async def _exec(self, sql: str, params: Sequence[object] = ()) -> None:
        async def work(c: Conn) -> None:
            await c.execute(sql, params)

        await self._link.run(work)

    async def _tx(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        async def work(c: Conn) -> None:
            async with c.transaction():
                for sql, params in statements:
                    await c.execute(sql, params)

        await self._link.run(work)

    # ------------------------------------------------------------------------------------------------ meta

    async def get_meta(self) -> dict[str, str]:
        return {k: v for k, v in await self._rows("SELECT key, value FROM meta")}

    async def set_meta(self, values: dict[str, str]) -> None:
        sql = "INSERT INTO meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        await self._tx([(sql, (k, v)) for k, v in values.items()])

    async def create_meta(self, values: dict[str, str]) -> dict[str, str]:
        async def work(c: Conn) -> dict[str, str]:
            async with c.transaction():
                await c.execute("SELECT pg_advisory_xact_lock(%s)", (_META_LOCK,))
                cur = await c.execute("SELECT 1 FROM meta WHERE key = 'ca_cert'")
                if await cur.fetchone() is None:
                    await cur.executemany(
                        "INSERT INTO meta(key, value) VALUES (%s, %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        list(values.items()),
                    )
                cur = await c.execute("SELECT key, value FROM meta")
                return {k: v for k, v in await cur.fetchall()}

        return await self._link.run(work)

    async def import_mesh(self, snap: MeshSnapshot) -> None:
        """Write a whole mesh (`ztm.hub.migrate`) in one transaction; `Conflict` when this store holds a mesh
        already (nothing is written then)."""

        async def work(c: Conn) -> None:
            async with c.transaction():
                await c.execute("SELECT pg_advisory_xact_lock(%s)", (_META_LOCK,))
                cur = await c.execute("SELECT value FROM meta WHERE key = 'mesh_id'")
                row = await cur.fetchone()
                cur = await c.execute("SELECT count(*) FROM endpoints")
                count = await cur.fetchone()
                if row is not None or (count is not None and count[0]):
                    held = f"mesh {row[0]}" if row is not None else "endpoints"
                    raise Conflict(
                        f"the store {self._link.url.redacted()} already holds a mesh ({held}); migrate into an "
                        "empty database"
                    )
                cur = c.cursor()
                await cur.executemany("INSERT INTO meta(key, value) VALUES (%s, %s)", list(snap.meta.items()))
                await cur.executemany(
                    "INSERT INTO users(name, created, evicted_at) VALUES (%s, %s, %s)",
                    [(u.name, u.created, u.evicted_at) for u in snap.users],
                )
                await cur.executemany(
                    'INSERT INTO certs(serial, "user", ep_id, kind, issued, not_after, revoked) '
                    "VALUES (%s,%s,%s,%s,%s,%s,%s)",
                    snap.certs,
                )
                await cur.executemany(_EP_UPSERT, [_ep_params(e) for e in snap.endpoints])
                await cur.executemany("INSERT INTO files(path, entry) VALUES (%s, %s)", snap.files)
                await cur.executemany(
                    _ROUTE_INSERT, [(r.ep_id, r.cidr, r.approved, r.advertised_at, r.approved_by) for r in snap.routes]
                )
                await cur.executemany(
                    "INSERT INTO policy_versions(version, text, set_by, set_at, note) VALUES (%s, %s, %s, %s, %s)",
                    [(p.version, p.text, p.set_by, p.set_at, p.note) for p in snap.policies],
                )
                await cur.executemany(
                    "INSERT INTO audit(seq, at, hub, actor, actor_ep, action, target, detail, source) "
                    "VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)",
                    [(a.seq, *_audit_params(a, a.detail)) for a in snap.audit],
                )
                if snap.audit:  # new rows continue after the imported ones
                    await c.execute("SELECT setval('audit_seq_seq', %s)", (max(a.seq for a in snap.audit),))

        await self._link.run(work)

    # ------------------------------------------------------------------------------------------------ users

    async def users(self) -> list[UserRecord]:
        rows = await self._rows("SELECT name, created, evicted_at FROM users ORDER BY name")
        return [UserRecord(name, created, evicted_at) for name, created, evicted_at in rows]

    async def upsert_user(self, name: str, *, evicted_at: float | None = None) -> None:
        await self._exec(_USER_UPSERT, (name, time.time(), evicted_at))

    async def evict_user(self, name: str, at: float) -> None:
        await self._tx(
            [(_USER_UPSERT, (name, time.time(), at)), ('UPDATE certs SET revoked = TRUE WHERE "user" = %s', (name,))]
        )

    # ------------------------------------------------------------------------------------------------ certificates

    async def record_cert(self, serial: int, user: str, ep_id: str | None, kind: str, not_after: float) -> None:
        await self._exec(
            'INSERT INTO certs(serial, "user", ep_id, kind, issued, not_after) VALUES (%s,%s,%s,%s,%s,%s) '
            'ON CONFLICT (serial) DO UPDATE SET "user" = excluded."user", ep_id = excluded.ep_id, '
            "kind = excluded.kind, issued = excluded.issued, not_after = excluded.not_after, revoked = FALSE",
            (format(serial, "x"), user, ep_id, kind, time.time(), not_after),
        )

    async def user_cert_end(self, user: str) -> float | None:
        rows = await self._rows(
            "SELECT MAX(not_after) FROM certs WHERE \"user\" = %s AND kind = 'user' AND NOT revoked", (user,)
        )
        return None if not rows or rows[0][0] is None else float(rows[0][0])

    async def revoked_serials(self, now: float) -> list[int]:
        rows = await self._rows("SELECT serial FROM certs WHERE revoked AND not_after > %s", (now,))
        return [int(serial, 16) for (serial,) in rows]

    async def prune_certs(self, now: float) -> None:
        await self._exec("DELETE FROM certs WHERE not_after < %s", (now - 86400,))

    # ------------------------------------------------------------------------------------------------ endpoints

    async def endpoints(self) -> list[EndpointRecord]:
        rows = await self._rows(_EP_SELECT + " ORDER BY name, id")
        return [_endpoint(r) for r in rows]

    async def endpoint(self, ep_id: str) -> EndpointRecord | None:
        rows = await self._rows(_EP_SELECT + " WHERE id = %s", (ep_id,))
        return _endpoint(rows[0]) if rows else None

    async def enroll_endpoint(self, ep: EndpointRecord, *, replaces: list[str]) -> None:
        async def work(c: Conn) -> None:
            async with c.transaction():
                if replaces:
                    await c.execute("DELETE FROM endpoints WHERE id = ANY(%s)", (list(replaces),))
                    await c.execute("DELETE FROM routes WHERE ep_id = ANY(%s)", (list(replaces),))
                await c.execute(_EP_UPSERT, _ep_params(ep))

        await self._save(ep, work)

    async def save_endpoint(self, ep: EndpointRecord) -> None:
        async def work(c: Conn) -> None:
            await c.execute(_EP_UPSERT, _ep_params(ep))

        await self._save(ep, work)

    async def _save(self, ep: EndpointRecord, work: Any) -> None:
        try:
            await self._link.run(work)
        except pgerrors.UniqueViolation as exc:
            if exc.diag.constraint_name == "endpoints_mesh_ip":
                rows = await self._rows("SELECT name FROM endpoints WHERE mesh_ip = %s", (ep.mesh_ip,))
                holder = rows[0][0] if rows else "another endpoint"
                raise AddressTaken(f"mesh address {ep.mesh_ip} is held by endpoint {holder!r}") from None
            rows = await self._rows('SELECT "user" FROM endpoints WHERE name = %s', (ep.name,))
            holder = rows[0][0] if rows else "another user"
            raise Conflict(f"endpoint name {ep.name!r} is taken by user {holder!r}; join with another --as") from None
        except psycopg.Error as exc:
            raise ZtmError(f"the store refused endpoint {ep.name!r}: {self._link.cause(exc)}") from None

    async def delete_endpoint(self, ep_id: str) -> None:
        await self._tx(
            [
                ("DELETE FROM endpoints WHERE id = %s", (ep_id,)),
                ("DELETE FROM routes WHERE ep_id = %s", (ep_id,)),
                ("UPDATE certs SET revoked = TRUE WHERE ep_id = %s", (ep_id,)),
            ]
        )

    async def claim_address(self, ep_id: str, mesh_ip: str) -> str | None:
        async def work(c: Conn) -> str | None:
            async with c.transaction():
                await c.execute("UPDATE endpoints SET mesh_ip = %s WHERE id = %s AND mesh_ip IS NULL", (mesh_ip, ep_id))
                cur = await c.execute("SELECT mesh_ip FROM endpoints WHERE id = %s", (ep_id,))
                row = await cur.fetchone()
                return None if row is None else row[0]

        try:
            return await self._link.run(work)
        except pgerrors.UniqueViolation:
            raise AddressTaken(f"mesh address {mesh_ip} is held by another endpoint") from None

    # ------------------------------------------------------------------------------------------------ routes

    async def routes(self, ep_id: str | None = None) -> list[RouteRecord]:
        rows = await self._rows(
            "SELECT ep_id, cidr, approved, advertised_at, approved_by FROM routes "
            "WHERE %(ep)s::text IS NULL OR ep_id = %(ep)s ORDER BY ep_id, cidr",
            {"ep": ep_id},
        )
        return [RouteRecord(e, cidr, bool(a), at, by) for e, cidr, a, at, by in rows]

    async def set_routes(self, ep_id: str, routes: list[RouteRecord]) -> None:
        await self._tx(
            [("DELETE FROM routes WHERE ep_id = %s", (ep_id,))]
            + [(_ROUTE_INSERT, (ep_id, r.cidr, r.approved, r.advertised_at, r.approved_by)) for r in routes]
        )

    async def touch_endpoints(self, seen: dict[str, float]) -> None:
        if not seen:
            return
        await self._exec(
            "UPDATE endpoints SET last_seen = v.t FROM unnest(%s::text[], %s::float8[]) AS v(id, t) "
            "WHERE endpoints.id = v.id",
            (list(seen), list(seen.values())),
        )

    # ------------------------------------------------------------------------------------------------ files

    async def files(self) -> list[str]:
        return [entry for (entry,) in await self._rows("SELECT entry FROM files ORDER BY path")]

    async def file(self, path: str) -> str | None:
        rows = await self._rows("SELECT entry FROM files WHERE path = %s", (path,))
        return str(rows[0][0]) if rows else None

    async def save_file(self, path: str, entry: str) -> None:
        await self._exec(
            "INSERT INTO files(path, entry) VALUES (%s, %s) ON CONFLICT (path) DO UPDATE SET entry = excluded.entry",
            (path, entry),
        )

    async def delete_file(self, path: str) -> None:
        await self._exec("DELETE FROM files WHERE path = %s", (path,))

    # ------------------------------------------------------------------------------------------------ policy

    async def policy_versions(self) -> list[PolicyVersion]:
        return [PolicyVersion(*r) for r in await self._rows(_POLICY_SELECT + " ORDER BY version")]

    async def policy(self, version: int | None = None) -> PolicyVersion | None:
        if version is None:
            rows = await self._rows(_POLICY_SELECT + " ORDER BY version DESC LIMIT 1")
        else:
            rows = await self._rows(_POLICY_SELECT + " WHERE version = %s", (version,))
        return PolicyVersion(*rows[0]) if rows else None

    async def add_policy(self, text: str, set_by: str, note: str, audit: AuditEntry | None = None) -> int:
        async def work(c: Conn) -> int:
            async with c.transaction():
                # one writer at a time, in every hub: each concurrent set gets its own next number
                await c.execute("SELECT pg_advisory_xact_lock(%s)", (_POLICY_LOCK,))
                cur = await c.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM policy_versions")
                row = await cur.fetchone()
                version = int(row[0]) if row is not None else 1
                await c.execute(
                    "INSERT INTO policy_versions(version, text, set_by, set_at, note) VALUES (%s, %s, %s, %s, %s)",
                    (version, text, set_by, time.time(), note),
                )
                if audit is not None:
                    await c.execute(_AUDIT_INSERT, _audit_params(audit, {**audit.detail, "version": version}))
                return version

        return await self._link.run(work)

    # ------------------------------------------------------------------------------------------------ audit

    async def audit_add(self, entry: AuditEntry) -> int:
        rows = await self._rows(_AUDIT_INSERT, _audit_params(entry, entry.detail))
        return int(rows[0][0])

    async def audit(
        self, since_seq: int | None = None, since_time: float | None = None, user: str | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        rows = await self._rows(
            _AUDIT_SELECT + " WHERE (%(seq)s::bigint IS NULL OR seq > %(seq)s) "
            "AND (%(at)s::float8 IS NULL OR at >= %(at)s) AND (%(user)s::text IS NULL OR actor = %(user)s) "
            "ORDER BY seq LIMIT %(limit)s",
            {"seq": since_seq, "at": since_time, "user": user, "limit": limit},
        )
        return [
            AuditEntry(seq=int(q), at=a, hub=h, actor=u, actor_ep=e, action=x, target=t, detail=dict(d), source=s)
            for q, a, h, u, e, x, t, d, s in rows
        ]

    # ------------------------------------------------------------------------------------------------ cluster

    async def register_hub(self, hub: HubInfo) -> None:
        self.hub_id = hub.id
        await self._tx(
            [
                (
                    "INSERT INTO hubs(id, addresses, zone, version, started, heartbeat, online, admin) "
                    "VALUES (%s, %s, %s, %s, %s, now(), %s, %s) ON CONFLICT (id) DO UPDATE SET "
                    "addresses = excluded.addresses, zone = excluded.zone, version = excluded.version, "
                    "started = excluded.started, heartbeat = now(), online = excluded.online, admin = excluded.admin",
                    (hub.id, json.dumps(hub.addresses), hub.zone, hub.version, hub.started, hub.online, hub.admin),
                ),
                ("DELETE FROM presence WHERE hub_id = %s", (hub.id,)),
            ]
        )

    async def heartbeat_hub(self, hub_id: str, online: int) -> float:
        async def work(c: Conn) -> float:
            cur = await c.execute(
                "UPDATE hubs SET heartbeat = now(), online = %s WHERE id = %s RETURNING extract(epoch FROM heartbeat)",
                (online, hub_id),
            )
            row = await cur.fetchone()
            if row is None:  # the row is gone (removed as dead by another hub): still tell the store's clock
                cur = await c.execute("SELECT extract(epoch FROM now())")
                row = await cur.fetchone()
            assert row is not None
            return float(row[0])

        return await self._link.run(work)

    async def remove_hub(self, hub_id: str) -> None:
        await self._tx(
            [("DELETE FROM presence WHERE hub_id = %s", (hub_id,)), ("DELETE FROM hubs WHERE id = %s", (hub_id,))]
        )

    async def hubs(self) -> list[HubInfo]:
        rows = await self._rows(_HUB_SELECT + " ORDER BY id")
        return [
            HubInfo(id=i, addresses=list(a), zone=z, version=v, started=s, heartbeat=float(h), online=o, admin=ad)
            for i, a, z, v, s, h, o, ad in rows
        ]

    async def set_presence(self, presence: Presence) -> None:
        p = presence
        await self._exec(
            "INSERT INTO presence(ep_id, hub_id, since, address, direct, e2e, services) VALUES (%s,%s,%s,%s,%s,%s,%s) "
            "ON CONFLICT (ep_id) DO UPDATE "
            "SET hub_id = excluded.hub_id, since = excluded.since, address = excluded.address, "
            "direct = excluded.direct, e2e = excluded.e2e, services = excluded.services",
            (p.ep_id, p.hub_id, p.since, p.address, p.direct, p.e2e, json.dumps(p.services)),
        )

    async def clear_presence(self, ep_id: str, hub_id: str) -> None:
        await self._exec("DELETE FROM presence WHERE ep_id = %s AND hub_id = %s", (ep_id, hub_id))

    async def presences(self) -> list[Presence]:
        rows = await self._rows(_PRESENCE_SELECT + " ORDER BY ep_id")
        return [
            Presence(ep_id=e, hub_id=h, since=s, address=a, direct=d, e2e=x, services=dict(sv))
            for e, h, s, a, d, x, sv in rows
        ]

    # ------------------------------------------------------------------------------------------------ notify

    async def notify(self, kind: str, payload: dict[str, Any]) -> None:
        """Tell every other hub on this store; `ValueError` for a message of 8,000 bytes or more (send ids)."""
        message = {"hub": self.hub_id, "sender": self._link.sender, "kind": kind, "payload": payload}
        text = json.dumps(message, separators=(",", ":"))
        if len(text.encode()) >= MAX_NOTIFY:
            size = len(text.encode())
            raise ValueError(f"store notification {kind!r} is {size} bytes (limit {MAX_NOTIFY}): send ids")
        await self._exec("SELECT pg_notify(%s, %s)", (CHANNEL, text))

    def subscribe(self, callback: Notify) -> None:
        """`callback(kind, payload)` on the event loop for each notification of another hub, and `("resync", {})`
        after the store came back from an outage (notifications may have been missed: reload everything)."""
        self._link.subscribe(callback)


_USER_UPSERT = (
    "INSERT INTO users(name, created, evicted_at) VALUES (%s, %s, %s) "
    "ON CONFLICT (name) DO UPDATE SET evicted_at = excluded.evicted_at"
)


def _audit_params(e: AuditEntry, detail: dict[str, Any]) -> tuple[object, ...]:
    return (e.at, e.hub, e.actor, e.actor_ep, e.action, e.target, json.dumps(detail), e.source)


def _ep_params(ep: EndpointRecord) -> tuple[object, ...]:
    return (
        ep.id, ep.name, ep.user, json.dumps(ep.labels), ep.version, ep.hostname, ep.first_seen, ep.last_seen,
        ep.user_not_after, ep.mesh_ip,
    )  # fmt: skip


def _endpoint(r: tuple[Any, ...]) -> EndpointRecord:
    i, name, user, labels, version, hostname, first_seen, last_seen, user_not_after, mesh_ip = r
    return EndpointRecord(
        id=i, name=name, user=user, labels=list(labels), version=version, hostname=hostname, first_seen=first_seen,
        last_seen=last_seen, user_not_after=user_not_after, mesh_ip=mesh_ip,
    )  # fmt: skip


async def _migrate(c: Conn, migrations: Sequence[str], where: str) -> None:
    async with c.transaction():
        await c.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATE_LOCK,))
        await c.execute("CREATE TABLE IF NOT EXISTS ztm_schema (version INTEGER NOT NULL)")
        cur = await c.execute("SELECT version FROM ztm_schema")
        row = await cur.fetchone()
        if row is None:
            await c.execute("INSERT INTO ztm_schema(version) VALUES (0)")
            version = 0
        else:
            version = int(row[0])
        if version > len(migrations):
            raise ZtmError(
                f"the store {where} was written by a newer ztm (schema {version}, this one knows {len(migrations)}); "
                "upgrade ztm"
            )
        for number in range(version, len(migrations)):
            for statement in (s.strip() for s in migrations[number].split(";")):
                if statement:
                    await c.execute(statement.encode())
        if version < len(migrations):
            await c.execute("UPDATE ztm_schema SET version = %s", (len(migrations),))


def _conforms(store: PgStore) -> HubStore:
    return store  # mypy checks that PgStore implements every method of the interface
