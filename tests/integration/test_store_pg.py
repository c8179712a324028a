"""`ztm.hub.store_pg.PgStore` against a real PostgreSQL 15 (tests/pgserver.py): every method, the schema and its
migrations, races between two stores on one database, notifications, bad input at open, and a server outage."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from conftest import PgDb
from ports import free_port
from ztm.db import Database
from ztm.errors import BadInput, Conflict, Unavailable, ZtmError
from ztm.hub import pgconn, store_sqlite
from ztm.hub.store import EndpointRecord, HubInfo, HubStore, Presence
from ztm.hub.store_pg import MIGRATIONS, PgStore
from ztm.hub.store_sqlite import SqliteStore
from ztm.hub.storeurl import parse_store_url

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


async def until(pred: Callable[[], Awaitable[T | None]] | Callable[[], T | None], timeout: float, what: str) -> T:
    """Poll `pred` (sync or async) until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = pred()
            if asyncio.iscoroutine(value):
                value = await value
            if value:
                return value  # type: ignore[return-value]
        except Exception as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what} (last error: {last!r})")
        await asyncio.sleep(0.02)


async def open_store(db: PgDb, **kw: Any) -> PgStore:
    return await PgStore.open(parse_store_url(db.url), db.password, **kw)


def upgrade_pg(db: PgDb, keep: int, rows_sql: str, check: Callable[[HubStore], Awaitable[None]]) -> None:
    """A PostgreSQL store made with the first `keep` migrations, holding the rows `rows_sql` inserts (as that schema
    had them: today's store writes today's columns), opened by today's store: `check` runs on it, and the schema is
    then the latest."""

    async def main() -> None:
        old = await open_store(db, migrations=MIGRATIONS[:keep])
        await old.close()
        db.server.psql(db.name, rows_sql)
        new = await open_store(db)
        try:
            await check(new)
        finally:
            await new.close()
        assert db.server.psql(db.name, "SELECT version FROM ztm_schema").strip() == str(len(MIGRATIONS))

    run(main())


def upgrade_sqlite(path: Path, keep: int, rows_sql: list[str], check: Callable[[HubStore], Awaitable[None]]) -> None:
    """`upgrade_pg` for the SQLite store at `path`: made with its first `keep` migrations, `rows_sql` executed."""
    old = Database(path, store_sqlite.MIGRATIONS[:keep])
    for statement in rows_sql:
        old.execute(statement)
    old.close()

    async def main() -> None:
        new = SqliteStore(path)
        try:
            await check(new)
        finally:
            await new.close()

    run(main())
    again = Database(path, store_sqlite.MIGRATIONS)
    assert again.one("PRAGMA user_version")[0] == len(store_sqlite.MIGRATIONS)  # type: ignore[index]
    again.close()


def ep(ep_id: str, name: str, user: str = "alice", **kw: Any) -> EndpointRecord:
    return EndpointRecord(id=ep_id, name=name, user=user, first_seen=1000.0, **kw)


