"""Which asyncio PostgreSQL driver for the hub store: psycopg 3 against asyncpg, on the store's own queries.

Starts a throwaway PostgreSQL 15 (tests/pgserver.py: loopback TCP, scram password, fsync off) and times, per driver,
over RUNS runs (median and min..max of the per-run figure):

* enrol: one transaction like `PgStore.enroll_endpoint` (delete the replaced ids, insert the endpoint, record its
  certificate), 200 per run, time per transaction;
* list: load 10,000 endpoint rows (`SELECT * FROM endpoints`) into Python tuples, time per load;
* notify: NOTIFY on one connection -> the payload delivered on another connection's LISTEN, 200 per run, per trip;
* touch: one statement updating last_seen of 1,000 endpoints (`UPDATE ... FROM unnest(ids, times)`), per batch.

Run: `.venv/bin/python bench/store_driver.py [--runs 7]` (both drivers must be importable: the losing one is
installed into .venv only for the measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import pgserver

SCHEMA = """
CREATE TABLE endpoints (
    id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, "user" TEXT NOT NULL, labels TEXT NOT NULL DEFAULT '[]',
    version TEXT NOT NULL DEFAULT '', hostname TEXT NOT NULL DEFAULT '', first_seen DOUBLE PRECISION NOT NULL,
    last_seen DOUBLE PRECISION, user_not_after DOUBLE PRECISION
);
CREATE TABLE certs (
    serial TEXT PRIMARY KEY, "user" TEXT NOT NULL, ep_id TEXT, kind TEXT NOT NULL, issued DOUBLE PRECISION NOT NULL,
    not_after DOUBLE PRECISION NOT NULL, revoked BOOLEAN NOT NULL DEFAULT FALSE
)
"""
ENROL_DELETE = "DELETE FROM endpoints WHERE id = ANY(%s)"
ENROL_INSERT = (
    'INSERT INTO endpoints(id, name, "user", labels, version, hostname, first_seen) VALUES (%s,%s,%s,%s,%s,%s,%s)'
)
CERT_INSERT = 'INSERT INTO certs(serial, "user", ep_id, kind, issued, not_after) VALUES (%s,%s,%s,%s,%s,%s)'
LIST = "SELECT * FROM endpoints"
TOUCH = (
    "UPDATE endpoints SET last_seen = v.t FROM unnest(%s::text[], %s::float8[]) AS v(id, t) WHERE endpoints.id = v.id"
)
ENROLS = 200
TRIPS = 200


def dollar(sql: str) -> str:
    """psycopg's %s placeholders as asyncpg's $1, $2, ..."""
    parts = sql.split("%s")
    out = [f"{part}${n}" for n, part in enumerate(parts[:-1], 1)]
    return "".join(out) + parts[-1]


def seed(server: pgserver.PgServer, db: str) -> list[str]:
    server.psql(db, SCHEMA + "; ALTER TABLE endpoints OWNER TO ztm; ALTER TABLE certs OWNER TO ztm")
    server.psql(
        db,
        "INSERT INTO endpoints(id, name, \"user\", labels, first_seen) SELECT md5(i::text), 'ep' || i, 'u' || (i % 50),"
        ' \'["a","b"]\', 1.0 FROM generate_series(1, 10000) i',
    )
    return server.psql(db, "SELECT id FROM endpoints ORDER BY id LIMIT 1000").split()


def enrol_args(i: int) -> tuple[tuple[Any, ...], tuple[Any, ...], tuple[Any, ...]]:
    ep = uuid.uuid4().hex
    return (
        ([uuid.uuid4().hex],),
        (ep, f"new-{ep[:12]}-{i}", "alice", json.dumps(["x"]), "0.2.0", "host", time.time()),
        (uuid.uuid4().hex, "alice", ep, "endpoint", time.time(), time.time() + 86400),
    )


class Psycopg:
    name = "psycopg 3.3.9 (+ binary)"

    async def open(self, url: str, password: str) -> None:
        import psycopg

        self.a = await psycopg.AsyncConnection.connect(url, password=password, autocommit=True)
        self.b = await psycopg.AsyncConnection.connect(url, password=password, autocommit=True)
        await self.b.execute("LISTEN bench")
        self.got: asyncio.Queue[str] = asyncio.Queue()
        self.listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        async for n in self.b.notifies():
            self.got.put_nowait(n.payload)

    async def close(self) -> None:
        self.listener.cancel()
        await asyncio.gather(self.listener, return_exceptions=True)
        await self.a.close()
        await self.b.close()

    async def enrol(self, i: int) -> None:
        d, e, c = enrol_args(i)
        async with self.a.transaction(), self.a.cursor() as cur:
            await cur.execute(ENROL_DELETE, d)
            await cur.execute(ENROL_INSERT, e)
            await cur.execute(CERT_INSERT, c)

    async def list(self) -> int:
        async with self.a.cursor() as cur:
            await cur.execute(LIST)
            return len(await cur.fetchall())

    async def notify(self, i: int) -> None:
        await self.a.execute("SELECT pg_notify('bench', %s)", (str(i),))
        assert await self.got.get() == str(i)

    async def touch(self, ids: list[str]) -> None:
        now = time.time()
        await self.a.execute(TOUCH, (ids, [now] * len(ids)))


class Asyncpg:
    name = "asyncpg 0.32.0"

    async def open(self, url: str, password: str) -> None:
        import asyncpg

        self.a = await asyncpg.connect(url, password=password)
        self.b = await asyncpg.connect(url, password=password)
        self.got: asyncio.Queue[str] = asyncio.Queue()
        await self.b.add_listener("bench", lambda _c, _pid, _ch, payload: self.got.put_nowait(payload))

    async def close(self) -> None:
        await self.a.close()
        await self.b.close()

    async def enrol(self, i: int) -> None:
        d, e, c = enrol_args(i)
        async with self.a.transaction():
            await self.a.execute(dollar(ENROL_DELETE), *d)
            await self.a.execute(dollar(ENROL_INSERT), *e)
            await self.a.execute(dollar(CERT_INSERT), *c)

    async def list(self) -> int:
        return len(await self.a.fetch(LIST))

    async def notify(self, i: int) -> None:
        await self.a.execute("SELECT pg_notify('bench', $1)", str(i))
        assert await self.got.get() == str(i)

    async def touch(self, ids: list[str]) -> None:
        now = time.time()
        await self.a.execute(dollar(TOUCH), ids, [now] * len(ids))


async def per_op(n: int, op: Callable[[int], Awaitable[object]]) -> float:
    start = time.perf_counter()
    for i in range(n):
        await op(i)
    return (time.perf_counter() - start) / n


async def one_run(driver: Psycopg | Asyncpg, url: str, password: str, ids: list[str]) -> dict[str, float]:
    await driver.open(url, password)
    try:
        await driver.list()  # warm-up: caches, prepared statements
        return {
            "enrol": await per_op(ENROLS, driver.enrol),
            "list 10k": await per_op(3, lambda _i: driver.list()),
            "notify": await per_op(TRIPS, driver.notify),
            "touch 1k": await per_op(5, lambda _i: driver.touch(ids)),
        }
    finally:
        await driver.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with pgserver.PgServer() as server:
        results: dict[str, dict[str, list[float]]] = {}
        drivers: list[Psycopg | Asyncpg] = [Psycopg(), Asyncpg()]
        dbs = {}
        for d in drivers:
            db = server.create_db()
            dbs[d.name] = (db, seed(server, db))
            results[d.name] = {}
        for _ in range(args.runs):  # interleaved, so the machine's load hits both alike
            for d in drivers:
                db, ids = dbs[d.name]
                run = asyncio.run(one_run(d, server.url(db), server.password, ids))
                for k, v in run.items():
                    results[d.name].setdefault(k, []).append(v)
        ops = ["enrol", "list 10k", "notify", "touch 1k"]
        print(f"runs: {args.runs}; per op: median (min..max of the per-run means), ms")
        print("| driver | " + " | ".join(ops) + " |")
        print("|---|" + "---|" * len(ops))
        for d in drivers:
            cells = []
            for op in ops:
                vals = [v * 1000 for v in results[d.name][op]]
                cells.append(f"{statistics.median(vals):.3f} ({min(vals):.3f}..{max(vals):.3f})")
            print(f"| {d.name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
