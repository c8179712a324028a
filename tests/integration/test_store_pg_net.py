"""Mesh addresses and subnet routes in both hub stores (issue 17): each migration on a database made by the previous
schema (a real PostgreSQL 15 from tests/pgserver.py, and SQLite), then the same checks on both: `claim_address`
gives an address only to a record without one, a second record never gets an address another holds (`AddressTaken`,
and the holder's record is left whole: no upsert replaces it), a re-join that replaces a record may take its address
in the same transaction, and an endpoint's routes are stored, replaced, and deleted with its record."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import PgDb
from integration.test_store_pg import upgrade_pg, upgrade_sqlite
from ztm.hub.store import AddressTaken, EndpointRecord, HubStore, RouteRecord


async def check(store: HubStore) -> None:
    eps = {e.id: e for e in await store.endpoints()}
    assert {i: e.mesh_ip for i, e in eps.items()} == {"ep1": None, "ep2": None}, "old rows have no address"
    assert await store.routes() == []
    assert await store.claim_address("ep1", "100.64.0.2") == "100.64.0.2"
    assert await store.claim_address("ep1", "100.64.0.9") == "100.64.0.2", "a second claim changed the address"
    assert await store.claim_address("nope", "100.64.0.9") is None
    with pytest.raises(AddressTaken):
        await store.claim_address("ep2", "100.64.0.2")
    assert await store.claim_address("ep2", "100.64.0.3") == "100.64.0.3"

    # another record with a held address: refused, and the holder stays as it was
    thief = EndpointRecord(id="ep3", name="thief", user="eve", first_seen=5.0, mesh_ip="100.64.0.2")
    with pytest.raises(AddressTaken):
        await store.enroll_endpoint(thief, replaces=[])
    with pytest.raises(AddressTaken):
        await store.save_endpoint(thief)
    ep1 = await store.endpoint("ep1")
    assert ep1 is not None and ep1.name == "laptop" and ep1.mesh_ip == "100.64.0.2"
    assert await store.endpoint("ep3") is None

    # routes: stored per endpoint, replaced whole, gone with the record (and with a replaced record)
    await store.set_routes("ep1", [RouteRecord("ep1", "10.20.0.0/16", True, 7.0, "root")])
    await store.set_routes("ep2", [RouteRecord("ep2", "10.20.0.0/16", False, 8.0, None),
                                   RouteRecord("ep2", "fd00:1::/32", False, 8.0, None)])  # fmt: skip
    assert await store.routes("ep1") == [RouteRecord("ep1", "10.20.0.0/16", True, 7.0, "root")]
    assert [(r.ep_id, r.cidr, r.approved) for r in await store.routes()] == [
        ("ep1", "10.20.0.0/16", True), ("ep2", "10.20.0.0/16", False), ("ep2", "fd00:1::/32", False),
    ]  # fmt: skip
    await store.set_routes("ep2", [])
    assert await store.routes("ep2") == []
    await store.set_routes("ep2", [RouteRecord("ep2", "10.30.0.0/16", False, 9.0, None)])

    # a re-join under ep1's name replaces it and keeps its address, in one transaction; its routes go
    again = EndpointRecord(id="ep4", name="laptop", user="bob", first_seen=6.0, mesh_ip="100.64.0.2")
    await store.enroll_endpoint(again, replaces=["ep1"])
    assert await store.endpoint("ep1") is None
    ep4 = await store.endpoint("ep4")
    assert ep4 is not None and ep4.mesh_ip == "100.64.0.2"
    assert await store.routes("ep1") == []
    await store.delete_endpoint("ep2")
    assert await store.routes() == []
    # ep2's address, freed with its record, can be given again (and ep4 keeps its own)
    assert await store.claim_address("ep4", "100.64.0.3") == "100.64.0.2"
    await store.save_endpoint(EndpointRecord(id="ep5", name="new", user="bob", first_seen=9.0, mesh_ip="100.64.0.3"))


def test_a_postgresql_store_of_the_previous_schema_gains_addresses_and_routes(pg_url: PgDb) -> None:
    rows = (
        "INSERT INTO endpoints(id, name, \"user\", first_seen) VALUES ('ep1', 'laptop', 'bob', 1.0), "
        "('ep2', 'desk', 'bob', 2.0)"
    )
    upgrade_pg(pg_url, 3, rows, check)


def test_a_sqlite_store_of_the_previous_schema_gains_addresses_and_routes(tmp_path: Path) -> None:
    rows = [
        "INSERT INTO endpoints(id, name, user, first_seen) VALUES ('ep1', 'laptop', 'bob', 1.0)",
        "INSERT INTO endpoints(id, name, user, first_seen) VALUES ('ep2', 'desk', 'bob', 2.0)",
    ]
    upgrade_sqlite(tmp_path / "hub.db", 4, rows, check)
