"""Attacks on port streams (issue 17, names without TUN): real hub and agents on 127.0.0.1, a real mesh policy.

`hq` (root) runs `--expose-ports` with two TCP echo servers, ports A and B; the policy lets user ops1 reach
`hq:ip/tcp:A` and user bob `hq:ip/tcp:B`, nothing else. Who the caller is comes from the stream's verified
certificate at hq on every stream, never from what it claims.

- A member without the rule for a port is refused (bob to A, ops1 to B), with the policy's reason; the member with
  it gets through (the controls: without them the test could pass on an endpoint that takes nothing).
- Forged service strings sent straight through the hub with ops1's own certificate (`port/tcp/22/../x`,
  `port/tcp/0`, `port/tcp/99999`, a leading zero, another protocol, ...) are refused as malformed, never connected.
- A policy change that takes ops1's rule away closes ops1's live port stream within 1 s of the hub's answer.

UDP port flows (`port/udp/N`): hq also serves a UDP echo (port U) that records every datagram it gets; the policy
lets bob reach `hq:ip/udp:U`, not ops1.
- ops1's datagrams to U (through a `udp/NAME --target hq:U` entrance, and on a forged flow of its own) never reach
  the server: the flow is refused with the policy's reason before any socket is opened; bob's come back (the
  control).
- bob (no `--tun`, no `--expose-ports`) refuses UDP port flows with the reason, even from a member allowed elsewhere.
- Odd service shapes (`port/udp/0`, `port/udp/065535`, `port/udp/70000`, `port/sctp/1`, ...) are refused as
  malformed while `port/udp/U` from the same caller is accepted.
- A flood of flows from one caller (ops1, to the one UDP port it may reach) is bounded: past `UDP_FLOWS_PER_CALLER`
  live flows the next ones are refused, so the server sees datagrams from at most that many sockets; once the
  caller's flows end, it may open flows again.
"""

from __future__ import annotations

import asyncio
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
from ztm.apps.net.ports import UDP_FLOWS_PER_CALLER as LIMIT
from ztm.apps.tunnel.pipe import Deframer, frame
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
    u: int
    """hq's UDP echo; what it got (datagram, source address) lands in `seen`."""
    seen: list[tuple[bytes, Any]]
    bob_id: str
    flood: int
    """hq's second UDP echo (also recorded in `seen`), the one port ops1 may send datagrams to."""


def policy(a: int, b: int, *, ops: bool = True, udp: int = 0, flood: int = 0) -> str:
    acls = [f'{{"action": "accept", "src": ["bob"], "dst": ["hq:ip/tcp:{b}"]}}']
    if udp:  # ops1 may reach bob's port U by policy: bob itself must refuse (it takes no port flows)
        acls.append(f'{{"action": "accept", "src": ["bob"], "dst": ["hq:ip/udp:{udp}"]}}')
        acls.append(f'{{"action": "accept", "src": ["ops1"], "dst": ["bob-laptop:ip/udp:{udp}"]}}')
    if flood:  # ops1's only UDP flows at hq: those of the flood
        acls.append(f'{{"action": "accept", "src": ["ops1"], "dst": ["hq:ip/udp:{flood}"]}}')
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
        ids = {e["name"]: e["id"] for e in ops.endpoints()}
        seen: list[tuple[bytes, Any]] = []
        u = servers.udp_echo(seen)
        a, b, flood = servers.echo(), servers.echo(), servers.udp_echo(seen)
        w = World(hub, hq, ops, bob, servers, a, b, ids["hq"], u, seen, ids["bob-laptop"], flood)
        set_policy(w, policy(w.a, w.b, udp=w.u, flood=w.flood))
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


def _open(w: World, agent: Agent, service: str, target: str = "") -> tuple[int, str]:
    """A net-app stream for `service` to hq (or `target`), straight through the hub with `agent`'s own certificate:
    (status, reason) of the refusal, (0, reason) if the stream broke instead, or (200, "") once accepted."""
    files = agent.data / "meshes" / MESH
    with HubClient(w.hub.address, files) as client:

        async def go() -> tuple[int, str]:
            try:
                stream = await open_e2e(client.conn, layer_of(MeshFiles(files)), target or w.hq_id, "net", service)
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
        f"port/sctp/{a}",
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
        at = set_policy(w, policy(w.a, w.b, ops=False, udp=w.u, flood=w.flood))
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
        set_policy(w, policy(w.a, w.b, udp=w.u, flood=w.flood))
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


# ---- UDP port flows ---------------------------------------------------------------------------------------------


