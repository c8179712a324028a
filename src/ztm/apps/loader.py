"""Finding and importing apps: the built-ins (`ztm.apps.builtin_apps()`), Python packages that declare an entry point in
the group `ztm.apps` (`name = "module:Class"`), and directories `DATA/apps/NAME/` holding a `ztm-app.json`.

Discovery reads only metadata and manifests; an app's code is imported when it is started. A directory app is
imported as the package `ztm_app_NAME` rooted at its directory, so two apps may both have an `app.py`; a reinstall
drops the old modules first. A name is taken by the first source that has it (built-in, then package, then
directory); the others are listed with an error saying why they are ignored.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ztm.agent.apps import MeshApp
from ztm.apps.manifest import MANIFEST, Manifest
from ztm.errors import BadInput, ZtmError
from ztm.validate import APP_NAME

log = logging.getLogger("ztm.agent")

ENTRY_POINT_GROUP = "ztm.apps"
BUILTIN, PACKAGE, DIRECTORY = "builtin", "package", "directory"


@dataclass
class AppInfo:
    """One installed app, as found (its code not necessarily imported yet)."""

    name: str
    version: str
    provider: str
    description: str
    source: str
    """builtin, package or directory."""
    location: str = ""
    """The directory of a directory app, the entry point of a package app."""
    error: str | None = None
    """Why this app cannot run (a bad manifest, a name already taken)."""
    distribution: str | None = None
    """The Python distribution of a package app (what `pip uninstall` takes)."""
    load: Callable[[], type[MeshApp]] | None = field(default=None, repr=False)

    def load_class(self) -> type[MeshApp]:
        if self.error is not None or self.load is None:
            raise BadInput(f"app {self.name} cannot run: {self.error or 'nothing to load'}")
        return self.load()

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "provider": self.provider,
            "description": self.description,
            "source": self.source,
            "location": self.location,
            "error": self.error,
        }


def builtin_infos(classes: Iterable[type[MeshApp]]) -> list[AppInfo]:
    infos = []
    for cls in classes:
        infos.append(
            AppInfo(cls.name, cls.version, cls.provider, cls.description, BUILTIN, cls.__module__, load=_const(cls))
        )
    return infos


def _const(cls: type[MeshApp]) -> Callable[[], type[MeshApp]]:
    return lambda: cls


def _entry_points() -> Iterable[importlib.metadata.EntryPoint]:
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def package_infos() -> list[AppInfo]:
    infos = []
    for ep in _entry_points():
        dist = ep.dist
        version = dist.version if dist is not None else "?"
        meta = dist.metadata if dist is not None else None
        provider = (meta["Author"] or meta["Author-email"] or dist.name) if meta is not None and dist else "?"
        summary = (meta["Summary"] or "") if meta is not None else ""
        info = AppInfo(ep.name, version, str(provider)[:63], str(summary)[:300], PACKAGE, ep.value)
        info.distribution = dist.name if dist is not None else None
        if not APP_NAME.fullmatch(ep.name):
            info.error = f"entry point name {ep.name!r} is not a valid app name (lowercase letters, digits and '-')"
        else:
            info.load = _entry_point_loader(ep)
        infos.append(info)
    return infos


def _entry_point_loader(ep: importlib.metadata.EntryPoint) -> Callable[[], type[MeshApp]]:
    def load() -> type[MeshApp]:
        try:
            cls = ep.load()
        except Exception as exc:  # third-party code: any failure to import is the app's fault, reported as such
            raise BadInput(f"app {ep.name}: importing {ep.value} failed: {type(exc).__name__}: {exc}") from None
        return _checked(cls, ep.name, ep.value)

    return load


def directory_infos(apps_dir: Path) -> list[AppInfo]:
    infos: list[AppInfo] = []
    if not apps_dir.is_dir():
        return infos
    for path in sorted(apps_dir.iterdir()):
        if path.name.startswith(".") or not path.is_dir():
            continue
        try:
            manifest = read_manifest(path)
        except (ZtmError, OSError) as exc:
            message = exc.message if isinstance(exc, ZtmError) else str(exc)
            infos.append(AppInfo(path.name, "?", "?", "", DIRECTORY, str(path), error=message))
            continue
        info = AppInfo(manifest.name, manifest.version, manifest.provider, manifest.description, DIRECTORY, str(path))
        if manifest.name != path.name:
            info.error = f"{path / MANIFEST} names the app {manifest.name!r}; its directory must have that name"
        else:
            info.load = _directory_loader(path, manifest)
        infos.append(info)
    return infos


def read_manifest(path: Path) -> Manifest:
    file = path / MANIFEST
    if not file.is_file():
        raise BadInput(f"{path}: no {MANIFEST}; an app directory needs one (see docs/apps-guide.md)")
    return Manifest.parse(file.read_bytes(), str(file))


def package_name(app: str) -> str:
    return "ztm_app_" + app.replace("-", "_")


def forget_modules(app: str) -> None:
    """Drop a directory app's modules, so the next start imports the files on disk now."""
    prefix = package_name(app)
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]
    importlib.invalidate_caches()


def _directory_loader(path: Path, manifest: Manifest) -> Callable[[], type[MeshApp]]:
    def load() -> type[MeshApp]:
        package = package_name(manifest.name)
        if package not in sys.modules:
            spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
            spec.submodule_search_locations = [str(path)]
            module = importlib.util.module_from_spec(spec)
            module.__path__ = [str(path)]
            sys.modules[package] = module
        try:
            imported = importlib.import_module(f"{package}.{manifest.module}")
        except Exception as exc:  # third-party code: any failure to import is the app's fault, reported as such
            forget_modules(manifest.name)
            raise BadInput(
                f"app {manifest.name}: importing {manifest.module} from {path} failed: {type(exc).__name__}: {exc}"
            ) from None
        cls = _checked(getattr(imported, manifest.class_name, None), manifest.name, manifest.entry)
        # the manifest is the truth about an installed app
        cls.name, cls.version, cls.provider = manifest.name, manifest.version, manifest.provider
        cls.description = manifest.description or cls.description
        return cls

    return load


def _checked(cls: object, name: str, entry: str) -> type[MeshApp]:
    if not isinstance(cls, type) or not issubclass(cls, MeshApp):
        raise BadInput(f"app {name}: {entry} is not a subclass of ztm.agent.apps.MeshApp")
    if cls.name not in ("", name):
        raise BadInput(f"app {name}: {entry} calls itself {cls.name!r}; its name must be {name!r}")
    if not cls.name:
        cls.name = name
    return cls


def discover(builtins: Iterable[type[MeshApp]], apps_dir: Path) -> dict[str, AppInfo]:
    """Every installed app by name; a name is taken by the first source that has it."""
    found: dict[str, AppInfo] = {}
    for info in [*builtin_infos(builtins), *package_infos(), *directory_infos(apps_dir)]:
        taken = found.get(info.name)
        if taken is None:
            found[info.name] = info
        elif taken.location != info.location:
            log.warning(
                "app %s from %s ignored: the name is taken by the %s app from %s",
                info.name,
                info.location,
                taken.source,
                taken.location,
            )
    return found
