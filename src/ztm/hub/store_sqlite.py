"""`SqliteStore`: the hub's embedded store (the default), one SQLite file in the hub's data directory: CA
material, users, issued certificates, endpoints (with their mesh addresses), evictions, the file index, the access
policy's versions, the append-only audit log and the endpoints' subnet routes.

It implements `ztm.hub.store.HubStore` for a single hub: nothing else shares the file (an advisory lock says so),
so the cluster methods describe this hub alone and notifications go nowhere. Every write is one transaction, so a
crash loses nothing acknowledged. Private keys live in this file, which is created 0600. The calls are quick local
file operations made on the event loop's thread (the async signatures are the interface's).
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from ztm.db import Database
from ztm.errors import Conflict
from ztm.hub.store import (
    AddressTaken,
    AuditEntry,
    EndpointRecord,
    HubInfo,
    Notify,
    PolicyVersion,
    Presence,
    RouteRecord,
    UserRecord,
)

MIGRATIONS = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE users (name TEXT PRIMARY KEY, created REAL NOT NULL, evicted_at REAL);
    CREATE TABLE certs (
        serial TEXT PRIMARY KEY, user TEXT NOT NULL, ep_id TEXT, kind TEXT NOT NULL,
        issued REAL NOT NULL, not_after REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX certs_user ON certs(user);
    CREATE TABLE endpoints (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, user TEXT NOT NULL, labels TEXT NOT NULL DEFAULT '[]',
        version TEXT NOT NULL DEFAULT '', hostname TEXT NOT NULL DEFAULT '',
        first_seen REAL NOT NULL, last_seen REAL
    );
    CREATE INDEX endpoints_name ON endpoints(name)
    """,
    """
    CREATE TABLE files (path TEXT PRIMARY KEY, entry TEXT NOT NULL)
    """,
    """
    ALTER TABLE endpoints ADD COLUMN user_not_after REAL
    """,
    """
    CREATE TABLE policy_versions (
        version INTEGER PRIMARY KEY, text TEXT NOT NULL, set_by TEXT NOT NULL, set_at REAL NOT NULL,
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE audit (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, hub TEXT NOT NULL, actor TEXT NOT NULL,
        actor_ep TEXT NOT NULL DEFAULT '', action TEXT NOT NULL, target TEXT NOT NULL DEFAULT '',
        detail TEXT NOT NULL DEFAULT '{}', source TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX audit_at ON audit(at);
    CREATE INDEX audit_actor ON audit(actor, seq)
    """,
    """
    ALTER TABLE endpoints ADD COLUMN mesh_ip TEXT;
    CREATE UNIQUE INDEX endpoints_mesh_ip ON endpoints(mesh_ip);
    CREATE TABLE routes (
        ep_id TEXT NOT NULL, cidr TEXT NOT NULL, approved INTEGER NOT NULL DEFAULT 0, advertised_at REAL NOT NULL,
        approved_by TEXT, PRIMARY KEY (ep_id, cidr)
    )
    """,
]


