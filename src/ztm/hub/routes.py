"""The hub's HTTP/2 routes: parse each request, find the peer from its verified certificate, call `HubState`,
and answer JSON (see PROTOCOL.md for the table). The event stream route writes newline-delimited JSON until the
session ends.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

from ztm import addr, filespec, h2, pki, tcpalive, validate
from ztm.errors import BadInput, Forbidden, NotFound, Unauthorized, Unavailable, ZtmError
from ztm.hub import interest, limits, meshaddr
from ztm.hub.audit import MAX_LIMIT
from ztm.hub.authority import ROOT_USER
from ztm.hub.files import FileIndex
from ztm.hub.peers import CALLER_HEADER, HubPeers, caller_from
from ztm.hub.relay import Relay, check_app, check_service, parse_services
from ztm.hub.state import HubState, Peer
from ztm.logs import RingHandler

log = logging.getLogger("ztm.hub")

MAX_BODY = 256 * 1024
FILES_MAX_BODY = 8 << 20
"""File entries carry one SHA-256 per MiB of file (up to 64 Ki chunks) and announcements up to 10 000 paths."""
JSON = [("content-type", "application/json")]
LINK_IDLE, LINK_INTERVAL, LINK_TIMEOUT = 4.0, 2.0, 10.0
"""Kernel keepalive on every accepted connection (`ztm.tcpalive`): probed after 4 s of silence, then every 2 s, and
given up 10 s after the peer was last heard from. An agent that vanished silently (link cut, machine gone) is offline
here within 10 s at any `--heartbeat`, with no work in this process; its own probes (every 2 s) keep a live link
from being probed from here at all."""


class Request:
    def __init__(self, stream: h2.Stream, peer: Peer, match: re.Match[str], query: dict[str, list[str]]) -> None:
        self.stream = stream
        self.peer = peer
        self.match = match
        self.query = query

    async def json(self, limit: int = MAX_BODY) -> dict[str, Any]:
        try:
            body = await self.stream.read_all(limit)
        except h2.StreamReset:
            raise
        except h2.H2Error as exc:
            raise BadInput(str(exc)) from None
        return validate.json_object(body)

    def arg(self, name: str) -> str:
        return self.match.group(name)

    def str_query(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[0] if values else None

    def int_query(self, name: str, default: int, lo: int, hi: int) -> int:
        values = self.query.get(name)
        if not values:
            return default
        try:
            value = int(values[0])
        except ValueError:
            raise BadInput(f"query parameter {name!r} must be a number") from None
        return validate.int_range(value, name, lo, hi)


Route = Callable[[Request], Awaitable[Any]]


class HubRoutes:
    def __init__(self, state: HubState, ring: RingHandler, files: list[str]) -> None:
        """`files`: the store's file entries (`HubStore.files()`)."""
        self.state = state
        self.ring = ring
        self._log_window = 0.0
        self._logged = 0
        ep = r"(?P<ep>[A-Za-z0-9._-]{1,64})"
        self._call_path = re.compile(rf"/api/endpoints/{ep}/call")
        self.routes: list[tuple[str, re.Pattern[str], Route]] = [
            ("GET", re.compile(r"/api/status"), self.get_status),
            ("POST", re.compile(r"/api/enroll"), self.post_enroll),
            ("POST", re.compile(r"/api/renew"), self.post_renew),
            ("POST", re.compile(r"/api/heartbeat"), self.post_heartbeat),
            ("POST", re.compile(r"/api/events/interest"), self.post_interest),
            ("GET", re.compile(r"/api/endpoints"), self.get_endpoints),
            ("GET", re.compile(rf"/api/endpoints/{ep}"), self.get_endpoint),
            ("DELETE", re.compile(rf"/api/endpoints/{ep}"), self.delete_endpoint),
            ("POST", re.compile(rf"/api/endpoints/{ep}/labels"), self.post_labels),
            # subnet routes (issue 17, ztm.hub.meshnet)
            ("POST", re.compile(rf"/api/endpoints/{ep}/routes"), self.post_ep_routes),
            ("GET", re.compile(r"/api/routes"), self.get_routes),
            ("POST", re.compile(r"/api/routes/approve"), self.post_routes_approve),
            ("POST", self._call_path, self.post_call),
            ("POST", re.compile(r"/api/calls/(?P<id>[0-9a-f]{32})"), self.post_answer),
            ("GET", re.compile(r"/api/users"), self.get_users),
            ("POST", re.compile(r"/api/users/(?P<user>[^/]{1,64})/invite"), self.post_invite),
            ("POST", re.compile(r"/api/users/(?P<user>[^/]{1,64})/evict"), self.post_evict),
            ("GET", re.compile(r"/api/log"), self.get_log),
            ("POST", re.compile(r"/api/services"), self.post_services),
            ("GET", re.compile(r"/api/services"), self.get_services),
            ("GET", re.compile(r"/api/files"), self.get_files),
            ("GET", re.compile(r"/api/files/entry"), self.get_file),
            ("POST", re.compile(r"/api/files/entry"), self.post_file),
            ("DELETE", re.compile(r"/api/files/entry"), self.delete_file),
            ("POST", re.compile(r"/api/files/acl"), self.post_file_acl),
            ("POST", re.compile(r"/api/files/sources"), self.post_file_sources),
            ("GET", re.compile(r"/api/crl"), self.get_crl),
            ("GET", re.compile(r"/api/hubs"), self.get_hubs),
            ("POST", re.compile(r"/api/direct"), self.post_direct),
            ("GET", re.compile(r"/api/reflect"), self.get_reflect),
            # the mesh's access policy and the audit log (ztm.hub.policy, ztm.hub.audit): no route edits or deletes
            # an audit row
            ("GET", re.compile(r"/api/policy"), self.get_policy),
            ("POST", re.compile(r"/api/policy"), self.post_policy),
            ("GET", re.compile(r"/api/policy/history"), self.get_policy_history),
            ("POST", re.compile(r"/api/policy/rollback"), self.post_policy_rollback),
            ("POST", re.compile(r"/api/policy/check"), self.post_policy_check),
            ("GET", re.compile(r"/api/audit"), self.get_audit),
        ]
        self.peers = HubPeers(state)
        """Links to the other hubs of a cluster, for streams and calls to endpoints whose session is there."""
        self.relay = Relay(state, self.peers)
        self.files = FileIndex(state, state.store, files)

    # connection admission
    def on_handshake_failure(self, peer: str, reason: str) -> None:
        """Count every failed handshake; log the first few per minute (a flood must not flood the log)."""
        self.state.counters["handshake_failures"] += 1
        now = time.monotonic()
        if now - self._log_window > 60:
            self._log_window, self._logged = now, 0
        self._logged += 1
        if self._logged <= 10:
            log.info("TLS handshake from %s refused: %s", peer, reason)
        elif self._logged == 11:
            log.info("more TLS handshakes refused this minute; counting them in handshake_failures only")

    async def on_connect(self, conn: h2.Connection) -> bool:
        if conn.peer_cert_der is None:
            return False
        try:
            cert = pki.cert_from_der(conn.peer_cert_der)
            identity = pki.identity_of(cert)
        except ZtmError as exc:
            log.info("refused a connection from %s: %s", conn.peer_address, exc.message)
            self.state.counters["connections_refused"] += 1
            return False
        if identity.mesh_id != self.state.authority.mesh_id or not (identity.user or identity.is_hub):
            log.info(
                "refused a connection from %s: not a user, endpoint or hub certificate of this mesh", conn.peer_address
            )
            self.state.counters["connections_refused"] += 1
            return False
        peer = Peer(
            user=identity.user or "",
            ep_id=identity.ep_id,
            serial=cert.serial_number,
            not_after=cert.not_valid_after_utc.timestamp(),
            address=conn.peer_address,
            hub_id=identity.hub_id if identity.is_hub else None,
        )
        refusal = self.state.refusal(peer)
        if refusal is not None:
            who = f"hub {peer.hub_id}" if peer.hub_id is not None else peer.user
            log.info("refused %s from %s: %s", who, conn.peer_address, refusal)
            self.state.counters["connections_refused"] += 1
            return False
        key = id(conn)
        tcpalive.watch(conn.socket, idle=LINK_IDLE, interval=LINK_INTERVAL, timeout=LINK_TIMEOUT)
        self.state.conns.add(key, peer, conn.close)
        self.state.counters["connections"] += 1
        conn.add_close_callback(lambda _c: self.state.conns.discard(key))
        return True

    # dispatch
    async def handle(self, stream: h2.Stream, conn: h2.Connection) -> None:
        peer = self.state.conns.peer(id(conn))
        method = stream.header(":method") or ""
        target = urlsplit(stream.header(":path") or "/")
        try:
            if peer is None:
                raise Unauthorized("no verified client certificate on this connection")
            # Every request, not only the connection, answers to the certificate's current standing.
            self.state.check_peer(peer)
            if peer.ep_id is not None and peer.ep_id not in self.state.endpoints:
                await self.state.ensure_endpoint(peer.ep_id)  # enrolled at another hub, not heard of here yet
            self._check_forwarding(stream, peer, method, target.path)
            if method == "GET" and target.path == "/api/events":
                await self.events(stream, conn, peer)
                return
            if method == "CONNECT":
                accept = stream.header("ztm-accept")
                if accept is None:
                    await self.relay.connect(stream, peer)
                else:
                    await self.relay.accept(stream, peer, accept)
                return
            route, match = self._find(method, target.path)
            result = await route(Request(stream, peer, match, parse_qs(target.query)))
            status = 200
        except ZtmError as exc:
            status, result = exc.status, exc.to_json()
        except h2.H2Error:
            return
        body = result if isinstance(result, bytes) else json.dumps(result).encode() if result is not None else b""
        if result is None:
            status = 204
        await stream.respond(status, JSON, end_stream=not body)
        if body:
            await stream.write(body)
            await stream.end()

    def _check_forwarding(self, stream: h2.Stream, peer: Peer, method: str, path: str) -> None:
        """A hub peer may only forward a stream (CONNECT) or a call; only a hub peer may name the caller."""
        if peer.hub_id is not None:
            forwarding = (method == "CONNECT" and stream.header("ztm-accept") is None) or (
                method == "POST" and self._call_path.fullmatch(path) is not None
            )
            if not forwarding:
                raise Forbidden(
                    "a hub of the mesh may only forward streams (CONNECT) and calls (POST /api/endpoints/EP/call)"
                )
        elif stream.header(CALLER_HEADER) is not None:
            raise Forbidden(f"the {CALLER_HEADER} header is accepted only from a hub of this mesh")

    def _find(self, method: str, path: str) -> tuple[Route, re.Match[str]]:
        allowed = False
        for route_method, pattern, route in self.routes:
            match = pattern.fullmatch(path)
            if match:
                if route_method == method:
                    return route, match
                allowed = True
        if allowed:
            raise BadInput(f"{method} is not allowed on {path}")
        raise NotFound(f"no route {path}")

    # routes
    async def get_status(self, req: Request) -> Any:
        return self.state.status()

    async def post_enroll(self, req: Request) -> Any:
        body = await req.json()
        ep, cert = await self.state.enroll(
            req.peer,
            ep_id=validate.ep_id(body.get("ep_id")),
            name=validate.endpoint_name(body.get("name")),
            public_key=pki.csr_from_pem(validate.field(body, "csr", str)),
            hostname=validate.field(body, "hostname", str, default="")[:255],
            version=validate.field(body, "version", str, default="")[:64],
            labels=validate.labels(body.get("labels")),
        )
        return {"ep": self.state.endpoint_view(ep), "certificate": cert, "hub": self.state.status()}

    async def post_renew(self, req: Request) -> Any:
        body = await req.json()
        return {"certificate": await self.state.renew(req.peer, pki.csr_from_pem(validate.field(body, "csr", str)))}

    async def post_heartbeat(self, req: Request) -> Any:
        await req.json()
        return self.state.beat(req.peer)

    async def get_endpoints(self, req: Request) -> Any:
        return self.state.list_endpoints_json()

    async def get_endpoint(self, req: Request) -> Any:
        ep = self.state.find_endpoint(req.arg("ep"))
        if req.peer.ep_id is not None:  # the asker deals with it: its session hears of its changes from now on
            self.state.watch(req.peer.ep_id, ep.id)
        return self.state.endpoint_view(ep)

    async def post_interest(self, req: Request) -> Any:
        body = await req.json()
        if body.get("events") != interest.ALL:
            raise BadInput('give {"events": "all"}: a live event stream can only widen to every endpoint event')
        return self.state.want_everything(req.peer)

    async def delete_endpoint(self, req: Request) -> Any:
        return await self.state.delete_endpoint(req.peer, req.arg("ep"))

    async def post_labels(self, req: Request) -> Any:
        body = await req.json()
        return await self.state.set_labels(
            req.peer, req.arg("ep"), validate.labels(body.get("add")), validate.labels(body.get("delete"))
        )

    async def post_ep_routes(self, req: Request) -> Any:
        body = await req.json()
        net = self.state.net
        advertise, withdraw = body.get("advertise"), body.get("withdraw")
        if advertise is None and withdraw is None:
            raise BadInput('give {"advertise": [CIDR...]} or {"withdraw": [CIDR...]}')
        add = meshaddr.parse_routes(advertise, net.range4, net.range6) if advertise is not None else []
        drop = meshaddr.parse_routes(withdraw, net.range4, net.range6) if withdraw is not None else []
        both = set(add) & set(drop)
        if both:
            raise BadInput(f"route {sorted(both)[0]} is both advertised and withdrawn; give it in one list")
        return await net.change(req.peer, req.arg("ep"), add, drop)

    async def get_routes(self, req: Request) -> Any:
        return self.state.net.list_routes()

    async def post_routes_approve(self, req: Request) -> Any:
        body = await req.json()
        net = self.state.net
        ref = validate.field(body, "ep", str)
        if not 0 < len(ref) <= 64:
            raise BadInput("ep must be an endpoint id or name")
        approved = validate.field(body, "approved", bool, default=True)
        cidrs = meshaddr.parse_routes(body.get("cidrs"), net.range4, net.range6)
        return await net.approve(req.peer, ref, cidrs, approved)

    async def post_call(self, req: Request) -> Any:
        body = await req.json()
        method = validate.name(body.get("method"), "method")
        timeout = float(validate.int_range(body.get("timeout", 10), "timeout", 1, 60))
        params = body.get("params")
        if req.peer.hub_id is not None:  # forwarded by the hub of the caller: run here or nowhere
            caller = await caller_from(req.stream.header(CALLER_HEADER), self.state)
            return await self.state.call_as(caller, req.arg("ep"), method, params, timeout, forwarded=True)
        caller = self.state.require_ep(req.peer)
        target = self.state.find_endpoint(req.arg("ep"))
        self.state.watch(caller.id, target.id)
        hub_id = self.state.location(target.id)
        if hub_id is not None:  # its session is on another hub of the cluster
            return await self.peers.forward_call(hub_id, caller, target, method, params, timeout)
        return await self.state.call(req.peer, target.id, method, params, timeout)

    async def post_answer(self, req: Request) -> Any:
        self.state.answer(req.peer, req.arg("id"), await req.json())
        return None

    async def get_users(self, req: Request) -> Any:
        return self.state.list_users()

    async def post_invite(self, req: Request) -> Any:
        body = await req.json()
        user = validate.user_name(req.arg("user"))
        days = validate.int_range(body.get("days", 365), "days", 1, 3650)
        public_key = pki.public_key_from_pem(validate.field(body, "public_key", str))
        return await self.state.invite(req.peer, user, public_key, days)

    async def post_evict(self, req: Request) -> Any:
        return await self.state.evict(req.peer, validate.user_name(req.arg("user")))

    async def get_log(self, req: Request) -> Any:
        if req.peer.user != ROOT_USER:
            raise Forbidden("only root may read the hub's log")
        return {"lines": self.ring.tail(req.int_query("lines", 100, 1, 2000))}

    async def post_services(self, req: Request) -> Any:
        app, services = parse_services(await req.json())
        await self.state.set_services(req.peer, app, services)
        return None

    async def get_services(self, req: Request) -> Any:
        apps = req.query.get("app")
        names = req.query.get("name")
        return self.state.find_services(
            check_app(apps[0] if apps else None), check_service(names[0]) if names else None
        )

    async def get_hubs(self, req: Request) -> Any:
        cluster = self.state.cluster
        return {"hubs": cluster.hub_views() if cluster is not None else []}

    async def get_crl(self, req: Request) -> Any:
        """The CA's current CRL, for agents that check direct peers' certificates (refreshed on every `crl` event)."""
        self.state.require_ep(req.peer)
        return {"crl": self.state.authority.crl_pem, "number": self.state.authority.crl_number}

    async def post_direct(self, req: Request) -> Any:
        body = await req.json()
        port = body.get("port")
        if port is not None:
            port = validate.int_range(port, "port", 1, 65535)
        host = body.get("host")
        if host is not None:
            if not isinstance(host, str):
                raise BadInput("host must be an IP address or host name (a string)")
            host = addr.Address.parse(f"[{host}]:1" if ":" in host else f"{host}:1", what="host").host
        return self.state.set_direct(req.peer, host, port)

    async def get_reflect(self, req: Request) -> Any:
        """The address and port this connection comes from, as the hub sees it: what an endpoint behind NAT learns
        its mapping from (the hub is the mesh's reflector; no public STUN server). Endpoint certificates only."""
        self.state.require_ep(req.peer)
        if req.peer.address is None:
            raise Unavailable("the hub cannot tell this connection's address")
        return {"ip": req.peer.address[0], "port": req.peer.address[1]}

    # the mesh file space (ztm.hub.files)
    async def get_files(self, req: Request) -> Any:
        return self.files.listing(req.peer, filespec.check_prefix(req.str_query("prefix")))

    async def get_file(self, req: Request) -> Any:
        return self.files.get(req.peer, filespec.check_path(req.str_query("path")))

    async def post_file(self, req: Request) -> Any:
        return await self.files.publish(req.peer, await req.json(FILES_MAX_BODY))

    async def delete_file(self, req: Request) -> Any:
        await self.files.unpublish(req.peer, filespec.check_path(req.str_query("path")))
        return None

    async def post_file_acl(self, req: Request) -> Any:
        return await self.files.set_acl(req.peer, await req.json())

    async def post_file_sources(self, req: Request) -> Any:
        return await self.files.announce(req.peer, await req.json(FILES_MAX_BODY))

    # the access policy
    async def get_policy(self, req: Request) -> Any:
        version = req.int_query("version", 0, 0, 2**31 - 1)
        return await self.state.policy.get_version(version or None)

    async def post_policy(self, req: Request) -> Any:
        body = await self._policy_body(req)
        dry_run = validate.field(body, "dry_run", bool, default=False)
        note = validate.note(body.get("note"))
        return await self.state.policy.set(req.peer, _policy_text(body, "text"), dry_run=dry_run, note=note)

    async def get_policy_history(self, req: Request) -> Any:
        return await self.state.policy.history()

    async def post_policy_rollback(self, req: Request) -> Any:
        body = await req.json()
        version = validate.int_range(body.get("version"), "version", 1, 2**31 - 1)
        return await self.state.policy.rollback(req.peer, version)

    async def post_policy_check(self, req: Request) -> Any:
        body = await self._policy_body(req)
        source = validate.field(body, "from", str)
        to = validate.field(body, "to", str)
        target = validate.field(body, "target", str)
        text = _policy_text(body, "text") if body.get("text") is not None else None
        return await self.state.policy.check(source, to, target, text)

    async def _policy_body(self, req: Request) -> dict[str, Any]:
        declared = req.stream.header("content-length")
        too_long = BadInput(
            f"the request is over {limits.POLICY_BODY_BYTES} bytes; a policy text may have at most "
            f"{limits.POLICY_TEXT_BYTES} (1 MiB): split long lists into groups"
        )
        if declared is not None and declared.isdecimal() and int(declared) > limits.POLICY_BODY_BYTES:
            raise too_long
        try:
            return await req.json(limits.POLICY_BODY_BYTES)
        except BadInput as exc:
            if "exceeds" in exc.message:
                raise too_long from None
            raise

    async def get_audit(self, req: Request) -> Any:
        await self.state.policy.require_admin(req.peer, "read the audit log")
        since = req.str_query("since")
        since_time: float | None = None
        if since is not None:
            try:
                since_time = float(since)
            except ValueError:
                since_time = math.nan
            if not math.isfinite(since_time):
                raise BadInput("query parameter 'since' must be unix seconds, e.g. 1765000000")
        user = req.str_query("user")
        limit = req.int_query("limit", 1000, 1, MAX_LIMIT)
        return await self.state.audit.query(None, since_time, validate.user_name(user) if user else None, limit)

    # the event stream
    async def events(self, stream: h2.Stream, conn: h2.Connection, peer: Peer) -> None:
        session = self.state.open_session(peer, conn.close, lambda: conn.bytes_received, id(conn))
        session.e2e = stream.header("ztm-e2e") or ""
        session.interest = interest.Interest.from_header(stream.header(interest.HEADER))  # before any await
        reader = asyncio.get_running_loop().create_task(_drain(stream))
        reader.add_done_callback(lambda _t: session.end())
        conn.add_close_callback(lambda _c: session.end())
        try:
            await stream.respond(200, [("content-type", "application/x-ndjson")])
            ended = False
            while not ended:
                items = await session.take(256)
                lines: list[bytes] = []
                for item in items:
                    if item is None:
                        ended = True
                        break
                    if item[0] == "evicted":
                        # End the stream with the notice so the agent reads it even as the connection closes.
                        await stream.write(b"".join([*lines, item[1]]), end_stream=True)
                        conn.close()
                        return
                    lines.append(item[1])
                if lines:
                    await stream.write(b"".join(lines))
            await stream.end()
        except h2.H2Error:
            pass
        finally:
            reader.cancel()
            self.state.close_session(session)


def _policy_text(body: dict[str, Any], key: str) -> str:
    text = validate.field(body, key, str)
    size = len(text.encode())
    if size > limits.POLICY_TEXT_BYTES:
        raise BadInput(
            f"the policy text is {size} bytes; the hub takes at most {limits.POLICY_TEXT_BYTES} (1 MiB): split long "
            "lists into groups"
        )
    return text


async def _drain(stream: h2.Stream) -> None:
    """Read the client's side of the event stream until it ends: that is how an agent leaves."""
    try:
        while await stream.read():
            pass
    except h2.H2Error:
        return
