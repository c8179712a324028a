"""The mesh's access policy enforced at every app's exit (issue 16): real hub and agent processes on 127.0.0.1.

One mesh for the module: root's endpoint `hq` (label `tag:db`) is the exit of everything: a TCP and a UDP tunnel, a
proxy exit, a terminal open to the other users, a file publisher and the example installed app `chat`; `ops` (user
ops1, in `group:ops`) and `bob-laptop` (user bob) are entrances. Every per-app list admits both users, so what differs
is the policy's doing. The policy is set, replaced and rolled back through the hub's routes with root's certificate.

* Every app refuses what the policy does not allow and accepts what it does: tunnel TCP and UDP, proxy (the
  destination as the client asked for it), terminal exec, file chunks (`files/PATH` at the serving endpoint), the
  installed app's streams; each refusal names the policy, and the exit counts it by app.
* A policy change closes a live tunnel connection and a live terminal session it no longer allows within 1 s of the
  hub's answer to the change (measured); a rollback restores access.
* An exit restarted while its hub is down enforces the policy it had stored (the local route shows the version and
  the rules that can reach it, the metrics the version).
"""

from __future__ import annotations

import contextlib
import json
import select
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reliability.hubclient import HubClient
from support import (
    ZTM,
    Agent,
    Hub,
    Proc,
    free_port,
    invite,
    one_line_error,
    restart_agent,
    start_hub_and_agents,
    wait_until,
)

from .test_proxy import socks_code
from .test_tunnel import MESH, Servers, closed_within, echo_roundtrip, open_inbound, open_outbound
from .test_tunnel_direct import metric, udp_echoes

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chat"
TIMEOUT = 20.0
CLOSE_LIMIT = 1.0
"""Seconds from the hub's answer to a policy change to the close of what it no longer allows (issue 16: 1 s)."""

POLICY = """{
  // who may reach the database endpoint `hq`, and through what
  "groups": {"group:ops": ["OPS"]},
  "tagOwners": {"tag:db": ["root"]},
  "acls": [
    {"action": "accept", "src": ["group:ops"],
     "dst": ["tag:db:tunnel/tcp/pg", "tag:db:tunnel/udp/dns", "hq:terminal", "hq:proxy/127.0.0.1:ECHO", "hq:app/chat"]},
    {"action": "accept", "src": ["*"], "dst": ["*:files/shared/"]},
    // bob may use another tunnel and another app at hq: the hub's first line lets his streams through, hq decides
    {"action": "accept", "src": ["bob"], "dst": ["hq:tunnel/tcp/other", "hq:app/other"]},
  ],
  "tests": [TESTS],
}"""
TESTS = '{"src": "ops1", "accept": ["tag:db:tunnel/tcp/pg", "hq:terminal"], "deny": ["hq:files/users/root/"]}'
"""The policy's tests (run by the hub before it takes the policy)."""


@dataclass
class World:
    hub: Hub
    hq: Agent
    ops: Agent
    bob: Agent
    servers: Servers
    echo: int
    """A TCP echo server's port: the tunnel's and the proxy's target."""
    other: int
    """Another TCP echo server's port: a proxy destination the policy does not name."""
    pg: dict[str, int]
    """Entrance port of tcp/pg by user (ops1, bob)."""
    dns: dict[str, int]
    """Entrance port of udp/dns by user."""
    proxy: dict[str, int]
    """SOCKS5 entrance port by user."""
    versions: list[int]


def start_chat(agent: Agent) -> None:
    shutil.copytree(EXAMPLE, agent.data / "apps" / "chat", ignore=shutil.ignore_patterns("__pycache__"))
    agent.cli("start", "app", "chat")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("policy-apps")
    procs: list[Proc] = []
    servers = Servers()
    try:
        hub, agents = start_hub_and_agents(tmp, ("hq", "ops", "bob"))
        procs += [hub.proc, *(a.proc for a in agents.values())]
        hq, ops, bob = agents["hq"], agents["ops"], agents["bob"]
        hq.join(MESH, "hq", hub.permit, "--label", "tag:db")
        ops.join(MESH, "ops", invite(hq, ops, "ops1", tmp / "ops1.json"))
        bob.join(MESH, "bob-laptop", invite(hq, bob, "bob", tmp / "bob.json"))
        echo, other, udp = servers.echo(), servers.echo(), servers.udp_echo()
        open_outbound(hq, "tcp/pg", echo)
        open_outbound(hq, "udp/dns", udp)
        hq.cli("proxy", "config", "--add-target", "127.0.0.1")
        hq.cli("terminal", "config", "--set-shell", "/bin/sh", "--add-user", "ops1", "--add-user", "bob")
        hq.cli("terminal", "enable")
        for name, body in (("shared/root/a.txt", b"for everyone\n"), ("users/root/lent.txt", b"lent to ops1\n")):
            local = tmp / Path(name).name
            local.write_bytes(body)
            hq.cli("publish", "file", f"/{name}", "-i", local, "--readonly", "ops1,bob")
        pg, dns, proxy = {}, {}, {}
        for user, agent in (("ops1", ops), ("bob", bob)):
            pg[user] = open_inbound(agent, "tcp/pg")
            dns[user] = open_inbound(agent, "udp/dns")
            proxy[user] = free_port()
            agent.cli("proxy", "config", "--set-listen", f"127.0.0.1:{proxy[user]}")
        for agent in (hq, ops, bob):
            start_chat(agent)
        world = World(hub, hq, ops, bob, servers, echo, other, pg, dns, proxy, [])
        # Controls, before any policy: the per-app lists let both users through everything.
        for user in ("ops1", "bob"):
            wait_until(lambda u=user: echo_roundtrip(pg[u], b"ping") == b"ping", TIMEOUT, f"{user}'s tcp/pg")
            wait_until(lambda u=user: socks_code(proxy[u], "127.0.0.1", echo) == 0, TIMEOUT, f"{user}'s proxy")
        wait_until(lambda: "hq" in bob.cli("chat", "peers").stdout, TIMEOUT, "bob's chat to see hq's")
        assert "delivered to hq" in bob.cli("chat", "send", "hq", "before the policy").stdout
        yield world
    finally:
        servers.close()
        for proc in reversed(procs):
            proc.stop()


