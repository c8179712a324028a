"""Hub-to-hub links of a cluster: `HubPeers`, one HTTP/2 connection from this hub to each other hub it forwards to,
and the rules of the two forwarding routes (PROTOCOL.md section 12).

When an endpoint's live session is on another hub (`HubState.location`), this hub forwards an entrance's `CONNECT`
and a relayed call there over a link dialled with its own hub certificate (`DATA/hub-tls/hub.crt`, `ztm://MESH/
hub/ID`, clientAuth), checking that the far side presents the hub certificate of the hub it meant. The caller, as
this hub verified it from the caller's certificate, travels in the `ztm-caller` header, which the far hub accepts
only on a connection whose certificate is a hub certificate of its mesh (`caller_from`). A forwarded request is
never forwarded again: the far hub serves it only if the target's session is its own.

Links are dialled on first use, one at a time per hub (concurrent users wait for the same dial), kept alive with
PINGs like an agent's link, dialled again on the next use after a loss, and closed when the hub stops.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from typing import Any

from ztm import h2, keylog, validate
from ztm.addr import Address
from ztm.agent.tls import check_hub
from ztm.errors import BadInput, Forbidden, Unavailable, ZtmError
from ztm.hub import limits
from ztm.hub.state import HubState
from ztm.hub.store import EndpointRecord
from ztm.tlsobject import fast_tls

log = logging.getLogger("ztm.hub")

CALLER_HEADER = "ztm-caller"
"""The caller of a forwarded request, as the forwarding hub verified it: `{"ep": ID, "name": NAME, "user": USER}`."""
CONNECT_TIMEOUT = 3.0
"""Seconds for TCP, TLS and the far hub's HTTP/2 preface, per address."""
KEEPALIVE = 2.0
KEEPALIVE_TIMEOUT = 3.0
"""PING every 2 s, the link dead after 3 s without an answer (unless other bytes arrived meanwhile), as an agent's
link to its hub (`ztm.agent.link`): a far hub that vanished silently is noticed within 5 s, and the next stream or
call dials again."""
IDLE_LANE = 120.0
"""Seconds after which a lane's link (one per other hub and caller user) that carries nothing is closed."""
ANSWER_MARGIN = 5.0
"""Seconds a forwarding hub waits beyond the far hub's own deadline (its accept timeout, the call's timeout)."""


class Relayed(ZtmError):
    """An error status and JSON body another hub answered, passed on unchanged."""

    def __init__(self, status: int, body: Any) -> None:
        error = body.get("error") if isinstance(body, dict) else None
        super().__init__(str(error) if error else f"the hub of the endpoint answered HTTP {status}")
        self.status = status
        self.code = str(body.get("code", "relayed")) if isinstance(body, dict) else "relayed"
        self.body = body if isinstance(body, dict) else {"error": self.message, "code": self.code}

    def to_json(self) -> dict[str, str]:
        return dict(self.body)


def caller_header(caller: EndpointRecord) -> str:
    return json.dumps({"ep": caller.id, "name": caller.name, "user": caller.user}, separators=(",", ":"))


async def caller_from(value: str | None, state: HubState) -> EndpointRecord:
    """The caller a hub peer names in `ztm-caller` (only hub peers may name one): an endpoint of the mesh's registry
    (read from the store when this hub has not heard of it yet, e.g. one that joined at the other hub a moment
    ago) whose user is the one named and a member now. The forwarding hub verified the caller's certificate; this
    checks that it names nobody the registry does not back (an evicted user, a deleted endpoint)."""
    if value is None:
        raise BadInput(f"a request forwarded by a hub carries the caller in the {CALLER_HEADER} header")
    try:
        parsed = json.loads(value)
    except ValueError:
        raise BadInput(f"the {CALLER_HEADER} header is not JSON") from None
    if not isinstance(parsed, dict):
        raise BadInput(f'the {CALLER_HEADER} header must be {{"ep": ID, "name": NAME, "user": USER}}')
    ep_id = validate.ep_id(parsed.get("ep"))
    user = validate.user_name(parsed.get("user"))
    known = state.endpoints.get(ep_id) or await state.store.endpoint(ep_id)
    if known is None:
        raise Forbidden(f"endpoint {ep_id} is not an endpoint of this mesh")
    if known.user != user:
        raise Forbidden(f"endpoint {ep_id} belongs to user {known.user!r}, not {user!r}")
    member = state.users.get(user)
    if member is None or member.evicted_at is not None:
        raise Forbidden(f"user {user!r} is not a member of this mesh")
    return known


