"""The GUI's sign-in paths and links (stdlib only, so that the `ztm` command imports no web framework)."""

from __future__ import annotations

from ztm.addr import Address

SIGNIN_PATH = "/gui/signin"
CODES_PATH = "/api/gui/signin-codes"
SESSION_PATH = "/gui/session"
TICKETS_PATH = "/api/gui/ws-tickets"
SESSION_HEADER = "X-Ztm-Session"


def signin_url(address: Address, code: str) -> str:
    """The link a person opens: `http://HOST:PORT/gui/signin?code=CODE` (a wildcard host becomes loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(address.host, address.host)
    return f"http://{Address(host, address.port)}{SIGNIN_PATH}?code={code}"
