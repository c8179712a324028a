"""Connections of the PostgreSQL hub store: a few pooled connections, one LISTEN connection, outage and reconnect.

`PgLink.open(url, password)` connects (connect timeout 3 s; every statement bounded by `statement_timeout` on the
server and a deadline here) and turns a failure into one line naming the problem and the fix: the server cannot be
reached, the password is wrong or missing, the database does not exist. The password never appears in a message.

`run(work)` lends a connection to `work` for one call. While the store is away (`available` False) every call raises
`Unavailable("store unavailable, retrying: CAUSE")` at once, without touching the network, so nothing waits on a
dead server; the first call that meets a broken connection (or the LISTEN connection noticing the loss) switches
to that state and starts one background task that reconnects every connection, LISTEN included, with a capped
backoff. Once back, each subscriber gets `("resync", {})`: notifications sent meanwhile are lost, so they reload.

Notifications: one channel (`ztm_mesh`); each carries its sender's random token (`sender`), and one with this
link's own token is not delivered (a hub does not hear itself). (Backend pids would not do: a connection replaced
after a cancelled call frees its pid, which PostgreSQL may give to another hub's new connection, whose notifications
would then be taken for this hub's own and dropped.)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import select
import socket
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import psycopg

from ztm.aio import Backoff, spawn
from ztm.errors import BadInput, Unavailable, ZtmError
from ztm.hub.storeurl import StoreUrl

log = logging.getLogger("ztm.hub")

T = TypeVar("T")
Conn = psycopg.AsyncConnection[tuple[Any, ...]]
Notify = Callable[[str, dict[str, Any]], None]

CHANNEL = "ztm_mesh"
CONNECT_TIMEOUT = 3
STATEMENT_TIMEOUT = 5.0
"""Seconds one statement may run on the server."""
CALL_DEADLINE = STATEMENT_TIMEOUT + 1
"""Seconds one call may take here, whatever the link does: then its connection is shut down under it (a silently
cut link never answers, and cancelling the call would make psycopg wait up to 10 s more trying to cancel the query
on the server through that same dead link)."""
LATE_LOOP = 1.0
"""Seconds past its time at which the deadline's timer counts as run late by a busy event loop (`_Watchdog`)."""
LATE_GRACE = 2.0
"""Seconds more a call gets when the delay at its deadline is this process's own, not the server's (`_Watchdog`)."""
LATE_MAX = 3
"""Times a call's deadline may be extended that way: a store that never answers still fails the call."""
POOL_SIZE = 4
_DEFAULTS = {
    "connect_timeout": str(CONNECT_TIMEOUT),
    "application_name": "ztm-hub",
    # a silently lost link is noticed in ~10 s even on an idle connection (the LISTEN one)
    "keepalives": "1",
    "keepalives_idle": "5",
    "keepalives_interval": "2",
    "keepalives_count": "3",
    "tcp_user_timeout": "10000",
}


