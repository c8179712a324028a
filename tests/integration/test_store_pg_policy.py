"""Policy versions and the audit log in both stores (issue 16): the methods against a real PostgreSQL 15
(tests/pgserver.py) and SQLite, each migration on a database made by the previous schema, concurrent sets getting
distinct versions, and two real hubs on one PostgreSQL store: a policy set at hub A reaches an endpoint of hub B
within 1 s, and concurrent sets at both hubs get distinct versions and leave both hubs on the newest."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from conftest import PgDb
from integration.test_policy_hub import POLICY, EventWatch
from integration.test_store_pg import open_store, run, upgrade_pg, upgrade_sqlite
from reliability.hubclient import HubClient
from support import wait_until
from ztm.hub.store import AuditEntry, HubStore
from ztm.hub.store_sqlite import SqliteStore

Make = Callable[..., Any]


def row(action: str, actor: str = "root", at: float = 1000.0, **detail: Any) -> AuditEntry:
    return AuditEntry(0, at, "hub1", actor, "ep-" + actor, action, "target", dict(detail), "127.0.0.1:5")


async def _exercise(s: HubStore) -> None:
    """Every policy and audit method of a fresh store."""
    assert await s.policy_versions() == [] and await s.policy() is None and await s.policy(1) is None
    assert await s.add_policy("{}", "root", "first") == 1
    v2 = await s.add_policy('{"acls": []}', "carol", "", row("policy-set", "carol", note="x"))
    assert v2 == 2
    newest = await s.policy()
    assert newest is not None and (newest.version, newest.text, newest.set_by) == (2, '{"acls": []}', "carol")
    assert abs(newest.set_at - time.time()) < 60
    first = await s.policy(1)
    assert first is not None and (first.text, first.note) == ("{}", "first")
    assert [p.version for p in await s.policy_versions()] == [1, 2]
    # the add's audit row went in with it, naming the version
    [written] = await s.audit()
    assert (written.action, written.actor, written.detail) == ("policy-set", "carol", {"note": "x", "version": 2})
    seq = await s.audit_add(row("invite", at=2000.0, days=3))
    assert seq > written.seq
    await s.audit_add(row("denied", "bob", at=3000.0, attempted="evict users"))
    rows = await s.audit()
    assert [r.action for r in rows] == ["policy-set", "invite", "denied"]
    assert rows[1].detail == {"days": 3} and rows[1].source == "127.0.0.1:5" and rows[1].actor_ep == "ep-root"
    assert [r.action for r in await s.audit(since_seq=rows[0].seq)] == ["invite", "denied"]
    assert [r.action for r in await s.audit(since_time=2000.0)] == ["invite", "denied"]
    assert [r.action for r in await s.audit(user="bob")] == ["denied"]
    assert [r.action for r in await s.audit(limit=1)] == ["policy-set"]
    assert await s.audit(since_time=5000.0) == []


def test_policy_and_audit_in_postgresql(pg_url: PgDb) -> None:
    async def main() -> None:
        s = await open_store(pg_url)
        try:
            await _exercise(s)
        finally:
            await s.close()

    run(main())


def test_policy_and_audit_in_sqlite(tmp_path: Path) -> None:
    async def main() -> None:
        s = SqliteStore(tmp_path / "hub.db")
        try:
            await _exercise(s)
        finally:
            await s.close()

    run(main())


def test_concurrent_sets_at_two_stores_get_distinct_versions(pg_url: PgDb) -> None:
    async def main() -> None:
        a, b = await open_store(pg_url), await open_store(pg_url)
        try:
            got = await asyncio.gather(
                *(s.add_policy(f"{{}} // {i}", "root", "", row("policy-set")) for i in range(10) for s in (a, b))
            )
            assert sorted(got) == list(range(1, 21))
            assert sorted(r.detail["version"] for r in await a.audit()) == list(range(1, 21))
        finally:
            await a.close()
            await b.close()

    run(main())


def gained_policy_tables(exact_audit_id: bool) -> Callable[[HubStore], Awaitable[None]]:
    """The check of an upgraded store: its endpoint kept, and the policy and audit tables working."""

    async def check(new: HubStore) -> None:
        assert [e.name for e in await new.endpoints()] == ["laptop"]
        assert await new.add_policy("{}", "root", "") == 1
        audit_id = await new.audit_add(row("join"))
        assert audit_id == 1 if exact_audit_id else audit_id >= 1

    return check


def test_a_postgresql_store_of_the_previous_schema_gains_the_policy_tables(pg_url: PgDb) -> None:
    rows = "INSERT INTO endpoints(id, name, \"user\", first_seen) VALUES ('ep1', 'laptop', 'bob', 1.0)"
    upgrade_pg(pg_url, 2, rows, gained_policy_tables(exact_audit_id=False))


def test_a_sqlite_store_of_the_previous_schema_gains_the_policy_tables(tmp_path: Path) -> None:
    rows = ["INSERT INTO endpoints(id, name, user, first_seen) VALUES ('ep1', 'laptop', 'bob', 1.0)"]
    upgrade_sqlite(tmp_path / "hub.db", 3, rows, gained_policy_tables(exact_audit_id=True))


def test_a_set_at_one_hub_reaches_an_endpoint_of_the_other_within_1s(make_cluster: Make, make_agent: Make) -> None:
    cluster = make_cluster()
    hub_a, hub_b = cluster.hubs
    root, watch = make_agent("root"), make_agent("watch")
    root.join("m", "alice", cluster.permit)
    watch.join("m", "watch", cluster.permit)
    watch.proc.stop()
    at_a = HubClient(hub_a.address, root.data / "meshes" / "m")
    at_b = HubClient(hub_b.address, root.data / "meshes" / "m")
    events = EventWatch(hub_b, watch.data / "meshes" / "m")  # watch's session is on hub B
    try:
        wait_until(lambda: events.of("policy"), 10, "the policy event at session open")
        assert events.of("policy")[0][1]["version"] == 0
        sent = time.monotonic()
        status, got = at_a.json("POST", "/api/policy", {"text": POLICY})
        assert status == 200, got
        arrived = wait_until(lambda: [t for t, e in events.of("policy") if e["version"] == got["version"]], 5,
                             "the version set at hub A on hub B's event stream")  # fmt: skip
        took = arrived[0] - sent
        print(f"a policy set at hub A reached an endpoint of hub B {took * 1000:.1f} ms after the set was sent")
        assert took < 1.0, f"{took:.3f} s"
        assert at_b.json("GET", "/api/policy")[1]["version"] == got["version"]
        # concurrent sets at both hubs: distinct versions, and both hubs end on the newest
        texts = [POLICY.replace("// who may reach what", f"// set {i}") for i in range(6)]

        def post(client: HubClient, text: str) -> int:
            status, answer = client.json("POST", "/api/policy", {"text": text})
            assert status == 200, answer
            return int(answer["version"])

        async def both() -> list[int]:
            loop = asyncio.get_running_loop()
            jobs = [loop.run_in_executor(None, post, at_a if i % 2 else at_b, t) for i, t in enumerate(texts)]
            return list(await asyncio.gather(*jobs))

        versions = asyncio.run(both())
        assert len(set(versions)) == len(texts), versions
        newest = max(versions)
        for client in (at_a, at_b):
            wait_until(lambda c=client: c.json("GET", "/api/policy")[1]["version"] == newest, 5,  # type: ignore[misc]
                       "both hubs on the newest version")  # fmt: skip
        wait_until(lambda: events.of("policy")[-1][1]["version"] == newest, 5, "hub B's endpoint on the newest")
        hubs = {r["hub"] for r in at_a.json("GET", "/api/audit?limit=10000")[1] if r["action"] == "policy-set"}
        assert len(hubs) == 2, hubs  # each hub recorded the sets it took
    finally:
        events.close()
        at_a.close()
        at_b.close()
