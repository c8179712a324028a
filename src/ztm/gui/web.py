"""aiohttp routes of the GUI on the agent's local API server, and the session half of the API guard.

Served without credentials (after the guard's Host and Origin checks): `/` (a redirect), the app's static files
under `/gui/`, the sign-in link's landing at `/gui/signin` and the exchange of a code for a session at
`/gui/session`. None of them carries data: everything the app shows comes from `/api/` routes, which need the API
token or a GUI session. The session is sent in the `X-Ztm-Session` header by the app's script, which keeps it in its
origin's `localStorage`: a page of another origin (another port of the same host included) can neither read it nor
make the browser send it, unlike a cookie, which browsers send to every port of a host. A custom header cannot be
sent cross-origin without a CORS preflight, which the guard refuses, so it is CSRF-proof as well. WebSocket upgrades
(browsers cannot add headers to them) carry a single-use ticket that a session minted (`?ticket=`).
"""

from __future__ import annotations

import hmac
import json
import logging
from importlib import resources
from importlib.abc import Traversable
from pathlib import PurePosixPath

from aiohttp import web

from ztm.addr import Address
from ztm.errors import BadInput, Forbidden, Unauthorized
from ztm.gui.auth import CODE_TTL, TICKET_TTL, SignIn
from ztm.gui.links import CODES_PATH, SESSION_HEADER, SESSION_PATH, SIGNIN_PATH, TICKETS_PATH, signin_url

log = logging.getLogger("ztm.agent")

TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain",
    ".json": "application/json",
}
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self'; connect-src 'self' ws://{host}; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


def static_files() -> dict[str, Traversable]:
    """Every file of the packaged app, by its path under `/gui/` (only these are ever served: no path walking)."""
    root = resources.files("ztm.gui") / "static"
    found: dict[str, Traversable] = {}

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif PurePosixPath(child.name).suffix in TYPES:
                found[prefix + child.name] = child

    if root.is_dir():
        walk(root, "")
    return found


class Gui:
    """The GUI's routes and sessions for one agent API server."""

    def __init__(self, listen: Address, token: str, signin: SignIn | None = None) -> None:
        self.listen = listen
        self.token = token
        self.signin = signin or SignIn()
        self.files = static_files()

    # ---- the guard's questions ----

    @staticmethod
    def is_public(request: web.Request) -> bool:
        """Paths served without credentials: the redirect, the static app and the sign-in form (never `/api/`)."""
        path = request.path
        return path in ("/", "/gui") or path.startswith("/gui/")

    def session_ok(self, request: web.Request) -> bool:
        """True when the request carries a live session in its `X-Ztm-Session` header, or is a WebSocket upgrade
        with a live ticket (spent by this check)."""
        given = request.headers.get(SESSION_HEADER)
        if given and self.signin.check(given):
            return True
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        ticket = request.query.get("ticket")
        return bool(upgrade and ticket and self.signin.spend_ticket(ticket))

    def startup_message(self) -> str:
        """What the agent prints on stdout at start (never logged: the log is served to remote owners)."""
        link = signin_url(self.listen, self.signin.mint_code())
        return f"GUI sign-in link (works once, for {int(CODE_TTL) // 60} minutes; 'ztm gui' makes another): {link}"

    # ---- routes ----

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/", self.root)
        r.add_get("/gui", self.root)
        r.add_get(SIGNIN_PATH, self.signin_link)
        r.add_post(SESSION_PATH, self.open_session)
        r.add_post("/gui/signout", self.signout)
        r.add_get("/gui/{path:.*}", self.static)
        r.add_post(CODES_PATH, self.mint)
        r.add_post(TICKETS_PATH, self.ticket)

    def _headers(self, request: web.Request) -> dict[str, str]:
        return {
            "Content-Security-Policy": _CSP.format(host=request.host),
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-cache",
        }

    async def root(self, request: web.Request) -> web.StreamResponse:
        return self._redirect(request, "/gui/", 302)

    async def static(self, request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"] or "index.html"
        file = self.files.get(path)
        if file is None:
            raise web.HTTPNotFound()
        ctype = TYPES[PurePosixPath(path).suffix]
        return web.Response(
            body=file.read_bytes(), content_type=ctype, charset="utf-8" if ctype.startswith("text/") else None,
            headers=self._headers(request),
        )  # fmt: skip

    def _redirect(self, request: web.Request, location: str, status: int = 303) -> web.Response:
        return web.Response(status=status, headers={**self._headers(request), "Location": location})

    async def signin_link(self, request: web.Request) -> web.StreamResponse:
        """`GET /gui/signin?code=CODE`: on to the app with the code in the fragment (never sent to a server, nor in a
        Referer); the app's script spends it at `POST /gui/session`. The code is not spent here."""
        code = request.query.get("code", "")
        if not code.replace("-", "").replace("_", "").isalnum() or len(code) > 128:
            return self._redirect(request, "/gui/?signin=expired")
        return self._redirect(request, f"/gui/#signin={code}")

    async def open_session(self, request: web.Request) -> web.StreamResponse:
        """`POST /gui/session` from the app's own page, JSON `{"code": CODE_OR_TOKEN}`: a new session id, for the
        script to keep in its origin's storage and send as `X-Ztm-Session`."""
        if "Origin" not in request.headers:
            raise Forbidden("refused: sign in from the GUI's own page")
        try:
            body = json.loads(await request.read())
        except ValueError:
            raise BadInput('send JSON {"code": "..."}: a sign-in code or the API token') from None
        given = body.get("code") if isinstance(body, dict) else None
        if not isinstance(given, str) or not given.strip():
            raise BadInput('send JSON {"code": "..."}: a sign-in code or the API token')
        given = given.strip()
        session = self.signin.redeem(given)
        if session is None and hmac.compare_digest(given.encode(), self.token.encode()):
            session = self.signin.open_session()
        if session is None:
            raise Unauthorized("that sign-in code or token is not right (a code works once, for 10 minutes)")
        log.info("GUI: a browser signed in")
        return web.Response(
            body=json.dumps({"session": session}).encode(), status=201, content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )  # fmt: skip

    async def signout(self, request: web.Request) -> web.StreamResponse:
        given = request.headers.get(SESSION_HEADER)
        if given:
            self.signin.close(given)
        return web.Response(status=204)

    async def ticket(self, request: web.Request) -> web.Response:
        """`POST /api/gui/ws-tickets` (guarded like every API route): a single-use ticket for one WebSocket."""
        body = {"ticket": self.signin.mint_ticket(), "expires_in": int(TICKET_TTL)}
        return web.Response(body=json.dumps(body).encode(), status=201, content_type="application/json")

    async def mint(self, request: web.Request) -> web.Response:
        """`POST /api/gui/signin-codes` (guarded like every API route): a one-time sign-in code and its link."""
        code = self.signin.mint_code()
        body = {
            "code": code,
            "path": f"{SIGNIN_PATH}?code={code}",
            "url": signin_url(self.listen, code),
            "expires_in": int(CODE_TTL),
        }
        return web.Response(body=json.dumps(body).encode(), status=201, content_type="application/json")
