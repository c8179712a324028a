"""The agent's durable state in SQLite (`DATA/ztm.db`, 0600): its key, the meshes it joined, their hub lists and the
last access policy each mesh's hub sent (so a restarted agent that cannot reach its hub enforces it).

Only `Agent` (agent/service.py) writes here; every write is one transaction.
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
    CREATE TABLE meshes (
        name TEXT PRIMARY KEY, mesh_id TEXT NOT NULL, ep_id TEXT NOT NULL, ep_name TEXT NOT NULL,
        user TEXT NOT NULL, permit TEXT NOT NULL, ep_cert TEXT NOT NULL, labels TEXT NOT NULL DEFAULT '[]',
        joined_at REAL NOT NULL
    )
    """,
    """
    CREATE TABLE app_config (
        mesh TEXT NOT NULL, app TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
        PRIMARY KEY (mesh, app, key)
    )
    """,
    """
    CREATE TABLE mesh_hubs (mesh TEXT PRIMARY KEY, hubs TEXT NOT NULL, updated REAL NOT NULL)
    """,
    """
    CREATE TABLE mesh_policy (
        mesh TEXT PRIMARY KEY, version INTEGER NOT NULL, text TEXT NOT NULL, updated REAL NOT NULL
    )
    """,
]


@dataclass
class MeshRecord:
    name: str
    mesh_id: str
    ep_id: str
    ep_name: str
    user: str
    permit: str
    """The permit as joined (JSON text); holds a private key only for root permits."""
    ep_cert: str
    labels: list[str] = field(default_factory=list)
    joined_at: float = field(default_factory=time.time)


class AgentStore:
    def __init__(self, path: Path) -> None:
        self.db = Database(path, MIGRATIONS)

    def lock(self) -> None:
        self.db.lock_exclusive("agent")

    def close(self) -> None:
        self.db.close()

    def get_meta(self, key: str) -> str | None:
        row = self.db.one("SELECT value FROM meta WHERE key = ?", (key,))
        return None if row is None else str(row["value"])

    def set_meta(self, key: str, value: str) -> None:
        with self.db.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def meshes(self) -> list[MeshRecord]:
        return [_mesh(r) for r in self.db.all("SELECT * FROM meshes ORDER BY name")]

    def save_mesh(self, m: MeshRecord) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO meshes"
                "(name, mesh_id, ep_id, ep_name, user, permit, ep_cert, labels, joined_at) VALUES (?,?,?,?,?,?,?,?,?)",
                (m.name, m.mesh_id, m.ep_id, m.ep_name, m.user, m.permit, m.ep_cert, json.dumps(m.labels), m.joined_at),
            )

    def delete_mesh(self, name: str) -> None:
        with self.db.transaction() as c:
            c.execute("DELETE FROM meshes WHERE name = ?", (name,))
            c.execute("DELETE FROM app_config WHERE mesh = ?", (name,))
            c.execute("DELETE FROM mesh_hubs WHERE mesh = ?", (name,))
            c.execute("DELETE FROM mesh_policy WHERE mesh = ?", (name,))

    # the hub list of each mesh, as its hubs last told it (JSON list of HUBVIEW objects, checked again when loaded)
    def hubs(self, mesh: str) -> object:
        row = self.db.one("SELECT hubs FROM mesh_hubs WHERE mesh = ?", (mesh,))
        if row is None:
            return None
        try:
            return json.loads(row["hubs"])
        except ValueError:
            return None

    def save_hubs(self, mesh: str, hubs: list[dict[str, object]]) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO mesh_hubs(mesh, hubs, updated) VALUES (?, ?, ?)",
                (mesh, json.dumps(hubs), time.time()),
            )

    # the mesh's access policy as its hub last sent it (version 0 and "" when none is set)
    def policy(self, mesh: str) -> tuple[int, str] | None:
        row = self.db.one("SELECT version, text FROM mesh_policy WHERE mesh = ?", (mesh,))
        return None if row is None else (int(row["version"]), str(row["text"]))

    def save_policy(self, mesh: str, version: int, text: str) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO mesh_policy(mesh, version, text, updated) VALUES (?, ?, ?, ?)",
                (mesh, version, text, time.time()),
            )

    # app configuration: JSON values under (mesh, app, key)
    def app_items(self, mesh: str, app: str) -> dict[str, object]:
        rows = self.db.all("SELECT key, value FROM app_config WHERE mesh = ? AND app = ? ORDER BY key", (mesh, app))
        return {r["key"]: json.loads(r["value"]) for r in rows}

    def app_set(self, mesh: str, app: str, key: str, value: object) -> None:
        with self.db.transaction() as c:
            c.execute(
                "INSERT OR REPLACE INTO app_config(mesh, app, key, value) VALUES (?,?,?,?)",
                (mesh, app, key, json.dumps(value)),
            )

    def app_delete(self, mesh: str, app: str, key: str) -> bool:
        with self.db.transaction() as c:
            cur = c.execute("DELETE FROM app_config WHERE mesh = ? AND app = ? AND key = ?", (mesh, app, key))
            return cur.rowcount > 0


def _mesh(r: sqlite3.Row) -> MeshRecord:
    return MeshRecord(
        name=r["name"],
        mesh_id=r["mesh_id"],
        ep_id=r["ep_id"],
        ep_name=r["ep_name"],
        user=r["user"],
        permit=r["permit"],
        ep_cert=r["ep_cert"],
        labels=json.loads(r["labels"]),
        joined_at=r["joined_at"],
    )
