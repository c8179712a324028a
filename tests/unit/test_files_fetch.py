"""`Fetcher`, the parallel chunk downloader, against fake sources: honest ones, one that lies (sends bytes that do not
match the chunk hash: they are rejected and fetched elsewhere), one that refuses, one that fails now and then, and
none left at all (the fetch stops with what it has, for a later resume). Plus the pacer's rate."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

from ztm.apps.files.fetch import STRIKES, Fetcher, Pacer, Progress, Source, describe_failure, unique_chunks
from ztm.apps.files.wire import ChunkRequest
from ztm.errors import Forbidden, Unavailable
from ztm.filespec import CHUNK_SIZE, FileEntry, describe

DATA = os.urandom(5 * CHUNK_SIZE + 77)
ENTRY = describe(DATA, "/shared/root/x.bin", 1.0)


class FakeChannel:
    def __init__(self, behaviour: str, calls: list[tuple[str, int]], name: str, data: bytes) -> None:
        self.data = data
        self.behaviour = behaviour
        self.calls = calls
        self.name = name
        self.closed = False

    async def get(self, request: ChunkRequest) -> bytes:
        self.calls.append((self.name, request.index))
        await asyncio.sleep(0.001)
        start = request.index * CHUNK_SIZE
        chunk = self.data[start : start + CHUNK_SIZE]
        if self.behaviour == "liar":
            return bytes(len(chunk))  # right size, wrong content
        if self.behaviour == "refuses":
            raise Forbidden("user 'x' is blocked from /shared/root/x.bin")
        if self.behaviour == "flaky" and len([c for c in self.calls if c[0] == self.name]) % 2:
            raise Unavailable("the stream broke")
        if self.behaviour == "gone":
            raise Unavailable("endpoint is offline")
        return chunk

    def close(self) -> None:
        self.closed = True


def run(
    behaviours: dict[str, str], entry: FileEntry = ENTRY, data: bytes = DATA
) -> tuple[Fetcher, dict[str, bytes], list[tuple[str, int]]]:
    stored: dict[str, bytes] = {}
    calls: list[tuple[str, int]] = []

    async def connect(source: Source) -> FakeChannel:
        return FakeChannel(behaviours[source.name], calls, source.name, data)

    async def store(chunk_hash: str, data: bytes) -> None:
        assert hashlib.sha256(data).hexdigest() == chunk_hash
        stored[chunk_hash] = data

    fetcher = Fetcher(entry, sorted(unique_chunks(entry).values()), connect, store, Progress(len(entry.chunks)))

    async def main() -> None:
        await asyncio.wait_for(fetcher.run([Source(f"id-{n}", n) for n in behaviours]), 30)

    asyncio.run(main())
    return fetcher, stored, calls


def assembled(stored: dict[str, bytes]) -> bytes:
    return b"".join(stored[h] for h in ENTRY.chunks)


def test_honest_sources_share_the_work() -> None:
    fetcher, stored, calls = run({"a": "ok", "b": "ok"})
    assert fetcher.complete and assembled(stored) == DATA
    assert fetcher.progress.fetched == 6 and sum(fetcher.progress.by_source.values()) == 6
    assert {name for name, _ in calls} == {"a", "b"}, "both sources were used in parallel"


def test_a_lying_source_is_rejected_and_the_chunk_fetched_elsewhere() -> None:
    fetcher, stored, calls = run({"liar": "liar", "honest": "ok"})
    assert fetcher.complete and assembled(stored) == DATA
    assert "wrong content" in fetcher.progress.problems["liar"]
    assert fetcher.progress.by_source == {"honest": 6}
    assert "id-liar" in fetcher.dropped
    assert len([c for c in calls if c[0] == "liar"]) <= 2, "a liar is dropped at its first lie (one per worker)"


def test_refusals_drop_the_source_and_flaky_ones_are_retried() -> None:
    fetcher, stored, _calls = run({"blocked": "refuses", "flaky": "flaky"})
    assert fetcher.complete and assembled(stored) == DATA
    assert "refused: user 'x' is blocked" in fetcher.progress.problems["blocked"]
    assert fetcher.progress.by_source == {"flaky": 6}


def test_no_source_left_stops_with_what_it_has() -> None:
    fetcher, stored, _calls = run({"gone": "gone", "liar": "liar"})
    assert not fetcher.complete and stored == {}
    assert fetcher.dropped == {"id-gone", "id-liar"}
    assert f"failed {STRIKES} times" in fetcher.progress.problems["gone"]
    left = len(fetcher.pending)
    assert left == 6 and fetcher.in_flight == 0
    text = describe_failure(fetcher.progress, left, 6)
    assert text.startswith("6 of 6 chunks could not be fetched (gone: failed") and "liar: sent chunk" in text


def test_repeated_chunks_are_fetched_once() -> None:
    data = bytes(3 * CHUNK_SIZE)  # three identical chunks
    entry = describe(data, "/shared/root/zeros", 1.0)
    assert len(unique_chunks(entry)) == 1
    fetcher, stored, calls = run({"a": "ok"}, entry, data)
    assert fetcher.complete and len(stored) == 1 and len(calls) == 1


def test_pacer_spreads_transfers() -> None:
    async def main() -> float:
        pacer = Pacer(10 * CHUNK_SIZE)  # ten chunks a second
        start = time.monotonic()
        for _ in range(4):
            await pacer.take(CHUNK_SIZE)
        return time.monotonic() - start

    elapsed = asyncio.run(main())
    assert 0.25 <= elapsed < 2.0, elapsed

    async def unlimited() -> None:
        await Pacer(None).take(1 << 30)

    asyncio.run(asyncio.wait_for(unlimited(), 1))
