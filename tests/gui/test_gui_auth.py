"""The GUI's sign-in and the session-cookie half of the API guard, spoken to with raw HTTP (no browser): a real agent.

Covered: `/` and the static app are served without credentials but carry no data; `ztm gui` and the agent's own
start-up line print single-use links; the cookie is HttpOnly + SameSite=Strict and named per port; a cookie opens the
API for reads, and for writes only with the agent's own Origin (CSRF); foreign Origin/Host are refused with or
without a cookie; the token typed into the sign-in form works, a wrong one does not; signing out ends the session;
codes never reach the agent's log. The `SignIn` bookkeeping (expiry, single use, bounds) is checked with a fake clock.
"""

from __future__ import annotations

import http.client
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import support
from support import Agent, start_agent
from ztm.gui import auth

LINK = re.compile(r"http://127\.0\.0\.1:(\d+)(/gui/signin\?code=[A-Za-z0-9_-]+)")
EVIL = "http://evil.example"
pytestmark = pytest.mark.gui


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes = field(repr=False)

    def cookie(self, name: str) -> str | None:
        for raw in self.headers.get_all("Set-Cookie") or []:
            jar = SimpleCookie()
            jar.load(raw)
            if name in jar:
                return raw
        return None


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


def session_of(agent: Agent, answer: Answer) -> str:
    raw = answer.cookie(f"ztm_session_{agent.port}")
    assert raw is not None, f"no session cookie in {answer.headers}"
    jar = SimpleCookie()
    jar.load(raw)
    return jar[f"ztm_session_{agent.port}"].value


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    started = start_agent(tmp_path_factory.mktemp("gui-auth"), "a")
    yield started
    started.proc.stop()


def fresh_link(agent: Agent) -> str:
    out = agent.cli("gui").stdout
    match = LINK.search(out)
    assert match and int(match.group(1)) == agent.port, out
    return match.group(2)


def signed_in(agent: Agent) -> str:
    answer = call(agent, "GET", fresh_link(agent))
    assert answer.status == 303 and answer.headers["Location"] == "/gui/", answer
    return session_of(agent, answer)


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


def test_the_agent_prints_a_link_at_start_that_works_once(agent: Agent) -> None:
    match = agent.proc.wait_for_output(LINK.pattern, timeout=20)
    first = call(agent, "GET", match.group(2))
    assert first.status == 303 and first.headers["Location"] == "/gui/"
    raw = first.cookie(f"ztm_session_{agent.port}")
    assert raw is not None
    attrs = {a.strip().split("=")[0].lower() for a in raw.split(";")}
    assert {"httponly", "path", "samesite"} <= attrs and "SameSite=Strict" in raw
    again = call(agent, "GET", match.group(2))
    assert again.status == 303 and again.headers["Location"] == "/gui/?signin=expired"
    assert again.cookie(f"ztm_session_{agent.port}") is None
    code = match.group(2).split("code=")[1]
    log = (agent.data / "agent.log").read_text()
    assert code not in log and "a browser signed in" in log


def test_a_session_cookie_opens_the_api_and_writes_need_the_own_origin(agent: Agent) -> None:
    session = signed_in(agent)
    cookie = {"Cookie": f"ztm_session_{agent.port}={session}"}
    own = {"Origin": f"http://127.0.0.1:{agent.port}"}
    assert call(agent, "GET", "/api/meshes", headers=cookie).status == 200
    # a state-changing request with the cookie but no Origin: refused (CSRF), and nothing is minted
    refused = call(agent, "POST", "/api/gui/signin-codes", body=b"{}", headers=cookie)
    assert refused.status == 403 and b"Origin" in refused.body
    minted = call(agent, "POST", "/api/gui/signin-codes", body=b"{}", headers={**cookie, **own})
    assert minted.status == 201 and b'"code"' in minted.body
    # foreign Origin or Host: refused even with a live cookie
    assert call(agent, "GET", "/api/meshes", headers={**cookie, "Origin": EVIL}).status == 403
    assert call(agent, "POST", "/api/gui/signin-codes", body=b"{}", headers={**cookie, "Origin": EVIL}).status == 403
    host = {"Host": f"evil.example:{agent.port}"}
    assert call(agent, "GET", "/api/meshes", headers={**cookie, **host}).status == 403
    # a WebSocket upgrade with the cookie needs the Origin too
    upgrade = {**cookie, "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}  # fmt: skip
    assert call(agent, "GET", "/api/meshes/m/apps/terminal/endpoints/x/session", headers=upgrade).status == 403
    # wrong cookie, or the right value under another port's name: 401
    assert call(agent, "GET", "/api/meshes", headers={"Cookie": f"ztm_session_{agent.port}=x{session}"}).status == 401
    assert (
        call(agent, "GET", "/api/meshes", headers={"Cookie": f"ztm_session_{agent.port + 1}={session}"}).status == 401
    )


def test_the_sign_in_form_takes_a_code_or_the_token(agent: Agent) -> None:
    form = {"Content-Type": "application/x-www-form-urlencoded", "Origin": f"http://127.0.0.1:{agent.port}"}
    by_token = call(agent, "POST", "/gui/signin", body=urlencode({"code": agent.token}).encode(), headers=form)
    assert by_token.status == 303 and by_token.headers["Location"] == "/gui/"
    assert (
        call(
            agent, "GET", "/api/version", headers={"Cookie": f"ztm_session_{agent.port}={session_of(agent, by_token)}"}
        ).status
        == 200
    )
    code = fresh_link(agent).split("code=")[1]
    by_code = call(agent, "POST", "/gui/signin", body=urlencode({"code": code}).encode(), headers=form)
    assert by_code.status == 303 and by_code.cookie(f"ztm_session_{agent.port}") is not None
    wrong = call(agent, "POST", "/gui/signin", body=urlencode({"code": "nope" * 10}).encode(), headers=form)
    assert wrong.status == 303 and wrong.headers["Location"] == "/gui/?signin=wrong"
    assert wrong.cookie(f"ztm_session_{agent.port}") is None
    no_origin = {"Content-Type": "application/x-www-form-urlencoded"}
    assert (
        call(agent, "POST", "/gui/signin", body=urlencode({"code": agent.token}).encode(), headers=no_origin).status
        == 403
    )
    evil = {**form, "Origin": EVIL}
    assert (
        call(agent, "POST", "/gui/signin", body=urlencode({"code": agent.token}).encode(), headers=evil).status == 403
    )


def test_sign_out_ends_the_session(agent: Agent) -> None:
    session = signed_in(agent)
    cookie = {"Cookie": f"ztm_session_{agent.port}={session}"}
    own = {"Origin": f"http://127.0.0.1:{agent.port}"}
    assert call(agent, "POST", "/gui/signout", headers=cookie).status == 403  # no Origin: not from the GUI
    out = call(agent, "POST", "/gui/signout", headers={**cookie, **own})
    assert out.status == 303 and out.headers["Location"] == "/gui/?signin=out"
    assert "Max-Age=0" in (out.cookie(f"ztm_session_{agent.port}") or "")
    assert call(agent, "GET", "/api/meshes", headers=cookie).status == 401


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
