"""aiohttp routes of the GUI on the agent's local API server, and the session-cookie half of the API guard.

Served without credentials (after the guard's Host and Origin checks): `/` (a redirect), the app's static files
under `/gui/`, and the sign-in form at `/gui/signin`. None of them carries data: everything the app shows comes from
`/api/` routes, which need the API token or a session cookie. The cookie is HttpOnly and SameSite=Strict, named per
port (cookies are not isolated by port, and two agents may run on one host), and a cookie-authenticated request that
changes state (any method but GET/HEAD, or a WebSocket upgrade) must carry the agent's own `Origin` (CSRF).
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
from ztm.errors import Forbidden
from ztm.gui.auth import CODE_TTL, SESSION_TTL, SignIn
from ztm.gui.links import CODES_PATH, SIGNIN_PATH, signin_url

log = logging.getLogger("ztm.agent")

SAFE_METHODS = frozenset({"GET", "HEAD"})
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
        self.cookie = f"ztm_session_{listen.port}"
        self.files = static_files()

    # ---- the guard's questions ----

    @staticmethod
    def is_public(request: web.Request) -> bool:
        """Paths served without credentials: the redirect, the static app and the sign-in form (never `/api/`)."""
        path = request.path
        return path in ("/", "/gui") or path.startswith("/gui/")

    def session_ok(self, request: web.Request) -> bool:
        """True when the request carries a live session cookie; raises `Forbidden` for a cookie-authenticated
        state-changing request without the agent's own Origin (the guard has already refused a foreign one)."""
        given = request.cookies.get(self.cookie)
        if not given or not self.signin.check(given):
            return False
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if (request.method not in SAFE_METHODS or upgrade) and "Origin" not in request.headers:
            raise Forbidden(
                "refused: a request that changes state with a GUI session cookie must come from the GUI's own page "
                "(no Origin header); scripts use 'Authorization: Bearer TOKEN' instead"
            )
        return True

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
        r.add_post(SIGNIN_PATH, self.signin_form)
        r.add_post("/gui/signout", self.signout)
        r.add_get("/gui/{path:.*}", self.static)
        r.add_post(CODES_PATH, self.mint)

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

    def _signed_in(self, request: web.Request, session: str) -> web.StreamResponse:
        response = self._redirect(request, "/gui/")
        response.set_cookie(self.cookie, session, path="/", httponly=True, samesite="Strict", max_age=int(SESSION_TTL))
        log.info("GUI: a browser signed in")
        return response

    def _refused(self, request: web.Request, reason: str) -> web.StreamResponse:
        return self._redirect(request, f"/gui/?signin={reason}")

    async def signin_link(self, request: web.Request) -> web.StreamResponse:
        """`GET /gui/signin?code=CODE`: spend the one-time code, set the session cookie, go to the app."""
        session = self.signin.redeem(request.query.get("code", ""))
        if session is None:
            return self._refused(request, "expired")
        return self._signed_in(request, session)

    async def signin_form(self, request: web.Request) -> web.StreamResponse:
        """`POST /gui/signin` from the app's own form: a one-time code, or the API token itself."""
        if "Origin" not in request.headers:
            raise Forbidden("refused: the sign-in form must be posted from the GUI's own page")
        form = await request.post()
        given = str(form.get("code", "")).strip()
        session = self.signin.redeem(given)
        if session is None and given and hmac.compare_digest(given.encode(), self.token.encode()):
            session = self.signin.open_session()
        if session is None:
            return self._refused(request, "wrong")
        return self._signed_in(request, session)

    async def signout(self, request: web.Request) -> web.StreamResponse:
        if "Origin" not in request.headers:
            raise Forbidden("refused: sign out from the GUI's own page")
        given = request.cookies.get(self.cookie)
        if given:
            self.signin.close(given)
        response = self._redirect(request, "/gui/?signin=out")
        response.del_cookie(self.cookie, path="/")
        return response

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
