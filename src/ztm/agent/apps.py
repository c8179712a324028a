"""The app interface: what an app running on an endpoint can do, and the per-mesh context it gets.

An app opens streams to its peer on other endpoints (`AppContext.open_stream`), is handed streams peers open to it
(`MeshApp.on_stream`, with the caller's identity as the hub asserts it from the caller's certificate), keeps its
configuration (`AppContext.config_*`, in the agent's database), and announces the services it offers to the mesh
(`AppContext.publish`, found by others with `AppContext.find`), reads and writes mesh files (`AppContext.read_file`,
`write_file`, `list_files`, served by the `files` app) and may answer `ztm APP ...` (`MeshApp.cli`). Built-in apps
use exactly this interface.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ztm import epref, h2, pki
from ztm.agent.direct import DirectUnreachable
from ztm.agent.e2estream import E2EStream
from ztm.agent.early import EarlyData
from ztm.agent.punchmsg import SEEN_HEADER, normal_ip
from ztm.e2e import E2EError
from ztm.errors import Forbidden, NotFound, Unavailable, ZtmError, from_json
from ztm.version import E2E_VERSION, __version__

if TYPE_CHECKING:
    from ztm.agent.mesh import MeshSession
    from ztm.agent.store import AgentStore

log = logging.getLogger("ztm.agent")

OPEN_TIMEOUT = 6.0


@dataclass(frozen=True)
class Caller:
    """The endpoint on the other side of a stream or call: endpoint id and user from its verified certificate (the
    end-to-end handshake for streams, TLS for direct channels); the name from the hub's endpoint record."""

    ep_id: str
    name: str
    user: str
    ip: str | None = None
    """The caller's address as its hub saw its connection, on a call the hub attests (`punch`); else None."""