def hub_post(world: World, path: str, body: dict[str, Any]) -> tuple[int, Any, float]:
    """POST to the hub with root's certificate (hq's); returns (status, answer, monotonic time of the answer)."""
    with HubClient(world.hub.address, world.hq.data / "meshes" / MESH) as client:
        status, answer = client.json("POST", path, body)
        return status, answer, time.monotonic()


def set_policy(world: World, text: str) -> tuple[int, float]:
    status, answer, at = hub_post(world, "/api/policy", {"text": text, "note": "test"})
    assert status == 200, (status, answer)
    world.versions.append(int(answer["version"]))
    return int(answer["version"]), at


def enforced(agent: Agent, version: int) -> bool:
    status, view = agent.api("GET", f"/api/meshes/{MESH}/policy/local")
    return status == 200 and view["version"] == version


def policy_text(world: World, ops: str = "ops1") -> str:
    """The module's policy, with `ops` the only member of group:ops (and its tests only when that is ops1)."""
    tests = TESTS if ops == "ops1" else ""
    return POLICY.replace("ECHO", str(world.echo)).replace("OPS", ops).replace("TESTS", tests)


def denied(agent: Agent, app: str) -> int:
    return metric_labelled(agent, "ztm_agent_policy_denied_total", app)


def metric_labelled(agent: Agent, name: str, app: str) -> int:
    status, body = agent.api("GET", "/api/metrics")
    assert status == 200, body
    for line in str(body).splitlines():
        if line.startswith(name + "{") and f'app="{app}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def ensure_policy(world: World) -> int:
    """The module's policy in force at hq (set once, or again after a test changed it)."""
    status, view = world.hq.api("GET", f"/api/meshes/{MESH}/policy/local")
    assert status == 200, view
    if world.versions and view["version"] == world.versions[0]:
        return world.versions[0]
    version, _ = set_policy(world, policy_text(world))
    wait_until(lambda: enforced(world.hq, version), TIMEOUT, f"hq to enforce policy version {version}")
    return version


# -------------------------------------------------------------------------------------------------------- tests


def test_every_app_refuses_what_the_policy_does_not_allow_and_accepts_what_it_does(world: World) -> None:
    version = ensure_policy(world)
    status, local = world.hq.api("GET", f"/api/meshes/{MESH}/policy/local")
    assert status == 200 and local["tags"] == ["tag:db"], local
    assert [line for line, _rule in local["rules_for_me"]] == [6, 8, 10], local
    before = {app: denied(world.hq, app) for app in ("tunnel", "proxy", "files", "app")}
    ops, bob = world.ops, world.bob

    # tunnel, TCP and UDP: ops1 by group:ops -> tag:db, bob by nothing (his rule names another tunnel)
    assert echo_roundtrip(world.pg["ops1"], b"ops1 to pg") == b"ops1 to pg"
    closed_within(world.pg["bob"], 5.0)
    assert udp_echoes(world.dns["ops1"], [b"ops1 to dns"])
    with pytest.raises(OSError):  # the flow is refused at the exit: nothing comes back
        udp_echoes(world.dns["bob"], [b"bob to dns"])

    # proxy: the destination as the client asked for it
    assert socks_code(world.proxy["ops1"], "127.0.0.1", world.echo) == 0
    assert socks_code(world.proxy["ops1"], "127.0.0.1", world.other) == 0x02  # not in the policy: not allowed
    assert socks_code(world.proxy["bob"], "127.0.0.1", world.echo) == 0x02

    # terminal exec (bob's is refused by the hub's first line already: no rule gives him any terminal at hq)
    assert ops.cli("terminal", "exec", "hq", "--", "echo hello from hq").stdout == "hello from hq\n"
    line = one_line_error(bob.cli("terminal", "exec", "hq", "--", "echo nope", check=False))
    assert f"policy: denied: no rule of policy version {version} allows it" in line, line

    # files: /shared/ for everyone, /users/root/ for no one (the file's own ACL lends it to both)
    assert bob.cli("download", "file", "/shared/root/a.txt", "-o", "-").stdout == "for everyone\n"
    line = one_line_error(ops.cli("download", "file", "/users/root/lent.txt", "-o", "-", check=False))
    assert "policy: denied" in line, line

    # the installed app
    assert "delivered to hq" in ops.cli("chat", "send", "hq", "ops1 by policy").stdout
    line = one_line_error(bob.cli("chat", "send", "hq", "bob past the policy", check=False))
    assert "policy: denied" in line, line
    inbox = world.hq.cli("chat", "inbox").stdout
    assert "ops1 by policy" in inbox and "bob past the policy" not in inbox, inbox

    # the other refusals were the exit's own decisions, counted by app
    after = {app: denied(world.hq, app) for app in before}
    assert all(after[app] > before[app] for app in before), (before, after)


