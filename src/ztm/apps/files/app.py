"""`FilesApp`: this endpoint's part of the mesh file space.

- Publishing cuts content into 1 MiB chunks, stores them content-addressed under `DATA/meshes/MESH/files/`, and
  sends the file's entry to the hub's index, which checks that this endpoint's user may write the path.
- Downloading asks the hub for the entry and its sources, then fetches the missing chunks from every source at once
  (`Fetcher`), each checked against its hash; verified chunks stay on disk, so an interrupted download resumes. Once
  complete (whole-file hash checked too), this endpoint holds the file and announces itself as a source.
- Serving: peers open `fetch` streams; every chunk request is checked against the file's current ACL from the hub,
  for the caller the hub asserts from its certificate, and each chunk is verified against its hash before it goes.

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
import time
from collections.abc import AsyncIterator, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ztm import filespec, h2
from ztm.agent.apps import AppContext, Caller, MeshApp
from ztm.apps.files import wire
from ztm.apps.files.channel import ChunkChannel, StreamReader
from ztm.apps.files.fetch import Fetcher, Pacer, Progress, Source, describe_failure, unique_chunks
from ztm.apps.files.store import ChunkStore, Corrupt
from ztm.errors import BadInput, Conflict, Forbidden, NotFound, Unavailable, ZtmError
from ztm.filespec import Acl, FileEntry, Hasher
from ztm.timefmt import iso

log = logging.getLogger("ztm.files")

ACL_TTL = 1.0
"""Seconds a serving endpoint reuses the hub's answer about a file (its ACL and current hash)."""
SERVE_IDLE = 60.0
ROUNDS = 3
"""Times a download asks the hub for sources again when all it had gave up."""
KEEP_FINISHED = 100
HUB_TIMEOUT = 30.0


@dataclass
class Download:
    """One download of a path: its progress, then its outcome."""

    path: str
    target: Path | None = None
    rate: float | None = None
    state: str = "running"
    error: str | None = None
    entry: FileEntry | None = None
    progress: Progress = field(default_factory=Progress)
    started: float = field(default_factory=time.time)
    finished: float | None = None
    ended: asyncio.Event = field(default_factory=asyncio.Event)

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
            "problems": dict(p.problems),
            "target": str(self.target) if self.target else None,
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
        self.downloads: dict[str, Download] = {}
        self._pinned: collections.Counter[str] = collections.Counter()
        self._cache: dict[str, tuple[float, FileEntry | ZtmError]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

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
        await super().start()
        await self._announce_quietly()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await super().stop()

    async def on_online(self) -> None:
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

    async def _announce(self, drop: Iterable[str] = (), replace: bool = True) -> None:
        hold = [{"path": e.path, "hash": e.hash} for e in self.held.values()]
        answer = await self._hub("POST", "/api/files/sources", {"hold": hold, "drop": list(drop), "replace": replace})
        stale = answer.get("stale", []) if isinstance(answer, dict) else []
        for path in stale:
            if isinstance(path, str) and path in self.held:
                log.info("mesh %s: %s changed or went from the mesh; dropping the local copy", self.ctx.mesh, path)
                self._forget(path)
        if stale:
            await self._gc()

    async def _announce_quietly(self) -> None:
        with contextlib.suppress(ZtmError):
            await self._announce()

    # local records
    def _hold(self, entry: FileEntry) -> None:
        self.held[entry.path] = entry
        self.ctx.config_set(f"held:{entry.path}", entry.to_json())
        if self.partial.pop(entry.path, None) is not None:
            self.ctx.config_delete(f"partial:{entry.path}")

    def _forget(self, path: str) -> bool:
        found = False
        for kind, table in (("held", self.held), ("partial", self.partial)):
            if table.pop(path, None) is not None:
                self.ctx.config_delete(f"{kind}:{path}")
                found = True
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
            raise Conflict(f"{path} is being downloaded; wait for it to end, then erase it")
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
        job = Download(path, target, rate)
        self.downloads.pop(path, None)
        self.downloads[path] = job
        finished = [p for p, d in self.downloads.items() if d.state != "running"]
        for old in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.downloads[old]
        self._spawn(self._run(job))
        return job

    async def _run(self, job: Download) -> None:
        try:
            info = await self.info(job.path)
            entry = job.entry = FileEntry.from_json(info)
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
        finally:
            job.finished = time.time()
            job.ended.set()

    async def _fetch(self, job: Download, entry: FileEntry, unique: dict[str, int], info: dict[str, Any]) -> None:
        self.partial[entry.path] = entry
        self.ctx.config_set(f"partial:{entry.path}", entry.to_json())
        missing = [i for h, i in unique.items() if not await asyncio.to_thread(self.store.has, h)]
        job.progress.reused = len(unique) - len(missing)
        fetcher = Fetcher(entry, missing, self._connect, self._store_chunk, job.progress, Pacer(job.rate))
        for _round in range(ROUNDS):
            if fetcher.complete:
                break
            sources = [
                Source(str(s.get("ep")), str(s.get("name")))
                for s in info.get("sources", [])
                if isinstance(s, dict) and s.get("online") and s.get("ep") != self.ctx.ep_id
            ]
            sources = [s for s in sources if s.ep not in fetcher.dropped]
            if not sources:
                break
            await fetcher.run(sources)
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
        log.info("mesh %s: downloaded %s (%s)", self.ctx.mesh, entry.path, dict(job.progress.by_source))

    async def _connect(self, source: Source) -> ChunkChannel:
        stream = await self.ctx.open_stream(source.ep, wire.SERVICE)
        traffic = self.ctx.session.traffic_of(source.ep, source.name)

        def count(n: int) -> None:
            traffic.received += n

        return ChunkChannel(stream, source.name, count)

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
        traffic = self.ctx.session.traffic_of(caller.ep_id, caller.name)
        traffic.streams += 1
        try:
            await self._serve(stream, caller, traffic)
        except (h2.H2Error, TimeoutError, ZtmError):
            stream.reset()
        finally:
            traffic.streams -= 1

    async def _serve(self, stream: h2.Stream, caller: Caller, traffic: Any) -> None:
        reader = StreamReader(stream)
        while (line := await asyncio.wait_for(reader.line(), SERVE_IDLE)) is not None:
            request: wire.ChunkRequest | None = None
            chunk_hash = ""
            try:
                request = wire.parse_request(line)
                entry = await self._authorize(caller, request)
                chunk_hash = entry.chunks[request.index]
                data = await asyncio.to_thread(self.store.read, chunk_hash)
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

    async def _authorize(self, caller: Caller, request: wire.ChunkRequest) -> FileEntry:
        """The held entry for `request` if `caller` may read it now; the refusal otherwise."""
        held = self.held.get(request.path)
        if held is None or held.hash != request.hash:
            raise NotFound(f"this endpoint holds no copy of that version of {request.path}")
        current = await self._current(request.path)
        if current.hash != held.hash:
            raise NotFound(f"{request.path} was published again; ask the hub for its sources")
        if not filespec.may_read(caller.user, request.path, current.acl):
            raise Forbidden(filespec.read_refusal(caller.user, request.path, current.acl))
        if request.index >= len(held.chunks):
            raise BadInput(f"{request.path} has {len(held.chunks)} chunks; there is no chunk {request.index}")
        return held

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
            self.partial[path] = entry  # what is intact stays for a later download to reuse
            self.ctx.config_set(f"partial:{path}", entry.to_json())
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
