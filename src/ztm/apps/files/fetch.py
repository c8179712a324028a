"""`Fetcher`: gets the missing chunks of one file from several sources at once, verifying each.

Each source gets `WORKERS_PER_SOURCE` workers; a worker takes the next missing chunk its source holds from a shared
queue (a partial holder, still downloading the file itself, only the chunks it announced), asks its source for it,
checks the bytes against the chunk hash from the hub's index (never trusting the source), and stores it. A chunk
that fails (source gone, refused, timed out, wrong bytes) goes back to the queue for any other worker. A source that
sends wrong bytes or refuses is dropped at once; one that keeps failing is dropped after `STRIKES` tries; a partial
holder that answers `not_held` is asked for other chunks. The fetcher ends when every chunk is stored, or when
nothing is in flight and no live source holds a missing chunk; stored chunks stay on disk either way, so a later
attempt only fetches what is still missing (resume). No I/O of its own: sources are reached through `connect` (and
refreshed through `refresh`), chunks stored through `store` (all given by the files app)."""

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
from ztm.apps.files.wire import ChunkRequest, NotHeld
from ztm.errors import BadInput, Conflict, Forbidden, NotFound, ZtmError
from ztm.filespec import ChunkSet, FileEntry

log = logging.getLogger("ztm.files")

WORKERS_PER_SOURCE = 2
STRIKES = 3
CHUNK_TIMEOUT = 30.0
RETRY_DELAY = 0.5
REFRESH = 2.0
"""Seconds between two looks at the hub's list of sources during a download (new partial holders, their chunks)."""
SCAN = 64
"""How far down the queue a complete source looks for a chunk no partial holder has."""


class Channel(Protocol):
    async def get(self, request: ChunkRequest) -> bytes: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Source:
    ep: str
    name: str
    have: ChunkSet | None = None
    """The chunks a partial holder announced; None for an endpoint holding the whole file."""


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
    direct: collections.Counter[str] = field(default_factory=collections.Counter)
    """Source name -> chunks that came over a direct channel (the rest of `by_source` came through the hub)."""
    direct_fallbacks: int = 0
    """Channels to a source that went through the hub because its direct address did not answer."""
    problems: dict[str, str] = field(default_factory=dict)
    """Source name -> why it was dropped (or its last failure)."""
    not_held: collections.Counter[str] = field(default_factory=collections.Counter)
    """Source name -> requests a partial holder answered `not_held` (it did not have that chunk yet)."""

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
        self.pending: list[int] = list(missing)
        """Chunks nobody is fetching, in the order they are taken (the files app shuffles them, so that endpoints
        downloading the same file at once fetch different chunks and can serve them to each other)."""
        self.connect = connect
        self.store = store
        self.progress = progress
        self.pacer = pacer or Pacer(None)
        self.in_flight = 0
        self.dropped: set[str] = set()
        self.sources: dict[str, Source] = {}
        """The latest view of every source met so far (a partial holder's chunk set is refreshed)."""
        self.lacks: dict[str, set[int]] = {}
        """Chunks a partial holder answered `not_held` for, until its next announcement."""
        self.failure: ZtmError | None = None
        self._changed = asyncio.Event()
        self._workers: set[asyncio.Future[None]] = set()

    @property
    def complete(self) -> bool:
        return not self.pending and self.in_flight == 0

    async def run(self, sources: list[Source], refresh: Callable[[], Awaitable[list[Source]]] | None = None) -> None:
        """Fetch with these sources until done or until none of them can help any more. With `refresh`, the list
        of sources is asked for again every `REFRESH` seconds: new partial holders join, the chunk sets of known
        ones are updated. A `ZtmError` from `refresh` (the file changed) ends the run and is raised."""
        self._add(sources)
        refresher = asyncio.ensure_future(self._refresh(refresh)) if refresh is not None else None
        try:
            while self._workers and self.failure is None:
                done, _ = await asyncio.wait(self._workers, return_when=asyncio.FIRST_COMPLETED)
                self._workers -= done
        finally:
            if refresher is not None:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await refresher
            workers, self._workers = list(self._workers), set()
            for worker in workers:
                worker.cancel()
            for worker in workers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await worker
        if self.failure is not None:
            raise self.failure

    def _add(self, sources: list[Source]) -> None:
        for source in sources:
            if source.ep in self.dropped:
                continue
            known = source.ep in self.sources
            self.sources[source.ep] = source
            self.lacks.pop(source.ep, None)
            if not known:
                for _ in range(WORKERS_PER_SOURCE):
                    self._workers.add(asyncio.ensure_future(self._worker(source.ep)))
        self._changed.set()

    async def _refresh(self, refresh: Callable[[], Awaitable[list[Source]]]) -> None:
        while not self.complete:
            await asyncio.sleep(REFRESH)
            try:
                self._add(await refresh())
            except (Conflict, NotFound) as exc:
                self.failure = exc
                for worker in self._workers:
                    worker.cancel()
                return
            except ZtmError:
                continue  # the hub is busy or away: keep going with what we know

    def _pick(self, ep: str) -> int | None:
        """The position in `pending` of a chunk for source `ep`, or None if it holds none of them. A complete
        source prefers chunks no partial holder has (they can come from nowhere else)."""
        source = self.sources[ep]
        if source.have is None:
            partial = [s.have for e, s in self.sources.items() if s.have is not None and e not in self.dropped]
            if partial:
                for pos, index in enumerate(self.pending[:SCAN]):
                    if not any(index in have for have in partial):
                        return pos
            return 0 if self.pending else None
        lacks = self.lacks.get(ep, set())
        for pos, index in enumerate(self.pending):
            if index in source.have and index not in lacks:
                return pos
        return None

    def _stalled(self) -> bool:
        """Nothing in flight and no live source holds any missing chunk: waiting would not help."""
        if self.in_flight:
            return False
        return all(self._pick(ep) is None for ep in self.sources if ep not in self.dropped)

    async def _next(self, ep: str) -> int | None:
        while True:
            if ep in self.dropped or self.failure is not None:
                return None
            pos = self._pick(ep)
            if pos is not None:
                self.in_flight += 1
                return self.pending.pop(pos)
            if self.complete or self._stalled():
                self._changed.set()  # the other workers see it too
                return None
            self._changed.clear()
            await self._changed.wait()

    def _settle(self, index: int, ok: bool) -> None:
        self.in_flight -= 1
        if not ok:
            self.pending.insert(0, index)
        self._changed.set()

    def _drop(self, source: Source, reason: str) -> None:
        if source.ep not in self.dropped:
            self.dropped.add(source.ep)
            log.warning("download of %s: not using %s any more: %s", self.entry.path, source.name, reason)
        self.progress.problems[source.name] = reason
        self._changed.set()

    async def _worker(self, ep: str) -> None:
        channel: Channel | None = None
        strikes = 0
        source = self.sources[ep]
        try:
            while (index := await self._next(ep)) is not None:
                source = self.sources[ep]
                try:
                    if channel is None:
                        channel = await asyncio.wait_for(self.connect(source), CHUNK_TIMEOUT)
                    await self._one(channel, source, index)
                except NotHeld:
                    self.lacks.setdefault(ep, set()).add(index)  # a partial holder without it: ask someone else
                    self.progress.not_held[source.name] += 1
                    self._settle(index, False)
                    continue
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
        if getattr(channel, "direct", False):
            self.progress.direct[source.name] += 1


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
