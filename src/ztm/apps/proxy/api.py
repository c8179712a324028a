"""Local API routes of the proxy app, under `/api/meshes/{mesh}/apps/proxy` (guarded like every agent route)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ztm import validate
from ztm.agent.service import Agent
from ztm.apps.proxy.app import ProxyApp
from ztm.apps.proxy.spec import Rule
from ztm.errors import BadInput

Json = Callable[[Any, int], web.Response]


def add_routes(app: web.Application, agent: Agent, reply: Json) -> None:
    base = "/api/meshes/{mesh}/apps/proxy"

    def proxy_app(request: web.Request) -> ProxyApp:
        return agent.app(request.match_info["mesh"], "proxy", ProxyApp, running=False)

    async def get_config(request: web.Request) -> web.Response:
        return reply(proxy_app(request).config_view(), 200)

    async def configure(request: web.Request) -> web.Response:
        body = validate.json_object(await request.read())
        return reply(await proxy_app(request).configure(body), 200)

    async def rules(request: web.Request) -> web.Response:
        return reply(proxy_app(request).list_rules(), 200)

    async def insert_rule(request: web.Request) -> web.Response:
        body = validate.json_object(await request.read())
        return reply(proxy_app(request).insert_rule(Rule.parse(body), body.get("at")), 201)

    async def delete_rule(request: web.Request) -> web.Response:
        raw = request.match_info["number"]
        if not (raw.isascii() and raw.isdigit() and len(raw) < 6):
            raise BadInput(f"rule number {raw[:20]!r}: expected a number from 'ztm proxy rules'")
        return reply(proxy_app(request).delete_rule(int(raw)), 200)

    async def exits(request: web.Request) -> web.Response:
        return reply(await proxy_app(request).mesh_exits(), 200)

    handlers: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
        ("GET", base, get_config),
        ("POST", base + "/config", configure),
        ("GET", base + "/rules", rules),
        ("POST", base + "/rules", insert_rule),
        ("DELETE", base + "/rules/{number}", delete_rule),
        ("GET", base + "/exits", exits),
    ]
    for method, path, handler in handlers:
        app.router.add_route(method, path, handler)
