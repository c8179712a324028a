"""`HubLink`: an agent's one long-lived HTTP/2 connection to a hub for one mesh.

It dials out (so NAT and firewalls are no obstacle), verifies the hub's certificate, opens the event stream, sends
heartbeats, answers the hub's relayed calls through a callback, and reconnects by itself with capped, jittered
backoff. A certificate renewal swaps connections make-before-break: the new session is up before the old one closes,
so peers never see this endpoint go offline.

A mesh may have several hubs: the link dials what `ztm.agent.hubpick.plan` chooses from the mesh's hub list (kept by
`MeshSession`) and the permit's bootstraps, best tier first, the tier's addresses raced happy-eyeballs style
(`race`). When the connection drops it dials again at once, leaving out the hub that just failed (failover); when a
strictly better hub appears (a hub of the agent's zone back online) it moves there make-before-break, at most once per
`MIN_DWELL` seconds.
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

from ztm import errors, h2, tcpalive
from ztm.addr import Address
from ztm.agent import hubpick
from ztm.agent.hubpick import Candidate, HubView
from ztm.agent.tls import check_hub
from ztm.aio import Backoff, spawn
from ztm.errors import Timeout, Unavailable, ZtmError
from ztm.hub import interest
from ztm.version import E2E_VERSION

log = logging.getLogger("ztm.agent")

CONNECT_TIMEOUT = 5.0
MAX_EVENT_LINE = 1 << 20
LINK_IDLE, LINK_INTERVAL, LINK_TIMEOUT = 2.0, 1.0, 5.0
"""The kernel's watch on the hub connection (`ztm.tcpalive`): TCP keepalive probes after 2 s of silence, then every
second, and the connection given up `LINK_TIMEOUT` = 5 s after the hub was last heard from (or after data stayed
unacknowledged that long). A silent link loss (machine gone, every packet dropped, no reset) is therefore detected
within 5 s, by the kernel, which answers and sends the probes without waking either process."""
KEEPALIVE_INTERVAL = 15.0
"""Seconds between the HTTP/2 PINGs the link sends the hub (at most: a hub that asks for liveness PINGs every
`heartbeat` seconds, shorter, gets them that often). They catch what the kernel cannot see: a hub process that hangs
(SIGSTOP, a dead loop) while its kernel still answers, detected within KEEPALIVE_INTERVAL + KEEPALIVE_TIMEOUT = 25 s.
A PING costs 17 bytes each way."""
KEEPALIVE_TIMEOUT = 10.0
"""Seconds to wait for a PING's answer before the connection counts as dead, unless other bytes from the hub arrived
meanwhile (then the answer is only queued behind data on a busy link, and the connection is kept: no false alarm).
A hub whose loop is merely slow (CPU-starved) has 10 s to answer before its agents leave it."""
DIAL_STAGGER = 0.25
"""Seconds between starting the dials of one tier's addresses (happy eyeballs): the first that completes wins."""
MIN_DWELL = 10.0
"""Seconds at least between voluntary moves to a better hub, and from a failover to a move, so the link never flaps.
The first connection of a run moves at once (it dialled before it knew the hub list)."""
SHORT_SESSION = 2.0
"""A session shorter than this ends with a backoff pause before the next dial rather than at once."""


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


async def _attempt(
    candidate: Candidate, mesh_id: str, context: ssl.SSLContext
) -> tuple[h2.Connection, str, Candidate, float]:
    started = time.perf_counter()
    conn = await h2.connect(
        candidate.address.host,
        candidate.address.port,
        context,
        timeout=CONNECT_TIMEOUT,
        keepalive=KEEPALIVE_INTERVAL,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
    )
    elapsed = time.perf_counter() - started
    tcpalive.watch(conn.socket, idle=LINK_IDLE, interval=LINK_INTERVAL, timeout=LINK_TIMEOUT)
    try:
        hub_id = check_hub(conn, mesh_id, str(candidate.address))
    except ZtmError:
        conn.close()
        raise
    return conn, hub_id, candidate, elapsed