class AppContext:
    def __init__(self, session: MeshSession, store: AgentStore, app: str) -> None:
        self.session = session
        self.store = store
        self.app = app

    @property
    def mesh(self) -> str:
        return self.session.name

    @property
    def ep_id(self) -> str:
        return self.session.record.ep_id

    @property
    def user(self) -> str:
        return self.session.record.user

    def _conn(self) -> h2.Connection:
        conn = self.session.link.conn
        if conn is None or conn.closed:
            raise Unavailable(
                f"not connected to the hub of mesh {self.mesh}: {self.session.link.error or 'connecting'}"
            )
        return conn

    async def open_stream(self, ep: str, service: str) -> E2EStream:
        """A byte stream to this app on endpoint `ep` (id or name), for `service`, sealed end to end; ZtmError if
        refused (by the hub, or by the peer's app) or if the peer failed the end-to-end checks."""
        return await open_app_stream(self.session, await self._ep_id(ep), self.app, service)

    async def open_stream_direct_first(
        self,
        ep_id: str,
        service: str,
        address: object,
        on_fallback: Callable[[str], None],
        early: EarlyData | None = None,
    ) -> E2EStream:
        """A stream to this app on endpoint `ep_id` (an id), over a direct channel when there is one
        (`open_direct_first`), else through the hub; `early`: the app's bytes that go with the opening
        (`ztm.agent.early`)."""
        return await open_direct_first(self.session, ep_id, address, self.app, service, on_fallback, early)

    async def _ep_id(self, ep: str) -> str:
        """The endpoint id `ep` names (an id as it is; a name through the hub's endpoint list)."""
        if pki.is_valid_ep_id(ep):
            return ep
        for known in self.session.peers.values():
            if known.get("name") == ep and isinstance(known.get("id"), str) and not known.get("deleted"):
                return str(known["id"])
        for found in await self.endpoints():
            if found.get("name") == ep and isinstance(found.get("id"), str):
                return str(found["id"])
        raise NotFound(f"no endpoint named {ep!r} in mesh {self.mesh}")

    async def accept(self, stream_id: str) -> E2EStream:
        """Take a stream a peer asked for (the id `on_stream` got): the opener learns it was accepted."""
        stream = self.session.e2e.pending.pop(stream_id, None)
        if stream is None:
            raise NotFound("no such stream is waiting (it was answered already, or timed out)")
        self.session.e2e.decided(stream, accepted=True)
        stream.accept()
        return stream

    async def refuse(self, stream_id: str, reason: str) -> None:
        """Refuse a stream a peer asked for; the opener gets `reason` (sealed, so the hub cannot change it)."""
        stream = self.session.e2e.pending.pop(stream_id, None)
        if stream is not None:
            self.session.e2e.decided(stream, accepted=False)
            stream.refuse(Forbidden(reason))
            return
        await refuse_stream(self._conn(), stream_id, reason)

    async def publish(self, services: list[str]) -> None:
        await self.session.link.request("POST", "/api/services", {"app": self.app, "services": services})

    async def find(self, service: str | None = None) -> list[dict[str, Any]]:
        query = f"/api/services?app={self.app}" + (f"&name={service}" if service else "")
        found = await self.session.link.request("GET", query)
        return [f for f in found if isinstance(f, dict)] if isinstance(found, list) else []

    async def endpoints(self) -> list[dict[str, Any]]:
        """The mesh's endpoints as the hub lists them (`GET /api/endpoints`)."""
        found = await self.session.link.request("GET", "/api/endpoints")
        return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []

    async def resolve_endpoints(self, refs: Sequence[str], what: str) -> tuple[str, ...]:
        """`refs` (endpoint names or ids) as the ids they name now (`ztm.epref.resolve`), to be stored as ids."""
        if not refs:
            return ()
        try:
            endpoints = await self.endpoints()
        except ZtmError as exc:
            raise Unavailable(f"{what}: cannot look up {', '.join(refs)} at the hub: {exc.message}") from None
        return epref.resolve(refs, endpoints, what)

    async def endpoint_names(self) -> dict[str, str]:
        """Endpoint id -> name, for showing stored ids; empty when the hub cannot be asked."""
        try:
            return {str(e.get("id")): str(e.get("name")) for e in await self.endpoints()}
        except ZtmError:
            return {}

    def config_items(self) -> dict[str, object]:
        return self.store.app_items(self.mesh, self.app)

    def config_set(self, key: str, value: object) -> None:
        self.store.app_set(self.mesh, self.app, key, value)

    def config_delete(self, key: str) -> bool:
        return self.store.app_delete(self.mesh, self.app, key)

    # mesh files, through the `files` app of this mesh
    def _files(self) -> Any:
        files = self.session.apps.get("files")
        if files is None or not files.running:
            raise Unavailable(f"the files app is not running in mesh {self.mesh}: start it with `ztm start app files`")
        return files

    async def read_file(self, path: str) -> bytes:
        """The content of the mesh file `path` (fetched from the endpoints that hold it)."""
        return bytes(await self._files().read(path))

    async def write_file(self, path: str, data: bytes) -> dict[str, Any]:
        """Publish `data` as the mesh file `path`; returns its description."""
        return dict(await self._files().write(path, data))

    async def list_files(self, prefix: str = "/") -> list[dict[str, Any]]:
        """The mesh files under `prefix` this endpoint's user may see."""
        return list(await self._files().list(prefix))


async def open_app_stream(
    session: MeshSession, ep_id: str, app: str, service: str, early: EarlyData | None = None
) -> E2EStream:
    """A stream through the hub to `app` on endpoint `ep_id`, sealed end to end (`ztm.agent.e2e`), with `early`
    data sent before the answer (`ztm.agent.early`)."""
    conn = session.link.conn
    if conn is None or conn.closed:
        raise Unavailable(f"not connected to the hub of mesh {session.name}: {session.link.error or 'connecting'}")
    headers = [("ztm-app", app), ("ztm-service", service), ("ztm-e2e", E2E_VERSION)]
    stream = await conn.open_stream("CONNECT", ep_id, headers)

    async def answered() -> None:
        # No timer of its own: the whole opening runs under `ztm.agent.e2e.HANDSHAKE_TIMEOUT` (6 s, begun earlier),
        # which always fired before this one (OPEN_TIMEOUT, also 6 s) could; one timer less per stream.
        try:
            status, headers = await stream.response()
        except h2.H2Error as exc:
            raise Unavailable(f"stream to {ep_id} failed: {exc}") from None
        if status != 200:
            if early is not None and status != 504:
                early.refused = True  # the hub never spliced the stream; a 504 may come after a late accept
            raise await _error_of(stream, status)
        seen.append(normal_ip(dict(headers).get(SEEN_HEADER)))

    seen: list[str | None] = []
    try:
        opened = await session.e2e.open(stream, ep_id, app, service, answered, early)
        opened.hub_seen = seen[0] if seen else None
        return opened
    except E2EError as exc:
        raise Unavailable(f"end-to-end encryption with {ep_id} failed ({exc.reason}): {exc.message}") from None


