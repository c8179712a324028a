"""`AppLibrary`: the apps installed on this agent and their state in each joined mesh.

It finds apps (`ztm.apps.loader`), creates the instances a `MeshSession` runs (only those whose state in that mesh is
running: built-ins by default, third-party apps once started), starts and stops them at run time with the state kept
in the agent database (configuration of the `apps` app: `state/NAME`), so it survives restarts, packages and
publishes directory apps, and downloads apps others published: fetched over an `apps` stream, checked against the
announced SHA-256 (and the one the user pinned), unpacked in a scratch directory and renamed into `DATA/apps/NAME`
only if all is well, so a refused download installs nothing.

`uninstall` removes a directory app: `DATA/apps/NAME` is renamed out of the way first (the one step that can fail,
and the commit point: before it nothing has changed, after it the app is gone), then the app is stopped in every
mesh, its start state forgotten, any publication of it by this endpoint withdrawn (this endpoint can no longer serve
a package it does not have), and the renamed directory deleted. Its own configuration (`ctx.config_*`) is kept, as a
package manager keeps configuration files, so a reinstall finds it. `unpublish` withdraws this endpoint's
announcement of an app in one mesh; what others installed stays installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ztm import epref, h2, pki, validate
from ztm.agent.apps import AppContext, MeshApp
from ztm.apps import builtin_apps
from ztm.apps import package as pkg
from ztm.apps.appstore.app import NAME as STORE
from ztm.apps.appstore.app import AppStoreApp, parse_service
from ztm.apps.loader import BUILTIN, DIRECTORY, PACKAGE, AppInfo, discover, forget_modules
from ztm.apps.manifest import MANIFEST, check_name
from ztm.errors import BadInput, Conflict, Forbidden, NotFound, Unavailable, ZtmError

if TYPE_CHECKING:
    from ztm.agent.mesh import MeshSession
    from ztm.agent.store import AgentStore

log = logging.getLogger("ztm.agent")

DOWNLOAD_TIMEOUT = 120.0
ORIGIN = ".ztm-origin.json"
REMOVED = ".removed-"
"""Prefix of an uninstalled app's directory between its rename and its deletion (swept at start)."""
MAX_ARGV = 64
MAX_ARG = 4096
RUNNING, STOPPED = "running", "stopped"


