"""`FilesApp`: this endpoint's part of the mesh file space.

- Publishing cuts content into 1 MiB chunks, stores them content-addressed under `DATA/meshes/MESH/files/`, and
  sends the file's entry to the hub's index, which checks that this endpoint's user may write the path.
- Downloading asks the hub for the entry and its sources, then fetches the missing chunks from every source at once
  (`Fetcher`), each checked against its hash; verified chunks stay on disk, so an interrupted download resumes. Once
  complete (whole-file hash checked too), this endpoint holds the file and announces itself as a source.
- Serving: peers open `fetch` streams; every chunk request is checked against the file's current ACL from the hub
  and the mesh's policy (`files/PATH`, `ztm.agent.gate`; both must allow), for the caller its certificate names,
  and each chunk is verified against its hash before it goes.
  A download in progress serves the chunks it has (a partial holder): it announces them to the hub as a bitmap
  (at most once a second) and answers `not_held` for the others.
- Direct channels: an agent started with `--direct` also takes `fetch` streams over direct channels
  (`ztm.agent.direct`: the same end-to-end stream and checks as through the hub) and offers the service `fetch`, so
  downloaders find its direct address (`GET /api/services`). A downloader fetches from such a source over a direct
  channel and falls back to the relay when the address does not answer.
- An unfinished download is recorded (`pending:PATH`: hash, output, rate) and resumed when the agent starts again;
  `cancel(path)` stops it for good. A file unpublished or published again meanwhile is abandoned (logged).

The API other apps use: `read(path)`, `write(path, data)`, `list(prefix)`; identity is this endpoint's user.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import contextlib
import hashlib
import logging
import os
import random
import time
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ztm import filespec, h2
from ztm.agent.apps import AppContext, Caller, MeshApp
from ztm.apps.files import wire
from ztm.apps.files.channel import ByteStream, ChunkChannel, StreamReader
from ztm.apps.files.fetch import Fetcher, Pacer, Progress, Source, describe_failure, unique_chunks
from ztm.apps.files.store import ChunkStore, Corrupt
from ztm.apps.files.wire import NotHeld
from ztm.errors import BadInput, Conflict, Forbidden, NotFound, Unavailable, ZtmError
from ztm.filespec import Acl, ChunkSet, FileEntry, Hasher
from ztm.policy import AppTarget
from ztm.timefmt import iso

log = logging.getLogger("ztm.files")

ACL_TTL = 1.0
"""Seconds a serving endpoint reuses the hub's answer about a file (its ACL and current hash)."""
SERVE_IDLE = 60.0
ROUNDS = 3
"""Times a download asks the hub for sources again when all it had gave up."""
KEEP_FINISHED = 100
HUB_TIMEOUT = 30.0
PARTIAL_EVERY = 1.0
"""Seconds between two announcements of the chunks a download in progress holds."""
MAX_PARTIAL = 256
"""Partial copies announced to the hub (the hub's limit per endpoint)."""
DIRECT_TTL = 5.0
"""Seconds a downloader reuses the hub's list of the direct addresses of `fetch` sources."""


@dataclass
class Download:
    """One download of a path: its progress, then its outcome."""

    path: str
    target: Path | None = None
    rate: float | None = None
    resume_hash: str | None = None
    """Set when the agent resumes a download it had not finished before it stopped: the hash it was fetching."""
    state: str = "running"
    error: str | None = None
    entry: FileEntry | None = None
    progress: Progress = field(default_factory=Progress)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def wait(self) -> FileEntry:
        await self.ended.wait()
        if self.state != "done" or self.entry is None:
            raise Unavailable(f"download of {self.path} failed: {self.error}")
        return self.entry

    def view(self) -> dict[str, Any]:
        p = self.progress
        entry = self.entry
        return {
            "path": self.path,
            "state": self.state,
            "error": self.error,
            "size": entry.size if entry else None,
            "hash": entry.hash if entry else None,
            "chunks": p.total,
            "chunks_done": p.done,
            "reused": p.reused,
            "fetched": p.fetched,
            "bytes_fetched": p.bytes_fetched,
            "by_source": dict(p.by_source),
            "direct": dict(p.direct),
            "direct_fallbacks": p.direct_fallbacks,
            "not_held": dict(p.not_held),
            "problems": dict(p.problems),
            "target": str(self.target) if self.target else None,
            "rate": self.rate,
            "resumed": self.resume_hash is not None,
            "started": iso(self.started),
            "finished": iso(self.finished),
        }


