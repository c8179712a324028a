"""Local API routes of the tunnel app, under `/api/meshes/{mesh}/apps/tunnel/` (guarded like every agent route)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ztm import validate
from ztm.agent.service import Agent
from ztm.apps.tunnel.app import TunnelApp
from ztm.apps.tunnel.spec import Inbound, Outbound, TunnelName
from ztm.errors import BadInput

Json = Callable[[Any, int], web.Response]


def add_routes(app: web.Application, agent: Agent, reply: Json) -> None:
    base = "/api/meshes/{mesh}/apps/tunnel"

    def tunnel_app(request: web.Request) -> TunnelApp:
        return agent.app(request.match_info["mesh"], "tunnel", TunnelApp, running=False)

    def kind(request: web.Request) -> str:
        value = request.match_info["kind"]
        if value not in ("inbound", "outbound"):
            raise BadInput(f"{value!r}: expected inbound or outbound")
        return value

    def name(request: web.Request) -> TunnelName:
        return TunnelName.parse(f"{request.match_info['proto']}/{request.match_info['name']}")

    async def local(request: web.Request) -> web.Response:
        return reply(await tunnel_app(request).list_local(), 200)

    async def mesh_wide(request: web.Request) -> web.Response:
        found = await tunnel_app(request).ctx.find()
        tunnels: dict[str, dict[str, Any]] = {}
        for item in found:
            side, _, tunnel = str(item.get("service", "")).partition("/")
            entry = tunnels.setdefault(tunnel, {"tunnel": tunnel, "inbound": [], "outbound": []})
            if side in ("inbound", "outbound"):
                entry[side].append({k: item.get(k) for k in ("ep", "name", "user", "online")})
        return reply([tunnels[k] for k in sorted(tunnels)], 200)

    async def open_inbound(request: web.Request) -> web.Response:
        body = validate.json_object(await request.read())
        return reply(await tunnel_app(request).open_inbound(Inbound.parse(body)), 201)

    async def open_outbound(request: web.Request) -> web.Response:
        body = validate.json_object(await request.read())
        return reply(await tunnel_app(request).open_outbound(Outbound.parse(body)), 201)

    async def describe(request: web.Request) -> web.Response:
        tunnels = tunnel_app(request)
        key = str(name(request))
        inbound = kind(request) == "inbound"
        found = await (tunnels.describe_inbound(key) if inbound else tunnels.describe_outbound(key))
        return reply(found, 200)

    async def close(request: web.Request) -> web.Response:
        await tunnel_app(request).close(kind(request), name(request))
        return web.Response(status=204)

    handlers: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
        ("GET", base, local),
        ("GET", base + "/tunnels", mesh_wide),
        ("POST", base + "/inbound", open_inbound),
        ("POST", base + "/outbound", open_outbound),
        ("GET", base + "/{kind}/{proto}/{name}", describe),
        ("DELETE", base + "/{kind}/{proto}/{name}", close),
    ]
    for method, path, handler in handlers:
        app.router.add_route(method, path, handler)