class SqliteStore:
    kind = "sqlite"
    shared = False
    available = True
    problem = ""
    """A local file is always there (a full disk fails single writes with `Unavailable`, not the store)."""

    def __init__(self, path: Path) -> None:
        self.db = Database(path, MIGRATIONS)
        self._hub: HubInfo | None = None

    def lock(self) -> None:
        self.db.lock_exclusive("hub")

    async def close(self) -> None:
        self.db.close()

    # meta
    async def get_meta(self) -> dict[str, str]:
        return {row["key"]: row["value"] for row in self.db.all("SELECT key, value FROM meta")}

    async def set_meta(self, values: dict[str, str]) -> None:
        with self.db.transaction() as c:
            for key, value in values.items():
                c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    async def create_meta(self, values: dict[str, str]) -> dict[str, str]:
        with self.db.transaction() as c:
            if c.execute("SELECT 1 FROM meta WHERE key = 'ca_cert'").fetchone() is None:
                for key, value in values.items():
                    c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))
        return await self.get_meta()

    # users
    async def users(self) -> list[UserRecord]:
        return [
            UserRecord(r["name"], r["created"], r["evicted_at"])
            for r in self.db.all("SELECT * FROM users ORDER BY name")
        ]

    async def upsert_user(self, name: str, *, evicted_at: float | None = None) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO users(name, created, evicted_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET evicted_at = excluded.evicted_at",
                (name, time.time(), evicted_at),
            )

    # certificates
    async def record_cert(self, serial: int, user: str, ep_id: str | None, kind: str, not_after: float) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO certs(serial, user, ep_id, kind, issued, not_after) VALUES (?,?,?,?,?,?)",
                (format(serial, "x"), user, ep_id, kind, time.time(), not_after),
            )

    async def evict_user(self, name: str, at: float) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO users(name, created, evicted_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET evicted_at = excluded.evicted_at",
                (name, time.time(), at),
            )
            c.execute("UPDATE certs SET revoked = 1 WHERE user = ?", (name,))

    async def user_cert_end(self, user: str) -> float | None:
        """When the user's latest unrevoked user certificate expires (None: no such certificate recorded)."""
        row = self.db.one("SELECT MAX(not_after) AS end FROM certs WHERE user = ? AND kind = 'user' AND revoked = 0",
                          (user,))  # fmt: skip
        return None if row is None or row["end"] is None else float(row["end"])

    async def revoked_serials(self, now: float) -> list[int]:
        rows = self.db.all("SELECT serial FROM certs WHERE revoked = 1 AND not_after > ?", (now,))
        return [int(r["serial"], 16) for r in rows]

    async def prune_certs(self, now: float) -> None:
        with self.db.transaction() as c:
            c.execute("DELETE FROM certs WHERE not_after < ?", (now - 86400,))

    # endpoints
    async def endpoints(self) -> list[EndpointRecord]:
        return [_endpoint(r) for r in self.db.all("SELECT * FROM endpoints ORDER BY name, id")]

    async def endpoint(self, ep_id: str) -> EndpointRecord | None:
        row = self.db.one("SELECT * FROM endpoints WHERE id = ?", (ep_id,))
        return None if row is None else _endpoint(row)

    async def enroll_endpoint(self, ep: EndpointRecord, *, replaces: list[str]) -> None:
        with self.db.transaction() as c:
            for other in replaces:
                c.execute("DELETE FROM endpoints WHERE id = ?", (other,))
                c.execute("DELETE FROM routes WHERE ep_id = ?", (other,))
            row = c.execute("SELECT user FROM endpoints WHERE name = ? AND id != ?", (ep.name, ep.id)).fetchone()
            if row is not None:
                raise Conflict(f"endpoint name {ep.name!r} is taken by user {row['user']!r}; join with another --as")
            _save_endpoint(c, ep)

    async def save_endpoint(self, ep: EndpointRecord) -> None:
        with self.db.transaction() as c:
            _save_endpoint(c, ep)

    async def delete_endpoint(self, ep_id: str) -> None:
        with self.db.transaction() as c:
            c.execute("DELETE FROM endpoints WHERE id = ?", (ep_id,))
            c.execute("DELETE FROM routes WHERE ep_id = ?", (ep_id,))
            c.execute("UPDATE certs SET revoked = 1 WHERE ep_id = ?", (ep_id,))

    async def touch_endpoints(self, seen: dict[str, float]) -> None:
        if not seen:
            return
        with self.db.transaction() as c:
            c.executemany("UPDATE endpoints SET last_seen = ? WHERE id = ?", [(t, i) for i, t in seen.items()])

    async def claim_address(self, ep_id: str, mesh_ip: str) -> str | None:
        with self.db.transaction() as c:
            row = c.execute("SELECT mesh_ip FROM endpoints WHERE id = ?", (ep_id,)).fetchone()
            if row is None or row["mesh_ip"] is not None:
                return None if row is None else str(row["mesh_ip"])
            other = c.execute("SELECT name FROM endpoints WHERE mesh_ip = ?", (mesh_ip,)).fetchone()
            if other is not None:
                raise AddressTaken(f"mesh address {mesh_ip} is held by endpoint {other['name']!r}")
            c.execute("UPDATE endpoints SET mesh_ip = ? WHERE id = ?", (mesh_ip, ep_id))
        return mesh_ip

    # subnet routes
    async def routes(self, ep_id: str | None = None) -> list[RouteRecord]:
        rows = self.db.all("SELECT * FROM routes WHERE (?1 IS NULL OR ep_id = ?1) ORDER BY ep_id, cidr", (ep_id,))
        return [
            RouteRecord(r["ep_id"], r["cidr"], bool(r["approved"]), r["advertised_at"], r["approved_by"]) for r in rows
        ]

    async def set_routes(self, ep_id: str, routes: list[RouteRecord]) -> None:
        with self.db.transaction() as c:
            c.execute("DELETE FROM routes WHERE ep_id = ?", (ep_id,))
            c.executemany(
                "INSERT INTO routes(ep_id, cidr, approved, advertised_at, approved_by) VALUES (?,?,?,?,?)",
                [(ep_id, r.cidr, int(r.approved), r.advertised_at, r.approved_by) for r in routes],
            )

    # files of the mesh file space (ztm.hub.files): one JSON entry per path
    async def files(self) -> list[str]:
        return [r["entry"] for r in self.db.all("SELECT entry FROM files ORDER BY path")]

    async def file(self, path: str) -> str | None:
        row = self.db.one("SELECT entry FROM files WHERE path = ?", (path,))
        return None if row is None else str(row["entry"])

    async def save_file(self, path: str, entry: str) -> None:
        with self.db.transaction() as c:
            c.execute("INSERT OR REPLACE INTO files(path, entry) VALUES (?, ?)", (path, entry))

    async def delete_file(self, path: str) -> None:
        with self.db.transaction() as c:
            c.execute("DELETE FROM files WHERE path = ?", (path,))

    # the access policy
    async def policy_versions(self) -> list[PolicyVersion]:
        return [_policy(r) for r in self.db.all("SELECT * FROM policy_versions ORDER BY version")]

    async def policy(self, version: int | None = None) -> PolicyVersion | None:
        if version is None:
            row = self.db.one("SELECT * FROM policy_versions ORDER BY version DESC LIMIT 1")
        else:
            row = self.db.one("SELECT * FROM policy_versions WHERE version = ?", (version,))
        return None if row is None else _policy(row)

    async def add_policy(self, text: str, set_by: str, note: str, audit: AuditEntry | None = None) -> int:
        with self.db.transaction() as c:
            row = c.execute("SELECT COALESCE(MAX(version), 0) + 1 AS next FROM policy_versions").fetchone()
            version = int(row["next"])
            c.execute(
                "INSERT INTO policy_versions(version, text, set_by, set_at, note) VALUES (?, ?, ?, ?, ?)",
                (version, text, set_by, time.time(), note),
            )
            if audit is not None:
                _add_audit(c, audit, {**audit.detail, "version": version})
        return version

    # the audit log: rows are only ever added
    async def audit_add(self, entry: AuditEntry) -> int:
        with self.db.transaction() as c:
            return _add_audit(c, entry, entry.detail)

    async def audit(
        self, since_seq: int | None = None, since_time: float | None = None, user: str | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        rows = self.db.all(
            "SELECT * FROM audit WHERE (?1 IS NULL OR seq > ?1) AND (?2 IS NULL OR at >= ?2) "
            "AND (?3 IS NULL OR actor = ?3) ORDER BY seq LIMIT ?4",
            (since_seq, since_time, user, limit),
        )
        return [
            AuditEntry(
                seq=r["seq"], at=r["at"], hub=r["hub"], actor=r["actor"], actor_ep=r["actor_ep"], action=r["action"],
                target=r["target"], detail=json.loads(r["detail"]), source=r["source"],
            )
            for r in rows
        ]  # fmt: skip

    # cluster: this hub alone
    async def register_hub(self, hub: HubInfo) -> None:
        self._hub = hub

    async def heartbeat_hub(self, hub_id: str, online: int) -> float:
        now = time.time()
        if self._hub is not None and self._hub.id == hub_id:
            self._hub.heartbeat, self._hub.online = now, online
        return now

    async def remove_hub(self, hub_id: str) -> None:
        if self._hub is not None and self._hub.id == hub_id:
            self._hub = None

    async def hubs(self) -> list[HubInfo]:
        return [] if self._hub is None else [self._hub]

    async def set_presence(self, presence: Presence) -> None:
        pass  # one hub: its sessions are the whole presence

    async def clear_presence(self, ep_id: str, hub_id: str) -> None:
        pass

    async def presences(self) -> list[Presence]:
        return []

    async def notify(self, kind: str, payload: dict[str, Any]) -> None:
        pass  # no other hub shares this file

    def subscribe(self, callback: Notify) -> None:
        pass


def _save_endpoint(c: sqlite3.Connection, ep: EndpointRecord) -> None:
    if ep.mesh_ip is not None:  # an upsert never replaces another record: the unique address is checked, not taken
        row = c.execute("SELECT name FROM endpoints WHERE mesh_ip = ? AND id != ?", (ep.mesh_ip, ep.id)).fetchone()
        if row is not None:
            raise AddressTaken(f"mesh address {ep.mesh_ip} is held by endpoint {row['name']!r}")
    c.execute(
        "INSERT INTO endpoints(id, name, user, labels, version, hostname, first_seen, last_seen, "
        "user_not_after, mesh_ip) VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT(id) DO UPDATE SET name = excluded.name, "
        "user = excluded.user, labels = excluded.labels, version = excluded.version, hostname = excluded.hostname, "
        "first_seen = excluded.first_seen, last_seen = excluded.last_seen, user_not_after = excluded.user_not_after, "
        "mesh_ip = excluded.mesh_ip",
        (
            ep.id, ep.name, ep.user, json.dumps(ep.labels), ep.version, ep.hostname, ep.first_seen,
            ep.last_seen, ep.user_not_after, ep.mesh_ip,
        ),
    )  # fmt: skip


def _policy(r: sqlite3.Row) -> PolicyVersion:
    return PolicyVersion(r["version"], r["text"], r["set_by"], r["set_at"], r["note"])


def _add_audit(c: sqlite3.Connection, e: AuditEntry, detail: dict[str, Any]) -> int:
    cur = c.execute(
        "INSERT INTO audit(at, hub, actor, actor_ep, action, target, detail, source) VALUES (?,?,?,?,?,?,?,?)",
        (e.at, e.hub, e.actor, e.actor_ep, e.action, e.target, json.dumps(detail, separators=(",", ":")), e.source),
    )
    return int(cur.lastrowid or 0)


def _endpoint(r: sqlite3.Row) -> EndpointRecord:
    return EndpointRecord(
        id=r["id"],
        name=r["name"],
        user=r["user"],
        labels=json.loads(r["labels"]),
        version=r["version"],
        hostname=r["hostname"],
        first_seen=r["first_seen"],
        last_seen=r["last_seen"],
        user_not_after=r["user_not_after"],
        mesh_ip=r["mesh_ip"],
    )
