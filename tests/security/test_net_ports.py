"""Attacks on port streams (issue 17, names without TUN): real hub and agents on 127.0.0.1, a real mesh policy.

`hq` (root) runs `--expose-ports` with two TCP echo servers, ports A and B; the policy lets user ops1 reach
`hq:ip/tcp:A` and user bob `hq:ip/tcp:B`, nothing else. Who the caller is comes from the stream's verified
certificate at hq on every stream, never from what it claims.

- A member without the rule for a port is refused (bob to A, ops1 to B), with the policy's reason; the member with
  it gets through (the controls: without them the test could pass on an endpoint that takes nothing).
- Forged service strings sent straight through the hub with ops1's own certificate (`port/tcp/22/../x`,
  `port/tcp/0`, `port/tcp/99999`, a leading zero, another protocol, ...) are refused as malformed, never connected.
- A policy change that takes ops1's rule away closes ops1's live port stream within 1 s of the hub's answer.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from e2eclient import layer_of, open_e2e
from integration.test_tunnel import MESH, Servers, closed_without_answer, echo_roundtrip
from reliability.hubclient import HubClient
from support import Agent, Hub, Proc, free_port, invite, start_hub_and_agents, wait_until
from ztm.agent.tls import MeshFiles
from ztm.e2e import E2EError
from ztm.errors import ZtmError

TIMEOUT = 20.0
CLOSE_LIMIT = 1.0


@dataclass
class World:
    hub: Hub
    hq: Agent
    ops: Agent
    bob: Agent
    servers: Servers
    a: int
    b: int
    hq_id: str


def policy(a: int, b: int, *, ops: bool = True) -> str:
    acls = [f'{{"action": "accept", "src": ["bob"], "dst": ["hq:ip/tcp:{b}"]}}']
    if ops:
        acls.append(f'{{"action": "accept", "src": ["ops1"], "dst": ["hq:ip/tcp:{a}"]}}')
    return '{"acls": [' + ", ".join(acls) + "]}"


def set_policy(w: World, text: str) -> float:
    """Set the mesh policy with root's certificate; wait until hq enforces it; the monotonic time of the answer."""
    with HubClient(w.hub.address, w.hq.data / "meshes" / MESH) as client:
        status, answer = client.json("POST", "/api/policy", {"text": text, "note": "test"})
        at = time.monotonic()
    assert status == 200, (status, answer)
    version = int(answer["version"])

    def enforced() -> bool:
        code, view = w.hq.api("GET", f"/api/meshes/{MESH}/policy/local")
        return code == 200 and view["version"] == version

    wait_until(enforced, TIMEOUT, f"hq to enforce policy version {version}")
    return at


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("net-ports-sec")
    servers = Servers()
    procs: list[Proc] = []
    try:
        hub, agents = start_hub_and_agents(tmp, ("hq", "ops", "bob"), agent_extra={"hq": ["--expose-ports"]})
        procs += [hub.proc, *(a.proc for a in agents.values())]
        hq, ops, bob = agents["hq"], agents["ops"], agents["bob"]
        hq.join(MESH, "hq", hub.permit)
        ops.join(MESH, "ops", invite(hq, ops, "ops1", tmp / "ops1.json"))
        bob.join(MESH, "bob-laptop", invite(hq, bob, "bob", tmp / "bob.json"))
        hq_id = next(e["id"] for e in ops.endpoints() if e["name"] == "hq")
        w = World(hub, hq, ops, bob, servers, servers.echo(), servers.echo(), hq_id)
        set_policy(w, policy(w.a, w.b))
        yield w
    finally:
        servers.close()
        for proc in reversed(procs):
            proc.stop()


def entrance(agent: Agent, name: str, target: str) -> int:
    port = free_port()
    agent.cli("tunnel", "open", "inbound", f"tcp/{name}", "--listen", str(port), "--target", target)
    return port


def hq_log(w: World) -> str:
    return w.hq.cli("log", "agent", "--lines", "400").stdout


