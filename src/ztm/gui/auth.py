"""Sign-in codes and browser sessions of the GUI (no I/O; the clock is injectable for tests).

A sign-in code is minted by someone the agent's API trusts (`POST /api/gui/signin-codes`, or the agent itself at
start), is valid once and for `CODE_TTL` seconds, and is exchanged at `POST /gui/session` for a session id that the
GUI's script keeps in its origin's `localStorage` and sends as a header (never a cookie: cookies ignore ports, so
every web server on the host would receive one). A WebSocket, which cannot carry headers from a browser, is opened
with a ticket: single-use, `TICKET_TTL` seconds, minted for a live session. Sessions live in memory only: restarting
the agent signs every browser out. Codes, session ids and tickets are 256-bit random strings compared in constant
time; none is ever logged.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

CODE_TTL = 600.0
"""Seconds a sign-in code stays valid (it is single-use as well)."""
SESSION_TTL = 7 * 24 * 3600.0
"""Seconds a browser session lasts after its last use."""
TICKET_TTL = 30.0
"""Seconds a WebSocket ticket stays valid (it is single-use as well)."""
MAX_CODES = 64
MAX_SESSIONS = 256
MAX_TICKETS = 64


@dataclass
class SignIn:
    """Pending one-time codes and live sessions, both with expiry times on `clock`."""

    clock: Callable[[], float] = time.monotonic
    codes: dict[str, float] = field(default_factory=dict)
    sessions: dict[str, float] = field(default_factory=dict)
    tickets: dict[str, float] = field(default_factory=dict)

    def mint_code(self) -> str:
        """A fresh single-use code valid for `CODE_TTL` seconds (the oldest pending code goes past `MAX_CODES`)."""
        now = self.clock()
        self._sweep(now)
        while len(self.codes) >= MAX_CODES:
            del self.codes[min(self.codes, key=self.codes.__getitem__)]
        code = secrets.token_urlsafe(32)
        self.codes[code] = now + CODE_TTL
        return code

    def redeem(self, code: str) -> str | None:
        """Spend `code` and return a new session id, or None if the code is unknown, used or expired."""
        now = self.clock()
        self._sweep(now)
        found = _lookup(self.codes, code)
        if found is None:
            return None
        del self.codes[found]
        return self.open_session()

    def open_session(self) -> str:
        """A new session id (also used when the API token itself is typed into the sign-in form)."""
        now = self.clock()
        self._sweep(now)
        while len(self.sessions) >= MAX_SESSIONS:
            del self.sessions[min(self.sessions, key=self.sessions.__getitem__)]
        session = secrets.token_urlsafe(32)
        self.sessions[session] = now + SESSION_TTL
        return session

    def check(self, session: str) -> bool:
        """True for a live session id; each use extends its life."""
        now = self.clock()
        self._sweep(now)
        found = _lookup(self.sessions, session)
        if found is None:
            return False
        self.sessions[found] = now + SESSION_TTL
        return True

    def mint_ticket(self) -> str:
        """A single-use WebSocket ticket valid for `TICKET_TTL` seconds (for a caller already checked)."""
        now = self.clock()
        self._sweep(now)
        while len(self.tickets) >= MAX_TICKETS:
            del self.tickets[min(self.tickets, key=self.tickets.__getitem__)]
        ticket = secrets.token_urlsafe(32)
        self.tickets[ticket] = now + TICKET_TTL
        return ticket

    def spend_ticket(self, ticket: str) -> bool:
        """True (once) for a live ticket."""
        self._sweep(self.clock())
        found = _lookup(self.tickets, ticket)
        if found is None:
            return False
        del self.tickets[found]
        return True

    def close(self, session: str) -> None:
        found = _lookup(self.sessions, session)
        if found is not None:
            del self.sessions[found]

    def _sweep(self, now: float) -> None:
        for table in (self.codes, self.sessions, self.tickets):
            for key in [k for k, expires in table.items() if expires <= now]:
                del table[key]


def _lookup(table: dict[str, float], given: str) -> str | None:
    """The key of `table` equal to `given`, compared in constant time per key (the tables are small)."""
    if not given or len(given) > 128:
        return None
    wanted = given.encode()
    found = None
    for key in table:
        if hmac.compare_digest(key.encode(), wanted):
            found = key
    return found
