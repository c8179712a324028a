"""The agent's local REST API, spoken to directly with `http.client`: its guard (token, Origin, Host, no CORS), its
handling of bad bodies, the modes of its secret files, and secrets kept out of logs.

The route list comes from `src/ztm/openapi.yaml`, and the server's own router must list exactly those routes, so a
new route is covered (and refused without a token) without touching this file.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import REPO, Agent, Hub, Proc, start_hub_and_agents

SPEC_FILE = REPO / "src" / "ztm" / "openapi.yaml"
METHODS = ("get", "post", "put", "patch", "delete")
MESH = "m"
EP = "alpha"
MAX_BODY = 1 << 20

EVIL_ORIGIN = "http://evil.example"


def spec_routes() -> list[tuple[str, str]]:
    """(METHOD, path template) of every operation in the OpenAPI file."""
    spec = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    routes = [(m.upper(), path) for path, item in spec["paths"].items() for m in METHODS if m in item]
    assert len(routes) >= 19, f"too few routes in {SPEC_FILE}: {routes}"
    return sorted(routes)


def body_routes() -> list[tuple[str, str]]:
    """The operations that take a JSON body (`requestBody` in the OpenAPI file)."""
    spec = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    return sorted(
        (m.upper(), path)
        for path, item in spec["paths"].items()
        for m in METHODS
        if m in item and "requestBody" in item[m]
    )


def server_routes() -> set[tuple[str, str]]:
    """(METHOD, path template) of every route the agent's aiohttp app registers (HEAD twins left out)."""
    from ztm.addr import Address
    from ztm.agent.api import AgentApi

    api = AgentApi(None, Address("127.0.0.1", 7777), "t" * 43, lambda n: [])  # type: ignore[arg-type]
    app = api.app()
    routes = set()
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        assert path, f"cannot read the path of {route!r}"
        if not path.startswith("/api/"):
            continue  # the web GUI's pages and sign-in form: no data, tested in tests/gui/test_gui_auth.py
        routes.add((route.method, path))
    return routes


def guarded_routes() -> list[tuple[str, str]]:
    """Every route to check the guard on: the documented ones and any the server has beyond them (an undocumented
    route must not escape the guard either; `test_openapi_lists_exactly_the_server_routes` reports it)."""
    routes = set(spec_routes())
    with contextlib.suppress(Exception):  # a broken import is reported by the test that compares the lists
        routes |= server_routes()
    return sorted(routes)


def fill(path: str, mesh: str = MESH, ep: str = EP, user: str = "root") -> str:
    """A concrete path for a template, naming the real mesh, endpoint and user (so a route that skipped the guard
    would really act, and the test would see it); other parameters get a placeholder."""
    path = path.replace("{mesh}", mesh).replace("{ep}", ep).replace("{user}", user).replace("{app}", "tunnel")
    return re.sub(r"\{[^}/]+\}", "zz-none", path)


# ------------------------------------------------------------------------------------------------ raw HTTP client


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]]
    raw: bytes

    def json(self) -> Any:
        return json.loads(self.raw)

    def header_names(self) -> set[str]:
        return {k.lower() for k, _ in self.headers}


def request(
    agent: Agent,
    method: str,
    path: str,
    body: bytes | Iterable[bytes] | None = None,
    headers: dict[str, str] | None = None,
    *,
    token: str | None = "",
    timeout: float = 15.0,
) -> Answer:
    """One HTTP/1.1 request; `token=""` sends the agent's token, None sends no Authorization header.

    A server may answer an oversized body before reading it all and close: a failed send still reads the answer.
    """
    conn = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=timeout)
    hdrs = dict(headers or {})
    if token is not None:
        hdrs.setdefault("Authorization", f"Bearer {token or agent.token}")
    if body is not None:
        hdrs.setdefault("Content-Type", "application/json")
    try:
        chunked = body is not None and not isinstance(body, bytes)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            conn.request(method, path, body=body, headers=hdrs, encode_chunked=chunked)
        resp = conn.getresponse()
        return Answer(resp.status, resp.getheaders(), resp.read())
    finally:
        conn.close()


