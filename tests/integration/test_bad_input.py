"""Bad input to the `ztm` command line, against a real hub and agent.

The standard for every refusal: a non-zero exit, ONE line on stderr that says what is wrong (and how to fix it where
possible), no Python traceback anywhere, an answer within the call's timeout, and no state change: `ztm get mesh -o
json` is the same before and after, and the agent's `DATA/meshes/` holds no leftover directory.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support import (
    ZTM,
    Agent,
    Hub,
    Proc,
    base_env,
    free_port,
    join_all,
    run,
    start_hub,
    start_hub_and_agents,
    tcp_accepts,
    wait_until,
)
from ztm import pki

MESH = "main"
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO) ")
"""A hub's or agent's own INFO log line on stderr (`ztm run` logs there by design); not an error line."""


# ------------------------------------------------------------------------------------------------------- helpers


def assert_one_line_error(cp: subprocess.CompletedProcess[str], pattern: str, *, code: int | None = None) -> str:
    """`cp` failed with exactly one (non-log) line on stderr matching regex `pattern`, and no traceback."""
    shown = f"exit {cp.returncode}\n--- stdout ---\n{cp.stdout}--- stderr ---\n{cp.stderr}"
    assert cp.returncode != 0, f"expected a failure; got {shown}"
    if code is not None:
        assert cp.returncode == code, f"expected exit status {code}; got {shown}"
    assert "Traceback" not in cp.stdout + cp.stderr, f"a Python traceback reached the user: {shown}"
    lines = [ln for ln in cp.stderr.splitlines() if ln.strip() and not LOG_LINE.match(ln)]
    assert len(lines) == 1, f"expected exactly one error line on stderr; got {shown}"
    assert re.search(pattern, lines[0], re.IGNORECASE), f"error line does not match {pattern!r}; got {shown}"
    return lines[0]


def timed(fn: Callable[[], subprocess.CompletedProcess[str]]) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    cp = fn()
    return cp, time.monotonic() - start


@dataclass
class World:
    hub: Hub
    other: Hub
    """A second, unrelated hub: another mesh with its own CA."""
    agent: Agent
    peer: Agent
    tmp: Path

    def mesh_dirs(self) -> list[str]:
        meshes_dir = self.agent.data / "meshes"
        return sorted(p.name for p in meshes_dir.iterdir()) if meshes_dir.exists() else []

    def snapshot(self, *, cli: bool) -> tuple[Any, list[str]]:
        """What a failed command must not change: the agent's meshes (`ztm get mesh -o json`, which prints the
        API's `GET /api/meshes` as is; `cli=False` asks the API directly, faster) and its per-mesh directories."""
        if cli:
            meshes = self.agent.cli_json("get", "mesh")
        else:
            status, meshes = self.agent.api("GET", "/api/meshes")
            assert status == 200, (status, meshes)
        return meshes, self.mesh_dirs()

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    def refused(
        self, *args: str | Path, pattern: str, code: int | None = None, within: float = 15.0
    ) -> tuple[str, float]:
        """Run `ztm ARGS` on the agent, expect a one-line refusal within `within` seconds and no state change."""
        before = self.snapshot(cli=False)
        try:
            cp, took = timed(lambda: self.agent.cli(*args, check=False, timeout=within + 10))
            line = assert_one_line_error(cp, pattern, code=code)
            assert took < within, f"ztm {' '.join(map(str, args))} took {took:.1f}s (limit {within}s)"
            after = self.snapshot(cli=True)
            assert after == before, f"state changed after a refused command:\nbefore {before}\nafter  {after}"
        except BaseException:
            self.forget_new_meshes(before[0])  # one wrong success must not make every later test fail
            raise
        return line, took

    def forget_new_meshes(self, before: list[dict[str, Any]]) -> None:
        known = {m.get("name") for m in before}
        status, now = self.agent.api("GET", "/api/meshes")
        for mesh in now if status == 200 else []:
            if mesh.get("name") not in known:
                self.agent.api("DELETE", f"/api/meshes/{mesh['name']}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("bad-input")
    procs: list[Proc] = []
    try:
        hub, agents = start_hub_and_agents(tmp, ("alpha", "beta"))
        agent, peer = agents["alpha"], agents["beta"]
        procs += [hub.proc, agent.proc, peer.proc]
        other = start_hub(tmp, name="other-hub")
        procs.append(other.proc)
        join_all(MESH, [(agent, "alpha"), (peer, "beta")], hub.permit)
        wait_until(lambda: {"alpha", "beta"} <= agent.online_names(), 20, "alpha to see alpha and beta online")
        yield World(hub, other, agent, peer, tmp)
    finally:
        for proc in reversed(procs):
            proc.stop()


def _copy(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(json.dumps(obj)))


def _pem_body_garbled(pem: str) -> str:
    """Same PEM armour, base64 body altered so that it no longer decodes to a certificate."""
    lines = pem.strip().splitlines()
    middle = len(lines) // 2
    lines[middle] = lines[middle][::-1]
    return "\n".join(lines) + "\n"


def _expired_permit(address: str) -> dict[str, Any]:
    """A permit of a fresh mesh whose user certificate ended 29 days ago (made with ztm.pki, as the hub does)."""
    now = dt.datetime.now(dt.UTC)
    ca_key, ca_cert = pki.create_ca(pki.new_mesh_id(), now=now - dt.timedelta(days=60))
    key = pki.new_key()
    cert = pki.issue_user_cert(
        ca_key, ca_cert, user="root", public_key=key.public_key(), now=now - dt.timedelta(days=30), days=1
    )
    return {
        "ca": pki.cert_to_pem(ca_cert),
        "agent": {"certificate": pki.cert_to_pem(cert), "privateKey": pki.key_to_pem(key)},
        "bootstraps": [address],
    }


def _future_permit(address: str) -> dict[str, Any]:
    """A permit whose user certificate only becomes valid in 10 days (a CA with a wrong clock issued it)."""
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=10)
    ca_key, ca_cert = pki.create_ca(pki.new_mesh_id(), now=dt.datetime.now(dt.UTC))
    key = pki.new_key()
    cert = pki.issue_user_cert(ca_key, ca_cert, user="root", public_key=key.public_key(), now=later, days=30)
    return {
        "ca": pki.cert_to_pem(ca_cert),
        "agent": {"certificate": pki.cert_to_pem(cert), "privateKey": pki.key_to_pem(key)},
        "bootstraps": [address],
    }


