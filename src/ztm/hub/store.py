"""The hub's durable state in SQLite: CA material, users, issued certificates, endpoints and evictions.

Only `HubState` calls this module; every write is one transaction, so a crash loses nothing acknowledged.
Private keys live in this file, which is created 0600.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from ztm.db import Database

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


@dataclass
class EndpointRecord:
    id: str
    name: str
    user: str
    labels: list[str] = field(default_factory=list)
    version: str = ""
    hostname: str = ""
    first_seen: float = 0.0
    last_seen: float | None = None
    user_not_after: float | None = None
    """When the user certificate the endpoint enrolled with expires: its endpoint certificates never outlive it
    (None for records from before this was kept: the user's latest user certificate counts)."""


@dataclass
class UserRecord:
    name: str
    created: float
    evicted_at: float | None = None


class HubStore:
    def __init__(self, path: Path) -> None:
        self.db = Database(path, MIGRATIONS)

    def lock(self) -> None:
        self.db.lock_exclusive("hub")

    def close(self) -> None:
        self.db.close()

    # meta
    def get_meta(self) -> dict[str, str]:
        return {row["key"]: row["value"] for row in self.db.all("SELECT key, value FROM meta")}

    def set_meta(self, values: dict[str, str]) -> None:
        with self.db.transaction() as c:
            for key, value in values.items():
                c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    # users
    def users(self) -> list[UserRecord]:
        return [
            UserRecord(r["name"], r["created"], r["evicted_at"])
            for r in self.db.all("SELECT * FROM users ORDER BY name")
        ]

    def upsert_user(self, name: str, *, evicted_at: float | None = None) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT INTO users(name, created, evicted_at) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET evicted_at = excluded.evicted_at",
                (name, time.time(), evicted_at),
            )

    # certificates
    def record_cert(self, serial: int, user: str, ep_id: str | None, kind: str, not_after: float) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO certs(serial, user, ep_id, kind, issued, not_after) VALUES (?,?,?,?,?,?)",
                (format(serial, "x"), user, ep_id, kind, time.time(), not_after),
            )

    def revoke_user_certs(self, user: str) -> None:
        with self.db.transaction() as c:
            c.execute("UPDATE certs SET revoked = 1 WHERE user = ?", (user,))

    def user_cert_end(self, user: str) -> float | None:
        """When the user's latest unrevoked user certificate expires (None: no such certificate recorded)."""
        row = self.db.one("SELECT MAX(not_after) AS end FROM certs WHERE user = ? AND kind = 'user' AND revoked = 0",
                          (user,))  # fmt: skip
        return None if row is None or row["end"] is None else float(row["end"])

    def revoke_endpoint_certs(self, ep_id: str) -> None:
        with self.db.transaction() as c:
            c.execute("UPDATE certs SET revoked = 1 WHERE ep_id = ?", (ep_id,))

    def revoked_serials(self, now: float) -> list[int]:
        rows = self.db.all("SELECT serial FROM certs WHERE revoked = 1 AND not_after > ?", (now,))
        return [int(r["serial"], 16) for r in rows]

    def prune_certs(self, now: float) -> None:
        with self.db.transaction() as c:
            c.execute("DELETE FROM certs WHERE not_after < ?", (now - 86400,))

    # endpoints
    def endpoints(self) -> list[EndpointRecord]:
        return [_endpoint(r) for r in self.db.all("SELECT * FROM endpoints ORDER BY name, id")]

    def save_endpoint(self, ep: EndpointRecord) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO endpoints(id, name, user, labels, version, hostname, first_seen, last_seen, "
                "user_not_after) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    ep.id, ep.name, ep.user, json.dumps(ep.labels), ep.version, ep.hostname, ep.first_seen,
                    ep.last_seen, ep.user_not_after,
                ),
            )  # fmt: skip

    def delete_endpoint(self, ep_id: str) -> None:
        with self.db.transaction() as c:
            c.execute("DELETE FROM endpoints WHERE id = ?", (ep_id,))

    def touch_endpoints(self, seen: dict[str, float]) -> None:
        if not seen:
            return
        with self.db.transaction() as c:
            c.executemany("UPDATE endpoints SET last_seen = ? WHERE id = ?", [(t, i) for i, t in seen.items()])

    # files of the mesh file space (ztm.hub.files): one JSON entry per path
    def files(self) -> list[str]:
        return [r["entry"] for r in self.db.all("SELECT entry FROM files ORDER BY path")]

    def save_file(self, path: str, entry: str) -> None:
        with self.db.transaction() as c:
            c.execute("INSERT OR REPLACE INTO files(path, entry) VALUES (?, ?)", (path, entry))

    def delete_file(self, path: str) -> None:
        with self.db.transaction() as c:
            c.execute("DELETE FROM files WHERE path = ?", (path,))


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
