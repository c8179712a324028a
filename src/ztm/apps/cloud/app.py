"""`CloudApp`: a personal cloud drive on top of the files app, under the user's private `/users/USER/`.

A local directory (`local_dir`) maps onto `/users/USER/`: `upload PATH` publishes `local_dir/PATH`, `download PATH`
fetches `/users/USER/PATH` into `local_dir/PATH` (a directory path means every file below it). A mirror keeps a
subdirectory in sync: every `interval` seconds (and at once after a change of configuration) it uploads new or
changed local files and downloads new or changed mesh files, as `ztm.apps.cloud.sync.decide` says, remembering per
file the content both sides had at the last sync. Files are private to the user (the files app's namespace rule).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ztm import filespec
from ztm.agent.apps import AppContext, MeshApp
from ztm.apps.cloud.sync import Action, Side, decide
from ztm.apps.files.app import FilesApp
from ztm.errors import BadInput, NotFound, Unavailable, ZtmError
from ztm.timefmt import iso, parse_iso

log = logging.getLogger("ztm.cloud")

DEFAULT_INTERVAL = 10.0
MIN_INTERVAL = 1.0
MAX_INTERVAL = 3600.0
MAX_FILES = 10_000
"""Files a mirror scan looks at, at most (on each side)."""
PART_SUFFIX = ".ztm-part"


def relative(value: object, user: str, *, directory: bool) -> str:
    """A path inside the cloud drive (`docs/a.txt`, leading '/' optional); '' is the whole drive (directories
    only). Checked as the mesh path `/users/USER/...` it stands for."""
    if not isinstance(value, str):
        raise BadInput(f"invalid cloud path {value!r}: expected a string such as docs/report.pdf")
    rel = value.strip("/")
    if rel in ("", "."):
        if not directory:
            raise BadInput("name a file of the cloud drive, e.g. docs/report.pdf")
        return ""
    filespec.check_path(f"/users/{user}/{rel}")
    return rel


@dataclass
class Mirror:
    path: str
    download: bool
    upload: bool
    last_scan: float | None = None
    last_error: str | None = None
    uploaded: int = 0
    downloaded: int = 0

    def view(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "download": self.download,
            "upload": self.upload,
            "last_scan": iso(self.last_scan),
            "last_error": self.last_error,
            "uploaded": self.uploaded,
            "downloaded": self.downloaded,
        }


class CloudApp(MeshApp):
    name = "cloud"
    description = "personal cloud drive: a local directory kept in sync with your private /users/YOU/ files"

    def __init__(self, ctx: AppContext) -> None:
        super().__init__(ctx)
        self.local_dir: Path | None = None
        self.interval = DEFAULT_INTERVAL
        self.mirrors: dict[str, Mirror] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # lifecycle
    async def start(self) -> None:
        items = self.ctx.config_items()
        local = items.get("local_dir")
        if isinstance(local, str):
            self.local_dir = Path(local)
        interval = items.get("interval")
        if isinstance(interval, int | float) and MIN_INTERVAL <= interval <= MAX_INTERVAL:
            self.interval = float(interval)
        for key, value in items.items():
            if key.startswith("mirror:") and isinstance(value, dict):
                path = key.removeprefix("mirror:")
                self.mirrors[path] = Mirror(path, bool(value.get("download")), bool(value.get("upload")))
        await super().start()
        self._loop = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._loop is not None:
            self._loop.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop
        await super().stop()

    @property
    def root(self) -> str:
        return f"/users/{self.ctx.user}/"

    def _files(self) -> FilesApp:
        files = self.ctx.session.apps.get("files")
        if not isinstance(files, FilesApp) or not files.running:
            raise Unavailable("the files app is not running in this mesh; the cloud app needs it")
        return files

    def _dir(self) -> Path:
        if self.local_dir is None:
            raise BadInput("no local directory yet: set one with `ztm cloud config --local-dir DIR`")
        return self.local_dir

    # configuration
    def view(self) -> dict[str, Any]:
        return {
            **super().view(),
            "user": self.ctx.user,
            "root": self.root,
            "local_dir": str(self.local_dir) if self.local_dir else None,
            "interval": self.interval,
            "mirrors": [self.mirrors[p].view() for p in sorted(self.mirrors)],
        }

    def configure(self, local_dir: object = None, interval: object = None) -> dict[str, Any]:
        new_dir: Path | None = None
        if local_dir is not None:
            if not isinstance(local_dir, str) or not Path(local_dir).is_absolute():
                raise BadInput("local_dir must be an absolute directory path")
            new_dir = Path(local_dir)
            try:
                new_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BadInput(f"cannot use {local_dir} as the local directory: {exc.strerror or exc}") from None
            if not new_dir.is_dir():
                raise BadInput(f"{local_dir} is not a directory")
        if interval is not None:
            if isinstance(interval, bool) or not isinstance(interval, int | float):
                raise BadInput("interval must be a number of seconds")
            if not MIN_INTERVAL <= interval <= MAX_INTERVAL:
                raise BadInput(f"interval must be from {MIN_INTERVAL:g} to {MAX_INTERVAL:g} seconds")
            self.interval = float(interval)
            self.ctx.config_set("interval", self.interval)
        if new_dir is not None:
            if new_dir != self.local_dir:
                for key in [k for k in self.ctx.config_items() if k.startswith("base:")]:
                    self.ctx.config_delete(key)  # another directory: nothing is known to be in sync
            self.local_dir = new_dir
            self.ctx.config_set("local_dir", str(new_dir))
        self._wake.set()
        return self.view()

    def set_mirror(self, path: object, download: object, upload: object) -> dict[str, Any]:
        rel = relative(path, self.ctx.user, directory=True)
        if not isinstance(download, bool) or not isinstance(upload, bool):
            raise BadInput("download and upload must be true or false")
        if download or upload:
            self._dir()
            mirror = self.mirrors.get(rel) or Mirror(rel, download, upload)
            mirror.download, mirror.upload = download, upload
            self.mirrors[rel] = mirror
            self.ctx.config_set(f"mirror:{rel}", {"download": download, "upload": upload})
            self._wake.set()
            return mirror.view()
        if self.mirrors.pop(rel, None) is None:
            raise NotFound(f"no mirror of {rel or '/'}; see `ztm cloud`")
        self.ctx.config_delete(f"mirror:{rel}")
        return Mirror(rel, False, False).view()

    # one-off operations
    async def ls(self, path: object) -> list[dict[str, Any]]:
        rel = relative(path, self.ctx.user, directory=True)
        prefix = self.root + rel if rel else self.root
        found = await self._files().list(prefix)
        out = []
        for item in found:
            name = str(item.get("path", "")).removeprefix(self.root)
            local = self.local_dir / name if self.local_dir else None
            out.append({**item, "name": name, "local_file": bool(local and local.is_file())})
        return out

    async def upload(self, path: object) -> list[dict[str, Any]]:
        rel = relative(path, self.ctx.user, directory=True)
        base = self._dir() / rel if rel else self._dir()
        if base.is_file():
            return [await self._upload(rel)]
        if not base.is_dir():
            raise NotFound(f"{base} does not exist")
        return [await self._upload(name) for name in sorted(await asyncio.to_thread(_walk, self._dir(), rel))]

    async def _upload(self, rel: str) -> dict[str, Any]:
        local = self._dir() / rel
        stat = await asyncio.to_thread(local.stat)
        view = await self._files().publish_file(self.root + rel, local)
        self._remember(rel, str(view.get("hash")), stat)
        return view

    async def download(self, path: object) -> list[dict[str, Any]]:
        rel = relative(path, self.ctx.user, directory=True)
        files = self._files()
        self._dir()
        if rel:
            with contextlib.suppress(NotFound):
                await files.info(self.root + rel)
                return [self._start_download(rel).view()]
        names = [str(i.get("path", "")).removeprefix(self.root) for i in await self.ls(rel)]
        if not names:
            raise NotFound(f"no file {self.root}{rel} in the mesh; see `ztm cloud ls`")
        return [self._start_download(name).view() for name in names]

    def _start_download(self, rel: str) -> Any:
        job = self._files().download(self.root + rel, target=self._dir() / rel)
        task = asyncio.ensure_future(self._after_download(rel, job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _after_download(self, rel: str, job: Any) -> None:
        with contextlib.suppress(ZtmError, OSError):
            entry = await job.wait()
            self._remember(rel, entry.hash, (self._dir() / rel).stat())

    def _remember(self, rel: str, file_hash: str, stat: os.stat_result) -> None:
        self.ctx.config_set(f"base:{rel}", {"hash": file_hash, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns})

    # mirroring
    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            if self.local_dir is None or not self.ctx.session.link.online.is_set():
                continue
            for mirror in list(self.mirrors.values()):
                try:
                    await self.sync(mirror)
                    mirror.last_error = None
                except (ZtmError, OSError) as exc:
                    mirror.last_error = exc.message if isinstance(exc, ZtmError) else str(exc)
                    log.warning("mesh %s: mirror of %s: %s", self.ctx.mesh, mirror.path or "/", mirror.last_error)
                mirror.last_scan = time.time()

    async def sync(self, mirror: Mirror) -> None:
        """One scan of one mirror: every file decided and copied one at a time."""
        async with self._lock:
            files = self._files()
            prefix = self.root + mirror.path if mirror.path else self.root
            mesh = {
                str(i["path"]).removeprefix(self.root): i
                for i in (await files.list(prefix))[:MAX_FILES]
                if isinstance(i.get("path"), str)
            }
            local = await asyncio.to_thread(_walk, self._dir(), mirror.path)
            bases = self.ctx.config_items()
            for rel in sorted(set(mesh) | set(local)):
                await self._sync_one(mirror, rel, mesh.get(rel), rel in local, bases.get(f"base:{rel}"))

    async def _sync_one(
        self, mirror: Mirror, rel: str, mesh_item: dict[str, Any] | None, is_local: bool, base: object
    ) -> None:
        files = self._files()
        path = self._dir() / rel
        base_rec = base if isinstance(base, dict) else {}
        local_side: Side | None = None
        if is_local:
            stat = await asyncio.to_thread(path.stat)
            if base_rec.get("size") == stat.st_size and base_rec.get("mtime_ns") == stat.st_mtime_ns:
                local_hash = str(base_rec.get("hash"))
            else:
                local_hash = await asyncio.to_thread(_hash_file, path)
            local_side = Side(local_hash, stat.st_mtime)
        mesh_side = None
        if mesh_item is not None:
            mesh_side = Side(str(mesh_item.get("hash")), _time(mesh_item.get("time")))
        base_hash = base_rec.get("hash") if isinstance(base_rec.get("hash"), str) else None
        action = decide(local_side, mesh_side, base_hash, upload=mirror.upload, download=mirror.download)
        if action is Action.UPLOAD:
            await self._upload(rel)
            mirror.uploaded += 1
            log.info("mesh %s: mirror uploaded %s", self.ctx.mesh, rel)
        elif action is Action.DOWNLOAD:
            entry = await files.download(self.root + rel, target=path).wait()
            self._remember(rel, entry.hash, await asyncio.to_thread(path.stat))
            mirror.downloaded += 1
            log.info("mesh %s: mirror downloaded %s", self.ctx.mesh, rel)
        elif (
            local_side is not None
            and mesh_side is not None
            and local_side.hash == mesh_side.hash
            and (base_hash != local_side.hash or not _same_stat(base_rec, path))
        ):
            self._remember(rel, local_side.hash, await asyncio.to_thread(path.stat))


def _walk(root: Path, rel: str) -> set[str]:
    """Regular files below `root/rel` (no symbolic links, no partial downloads), relative to `root`."""
    start = root / rel if rel else root
    if start.is_file() and not start.is_symlink():
        return {rel}
    found: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(start):
        dirnames[:] = sorted(d for d in dirnames if not (Path(dirpath) / d).is_symlink())
        for name in filenames:
            full = Path(dirpath) / name
            if name.endswith(PART_SUFFIX) or full.is_symlink() or not full.is_file():
                continue
            candidate = full.relative_to(root).as_posix()
            try:
                filespec.check_path("/users/x/" + candidate)
            except BadInput:
                continue
            found.add(candidate)
            if len(found) >= MAX_FILES:
                return found
    return found


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _time(value: object) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return parse_iso(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return 0.0


def _same_stat(base: dict[str, Any], path: Path) -> bool:
    try:
        stat = path.stat()
    except OSError:
        return False
    return bool(base.get("size") == stat.st_size and base.get("mtime_ns") == stat.st_mtime_ns)