def _with(permit: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = _copy(permit)
    keys = path.split(".")
    target = out
    for key in keys[:-1]:
        target = target[key]
    target[keys[-1]] = value
    return out


PermitMaker = Callable[[dict[str, Any], dict[str, Any], str], "str | bytes | dict[str, Any] | list[Any] | None"]

# id -> (make the file from (this mesh's root permit, the other mesh's root permit, hub address), expected regex).
# A str or bytes result is the file's raw content; anything else is written as JSON.
BAD_PERMITS: dict[str, tuple[PermitMaker, str]] = {
    "not-json": (lambda p, o, a: "this is not JSON {", r"not JSON"),
    "empty-file": (lambda p, o, a: "", r"not JSON"),
    "binary": (lambda p, o, a: b"\xff\xfe\x00garbage\x80", r"not a text file|not UTF-8|not JSON"),
    "empty-object": (lambda p, o, a: {}, r'"ca".*missing'),
    "array": (lambda p, o, a: [], r"not a permit|JSON object"),
    "null": (lambda p, o, a: None, r"not a permit|JSON object"),
    "string": (lambda p, o, a: '"just a string"', r"not a permit|JSON object"),
    "ca-number": (lambda p, o, a: _with(p, "ca", 42), r'"ca".*number'),
    "agent-list": (lambda p, o, a: _with(p, "agent", []), r'"agent".*list'),
    "certificate-missing": (lambda p, o, a: _with(p, "agent", {}), r'"agent.certificate".*missing'),
    "certificate-object": (lambda p, o, a: _with(p, "agent.certificate", {"pem": 1}), r'"agent.certificate"'),
    "key-number": (lambda p, o, a: _with(p, "agent.privateKey", 7), r'"agent.privateKey"'),
    "bootstraps-string": (lambda p, o, a: _with(p, "bootstraps", a), r'"bootstraps".*list'),
    "bootstraps-empty": (lambda p, o, a: _with(p, "bootstraps", []), r'"bootstraps".*empty'),
    "bootstraps-number": (lambda p, o, a: _with(p, "bootstraps", [8888]), r"bootstraps\[0\]"),
    "bootstraps-bad-port": (lambda p, o, a: _with(p, "bootstraps", ["127.0.0.1:99999"]), r"bootstraps\[0\].*port"),
    "ca-truncated": (lambda p, o, a: _with(p, "ca", p["ca"][: len(p["ca"]) // 2]), r'"ca".*not a PEM'),
    "certificate-garbled": (
        lambda p, o, a: _with(p, "agent.certificate", _pem_body_garbled(p["agent"]["certificate"])),
        r'"agent.certificate".*not a PEM',
    ),
    "key-truncated": (
        lambda p, o, a: _with(p, "agent.privateKey", p["agent"]["privateKey"][:60]),
        r'"agent.privateKey"',
    ),
    "other-mesh-ca": (lambda p, o, a: _with(p, "ca", o["ca"]), r"not issued by its CA|mixes two meshes"),
    "other-mesh-key": (
        lambda p, o, a: _with(p, "agent.privateKey", o["agent"]["privateKey"]),
        r"privateKey.*does not match",
    ),
    "ca-is-a-user-cert": (lambda p, o, a: _with(p, "ca", p["agent"]["certificate"]), r"CA"),
    "expired": (lambda p, o, a: _expired_permit(a), r"expired"),
    "not-yet-valid": (lambda p, o, a: _future_permit(a), r"not valid until"),
}


# ---------------------------------------------------------------------------------------------------- bad permits


def test_join_with_a_missing_permit_file(world: World) -> None:
    missing = world.tmp / "no-such-permit.json"
    line, _ = world.refused("join", "fresh", "--as", "gamma", "--permit", missing, pattern=r"does not exist")
    assert str(missing) in line


def test_join_with_a_directory_as_permit(world: World) -> None:
    line, _ = world.refused("join", "fresh", "--as", "gamma", "--permit", world.tmp, pattern=r"directory")
    assert str(world.tmp) in line


@pytest.mark.parametrize("case", sorted(BAD_PERMITS))
def test_join_refuses_a_bad_permit(world: World, case: str) -> None:
    make, pattern = BAD_PERMITS[case]
    content = make(world.hub.permit_json(), world.other.permit_json(), world.hub.address)
    text = content if isinstance(content, str | bytes) else json.dumps(content)
    path = world.write(f"permit-{case}.json", text)
    world.refused("join", "fresh", "--as", "gamma", "--permit", path, pattern=pattern)


def test_join_refuses_bad_names(world: World) -> None:
    permit = world.hub.permit
    world.refused("join", "fresh", "--as", "bad name!", "--permit", permit, pattern=r"invalid endpoint name.*bad name!")
    world.refused("join", "fresh", "--as=-dash", "--permit", permit, pattern=r"invalid endpoint name")
    world.refused("join", "fresh", "--as", "x" * 64, "--permit", permit, pattern=r"invalid endpoint name")
    world.refused("join", "fresh", "--as", "", "--permit", permit, pattern=r"invalid endpoint name|empty|--as")
    world.refused("join", "bad mesh!", "--as", "gamma", "--permit", permit, pattern=r"invalid mesh name.*bad mesh!")
    world.refused("join", "a/b", "--as", "gamma", "--permit", permit, pattern=r"invalid mesh name|mesh")
    world.refused("join", "fresh", "--as", "gamma", "--permit", permit, "--label", "no spaces", pattern=r"label")


def test_join_the_same_mesh_twice(world: World) -> None:
    # The same local name: a conflict that says how to get out of it.
    line, _ = world.refused("join", MESH, "--as", "alpha2", "--permit", world.hub.permit, pattern=r"already joined")
    assert f"ztm leave {MESH}" in line, line
    # The same mesh under another local name: one endpoint per mesh; the hint must name the mesh that IS joined.
    line, _ = world.refused("join", "again", "--as", "alpha2", "--permit", world.hub.permit, pattern=r"already")
    assert f"'{MESH}'" in line or f" {MESH}" in line, line
    assert "ztm leave again" not in line, f"the hint tells the user to leave a mesh that is not joined: {line}"


# ------------------------------------------------------------------------------------------- hubs that are not hubs


def _permit_to(world: World, name: str, address: str) -> Path:
    """The other mesh's root permit (a mesh the agent has not joined) with its hub address replaced."""
    return world.write(name, json.dumps(_with(world.other.permit_json(), "bootstraps", [address])))


def test_join_when_the_hub_is_down(world: World) -> None:
    address = f"127.0.0.1:{free_port()}"
    path = _permit_to(world, "permit-down.json", address)
    line, took = world.refused("join", "fresh", "--as", "gamma", "--permit", path, pattern=r"refused|reach")
    assert address in line, f"the error does not name the hub address {address}: {line}"
    assert took < 10, f"took {took:.1f}s to notice that nothing listens on {address}"


def test_join_when_the_hub_address_is_a_plain_http_server(world: World) -> None:
    port = free_port()
    http = Proc(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=world.tmp,
        name="http-server",
        env=base_env(),
    )
    wait_until(lambda: http.assert_alive() or tcp_accepts("127.0.0.1", port), 15, "the HTTP server to listen")
    address = f"127.0.0.1:{port}"
    path = _permit_to(world, "permit-http.json", address)
    line, _ = world.refused("join", "fresh", "--as", "gamma", "--permit", path, pattern=r"TLS|HTTP/2|h2", within=15)
    assert address in line, line
    http.assert_alive()


def test_join_when_the_hub_address_is_another_mesh_s_hub(world: World) -> None:
    """A TLS server that is a ztm hub, but of another mesh: its certificate does not chain to the permit's CA."""
    address = world.hub.address
    path = _permit_to(world, "permit-other-hub.json", address)
    line, _ = world.refused(
        "join", "fresh", "--as", "gamma", "--permit", path, pattern=r"not a hub of this mesh|trust|certificate"
    )
    assert address in line, line
    # The hub of the permit's own mesh is still fine for the agents already in it.
    world.agent.cli("ping", "ep", "beta", "--count", "1")


def test_join_with_the_other_mesh_s_whole_permit_under_a_joined_name(world: World) -> None:
    """A valid permit of another mesh, but under a local name already in use: refused before dialling."""
    line, _ = world.refused("join", MESH, "--as", "gamma", "--permit", world.other.permit, pattern=r"already joined")
    assert "leave" in line


# ------------------------------------------------------------------------------------------- unknown things, flags


@pytest.mark.parametrize(
    ("args", "pattern", "code"),
    [
        (("--mesh", "nope", "get", "ep"), r"nope", 1),
        (("--mesh", "nope", "get", "hub"), r"nope", 1),
        (("ping", "ep", "nope", "--count", "1"), r"no endpoint named nope", 1),
        (("describe", "ep", "nope"), r"no endpoint named nope", 1),
        (("get", "ep", "nope"), r"no endpoint named nope", 1),
        (("describe", "mesh", "nope"), r"not joined a mesh named nope", 1),
        (("leave", "nope"), r"not joined a mesh named nope", 1),
        (("evict", "nobody-here"), r"nobody-here", 1),
        (("frobnicate",), r"unknown command 'frobnicate'", 2),
        (("get",), r"ztm get: .*required", 2),
        (("get", "widgets"), r"unknown kind 'widgets'", 2),
        (("join", "fresh"), r"required: --as", 2),
        (("join", "fresh", "--permit", "x.json"), r"required: --as", 2),
        (("ping", "ep", "x", "--count", "abc"), r"--count.*abc", 2),
        (("ping", "ep", "x", "--count", "0"), r"--count", 2),
        (("get", "ep", "--bogus"), r"unrecognized arguments: --bogus", 2),
        (("get", "ep", "-o", "yaml"), r"table or json", 2),
        (("get", "ep", "--timeout", "soon"), r"--timeout", 2),
        (("help", "nope"), r"unknown command 'nope'", 2),
        (("stop", "database"), r"unknown kind", 2),
        (("label", "--add", "bad label"), r"label", 2),
    ],
    ids=lambda v: "_".join(v) if isinstance(v, tuple) else None,
)
def test_unknown_things_and_bad_flags(world: World, args: tuple[str, ...], pattern: str, code: int) -> None:
    world.refused(*args, pattern=pattern, code=code)


# ------------------------------------------------------------------------------------------ --agent that is no agent


def _cli_at(world: World, address: str, *args: str, token: str | None) -> subprocess.CompletedProcess[str]:
    env = base_env({"ZTM_TOKEN": token} if token is not None else None, home=world.agent.home)
    return run([*ZTM, "--agent", address, *args], env=env, cwd=world.tmp, check=False, timeout=20)


@pytest.fixture(scope="module")
def http_server(world: World) -> Iterator[str]:
    port = free_port()
    with Proc(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=world.tmp,
        name="http-server",
        env=base_env(),
    ) as proc:
        wait_until(lambda: proc.assert_alive() or tcp_accepts("127.0.0.1", port), 15, "the HTTP server to listen")
        yield f"127.0.0.1:{port}"


def test_agent_address_with_nothing_listening(world: World) -> None:
    address = f"127.0.0.1:{free_port()}"
    cp, took = timed(lambda: _cli_at(world, address, "get", "mesh", token="some-token"))
    line = assert_one_line_error(cp, r"cannot reach|connection refused", code=1)
    assert address in line and took < 10, (line, took)


def test_agent_address_with_nothing_listening_and_no_token(world: World) -> None:
    """What a user who mistyped --agent meets: no token file exists for that address. Saying 'no API token' sends
    them looking for a token; the address being unreachable is what is wrong."""
    address = f"127.0.0.1:{free_port()}"
    line = assert_one_line_error(_cli_at(world, address, "get", "mesh", token=None), r".", code=1)
    assert address in line, line
    assert re.search(r"cannot reach|connection refused|nothing (is )?listen|not running", line, re.I), line


def test_agent_address_is_a_plain_http_server(world: World, http_server: str) -> None:
    cp = _cli_at(world, http_server, "get", "mesh", token="some-token")
    line = assert_one_line_error(cp, r"not the ztm agent API", code=1)
    assert http_server in line, line


def test_agent_address_is_a_plain_http_server_and_no_token(world: World, http_server: str) -> None:
    line = assert_one_line_error(_cli_at(world, http_server, "get", "mesh", token=None), r".", code=1)
    assert http_server in line, line
    assert "not the ztm agent API" in line, line


def test_agent_address_is_the_hub(world: World) -> None:
    """The hub's port speaks TLS, not the agent API: refused in one line, no hang."""
    cp, took = timed(lambda: _cli_at(world, world.hub.address, "get", "mesh", token="some-token"))
    line = assert_one_line_error(cp, r"not the ztm agent API|another program|closed the connection", code=1)
    assert world.hub.address in line and took < 12, (line, took)


def test_agent_refuses_a_wrong_token(world: World) -> None:
    # another OS user (no link to the agent's local socket in their HOME) with a wrong ZTM_TOKEN: over TCP, refused
    other_home = world.tmp / "other-user-home"
    other_home.mkdir(exist_ok=True)
    env = base_env({"ZTM_TOKEN": "not-the-token"}, home=other_home)
    cp = run([*ZTM, "--agent", world.agent.api_address, "get", "mesh"], env=env, cwd=world.tmp, check=False, timeout=20)
    line = assert_one_line_error(cp, r"refused the API token", code=1)
    assert "not-the-token" not in line and world.agent.token not in line, line
    assert "new one at every start" in line, line


# -------------------------------------------------------------------------------------------- a full hub (max agents)


def test_a_full_hub_refuses_a_third_agent_and_keeps_serving_the_first_two(tmp_path: Path) -> None:
    hub, agents = start_hub_and_agents(tmp_path, ("one", "two", "three"), hub_extra=["--max-agents", "2"])
    one, two, three = agents["one"], agents["two"], agents["three"]
    join_all(MESH, [(one, "one"), (two, "two")], hub.permit)

    cp, took = timed(lambda: three.cli("join", MESH, "--as", "three", "--permit", hub.permit, check=False))
    assert_one_line_error(cp, r"hub is full|full", code=1)
    assert took < 15, f"the refused join took {took:.1f}s"
    assert three.cli_json("get", "mesh") == []
    assert not (three.data / "meshes" / MESH).exists(), "a refused join left its mesh directory behind"

    for me, other in ((one, "two"), (two, "one")):
        assert {m["name"]: m["status"] for m in me.meshes()} == {MESH: "online"}
        me.cli("ping", "ep", other, "--count", "2")
    assert {e["name"] for e in one.endpoints()} == {"one", "two"}, "the refused agent was registered anyway"

    # A slot frees up when one leaves: the third can join then.
    two.cli("leave", MESH)
    wait_until(lambda: "two" not in one.online_names(), 15, "two to go offline at the hub")
    three.join(MESH, "three", hub.permit)
    one.cli("ping", "ep", "three", "--count", "1")


# ------------------------------------------------------------------------------------------ hub and agent startup


def _run(tmp: Path, *args: str, timeout: float = 20) -> tuple[subprocess.CompletedProcess[str], float]:
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    return timed(lambda: run([*ZTM, *args], env=base_env(home=home), cwd=tmp, check=False, timeout=timeout))


def test_hub_on_all_interfaces_without_names(tmp_path: Path) -> None:
    permit, data = tmp_path / "root.json", tmp_path / "data"
    cp, _ = _run(
        tmp_path, "run", "hub", "--listen", f"0.0.0.0:{free_port()}", "--permit", str(permit), "--data", str(data)
    )
    assert_one_line_error(cp, r"--names is required")
    assert cp.stdout == "", cp.stdout
    assert not permit.exists() and not data.exists()


def test_hub_on_a_port_in_use(tmp_path: Path) -> None:
    permit, data = tmp_path / "root.json", tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        cp, took = _run(tmp_path, "run", "hub", "--listen", address, "--permit", str(permit), "--data", str(data))
    line = assert_one_line_error(cp, r"cannot listen|in use")
    assert address in line and took < 15, (line, took)
    assert cp.stdout == "", f"a failed hub start printed on stdout: {cp.stdout!r}"
    # It failed: it must not have handed out a root permit (with root's private key) for a hub that never ran.
    assert not permit.exists(), f"the failed hub start still wrote the root permit {permit}"


def test_agent_on_a_port_in_use(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        cp, took = _run(tmp_path, "run", "agent", "--listen", address, "--data", str(data))
    line = assert_one_line_error(cp, r"cannot listen|in use")
    assert address in line and took < 15, (line, took)
    assert cp.stdout == "", f"a failed agent start printed on stdout: {cp.stdout!r}"


@pytest.mark.parametrize(
    ("listen", "pattern"),
    [
        ("nonsense", r"--listen"),
        ("127.0.0.1:99999", r"--listen.*port"),
        ("127.0.0.1:0", r"--listen.*port"),
        ("host:port", r"--listen"),
        ("[::1", r"--listen"),
        ("", r"--listen"),
    ],
)
def test_hub_with_a_bad_listen_value(tmp_path: Path, listen: str, pattern: str) -> None:
    data = tmp_path / "data"
    cp, took = _run(tmp_path, "run", "hub", "--listen", listen, "--data", str(data))
    assert_one_line_error(cp, pattern, code=2)
    assert cp.stdout == "" and took < 10 and not data.exists()


def test_a_second_hub_on_the_same_data_directory(tmp_path: Path) -> None:
    hub = start_hub(tmp_path)
    cp, took = _run(tmp_path, "run", "hub", "--listen", f"127.0.0.1:{free_port()}", "--data", str(hub.data))
    assert_one_line_error(cp, r"already|in use|lock")
    assert took < 15
    hub.proc.assert_alive()
