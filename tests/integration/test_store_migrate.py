"""`ztm.hub.migrate`: a real single hub's SQLite mesh (joined agents, an invited and evicted user, a label, a files
index entry) copied into an empty PostgreSQL store, keys sealed; a target with a mesh refused, nothing written."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import PgDb
from integration.test_store_pg import open_store, run
from support import Agent, Hub, invite
from ztm.errors import BadInput, Conflict
from ztm.hub import cakey
from ztm.hub.migrate import migrate, read_snapshot, snapshot_counts
from ztm.hub.store_sqlite import SqliteStore

KEY = bytes(range(32))


def _rows(db: Path, sql: str) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql).fetchall())
    finally:
        conn.close()


def test_a_hub_with_joined_agents_moves_whole(
    pg_url: PgDb, hub: Hub, make_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    root = make_agent("root")
    root.join("m", "ep-root", hub.permit)
    bob = make_agent("bob")
    bob.join("m", "ep-bob", invite(root, bob, "bob", tmp_path / "bob.json"))
    bob.cli("label", "--add", "blue")
    carol = make_agent("carol")
    invite(root, carol, "carol", tmp_path / "carol.json")
    root.cli("evict", "carol")
    hub.proc.stop()
    db = hub.data / "ztm-hub.db"

    async def add_file() -> None:
        store = SqliteStore(db)
        await store.save_file("/users/bob/a.txt", '{"path": "/users/bob/a.txt"}')
        await store.add_policy("{}", "root", "first")
        await store.close()

    asyncio.run(add_file())
    before = {t: _rows(db, f"SELECT * FROM {t} ORDER BY 1") for t in ("meta", "users", "certs", "endpoints", "files")}

    async def main() -> None:
        target = await open_store(pg_url)
        try:
            snap = await migrate(hub.data, target, KEY)
            counts = snapshot_counts(snap)
            assert await target.files() == ['{"path": "/users/bob/a.txt"}']
            # the policy versions and the audit log move too, and new audit rows continue after the old ones
            assert [(p.version, p.text, p.note) for p in await target.policy_versions()] == [(1, "{}", "first")]
            moved = await target.audit(limit=1 << 30)
            assert counts["audit"] == len(moved) > 0 and moved[0].action == "hub-start"
            assert {"join", "invite", "evict", "label"} <= {r.action for r in moved}
            assert await target.audit_add(moved[-1]) == moved[-1].seq + 1
            assert counts["endpoints"] == 2 and counts["evicted"] == 1 and "blue" in str(counts["labels"])
            meta = await target.get_meta()
            plain = dict(before["meta"])  # type: ignore[arg-type]
            assert cakey.is_sealed(meta["ca_key"]) and cakey.is_sealed(meta["root_key"])
            assert plain["ca_key"] not in meta.values()  # a dump of the database holds no private key
            assert cakey.unseal_meta(meta, KEY) == plain
            users = {u.name: u.evicted_at for u in await target.users()}
            assert set(users) == {"root", "bob", "carol"} and users["carol"] is not None
            eps = {e.name: e for e in await target.endpoints()}
            assert set(eps) == {"ep-root", "ep-bob"} and "blue" in eps["ep-bob"].labels
            sqlite_eps = {r[1]: r[0] for r in before["endpoints"]}
            assert {n: e.id for n, e in eps.items()} == sqlite_eps  # same ids: joined agents stay who they are
            revoked = sorted(int(str(r[0]), 16) for r in before["certs"] if r[6])
            assert revoked and sorted(await target.revoked_serials(0)) == revoked
            # a second migration into the same database is refused and writes nothing
            with pytest.raises(Conflict, match="already holds a mesh"):
                await migrate(hub.data, target, bytes(32))
            assert await target.get_meta() == meta and len(await target.endpoints()) == 2
        finally:
            await target.close()

    run(main())
    after = {t: _rows(db, f"SELECT * FROM {t} ORDER BY 1") for t in ("meta", "users", "certs", "endpoints", "files")}
    assert after == before  # the source is left as it was


def test_refusals(pg_url: PgDb, tmp_path: Path) -> None:
    async def main() -> None:
        with pytest.raises(BadInput, match="no hub database at"):
            await read_snapshot(tmp_path / "nothing")
        data = tmp_path / "data"
        data.mkdir()
        store = SqliteStore(data / "ztm-hub.db")
        await store.close()
        with pytest.raises(BadInput, match="holds no mesh yet"):
            await read_snapshot(data)
        store = SqliteStore(data / "ztm-hub.db")
        await store.create_meta({"mesh_id": "m", "ca_cert": "C", "ca_key": "K", "root_key": "R"})
        store.lock()  # a hub running on it
        try:
            with pytest.raises(Conflict, match="another hub is already running"):
                await read_snapshot(data)
        finally:
            await store.close()
        # two records with one name (possible in SQLite, not in a shared store)
        conn = sqlite3.connect(data / "ztm-hub.db")
        with conn:
            for i in ("a", "b"):
                conn.execute("INSERT INTO endpoints(id, name, user, first_seen) VALUES (?, 'twin', 'root', 1.0)", (i,))
        conn.close()
        target = await open_store(pg_url)
        try:
            with pytest.raises(BadInput, match="several endpoints named 'twin'"):
                await migrate(data, target, KEY)
            assert await target.get_meta() == {}
        finally:
            await target.close()

    asyncio.run(main())