class PgLink:
    """The connections of one `PgStore` (see the module docstring)."""

    def __init__(self, url: StoreUrl, password: str | None, *, size: int = POOL_SIZE) -> None:
        self.url = url
        self._password = password or None
        self._size = size
        self._idle: asyncio.Queue[Conn] = asyncio.Queue()
        self._conns: set[Conn] = set()
        self.sender = secrets.token_hex(8)
        """Put into every notification this link sends (`PgStore.notify`), to recognise its own."""
        self._listen: Conn | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._subscribers: list[Notify] = []
        self._closed = False
        self._generation = 0
        """Counts the losses: a replacement connection made for an earlier pool is not added to a newer one."""
        self.available = False
        self.problem = "not connected yet"

    # ------------------------------------------------------------------------------------------------ connecting

    def _kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {**_DEFAULTS, **self.url.connect_kwargs()}
        options = f"-c statement_timeout={int(STATEMENT_TIMEOUT * 1000)} -c idle_in_transaction_session_timeout=10000"
        kw["options"] = f"{options} {kw['options']}" if kw.get("options") else options
        if self._password is not None:
            kw["password"] = self._password
        kw["autocommit"] = True
        return kw

    async def _connect(self) -> Conn:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT + 2):
                conn: Conn = await psycopg.AsyncConnection.connect(**self._kwargs())
        except TimeoutError:
            raise psycopg.OperationalError(f"timeout expired after {CONNECT_TIMEOUT + 2} s") from None
        return conn

    async def connect_all(self) -> None:
        """Open the pool and the LISTEN connection (all or nothing)."""
        conns: list[Conn] = []
        try:
            for _ in range(self._size):
                conns.append(await self._connect())
            listen = await self._connect()
            conns.append(listen)
            await listen.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            for c in conns:
                with contextlib.suppress(Exception):
                    await c.close()
            raise
        self._listen = conns.pop()
        self._conns = set(conns)
        for c in conns:
            self._idle.put_nowait(c)
        self._listen_task = spawn(self._listen_loop(self._listen), name="store-listen")
        self.available = True
        self.problem = ""

    def open_error(self, exc: BaseException) -> ZtmError:
        """A failure to connect at start, as one line naming the problem and the fix."""
        cause = self.cause(exc)
        low = cause.lower()
        where = f"{self.url.host}:{self.url.port}"
        store = self.url.redacted()
        if "password authentication failed" in low or "authentication failed" in low:
            return BadInput(
                f"the store {store} refused the password of user {self.url.user!r}; put the right one in PGPASSWORD, "
                "PGPASSFILE or --store-password-file"
            )
        if "no password supplied" in low:
            return BadInput(
                f"the store {store} needs a password for user {self.url.user!r}; put it in PGPASSWORD, PGPASSFILE "
                "or --store-password-file"
            )
        if "does not exist" in low and "database" in low:
            return BadInput(
                f"the database {self.url.dbname!r} does not exist on {where}; create it first "
                f"(createdb -O {self.url.user} {self.url.dbname}) or fix the --store URL"
            )
        if "role" in low and "does not exist" in low:
            return BadInput(f"the store {store} has no user {self.url.user!r}; create it or fix the --store URL")
        return Unavailable(
            f"cannot reach the store {store}: {cause}; check that PostgreSQL runs at {where} and accepts "
            "connections from this machine"
        )

    def cause(self, exc: BaseException) -> str:
        """One line of an exception's text, never containing the password."""
        text = str(exc) or type(exc).__name__
        line = "; ".join(part.strip() for part in text.splitlines() if part.strip())
        if self._password:
            line = line.replace(self._password, "***")
        return line

    # ------------------------------------------------------------------------------------------------ calls

    async def run(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        """Run `work` on a pooled connection; `Unavailable` at once while the store is away, or when the
        connection breaks under it (then the store is away until reconnected). Other database errors propagate
        (the caller maps e.g. a unique violation)."""
        if not self.available:
            raise self._unavailable()
        try:
            async with asyncio.timeout(CALL_DEADLINE):
                conn = await self._idle.get()
        except TimeoutError:
            raise Unavailable(
                f"store unavailable, retrying: all {self._size} store connections stayed busy for {CALL_DEADLINE:.0f} s"
            ) from None
        keep = False
        aborted: list[bool] = []
        watchdog = _Watchdog(conn, aborted)
        try:
            async with asyncio.timeout(CALL_DEADLINE + LATE_MAX * LATE_GRACE + 2):  # a backstop: the watchdog ends
                # the call before
                result = await work(conn)
            keep = True
            return result
        except TimeoutError:
            self._lost_with(conn, f"no answer within {CALL_DEADLINE:.0f} s")
            raise self._unavailable() from None
        except psycopg.OperationalError as exc:
            if aborted or conn.broken or conn.closed:
                self._lost_with(conn, f"no answer within {CALL_DEADLINE:.0f} s" if aborted else self.cause(exc))
                raise self._unavailable() from None
            keep = True  # e.g. the statement timeout: the connection itself is fine
            raise Unavailable(f"store unavailable, retrying: {self.cause(exc)}") from None
        except Exception:  # a refusal (unique violation, Conflict, ...): rolled back, the connection is fine
            keep = not (aborted or conn.broken or conn.closed)
            raise
        finally:
            watchdog.cancel()
            self._give_back(conn, keep)

    def _give_back(self, conn: Conn, keep: bool) -> None:
        if keep and conn in self._conns and not self._closed:
            self._idle.put_nowait(conn)
            return
        spawn(_close(conn), name="store-close")
        if conn in self._conns:  # lost while the store is up (a call cancelled mid-statement): replace it
            self._conns.discard(conn)
            spawn(self._replace(self._generation), name="store-replace")

    async def _replace(self, generation: int) -> None:
        try:
            conn = await self._connect()
        except (psycopg.Error, OSError) as exc:
            if generation == self._generation:
                self._lost(self.cause(exc))
            return
        if self._closed or generation != self._generation:  # a reconnect made a whole new pool meanwhile
            await _close(conn)
            return
        self._conns.add(conn)
        self._idle.put_nowait(conn)

    def _unavailable(self) -> Unavailable:
        return Unavailable(f"store unavailable, retrying: {self.problem or 'reconnecting'}")

    def _lost_with(self, conn: Conn, cause: str) -> None:
        """A call failed as if the store went away: so it did, if `conn` is of the current pool (a call on a
        connection of a pool already given up must not tear down the one made since)."""
        if conn in self._conns:
            self._lost(cause)

    def _lost(self, cause: str) -> None:
        """The store went away: fail calls fast from now on and reconnect in the background.

        Only idle connections are closed here. A connection a call is using is shut down under it (its socket, as
        the watchdog does) and closed when the call gives it back: closing it under the call freed the libpq
        connection that psycopg's C code was still reading (a hub died of a general protection fault in libc
        during the 10,000-agent ramp, after "consuming input failed: connection pointer is NULL")."""
        if self._closed:
            return
        if self.available:
            log.warning("store %s unavailable: %s; retrying", self.url.redacted(), cause)
        self.available = False
        self.problem = cause
        self._generation += 1
        idle: list[Conn] = []
        while not self._idle.empty():
            idle.append(self._idle.get_nowait())
        busy = self._conns - set(idle)
        self._conns = set()
        listen, self._listen = self._listen, None
        for c in idle:
            spawn(_close(c), name="store-close")
        for c in busy:
            _abort(c, [])  # its call ends at once with an error; `_give_back` closes it (not in the pool any more)
        if listen is not None:
            spawn(self._close_listen(listen, self._listen_task), name="store-close")
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = spawn(self._reconnect(), name="store-reconnect")

    @staticmethod
    async def _close_listen(conn: Conn, task: asyncio.Task[None] | None) -> None:
        """End the LISTEN loop reading `conn` first, then close it (not under the loop's read)."""
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await _close(conn)

    async def _reconnect(self) -> None:
        backoff = Backoff(base=0.2, cap=2.0)
        while not self._closed:
            await asyncio.sleep(backoff.next())
            try:
                await self.connect_all()
            except (psycopg.Error, OSError) as exc:
                self.problem = self.cause(exc)
                continue
            log.warning("store %s available again", self.url.redacted())
            for callback in list(self._subscribers):
                self._deliver(callback, "resync", {})
            return

    # ------------------------------------------------------------------------------------------------ notify

    def subscribe(self, callback: Notify) -> None:
        self._subscribers.append(callback)

    async def _listen_loop(self, conn: Conn) -> None:
        try:
            async for note in conn.notifies():
                self._dispatch(note.payload)
        except psycopg.Error as exc:
            if conn is self._listen:
                self._lost(self.cause(exc))

    def _dispatch(self, text: str) -> None:
        try:
            message = json.loads(text)
            if message.get("sender") == self.sender:
                return
            kind, payload = message["kind"], message["payload"]
            if not isinstance(kind, str) or not isinstance(payload, dict):
                raise TypeError("kind or payload of the wrong type")
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("store notification dropped (not a ztm one: %s)", exc)
            return
        for callback in list(self._subscribers):
            self._deliver(callback, kind, payload)

    @staticmethod
    def _deliver(callback: Notify, kind: str, payload: dict[str, Any]) -> None:
        try:
            callback(kind, payload)
        except Exception:
            log.exception("store notification %s: the subscriber failed", kind)

    # ------------------------------------------------------------------------------------------------ close

    async def close(self) -> None:
        self._closed = True
        self.available = False
        self.problem = "closed"
        tasks = [t for t in (self._reconnect_task, self._listen_task) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conns = [*self._conns, *([self._listen] if self._listen is not None else [])]
        self._conns = set()
        self._listen = None
        for c in conns:
            await _close(c)


class _Watchdog:
    """Ends a call that got no answer within `CALL_DEADLINE` (`_abort`), unless the delay is this process's own: the
    event loop ran the deadline's timer late (it was busy: a crowd of agents arriving), the server's answer is
    already waiting in the socket, or the server is not working on a statement at all (it waits for this side's
    next one). Then the call gets `LATE_GRACE` seconds more, at most `LATE_MAX` times. Without this, a hub whose loop
    stalled for a few seconds took the stall for a store outage, tore down its pool and reloaded everything, which
    stalled it more (the 10,000-agent ramp, bench/RESULTS.md)."""

    __slots__ = ("_aborted", "_conn", "_due", "_handle", "_loop", "extended")

    def __init__(self, conn: Conn, aborted: list[bool]) -> None:
        self._conn, self._aborted, self.extended = conn, aborted, 0
        self._loop = asyncio.get_running_loop()
        self._due = self._loop.time() + CALL_DEADLINE
        self._handle = self._loop.call_at(self._due, self._fire)

    def _fire(self) -> None:
        late = self._loop.time() - self._due > LATE_LOOP
        if self.extended < LATE_MAX and (late or _server_not_silent(self._conn)):
            self.extended += 1
            self._due = self._loop.time() + LATE_GRACE
            self._handle = self._loop.call_at(self._due, self._fire)
            return
        _abort(self._conn, self._aborted)

    def cancel(self) -> None:
        self._handle.cancel()


def _server_not_silent(conn: Conn) -> bool:
    """True when the server is not what the call waits for: its answer is readable in the socket, or it is not
    running a statement (idle, or idle in a transaction: it waits for this side)."""
    try:
        if conn.pgconn.transaction_status != psycopg.pq.TransactionStatus.ACTIVE:
            return True
        readable, _, _ = select.select([conn.pgconn.socket], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return bool(readable)


def _abort(conn: Conn, aborted: list[bool]) -> None:
    """End a call that is past its deadline: shut the connection's socket down (both ways) under it, so the wait
    inside psycopg ends at once with an error (the descriptor itself stays open for the event loop's reader)."""
    aborted.append(True)
    try:
        fd = conn.pgconn.socket
        dup = socket.socket(fileno=os.dup(fd))
    except (OSError, ValueError, psycopg.Error):
        return
    try:
        dup.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        dup.close()


async def _close(conn: Conn) -> None:
    with contextlib.suppress(Exception):
        await conn.close()