class AppLibrary:
    def __init__(self, data: Path, store: AgentStore) -> None:
        self.apps_dir = data / "apps"
        self.packages_dir = data / "app-packages"
        self.store = store
        self.catalog: dict[str, AppInfo] = {}
        self.failures: dict[tuple[str, str], str] = {}
        """(mesh, app) -> why it could not be created or started."""
        self._lock = asyncio.Lock()
        self.refresh()
        self._sweep()

    def _sweep(self) -> None:
        """Finish an uninstall the agent was stopped in the middle of: its renamed directory (a dot-name discovery
        ignores) is deleted, and unless the app was installed again since, its records forgotten."""
        if not self.apps_dir.is_dir():
            return
        for path in self.apps_dir.iterdir():
            if not path.name.startswith(REMOVED) or not path.is_dir() or path.is_symlink():
                continue
            name = path.name.removeprefix(REMOVED).rpartition("-")[0]
            if name and name not in self.catalog:
                self._forget(name)
            shutil.rmtree(path, ignore_errors=True)

    def _forget(self, name: str) -> list[str]:
        """Drop app `name`'s start state and this endpoint's publications of it in every mesh (their packages too);
        the meshes it was published in."""
        withdrawn: list[str] = []
        digests: set[str] = set()
        for record in self.store.meshes():
            self.store.app_delete(record.name, STORE, f"state/{name}")
            entry = self.store.app_items(record.name, STORE).get(f"published/{name}")
            if entry is None:
                continue
            self.store.app_delete(record.name, STORE, f"published/{name}")
            withdrawn.append(record.name)
            if isinstance(entry, dict):
                digests.add(str(entry.get("sha256")))
        for digest in digests:
            self._drop_unreferenced(digest)
        return withdrawn

    def refresh(self) -> dict[str, AppInfo]:
        self.catalog = discover(builtin_apps(), self.apps_dir)
        return self.catalog

    def info(self, name: str) -> AppInfo:
        check_name(name)
        info = self.refresh().get(name)
        if info is None:
            installed = ", ".join(sorted(self.catalog)) or "none"
            raise NotFound(
                f"no app named {name!r} is installed here (installed: {installed}); see `ztm get app`, or "
                f"`ztm download app {name}`"
            )
        return info

    # state per mesh
    def wanted(self, mesh: str, info: AppInfo) -> bool:
        if info.name == STORE:
            return True
        state = self.store.app_items(mesh, STORE).get(f"state/{info.name}")
        return state == RUNNING if state is not None else info.source == BUILTIN

    def _set_state(self, mesh: str, name: str, state: str) -> None:
        self.store.app_set(mesh, STORE, f"state/{name}", state)

    # instances
    def make_apps(self, session: MeshSession) -> dict[str, MeshApp]:
        """The apps a new session runs: every installed app whose state in this mesh is running."""
        apps: dict[str, MeshApp] = {}
        for info in self.refresh().values():
            if not self.wanted(session.name, info):
                continue
            try:
                apps[info.name] = self._create(session, info)
            except ZtmError as exc:
                self.failures[(session.name, info.name)] = exc.message
                log.error("mesh %s: app %s not started: %s", session.name, info.name, exc.message)
        return apps

    def _create(self, session: MeshSession, info: AppInfo) -> MeshApp:
        cls = info.load_class()
        try:
            app = cls(AppContext(session, self.store, info.name))
        except Exception as exc:  # third-party code
            raise BadInput(f"app {info.name} failed to initialise: {type(exc).__name__}: {exc}") from None
        if isinstance(app, AppStoreApp):
            app.packages_dir = self.packages_dir
        return app

    def store_app(self, session: MeshSession) -> AppStoreApp:
        app = session.apps.get(STORE)
        if not isinstance(app, AppStoreApp):
            raise Unavailable(f"the apps app is not running in mesh {session.name}")
        return app

    # views
    def views(self, session: MeshSession) -> list[dict[str, Any]]:
        self.refresh()
        published: dict[str, dict[str, Any]] = {}
        store = session.apps.get(STORE)
        if isinstance(store, AppStoreApp):
            published = store.published()
        found = []
        for name in sorted(self.catalog):
            found.append(self._view(session, self.catalog[name], published.get(name)))
        return found

    def _view(self, session: MeshSession, info: AppInfo, published: dict[str, Any] | None) -> dict[str, Any]:
        app = session.apps.get(info.name)
        running = app is not None and app.running
        failure = info.error or self.failures.get((session.name, info.name))
        view = {**info.view(), **(app.view() if app is not None else {})}
        view.update(
            {
                "mesh": session.name,
                "running": running,
                "enabled": self.wanted(session.name, info),
                "state": RUNNING if running else ("failed" if failure else STOPPED),
                "error": failure if not running else None,
                "published": published.get("sha256") if published else None,
                "origin": _origin(info),
            }
        )
        return view

    def view_of(self, session: MeshSession, name: str) -> dict[str, Any]:
        return next(v for v in self.views(session) if v["name"] == name)

    # start and stop
    async def start(self, session: MeshSession, name: str) -> dict[str, Any]:
        async with self._lock:
            info = self.info(name)
            if info.error is not None:
                raise BadInput(f"app {name} cannot run: {info.error}")
            current = session.apps.get(name)
            if current is None or not current.running:
                if current is not None:
                    await _stop_quietly(session, current)
                app = self._create(session, info)
                try:
                    await app.start()
                except Exception as exc:  # third-party code: report it, keep the state as it was
                    await _stop_quietly(session, app)
                    message = exc.message if isinstance(exc, ZtmError) else f"{type(exc).__name__}: {exc}"
                    raise BadInput(f"app {name} failed to start: {message}") from None
                session.apps[name] = app
                if session.link.status == "online":
                    await _online_quietly(session, app)
            self.failures.pop((session.name, name), None)
            self._set_state(session.name, name, RUNNING)
            log.info("mesh %s: app %s started", session.name, name)
        return self.view_of(session, name)

    async def stop(self, session: MeshSession, name: str) -> dict[str, Any]:
        async with self._lock:
            info = self.info(name)
            if name == STORE:
                raise Conflict("the apps app runs start, stop, publish and download; it cannot be stopped")
            self._set_state(session.name, name, STOPPED)
            app = session.apps.pop(name, None)
            if app is not None:
                await _stop_quietly(session, app)
                with contextlib.suppress(ZtmError):
                    await app.ctx.publish([])  # its services are gone from the mesh's registry
            self.failures.pop((session.name, info.name), None)
            log.info("mesh %s: app %s stopped", session.name, name)
        return self.view_of(session, name)

    async def cli(self, session: MeshSession, name: str, argv: object) -> str:
        args = validate.list_of(argv, str, "argv")
        if len(args) > MAX_ARGV or any(len(a) > MAX_ARG for a in args):
            raise BadInput(f"argv: at most {MAX_ARGV} arguments of at most {MAX_ARG} characters")
        self.info(name)
        app = session.apps.get(name)
        if app is None or not app.running:
            raise Unavailable(f"app {name} is not running in mesh {session.name}: start it with `ztm start app {name}`")
        try:
            text = await app.cli(args)
        except ZtmError:
            raise
        except Exception as exc:  # third-party code
            log.exception("mesh %s: app %s failed on its command line", session.name, name)
            raise BadInput(f"app {name} failed: {type(exc).__name__}: {exc}") from None
        if not isinstance(text, str):
            raise BadInput(f"app {name} answered its command line with {type(text).__name__}, not text")
        return text

    # publish and download
    async def publish(self, session: MeshSession, name: str) -> dict[str, Any]:
        info = self.info(name)
        if info.source != DIRECTORY:
            raise BadInput(
                f"app {name} is a {info.source} app: only directory apps (DATA/apps/NAME with {MANIFEST}) can "
                "be published"
            )
        if info.error is not None:
            raise BadInput(f"app {name} cannot be published: {info.error}")
        store = self.store_app(session)
        data = await asyncio.to_thread(pkg.pack, Path(info.location))
        digest = pkg.sha256(data)
        self.packages_dir.mkdir(parents=True, exist_ok=True)
        target = self.packages_dir / f"{digest}.tar.gz"
        if not target.exists():
            pki.write_private(target, data)
        entry = {
            "name": name,
            "version": info.version,
            "sha256": digest,
            "size": len(data),
            "published_at": time.time(),
        }
        previous = store.published().get(name)
        store.record(entry)
        await store.announce()
        if previous is not None and previous.get("sha256") != digest:
            self._drop_unreferenced(str(previous.get("sha256")))
        log.info("mesh %s: published app %s %s (%s, %d bytes)", session.name, name, info.version, digest, len(data))
        return entry

    def _drop_unreferenced(self, digest: str) -> None:
        """Delete a superseded package no mesh publishes any more."""
        for record in self.store.meshes():
            for key, value in self.store.app_items(record.name, STORE).items():
                if key.startswith("published/") and isinstance(value, dict) and value.get("sha256") == digest:
                    return
        with contextlib.suppress(OSError):
            (self.packages_dir / f"{digest}.tar.gz").unlink()

    async def unpublish(self, session: MeshSession, name: str) -> dict[str, Any]:
        """Withdraw this endpoint's announcement of app `name` in this mesh; installed copies elsewhere stay."""
        check_name(name)
        store = self.store_app(session)
        if name not in store.published():
            raise NotFound(await self._not_published(session, name))
        async with self._lock:
            entry = store.published().get(name)
            if entry is None:  # withdrawn meanwhile
                raise NotFound(f"app {name} is not published by this endpoint in mesh {session.name}")
            store.withdraw(name)
            announced = await _announce_quietly(store)
            self._drop_unreferenced(str(entry.get("sha256")))
        log.info("mesh %s: withdrew app %s %s (%s)", session.name, name, entry.get("version"), entry.get("sha256"))
        return {**entry, "mesh": session.name, "announced": announced}

    async def _not_published(self, session: MeshSession, name: str) -> str:
        message = f"app {name} is not published by this endpoint in mesh {session.name}"
        try:
            rows = [r for r in await self.available(session) if r["name"] == name]
        except ZtmError:
            rows = []
        others = sorted({str(s.get("name")) for r in rows for s in r["sources"]})
        if others:
            return f"{message}: it is published by {', '.join(others)}, and only a publisher can withdraw its offer"
        return f"{message}; see `ztm get app --available`"

    # uninstall
    def _move_out(self, info: AppInfo) -> Path:
        """Rename the directory of app `info` to a dot-name discovery ignores; `Conflict` (nothing changed) if not."""
        location = Path(info.location)
        if info.source != DIRECTORY or location.parent != self.apps_dir or location.is_symlink():
            raise Conflict(f"app {info.name} is not a directory in {self.apps_dir}; remove it by hand")
        trash = self.apps_dir / f"{REMOVED}{info.name}-{uuid.uuid4().hex[:8]}"
        try:
            location.rename(trash)
        except OSError as exc:
            raise Conflict(
                f"cannot remove {location}: {exc.strerror or exc}; app {info.name} is still installed"
            ) from None
        return trash

    async def uninstall(self, name: str, sessions: list[MeshSession]) -> dict[str, Any]:
        """Remove the directory app `name`: stopped in every mesh, its state forgotten, its publications withdrawn."""
        check_name(name)
        async with self._lock:
            info = self.refresh().get(name)
            if info is None:
                raise NotFound(f"no app named {name!r} is installed here; see `ztm get app`")
            if info.source == BUILTIN:
                how = "it cannot be stopped" if name == STORE else f"stop it with 'ztm stop app {name}'"
                raise Conflict(f"{name} is built in: {how}")
            if info.source == PACKAGE:
                dist = info.distribution or "its distribution"
                raise Conflict(
                    f"app {name} is installed as a Python package ({dist}, entry point {info.location}): remove it "
                    f"with 'pip uninstall {dist}' in the agent's environment"
                )
            trash = self._move_out(info)  # the commit point: before it nothing changed, after it the app is gone
            stopped: list[str] = []
            for session in sessions:
                app = session.apps.pop(name, None)
                self.failures.pop((session.name, name), None)
                if app is None:
                    continue
                if app.running:
                    stopped.append(session.name)
                await _stop_quietly(session, app)
                with contextlib.suppress(ZtmError):
                    await app.ctx.publish([])  # its services are gone from the mesh's registry
            withdrawn = self._forget(name)
            for session in sessions:
                store = session.apps.get(STORE)
                if session.name in withdrawn and isinstance(store, AppStoreApp):
                    await _announce_quietly(store)
            forget_modules(name)
            await asyncio.to_thread(shutil.rmtree, trash, True)
            self.refresh()
        log.info(
            "uninstalled app %s %s (stopped in: %s; withdrawn from: %s)",
            name,
            info.version,
            ", ".join(stopped) or "none",
            ", ".join(withdrawn) or "none",
        )
        return {
            "name": name,
            "version": info.version,
            "location": info.location,
            "stopped": sorted(stopped),
            "withdrawn": sorted(withdrawn),
        }

    async def available(self, session: MeshSession) -> list[dict[str, Any]]:
        """Apps published in the mesh, one row per (name, version, sha256) with the endpoints offering it."""
        found = await self.store_app(session).ctx.find()
        rows: dict[tuple[str, str, str], dict[str, Any]] = {}
        for item in found:
            parsed = parse_service(str(item.get("service", "")))
            if parsed is None:
                continue
            row = rows.setdefault(parsed, {"name": parsed[0], "version": parsed[1], "sha256": parsed[2], "sources": []})
            row["sources"].append(
                {"ep": item.get("ep"), "name": item.get("name"), "user": item.get("user"), "online": item.get("online")}
            )
        return [rows[k] for k in sorted(rows)]

    async def download(
        self, session: MeshSession, name: str, source: str | None, sha256: str | None, sessions: list[MeshSession]
    ) -> dict[str, Any]:
        check_name(name)
        if sha256 is not None and (len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256)):
            raise BadInput(f"sha256: expected 64 lowercase hex digits, got {sha256[:80]!r}")
        self._check_replaceable(name, sessions)
        rows = [r for r in await self.available(session) if r["name"] == name]
        me = session.record.ep_id
        candidates = [
            (row, src)
            for row in rows
            for src in row["sources"]
            if src["ep"] != me and (source is None or epref.matches(source, src["ep"], src["name"]))
        ]
        if sha256 is not None:
            candidates = [c for c in candidates if c[0]["sha256"] == sha256]
        if not candidates:
            where = f" by endpoint {source}" if source else ""
            pinned = f" with SHA-256 {sha256}" if sha256 else ""
            raise NotFound(
                f"app {name} is not published{where}{pinned} in mesh {session.name}; see `ztm get app --available`"
            )
        hashes = sorted({c[0]["sha256"] for c in candidates})
        if len(hashes) > 1:
            offers = "; ".join(f"{r['version']} ({r['sha256'][:12]})" for r in rows if r["sha256"] in hashes)
            raise Conflict(
                f"app {name} is published in several versions ({offers}): pick one with --from EP or --sha256 HASH"
            )
        candidates.sort(key=lambda c: not c[1].get("online"))
        error: ZtmError = Unavailable(f"no endpoint publishing app {name} is online")
        for row, src in candidates:
            if not src.get("online"):
                continue
            try:
                data = await self._fetch(session, src, row["sha256"])
                async with self._lock:  # no start, stop or other install of it meanwhile
                    self._check_replaceable(name, sessions)
                    return await self._install(name, data, row, src)
            except ZtmError as exc:
                log.warning("mesh %s: download of app %s from %s failed: %s", session.name, name, src["name"], exc)
                error = exc
        raise error

    def _check_replaceable(self, name: str, sessions: list[MeshSession]) -> None:
        existing = self.refresh().get(name)
        if existing is not None and existing.source != DIRECTORY:
            raise Conflict(f"app {name} is a {existing.source} app here; a downloaded app cannot replace it")
        running = [s.name for s in sessions if name in s.apps and s.apps[name].running]
        if running:
            raise Conflict(
                f"app {name} is running in mesh {', '.join(running)}: stop it first with `ztm stop app {name}`"
            )

    async def _fetch(self, session: MeshSession, src: dict[str, Any], digest: str) -> bytes:
        store = self.store_app(session)
        stream = await store.ctx.open_stream(str(src["ep"]), f"package/{digest}")
        try:
            data = await asyncio.wait_for(stream.read_all(pkg.MAX_PACKAGE), DOWNLOAD_TIMEOUT)
        except TimeoutError:
            stream.reset()
            raise Unavailable(f"{src['name']} did not send the package within {DOWNLOAD_TIMEOUT:g}s") from None
        except h2.H2Error as exc:
            stream.reset()
            raise Unavailable(f"the download from {src['name']} failed: {exc}") from None
        got = pkg.sha256(data)
        if got != digest:
            raise Forbidden(
                f"refused the package from {src['name']}: its SHA-256 is {got}, but {digest} was announced "
                "(altered or corrupted); nothing was installed"
            )
        return data

    async def _install(self, name: str, data: bytes, row: dict[str, Any], src: dict[str, Any]) -> dict[str, Any]:
        self.apps_dir.mkdir(parents=True, exist_ok=True)
        scratch = self.apps_dir / f".new-{name}-{uuid.uuid4().hex[:8]}"
        scratch.mkdir(mode=0o755)
        try:
            manifest = await asyncio.to_thread(pkg.unpack, data, scratch)
            if manifest.name != name:
                raise BadInput(
                    f"refused the package: it holds app {manifest.name!r}, not {name!r}; nothing was installed"
                )
            origin = {"sha256": row["sha256"], "from": src["name"], "from_ep": src["ep"], "installed_at": time.time()}
            (scratch / ORIGIN).write_text(json.dumps(origin))
            target = self.apps_dir / name
            old = self.apps_dir / f".old-{name}-{uuid.uuid4().hex[:8]}"
            if target.exists():
                target.rename(old)
            scratch.rename(target)
        except BaseException:
            shutil.rmtree(scratch, ignore_errors=True)
            raise
        shutil.rmtree(old, ignore_errors=True)
        forget_modules(name)
        self.refresh()
        log.info("installed app %s %s (%s) from %s", name, manifest.version, row["sha256"], src["name"])
        return {**manifest.to_json(), "sha256": row["sha256"], "from": src["name"], "size": len(data)}


def _origin(info: AppInfo) -> dict[str, Any] | None:
    if info.source != DIRECTORY:
        return None
    try:
        value = json.loads((Path(info.location) / ORIGIN).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


async def _stop_quietly(session: MeshSession, app: MeshApp) -> None:
    try:
        await app.stop()
    except Exception as exc:  # third-party code must not keep the others from stopping
        log.error("mesh %s: app %s failed to stop: %s: %s", session.name, app.name, type(exc).__name__, exc)


async def _announce_quietly(store: AppStoreApp) -> bool:
    """Announce what `store` publishes now; False if the hub could not be told (it is, at the next reconnection)."""
    try:
        await store.announce()
    except ZtmError as exc:
        log.warning("mesh %s: announcing the published apps failed: %s", store.ctx.mesh, exc.message)
        return False
    return True


async def _online_quietly(session: MeshSession, app: MeshApp) -> None:
    try:
        await app.on_online()
    except Exception as exc:  # third-party code
        log.error("mesh %s: app %s on_online failed: %s: %s", session.name, app.name, type(exc).__name__, exc)
