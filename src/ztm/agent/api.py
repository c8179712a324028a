"""The agent's local REST API (aiohttp), documented in `ztm/openapi.yaml`.

Every `/api/` route needs the caller to be known, on every request: on the local UNIX socket, the kernel's word
(`SO_PEERCRED`) that it runs as the agent's own OS user or root; on TCP, the agent's token
(`Authorization: Bearer TOKEN`) or a GUI session. Requests with a foreign `Host` header (DNS rebinding) or a
foreign `Origin` (cross-origin pages) are refused before routing, and no CORS headers are ever sent. Errors are
`{"error": ..., "code": ...}` with the status of the matching `ZtmError`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ztm import localsock, validate
from ztm.addr import Address
from ztm.agent import optin
from ztm.agent.appapi import add_routes as app_routes
from ztm.agent.metrics import render_metrics
from ztm.agent.policyapi import add_routes as policy_routes
from ztm.agent.service import Agent
from ztm.apps.cloud.api import add_routes as cloud_routes
from ztm.apps.files.api import add_routes as files_routes
from ztm.apps.proxy.api import add_routes as proxy_routes
from ztm.apps.terminal.api import add_routes as terminal_routes
from ztm.apps.tunnel.api import add_routes as tunnel_routes
from ztm.errors import BadInput, Forbidden, NotFound, Unauthorized, ZtmError
from ztm.gui.web import Gui
from ztm.meter import RateMeter
from ztm.version import __version__

log = logging.getLogger("ztm.agent")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_BODY = 1 << 20


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(data).encode(), status=status, content_type="application/json", charset="utf-8")


def _error(exc: ZtmError) -> web.Response:
    return _json(exc.to_json(), exc.status)


def _cidrs(value: object, what: str) -> list[str]:
    """A body's list of route CIDRs, shape only (the hub checks each against the mesh's ranges)."""
    items = validate.list_of(value, str, what)
    if len(items) > 64:
        raise BadInput(f"{what}: {len(items)} routes; an endpoint advertises at most 64")
    for item in items:
        if not 0 < len(item) <= 64:
            raise BadInput(f"{what}: {item[:64]!r} is not a CIDR, e.g. 10.20.0.0/16")
    return items


class AgentApi:
    def __init__(self, agent: Agent, listen: Address, token: str, log_tail: Callable[[int], list[str]]) -> None:
        self.agent = agent
        self.listen = listen
        self.token = token
        self.log_tail = log_tail
        self.meter = RateMeter()
        self.hosts = self._allowed_hosts(listen)
        self.gui = Gui(listen, token)

    @staticmethod
    def _allowed_hosts(listen: Address) -> set[str]:
        port = listen.port
        return {str(listen), f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"}

    def _host_ok(self, host: str) -> bool:
        if host in self.hosts:
            return True
        if self.listen.host in ("0.0.0.0", "::"):
            try:
                address = Address.parse(host, what="Host")
                ipaddress.ip_address(address.host)
            except (ZtmError, ValueError):
                return False
            return address.port == self.listen.port
        return False

    @staticmethod
    def _local_peer(request: web.Request) -> bool:
        """True when the request came over the local UNIX socket from the agent's own OS user (or root); raises
        `Forbidden` for another user there; False on TCP."""
        sock = request.transport.get_extra_info("socket") if request.transport is not None else None
        if sock is None or sock.family != socket.AF_UNIX:
            return False
        uid = localsock.peer_uid(sock)
        if not localsock.trusted_uid(uid):
            raise Forbidden(
                f"refused: the local socket serves only the OS user who runs this agent (uid {os.getuid()}), "
                f"not uid {uid}; use the TCP address with the API token"
            )
        return True

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            host = request.headers.get("Host", "")
            local = self._local_peer(request)
            if not local and not self._host_ok(host):
                raise Forbidden(f"refused: Host {host!r} is not this agent's address (possible DNS rebinding)")
            origin = request.headers.get("Origin")
            if origin is not None and origin not in {f"http://{h}" for h in self.hosts | {host}}:
                raise Forbidden(f"refused: cross-origin request from {origin!r}")
            if request.method == "OPTIONS":
                raise Forbidden("refused: cross-origin requests are not served")
            auth = request.headers.get("Authorization", "")
            scheme, _, given = auth.partition(" ")
            bearer = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self.token.encode())
            if not (local or bearer or self.gui.is_public(request) or self.gui.session_ok(request)):
                raise Unauthorized(
                    "missing or wrong API token: send 'Authorization: Bearer TOKEN' with the token from "
                    "DATA/agent.token, which changes at every agent start (browsers: sign in with the link from "
                    "'ztm gui')"
                )
            return await handler(request)
        except ZtmError as exc:
            return _error(exc)
        except web.HTTPNotFound:
            return _error(NotFound(f"no route {request.method} {request.rel_url.raw_path}"))  # encoded: one line
        except web.HTTPMethodNotAllowed:
            return _error(BadInput(f"{request.method} is not allowed on {request.rel_url.raw_path}"))
        except web.HTTPRequestEntityTooLarge:
            return _error(BadInput(f"request body larger than {MAX_BODY} bytes"))
        except web.HTTPException as exc:
            return _json({"error": exc.reason, "code": "http"}, exc.status)
        except Exception:
            log.exception("API %s %s failed", request.method, request.path)
            return _json({"error": "internal error; see the agent log", "code": "internal"}, 500)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard], client_max_size=MAX_BODY)
        r = app.router
        m = "/api/meshes/{mesh}"
        r.add_get("/api/version", self.version)
        r.add_get("/api/identity", self.identity)
        r.add_get("/api/meshes", self.meshes)
        r.add_get(m, self.mesh)
        r.add_post(m, self.join)
        r.add_delete(m, self.leave)
        r.add_get(m + "/hubs", self.hubs)
        r.add_get(m + "/endpoints", self.endpoints)
        r.add_get(m + "/endpoints/{ep}", self.endpoint)
        r.add_delete(m + "/endpoints/{ep}", self.delete_endpoint)
        r.add_post(m + "/endpoints/{ep}/ping", self.ping)
        r.add_post(m + "/endpoints/{ep}/labels", self.labels)
        r.add_get(m + "/endpoints/{ep}/log", self.ep_log)
        r.add_post(m + "/endpoints/{ep}/routes", self.ep_routes)
        r.add_get(m + "/routes", self.routes)
        r.add_post(m + "/routes/approve", self.approve_routes)
        r.add_get(m + "/stats", self.stats)
        r.add_get(m + "/users", self.users)
        r.add_post(m + "/users/{user}/invite", self.invite)
        r.add_post(m + "/users/{user}/evict", self.evict)
        r.add_get(m + "/hub/log", self.hub_log)
        r.add_get("/api/apps", self.apps)
        r.add_get(m + "/apps", self.mesh_apps)
        r.add_post(m + "/endpoints/{ep}/apps/{app}/call", self.app_call)
        r.add_get("/api/log", self.own_log)
        r.add_get("/api/metrics", self.metrics)
        r.add_get(m + "/root-admin", self.root_admin)
        r.add_post(m + "/root-admin", self.set_root_admin)
        r.add_get(m + "/policy/local", self.policy_local)
        tunnel_routes(app, self.agent, _json)
        proxy_routes(app, self.agent, _json)
        app_routes(app, self.agent, _json)
        files_routes(app, self.agent, _json)
        cloud_routes(app, self.agent, _json)
        terminal_routes(app, self.agent, _json)
        policy_routes(app, self.agent, _json)
        self.gui.add_routes(app)
        return app

    # helpers
    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any]:
        return validate.json_object(await request.read())

    @staticmethod
    def _lines(request: web.Request) -> int:
        raw = request.query.get("lines", "100")
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:  # "²" is a digit to isdigit() but not to int()
            raise BadInput("query parameter 'lines' must be a number from 1 to 2000")
        return validate.int_range(int(raw), "lines", 1, 2000)

    # routes
    async def version(self, request: web.Request) -> web.Response:
        return _json({"ztm": __version__, "api": 1})

    async def identity(self, request: web.Request) -> web.Response:
        return _json({"public_key": self.agent.identity()})

    async def meshes(self, request: web.Request) -> web.Response:
        return _json([s.view() for s in self.agent.meshes.values()])

    async def mesh(self, request: web.Request) -> web.Response:
        return _json(self.agent.get(request.match_info["mesh"]).view())

    async def join(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        permit = body.get("permit")
        if permit is None:
            raise BadInput("missing field 'permit': send the permit file's JSON object")
        view = await self.agent.join(
            request.match_info["mesh"],
            validate.field(body, "as", str),
            permit,
            validate.labels(body.get("labels")),
        )
        return _json(view, 201)

    async def leave(self, request: web.Request) -> web.Response:
        await self.agent.leave(request.match_info["mesh"])
        return web.Response(status=204)

    async def hubs(self, request: web.Request) -> web.Response:
        return _json(await self.agent.get(request.match_info["mesh"]).hub_views())

    async def endpoints(self, request: web.Request) -> web.Response:
        return _json(await self.agent.endpoints(request.match_info["mesh"]))

    async def endpoint(self, request: web.Request) -> web.Response:
        return _json(await self.agent.endpoint(request.match_info["mesh"], request.match_info["ep"]))

    async def delete_endpoint(self, request: web.Request) -> web.Response:
        ep = validate.name(request.match_info["ep"], "endpoint")
        return _json(await self.agent.hub_call(request.match_info["mesh"], "DELETE", f"/api/endpoints/{ep}"))

    async def ping(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        count = validate.int_range(body.get("count", 1), "count", 1, 20)
        return _json(await self.agent.ping(request.match_info["mesh"], request.match_info["ep"], count))

    async def labels(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        add, delete = validate.labels(body.get("add")), validate.labels(body.get("delete"))
        mesh = request.match_info["mesh"]
        ep = await self.agent.endpoint(mesh, request.match_info["ep"])
        result = await self.agent.hub_call(
            mesh, "POST", f"/api/endpoints/{ep['id']}/labels", {"add": add, "delete": delete}
        )
        if isinstance(result, dict):
            result["is_local"] = ep.get("is_local", False)
        return _json(result)

    async def ep_routes(self, request: web.Request) -> web.Response:
        """Advertise or withdraw subnet routes of an endpoint (the hub checks the CIDRs and who may)."""
        body = await self._body(request)
        change = {key: _cidrs(body.get(key), key) for key in ("advertise", "withdraw") if body.get(key) is not None}
        if not change:
            raise BadInput('give {"advertise": [CIDR...]} or {"withdraw": [CIDR...]}')
        mesh = request.match_info["mesh"]
        ep = await self.agent.endpoint(mesh, request.match_info["ep"])
        result = await self.agent.hub_call(mesh, "POST", f"/api/endpoints/{ep['id']}/routes", change)
        if isinstance(result, dict):
            result["is_local"] = ep.get("is_local", False)
        return _json(result)

    async def routes(self, request: web.Request) -> web.Response:
        return _json(await self.agent.hub_call(request.match_info["mesh"], "GET", "/api/routes"))

    async def approve_routes(self, request: web.Request) -> web.Response:
        """Root approves or unapproves routes one endpoint advertises."""
        body = await self._body(request)
        ref = validate.field(body, "ep", str)
        cidrs = _cidrs(body.get("cidrs"), "cidrs")
        approved = validate.field(body, "approved", bool, default=True)
        if not cidrs:
            raise BadInput('cidrs must name at least one route, e.g. ["10.20.0.0/16"]')
        mesh = request.match_info["mesh"]
        ep = await self.agent.endpoint(mesh, ref)
        result = await self.agent.hub_call(
            mesh, "POST", "/api/routes/approve", {"ep": ep["id"], "cidrs": cidrs, "approved": approved}
        )
        if isinstance(result, dict):
            result["is_local"] = ep.get("is_local", False)
        return _json(result)

    async def ep_log(self, request: web.Request) -> web.Response:
        mesh = request.match_info["mesh"]
        result = await self.agent.call(mesh, request.match_info["ep"], "log", {"lines": self._lines(request)})
        return _json(result)

    async def stats(self, request: web.Request) -> web.Response:
        return _json(self.agent.stats(request.match_info["mesh"], self.meter.sample))

    async def users(self, request: web.Request) -> web.Response:
        return _json(await self.agent.hub_call(request.match_info["mesh"], "GET", "/api/users"))

    async def invite(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        user = validate.user_name(request.match_info["user"])
        payload = {"public_key": validate.field(body, "identity", str), "days": body.get("days", 365)}
        permit = await self.agent.hub_call(request.match_info["mesh"], "POST", f"/api/users/{user}/invite", payload)
        return _json({"permit": permit})

    async def evict(self, request: web.Request) -> web.Response:
        user = validate.user_name(request.match_info["user"])
        return _json(await self.agent.hub_call(request.match_info["mesh"], "POST", f"/api/users/{user}/evict", {}))

    async def hub_log(self, request: web.Request) -> web.Response:
        lines = self._lines(request)
        return _json(await self.agent.hub_call(request.match_info["mesh"], "GET", f"/api/log?lines={lines}"))

    async def apps(self, request: web.Request) -> web.Response:
        mesh = request.query.get("mesh")
        sessions = [self.agent.get(mesh)] if mesh is not None else list(self.agent.meshes.values())
        return _json([view for s in sessions for view in self.agent.library.views(s)])

    async def mesh_apps(self, request: web.Request) -> web.Response:
        return _json(self.agent.library.views(self.agent.get(request.match_info["mesh"])))

    async def app_call(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        app = validate.name(request.match_info["app"], "app name")
        method = validate.name(body.get("method"), "method")
        result = await self.agent.call(
            request.match_info["mesh"], request.match_info["ep"], f"app.{app}.{method}", body.get("params")
        )
        return _json(result)

    def _root_admin_view(self, mesh: str) -> dict[str, Any]:
        session = self.agent.get(mesh)
        return {"mesh": mesh, "owner": session.record.user, "enabled": optin.root_admin(self.agent.store, mesh)}

    async def root_admin(self, request: web.Request) -> web.Response:
        return _json(self._root_admin_view(request.match_info["mesh"]))

    async def set_root_admin(self, request: web.Request) -> web.Response:
        mesh = request.match_info["mesh"]
        session = self.agent.get(mesh)
        body = await self._body(request)
        unknown = set(body) - {"enabled"}
        if unknown or not isinstance(body.get("enabled"), bool):
            raise BadInput('send {"enabled": true} or {"enabled": false}')
        optin.set_root_admin(self.agent.store, mesh, body["enabled"])
        state = "may" if body["enabled"] else "may no longer"
        log.info("mesh %s: root %s configure this endpoint's tunnels and proxy remotely", session.name, state)
        return _json(self._root_admin_view(mesh))

    async def policy_local(self, request: web.Request) -> web.Response:
        """The policy this endpoint enforces (as its hub last sent it, or as stored when the hub is away) and its
        rules that can match this endpoint: "who may reach me" (the GUI's policy page)."""
        session = self.agent.get(request.match_info["mesh"])
        gate = session.gate
        place = session.place()
        return _json(
            {
                "version": gate.version,
                "endpoint": place.ep,
                "tags": sorted(place.tags),
                "tracked": gate.tracked,
                "rules_for_me": [[line, rule] for line, rule in gate.rules_for_me()],
            }
        )

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=render_metrics(self.agent), content_type="text/plain")

    async def own_log(self, request: web.Request) -> web.Response:
        return _json({"lines": self.log_tail(self._lines(request))})
