"""The GUI's sign-in and the session half of the API guard, spoken to with raw HTTP (no browser): a real agent.

Covered: `/` and the static app are served without credentials but carry no data; `ztm gui` and the agent's own
start-up link (in `DATA/gui-signin.txt`) are single-use; the link lands on the app with the code in the fragment and
the app's script exchanges it at `POST /gui/session` for a session sent as `X-Ztm-Session` (never a cookie); foreign
Origin/Host are refused with or without a session; a WebSocket upgrade needs a single-use ticket; the token typed into
the sign-in form works, a wrong one does not; signing out ends the session; codes never reach the agent's log. The
`SignIn` bookkeeping (expiry, single use, bounds) is checked with a fake clock.
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import support
from support import Agent, start_agent
from ztm.gui import auth

LINK = re.compile(r"http://127\.0\.0\.1:(\d+)(/gui/signin\?code=([A-Za-z0-9_-]+))")
EVIL = "http://evil.example"
pytestmark = pytest.mark.gui


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes = field(repr=False)

    def json(self) -> object:
        return json.loads(self.body)


def call(
    agent: Agent, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def own(agent: Agent) -> dict[str, str]:
    return {"Origin": f"http://127.0.0.1:{agent.port}", "Content-Type": "application/json"}


def exchange(agent: Agent, code: str, headers: dict[str, str] | None = None) -> Answer:
    """What the app's script does with a code: `POST /gui/session`."""
    return call(agent, "POST", "/gui/session", body=json.dumps({"code": code}).encode(), headers=headers or own(agent))


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    started = start_agent(tmp_path_factory.mktemp("gui-auth"), "a")
    yield started
    started.proc.stop()


def fresh_link(agent: Agent) -> re.Match[str]:
    out = agent.cli("gui").stdout
    match = LINK.search(out)
    assert match and int(match.group(1)) == agent.port, out
    return match


def signed_in(agent: Agent) -> str:
    link = fresh_link(agent)
    landing = call(agent, "GET", link.group(2))
    assert landing.status == 303 and landing.headers["Location"] == f"/gui/#signin={link.group(3)}", landing
    assert "Set-Cookie" not in landing.headers
    answer = exchange(agent, link.group(3))
    assert answer.status == 201, answer
    body = answer.json()
    assert isinstance(body, dict) and isinstance(body["session"], str)
    return body["session"]


def test_the_app_is_served_without_credentials_and_holds_no_data(agent: Agent) -> None:
    root = call(agent, "GET", "/")
    assert root.status == 302 and root.headers["Location"] == "/gui/"
    index = call(agent, "GET", "/gui/")
    assert index.status == 200 and index.headers["Content-Type"].startswith("text/html")
    assert b"/gui/js/main.js" in index.body
    csp = index.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert index.headers["X-Frame-Options"] == "DENY"
    script = call(agent, "GET", "/gui/js/main.js")
    assert script.status == 200 and script.headers["Content-Type"].startswith("text/javascript")
    xterm = call(agent, "GET", "/gui/vendor/xterm/xterm.mjs")
    assert xterm.status == 200 and len(xterm.body) > 100_000
    assert call(agent, "GET", "/gui/vendor/xterm/LICENSE-xterm.txt").status == 200
    for path in ("/gui/nope.js", "/gui/../api/meshes", "/gui/%2e%2e/agent.token", "/gui/js/../../agent.token"):
        answer = call(agent, "GET", path)
        assert answer.status in (401, 404), (path, answer)
        assert agent.token.encode() not in answer.body
    # no API route answers without the token or a session
    for method, path in (("GET", "/api/meshes"), ("GET", "/api/log"), ("POST", "/api/gui/signin-codes")):
        assert call(agent, method, path, body=b"{}" if method == "POST" else None).status == 401, path


def test_the_agent_writes_a_link_at_start_that_works_once(agent: Agent) -> None:
    link_file = agent.data / "gui-signin.txt"
    support.wait_until(link_file.exists, 20, "the agent's sign-in link file")
    match = LINK.search(link_file.read_text())
    assert match, link_file.read_text()
    assert exchange(agent, match.group(3)).status == 201
    again = exchange(agent, match.group(3))
    assert again.status == 401 and b"not right" in again.body
    landing = call(agent, "GET", "/gui/signin?code=<script>")
    assert landing.status == 303 and landing.headers["Location"] == "/gui/?signin=expired"
    log = (agent.data / "agent.log").read_text()
    assert match.group(3) not in log and "a browser signed in" in log


