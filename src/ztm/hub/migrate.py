"""Moving a single hub's mesh from its SQLite store into an empty PostgreSQL store (issue 14, item 10).

`read_snapshot(data_dir)` reads everything the hub keeps from `DATA/ztm-hub.db` (meta: the mesh id, CA and root
material; users and evictions; issued certificates with their revocations; endpoints; the files index; the policy
versions, the audit log, the endpoints' mesh addresses and subnet routes) while holding
the data directory's lock, so no hub runs on it meanwhile. `migrate(data_dir, target, key)` seals the private keys
with the CA key file's key (`ztm.hub.cakey`) and writes it all into `target` in one transaction
(`PgStore.import_mesh`): a target that already holds a mesh is refused and nothing is written. The SQLite file is
left as it was, so the old hub can still start on it if the move is abandoned.

Permits and joined agents keep working afterwards: the mesh id, the CA certificate and key, every certificate serial
and every endpoint id are the same.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ztm.errors import BadInput
from ztm.hub import cakey
from ztm.hub.store import AuditEntry, EndpointRecord, PolicyVersion, RouteRecord, UserRecord
from ztm.hub.store_pg import PgStore
from ztm.hub.store_sqlite import SqliteStore

DB_NAME = "ztm-hub.db"
"""The hub's SQLite file in its data directory (as `ztm.hub.main` names it)."""


@dataclass
class MeshSnapshot:
    """Everything a hub keeps, as rows."""

    meta: dict[str, str]
    users: list[UserRecord] = field(default_factory=list)
    certs: list[tuple[str, str, str | None, str, float, float, bool]] = field(default_factory=list)
    """(serial hex, user, endpoint id, kind, issued, not_after, revoked)"""
    endpoints: list[EndpointRecord] = field(default_factory=list)
    files: list[tuple[str, str]] = field(default_factory=list)
    """(path, JSON entry)"""
    policies: list[PolicyVersion] = field(default_factory=list)
    audit: list[AuditEntry] = field(default_factory=list)
    routes: list[RouteRecord] = field(default_factory=list)


async def read_snapshot(data_dir: Path) -> MeshSnapshot:
    """The mesh of the hub whose data directory is `data_dir`; `BadInput`/`Conflict` (one line) when there is none,
    a hub runs on it, or it could not live in a shared store (two endpoints with one name)."""
    path = data_dir / DB_NAME
    if not path.is_file():
        raise BadInput(f"no hub database at {path}; give --from the data directory of the hub (its --data)")
    store = SqliteStore(path)
    try:
        store.lock()
        meta = await store.get_meta()
        if "ca_cert" not in meta or "mesh_id" not in meta:
            raise BadInput(f"the hub database {path} holds no mesh yet; start that hub once, or start the new one")
        db = store.db
        certs = [
            (r["serial"], r["user"], r["ep_id"], r["kind"], float(r["issued"]), float(r["not_after"]),
             bool(r["revoked"]))
            for r in db.all("SELECT * FROM certs ORDER BY serial")
        ]  # fmt: skip
        snapshot = MeshSnapshot(
            meta=meta,
            users=await store.users(),
            certs=certs,
            endpoints=await store.endpoints(),
            files=[(r["path"], r["entry"]) for r in db.all("SELECT path, entry FROM files ORDER BY path")],
            policies=await store.policy_versions(),
            audit=await store.audit(limit=1 << 62),
            routes=await store.routes(),
        )
    finally:
        await store.close()
    twice = sorted(name for name, n in Counter(e.name for e in snapshot.endpoints).items() if n > 1)
    if twice:
        raise BadInput(
            f"the hub database {path} has several endpoints named {twice[0]!r} (names are unique in a shared "
            "store); delete the stale ones with `ztm delete ep ID` on that hub first"
        )
    return snapshot


async def migrate(data_dir: Path, target: PgStore, key: bytes) -> MeshSnapshot:
    """Copy the mesh of the hub at `data_dir` into the empty store `target`, its private keys sealed with `key`
    (the CA key file's); returns what was copied. Refuses (`Conflict`) a target that holds a mesh already."""
    snapshot = await read_snapshot(data_dir)
    snapshot.meta = cakey.seal_meta(snapshot.meta, key)
    await target.import_mesh(snapshot)
    return snapshot


def snapshot_counts(snapshot: MeshSnapshot) -> dict[str, Any]:
    """What a migration moved, for its one-line report."""
    return {
        "mesh": snapshot.meta.get("mesh_id", ""),
        "users": len(snapshot.users),
        "evicted": sum(1 for u in snapshot.users if u.evicted_at is not None),
        "certificates": len(snapshot.certs),
        "endpoints": len(snapshot.endpoints),
        "files": len(snapshot.files),
        "policy_versions": len(snapshot.policies),
        "audit": len(snapshot.audit),
        "routes": len(snapshot.routes),
        "labels": json.dumps(sorted({label for e in snapshot.endpoints for label in e.labels})),
    }