def test_a_policy_change_closes_live_connections_within_a_second_and_rollback_restores(world: World) -> None:
    first = ensure_policy(world)
    ops = world.ops
    closed_before = metric_labelled(world.hq, "ztm_agent_policy_closed_total", "tunnel")
    with socket.create_connection(("127.0.0.1", world.pg["ops1"]), timeout=10) as conn:
        conn.sendall(b"live")
        assert conn.recv(16) == b"live"
        argv = [*ZTM, "--agent", ops.api_address, "terminal", "exec", "hq", "--", "echo ready; exec sleep 60"]
        with Proc(argv, env=ops.env, cwd=ops.dir, name="terminal-exec", log_dir=ops.dir) as session:
            session.wait_for_output(r"ready", TIMEOUT)
            # Everything ops1 had moves to another group's hands: his tunnel and terminal are no longer allowed.
            second, answered = set_policy(world, policy_text(world, ops="someone-else"))
            tunnel_closed = terminal_closed = None
            deadline = answered + 5.0
            while (tunnel_closed is None or terminal_closed is None) and time.monotonic() < deadline:
                if tunnel_closed is None and select.select([conn], [], [], 0.005)[0]:
                    with contextlib.suppress(ConnectionError):
                        assert conn.recv(16) == b"", "the tunnel carried data after the policy revoked it"
                    tunnel_closed = time.monotonic()
                if terminal_closed is None and not session.alive:
                    terminal_closed = time.monotonic()
                time.sleep(0.005)
            assert tunnel_closed is not None, "the live tunnel connection stayed open 5 s after the policy change"
            assert terminal_closed is not None, "the live terminal session stayed open 5 s after the policy change"
            took = {"tunnel": tunnel_closed - answered, "terminal": terminal_closed - answered}
            print(f"closed after the hub's answer to the change: {took}")
            assert max(took.values()) < CLOSE_LIMIT, took
            assert "policy: denied" in session.output(), session.output()
    assert enforced(world.hq, second)
    # the TCP connection (and the UDP flow of the first test, if it is still open)
    assert metric_labelled(world.hq, "ztm_agent_policy_closed_total", "tunnel") >= closed_before + 1
    assert metric_labelled(world.hq, "ztm_agent_policy_closed_total", "terminal") >= 1
    closed_within(world.pg["ops1"], 5.0)

    status, answer, _ = hub_post(world, "/api/policy/rollback", {"version": first})
    assert status == 200, (status, answer)
    world.versions.insert(0, int(answer["version"]))
    wait_until(lambda: enforced(world.hq, world.versions[0]), TIMEOUT, "hq to enforce the rolled back policy")
    assert echo_roundtrip(world.pg["ops1"], b"back") == b"back"
    assert ops.cli("terminal", "exec", "hq", "--", "echo back").stdout == "back\n"


def test_an_exit_restarted_while_its_hub_is_down_enforces_the_stored_policy(world: World) -> None:
    version = ensure_policy(world)
    world.hub.proc.stop()
    restart_agent(world.hq)
    status, view = world.hq.api("GET", f"/api/meshes/{MESH}/policy/local")
    assert status == 200 and view["version"] == version, view
    assert [line for line, _rule in view["rules_for_me"]] == [6, 8, 10], view
    status, meshes = world.hq.api("GET", f"/api/meshes/{MESH}")
    assert status == 200 and meshes["status"] != "online", meshes  # the hub is really away
    assert metric(world.hq, "ztm_agent_policy_version") == version
    log = json.dumps(world.hq.api("GET", "/api/log?lines=400")[1])
    assert f"policy version {version} in force" in log