async def open_direct_first(
    session: MeshSession,
    ep_id: str,
    address: object,
    app: str,
    service: str,
    on_fallback: Callable[[str], None],
    early: EarlyData | None = None,
) -> E2EStream:
    """A stream to `app` on endpoint `ep_id` for `service`: over a direct channel when `MeshDirect.usable` says so
    (a channel is pooled, or the peer announced a listener at `address`, or this endpoint can punch one, and the
    peer is not backing off), else (or when the channel cannot be used now: `on_fallback` is told why) through the
    hub. The stream's `path` says which. A refusal over the direct channel (ZtmError) is final: the relay would
    refuse too. The one place that decides it for the tunnel (TCP and UDP), the proxy and the files app."""
    announced = address if isinstance(address, str) else None  # None: no listener; a punched channel may serve
    if session.direct.usable(ep_id, announced):
        try:
            return await session.direct.open(ep_id, announced, app, service, early)
        except DirectUnreachable as exc:
            if early is not None and early.maybe_delivered:
                raise Unavailable(
                    f"the direct channel to {ep_id} failed after the first bytes went out: {exc}"
                ) from None
            on_fallback(str(exc))
    return await open_app_stream(session, ep_id, app, service, early)


async def accept_relayed(conn: h2.Connection, stream_id: str, *, wait: bool = True) -> h2.Stream:
    """Take the stream of a `stream` event at the hub (the outer stream, before the end-to-end opening); with
    `wait`, once the hub said yes (else a refusal shows as the stream failing). Without `wait` (the event carried
    the opening's first flight) the accept's HEADERS are held until the first answer on the stream (OK, REFUSE,
    HELLO_R...) and go out with it in one write: the hub splices only once it has the accept, so the initiator hears
    nothing sooner either way (`h2.Connection.open_stream(hold=True)`, bench/RESULTS.md issue 13/18)."""
    stream = await conn.open_stream("CONNECT", "hub", [("ztm-accept", stream_id)], hold=not wait)
    if not wait:
        return stream
    async with asyncio.timeout(OPEN_TIMEOUT):
        status, _ = await stream.response()
    if status != 200:
        raise await _error_of(stream, status)
    return stream


async def refuse_stream(conn: h2.Connection, stream_id: str, reason: str) -> None:
    safe = "".join(c if c.isprintable() else "?" for c in reason)[:300]
    stream = await conn.open_stream(
        "CONNECT", "hub", [("ztm-accept", stream_id), ("ztm-refuse", safe)], end_stream=True
    )
    await asyncio.wait_for(stream.response(), OPEN_TIMEOUT)


async def _error_of(stream: h2.Stream, status: int) -> ZtmError:
    try:
        body = await asyncio.wait_for(stream.read_all(1 << 16), 2.0)
        parsed = json.loads(body) if body else None
    except (h2.H2Error, ValueError, TimeoutError):
        parsed = None
    return from_json(status, parsed)


class MeshApp:
    """Base of every app instance (one per joined mesh). Subclasses set the class attributes and override hooks."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    provider: ClassVar[str] = "ztm"
    version: ClassVar[str] = __version__

    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.running = False
        self.counters: collections.Counter[str] = collections.Counter()
        """`NAME:metric` -> value; exported on the agent's /api/metrics."""

    async def start(self) -> None:
        self.running = True

    async def stop(self) -> None:
        self.running = False

    async def on_online(self) -> None:
        """Called after every (re)connection to the hub: re-announce services here."""

    async def on_stream(self, stream_id: str, caller: Caller, service: str) -> None:
        """A peer asked for a stream (relayed through the hub or over a direct channel: the same end-to-end stream,
        `E2EStream.path` says which); accept with `ctx.accept` or refuse with `ctx.refuse`."""
        await self.ctx.refuse(stream_id, f"app {self.name} takes no streams")

    async def call(self, method: str, params: Any, caller: Caller) -> Any:
        """A relayed call from another endpoint (remote configuration)."""
        raise NotFound(f"app {self.name} does not answer {method!r}")

    async def cli(self, argv: list[str]) -> str:
        """`ztm APP ARGS...` on this endpoint (local API, token-guarded): the text to print."""
        raise NotFound(f"app {self.name} has no command line")

    def view(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "provider": self.provider,
            "version": self.version,
            "mesh": self.ctx.mesh,
            "running": self.running,
            "description": self.description,
        }