def assert_error(answer: Answer, status: int | tuple[int, ...], what: str) -> dict[str, Any]:
    statuses = (status,) if isinstance(status, int) else status
    assert answer.status in statuses, f"{what}: expected HTTP {statuses}, got {answer.status}: {answer.raw[:300]!r}"
    try:
        body = answer.json()
    except ValueError:
        raise AssertionError(f"{what}: the error is not JSON: {answer.raw[:300]!r}") from None
    assert isinstance(body, dict), f"{what}: the error is not a JSON object: {body!r}"
    assert isinstance(body.get("error"), str) and body["error"].strip(), f"{what}: no error string: {body!r}"
    assert "\n" not in body["error"], f"{what}: the error is not one line: {body!r}"
    assert isinstance(body.get("code"), str) and body["code"], f"{what}: no error code: {body!r}"
    return body


def assert_no_cors(answer: Answer, what: str) -> None:
    cors = [k for k in answer.header_names() if k.startswith("access-control-")]
    assert not cors, f"{what}: the answer carries CORS headers {cors}"


# -------------------------------------------------------------------------------------------------------- fixtures


@dataclass
class World:
    hub: Hub
    agent: Agent


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("local-api")
    procs: list[Proc] = []
    try:
        hub, agents = start_hub_and_agents(tmp, (EP,))
        agent = agents[EP]
        procs += [hub.proc, agent.proc]
        agent.join(MESH, EP, hub.permit)
        yield World(hub, agent)
    finally:
        for proc in reversed(procs):
            proc.stop()


def assert_healthy(world: World) -> None:
    """The agent still runs, answers, and is still online in its mesh."""
    world.agent.proc.assert_alive()
    answer = request(world.agent, "GET", "/api/version")
    assert answer.status == 200, answer
    meshes = request(world.agent, "GET", "/api/meshes").json()
    assert [(m["name"], m["status"]) for m in meshes] == [(MESH, "online")], meshes


# ---------------------------------------------------------------------------------------------------- route list


def test_openapi_lists_exactly_the_server_routes() -> None:
    documented = set(spec_routes())
    served = server_routes()
    assert served - documented == set(), f"routes served but not in {SPEC_FILE.name}: {sorted(served - documented)}"
    assert documented - served == set(), f"routes in {SPEC_FILE.name} but not served: {sorted(documented - served)}"


def test_the_running_agent_serves_every_documented_route(world: World) -> None:
    """With the token, no documented route answers "no route" (probed on a mesh that does not exist, so that
    nothing changes); an undocumented path does."""
    unknown = request(world.agent, "GET", "/api/no-such-thing")
    assert "no route" in assert_error(unknown, 404, "GET /api/no-such-thing")["error"]
    for method, template in spec_routes():
        path = fill(template, mesh="zz-not-joined", ep="nobody", user="nobody")
        answer = request(world.agent, method, path, b"{}" if method == "POST" else None)
        assert answer.status < 500, f"{method} {path}: HTTP {answer.status} {answer.raw[:300]!r}"
        if answer.status >= 400:
            body = assert_error(answer, answer.status, f"{method} {path}")
            assert "no route" not in body["error"], f"{method} {path} is documented but not served: {body}"


# ---------------------------------------------------------------------------------------------------------- guard