def test_a_session_header_opens_the_api_and_nothing_else_does(agent: Agent) -> None:
    session = signed_in(agent)
    header = {"X-Ztm-Session": session}
    assert call(agent, "GET", "/api/meshes", headers=header).status == 200
    minted = call(agent, "POST", "/api/gui/signin-codes", body=b"{}", headers=header)
    assert minted.status == 201 and b'"code"' in minted.body
    # the same session as a cookie (what any server on the host would have collected): nothing
    for name in ("ztm_session", f"ztm_session_{agent.port}", "session"):
        assert call(agent, "GET", "/api/meshes", headers={"Cookie": f"{name}={session}"}).status == 401
    # foreign Origin or Host: refused even with a live session
    assert call(agent, "GET", "/api/meshes", headers={**header, "Origin": EVIL}).status == 403
    assert call(agent, "POST", "/api/gui/signin-codes", body=b"{}", headers={**header, "Origin": EVIL}).status == 403
    assert call(agent, "GET", "/api/meshes", headers={**header, "Host": f"evil.example:{agent.port}"}).status == 403
    # a WebSocket upgrade: a ticket from a session, once
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": f"http://127.0.0.1:{agent.port}"}  # fmt: skip
    ws = "/api/meshes/m/apps/terminal/endpoints/x/session"
    assert call(agent, "GET", ws, headers=upgrade).status == 401
    made = call(agent, "POST", "/api/gui/ws-tickets", body=b"{}", headers=header)
    assert made.status == 201
    ticket = made.json()["ticket"]  # type: ignore[index]
    assert call(agent, "GET", f"{ws}?ticket={ticket}", headers=upgrade).status != 401  # past the guard (no mesh m)
    assert call(agent, "GET", f"{ws}?ticket={ticket}", headers=upgrade).status == 401  # spent
    assert call(agent, "GET", f"/api/meshes?ticket={ticket}").status == 401  # and never a plain request's key
    # a wrong session: 401
    assert call(agent, "GET", "/api/meshes", headers={"X-Ztm-Session": "x" + session}).status == 401


def test_the_sign_in_form_takes_a_code_or_the_token(agent: Agent) -> None:
    by_token = exchange(agent, agent.token)
    assert by_token.status == 201
    session = by_token.json()["session"]  # type: ignore[index]
    assert call(agent, "GET", "/api/version", headers={"X-Ztm-Session": session}).status == 200
    assert exchange(agent, fresh_link(agent).group(3)).status == 201
    wrong = exchange(agent, "nope" * 10)
    assert wrong.status == 401 and "Set-Cookie" not in wrong.headers
    assert exchange(agent, agent.token, {"Content-Type": "application/json"}).status == 403  # no Origin
    assert exchange(agent, agent.token, {**own(agent), "Origin": EVIL}).status == 403
    assert call(agent, "POST", "/gui/session", body=b"code=x", headers=own(agent)).status == 400


def test_sign_out_ends_the_session(agent: Agent) -> None:
    session = signed_in(agent)
    header = {"X-Ztm-Session": session}
    assert call(agent, "POST", "/gui/signout", headers={**header, **own(agent)}).status == 204
    assert call(agent, "GET", "/api/meshes", headers=header).status == 401


def test_ztm_gui_names_a_missing_agent_plainly(tmp_path: object) -> None:
    port = support.free_port()
    done = support.run([*support.ZTM, "--agent", f"127.0.0.1:{port}", "gui"], env=support.base_env(), check=False)
    assert done.returncode != 0
    assert support.one_line_error(done)


# ------------------------------------------------------------------------------------------------ SignIn unit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_codes_are_single_use_and_expire() -> None:
    clock = Clock()
    signin = auth.SignIn(clock)
    code = signin.mint_code()
    assert len(code) >= 40
    session = signin.redeem(code)
    assert session is not None and signin.check(session)
    assert signin.redeem(code) is None
    late = signin.mint_code()
    clock.now += auth.CODE_TTL + 1
    assert signin.redeem(late) is None
    for bad in ("", "x", "y" * 500, session):
        assert signin.redeem(bad) is None


def test_sessions_expire_when_idle_and_close() -> None:
    clock = Clock()
    signin = auth.SignIn(clock)
    session = signin.open_session()
    clock.now += auth.SESSION_TTL - 1
    assert signin.check(session)  # a use extends it
    clock.now += auth.SESSION_TTL - 1
    assert signin.check(session)
    clock.now += auth.SESSION_TTL + 1
    assert not signin.check(session)
    other = signin.open_session()
    signin.close(other)
    assert not signin.check(other)


def test_the_tables_stay_bounded() -> None:
    signin = auth.SignIn(Clock())
    codes = [signin.mint_code() for _ in range(auth.MAX_CODES + 10)]
    assert len(signin.codes) == auth.MAX_CODES
    assert signin.redeem(codes[0]) is None and signin.redeem(codes[-1]) is not None
    for _ in range(auth.MAX_SESSIONS + 10):
        signin.open_session()
    assert len(signin.sessions) == auth.MAX_SESSIONS
    for _ in range(auth.MAX_TICKETS + 10):
        signin.mint_ticket()
    assert len(signin.tickets) == auth.MAX_TICKETS


def test_tickets_are_single_use_and_expire() -> None:
    clock = Clock()
    signin = auth.SignIn(clock)
    ticket = signin.mint_ticket()
    assert signin.spend_ticket(ticket) and not signin.spend_ticket(ticket)
    late = signin.mint_ticket()
    clock.now += auth.TICKET_TTL + 1
    assert not signin.spend_ticket(late)
    assert not signin.check(signin.mint_ticket())  # a ticket is no session


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_no_guessed_string_redeems_or_passes_as_a_session(guess: str) -> None:
    signin = auth.SignIn(Clock())
    code = signin.mint_code()
    session = signin.open_session()
    if guess not in (code, session):
        assert signin.redeem(guess) is None
        assert not signin.check(guess)
    assert signin.redeem(code) is not None  # the real code still works once after any guesses
