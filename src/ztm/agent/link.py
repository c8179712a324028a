"""`HubLink`: an agent's one long-lived HTTP/2 connection to a hub for one mesh.

It dials out (so NAT and firewalls are no obstacle), verifies the hub's certificate, opens the event stream, sends
heartbeats, answers the hub's relayed calls through a callback, and reconnects by itself with capped, jittered
backoff. A certificate renewal swaps connections make-before-break: the new session is up before the old one closes,
so peers never see this endpoint go offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from ztm import errors, h2
from ztm.addr import Address
from ztm.agent.tls import check_hub
from ztm.aio import Backoff, spawn
from ztm.errors import Timeout, Unavailable, ZtmError
from ztm.version import E2E_VERSION

log = logging.getLogger("ztm.agent")

CONNECT_TIMEOUT = 5.0
MAX_EVENT_LINE = 1 << 20


class EventReader:
    """Splits the hub's event stream into JSON objects, one per line."""

    def __init__(self, stream: h2.Stream) -> None:
        self.stream = stream
        self._buf = b""

    async def next(self) -> dict[str, Any] | None:
        while b"\n" not in self._buf:
            chunk = await self.stream.read()
            if not chunk:
                return None
            self._buf += chunk
            if len(self._buf) > MAX_EVENT_LINE:
                raise Unavailable("the hub sent an event line over 1 MiB")
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            event = json.loads(line)
        except ValueError:
            raise Unavailable("the hub sent an event that is not JSON") from None
        if not isinstance(event, dict):
            raise Unavailable("the hub sent an event that is not a JSON object")
        return event