class FilesApp(MeshApp):
    name = "files"
    description = "mesh file space: publish files, download them from every endpoint that holds them"

    def __init__(self, ctx: AppContext) -> None:
        super().__init__(ctx)
        self.store = ChunkStore(ctx.session.files.dir / "files")
        self.held: dict[str, FileEntry] = {}
        """Files this endpoint holds in full, verified (it is a source of them)."""
        self.partial: dict[str, FileEntry] = {}
        """Downloads begun and not finished: their chunks on disk are kept for a resume."""
        self.have: dict[str, set[int]] = {}
        """Partial copies: the chunk indices on disk (what this endpoint serves and announces of them)."""
        self.downloads: dict[str, Download] = {}
        self._partial_task: asyncio.Task[None] | None = None
        self._partial_last = 0.0
        self._pinned: collections.Counter[str] = collections.Counter()
        self._cache: dict[str, tuple[float, FileEntry | ZtmError]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._direct: tuple[float, dict[str, str]] = (-DIRECT_TTL, {})
        """(when, endpoint id -> direct address) of the sources offering direct channels, from the hub."""
        self._direct_lock = asyncio.Lock()

    # lifecycle
    async def start(self) -> None:
        for key, value in self.ctx.config_items().items():
            kind, _, path = key.partition(":")
            if kind not in ("held", "partial") or not isinstance(value, dict):
                continue
            try:
                entry = FileEntry.from_json(value)
            except BadInput as exc:
                log.error("mesh %s: file record %s dropped: %s", self.ctx.mesh, key, exc.message)
                self.ctx.config_delete(key)
                continue
            (self.held if kind == "held" else self.partial)[path] = entry
        for path, entry in self.partial.items():
            self.have[path] = await asyncio.to_thread(self._scan, entry)
        await super().start()
        await self._announce_quietly()
        for key, value in self.ctx.config_items().items():
            kind, _, path = key.partition(":")
            if kind == "pending":
                self._resume(path, value)

    def _scan(self, entry: FileEntry) -> set[int]:
        """The chunk indices of `entry` on disk."""
        present = {h for h in set(entry.chunks) if self.store.has(h)}
        return {i for i, h in enumerate(entry.chunks) if h in present}

    def _resume(self, path: str, record: object) -> None:
        try:
            if not isinstance(record, dict):
                raise BadInput("not an object")
            path = filespec.check_path(path)
            file_hash = filespec.check_hash(record.get("hash"))
            target = record.get("target")
            if target is not None and (not isinstance(target, str) or not Path(target).is_absolute()):
                raise BadInput("bad target")
            rate = record.get("rate")
            if rate is not None and (isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0):
                raise BadInput("bad rate")
        except BadInput as exc:
            log.error("mesh %s: unfinished download record %s dropped: %s", self.ctx.mesh, path[:200], exc.message)
            self.ctx.config_delete(f"pending:{path}")
            return
        log.info("mesh %s: resuming the unfinished download of %s", self.ctx.mesh, path)
        self._start(Download(path, Path(target) if target else None, float(rate) if rate else None, file_hash))

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await super().stop()

    async def on_online(self) -> None:
        if self.ctx.session.direct.announce is not None:  # downloaders find the direct address with the service
            with contextlib.suppress(ZtmError):
                await self.ctx.publish([wire.SERVICE])
        await self._announce_quietly()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # hub calls
    async def _hub(self, method: str, path: str, body: Any = None) -> Any:
        return await self.ctx.session.link.request(method, path, body, timeout=HUB_TIMEOUT)

    async def info(self, path: str) -> dict[str, Any]:
        """The hub's entry of `path` (chunk list and sources included); NotFound if absent or unreadable."""
        answer = await self._hub("GET", "/api/files/entry?" + urlencode({"path": filespec.check_path(path)}))
        if not isinstance(answer, dict):
            raise Unavailable("the hub answered a file lookup with something else")
        return answer

    async def _announce(self, drop: Iterable[str] = (), replace: bool = True, hold: bool = True) -> None:
        """Tell the hub what this endpoint holds: the files in full (unless `hold` is false) and its partial copies
        (the chunks of each, as a `ChunkSet`)."""
        held = [{"path": e.path, "hash": e.hash} for e in self.held.values()] if hold else []
        body = {"hold": held, "partial": self._partial_list(), "drop": list(drop), "replace": replace}
        answer = await self._hub("POST", "/api/files/sources", body)
        if not isinstance(answer, dict):
            return
        gone = 0
        for path in answer.get("stale", []):
            if isinstance(path, str) and path in self.held:
                log.info("mesh %s: %s changed or went from the mesh; dropping the local copy", self.ctx.mesh, path)
                self._forget(path, "held")
                gone += 1
        for path in answer.get("partial_stale", []):
            job = self.downloads.get(path) if isinstance(path, str) else None
            if isinstance(path, str) and path in self.partial and (job is None or job.state != "running"):
                log.info("mesh %s: %s changed or went from the mesh; dropping the partial copy", self.ctx.mesh, path)
                self._forget(path, "partial")
                gone += 1
        if gone:
            await self._gc()

    def _partial_list(self) -> builtins.list[dict[str, str]]:
        found = []
        for path, entry in self.partial.items():
            have = self.have.get(path)
            if have and entry.chunks and (path not in self.held or self.held[path].hash != entry.hash):
                found.append({"path": path, "hash": entry.hash, "have": ChunkSet.of(have, len(entry.chunks)).encode()})
            if len(found) >= MAX_PARTIAL:
                break
        return found

    def _announce_partial_soon(self) -> None:
        """Announce the partial copies now, or `PARTIAL_EVERY` seconds after the last time, whichever is later."""
        if self._partial_task is not None and not self._partial_task.done():
            return

        async def later() -> None:
            await asyncio.sleep(max(0.0, self._partial_last + PARTIAL_EVERY - time.monotonic()))
            self._partial_last = time.monotonic()
            self._partial_task = None  # chunks stored from now on go in the next announcement
            with contextlib.suppress(ZtmError):
                await self._announce(replace=False, hold=False)

        self._partial_task = self._spawn(later())

    async def _announce_quietly(self) -> None:
        with contextlib.suppress(ZtmError):
            await self._announce()

    # local records
    def _hold(self, entry: FileEntry) -> None:
        self.held[entry.path] = entry
        self.ctx.config_set(f"held:{entry.path}", entry.to_json())
        if self.partial.pop(entry.path, None) is not None:
            self.ctx.config_delete(f"partial:{entry.path}")

    def _forget(self, path: str, only: str | None = None) -> bool:
        found = False
        for kind, table in (("held", self.held), ("partial", self.partial)):
            if only not in (None, kind):
                continue
            if table.pop(path, None) is not None:
                self.ctx.config_delete(f"{kind}:{path}")
                found = True
            if kind == "partial":
                self.have.pop(path, None)
        return found

    async def _gc(self) -> None:
        keep = {c for e in (*self.held.values(), *self.partial.values()) for c in e.chunks} | set(self._pinned)
        await asyncio.to_thread(self.store.gc, keep)

    def local_state(self, path: str, file_hash: str | None) -> str:
        held = self.held.get(path)
        if held is not None and (file_hash is None or held.hash == file_hash):
            return "complete"
        if path in self.partial:
            return "partial"
        return "none"

    # publishing
    async def publish(
        self, path: str, blocks: AsyncIterator[bytes], *, mtime: float | None = None, acl: Acl | None = None
    ) -> dict[str, Any]:
        """Store the content of `blocks` and publish it as `path`; returns the file's view."""
        path = filespec.check_path(path)
        acl = (acl or Acl()).check_for(path)
        if not filespec.may_write(self.ctx.user, path):
            raise Forbidden(f"user {self.ctx.user!r} may not publish {path}: only {filespec.writers(path)} may")
        hasher = Hasher()
        pinned: list[str] = []
        ok = False
        try:
            async for block in blocks:
                if hasher.size + len(block) > filespec.MAX_CHUNKS * filespec.CHUNK_SIZE:
                    raise BadInput("a file may hold at most 64 GiB")
                for chunk_hash, chunk in hasher.feed(block):
                    await self._put(chunk_hash, chunk, pinned)
            for chunk_hash, chunk in hasher.finish():
                await self._put(chunk_hash, chunk, pinned)
            entry = FileEntry(
                path, hasher.size, time.time() if mtime is None else mtime, hasher.file_hash, tuple(hasher.chunks),
                acl=acl,
            )  # fmt: skip
            answer = await self._hub("POST", "/api/files/entry", entry.to_json())
            published = FileEntry.from_json(answer)
            self._hold(published)
            self._cache.pop(path, None)
            ok = True
            log.info("mesh %s: published %s (%d bytes)", self.ctx.mesh, path, published.size)
            return self._view(answer)
        finally:
            for chunk_hash in pinned:
                self._pinned[chunk_hash] -= 1
                if self._pinned[chunk_hash] <= 0:
                    del self._pinned[chunk_hash]
            if not ok:
                await self._gc()

    async def _put(self, chunk_hash: str, chunk: bytes, pinned: list[str]) -> None:
        self._pinned[chunk_hash] += 1
        pinned.append(chunk_hash)
        await asyncio.to_thread(self.store.put, chunk_hash, chunk)

    async def publish_file(self, path: str, local: Path, *, acl: Acl | None = None) -> dict[str, Any]:
        """Publish the content of a local file (its modification time as the file's time)."""
        try:
            mtime = (await asyncio.to_thread(local.stat)).st_mtime
            handle = await asyncio.to_thread(open, local, "rb")
        except OSError as exc:
            raise BadInput(f"cannot read {local}: {exc.strerror or exc}") from None

        async def blocks() -> AsyncIterator[bytes]:
            with handle:
                while block := await asyncio.to_thread(handle.read, filespec.CHUNK_SIZE):
                    yield block

        return await self.publish(path, blocks(), mtime=mtime, acl=acl)

    async def unpublish(self, path: str) -> None:
        path = filespec.check_path(path)
        await self._hub("DELETE", "/api/files/entry?" + urlencode({"path": path}))
        self._cache.pop(path, None)
        if self._forget(path):
            await self._gc()

    async def set_acl(self, path: str, acl: Acl) -> dict[str, Any]:
        path = filespec.check_path(path)
        answer = await self._hub("POST", "/api/files/acl", {"path": path, "acl": acl.check_for(path).to_json()})
        self._cache.pop(path, None)
        return self._view(answer)

    async def erase(self, path: str) -> None:
        """Delete this endpoint's copy (whole or partial); it stops being a source. The mesh keeps the file."""
        path = filespec.check_path(path)
        job = self.downloads.get(path)
        if job is not None and job.state == "running":
            raise Conflict(f"{path} is being downloaded; wait for it to end or cancel it, then erase it")
        if not self._forget(path):
            raise NotFound(f"this endpoint holds no copy of {path}; see `ztm get file`")
        with contextlib.suppress(ZtmError):
            await self._announce(drop=[path], replace=False)
        await self._gc()

    # views
    def _view(self, info: dict[str, Any]) -> dict[str, Any]:
        view = {k: v for k, v in info.items() if k != "chunks"}
        chunks = info.get("chunks")
        if isinstance(chunks, builtins.list):
            view["chunks"] = len(chunks)
        partial = info.get("partial")
        if isinstance(partial, builtins.list):  # the bitmaps are for downloaders, not for people
            view["partial"] = [{k: v for k, v in p.items() if k != "have"} for p in partial if isinstance(p, dict)]
        for key in ("time", "published"):
            value = info.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                view[key] = iso(value)
        view["local"] = self.local_state(str(info.get("path")), info.get("hash") if "hash" in info else None)
        return view

    async def describe(self, path: str) -> dict[str, Any]:
        return self._view(await self.info(path))

    # downloading
    def download(self, path: str, target: Path | None = None, rate: float | None = None) -> Download:
        """Start (or join) the download of `path`; with `target`, the file is written there once complete."""
        path = filespec.check_path(path)
        job = self.downloads.get(path)
        if job is not None and job.state == "running":
            if target is not None and job.target not in (None, target):
                raise Conflict(f"{path} is being downloaded to {job.target} already")
            job.target = job.target or target
            return job
        return self._start(Download(path, target, rate))

    def _start(self, job: Download) -> Download:
        self.downloads.pop(job.path, None)
        self.downloads[job.path] = job
        finished = [p for p, d in self.downloads.items() if d.state != "running"]
        for old in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.downloads[old]
        job.task = self._spawn(self._run(job))
        return job

    async def cancel(self, path: str) -> Download:
        """Stop the download of `path` for good (it is not resumed at the next start); the chunks it verified stay
        as a partial copy (served, reused by a later download; `erase` removes them)."""
        path = filespec.check_path(path)
        job = self.downloads.get(path)
        if job is None or job.state != "running" or job.task is None:
            raise NotFound(f"no download of {path} is running; see GET .../apps/files/downloads")
        job.state, job.error = "cancelled", "cancelled by the user"
        job.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await job.task
        log.info("mesh %s: download of %s cancelled", self.ctx.mesh, path)
        return job

    def _abandon(self, job: Download, why: str) -> None:
        job.state, job.error = "abandoned", f"abandoned the unfinished download: {why}"
        log.warning("mesh %s: abandoned the unfinished download of %s: %s", self.ctx.mesh, job.path, why)
        self._forget(job.path, "partial")

    async def _run(self, job: Download) -> None:
        keep = False
        try:
            if job.resume_hash is not None:
                await self.ctx.session.link.online.wait()
                try:
                    info = await self.info(job.path)
                except NotFound:
                    self._abandon(job, "the file was unpublished (or this user may no longer read it)")
                    await self._announce_dropped(job.path)
                    return
                if info.get("hash") != job.resume_hash:
                    self._abandon(job, "the file was published again with other content (its hash changed)")
                    await self._announce_dropped(job.path)
                    return
            else:
                info = await self.info(job.path)
            entry = job.entry = FileEntry.from_json(info)
            target = str(job.target) if job.target is not None else None
            self.ctx.config_set(f"pending:{job.path}", {"hash": entry.hash, "target": target, "rate": job.rate})
            unique = unique_chunks(entry)
            job.progress.total = len(unique)
            held = self.held.get(entry.path)
            if held is not None and held.hash == entry.hash:
                job.progress.reused = len(unique)
            else:
                await self._fetch(job, entry, unique, info)
            if job.target is not None:
                await asyncio.to_thread(self._export, entry, job.target)
            job.state = "done"
        except ZtmError as exc:
            job.state, job.error = "failed", exc.message
            log.info("mesh %s: download of %s failed: %s", self.ctx.mesh, job.path, exc.message)
        except Exception as exc:
            job.state, job.error = "failed", "internal error; see the agent log"
            log.exception("mesh %s: download of %s failed", self.ctx.mesh, job.path, exc_info=exc)
        except asyncio.CancelledError:
            keep = job.state != "cancelled"  # the agent stops: resume at its next start
            raise
        finally:
            if not keep:
                self.ctx.config_delete(f"pending:{job.path}")
            job.finished = time.time()
            job.ended.set()

    async def _announce_dropped(self, path: str) -> None:
        with contextlib.suppress(ZtmError):
            await self._announce(drop=[path], replace=False, hold=False)
        await self._gc()

    async def _fetch(self, job: Download, entry: FileEntry, unique: dict[str, int], info: dict[str, Any]) -> None:
        self.partial[entry.path] = entry
        self.ctx.config_set(f"partial:{entry.path}", entry.to_json())
        have = self.have[entry.path] = await asyncio.to_thread(self._scan, entry)
        missing = [i for h, i in unique.items() if i not in have]
        random.shuffle(missing)  # downloaders of the same file fetch different chunks first, and trade them
        job.progress.reused = len(unique) - len(missing)
        where: dict[str, builtins.list[int]] = {}
        for index, chunk_hash in enumerate(entry.chunks):
            where.setdefault(chunk_hash, []).append(index)

        async def store(chunk_hash: str, data: bytes) -> None:
            await self._store_chunk(chunk_hash, data)
            if self.partial.get(entry.path) is entry:
                have.update(where[chunk_hash])
                self._announce_partial_soon()

        async def refresh() -> builtins.list[Source]:
            fresh = await self.info(entry.path)
            if fresh.get("hash") != entry.hash:
                raise Conflict(f"{entry.path} was published again during the download; download it again")
            return self._sources(fresh, entry)

        async def connect(source: Source) -> ChunkChannel:
            return await self._connect(source, job.progress)

        fetcher = Fetcher(entry, missing, connect, store, job.progress, Pacer(job.rate))
        for _round in range(ROUNDS):
            if fetcher.complete:
                break
            sources = [s for s in self._sources(info, entry) if s.ep not in fetcher.dropped]
            if not sources:
                break
            await fetcher.run(sources, refresh)
            if fetcher.complete:
                break
            info = await self.info(entry.path)
            if info.get("hash") != entry.hash:
                raise Conflict(f"{entry.path} was published again during the download; download it again")
        if not fetcher.complete:
            left = len(fetcher.pending) + fetcher.in_flight
            raise Unavailable(describe_failure(job.progress, left, len(unique)))
        if await asyncio.to_thread(self._file_hash, entry) != entry.hash:
            raise Unavailable(f"the chunks of {entry.path} do not add up to its file hash: ask its publisher again")
        self._hold(entry)
        with contextlib.suppress(ZtmError):
            await self._announce(replace=False)
        direct = f", direct: {dict(job.progress.direct)}" if job.progress.direct else ""
        log.info("mesh %s: downloaded %s (%s%s)", self.ctx.mesh, entry.path, dict(job.progress.by_source), direct)

    def _sources(self, info: dict[str, Any], entry: FileEntry) -> builtins.list[Source]:
        """The online sources in a hub answer: complete holders first, then partial ones with their chunk sets
        (a malformed bitmap only costs that holder)."""
        found = [
            Source(str(s.get("ep")), str(s.get("name")))
            for s in info.get("sources", [])
            if isinstance(s, dict) and s.get("online") and s.get("ep") != self.ctx.ep_id
        ]
        for s in info.get("partial", []):
            if not isinstance(s, dict) or not s.get("online") or s.get("ep") == self.ctx.ep_id:
                continue
            try:
                have = ChunkSet.decode(s.get("have"), len(entry.chunks))
            except BadInput as exc:
                log.warning("download of %s: ignoring partial holder %s: %s", entry.path, s.get("name"), exc.message)
                continue
            found.append(Source(str(s.get("ep")), str(s.get("name")), have))
        return found

    async def _connect(self, source: Source, progress: Progress | None = None) -> ChunkChannel:
        """A chunk channel to `source`: over a direct channel when one is pooled, its listener answers or one can be
        punched (docs/nat-traversal.md; a punch runs in the background, this chunk takes the relay), else through the
        hub's relay (a refusal over the direct channel is final: the relay would refuse too)."""
        traffic = self.ctx.session.traffic_of(source.ep, source.name)

        def count(n: int) -> None:
            traffic.received += n

        def fallback(why: str) -> None:
            self.counters["fetch:direct_fallbacks"] += 1
            if progress is not None:
                progress.direct_fallbacks += 1
            log.info("download from %s: direct channel unusable (%s); through the hub", source.name, why)

        address = (await self._direct_addresses()).get(source.ep)
        stream = await self.ctx.open_stream_direct_first(source.ep, wire.SERVICE, address, fallback)
        if stream.path != "relay":
            self.counters["fetch:direct"] += 1
        return ChunkChannel(stream, source.name, count)

    async def _direct_addresses(self) -> dict[str, str]:
        """Endpoint id -> direct address of the endpoints offering `fetch` over direct channels (from the hub,
        reused for `DIRECT_TTL` s; none when the hub cannot say)."""
        async with self._direct_lock:  # the workers starting together share one lookup
            when, found = self._direct
            if time.monotonic() - when >= DIRECT_TTL:
                try:
                    offered = await self.ctx.find(wire.SERVICE)
                except ZtmError:
                    offered = []
                found = {str(s["ep"]): s["direct"] for s in offered if isinstance(s.get("direct"), str) and s.get("ep")}
                self._direct = (time.monotonic(), found)
            return found

    async def _store_chunk(self, chunk_hash: str, data: bytes) -> None:
        await asyncio.to_thread(self.store.put, chunk_hash, data)
        self.counters["fetch:chunks_fetched"] += 1

    def _file_hash(self, entry: FileEntry) -> str:
        digest = hashlib.sha256()
        for chunk_hash in entry.chunks:
            digest.update(self.store.read(chunk_hash))
        return digest.hexdigest()

    def _export(self, entry: FileEntry, target: Path) -> None:
        """Write the file to `target` (through a temporary file beside it, then renamed)."""
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.ztm-part")
        try:
            with open(tmp, "wb") as f:
                for chunk_hash in entry.chunks:
                    f.write(self.store.read(chunk_hash))
            if entry.time:
                os.utime(tmp, (entry.time, entry.time))
            tmp.replace(target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise Unavailable(f"cannot write {target}: {exc.strerror or exc}") from None

    async def content(self, path: str) -> AsyncIterator[bytes]:
        """The bytes of a file this endpoint holds, chunk by chunk (verified)."""
        entry = self.held.get(filespec.check_path(path))
        if entry is None:
            raise NotFound(f"this endpoint holds no complete copy of {path}: download it first (`ztm download file`)")
        for chunk_hash in entry.chunks:
            yield await asyncio.to_thread(self.store.read, chunk_hash)

    def held_entry(self, path: str) -> FileEntry:
        entry = self.held.get(filespec.check_path(path))
        if entry is None:
            raise NotFound(f"this endpoint holds no complete copy of {path}: download it first (`ztm download file`)")
        return entry

    # serving
    async def on_stream(self, stream_id: str, caller: Caller, service: str) -> None:
        if service != wire.SERVICE or not caller.user or not caller.ep_id:
            await self.ctx.refuse(stream_id, f"the files app serves only {wire.SERVICE!r} streams")
            return
        stream = await self.ctx.accept(stream_id)
        if stream.path != "relay":
            self.counters["fetch:direct_served"] += 1
        traffic = self.ctx.session.traffic_of(caller.ep_id, caller.name)
        traffic.streams += 1
        try:
            await self._serve(stream, caller, traffic)
        except (h2.H2Error, TimeoutError, ZtmError):
            stream.reset()
        finally:
            traffic.streams -= 1

    async def _serve(self, stream: ByteStream, caller: Caller, traffic: Any) -> None:
        reader = StreamReader(stream)
        while (line := await asyncio.wait_for(reader.line(), SERVE_IDLE)) is not None:
            request: wire.ChunkRequest | None = None
            chunk_hash = ""
            try:
                request = wire.parse_request(line)
                entry, partial = await self._authorize(caller, request)
                chunk_hash = entry.chunks[request.index]
                try:
                    data = await asyncio.to_thread(self.store.read, chunk_hash)
                except Corrupt:
                    if not partial:
                        raise
                    self.have.get(request.path, set()).difference_update(
                        i for i, h in enumerate(entry.chunks) if h == chunk_hash
                    )
                    raise NotHeld(f"this endpoint lost chunk {request.index} of {request.path}") from None
            except NotHeld as exc:  # a partial copy without that chunk: the stream goes on
                self.counters["fetch:not_held"] += 1
                await stream.write(wire.error_header(exc))
                continue
            except ZtmError as exc:
                self.counters["fetch:refused"] += 1
                what = request.path if request else "a bad request"
                log.warning("mesh %s: refused %s to %s (user %s): %s", self.ctx.mesh, what, caller.name,
                            caller.user, exc.message)  # fmt: skip
                if isinstance(exc, Corrupt):
                    await self._withdraw_corrupt(chunk_hash)
                await stream.write(wire.error_header(exc), end_stream=True)
                return
            await stream.write(wire.ok_header(len(data), chunk_hash))
            await stream.write(data)
            traffic.sent += len(data)
            self.counters["fetch:chunks_served"] += 1
            self.counters["fetch:bytes_served"] += len(data)
        await stream.end()

    async def _authorize(self, caller: Caller, request: wire.ChunkRequest) -> tuple[FileEntry, bool]:
        """The entry this endpoint holds for `request` (and whether it is a partial copy) if `caller` may read it now
        and the chunk is here; the refusal otherwise (`NotHeld`, after the ACL check, for a chunk a partial copy
        does not have yet)."""
        held = self.held.get(request.path)
        partial = False
        if held is None or held.hash != request.hash:
            held = self.partial.get(request.path)
            partial = True
            if held is None or held.hash != request.hash:
                raise NotFound(f"this endpoint holds no copy of that version of {request.path}")
        current = await self._current(request.path)
        if current.hash != held.hash:
            raise NotFound(f"{request.path} was published again; ask the hub for its sources")
        if not filespec.may_read(caller.user, request.path, current.acl):
            raise Forbidden(filespec.read_refusal(caller.user, request.path, current.acl))
        self.ctx.session.gate.check(caller, AppTarget("files", request.path))  # the mesh's policy too: both must allow
        if request.index >= len(held.chunks):
            raise BadInput(f"{request.path} has {len(held.chunks)} chunks; there is no chunk {request.index}")
        if partial and request.index not in self.have.get(request.path, ()):
            raise NotHeld(f"this endpoint does not hold chunk {request.index} of {request.path} yet")
        return held, partial

    async def _current(self, path: str) -> FileEntry:
        """The hub's entry of `path` (for its ACL), reused for `ACL_TTL` seconds."""
        cached = self._cache.get(path)
        now = time.monotonic()
        if cached is None or now - cached[0] > ACL_TTL:
            try:
                value: FileEntry | ZtmError = FileEntry.from_json(await self.info(path))
            except NotFound as exc:
                value = NotFound(f"{path} is not in the mesh any more ({exc.message})")
            cached = self._cache[path] = (now, value)
            if len(self._cache) > 4096:
                self._cache = {k: v for k, v in self._cache.items() if now - v[0] <= ACL_TTL}
        if isinstance(cached[1], ZtmError):
            raise cached[1]
        return cached[1]

    async def _withdraw_corrupt(self, chunk_hash: str) -> None:
        """A stored chunk went bad: stop offering every file that contains it (they are incomplete now)."""
        damaged = [p for p, e in self.held.items() if chunk_hash in e.chunks]
        for path in damaged:
            log.error("mesh %s: the local copy of %s is damaged; no longer offering it", self.ctx.mesh, path)
            entry = self.held[path]
            self._forget(path)
            self.partial[path] = entry  # what is intact stays for a later download to reuse (and is served)
            self.ctx.config_set(f"partial:{path}", entry.to_json())
            self.have[path] = {i for i, h in enumerate(entry.chunks) if h != chunk_hash}
        if damaged:
            with contextlib.suppress(ZtmError):
                await self._announce(drop=damaged, replace=False)

    # the API for other apps (identity: this endpoint's user, enforced by the hub and the serving endpoints)
    async def read(self, path: str) -> bytes:
        """The content of mesh file `path` (downloaded first if this endpoint holds no current copy)."""
        entry = await self.download(path).wait()
        return b"".join([await asyncio.to_thread(self.store.read, c) for c in entry.chunks])

    async def write(self, path: str, data: bytes) -> dict[str, Any]:
        """Publish `data` as `path`; returns the file's view."""

        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.publish(path, one())

    async def list(self, prefix: str = "/") -> builtins.list[dict[str, Any]]:
        """Files under `prefix` this endpoint's user may read (without chunk lists), with `local` state."""
        query = urlencode({"prefix": filespec.check_prefix(prefix)})
        answer = await self._hub("GET", "/api/files?" + query)
        if not isinstance(answer, builtins.list):
            raise Unavailable("the hub answered a file listing with something else")
        return [self._view(item) for item in answer if isinstance(item, dict)]