@pytest.mark.parametrize(("method", "template"), guarded_routes(), ids=lambda v: str(v))
def test_every_route_refuses_strangers(world: World, method: str, template: str) -> None:
    agent = world.agent
    path = fill(template)
    body = b"{}" if method == "POST" else None
    port = agent.port
    what = f"{method} {path}"

    wrong = agent.token[:-1] + ("A" if agent.token[-1] != "A" else "B")
    cases: list[tuple[str, Answer, int]] = [
        ("no token", request(agent, method, path, body, token=None), 401),
        ("a wrong token", request(agent, method, path, body, token=wrong), 401),
        (
            "a token with another scheme",
            request(agent, method, path, body, headers={"Authorization": f"Basic {agent.token}"}),
            401,
        ),
        ("a cross-origin request", request(agent, method, path, body, {"Origin": EVIL_ORIGIN}), 403),
        (
            "an Origin on the same port but another host",
            request(agent, method, path, body, {"Origin": f"http://evil.example:{port}"}),
            403,
        ),
        ("a DNS-rebinding Host", request(agent, method, path, body, {"Host": f"evil.example:{port}"}), 403),
        ("a Host of another port", request(agent, method, path, body, {"Host": f"127.0.0.1:{port + 1}"}), 403),
        (
            "a CORS preflight",
            request(
                agent,
                "OPTIONS",
                path,
                None,
                {
                    "Origin": EVIL_ORIGIN,
                    "Access-Control-Request-Method": method,
                    "Access-Control-Request-Headers": "authorization, content-type",
                },
                token=None,
            ),
            403,
        ),
        ("OPTIONS with the token", request(agent, "OPTIONS", path, None), 403),
    ]
    for case, answer, status in cases:
        assert_error(answer, status, f"{what} with {case}")
        assert_no_cors(answer, f"{what} with {case}")

    # The mesh was not left, root was not evicted: the refused requests changed nothing.
    assert_healthy(world)


def test_the_guard_lets_the_agent_s_own_origins_through(world: World) -> None:
    """Positive control for the refusals above: the right token from the agent's own origins works."""
    agent = world.agent
    port = agent.port
    for headers in (
        {},
        {"Host": f"localhost:{port}"},
        {"Host": f"127.0.0.1:{port}", "Origin": f"http://127.0.0.1:{port}"},
        {"Host": f"localhost:{port}", "Origin": f"http://localhost:{port}"},
    ):
        answer = request(agent, "GET", "/api/version", None, headers)
        assert answer.status == 200, (headers, answer)
        assert answer.json().get("api") == 1
        assert_no_cors(answer, f"GET /api/version with {headers}")


# --------------------------------------------------------------------------------------------------------- bodies

HUGE = 2 * MAX_BODY