def test_only_the_ip_tcp_rule_for_the_port_allows_a_port_stream(world: World) -> None:
    w = world
    ops_a, ops_b = entrance(w.ops, "a", f"hq:{w.a}"), entrance(w.ops, "b", f"hq:{w.b}")
    bob_a, bob_b = entrance(w.bob, "a", f"hq:{w.a}"), entrance(w.bob, "b", f"hq:{w.b}")
    wait_until(lambda: echo_roundtrip(ops_a, b"ops to a") == b"ops to a", TIMEOUT, "ops1's stream to port A")
    assert echo_roundtrip(bob_b, b"bob to b") == b"bob to b"
    assert closed_without_answer(ops_b, b"ops to b")
    assert closed_without_answer(bob_a, b"bob to a")
    log = hq_log(w)
    assert "refused port/tcp/" in log and "policy:" in log, log[-3000:]
    metrics = w.hq.api("GET", "/api/metrics")[1]
    assert 'app="ip"' in str(metrics), "the gate counts ip decisions"
    for agent in (w.ops, w.bob):
        for name in ("a", "b"):
            agent.cli("tunnel", "close", "inbound", f"tcp/{name}")


def _open(w: World, agent: Agent, service: str) -> tuple[int, str]:
    """A net-app stream for `service` to hq, straight through the hub with `agent`'s own certificate: (status,
    reason) of the refusal, (0, reason) if the stream broke instead, or (200, "") once accepted."""
    files = agent.data / "meshes" / MESH
    with HubClient(w.hub.address, files) as client:

        async def go() -> tuple[int, str]:
            try:
                stream = await open_e2e(client.conn, layer_of(MeshFiles(files)), w.hq_id, "net", service)
            except ZtmError as exc:
                return exc.status, exc.message
            except E2EError as exc:
                return 0, str(exc)
            stream.reset()
            return 200, ""

        result: tuple[int, str] = client.run(go())
        return result


def test_the_refusal_names_the_policy(world: World) -> None:
    w = world
    assert _open(w, w.bob, f"port/tcp/{w.b}") == (200, "")  # the control
    status, message = _open(w, w.bob, f"port/tcp/{w.a}")
    assert status == 403 and message.startswith("policy: "), (status, message)
    status, message = _open(w, w.ops, f"port/tcp/{w.b}")
    assert status == 403 and message.startswith("policy: "), (status, message)


def forged(a: int) -> list[str]:
    """Service strings that are not `port/tcp/N`: most name port A, which ops1 may reach, so that only the service's
    own check can refuse them."""
    return [
        f"port/tcp/{a}/../x",
        f"port/tcp/{a}/",
        f"port/tcp/0{a}",
        f"port/tcp/{a} ",
        f"port/tcp/+{a}",
        f"port/tcp/{a}x",
        f"port/udp/{a}",
        f"port//tcp/{a}",
        "port/tcp/" + "".join(chr(0xFF10 + int(d)) for d in str(a)),  # full-width digits
        "port/tcp/0",
        "port/tcp/99999",
        "port/tcp/65536",
        "port/tcp/-1",
        "port/tcp/",
        "port/tcp/1e3",
    ]


def test_forged_service_strings_are_refused(world: World) -> None:
    w = world
    assert _open(w, w.ops, f"port/tcp/{w.a}") == (200, "")  # the control: ops1 may, over this very path
    for service in forged(w.a):
        status, message = _open(w, w.ops, service)
        assert status in (400, 403), (service, status, message)  # 400: the hub's own header check came first
        assert status == 400 or "invalid port stream" in message, (service, message)
    log = hq_log(w)
    assert f"invalid port stream 'port/tcp/{w.a}/../x'" in log, log[-3000:]


def test_a_new_policy_closes_a_live_port_stream(world: World) -> None:
    w = world
    port = entrance(w.ops, "live", f"hq:{w.a}")
    sock = wait_until(lambda: _connected(port), TIMEOUT, "ops1's live stream to port A")
    try:
        at = set_policy(w, policy(w.a, w.b, ops=False))
        sock.settimeout(CLOSE_LIMIT + 3)
        try:
            data = sock.recv(100)
        except ConnectionError:
            data = b""
        except TimeoutError:
            raise AssertionError(
                f"the live port stream stayed open {CLOSE_LIMIT + 3}s after the policy change"
            ) from None
        took = time.monotonic() - at
        assert data == b"", data
        assert took < CLOSE_LIMIT, f"the live port stream was closed {took:.2f}s after the policy change"
        assert closed_without_answer(port, b"again")
    finally:
        sock.close()
        set_policy(w, policy(w.a, w.b))
        w.ops.cli("tunnel", "close", "inbound", "tcp/live")


def _connected(port: int) -> Any:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"ping")
    try:
        if sock.recv(4) == b"ping":
            return sock
    except OSError:
        pass
    sock.close()
    return None
