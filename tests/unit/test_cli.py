"""The `ztm` command line against a fake agent API (stdlib `http.server` on 127.0.0.1, a free port, in a thread).

Every test runs `main(argv)` in-process with HOME in a temporary directory, so the real ~/.ztm is never touched.
"""

from __future__ import annotations

import json
import os
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from ports import free_port
from ztm.addr import Address
from ztm.cli import commands
from ztm.cli.client import socket_files
from ztm.cli.main import main
from ztm.config import agents_registry_dir, socket_link_name
from ztm.e2e import SUITE

TOKEN = "secret-token-123"
PEM = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"


def _ago(seconds: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def mesh(name: str = "m1", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "mesh_id": f"id-{name}",
        "ep_id": "ep-alice",
        "ep_name": "alice",
        "user": "root",
        "hubs": ["1.2.3.4:8888"],
        "status": "online",
        "error": None,
        "joined_at": _ago(3600),
        "connected_since": _ago(60),
        "cert_expires": "2099-01-01T00:00:00Z",
        "zone": "",
        "mesh_range": "100.64.0.0/10",
        "mesh_range6": "fd12:3456:789a::/48",
        **extra,
    }


def endpoint(name: str, *, local: bool = False, online: bool = True, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"ep-{name}",
        "name": name,
        "user": "root" if local else name,
        "online": online,
        "labels": ["site=paris", "gpu"] if local else [],
        "version": "0.2.0",
        "hostname": f"{name}-pc",
        "ip": "10.0.0.1" if local else "10.0.0.2",
        "port": 40000,
        "mesh_ip": "100.64.0.2" if local else "100.64.0.3",
        "first_seen": _ago(7200),
        "last_seen": _ago(3),
        "heartbeat": _ago(3),
        "is_local": local,
        **extra,
    }


HUB = {
    "id": "0123456789abcdef",
    "zone": "zone-b",
    "addresses": ["1.2.3.4:8888", "[::1]:8888"],
    "online": True,
    "endpoints": 7,
    "connect_ms": 3.5,
    "hub_id": "0123456789abcdef",
    "address": "1.2.3.4:8888",
    "connected": True,
    "status": "connected",
    "error": None,
    "rtt_ms": 1.234,
    "since": _ago(120),
    "version": "0.2.0",
    "bytes_sent": 2048,
    "bytes_received": 3 * 1024 * 1024,
}


def default_routes() -> dict[tuple[str, str], Any]:
    m = "/api/meshes/m1"
    return {
        ("GET", "/api/version"): {"ztm": "0.2.0", "api": 1},
        ("GET", "/api/identity"): {"public_key": PEM},
        ("GET", "/api/meshes"): [mesh()],
        ("GET", m): mesh(),
        ("POST", "/api/meshes/new"): (201, mesh("new", ep_id="ep-new", ep_name="home")),
        ("DELETE", m): (204, None),
        ("GET", f"{m}/hubs"): [HUB],
        ("GET", f"{m}/endpoints"): [
            endpoint("bob", online=False, path="punched", path_via=None, path_rtt_ms=0.42),
            endpoint("alice", local=True, path=None, path_via=None, path_rtt_ms=None),
            endpoint("carol", path="relay", path_via="hub-1", path_rtt_ms=None),
        ],
        ("GET", f"{m}/endpoints/bob"): endpoint("bob", online=False),
        ("GET", f"{m}/endpoints/ep-alice"): endpoint("alice", local=True),
        ("GET", f"{m}/endpoints/nobody"): (404, {"error": "no such endpoint", "code": "not_found"}),
        ("POST", f"{m}/endpoints/bob/ping"): {"ep": "ep-bob", "rtt_ms": [1.5, 2.5]},
        ("POST", f"{m}/endpoints/ep-bob/ping"): {"ep": "ep-bob", "rtt_ms": [1.5]},
        ("POST", f"{m}/endpoints/ep-alice/labels"): endpoint("alice", local=True, labels=["site=paris", "x"]),
        ("POST", f"{m}/endpoints/bob/labels"): endpoint("bob", labels=[]),
        ("GET", f"{m}/endpoints/bob/log"): {"lines": ["bob line 1", "bob line 2"]},
        ("GET", f"{m}/endpoints/ep-alice/log"): {"lines": ["alice line"]},
        ("GET", f"{m}/stats"): [
            {
                "ep_id": "hub",
                "ep_name": None,
                "bytes_sent": 512,
                "bytes_received": 1536,
                "send_rate": 0,
                "receive_rate": 10.0,
                "streams": 1,
                "encryption": "TLS 1.3 to the hub",
            },
            {
                "ep_id": "ep-bob",
                "ep_name": "bob",
                "bytes_sent": 5 * 1024 * 1024,
                "bytes_received": 2048,
                "send_rate": 1024 * 1024,
                "receive_rate": 2048,
                "streams": 3,
                "encryption": "e2e X25519-ECDSA-P256-AES256GCM",
            },
        ],
        ("GET", f"{m}/users"): [
            {"name": "root", "evicted": False, "evicted_at": None, "endpoints": 1, "created": None}
        ],
        ("POST", f"{m}/users/carol/invite"): {"permit": {"ca": "CERT", "hubs": ["1.2.3.4:8888"], "user": "carol"}},
        ("POST", f"{m}/users/carol/evict"): {
            "name": "carol",
            "evicted": True,
            "evicted_at": _ago(0),
            "endpoints": 2,
            "created": None,
        },
        ("GET", f"{m}/hub/log"): {"lines": ["hub started", "\x1b[31mred\x1b[0m"]},
        ("GET", "/api/apps"): [
            {"name": "tunnel", "provider": "ztm", "version": "1.0", "mesh": "m1", "running": True, "description": ""},
            {"name": "proxy", "provider": "ztm", "version": "1.0", "mesh": "m1", "running": False, "description": ""},
        ],
        ("GET", "/api/log"): {"lines": ["agent line"]},
    }


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class Raw:
    """A canned answer that is not JSON."""

    def __init__(self, data: bytes, status: int = 200, content_type: str = "text/html") -> None:
        self.data, self.status, self.content_type = data, status, content_type


class FakeAgent:
    """The agent API, canned: `routes[(METHOD, PATH)]` is JSON, `(status, JSON)`, a `Raw`, or a callable."""

    def __init__(self) -> None:
        self.routes: dict[tuple[str, str], Any] = default_routes()
        self.requests: list[Request] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stalls

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                fake.requests.append(Request(self.command, url.path, parse_qs(url.query), dict(self.headers), body))
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self._send(401, {"error": "bad or missing API token", "code": "unauthorized"})
                    return
                answer = fake.routes.get((self.command, url.path))
                if callable(answer):
                    answer = answer(fake.requests[-1])
                if answer is None:
                    self._send(404, {"error": f"no route {url.path}", "code": "not_found"})
                elif isinstance(answer, Raw):
                    self._raw(answer.status, answer.data, answer.content_type)
                elif isinstance(answer, tuple):
                    self._send(*answer)
                else:
                    self._send(200, answer)

            def _send(self, status: int, value: Any) -> None:
                data = b"" if value is None else json.dumps(value).encode()
                self._raw(status, data, "application/json")

            def _raw(self, status: int, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.address = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.005,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def last(self, method: str | None = None) -> Request:
        reqs = [r for r in self.requests if method is None or r.method == method]
        assert reqs, f"no {method or ''} request reached the fake agent"
        return reqs[-1]


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    for var in ("ZTM_AGENT", "ZTM_MESH", "ZTM_TOKEN", "ZTM_DATA", "COLUMNS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    return h


@pytest.fixture
def agent(home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAgent]:
    fake = FakeAgent()
    monkeypatch.setenv("ZTM_TOKEN", TOKEN)  # a fake agent on TCP: the token must be given (no local socket)
    monkeypatch.setenv("ZTM_AGENT", fake.address)
    try:
        yield fake
    finally:
        fake.close()


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., Result]:
    def call(*argv: str) -> Result:
        code = main(list(argv))
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err, captured.err
        return Result(code, captured.out, captured.err)

    return call


def one_line_error(res: Result) -> str:
    assert res.code != 0
    lines = res.err.strip().splitlines()
    assert len(lines) == 1, res.err
    return lines[0]


# ---------------------------------------------------------------- token discovery and transport errors


def test_the_env_token_is_sent_over_tcp(agent: FakeAgent, run: Callable[..., Result]) -> None:
    res = run("get", "ep")
    assert res.code == 0, res.err
    assert agent.last().headers["Authorization"] == f"Bearer {TOKEN}"


class UnixAgent(socketserver.ThreadingUnixStreamServer):
    """The fake agent's answers on a UNIX socket (no token: the caller is known from the socket)."""

    daemon_threads = True


def _unix_agent(path: Path, fake: FakeAgent) -> UnixAgent:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            fake.requests.append(Request("GET", self.path, {}, dict(self.headers), None))
            data = json.dumps(fake.routes.get(("GET", self.path))).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = UnixAgent(str(path), Handler)
    threading.Thread(target=server.serve_forever, args=(0.005,), daemon=True).start()
    return server


@pytest.mark.parametrize("listen", ["127.0.0.1", "localhost", "0.0.0.0"])
def test_the_local_socket_is_found_from_the_address_and_no_token_is_sent(
    home: Path, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, listen: str
) -> None:
    fake = FakeAgent()  # also on TCP: it must not be used
    try:
        registry = agents_registry_dir()
        registry.mkdir(parents=True)
        sock = tmp_path / "agent.sock"
        server = _unix_agent(sock, fake)
        (registry / socket_link_name(Address(listen, fake.port))).symlink_to(sock)
        (home / "agent.token").write_text(TOKEN + "\n")
        monkeypatch.setenv("ZTM_AGENT", f"127.0.0.1:{fake.port}")
        res = run("get", "mesh")
        assert res.code == 0, res.err
        assert [r.path for r in fake.requests] == ["/api/meshes"]
        assert "Authorization" not in fake.requests[0].headers
        server.shutdown()
        server.server_close()
    finally:
        fake.close()
    # never offered to a remote host
    assert socket_files(Address("192.0.2.7", 7000)) == [registry / "192.0.2.7_7000.sock"]


def test_default_address_uses_the_data_dir_socket(home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    data = tmp_path / "data"
    monkeypatch.setenv("ZTM_DATA", str(data))
    assert data / "agent.sock" in socket_files(Address("127.0.0.1", 7777))
    assert data / "agent.sock" not in socket_files(Address("127.0.0.1", 7778))


def test_env_token_is_named_when_refused(
    agent: FakeAgent, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZTM_TOKEN", "wrong")
    err = one_line_error(run("get", "ep"))
    assert f"the agent at {agent.address} refused the API token" in err
    assert "env ZTM_TOKEN" in err and "bad or missing API token" in err and "new one at every start" in err


def test_no_socket_and_no_token_message(
    agent: FakeAgent, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ZTM_TOKEN")
    (agents_registry_dir()).mkdir(parents=True)
    (agents_registry_dir() / f"127.0.0.1_{agent.port}.token").write_text(TOKEN + "\n")  # an old version's copy
    err = one_line_error(run("get", "ep"))
    assert err.startswith(f"ztm: no local socket of the agent at {agent.address} for your OS user")
    assert err.endswith("run ztm as the OS user who started that agent, or set ZTM_TOKEN to the content of its "
                        "DATA/agent.token")  # fmt: skip
    assert all("Authorization" not in r.headers for r in agent.requests)  # the file's token was never sent


def test_no_token_and_nothing_listening_names_the_address(
    home: Path, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("ZTM_AGENT", f"127.0.0.1:{port}")
    err = one_line_error(run("get", "ep"))
    assert err.startswith(f"ztm: cannot reach the agent at 127.0.0.1:{port} (connection refused)")


def test_connection_refused_names_the_address(
    home: Path, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    monkeypatch.setenv("ZTM_TOKEN", TOKEN)
    err = one_line_error(run("--agent", f"127.0.0.1:{port}", "get", "ep"))
    assert err == (
        f"ztm: cannot reach the agent at 127.0.0.1:{port} (connection refused): start one with 'ztm start agent', "
        "or point --agent / ZTM_AGENT at a running agent"
    )


def test_timeout_when_the_agent_never_answers(
    home: Path, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZTM_TOKEN", TOKEN)
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts in the kernel, never answers
        port = silent.getsockname()[1]
        start = time.monotonic()
        res = run("get", "ep", "--agent", f"127.0.0.1:{port}", "--timeout", "0.5")
        elapsed = time.monotonic() - start
    assert one_line_error(res) == f"ztm: the agent at 127.0.0.1:{port} did not answer within 0.5s"
    assert elapsed < 3


def test_something_else_on_the_port_html(agent: FakeAgent, run: Callable[..., Result]) -> None:
    agent.routes[("GET", "/api/meshes")] = Raw(b"<html>hello</html>")
    err = one_line_error(run("get", "mesh"))
    assert err == (
        f"ztm: {agent.address} answered something that is not the ztm agent API (is another program on that port?)"
    )


def test_something_else_on_the_port_not_http(
    home: Path, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ZTM_TOKEN", TOKEN)
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        port = srv.getsockname()[1]

        def banner() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                conn.recv(4096)

        t = threading.Thread(target=banner, daemon=True)
        t.start()
        err = one_line_error(run("--agent", f"127.0.0.1:{port}", "get", "mesh"))
        t.join(5)
    assert "not the ztm agent API" in err and f"127.0.0.1:{port}" in err


def test_api_error_is_shown_on_one_line(agent: FakeAgent, run: Callable[..., Result]) -> None:
    agent.routes[("GET", "/api/meshes/m1/hubs")] = (503, {"error": "hub down\nreally", "code": "unavailable"})
    assert one_line_error(run("get", "hub")) == "ztm: hub down really"


# ---------------------------------------------------------------- mesh selection


def test_the_only_mesh_is_used(agent: FakeAgent, run: Callable[..., Result]) -> None:
    assert run("get", "ep").code == 0
    assert agent.last().path == "/api/meshes/m1/endpoints"


def test_several_meshes_error_lists_them(agent: FakeAgent, run: Callable[..., Result]) -> None:
    agent.routes[("GET", "/api/meshes")] = [mesh("m2"), mesh("m1")]
    err = one_line_error(run("get", "ep"))
    assert "(m1, m2)" in err and "pass --mesh NAME" in err


def test_no_mesh_yet(agent: FakeAgent, run: Callable[..., Result]) -> None:
    agent.routes[("GET", "/api/meshes")] = []
    assert "ztm join MESH --as NAME --permit FILE" in one_line_error(run("get", "ep"))


@pytest.mark.parametrize("how", ["flag", "env", "saved"])
def test_explicit_mesh_skips_the_listing(
    agent: FakeAgent, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    agent.routes[("GET", "/api/meshes")] = [mesh("m2"), mesh("m1")]
    argv = ["get", "ep"]
    if how == "flag":
        argv += ["--mesh", "m1"]
    elif how == "env":
        monkeypatch.setenv("ZTM_MESH", "m1")
    else:
        assert run("config", "--mesh", "m1").code == 0
    res = run(*argv)
    assert res.code == 0, res.err
    assert [r.path for r in agent.requests] == ["/api/meshes/m1/endpoints"]


# ---------------------------------------------------------------- get


def test_get_mesh_table_and_json(agent: FakeAgent, run: Callable[..., Result]) -> None:
    res = run("get", "mesh")
    assert res.code == 0
    header, row = res.out.splitlines()
    assert header.split() == ["NAME", "USER", "ENDPOINT", "HUBS", "STATUS"]
    assert row.split() == ["m1", "root", "alice", "1.2.3.4:8888", "online"]
    res = run("get", "meshes", "-o", "json")
    assert json.loads(res.out) == agent.routes[("GET", "/api/meshes")]
    assert res.out == json.dumps(json.loads(res.out), indent=2, sort_keys=True) + "\n"


def test_get_mesh_shows_error(agent: FakeAgent, run: Callable[..., Result]) -> None:
    agent.routes[("GET", "/api/meshes")] = [mesh(status="error", error="hub unreachable")]
    assert "error: hub unreachable" in run("get", "mesh").out


def test_get_one_mesh(agent: FakeAgent, run: Callable[..., Result]) -> None:
    res = run("get", "mesh", "m1", "-o", "json")
    assert json.loads(res.out)["name"] == "m1"
    err = one_line_error(run("get", "mesh", "zzz"))
    assert err == "ztm: this agent has not joined a mesh named zzz; see 'ztm get mesh'"


def test_get_hub(agent: FakeAgent, run: Callable[..., Result]) -> None:
    HUB["since"] = _ago(120)  # the module-level value ages while a long test session runs
    lines = run("get", "hubs").out.splitlines()
    assert lines[0].split() == ["ID", "ZONE", "ADDRESSES", "ONLINE", "ENDPOINTS", "CONNECTED", "RTT", "STATUS", "SINCE"]
    row = ["0123456789abcdef", "zone-b", "1.2.3.4:8888,[::1]:8888", "yes", "7", "*", "1.23", "ms", "connected"]
    assert lines[1].split() == [*row, "2m", "ago"]
    assert json.loads(run("-o", "json", "get", "hub", "1.2.3.4:8888").out) == HUB
    assert json.loads(run("-o", "json", "get", "hub", "[::1]:8888").out) == HUB
    assert json.loads(run("-o", "json", "get", "hub", "0123456789abcdef").out) == HUB
    assert one_line_error(run("get", "hub", "9.9.9.9:1")) == "ztm: no hub 9.9.9.9:1 in mesh m1; see 'ztm get hub'"


def test_get_ep_table(agent: FakeAgent, run: Callable[..., Result]) -> None:
    res = run("get", "ep")
    lines = res.out.splitlines()
    assert lines[0].split() == ["NAME", "USER", "STATUS", "IP", "MESH", "IP", "LABELS", "HEARTBEAT", "PATH"]
    assert lines[1].split()[:-3] == ["alice", "(local)", "root", "online", "10.0.0.1", "100.64.0.2", "site=paris,gpu"]
    assert lines[1].split()[-1] == "-"
    assert lines[2].split()[:-4] == ["bob", "bob", "offline", "10.0.0.2", "100.64.0.3", "-"]
    assert lines[2].split()[-2:] == ["punched", "0.42ms"]
    assert lines[3].split()[-3:] == ["relay", "via", "hub-1"]
    for line in lines[1:3]:  # heartbeats 3 s before the fixture was made; a busy machine may add a few seconds
        age, word = line.split()[-3 - (line.split()[0] == "bob") :][:2]
        assert word == "ago" and age.endswith("s") and 3 <= int(age[:-1]) <= 30, line
    # columns are aligned
    assert lines[0].index("USER") == lines[1].index("root")


@pytest.mark.parametrize("alias", ["ep", "eps", "endpoint", "endpoints", "EP"])
def test_get_ep_aliases_and_json(agent: FakeAgent, run: Callable[..., Result], alias: str) -> None:
    res = run("get", alias, "-o", "json")
    assert json.loads(res.out) == agent.routes[("GET", "/api/meshes/m1/endpoints")]


def test_get_one_ep_and_not_found(agent: FakeAgent, run: Callable[..., Result]) -> None:
    res = run("get", "ep", "bob")
    assert len(res.out.splitlines()) == 2
    # options may come between positionals
    assert json.loads(run("get", "ep", "-o", "json", "bob").out)["name"] == "bob"
    err = one_line_error(run("get", "ep", "nobody"))
    assert err == "ztm: no endpoint named nobody in mesh m1; see 'ztm get ep'"


def test_get_app(agent: FakeAgent, run: Callable[..., Result]) -> None:
    lines = run("get", "app").out.splitlines()
    assert lines[0].split() == ["NAME", "PROVIDER", "VERSION", "STATE", "SOURCE", "MESH"]
    assert lines[1].split() == ["proxy", "ztm", "1.0", "stopped", "-", "m1"]
    assert lines[2].split() == ["tunnel", "ztm", "1.0", "running", "-", "m1"]
    assert agent.last().query == {}
    assert json.loads(run("get", "apps", "tunnel", "-o", "json", "--mesh", "m1").out)["name"] == "tunnel"
    assert agent.last().query == {"mesh": ["m1"]}
    assert one_line_error(run("get", "app", "nope")) == "ztm: no app named nope; see 'ztm get app'"


def test_empty_lists_say_so(agent: FakeAgent, run: Callable[..., Result]) -> None:
    agent.routes[("GET", "/api/meshes/m1/endpoints")] = []
    res = run("get", "ep")
    assert res.code == 0 and res.out.strip() == "no endpoints in mesh m1"
    assert json.loads(run("get", "ep", "-o", "json").out) == []


def test_peer_controlled_text_cannot_reach_the_terminal(agent: FakeAgent, run: Callable[..., Result]) -> None:
    agent.routes[("GET", "/api/meshes/m1/endpoints")] = [endpoint("evil\x1b[2J\x07name")]
    out = run("get", "ep").out
    assert "\x1b" not in out and "\x07" not in out
    assert "evil\\x1b[2J\\x07name" in out


# ---------------------------------------------------------------- describe, ping


def test_describe_mesh(agent: FakeAgent, run: Callable[..., Result]) -> None:
    out = run("describe", "mesh").out
    keys = [line.split(":", 1)[0] for line in out.splitlines()]
    assert keys == list(commands.MESH_FIELDS)
    assert "cert_expires:" in out and "(in " in out
    assert "connected_since: " in out and "(1m ago)" in out


def test_describe_hub(agent: FakeAgent, run: Callable[..., Result]) -> None:
    out = run("describe", "hub").out
    assert "bytes_received: 3.0 MiB (3145728 bytes)" in out
    assert "rtt_ms:" in out and "1.23 ms" in out
    described = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in out.splitlines())}
    assert described["zone"] == "zone-b" and described["connect_ms"] == "3.50 ms" and described["online"] == "yes"
    assert described["id"] == "0123456789abcdef" and described["addresses"] == "1.2.3.4:8888, [::1]:8888"


def test_describe_ep_with_ping(agent: FakeAgent, run: Callable[..., Result]) -> None:
    res = run("describe", "ep", "bob")
    assert res.code == 0
    assert "hostname:" in res.out and "bob-pc" in res.out
    assert res.out.splitlines()[-1].split() == ["ping:", "1.50", "ms"]
    agent.routes[("POST", "/api/meshes/m1/endpoints/ep-bob/ping")] = (
        503,
        {"error": "endpoint bob is offline", "code": "unavailable"},
    )
    assert "ping: failed: endpoint bob is offline" in run("describe", "ep", "bob").out


def test_describe_ep_defaults_to_local(agent: FakeAgent, run: Callable[..., Result]) -> None:
    res = run("describe", "ep", "-o", "json")
    assert json.loads(res.out)["is_local"] is True


def test_ping(agent: FakeAgent, run: Callable[..., Result]) -> None:
    res = run("ping", "ep", "bob", "--count", "2")
    assert res.code == 0
    assert res.out.splitlines() == [
        "reply from bob: time=1.50 ms",
        "reply from bob: time=2.50 ms",
        "--- bob: 2 sent, 2 received, 0% loss, rtt min/avg/max = 1.50/2.00/2.50 ms",
    ]
    assert agent.last().body == {"count": 2}


def test_ping_without_reply_fails(agent: FakeAgent, run: Callable[..., Result]) -> None:
    agent.routes[("POST", "/api/meshes/m1/endpoints/bob/ping")] = {"ep": "ep-bob", "rtt_ms": []}
    res = run("ping", "ep", "bob", "-c", "3")
    assert res.code == 1
    assert "3 sent, 0 received, 100% loss" in res.out
    assert one_line_error(res) == "ztm: no reply from bob in mesh m1"


def test_ping_unknown_endpoint(agent: FakeAgent, run: Callable[..., Result]) -> None:
    assert "no endpoint named ghost in mesh m1" in one_line_error(run("ping", "ep", "ghost"))


# ---------------------------------------------------------------- label, log, stats


def test_label_local_endpoint(agent: FakeAgent, run: Callable[..., Result]) -> None:
    res = run("label", "--add", "x", "--delete", "gpu")
    assert res.code == 0, res.err
    assert res.out.strip() == "labels of alice: site=paris, x"
    assert agent.last("POST").path == "/api/meshes/m1/endpoints/ep-alice/labels"
    assert agent.last("POST").body == {"add": ["x"], "delete": ["gpu"]}


def test_label_other_endpoint(agent: FakeAgent, run: Callable[..., Result]) -> None:
    res = run("label", "ep", "bob", "--add", "a=1,b", "c", "--delete", "d")
    assert res.out.strip() == "bob has no labels"
    assert agent.last("POST").body == {"add": ["a=1", "b", "c"], "delete": ["d"]}


def test_label_without_changes_prints_them(agent: FakeAgent, run: Callable[..., Result]) -> None:
    assert run("label").out.strip() == "labels of alice: site=paris, gpu"
    assert not [r for r in agent.requests if r.method == "POST"]


@pytest.mark.parametrize("bad", ["has space", "x" * 64, "emoji\u2603", ""])
def test_label_validated_locally(agent: FakeAgent, run: Callable[..., Result], bad: str) -> None:
    res = run("label", "--add", bad)
    assert res.code == 2
    one_line_error(res)
    assert not agent.requests


def test_log_kinds(agent: FakeAgent, run: Callable[..., Result]) -> None:
    assert run("log", "agent").out == "agent line\n"
    assert agent.last().query == {"lines": ["100"]}
    assert run("log", "ep", "bob", "--lines", "2").out == "bob line 1\nbob line 2\n"
    assert agent.last().query == {"lines": ["2"]}
    assert run("log", "ep").out == "alice line\n"
    out = run("log", "hub").out
    assert out.startswith("hub started\n") and "\x1b" not in out
    assert json.loads(run("log", "hub", "-o", "json").out)["lines"][0] == "hub started"


def test_stats(agent: FakeAgent, run: Callable[..., Result]) -> None:
    lines = run("stats", "ep").out.splitlines()
    assert lines[0].split() == ["PEER", "SENT", "RECEIVED", "SEND", "RATE", "RECV", "RATE", "STREAMS", "ENCRYPTION"]
    assert lines[1].split() == [
        "hub",
        "512",
        "B",
        "1.5",
        "KiB",
        "0",
        "B/s",
        "10",
        "B/s",
        "1",
        *["TLS", "1.3", "to", "the", "hub"],
    ]
    assert lines[2].split() == ["bob", "5.0", "MiB", "2.0", "KiB", "1.0", "MiB/s", "2.0", "KiB/s", "3", "e2e", SUITE]
    assert len(run("stats", "ep", "bob").out.splitlines()) == 2
    assert "no traffic with carol" in one_line_error(run("stats", "ep", "carol"))


# ---------------------------------------------------------------- identity, invite, evict


def test_identity_prints_only_the_pem(agent: FakeAgent, run: Callable[..., Result]) -> None:
    res = run("identity")
    assert res.out == PEM and res.err == ""


def test_invite_writes_0600_and_refuses_overwrite(agent: FakeAgent, run: Callable[..., Result], tmp_path: Path) -> None:
    pem = tmp_path / "carol.pem"
    pem.write_text(PEM)
    res = run("invite", "carol", "--identity", str(pem), "--permit", "carol.json", "--days", "7")
    assert res.code == 0, res.err
    out = tmp_path / "carol.json"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(out.read_text())["user"] == "carol"
    assert agent.last().body == {"identity": PEM, "days": 7}
    assert "holds no private key" in res.out and "ztm join m1 --as NAME --permit carol.json" in res.out

    before = len(agent.requests)
    again = run("invite", "carol", "--identity", str(pem), "--permit", "carol.json")
    assert "already exists" in one_line_error(again) and "--force" in again.err
    assert len(agent.requests) == before

    out.write_text("old")
    assert run("invite", "carol", "--identity", str(pem), "--permit", "carol.json", "--force").code == 0
    assert json.loads(out.read_text())["user"] == "carol"
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_invite_to_stdout_is_a_valid_permit(agent: FakeAgent, run: Callable[..., Result], tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text(PEM)
    res = run("invite", "carol", "--identity", "c.pem")
    assert json.loads(res.out) == {"ca": "CERT", "hubs": ["1.2.3.4:8888"], "user": "carol"}
    assert "holds no private key" in res.err


def test_invite_refuses_a_private_key(agent: FakeAgent, run: Callable[..., Result], tmp_path: Path) -> None:
    (tmp_path / "k.pem").write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    assert "PRIVATE key" in one_line_error(run("invite", "carol", "--identity", "k.pem"))
    assert "does not exist" in one_line_error(run("invite", "carol", "--identity", "missing.pem"))
    assert not agent.requests


def test_evict(agent: FakeAgent, run: Callable[..., Result]) -> None:
    res = run("evict", "carol")
    assert res.out.strip() == (
        "evicted user carol from mesh m1: their certificates are refused from now on and their sessions "
        "(2 endpoints) are closed"
    )
    assert json.loads(run("evict", "carol", "-o", "json").out)["evicted"] is True


# ---------------------------------------------------------------- join, leave


def test_join(agent: FakeAgent, run: Callable[..., Result], tmp_path: Path) -> None:
    permit = {"ca": "CERT", "hubs": ["1.2.3.4:8888"]}
    (tmp_path / "root.json").write_text(json.dumps(permit))
    res = run("join", "new", "--as", "home", "--permit", "root.json", "--label", "site=home")
    assert res.code == 0, res.err
    assert res.out.strip() == "joined new as home (endpoint ep-new) via 1.2.3.4:8888"
    req = agent.last("POST")
    assert req.path == "/api/meshes/new"
    assert req.body == {"as": "home", "permit": permit, "labels": ["site=home"]}


def test_join_file_errors(agent: FakeAgent, run: Callable[..., Result], tmp_path: Path) -> None:
    err = one_line_error(run("join", "new", "--as", "h", "--permit", "nope.json"))
    assert err == "ztm: permit file nope.json does not exist"
    (tmp_path / "bad.json").write_text("{not json")
    assert "permit file bad.json is not JSON (line 1" in one_line_error(
        run("join", "new", "--as", "h", "--permit", "bad.json")
    )
    (tmp_path / "list.json").write_text("[1, 2]")
    assert "is not a permit" in one_line_error(run("join", "new", "--as", "h", "--permit", "list.json"))
    (tmp_path / "dir.json").mkdir()
    assert "is a directory" in one_line_error(run("join", "new", "--as", "h", "--permit", "dir.json"))
    if os.geteuid() != 0:
        secret = tmp_path / "secret.json"
        secret.write_text("{}")
        secret.chmod(0)
        assert "permission denied" in one_line_error(run("join", "new", "--as", "h", "--permit", "secret.json"))
    assert not agent.requests


def test_join_requires_as_and_permit(agent: FakeAgent, run: Callable[..., Result]) -> None:
    res = run("join", "new")
    assert res.code == 2
    assert "the following arguments are required: --as, --permit" in one_line_error(res)


def test_join_conflict(agent: FakeAgent, run: Callable[..., Result], tmp_path: Path) -> None:
    (tmp_path / "root.json").write_text("{}")
    message = "mesh 'new' is already joined as h; leave it first with `ztm leave new`"
    agent.routes[("POST", "/api/meshes/new")] = (409, {"error": message, "code": "conflict"})
    err = one_line_error(run("join", "new", "--as", "h", "--permit", "root.json"))
    assert err == f"ztm: {message}"


def test_leave(agent: FakeAgent, run: Callable[..., Result]) -> None:
    res = run("leave", "m1")
    assert res.code == 0 and res.out.strip() == "left mesh m1"
    assert agent.last().method == "DELETE"
    res = run("leave", "m1", "-o", "json")
    assert res.out == "" and res.err.strip() == "left mesh m1"


# ---------------------------------------------------------------- version, robustness


def test_version_with_and_without_agent(
    agent: FakeAgent, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    res = run("version")
    assert res.out.splitlines() == ["ztm 0.2.0 (command line)", f"agent 0.2.0 (API 1) at {agent.address}"]
    monkeypatch.setenv("ZTM_AGENT", f"127.0.0.1:{free_port()}")
    res = run("version")
    assert res.code == 0 and "agent: unknown (cannot reach the agent" in res.out
    monkeypatch.setenv("ZTM_TOKEN", TOKEN)
    res = run("version")
    assert res.code == 0 and "agent: unknown (cannot reach the agent" in res.out
    assert json.loads(run("version", "-o", "json").out)["agent"] is None


WRONG_SHAPES: list[Any] = [{"unexpected": True}, [1, "two"], "text", None, [{"name": 5, "labels": "x"}]]


@pytest.mark.parametrize(
    "argv",
    [
        ["get", "mesh"],
        ["get", "mesh", "m1"],
        ["get", "hub"],
        ["get", "ep"],
        ["get", "ep", "bob"],
        ["get", "app"],
        ["describe", "mesh"],
        ["describe", "hub"],
        ["describe", "ep"],
        ["ping", "ep", "bob"],
        ["label", "--add", "x"],
        ["log", "hub"],
        ["log", "agent"],
        ["stats", "ep"],
        ["identity"],
        ["evict", "carol"],
        ["version"],
    ],
    ids=" ".join,
)
def test_wrong_shapes_never_crash(agent: FakeAgent, run: Callable[..., Result], argv: list[str]) -> None:
    """JSON of the wrong shape on every route (but the mesh list): a clean answer or a clean error, never a crash."""
    for shape in WRONG_SHAPES:
        for key in list(agent.routes):
            if key != ("GET", "/api/meshes"):
                agent.routes[key] = shape
        for output in ("table", "json"):
            res = run(*argv, "-o", output)
            assert "internal error" not in res.err, (shape, res.err)
            assert res.code in (0, 1), (shape, res)
            assert res.out or res.err, shape


def test_wrong_mesh_list_shape(agent: FakeAgent, run: Callable[..., Result]) -> None:
    agent.routes[("GET", "/api/meshes")] = {"meshes": []}
    assert "unexpected answer to GET /api/meshes" in one_line_error(run("get", "ep"))


def test_internal_errors_are_one_line(
    agent: FakeAgent, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(ctx: object) -> int:
        raise RuntimeError("kaput\nsecond line")

    from ztm.cli import registry

    get = registry.find(registry.COMMANDS, "get")
    assert get is not None
    monkeypatch.setattr(registry, "COMMANDS", [*registry.COMMANDS])
    idx = registry.COMMANDS.index(get)
    registry.COMMANDS[idx] = type(get)(**{**get.__dict__, "handler": boom})
    assert one_line_error(run("get", "ep")) == "ztm: internal error: RuntimeError: kaput second line (please report)"


def test_keyboard_interrupt_exits_130(
    agent: FakeAgent, run: Callable[..., Result], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "_get_ep", interrupted)
    res = run("get", "ep")
    assert res.code == 130 and res.err.strip() == "ztm: interrupted"


# ------------------------------------------------------------ the built-in apps' own CLIs: ztm APP help, ztm APP ...

BUILTIN_APPS = ("apps", "cloud", "files", "proxy", "terminal", "tunnel")
FILE_ROW = {
    "path": "/shared/alice/a.txt",
    "size": 2048,
    "time": _ago(7200),
    "publisher": "alice",
    "sources": ["alice"],
    "local": True,
}
APP_VIEW = {"name": "chat", "state": "running", "mesh": "m1"}


def app_routes() -> dict[tuple[str, str], Any]:
    m = "/api/meshes/m1"
    return {
        ("GET", f"{m}/apps/files"): [FILE_ROW],
        ("GET", f"{m}/apps/files/file"): {**FILE_ROW, "hash": "ab" * 32, "acl": {"readonly": [], "block": ["eve"]}},
        ("POST", f"{m}/apps/files/acl"): {**FILE_ROW, "acl": {"readonly": ["bob"], "block": []}},
        ("DELETE", f"{m}/apps/files/file"): (204, None),
        ("DELETE", f"{m}/apps/files/content"): (204, None),
        ("GET", f"{m}/app-packages"): [
            {"name": "chat", "version": "1.0", "sha256": "cd" * 32, "sources": [{"name": "bob", "user": "bob"}]}
        ],
        ("POST", f"{m}/apps/chat/start"): APP_VIEW,
        ("POST", f"{m}/apps/chat/stop"): {**APP_VIEW, "state": "stopped"},
        ("POST", f"{m}/apps/chat/publish"): {"name": "chat", "version": "1.0", "size": 900, "sha256": "cd" * 32},
        ("POST", f"{m}/apps/chat/download"): {"name": "chat", "version": "1.0", "from": "bob", "sha256": "cd" * 32},
        ("POST", f"{m}/apps/chat/unpublish"): {
            "name": "chat",
            "version": "1.0",
            "sha256": "cd" * 32,
            "mesh": "m1",
            "announced": True,
        },
        ("POST", "/api/apps/chat/uninstall"): {
            "name": "chat",
            "version": "1.0",
            "location": "/data/apps/chat",
            "stopped": ["m1"],
            "withdrawn": ["m1"],
        },
    }


@pytest.mark.parametrize("app", BUILTIN_APPS)
def test_every_builtin_app_has_help(agent: FakeAgent, run: Callable[..., Result], app: str) -> None:
    """`ztm APP help`, as the README tells users to type for each app `ztm get app` lists."""
    res = run(app, "help")
    assert res.code == 0 and res.err == ""
    assert res.out.startswith(f"usage: ztm {app} ") and "|help ... [global options]" in res.out.splitlines()[0]
    assert "examples:\n  ztm " in res.out and "--agent HOST:PORT" in res.out
    for argv in (("help", app), (app, "--help")):
        assert run(*argv).out == res.out
    assert agent.requests == [], "help needs no agent"


@pytest.mark.parametrize(
    ("app_form", "verb_form"),
    [
        (("files", "ls"), ("get", "file")),
        (("files", "ls", "/shared/alice/"), ("get", "files", "/shared/alice/")),
        (("files", "describe", "/shared/alice/a.txt"), ("describe", "file", "/shared/alice/a.txt")),
        (("files", "acl", "/shared/alice/a.txt"), ("acl", "file", "/shared/alice/a.txt")),
        (("files", "acl", "/users/alice/a.txt", "--readonly", "bob"), ("acl", "file", "/users/alice/a.txt",
                                                                        "--readonly", "bob")),
        (("files", "unpublish", "/shared/alice/a.txt"), ("unpublish", "file", "/shared/alice/a.txt")),
        (("files", "erase", "/shared/alice/a.txt"), ("erase", "file", "/shared/alice/a.txt")),
        (("apps", "ls"), ("get", "app")),
        (("apps", "ls", "tunnel"), ("get", "app", "tunnel")),
        (("apps", "ls", "--available"), ("get", "app", "--available")),
        (("apps", "start", "chat"), ("start", "app", "chat")),
        (("apps", "stop", "chat"), ("stop", "app", "chat")),
        (("apps", "publish", "chat"), ("publish", "app", "chat")),
        (("apps", "download", "chat", "--from", "bob"), ("download", "app", "chat", "--from", "bob")),
        (("apps", "unpublish", "chat"), ("unpublish", "app", "chat")),
        (("apps", "uninstall", "chat"), ("uninstall", "app", "chat")),
    ],
    ids=lambda v: " ".join(v),
)  # fmt: skip
def test_app_forms_are_the_verb_forms(
    agent: FakeAgent, run: Callable[..., Result], app_form: tuple[str, ...], verb_form: tuple[str, ...]
) -> None:
    """`ztm files ls` is `ztm get file`, `ztm apps start chat` is `ztm start app chat`...: the same requests to the
    agent, the same output, as a table and as JSON."""
    agent.routes.update(app_routes())
    for output in ("table", "json"):
        seen = []
        for argv in (verb_form, app_form):
            before = len(agent.requests)
            res = run(*argv, "-o", output)
            assert res.code == 0, res.err
            requests = [(r.method, r.path, r.query, r.body) for r in agent.requests[before:]]
            seen.append((res.out, res.err, requests))
        assert seen[0] == seen[1]
        assert any(path.startswith(("/api/meshes/m1/app", "/api/apps")) for _, path, _, _ in seen[1][2])


def test_files_ls_hits_the_files_route(agent: FakeAgent, run: Callable[..., Result]) -> None:
    agent.routes.update(app_routes())
    lines = run("files", "ls", "/shared/").out.splitlines()
    assert lines[0].split() == ["PATH", "SIZE", "MODIFIED", "PUBLISHER", "SOURCES", "LOCAL"]
    assert lines[1].split()[0] == "/shared/alice/a.txt"
    last = agent.last()
    assert (last.method, last.path, last.query) == ("GET", "/api/meshes/m1/apps/files", {"prefix": ["/shared/"]})
    assert json.loads(run("apps", "ls", "--available", "-o", "json").out)[0]["name"] == "chat"
    assert agent.last().path == "/api/meshes/m1/app-packages"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (("files", "frob"), "ztm files: argument ls|describe|publish|download|unpublish|erase|acl|help: invalid "
                            "choice: 'frob'"),
        (("apps", "frob"), "ztm apps: argument ls|start|stop|publish|unpublish|download|uninstall|help: invalid "
                           "choice: 'frob'"),
        (("cloud", "frob"), "ztm cloud: argument config|ls|upload|download|mirror|status|help: invalid choice"),
        (("files",), "ztm files: the following arguments are required: ls|describe|publish|download|unpublish|"
                     "erase|acl|help; run 'ztm help files' for usage"),
        (("files", "help", "nope"), "'files' has no subcommand 'nope'; run 'ztm help files'"),
        (("apps", "help", "nope"), "'apps' has no subcommand 'nope'; run 'ztm help apps'"),
        (("cloud", "help", "nope"), "'cloud' has no subcommand 'nope'; run 'ztm help cloud'"),
        (("help", "files", "nope"), "'files' has no subcommand 'nope'"),
        (("files", "ls", "a", "b"), "ztm files ls: unrecognized arguments: b; run 'ztm help files ls' for usage"),
        (("files", "describe"), "ztm files describe: the following arguments are required: PATH"),
        (("files", "describe", "x"), "ztm files describe: argument PATH: invalid path 'x'"),
        (("files", "publish", "/shared/a/x"), "the following arguments are required: -i/--input; run 'ztm help "
                                              "files publish' for usage"),
        (("files", "acl", "/shared/a/x", "--bogus"), "ztm files acl: unrecognized arguments: --bogus"),
        (("apps", "start"), "ztm apps start: the following arguments are required: NAME"),
        (("apps", "download", "chat", "--sha256", "x"), "ztm apps download: argument --sha256: expected 64 hex"),
        (("apps", "uninstall"), "ztm apps uninstall: the following arguments are required: NAME"),
        (("apps", "uninstall", "Chat"), "ztm apps uninstall: argument NAME: invalid app name 'Chat'"),
        (("apps", "uninstall", "chat", "tunnel"), "ztm apps uninstall: unrecognized arguments: tunnel"),
        (("apps", "unpublish"), "ztm apps unpublish: the following arguments are required: NAME"),
        (("apps", "unpublish", "a" * 40), "ztm apps unpublish: argument NAME: invalid app name"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else "",
)  # fmt: skip
def test_app_cli_bad_command_lines(
    agent: FakeAgent, run: Callable[..., Result], argv: tuple[str, ...], expected: str
) -> None:
    res = run(*argv)
    assert res.code == 2 and res.out == ""
    assert expected in one_line_error(res)
    assert agent.requests == [], "a bad command line reached the agent"


def test_uninstall_and_unpublish_app(agent: FakeAgent, run: Callable[..., Result]) -> None:
    """`ztm uninstall app` needs no mesh (it acts on every mesh) and says what it withdrew; `ztm unpublish app` acts
    on the mesh; the agent's refusals are one line."""
    agent.routes.update(app_routes())
    res = run("uninstall", "app", "chat")
    assert res.code == 0, res.err
    assert res.out.strip() == (
        "uninstalled app chat 1.0; stopped it in mesh m1; this endpoint published it: withdrew it from mesh m1 "
        "(endpoints that installed it keep their copy)"
    )
    assert [(r.method, r.path) for r in agent.requests] == [("POST", "/api/apps/chat/uninstall")]
    agent.routes[("POST", "/api/apps/chat/uninstall")] = {
        "name": "chat",
        "version": "1.0",
        "stopped": [],
        "withdrawn": [],
    }
    assert run("uninstall", "app", "chat").out.strip() == "uninstalled app chat 1.0"
    agent.routes[("POST", "/api/apps/tunnel/uninstall")] = (
        409,
        {"error": "tunnel is built in: stop it with 'ztm stop app tunnel'", "code": "conflict"},
    )
    res = run("uninstall", "app", "tunnel")
    assert res.code == 1 and one_line_error(res) == "ztm: tunnel is built in: stop it with 'ztm stop app tunnel'"

    res = run("unpublish", "app", "chat")
    assert res.code == 0, res.err
    assert res.out.strip() == (
        "withdrew app chat 1.0 from mesh m1: no longer offered by this endpoint; endpoints that installed it keep "
        "their copy"
    )
    assert agent.last().path == "/api/meshes/m1/apps/chat/unpublish"
    agent.routes[("POST", "/api/meshes/m1/apps/chat/unpublish")] = {"name": "chat", "mesh": "m1", "announced": False}
    assert "the hub is told when this endpoint is back online" in run("unpublish", "app", "chat").out


def test_builtin_app_names_win_over_installed_apps(agent: FakeAgent, run: Callable[..., Result]) -> None:
    """A third-party app named like a built-in never gets `ztm files ...`; other installed apps still get theirs."""
    agent.routes[("GET", "/api/meshes/m1/apps")] = [{"name": "files"}, {"name": "chat"}]
    agent.routes[("POST", "/api/meshes/m1/apps/files/cli")] = {"output": "impostor"}
    agent.routes[("POST", "/api/meshes/m1/apps/chat/cli")] = lambda r: {"output": f"chat got {r.body['argv']}"}
    res = run("files", "help")
    assert res.code == 0 and res.out.startswith("usage: ztm files ") and agent.requests == []
    res = run("chat", "help")
    assert res.code == 0 and res.out == "chat got ['help']\n"
    assert agent.last().path == "/api/meshes/m1/apps/chat/cli"