def _bad_bodies(template: str) -> list[tuple[str, bytes]]:
    generic = [
        ("not JSON", b"this is not json"),
        ("truncated JSON", b'{"as": "x", '),
        ("not UTF-8", b'{"as": "\xff\xfe"}'),
        ("a JSON array", b'[{"as": "x"}]'),
        ("a JSON string", b'"hello"'),
        ("a JSON number", b"42"),
        ("JSON null", b"null"),
    ]
    pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    typed: dict[str, list[Any]] = {
        "/api/meshes/{mesh}": [
            {"as": 5, "permit": {}},
            {"as": ["x"], "permit": {}},
            {"as": "x"},
            {"as": "x", "permit": 5},
            {"as": "x", "permit": "not a permit"},
            {"as": "x", "permit": {}, "labels": "a"},
            {"as": "x", "permit": {}, "labels": [1, 2]},
            {"as": "bad name!", "permit": {}},
        ],
        "/api/meshes/{mesh}/endpoints/{ep}/ping": [
            {"count": "3"},
            {"count": 0},
            {"count": 21},
            {"count": True},
            {"count": 2.5},
            {"count": None},
            {"count": 10**40},
        ],
        "/api/meshes/{mesh}/endpoints/{ep}/labels": [
            {"add": "x"},
            {"add": [1]},
            {"delete": {"a": 1}},
            {"add": ["bad label!"]},
            {"add": ["x" * 64]},
            {"add": [f"l{i}" for i in range(40)]},
        ],
        "/api/meshes/{mesh}/users/{user}/invite": [
            {},
            {"identity": 5},
            {"identity": "not a key"},
            {"identity": pem},
            {"identity": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"},
            {"identity": pem, "days": "y"},
            {"identity": pem, "days": 0},
        ],
        "/api/meshes/{mesh}/apps/tunnel/inbound": [
            {},
            {"tunnel": 5, "listen": ["80"]},
            {"tunnel": "http/x", "listen": ["80"]},
            {"tunnel": "tcp/x"},
            {"tunnel": "tcp/x", "listen": "80"},
            {"tunnel": "tcp/x", "listen": [80]},
            {"tunnel": "tcp/x", "listen": ["0"]},
            {"tunnel": "tcp/x", "listen": ["80"], "exits": ["bad name!"]},
        ],
        "/api/meshes/{mesh}/apps/tunnel/outbound": [
            {},
            {"tunnel": "tcp/x"},
            {"tunnel": "tcp/x", "targets": ["80"]},
            {"tunnel": "tcp/x", "targets": ["a:1"], "users": ["Bob"]},
            {"tunnel": "tcp/x", "targets": ["a:1"], "entrances": [5]},
        ],
        "/api/meshes/{mesh}/apps/proxy/config": [
            {"bogus": 1},
            {"set_listen": 5},
            {"set_listen": "0"},
            {"set_listen": "8080", "unset_listen": True},
            {"unset_listen": "yes"},
            {"add_targets": "example.com"},
            {"add_targets": ["bad name!"]},
            {"add_exclusions": ["10.0.0.0/33"]},
            {"remove_targets": [5]},
        ],
        "/api/meshes/{mesh}/apps/proxy/rules": [
            {},
            {"action": "maybe", "user": "*", "target": "*"},
            {"action": "allow", "user": "Bad!", "target": "*"},
            {"action": "deny", "user": "*", "target": 5},
            {"action": "deny", "user": "*", "target": "*", "at": "first"},
            {"action": "deny", "user": "*", "target": "*", "at": 99},
        ],
        "/api/meshes/{mesh}/root-admin": [
            {},
            {"enabled": "yes"},
            {"enabled": 1},
            {"enabled": True, "root": True},
        ],
        "/api/meshes/{mesh}/apps/terminal/config": [
            {"enabled": "on"},
            {"shell": 5},
            {"shell": "/no/such/shell"},
            {"shell": "bash\nrm -rf /"},
            {"add_users": "bob"},
            {"add_users": ["Bob"]},
            {"del_users": [5]},
            {"users": ["bob"]},
        ],
        "/api/meshes/{mesh}/apps/files/content": [{"path": "/shared/root/x"}, {"any": "json is not file bytes"}],
        "/api/meshes/{mesh}/apps/files/acl": [
            {},
            {"path": 5},
            {"path": "/shared/root/x", "readonly": "bob"},
            {"path": "/shared/root/x", "block": ["Bad!"]},
            {"path": "/shared/root/x", "readonly": ["bob"], "block": ["bob"]},
        ],
        "/api/meshes/{mesh}/apps/files/downloads": [
            {},
            {"path": 5},
            {"path": "relative/x"},
            {"path": "/shared/root/../x"},
            {"path": "/shared/root/x", "rate": "fast"},
        ],
        "/api/meshes/{mesh}/apps/cloud/config": [
            {"local_dir": 5},
            {"local_dir": "relative/dir"},
            {"interval": 0},
            {"interval": "10"},
        ],
        "/api/meshes/{mesh}/apps/cloud/upload": [{}, {"path": 5}, {"path": "../x"}],
        "/api/meshes/{mesh}/apps/cloud/downloads": [{}, {"path": 5}, {"path": "a/../../x"}],
        "/api/meshes/{mesh}/apps/cloud/mirror": [
            {},
            {"path": 5},
            {"path": "docs", "download": "on", "upload": False},
            {"path": "docs/../..", "download": True, "upload": True},
        ],
        "/api/meshes/{mesh}/apps/{app}/cli": [{"argv": 5}, {"argv": [1]}, {"argv": ["x"] * 65}, {"argv": ["y" * 4097]}],
        "/api/meshes/{mesh}/apps/{app}/download": [{"from": 5}, {"sha256": 5}, {"sha256": "xyz"}, {"sha256": "A" * 64}],
        "/api/meshes/{mesh}/policy": [
            {},
            {"text": 5},
            {"text": "{}", "dry_run": "yes"},
            {"text": "{}", "note": 5},
            {"text": "{}", "note": "two\nlines"},
            {"text": "{}", "extra": 1},
        ],
        "/api/meshes/{mesh}/policy/check": [
            {},
            {"from": 5, "to": "alpha", "target": "terminal"},
            {"from": "Bad User", "to": "alpha", "target": "terminal"},
            {"from": "root", "to": "alpha", "target": "nonsense/x"},
            {"from": "root", "to": "no such name!", "target": "terminal"},
        ],
        "/api/meshes/{mesh}/policy/rollback": [{}, {"version": "1"}, {"version": -1}, {"version": True}],
        "/api/meshes/{mesh}/endpoints/{ep}/routes": [
            {},
            {"advertise": "10.20.0.0/16"},
            {"advertise": [1]},
            {"withdraw": {"a": 1}},
            {"advertise": ["10.20.0.5/16"]},
            {"advertise": ["100.64.0.0/16"]},
            {"advertise": ["0.0.0.0/0"]},
            {"advertise": [f"10.{i}.0.0/16" for i in range(65)]},
            {"advertise": ["10.20.0.0/16"], "withdraw": ["10.20.0.0/16"]},
        ],
        "/api/meshes/{mesh}/routes/approve": [
            {},
            {"ep": 5, "cidrs": ["10.20.0.0/16"]},
            {"ep": "alpha", "cidrs": "10.20.0.0/16"},
            {"ep": "alpha", "cidrs": []},
            {"ep": "alpha", "cidrs": ["10.20.0.0/16"], "approved": "yes"},
            {"ep": "alpha", "cidrs": ["nonsense"]},
        ],
        "/api/meshes/{mesh}/endpoints/{ep}/apps/{app}/call": [
            {},
            {"method": 5},
            {"method": "bad method!"},
            {"method": "open_inbound", "params": {"tunnel": 5}},
        ],
    }
    assert template in typed, f"no typed bad bodies for {template}: add some"
    return generic + [(f"field types {json.dumps(v)[:60]}", json.dumps(v).encode()) for v in typed[template]]


def _body_path(template: str) -> str:
    # Join a mesh that is not joined (a conflict would hide the body check); invite a user that does not exist.
    return fill(template, mesh="fresh" if template == "/api/meshes/{mesh}" else MESH, user="bob")


@pytest.mark.parametrize(("method", "template"), body_routes(), ids=lambda v: str(v))
def test_bad_bodies_are_400_never_500(world: World, method: str, template: str) -> None:
    agent = world.agent
    path = _body_path(template)
    for case, body in _bad_bodies(template):
        answer = request(agent, method, path, body)
        assert_error(answer, 400, f"{method} {path} with {case}")

    big = b'{"as": "' + b"x" * HUGE + b'"}'
    assert_error(request(agent, method, path, big), 400, f"{method} {path} with a {len(big)}-byte body")

    def chunks() -> Iterator[bytes]:
        yield b'{"pad": "'
        for _ in range(HUGE // 65536):
            yield b"y" * 65536
        yield b'"}'

    assert_error(request(agent, method, path, chunks()), 400, f"{method} {path} with a chunked {HUGE}-byte body")
    assert_healthy(world)


# --------------------------------------------------------------------------------------------- files and secrets


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_secret_files_are_private(world: World) -> None:
    agent, hub = world.agent, world.hub
    token_files = [agent.data / "agent.token"]
    assert token_files[0].read_text().strip() == agent.token
    # no copy of the token in HOME: the CLI reaches its agent over the local socket, 0600 in the 0700 data directory
    link = agent.home / ".ztm" / "agents" / f"127.0.0.1_{agent.port}.sock"
    assert link.resolve() == (agent.data / "agent.sock").resolve() and link.is_socket()
    assert not list((agent.home / ".ztm" / "agents").glob("*.token"))
    assert _mode(agent.data / "agent.sock") == 0o600
    mesh_dir = agent.data / "meshes" / MESH
    keys = sorted(mesh_dir.glob("*.key"))
    assert len(keys) >= 2, f"expected the user and endpoint keys in {mesh_dir}, found {keys}"
    dbs = [p for p in [*agent.data.glob("ztm.db*"), *hub.data.glob("ztm-hub.db*")] if not p.name.endswith(".lock")]
    assert any(p.name == "ztm.db" for p in dbs) and any(p.name == "ztm-hub.db" for p in dbs), dbs
    private = [*token_files, *keys, *dbs, hub.permit, *sorted((hub.data / "hub-tls").glob("*.key"))]
    wrong = {str(p): oct(_mode(p)) for p in private if _mode(p) != 0o600}
    assert not wrong, f"files that hold secrets are not 0600: {wrong}"
    dirs = [mesh_dir, hub.data / "hub-tls", agent.data, hub.data]
    open_dirs = {str(d): oct(_mode(d)) for d in dirs if _mode(d) & 0o077}
    assert not open_dirs, f"directories of key material are open to others: {open_dirs}"


def _pem_body(pem: str) -> list[str]:
    """The base64 lines of a PEM block: what a leak would show even without the armour."""
    return [ln for ln in pem.strip().splitlines() if ln and not ln.startswith("-----")]


def test_no_token_or_private_key_in_logs(world: World) -> None:
    agent, hub = world.agent, world.hub
    # Exercise what could log secrets: refused tokens, a refused join carrying a private key, an invite.
    request(agent, "GET", "/api/meshes", token="wrong-" + agent.token)
    root = hub.permit_json()
    bad = {"as": "x", "permit": {**root, "ca": "garbage"}}
    assert_error(request(agent, "POST", "/api/meshes/other", json.dumps(bad).encode()), 400, "join with a bad CA")
    identity = request(agent, "GET", "/api/identity").json()["public_key"]
    invited = request(
        agent, "POST", f"/api/meshes/{MESH}/users/carol/invite", json.dumps({"identity": identity}).encode()
    )
    assert invited.status == 200, invited
    assert "privateKey" not in invited.json()["permit"]["agent"], "an invite permit carries a private key"

    secrets = {"the API token": [agent.token], "the root key": _pem_body(root["agent"]["privateKey"])}
    for key_file in sorted((agent.data / "meshes" / MESH).glob("*.key")):
        secrets[str(key_file)] = _pem_body(key_file.read_text())
    secrets["hub TLS key"] = _pem_body((hub.data / "hub-tls" / "hub.key").read_text())

    api_log = request(agent, "GET", "/api/log?lines=2000").json()["lines"]
    hub_log = request(agent, "GET", f"/api/meshes/{MESH}/hub/log?lines=2000").json()["lines"]
    texts = {
        "agent.log": (agent.data / "agent.log").read_text(),
        "hub.log": (hub.data / "hub.log").read_text(),
        "agent output": agent.proc.output(),
        "hub output": hub.proc.output(),
        "GET /api/log": "\n".join(api_log),
        "hub log via the API": "\n".join(hub_log),
    }
    assert texts["agent.log"].strip() and texts["hub.log"].strip(), "the logs are empty: nothing was checked"
    for where, text in texts.items():
        assert "PRIVATE KEY" not in text, f"{where} contains a PEM private key"
        for what, parts in secrets.items():
            leaked = [p for p in parts if len(p) >= 16 and p in text]
            assert not leaked, f"{where} contains {what}: {leaked[0][:12]}..."


# ----------------------------------------------------------------------------------------------------- property


JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
LABEL = re.compile(r"^[A-Za-z0-9_.=:/-]{1,63}$")


def _obj(keys: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=keys)


def _labels_like() -> st.SearchStrategy[Any]:
    label = st.text(alphabet="ab=:/-_. !", min_size=0, max_size=8)
    return st.lists(label, max_size=4) | JSON_VALUES


ROUTE_BODIES: dict[str, st.SearchStrategy[Any]] = {
    "join": _obj(
        {
            "as": st.text(max_size=12) | JSON_VALUES,
            "permit": _obj({"ca": JSON_VALUES, "agent": JSON_VALUES, "bootstraps": JSON_VALUES}) | JSON_VALUES,
            "labels": _labels_like(),
        }
    )
    | JSON_VALUES,
    "ping": _obj({"count": st.integers(-3, 25) | JSON_VALUES}) | JSON_VALUES,
    "labels": _obj({"add": _labels_like(), "delete": _labels_like()}) | JSON_VALUES,
    "invite": _obj({"identity": st.text(max_size=40) | JSON_VALUES, "days": st.integers(-5, 4000) | JSON_VALUES})
    | JSON_VALUES,
}
ROUTE_PATHS = {
    "join": "/api/meshes/hypo",
    "ping": f"/api/meshes/{MESH}/endpoints/{EP}/ping",
    "labels": f"/api/meshes/{MESH}/endpoints/{EP}/labels",
    "invite": f"/api/meshes/{MESH}/users/dave/invite",
}


def _valid(route: str, body: Any) -> bool:
    """Whether the contract allows success for this body (else it must be refused with a 4xx)."""
    if not isinstance(body, dict):
        return False
    if route == "ping":
        count = body.get("count", 1)
        return isinstance(count, int) and not isinstance(count, bool) and 1 <= count <= 20
    if route == "labels":
        for key in ("add", "delete"):
            value = body.get(key)
            if value is None:
                continue
            if not isinstance(value, list) or len(value) > 32:
                return False
            if not all(isinstance(v, str) and LABEL.match(v) for v in value):
                return False
        return True
    return False  # join and invite cannot succeed with random data: no valid permit or public key


def test_random_json_bodies_are_refused_with_4xx_json(world: World) -> None:
    agent = world.agent
    seen: dict[str, set[int]] = {route: set() for route in ROUTE_BODIES}

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        route = data.draw(st.sampled_from(sorted(ROUTE_BODIES)), label="route")
        body = data.draw(ROUTE_BODIES[route], label="body")
        answer = request(agent, "POST", ROUTE_PATHS[route], json.dumps(body).encode())
        seen[route].add(answer.status)
        what = f"POST {ROUTE_PATHS[route]} {json.dumps(body)[:200]}"
        assert answer.status < 500, f"{what}: HTTP {answer.status} {answer.raw[:300]!r}"
        if 200 <= answer.status < 300:
            assert _valid(route, body), f"{what}: accepted (HTTP {answer.status}) a body the contract refuses"
        else:
            assert_error(answer, tuple(range(400, 500)), what)

    check()
    assert all(seen.values()), f"some routes were never exercised: {seen}"
    assert_healthy(world)
    log = (agent.data / "agent.log").read_text()
    assert "Traceback" not in log and "internal error" not in log, "the agent logged an internal error"


def test_a_digit_that_is_not_ascii_is_not_a_number(world: World) -> None:
    """`?lines=²` (found by tests/reliability/test_api_fuzz.py): `isdigit` says yes, `int` raises: a 400, not a 500."""
    for path in ("/api/log?lines=%C2%B2", f"/api/meshes/{MESH}/hub/log?lines=%C2%B2"):
        answer = request(world.agent, "GET", path)
        assert answer.status == 400 and "lines" in answer.json()["error"], (path, answer.status, answer.raw[:200])