def flows(w: World, agent: Agent, count: int, tag: bytes) -> list[tuple[int, str, bytes]]:
    """`count` UDP port flows to hq's flood port, opened one after the other with `agent`'s own certificate
    straight through the hub and all kept open until the last; each sends one datagram `tag + i` and waits (2 s)
    for its echo: per flow (status, refusal, echo)."""
    files = agent.data / "meshes" / MESH
    with HubClient(w.hub.address, files) as client:

        async def one(layer: Any, i: int) -> tuple[int, str, bytes, Any]:
            try:
                stream = await open_e2e(client.conn, layer, w.hq_id, "net", f"port/udp/{w.flood}")
            except ZtmError as exc:
                return exc.status, exc.message, b"", None
            except E2EError as exc:
                return 0, str(exc), b"", None
            await stream.write(frame(tag + str(i).encode()))
            try:
                async with asyncio.timeout(2.0):
                    deframer = Deframer()
                    while not (got := deframer.feed(await stream.read())):
                        pass
                return 200, "", got[0], stream
            except TimeoutError:
                return 200, "", b"", stream

        async def go() -> list[tuple[int, str, bytes]]:
            layer = layer_of(MeshFiles(files))
            results = []
            for i in range(count):  # one by one: the limit is on live flows, not on flows being opened at once
                results.append(await one(layer, i))
            for *_, stream in results:
                if stream is not None:
                    stream.reset()
            return [(status, message, echo) for status, message, echo, _ in results]

        found: list[tuple[int, str, bytes]] = client.run(go(), timeout=120)
        return found


def udp_roundtrip(port: int, data: bytes, timeout: float = 3.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(data, ("127.0.0.1", port))
        try:
            return sock.recvfrom(1 << 17)[0]
        except TimeoutError:
            return None


def got_from(w: World, tag: bytes) -> list[bytes]:
    return [data for data, _ in list(w.seen) if data.startswith(tag)]


def test_only_the_ip_udp_rule_lets_datagrams_through(world: World) -> None:
    w = world
    bob_port = free_port()
    w.bob.cli("tunnel", "open", "inbound", "udp/u", "--listen", str(bob_port), "--target", f"hq:{w.u}")
    ops_port = free_port()
    w.ops.cli("tunnel", "open", "inbound", "udp/u", "--listen", str(ops_port), "--target", f"hq:{w.u}")
    try:
        got = wait_until(lambda: udp_roundtrip(bob_port, b"bob-udp") == b"bob-udp" or None, TIMEOUT, "bob's flow")
        assert got  # the control: bob's rule lets its datagrams through and back
        for i in range(5):
            assert udp_roundtrip(ops_port, b"ops-udp-%d" % i, timeout=0.5) is None
        wait_until(
            lambda: w.ops.cli_json("tunnel", "describe", "inbound", "udp/u")["refused"] >= 1,
            TIMEOUT,
            "ops1's flow to be refused",
        )
        status, message = _open(w, w.ops, f"port/udp/{w.u}")  # and a flow of its own, straight through the hub
        assert status == 403 and message.startswith("policy: "), (status, message)
        assert got_from(w, b"ops-udp") == [], "a datagram of ops1 reached the UDP server"
        assert "refused port/udp/" in hq_log(w)
    finally:
        w.bob.cli("tunnel", "close", "inbound", "udp/u")
        w.ops.cli("tunnel", "close", "inbound", "udp/u")


def test_an_endpoint_without_ports_refuses_udp_port_flows(world: World) -> None:
    w = world
    status, message = _open(w, w.ops, f"port/udp/{w.u}", target=w.bob_id)
    assert status == 403 and "takes no port streams" in message, (status, message)


def test_odd_udp_service_strings_are_refused(world: World) -> None:
    w = world
    assert _open(w, w.bob, f"port/udp/{w.u}") == (200, "")  # the control: bob may, over this very path
    odd = ["port/udp/0", "port/udp/065535", "port/udp/70000", "port/sctp/1", f"port/udp/0{w.u}", f"port/UDP/{w.u}",
           f"port/udp/{w.u}/", f"port/udp//{w.u}", "port/udp/-1", "port/icmp/1"]  # fmt: skip
    for service in odd:
        status, message = _open(w, w.bob, service)
        assert status in (400, 403), (service, status, message)
        assert status == 400 or "invalid port stream" in message, (service, message)


def test_a_flood_of_udp_flows_from_one_caller_is_bounded(world: World) -> None:
    w = world
    results = flows(w, w.ops, LIMIT + 8, b"flood-")
    accepted = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] != 200]
    assert len(accepted) == LIMIT, (len(accepted), refused[:3])
    assert all(echo.startswith(b"flood-") for _, _, echo in accepted), "an accepted flow echoes"
    assert len(refused) == 8 and all("too many UDP flows" in m for _, m, _ in refused), refused[:3]
    sources = {addr for data, addr in list(w.seen) if data.startswith(b"flood-")}
    assert len(sources) <= LIMIT, f"the server saw {len(sources)} sockets of one caller"
    # the flows ended with the flood: the caller may open flows again
    wait_until(lambda: flows(w, w.ops, 1, b"after-")[0][0] == 200, TIMEOUT, "a flow after the flood")
