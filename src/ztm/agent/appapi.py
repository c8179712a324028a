"""Local API routes of app management (guarded like every agent route; documented in `ztm/openapi.yaml`):

- `GET  /api/meshes/{mesh}/app-packages`          apps published in the mesh (name, version, sha256, sources)
- `POST /api/meshes/{mesh}/apps/{app}/start`      start an installed app in this mesh (state kept across restarts)
- `POST /api/meshes/{mesh}/apps/{app}/stop`       stop it
- `POST /api/meshes/{mesh}/apps/{app}/publish`    package a directory app and announce it to the mesh
- `POST /api/meshes/{mesh}/apps/{app}/unpublish`  withdraw this endpoint's announcement of it in this mesh
- `POST /api/meshes/{mesh}/apps/{app}/download`   `{"from": EP?, "sha256": HEX?}`: fetch, verify, install
- `POST /api/apps/{app}/uninstall`                remove an installed directory app (in every mesh: stopped,
  its start state forgotten, this endpoint's publications withdrawn)
- `POST /api/meshes/{mesh}/apps/{app}/cli`        `{"argv": [...]}`: `ztm APP ARGS...`, answered `{"output": TEXT}`

The lists of installed apps (`GET /api/apps`, `GET /api/meshes/{mesh}/apps`) are served by `ztm.agent.api` from
`AppLibrary.views`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ztm import validate
from ztm.agent.service import Agent
from ztm.apps.manifest import check_name

Json = Callable[[Any, int], web.Response]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_routes(app: web.Application, agent: Agent, reply: Json) -> None:
    base = "/api/meshes/{mesh}/apps/{app}"

    def target(request: web.Request) -> tuple[Any, str]:
        session = agent.get(request.match_info["mesh"])
        return session, check_name(request.match_info["app"])

    async def packages(request: web.Request) -> web.Response:
        return reply(await agent.library.available(agent.get(request.match_info["mesh"])), 200)

    async def start(request: web.Request) -> web.Response:
        return reply(await agent.library.start(*target(request)), 200)

    async def stop(request: web.Request) -> web.Response:
        return reply(await agent.library.stop(*target(request)), 200)

    async def publish(request: web.Request) -> web.Response:
        return reply(await agent.library.publish(*target(request)), 200)

    async def unpublish(request: web.Request) -> web.Response:
        return reply(await agent.library.unpublish(*target(request)), 200)

    async def uninstall(request: web.Request) -> web.Response:
        name = check_name(request.match_info["app"])
        return reply(await agent.library.uninstall(name, list(agent.meshes.values())), 200)

    async def download(request: web.Request) -> web.Response:
        session, name = target(request)
        body = validate.json_object(await request.read())
        source = validate.field(body, "from", str, required=False)
        digest = validate.field(body, "sha256", str, required=False)
        installed = await agent.library.download(session, name, source, digest, list(agent.meshes.values()))
        return reply(installed, 201)

    async def cli(request: web.Request) -> web.Response:
        session, name = target(request)
        body = validate.json_object(await request.read())
        return reply({"output": await agent.library.cli(session, name, body.get("argv"))}, 200)

    handlers: list[tuple[str, str, Handler]] = [
        ("GET", "/api/meshes/{mesh}/app-packages", packages),
        ("POST", base + "/start", start),
        ("POST", base + "/stop", stop),
        ("POST", base + "/publish", publish),
        ("POST", base + "/unpublish", unpublish),
        ("POST", base + "/download", download),
        ("POST", base + "/cli", cli),
        ("POST", "/api/apps/{app}/uninstall", uninstall),
    ]
    for method, path, handler in handlers:
        app.router.add_route(method, path, handler)
