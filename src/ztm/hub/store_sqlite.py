"""`SqliteStore`: the hub's embedded store (the default), one SQLite file in the hub's data directory: CA
material, users, issued certificates, endpoints, evictions and the file index.

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
from ztm.hub.store import EndpointRecord, HubInfo, Notify, Presence, UserRecord

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
            c.execute("UPDATE certs SET revoked = 1 WHERE ep_id = ?", (ep_id,))

    async def touch_endpoints(self, seen: dict[str, float]) -> None:
        if not seen:
            return
        with self.db.transaction() as c:
            c.executemany("UPDATE endpoints SET last_seen = ? WHERE id = ?", [(t, i) for i, t in seen.items()])

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
    c.execute(
        "INSERT OR REPLACE INTO endpoints(id, name, user, labels, version, hostname, first_seen, last_seen, "
        "user_not_after) VALUES (?,?,?,?,?,?,?,?,?)",
        (
            ep.id, ep.name, ep.user, json.dumps(ep.labels), ep.version, ep.hostname, ep.first_seen,
            ep.last_seen, ep.user_not_after,
        ),
    )  # fmt: skip


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
    )
