"""`Fetcher`: gets the missing chunks of one file from several sources at once, verifying each.

Each source gets `WORKERS_PER_SOURCE` workers; a worker takes the next missing chunk from a shared queue, asks its
source for it, checks the bytes against the chunk hash from the hub's index (never trusting the source), and stores
it. A chunk that fails (source gone, refused, timed out, wrong bytes) goes back to the queue for any other worker. A
source that sends wrong bytes or refuses is dropped at once; one that keeps failing is dropped after `STRIKES`
tries. The fetcher ends when every chunk is stored or every worker gave up; stored chunks stay on disk either way,
so a later attempt only fetches what is still missing (resume). No I/O of its own: sources are reached through
`connect`, chunks stored through `store` (both given by the files app).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from ztm import h2
from ztm.apps.files.wire import ChunkRequest
from ztm.errors import BadInput, Forbidden, NotFound, ZtmError
from ztm.filespec import FileEntry

log = logging.getLogger("ztm.files")

WORKERS_PER_SOURCE = 2
STRIKES = 3
CHUNK_TIMEOUT = 30.0
RETRY_DELAY = 0.5


class Channel(Protocol):
    async def get(self, request: ChunkRequest) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Source:
    ep: str
    name: str


class Pacer:
    """Spreads transfers over time to at most `rate` bytes per second (None: no limit)."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self._next = time.monotonic()

    async def take(self, n: int) -> None:
        if not self.rate:
            return
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + n / self.rate
        if start > now:
            await asyncio.sleep(start - now)


@dataclass
class Progress:
    """What a transfer did so far (shown by `ztm download` and the local API)."""

    total: int = 0
    """Distinct chunks of the file."""
    reused: int = 0
    """Chunks that were already on disk (a resumed or repeated download, or content shared with another file)."""
    fetched: int = 0
    bytes_fetched: int = 0
    by_source: collections.Counter[str] = field(default_factory=collections.Counter)
    problems: dict[str, str] = field(default_factory=dict)
    """Source name -> why it was dropped (or its last failure)."""

    @property
    def done(self) -> int:
        return self.reused + self.fetched


class Fetcher:
    def __init__(
        self,
        entry: FileEntry,
        missing: list[int],
        connect: Callable[[Source], Awaitable[Channel]],
        store: Callable[[str, bytes], Awaitable[None]],
        progress: Progress,
        pacer: Pacer | None = None,
    ) -> None:
        self.entry = entry
        self.pending: collections.deque[int] = collections.deque(missing)
        self.connect = connect
        self.store = store
        self.progress = progress
        self.pacer = pacer or Pacer(None)
        self.in_flight = 0
        self.dropped: set[str] = set()
        self._changed = asyncio.Event()

    @property
    def complete(self) -> bool:
        return not self.pending and self.in_flight == 0

    async def run(self, sources: list[Source]) -> None:
        """Fetch with these sources until done or until all of them gave up."""
        live = [s for s in sources if s.ep not in self.dropped]
        workers = [asyncio.ensure_future(self._worker(source)) for source in live for _ in range(WORKERS_PER_SOURCE)]
        try:
            if workers:
                await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            for worker in workers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await worker

    async def _next(self, source: Source) -> int | None:
        while True:
            if source.ep in self.dropped:
                return None
            if self.pending:
                self.in_flight += 1
                return self.pending.popleft()
            if self.in_flight == 0:
                return None
            self._changed.clear()
            await self._changed.wait()

    def _settle(self, index: int, ok: bool) -> None:
        self.in_flight -= 1
        if not ok:
            self.pending.appendleft(index)
        self._changed.set()

    def _drop(self, source: Source, reason: str) -> None:
        if source.ep not in self.dropped:
            self.dropped.add(source.ep)
            log.warning("download of %s: not using %s any more: %s", self.entry.path, source.name, reason)
        self.progress.problems[source.name] = reason
        self._changed.set()

    async def _worker(self, source: Source) -> None:
        channel: Channel | None = None
        strikes = 0
        try:
            while (index := await self._next(source)) is not None:
                try:
                    if channel is None:
                        channel = await asyncio.wait_for(self.connect(source), CHUNK_TIMEOUT)
                    await self._one(channel, source, index)
                except _Drop as exc:
                    self._settle(index, False)
                    self._drop(source, exc.reason)
                    return
                except (Forbidden, NotFound, BadInput) as exc:
                    self._settle(index, False)
                    self._drop(source, f"refused: {exc.message}")
                    return
                except (ZtmError, h2.H2Error, OSError, TimeoutError) as exc:
                    self._settle(index, False)
                    _closed(channel)
                    channel = None
                    strikes += 1
                    reason = exc.message if isinstance(exc, ZtmError) else str(exc) or type(exc).__name__
                    if strikes >= STRIKES:
                        self._drop(source, f"failed {strikes} times, last: {reason}")
                        return
                    self.progress.problems[source.name] = reason
                    await asyncio.sleep(RETRY_DELAY * strikes)
                    continue
                except BaseException:  # cancelled: the chunk is not done
                    self._settle(index, False)
                    raise
                strikes = 0
                self._settle(index, True)
        finally:
            _closed(channel)

    async def _one(self, channel: Channel, source: Source, index: int) -> None:
        entry = self.entry
        expected = entry.chunks[index]
        await self.pacer.take(entry.chunk_size(index))
        data = await asyncio.wait_for(channel.get(ChunkRequest(entry.path, entry.hash, index)), CHUNK_TIMEOUT)
        if len(data) != entry.chunk_size(index) or hashlib.sha256(data).hexdigest() != expected:
            raise _Drop(f"sent chunk {index} with the wrong content (tampered or damaged); rejected")
        await self.store(expected, data)
        self.progress.fetched += 1
        self.progress.bytes_fetched += len(data)
        self.progress.by_source[source.name] += 1


class _Drop(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _closed(channel: Channel | None) -> None:
    if channel is not None:
        channel.close()


def describe_failure(progress: Progress, missing: int, total: int) -> str:
    why = "; ".join(f"{name}: {reason}" for name, reason in sorted(progress.problems.items())) or "no source online"
    return f"{missing} of {total} chunks could not be fetched ({why})"


def unique_chunks(entry: FileEntry) -> dict[str, int]:
    """Chunk hash -> the first index holding it (a file may repeat a chunk: it is fetched once)."""
    found: dict[str, int] = {}
    for index, chunk_hash in enumerate(entry.chunks):
        found.setdefault(chunk_hash, index)
    return found
