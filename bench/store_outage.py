"""How the PostgreSQL hub store behaves in a server outage: how fast calls fail, how soon it works again.

Starts a throwaway PostgreSQL 15 (tests/pgserver.py), opens a `PgStore`, then CYCLES times: `pg_ctl stop` (fast),
20 calls (`endpoints()`) timed while the server is away, `pg_ctl start`, then a call every 10 ms until one works and
until the `resync` notification arrives. Prints the median and max of each.

Run: `.venv/bin/python bench/store_outage.py [--cycles 7]`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import pgserver
from ztm.errors import Unavailable
from ztm.hub.store_pg import PgStore
from ztm.hub.storeurl import parse_store_url


async def measure(server: pgserver.PgServer, db: str, cycles: int) -> dict[str, list[float]]:
    store = await PgStore.open(parse_store_url(server.url(db)), server.password)
    resyncs: list[float] = []
    store.subscribe(lambda kind, _p: resyncs.append(time.monotonic()) if kind == "resync" else None)
    out: dict[str, list[float]] = {"first call after stop": [], "later calls (max of 19)": [],
                                   "server ready -> a call works": [], "server ready -> resync": []}  # fmt: skip
    try:
        for _ in range(cycles):
            await asyncio.to_thread(server.stop)
            lat = []
            for _ in range(20):
                t = time.monotonic()
                with contextlib.suppress(Unavailable):
                    await store.endpoints()
                lat.append(time.monotonic() - t)
            out["first call after stop"].append(lat[0])
            out["later calls (max of 19)"].append(max(lat[1:]))
            resyncs.clear()
            await asyncio.to_thread(server.start)
            ready = time.monotonic()
            while True:
                try:
                    await store.endpoints()
                    break
                except Unavailable:
                    await asyncio.sleep(0.01)
            out["server ready -> a call works"].append(time.monotonic() - ready)
            while not resyncs:
                await asyncio.sleep(0.01)
            out["server ready -> resync"].append(resyncs[0] - ready)
    finally:
        await store.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=7)
    args = parser.parse_args()
    with pgserver.PgServer() as server:
        out = asyncio.run(measure(server, server.create_db(), args.cycles))
    print(f"cycles: {args.cycles}")
    for what, values in out.items():
        print(f"{what}: median {statistics.median(values) * 1000:.1f} ms, max {max(values) * 1000:.1f} ms")


if __name__ == "__main__":
    main()