async def request(conn: h2.Connection, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
    """One JSON call on a hub connection; hub errors come back as the matching `ZtmError`."""
    data = json.dumps(body).encode() if body is not None else None
    headers = [("content-type", "application/json")] if data is not None else []
    try:
        status, _headers, raw = await conn.request(method, path, body=data, headers=headers, timeout=timeout)
    except h2.NoAnswer as exc:
        raise Timeout(f"hub call {path} failed: {exc}") from None
    except h2.H2Error as exc:
        raise Unavailable(f"hub call {path} failed: {exc}") from None
    try:
        parsed = json.loads(raw) if raw else None
    except ValueError:
        raise Unavailable(f"the hub answered {path} with something that is not JSON (HTTP {status})") from None
    if status >= 400:
        raise errors.from_json(status, parsed)
    return parsed


async def dial(addresses: list[Address], mesh_id: str, context: ssl.SSLContext) -> tuple[h2.Connection, str]:
    """Connect to the first hub address that answers as a hub of `mesh_id`; returns (connection, hub id)."""
    problems: list[str] = []
    for address in addresses:
        try:
            conn = await h2.connect(
                address.host, address.port, context, timeout=CONNECT_TIMEOUT, keepalive=15.0, keepalive_timeout=10.0
            )
        except h2.H2Error as exc:
            problems.append(f"{address}: {exc}")
            continue
        try:
            hub_id = check_hub(conn, mesh_id, str(address))
        except ZtmError as exc:
            conn.close()
            problems.append(exc.message)
            continue
        return conn, hub_id
    raise Unavailable("cannot reach a hub of this mesh: " + "; ".join(problems))


async def _retire(conn: h2.Connection) -> None:
    """Close a replaced connection once every stream still running on it ended: calls finish, and tunnelled
    connections (an SSH session, a database link) live on until their own end rather than being cut at renewal."""
    while conn.open_streams > 0 and not conn.closed:
        await asyncio.sleep(0.25)
    conn.close()


class HubLink:
    def __init__(
        self,
        *,
        label: str,
        addresses: list[Address],
        mesh_id: str,
        context: Callable[[], ssl.SSLContext],
        before_connect: Callable[[], Awaitable[None]],
        on_event: Callable[[dict[str, Any]], None],
    ) -> None:
        self.label = label
        self.addresses = addresses
        self.mesh_id = mesh_id
        self._context = context
        self._before_connect = before_connect
        self._on_event = on_event
        self.conn: h2.Connection | None = None
        self.status = "connecting"
        self.error: str | None = None
        self.address: str | None = None
        self.hub: dict[str, Any] = {}
        self.since: float | None = None
        self.heartbeat = 5.0
        self.last_heartbeat: float | None = None
        self.evicted = False
        self.online = asyncio.Event()
        self._renew = asyncio.Event()
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.bytes_sent = 0
        self.bytes_received = 0
        self.connect_failures = 0
        self.credit_wait = 0.0  # seconds streams of closed connections waited for the hub's flow-control credit
        """Dials that failed (refused, TLS handshake refused, not a hub); exported on the agent's metrics."""

    def start(self) -> None:
        self._task = spawn(self._run(), name=f"hub-link-{self.label}")

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self.conn is not None:
            self.conn.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def renew_now(self) -> None:
        """Reconnect with the (new) certificate without going offline."""
        self._renew.set()

    async def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        conn = self.conn
        if conn is None or conn.closed:
            raise Unavailable(f"not connected to the hub of mesh {self.label}: {self.error or 'connecting'}")
        return await request(conn, method, path, body, timeout)

    async def _run(self) -> None:
        backoff = Backoff(0.1, 5.0)
        while not self._stopping:
            try:
                await self._before_connect()
                conn, events = await self._open()
            except ZtmError as exc:
                self._failed(exc.message)
                await self._pause(60.0 if self.evicted else backoff.next())
                continue
            backoff.reset()
            self._adopt(conn)
            while not self._stopping:
                renewed = await self._serve(conn, events)
                if not renewed:
                    break
                try:
                    new_conn, new_events = await self._open()
                except ZtmError as exc:
                    log.warning("mesh %s: reconnecting with the renewed certificate failed: %s", self.label, exc)
                    continue
                old, old_events, conn, events = conn, events, new_conn, new_events
                self._adopt(conn)
                old_events.stream.reset()
                spawn(_retire(old), name=f"retire-{self.label}")
            self._account(conn)
            conn.close()
            self.conn = None
            self.online.clear()
            if not self._stopping and not self.evicted:
                self.status = "connecting"
                log.info("mesh %s: lost the hub connection; reconnecting", self.label)

    def _adopt(self, conn: h2.Connection) -> None:
        if self.conn is not None and self.conn is not conn:
            self._account(self.conn)
        self.conn = conn
        self.status = "online"
        self.error = None
        self.since = time.time()
        self.online.set()

    def _account(self, conn: h2.Connection) -> None:
        self.bytes_sent += conn.bytes_sent
        self.bytes_received += conn.bytes_received
        self.credit_wait += conn.credit_wait

    def _failed(self, message: str) -> None:
        self.connect_failures += 1
        self.status = "error"
        if not self.evicted:
            self.error = message
        log.warning("mesh %s: %s", self.label, message)

    async def _pause(self, seconds: float) -> None:
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _open(self) -> tuple[h2.Connection, EventReader]:
        conn, _hub_id = await dial(self.addresses, self.mesh_id, self._context())
        try:
            stream = await conn.open_stream("GET", "/api/events", [("ztm-e2e", E2E_VERSION)])
            status, _ = await asyncio.wait_for(stream.response(), CONNECT_TIMEOUT)
            if status != 200:
                body = await stream.read_all(1 << 16)
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                raise errors.from_json(status, parsed)
            events = EventReader(stream)
            hello = await asyncio.wait_for(events.next(), CONNECT_TIMEOUT)
            if hello is None or hello.get("type") != "hello":
                raise Unavailable("the hub closed the event stream before greeting")
        except (h2.H2Error, TimeoutError) as exc:
            conn.close()
            raise Unavailable(f"the hub did not open an event stream: {exc or 'timeout'}") from None
        except BaseException:
            conn.close()
            raise
        hub = hello.get("hub")
        self.hub = hub if isinstance(hub, dict) else {}
        interval = hello.get("heartbeat")
        if isinstance(interval, (int, float)) and 0.05 <= interval <= 3600:
            self.heartbeat = float(interval)
        self.address = f"{conn.peer_address[0]}:{conn.peer_address[1]}" if conn.peer_address else None
        self._on_event(hello)
        return conn, events

    async def _serve(self, conn: h2.Connection, events: EventReader) -> bool:
        """Read events until the connection ends (False) or a renewal asks for a new connection (True)."""
        self._renew.clear()
        beats = spawn(self._beat(conn), name=f"heartbeat-{self.label}")
        reader = asyncio.ensure_future(self._read(events))
        renew = asyncio.ensure_future(self._renew.wait())
        try:
            await asyncio.wait({reader, renew}, return_when=asyncio.FIRST_COMPLETED)
            return renew.done() and not reader.done()
        finally:
            for task in (beats, reader, renew):
                task.cancel()

    async def _read(self, events: EventReader) -> None:
        with contextlib.suppress(h2.H2Error, ZtmError):
            while (event := await events.next()) is not None:
                if event.get("type") == "evicted":
                    self.evicted = True
                    self.status = "error"
                    self.error = "evicted: root evicted this user from the mesh; ask root for a new permit"
                    log.warning("mesh %s: %s", self.label, self.error)
                self._on_event(event)

    async def _beat(self, conn: h2.Connection) -> None:
        while not conn.closed:
            await asyncio.sleep(self.heartbeat)
            received = conn.bytes_received
            try:
                await request(conn, "POST", "/api/heartbeat", {}, timeout=max(2.0, 2 * self.heartbeat))
                self.last_heartbeat = time.time()
            except Timeout:
                if conn.closed or conn.bytes_received == received:
                    log.warning("mesh %s: no heartbeat answer and nothing else from the hub; reconnecting", self.label)
                    conn.close()
                    return
                # The hub is sending: its answer waits behind tunnel data on a slow link. Not a dead connection.
                log.info("mesh %s: heartbeat answer late (the link is busy); keeping the connection", self.label)
            except ZtmError as exc:
                log.warning("mesh %s: heartbeat failed (%s); reconnecting", self.label, exc.message)
                conn.close()
                return
