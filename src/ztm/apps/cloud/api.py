"""Local API routes of the cloud app, under `/api/meshes/{mesh}/apps/cloud` (guarded like every agent route)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ztm import validate
from ztm.agent.service import Agent
from ztm.apps.cloud.app import CloudApp

Json = Callable[[Any, int], web.Response]


def add_routes(app: web.Application, agent: Agent, reply: Json) -> None:
    base = "/api/meshes/{mesh}/apps/cloud"

    def cloud(request: web.Request) -> CloudApp:
        return agent.app(request.match_info["mesh"], "cloud", CloudApp, running=True)

    async def body(request: web.Request) -> dict[str, Any]:
        return validate.json_object(await request.read())

    async def status(request: web.Request) -> web.Response:
        return reply(cloud(request).view(), 200)

    async def configure(request: web.Request) -> web.Response:
        data = await body(request)
        return reply(cloud(request).configure(data.get("local_dir"), data.get("interval")), 200)

    async def listing(request: web.Request) -> web.Response:
        return reply(await cloud(request).ls(request.query.get("path", "")), 200)

    async def upload(request: web.Request) -> web.Response:
        data = await body(request)
        return reply({"published": await cloud(request).upload(data.get("path"))}, 200)

    async def download(request: web.Request) -> web.Response:
        data = await body(request)
        return reply({"downloads": await cloud(request).download(data.get("path"))}, 202)

    async def mirror(request: web.Request) -> web.Response:
        data = await body(request)
        return reply(cloud(request).set_mirror(data.get("path"), data.get("download"), data.get("upload")), 200)

    handlers: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
        ("GET", base, status),
        ("POST", base + "/config", configure),
        ("GET", base + "/files", listing),
        ("POST", base + "/upload", upload),
        ("POST", base + "/downloads", download),
        ("POST", base + "/mirror", mirror),
    ]
    for method, path, handler in handlers:
        app.router.add_route(method, path, handler)