def test_every_method_round_trips(pg_url: PgDb) -> None:
    async def main() -> None:
        s = await open_store(pg_url)
        try:
            assert (s.kind, s.shared, s.available, s.problem) == ("postgresql", True, True, "")
            # meta
            assert await s.get_meta() == {}
            assert await s.create_meta({"ca_cert": "C1", "mesh_id": "m1"}) == {"ca_cert": "C1", "mesh_id": "m1"}
            assert await s.create_meta({"ca_cert": "C2", "mesh_id": "m2"}) == {"ca_cert": "C1", "mesh_id": "m1"}
            await s.set_meta({"crl_number": "7", "mesh_id": "m1"})
            assert await s.get_meta() == {"ca_cert": "C1", "mesh_id": "m1", "crl_number": "7"}
            # users and certificates
            await s.upsert_user("bob")
            await s.upsert_user("alice")
            await s.record_cert(0xABC, "alice", None, "user", 5000.0)
            await s.record_cert(0xABD, "alice", "ep1", "endpoint", 4000.0)
            await s.record_cert(0xBBB, "bob", None, "user", 6000.0)
            assert await s.user_cert_end("alice") == 5000.0
            assert await s.user_cert_end("carol") is None
            assert await s.revoked_serials(0) == []
            await s.evict_user("alice", 1234.0)
            users = {u.name: u for u in await s.users()}
            assert [u.name for u in await s.users()] == ["alice", "bob"]
            assert users["alice"].evicted_at == 1234.0 and users["bob"].evicted_at is None
            assert sorted(await s.revoked_serials(0)) == [0xABC, 0xABD]
            assert await s.revoked_serials(4500) == [0xABC]
            assert await s.user_cert_end("alice") is None
            await s.prune_certs(4000 + 86400 + 1)
            assert await s.revoked_serials(0) == [0xABC]
            # endpoints
            e1 = ep("ep1", "laptop", labels=["a", "b"], version="0.2", hostname="h", user_not_after=9.5)
            await s.enroll_endpoint(e1, replaces=[])
            await s.save_endpoint(ep("ep2", "desk", user="bob"))
            assert [e.name for e in await s.endpoints()] == ["desk", "laptop"]
            assert await s.endpoint("ep1") == e1
            assert await s.endpoint("nope") is None
            await s.touch_endpoints({"ep1": 2000.5, "ep2": 2001.0, "gone": 1.0})
            await s.touch_endpoints({})
            got = await s.endpoint("ep1")
            assert got is not None and got.last_seen == 2000.5
            await s.enroll_endpoint(ep("ep3", "laptop"), replaces=["ep1"])
            assert {e.id for e in await s.endpoints()} == {"ep2", "ep3"}
            await s.record_cert(0xEEE, "bob", "ep2", "endpoint", 9000.0)
            await s.delete_endpoint("ep2")
            assert await s.endpoint("ep2") is None and 0xEEE in await s.revoked_serials(0)
            # files
            await s.save_file("/b", '{"n": 2}')
            await s.save_file("/a", '{"n": 1}')
            await s.save_file("/a", '{"n": 3}')
            assert await s.files() == ['{"n": 3}', '{"n": 2}']
            assert await s.file("/a") == '{"n": 3}' and await s.file("/c") is None
            await s.delete_file("/a")
            assert await s.files() == ['{"n": 2}']
            # cluster
            hub = HubInfo(id="h1", addresses=["127.0.0.1:7777"], zone="z", version="0.2", started=10.0, admin="x:1")
            await s.register_hub(hub)
            await s.set_presence(Presence("ep3", "h1", 11.0, "1.2.3.4:5", "d:1", "k", {"tunnel": ["t1"]}))
            await s.set_presence(Presence("ep9", "h2", 12.0))
            assert [p.ep_id for p in await s.presences()] == ["ep3", "ep9"]
            assert (await s.presences())[0].services == {"tunnel": ["t1"]}
            await s.clear_presence("ep9", "h1")  # held by h2: stays
            assert len(await s.presences()) == 2
            await s.clear_presence("ep9", "h2")
            assert [p.ep_id for p in await s.presences()] == ["ep3"]
            clock = await s.heartbeat_hub("h1", 5)
            assert abs(clock - time.time()) < 60
            [h] = await s.hubs()
            assert (h.id, h.addresses, h.zone, h.online, h.admin) == ("h1", ["127.0.0.1:7777"], "z", 5, "x:1")
            assert h.heartbeat == clock
            await s.register_hub(hub)  # a restart drops the presence rows it left
            assert await s.presences() == []
            await s.set_presence(Presence("ep3", "h1", 11.0))
            await s.remove_hub("h1")
            assert await s.hubs() == [] and await s.presences() == []
            assert abs(await s.heartbeat_hub("h1", 0) - time.time()) < 60  # row gone: still the store's clock
        finally:
            await s.close()

    run(main())