async def race(
    candidates: list[Candidate], mesh_id: str, context: ssl.SSLContext, *, stagger: float = DIAL_STAGGER
) -> tuple[h2.Connection, str, Candidate, float]:
    """Dial `candidates` happy-eyeballs style: the first at once, each next one `stagger` seconds later or as soon as
    every running dial failed. The first to complete (TCP, TLS, HTTP/2, a hub certificate of `mesh_id`) wins; the
    others are cancelled or closed. Returns (connection, the certificate's hub id, candidate, connect seconds)."""
    problems: list[str] = []
    pending: set[asyncio.Future[tuple[h2.Connection, str, Candidate, float]]] = set()
    dialled: dict[asyncio.Future[tuple[h2.Connection, str, Candidate, float]], Candidate] = {}
    winner: tuple[h2.Connection, str, Candidate, float] | None = None
    index = 0
    try:
        while winner is None:
            if index < len(candidates):
                attempt = asyncio.ensure_future(_attempt(candidates[index], mesh_id, context))
                dialled[attempt] = candidates[index]
                pending.add(attempt)
                index += 1
            if not pending:
                break
            wait = stagger if index < len(candidates) else None
            done, pending = await asyncio.wait(pending, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                exc = finished.exception()
                if exc is None:
                    if winner is None:
                        winner = finished.result()
                    else:
                        finished.result()[0].close()
                elif isinstance(exc, ZtmError):
                    problems.append(exc.message)
                elif isinstance(exc, (h2.H2Error, OSError, TimeoutError)):
                    problems.append(f"{dialled[finished].address}: {exc}")
                else:
                    raise exc
    finally:
        for left in pending:
            left.cancel()
        for outcome in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(outcome, tuple):
                outcome[0].close()
    if winner is None:
        raise Unavailable("cannot reach a hub of this mesh: " + ("; ".join(problems) or "no address to dial"))
    return winner


async def dial(addresses: list[Address], mesh_id: str, context: ssl.SSLContext) -> tuple[h2.Connection, str]:
    """Connect to one of the hub `addresses` that answers as a hub of `mesh_id` (raced, in order); returns
    (connection, hub id)."""
    conn, hub_id, _candidate, _rtt = await race([Candidate(a, None, 0) for a in addresses], mesh_id, context)
    return conn, hub_id


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
        bootstraps: list[Address],
        mesh_id: str,
        context: Callable[[], ssl.SSLContext],
        before_connect: Callable[[], Awaitable[None]],
        on_event: Callable[[dict[str, Any]], None],
        hubs: Callable[[], list[HubView]] = list,
        zone: str = "",
        events: Callable[[], str] = lambda: interest.ALL,
    ) -> None:
        self.label = label
        self.bootstraps = bootstraps
        self.mesh_id = mesh_id
        self._context = context
        self._before_connect = before_connect
        self._on_event = on_event
        self._hubs = hubs
        self._events = events
        self.events = interest.ALL
        """Which `endpoint` events the current connection's event stream gets (`ztm.hub.interest`: `all`, or
        `watched`); set when it opens, and to `all` once the agent widened it (`MeshSession.want_peers`)."""
        self.zone = zone
        self.conn: h2.Connection | None = None
        self.status = "connecting"
        self.error: str | None = None
        self.address: str | None = None
        self.hub_id: str | None = None
        """The id of the hub connected to, from its certificate."""
        self.hub: dict[str, Any] = {}
        self.since: float | None = None
        self.heartbeat = 5.0
        self.beats = True
        """POST /api/heartbeat every `heartbeat` s (hubs that do not count the keepalive PINGs: their hello has no
        `"liveness": "ping"`); otherwise the connection's PINGs, every `heartbeat` s at most, are the liveness."""
        self.credit_warn = h2.connection.CREDIT_WARN
        """Seconds a stream on the hub connection may wait for credit (hub alive) before a warning (`--credit-warn`)."""
        self.last_heartbeat: float | None = None
        self.evicted = False
        self.online = asyncio.Event()
        self._renew = asyncio.Event()
        self._reconsider = asyncio.Event()
        self._stopping = False
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._chosen_at = 0.0
        self.rtts: dict[str, float] = {}
        """The last connect time (TCP + TLS + HTTP/2, seconds) per hub id: the choice among hubs of one tier."""
        self.bytes_sent = 0
        self.bytes_received = 0
        self.connect_failures = 0
        """Dials that failed (refused, TLS handshake refused, not a hub); exported on the agent's metrics."""
        self.failovers = 0
        """Sessions re-established after the hub connection was lost (on another hub, or the same one back)."""
        self.moves = 0
        """Voluntary make-before-break moves to a better hub (the agent's zone, a better tier)."""
        self.last_failover: float | None = None
        """Seconds from the loss of the last lost connection to the next session."""
        self.credit_wait = 0.0  # seconds streams of closed connections waited for the hub's flow-control credit

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

    def reconsider(self) -> None:
        """The hub list changed: move to a strictly better hub if one is online now (after `MIN_DWELL`)."""
        self._reconsider.set()

    async def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        conn = self.conn
        if conn is None or conn.closed:
            raise Unavailable(f"not connected to the hub of mesh {self.label}: {self.error or 'connecting'}")
        return await request(conn, method, path, body, timeout)

    def tier(self) -> int:
        """The choice tier of the hub connected to (`ztm.agent.hubpick`)."""
        return hubpick.current_tier(self._hubs(), self.zone, self.hub_id)

    async def _run(self) -> None:
        backoff = Backoff(0.1, 5.0)
        skip: str | None = None
        lost_at: float | None = None
        while not self._stopping:
            try:
                await self._before_connect()
                conn, events = await self._open(skip=skip)
            except ZtmError as exc:
                skip = None  # the failed hub may be back (restarted on its address): every address again
                self._failed(exc.message)
                await self._pause(60.0 if self.evicted else backoff.next())
                continue
            skip = None
            self._adopt(conn)
            if lost_at is not None:
                self._chosen_at = time.monotonic()  # no move back to the hub that just failed before MIN_DWELL
                self.failovers += 1
                self.last_failover = time.monotonic() - lost_at
                log.info(
                    "mesh %s: back online through hub %s (%s) %.0f ms after the loss",
                    self.label, self.hub_id, self.address, self.last_failover * 1000,
                )  # fmt: skip
                lost_at = None
            while not self._stopping:
                why = await self._serve(conn, events)
                if why == "lost":
                    break
                try:
                    below = hubpick.ZONE_TIERS if why == "renew" else self.tier()
                    new_conn, new_events = await self._open(below=below)
                except ZtmError as exc:
                    if why == "renew":
                        log.warning("mesh %s: reconnecting with the renewed certificate failed: %s", self.label, exc)
                    else:
                        log.info("mesh %s: moving to a better hub failed: %s; staying", self.label, exc.message)
                        self._chosen_at = time.monotonic()
                    continue
                old, old_events, conn, events = conn, events, new_conn, new_events
                self._adopt(conn)
                if why == "move":
                    self.moves += 1
                    self._chosen_at = time.monotonic()
                    log.info("mesh %s: moved to hub %s (%s)", self.label, self.hub_id, self.address)
                old_events.stream.reset()
                spawn(_retire(old), name=f"retire-{self.label}")
            self._account(conn)
            conn.close()
            self.conn = None
            self.online.clear()
            if not self._stopping and not self.evicted:
                self.status = "connecting"
                log.info(
                    "mesh %s: lost the connection to hub %s (%s); reconnecting", self.label, self.hub_id, self.address
                )
                lost_at = time.monotonic()
                skip = self.hub_id
                if self.since is not None and time.time() - self.since < SHORT_SESSION:
                    await self._pause(backoff.next())  # a hub that drops us at once: no tight loop
                else:
                    backoff.reset()

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

    async def _connect(self, *, skip: str | None, below: int) -> tuple[h2.Connection, str]:
        """The best reachable hub: each tier of the plan raced in turn."""
        tiers = hubpick.plan(self._hubs(), self.bootstraps, self.zone, self.rtts, skip=skip, below=below)
        problems: list[str] = []
        context = self._context()
        for candidates in tiers:
            try:
                conn, hub_id, candidate, elapsed = await race(candidates, self.mesh_id, context)
            except Unavailable as exc:
                problems.append(exc.message.removeprefix("cannot reach a hub of this mesh: "))
                continue
            self.rtts[hub_id] = elapsed
            if candidate.hub_id is None:
                self.rtts[str(candidate.address)] = elapsed
            return conn, hub_id
        raise Unavailable("cannot reach a hub of this mesh: " + ("; ".join(problems) or "no better hub to dial"))

    async def _open(
        self, *, skip: str | None = None, below: int = hubpick.ZONE_TIERS
    ) -> tuple[h2.Connection, EventReader]:
        conn, hub_id = await self._connect(skip=skip, below=below)
        conn.credit_warn = self.credit_warn
        try:
            wanted = self._events()
            stream = await conn.open_stream("GET", "/api/events", [("ztm-e2e", E2E_VERSION), (interest.HEADER, wanted)])
            self.events = wanted
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
        self.hub_id = hub_id
        interval = hello.get("heartbeat")
        if isinstance(interval, (int, float)) and 0.05 <= interval <= 3600:
            self.heartbeat = float(interval)
        self.beats = hello.get("liveness") != "ping"  # an older hub wants POST /api/heartbeat
        if not self.beats:
            conn.set_keepalive(min(KEEPALIVE_INTERVAL, self.heartbeat), KEEPALIVE_TIMEOUT)
        self.address = f"{conn.peer_address[0]}:{conn.peer_address[1]}" if conn.peer_address else None
        self._on_event(hello)
        return conn, events

    async def _better(self) -> None:
        """Return once a strictly better hub than the one connected to is listed online and `MIN_DWELL` has passed
        since the last choice (woken by `reconsider`)."""
        while True:
            await self._reconsider.wait()
            self._reconsider.clear()
            while (wait := self._chosen_at + MIN_DWELL - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            current = self.tier()
            if current > 0 and hubpick.plan(self._hubs(), [], self.zone, self.rtts, below=current):
                return

    async def _serve(self, conn: h2.Connection, events: EventReader) -> str:
        """Read events until the connection ends ("lost"), a renewal asks for a new connection ("renew") or a better
        hub is online ("move")."""
        self._renew.clear()
        beats = spawn(self._beat(conn), name=f"heartbeat-{self.label}") if self.beats else None
        reader = asyncio.ensure_future(self._read(events))
        renew = asyncio.ensure_future(self._renew.wait())
        better = asyncio.ensure_future(self._better())
        try:
            await asyncio.wait({reader, renew, better}, return_when=asyncio.FIRST_COMPLETED)
            if reader.done() or conn.closed:
                return "lost"
            return "renew" if renew.done() else "move"
        finally:
            for task in (beats, reader, renew, better):
                if task is not None:
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
