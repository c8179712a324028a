"""`AppStoreApp` (app name `apps`): the mesh side of `ztm publish app` and `ztm download app`.

What this endpoint publishes is kept in its configuration (`published/NAME` -> name, version, sha256, size) and the
packages themselves as `DATA/app-packages/SHA256.tar.gz`. It announces each as the service `NAME/VERSION/SHA256`
through the hub's service registry after every (re)connection, and answers a stream for the service
`package/SHA256` with the package's bytes, to any member of the mesh (a published app is for the whole mesh), but
only for a package it publishes: one withdrawn (`ztm unpublish app`, or `ztm uninstall app` of a published app) is
no longer announced nor served, while the endpoints that installed it keep their copy. The bytes are sent as stored:
the downloader checks them against the announced hash, so a package altered on disk here is refused there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from ztm import h2
from ztm.agent.apps import AppContext, Caller, MeshApp
from ztm.agent.e2estream import E2EStream
from ztm.errors import ZtmError

log = logging.getLogger("ztm.apps")

NAME = "apps"
SERVE_CHUNK = 64 << 10
SERVE_TIMEOUT = 120.0


def service_of(entry: dict[str, Any]) -> str:
    return f"{entry['name']}/{entry['version']}/{entry['sha256']}"


def parse_service(service: str) -> tuple[str, str, str] | None:
    """(name, version, sha256) of an announced package, None for anything else."""
    parts = service.split("/")
    if len(parts) != 3 or len(parts[2]) != 64 or not all(c in "0123456789abcdef" for c in parts[2]):
        return None
    return parts[0], parts[1], parts[2]


class AppStoreApp(MeshApp):
    name = NAME
    description = "publishes installed apps to the mesh and serves them to endpoints that download them"

    def __init__(self, ctx: AppContext) -> None:
        super().__init__(ctx)
        self.packages_dir: Path | None = None
        """Set by the agent's app library (`ztm.agent.applib`) when it creates this app."""

    # what is published
    def published(self) -> dict[str, dict[str, Any]]:
        items = self.ctx.config_items()
        return {
            k.removeprefix("published/"): v
            for k, v in items.items()
            if k.startswith("published/") and isinstance(v, dict)
        }

    def record(self, entry: dict[str, Any]) -> None:
        self.ctx.config_set(f"published/{entry['name']}", entry)

    def withdraw(self, name: str) -> bool:
        """Forget that this endpoint publishes app `name` (the caller announces the rest again)."""
        return self.ctx.config_delete(f"published/{name}")

    def package_file(self, sha256: str) -> Path:
        if self.packages_dir is None:
            raise ZtmError("the apps app has no package directory")
        return self.packages_dir / f"{sha256}.tar.gz"

    # lifecycle
    async def start(self) -> None:
        await super().start()
        with contextlib.suppress(ZtmError):
            await self.announce()

    async def on_online(self) -> None:
        with contextlib.suppress(ZtmError):
            await self.announce()

    async def announce(self) -> None:
        await self.ctx.publish(sorted(service_of(e) for e in self.published().values()))

    # serving
    async def on_stream(self, stream_id: str, caller: Caller, service: str) -> None:
        kind, _, sha = service.partition("/")
        entry = next((e for e in self.published().values() if e.get("sha256") == sha), None)
        if kind != "package" or entry is None:
            await self.ctx.refuse(stream_id, f"no app package {sha[:16]!r} is published on this endpoint")
            return
        try:
            data = self.package_file(sha).read_bytes()
        except OSError as exc:
            await self.ctx.refuse(stream_id, f"the package of app {entry['name']} is unreadable here: {exc.strerror}")
            return
        stream = await self.ctx.accept(stream_id)
        self.counters["apps:served"] += 1
        try:
            await asyncio.wait_for(self._send(stream, data), SERVE_TIMEOUT)
            log.info("mesh %s: served app %s (%d bytes) to %s", self.ctx.mesh, entry["name"], len(data), caller.name)
        except (h2.H2Error, TimeoutError) as exc:
            stream.reset()
            log.info("mesh %s: serving app %s to %s failed: %s", self.ctx.mesh, entry["name"], caller.name, exc)

    @staticmethod
    async def _send(stream: E2EStream, data: bytes) -> None:
        view = memoryview(data)
        for offset in range(0, len(view), SERVE_CHUNK):
            await stream.write(view[offset : offset + SERVE_CHUNK])
        await stream.end()