def test_notifications_reach_other_stores_only(pg_url: PgDb) -> None:
    async def main() -> None:
        a, b = await open_store(pg_url), await open_store(pg_url)
        got_a: list[tuple[str, dict[str, Any]]] = []
        got_b: list[tuple[str, dict[str, Any]]] = []
        a.subscribe(lambda k, p: got_a.append((k, p)))
        b.subscribe(lambda k, p: got_b.append((k, p)))
        try:
            await b.register_hub(HubInfo(id="hub-b", addresses=["x:1"]))
            await b.notify("endpoint", {"id": "ep1"})
            await until(lambda: got_a, 5, "a notification at store a")
            assert got_a == [("endpoint", {"id": "ep1"})]
            await a.notify("file", {"path": "/x"})
            await until(lambda: got_b, 5, "a notification at store b")
            assert got_b == [("file", {"path": "/x"})]  # not its own "endpoint" one
            assert got_a == [("endpoint", {"id": "ep1"})]  # nor a its own
            # the wire form names the sender hub
            raw: list[str] = []
            a._link._dispatch = raw.append  # type: ignore[method-assign]
            await b.notify("presence", {"id": "ep2"})
            # (a's own notifications reach its listener too, and are dropped by their sender token in _dispatch)
            others = lambda: [m for m in map(json.loads, raw) if m.get("sender") != a._link.sender]  # noqa: E731
            await until(others, 5, "the raw notification")
            assert others() == [
                {"hub": "hub-b", "sender": b._link.sender, "kind": "presence", "payload": {"id": "ep2"}}
            ]  # fmt: skip
            with pytest.raises(ValueError, match="limit 8000"):
                await a.notify("endpoint", {"x": "y" * 8000})
        finally:
            await a.close()
            await b.close()

    run(main())


def test_a_database_of_the_previous_schema_migrates_and_keeps_its_rows(pg_url: PgDb) -> None:
    async def main() -> None:
        old = await open_store(pg_url, migrations=MIGRATIONS[:-1])
        await old.create_meta({"ca_cert": "C", "mesh_id": "m"})
        await old.save_file("/f", "{}")
        await old.close()  # an endpoint row as that schema had it (today's store writes today's columns)
        pg_url.server.psql(
            pg_url.name,
            'INSERT INTO endpoints(id, name, "user", labels, first_seen) '
            "VALUES ('ep1', 'laptop', 'alice', '[\"x\"]', 1)",
        )
        assert pg_url.server.psql(pg_url.name, "SELECT version FROM ztm_schema").strip() == str(len(MIGRATIONS) - 1)
        new = await open_store(pg_url)
        try:
            assert await new.get_meta() == {"ca_cert": "C", "mesh_id": "m"}
            assert [(e.id, e.labels, e.mesh_ip) for e in await new.endpoints()] == [("ep1", ["x"], None)]
            assert await new.claim_address("ep1", "100.64.0.2") == "100.64.0.2"
            assert await new.routes() == []
            assert await new.files() == ["{}"]
            await new.register_hub(HubInfo(id="h", addresses=["a:1"]))
            assert [h.id for h in await new.hubs()] == ["h"]
        finally:
            await new.close()
        assert pg_url.server.psql(pg_url.name, "SELECT version FROM ztm_schema").strip() == str(len(MIGRATIONS))
        again = await open_store(pg_url)  # idempotent
        await again.close()

    run(main())


def test_two_hubs_opening_a_fresh_database_at_once_migrate_once(pg_url: PgDb) -> None:
    async def main() -> None:
        stores = await asyncio.gather(*(open_store(pg_url) for _ in range(3)))
        for s in stores:
            await s.close()
        assert pg_url.server.psql(pg_url.name, "SELECT count(*), max(version) FROM ztm_schema").strip() == (
            f"1|{len(MIGRATIONS)}"
        )

    run(main())


def test_a_schema_from_a_newer_ztm_is_refused(pg_url: PgDb) -> None:
    run(_open_close(pg_url))
    pg_url.server.psql(pg_url.name, "UPDATE ztm_schema SET version = 99")
    with pytest.raises(ZtmError) as err:
        run(open_store(pg_url))
    assert err.value.message == (
        f"the store {parse_store_url(pg_url.url).redacted()} was written by a newer ztm "
        f"(schema 99, this one knows {len(MIGRATIONS)}); upgrade ztm"
    )
    assert pg_url.server.psql(pg_url.name, "SELECT version FROM ztm_schema").strip() == "99"  # nothing written