def check_forward_params(params: Any) -> None:
    size = len(json.dumps(params, separators=(",", ":")).encode())
    if size > limits.MAX_CALL_PARAMS:
        raise BadInput(f"call params are {size} bytes of JSON; the hub relays at most {limits.MAX_CALL_PARAMS}")


class HubPeers:
    """This hub's links to the other hubs of its mesh, dialled on demand: one HTTP/2 connection per other hub and
    per **lane**, the caller's user. Streams of one link share its connection window; a member whose streams the
    far side does not read fills only their own user's lane, never another user's (one user's own streams can hold
    each other up, as they can on a single hub, where an entrance's streams share its connection)."""

    def __init__(self, state: HubState) -> None:
        self.state = state
        self._links: dict[str, h2.Connection] = {}
        self._used: dict[str, float] = {}
        """Link key -> when a stream or call last took it (lanes idle for `IDLE_LANE` seconds are closed)."""
        self._reaped = time.monotonic()
        self._dialling: dict[str, asyncio.Future[h2.Connection]] = {}
        self._context: ssl.SSLContext | None = None
        self._closed = False

    def _client_context(self) -> ssl.SSLContext:
        if self._context is None:
            tls_dir = self.state.authority.data / "hub-tls"
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.check_hostname = False  # the far hub is identified by its URI SAN under the mesh CA (check_hub)
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=self.state.authority.ca_pem)
            ctx.load_cert_chain(tls_dir / "hub.crt", tls_dir / "hub.key")
            self._context = keylog.apply(fast_tls(ctx))
        return self._context

    async def link(self, hub_id: str, lane: str = "") -> h2.Connection:
        """The live connection to hub `hub_id` for `lane` (a user name), dialled now if there is none;
        `Unavailable` if it cannot be had."""
        if self._closed:
            raise Unavailable("this hub is stopping")
        key = f"{hub_id}/{lane}"
        now = time.monotonic()
        self._used[key] = now
        if now - self._reaped > IDLE_LANE / 4:
            self._reap(now)
        conn = self._links.get(key)
        if conn is not None and not conn.closed:
            return conn
        dialling = self._dialling.get(key)
        if dialling is None:
            dialling = asyncio.ensure_future(self._dial(hub_id, key))
            self._dialling[key] = dialling
            dialling.add_done_callback(lambda f: self._dial_done(key, f))
        return await asyncio.shield(dialling)

    def _dial_done(self, key: str, dialling: asyncio.Future[h2.Connection]) -> None:
        self._dialling.pop(key, None)
        if not dialling.cancelled():
            dialling.exception()  # retrieved here: every waiter may have gone (their streams were reset)

    async def _dial(self, hub_id: str, key: str) -> h2.Connection:
        info = self.state.hubs.get(hub_id)
        if info is None or not info.addresses:
            self.state.counters["hub_link_failures"] += 1
            raise Unavailable(f"hub {hub_id} is not a hub of this mesh any more (or has no address)")
        problems: list[str] = []
        for text in info.addresses:
            try:
                address = Address.parse(text, what="hub address")
                conn = await h2.connect(
                    address.host, address.port, self._client_context(), timeout=CONNECT_TIMEOUT,
                    keepalive=KEEPALIVE, keepalive_timeout=KEEPALIVE_TIMEOUT,
                )  # fmt: skip
            except (h2.H2Error, BadInput) as exc:
                problems.append(f"{text}: {exc}")
                continue
            try:
                found = check_hub(conn, self.state.authority.mesh_id, text)
                if found != hub_id:
                    raise Unavailable(f"{text} is hub {found}, not hub {hub_id}")
            except ZtmError as exc:
                conn.close()
                problems.append(exc.message)
                continue
            if self._closed:
                conn.close()
                raise Unavailable("this hub is stopping")
            self._links[key] = conn
            conn.add_close_callback(lambda c: self._lost(key, c))
            self.state.counters["hub_links"] += 1
            log.info("linked to hub %s at %s", hub_id, text)
            return conn
        self.state.counters["hub_link_failures"] += 1
        message = f"cannot reach hub {hub_id}: " + "; ".join(problems or ["no address"])
        log.warning("%s", message)
        raise Unavailable(message)

    def _reap(self, now: float) -> None:
        """Close the links of lanes nothing used for `IDLE_LANE` seconds and that carry no stream."""
        self._reaped = now
        for key, conn in list(self._links.items()):
            if now - self._used.get(key, now) > IDLE_LANE and conn.open_streams == 0:
                self._used.pop(key, None)
                conn.close()

    def _lost(self, key: str, conn: h2.Connection) -> None:
        if self._links.get(key) is conn:
            del self._links[key]
            if not self._closed:
                log.info("link to hub %s closed: %s", key, conn.close_reason or "closed")

    async def open_connect(
        self, hub_id: str, target: str, headers: list[tuple[str, str]], first: bytes, *, lane: str
    ) -> h2.Stream:
        """Open a forwarded `CONNECT` to `target` at hub `hub_id` on `lane`'s link (the caller's user), its first
        flight `first` sent with the headers."""
        conn = await self.link(hub_id, lane)
        try:
            stream = await conn.open_stream("CONNECT", target, headers)
            if first:
                await stream.write(first)
        except h2.H2Error as exc:
            raise Unavailable(f"the link to hub {hub_id} failed: {exc}") from None
        self.state.counters["streams_forwarded"] += 1
        return stream

    async def forward_call(
        self, hub_id: str, caller: EndpointRecord, target: EndpointRecord, method: str, params: Any, timeout: float
    ) -> Any:
        """Run a relayed call at hub `hub_id`, which holds `target`'s session; its answer, or its error unchanged."""
        check_forward_params(params)
        self.state.pending_calls.reserve(caller.id, target.id, target.name)
        try:
            conn = await self.link(hub_id, caller.user)
            body = json.dumps({"method": method, "params": params, "timeout": int(timeout)}).encode()
            headers = [("content-type", "application/json"), (CALLER_HEADER, caller_header(caller))]
            self.state.counters["calls_forwarded"] += 1
            try:
                status, _, raw = await conn.request(
                    "POST", f"/api/endpoints/{target.id}/call", body=body, headers=headers,
                    timeout=timeout + ANSWER_MARGIN,
                )  # fmt: skip
            except h2.NoAnswer:
                raise Unavailable(f"hub {hub_id} did not answer the call to {target.name!r} in time") from None
            except h2.H2Error as exc:
                raise Unavailable(f"the link to hub {hub_id} failed during the call: {exc}") from None
        finally:
            self.state.pending_calls.release(caller.id, target.id)
        try:
            answer = json.loads(raw) if raw else None
        except ValueError:
            raise Unavailable(f"hub {hub_id} answered the call with something that is not JSON") from None
        if status >= 400:
            raise Relayed(status, answer)
        return answer

    def close(self) -> None:
        """Close every link, and the connections other hubs made to this one (the hub stops)."""
        self._closed = True
        for conn in list(self._links.values()):
            conn.close()
        self._links.clear()
        self.state.conns.close_where(lambda p: p.hub_id is not None)