async def _open_close(db: PgDb) -> None:
    s = await open_store(db)
    await s.close()


def test_bad_input_at_open(pg_url: PgDb, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.pgpass
    port = pg_url.server.port
    cases: list[tuple[str, str | None, type[ZtmError], str]] = [
        (f"postgresql://ztm@127.0.0.1:{free_port()}/x", "pw", Unavailable, "cannot reach the store"),
        (pg_url.url, "wrong-password", BadInput, "refused the password of user 'ztm'"),
        (pg_url.url, None, BadInput, "needs a password for user 'ztm'"),
        (f"postgresql://ztm@127.0.0.1:{port}/no_such_db", pg_url.password, BadInput, "'no_such_db' does not exist"),
    ]
    foreign = f"owned_by_postgres_{pg_url.name}"
    pg_url.server.psql("postgres", f"CREATE DATABASE {foreign}")  # PostgreSQL 15: no CREATE for others in public
    cases.append(
        (f"postgresql://ztm@127.0.0.1:{port}/{foreign}", pg_url.password, BadInput, "refused to set up the ztm schema")
    )
    for url, password, cls, words in cases:
        start = time.monotonic()
        with pytest.raises(ZtmError) as err:
            run(PgStore.open(parse_store_url(url), password))
        assert type(err.value) is cls, err.value
        assert words in err.value.message and "\n" not in err.value.message, err.value.message
        assert time.monotonic() - start < 5
    # PGPASSFILE is honoured (libpq's own)
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:{port}:*:ztm:{pg_url.password}\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    run(_open_close(PgDb(pg_url.server, pg_url.name, pg_url.url, "", {})))


def test_outage_fails_fast_and_recovers_with_a_resync(pg_url: PgDb) -> None:
    server = pg_url.server

    async def main() -> None:
        s = await open_store(pg_url)
        seen: list[str] = []
        s.subscribe(lambda kind, _payload: seen.append(kind))
        try:
            await s.enroll_endpoint(ep("ep1", "one"), replaces=[])
            await asyncio.to_thread(server.stop)
            calls: list[Callable[[], Awaitable[object]]] = [
                s.endpoints,
                s.get_meta,
                lambda: s.enroll_endpoint(ep("ep2", "two"), replaces=["ep1"]),
                lambda: s.heartbeat_hub("h", 1),
                lambda: s.notify("endpoint", {"id": "x"}),
                s.presences,
            ]
            for call in calls * 2:
                start = time.monotonic()
                with pytest.raises(Unavailable) as err:
                    await call()
                assert time.monotonic() - start < 1.0
                assert err.value.message.startswith("store unavailable, retrying: ")
                assert "\n" not in err.value.message
            assert not s.available and s.problem
            await asyncio.to_thread(server.start)
            await until(s.endpoints, 10, "the store to answer again")
            assert s.available and s.problem == ""
            await until(lambda: "resync" in seen, 5, "a resync after the outage")
            assert [e.id for e in await s.endpoints()] == ["ep1"]  # the failed enrolment wrote nothing
            # notifications flow again (the LISTEN connection listens again)
            other = await open_store(pg_url)
            try:
                await other.notify("endpoint", {"id": "after"})
                await until(lambda: "endpoint" in seen, 5, "a notification after the outage")
            finally:
                await other.close()
        finally:
            if not server.running:
                await asyncio.to_thread(server.start)
            await s.close()

    run(main())


def test_refusals_and_cancelled_calls_do_not_drain_the_pool(pg_url: PgDb) -> None:
    async def main() -> None:
        s = await open_store(pg_url, pool_size=2)
        try:
            await s.enroll_endpoint(ep("e1", "taken"), replaces=[])
            for i in range(5):  # more refusals than connections
                with pytest.raises(Conflict):
                    await s.enroll_endpoint(ep(f"x{i}", "taken"), replaces=[])
            for _ in range(3):  # calls cancelled in the middle of a statement: their connections are replaced
                task = asyncio.ensure_future(s._rows("SELECT pg_sleep(3)"))
                await asyncio.sleep(0.2)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            start = time.monotonic()
            await until(s.endpoints, 5, "the store to answer")
            results = await asyncio.gather(*(s.endpoints() for _ in range(6)))
            assert all(len(r) == 1 for r in results) and time.monotonic() - start < 3
            assert s.available
        finally:
            await s.close()

    run(main())


class FreezableProxy:
    """A TCP relay in front of the server that can go silent (forward nothing, close nothing, accept but never
    answer): a link that is cut without a reset, as when a router or a datacenter link dies."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen = False
        self.server: asyncio.Server | None = None
        self.tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers = [writer]
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            while self.frozen:
                await asyncio.sleep(0.05)  # accepted, not answered while frozen
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            writers.append(up_w)
            await asyncio.gather(self._pump(reader, up_w), self._pump(up_r, writer))
        except (ConnectionError, OSError):
            pass
        finally:
            for w in writers:
                w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                while self.frozen:
                    await asyncio.sleep(0.05)  # hold the bytes: nothing passes, nothing closes
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def test_a_silently_cut_link_fails_calls_in_bounded_time_without_blocking_the_loop(pg_url: PgDb) -> None:
    async def main() -> None:
        proxy = FreezableProxy(pg_url.server.port)
        port = await proxy.start()
        url = parse_store_url(pg_url.url.replace(f":{pg_url.server.port}/", f":{port}/"))
        s = await PgStore.open(url, pg_url.password)
        seen: list[str] = []
        s.subscribe(lambda kind, _p: seen.append(kind))
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.05)

        tick_task = asyncio.ensure_future(ticker())
        try:
            await s.enroll_endpoint(ep("ep1", "one"), replaces=[])
            proxy.frozen = True
            start = time.monotonic()
            with pytest.raises(Unavailable, match="store unavailable, retrying: "):
                await s.endpoints()
            first = time.monotonic() - start
            assert first < 8, first  # the call deadline (6 s), not forever
            gaps = [b - a for a, b in itertools.pairwise(ticks) if a >= start]
            assert gaps and max(gaps) < 0.5, max(gaps)  # the event loop kept running meanwhile
            for _ in range(5):  # then every call fails at once
                t = time.monotonic()
                with pytest.raises(Unavailable):
                    await s.get_meta()
                assert time.monotonic() - t < 1.0
            assert not s.available and s.problem
            proxy.frozen = False
            await until(s.endpoints, 15, "the store to answer again after the link is back")
            await until(lambda: "resync" in seen, 5, "a resync")
        finally:
            tick_task.cancel()
            await s.close()
            await proxy.close()

    run(main())


def test_a_stalled_event_loop_is_not_taken_for_a_store_outage(pg_url: PgDb) -> None:
    """The hub's own loop blocked past a call's deadline while the server answered in time (a crowd of agents keeps
    a hub busy): the call completes and the store stays available; before, the late watchdog aborted the call, the
    pool was torn down and every hub reloaded (the 10,000-agent ramp, bench/RESULTS.md)."""

    async def main() -> None:
        s = await open_store(pg_url)
        seen: list[str] = []
        s.subscribe(lambda kind, _p: seen.append(kind))
        try:
            await s.enroll_endpoint(ep("ep1", "one"), replaces=[])
            loop = asyncio.get_running_loop()
            stall = pgconn.CALL_DEADLINE + 1.5
            loop.call_later(0.05, time.sleep, stall)  # blocks the whole loop, as a busy hub's does
            start = time.monotonic()
            # an answer larger than the socket's buffers: the server, blocked sending it while the hub does not read,
            # ends the statement at its own timeout (5 s); that fails this call, and only this call
            with pytest.raises(Unavailable, match="statement timeout"):
                await s._rows("SELECT repeat('x', 64 << 20)")
            assert time.monotonic() - start >= stall  # the call spanned the stall
            assert s.available, s.problem  # no outage: the pool is kept, nothing reloads
            assert len(await s.endpoints()) == 1
            assert "resync" not in seen
        finally:
            await s.close()

    run(main())
