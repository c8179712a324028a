"""Names without TUN (issue 17): port streams between real hub and agent processes on 127.0.0.1, no TUN needed.

`db` runs `--expose-ports` (its port streams connect to 127.0.0.1) and serves a TCP echo; `plain` runs neither
`--tun` nor `--expose-ports`; `client` is the entrance: its SOCKS5/HTTP proxy and a tunnel entrance with `--target
EP:PORT`. No policy is set in this module (tests/security/test_net_ports.py has the policy's side).

Covered: SOCKS5 to `db.m.ztm:PORT` (and in upper case) and HTTP CONNECT to it reach db's echo server with no proxy
exit anywhere; the tunnel entrance `--target db:PORT` does too; `plain` refuses port streams with a message that says
why (HTTP 403 with the reason, SOCKS "not allowed"); an unknown name, a closed port, UDP to an endpoint that takes no
port flows are refused with their own codes; bad `--target` values and combinations are one-line errors that change
nothing. UDP by name (port flows, `port/udp/N`): a `udp/NAME --target db:PORT` entrance and SOCKS5 UDP ASSOCIATE to
`db.m.ztm:PORT` carry datagrams to db's UDP echo and back, byte-exact, each keeping its boundaries. Mesh addresses
given as IP literals (db's IPv4 and ULA IPv6) reach db as its name would, through SOCKS5 and HTTP CONNECT; an unknown
address in the mesh range is refused like an unknown name.
"""

from __future__ import annotations

import ipaddress
import random
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from support import Agent, Proc, free_port, start_hub_and_agents, wait_until

from .test_proxy import raw_exchange, recv_exactly, socks_address, socks_code, socks_open
from .test_tunnel import MESH, Servers, closed_without_answer, echo_roundtrip

TIMEOUT = 20.0
ALLOWED, NOT_ALLOWED, HOST_UNREACHABLE, REFUSED = 0, 2, 4, 5


@dataclass
class World:
    client: Agent
    db: Agent
    plain: Agent
    servers: Servers
    echo: int
    """db's (and plain's) TCP echo server on 127.0.0.1."""
    udp_echo: int
    """db's (and plain's) UDP echo server on 127.0.0.1."""
    proxy: int
    """client's SOCKS5/HTTP proxy port."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("net-ports")
    servers = Servers()
    procs: list[Proc] = []
    try:
        hub, agents = start_hub_and_agents(tmp, ("client", "db", "plain"), agent_extra={"db": ["--expose-ports"]})
        procs += [hub.proc, *(a.proc for a in agents.values())]
        for name, agent in agents.items():
            agent.join(MESH, name, hub.permit)
        proxy = free_port()
        agents["client"].cli("proxy", "config", "--set-listen", str(proxy))
        client, db, plain = agents["client"], agents["db"], agents["plain"]
        yield World(client, db, plain, servers, servers.echo(), servers.udp_echo(), proxy)
    finally:
        servers.close()
        for proc in reversed(procs):
            proc.stop()


def socks_echo(proxy: int, host: str, port: int, data: bytes) -> bytes:
    sock, code, _, _ = socks_open(proxy, 1, host, port)
    with sock:
        assert code == ALLOWED, f"SOCKS5 reply {code} for {host}:{port}"
        sock.sendall(data)
        return recv_exactly(sock, len(data))


def http_connect_echo(proxy: int, target: str, data: bytes) -> bytes:
    """`data` through an HTTP CONNECT to `target` (HOST:PORT) at the proxy, to an echo server: what comes back."""
    with socket.create_connection(("127.0.0.1", proxy), timeout=15) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 200"), head
        sock.sendall(data)
        return recv_exactly(sock, len(data))


def test_socks5_and_http_connect_reach_an_endpoint_by_its_mesh_name(world: World) -> None:
    w = world
    got = wait_until(
        lambda: socks_echo(w.proxy, f"db.{MESH}.ztm", w.echo, b"hello db") == b"hello db" or None,
        TIMEOUT,
        "SOCKS5 to db.m.ztm",
    )
    assert got
    assert socks_echo(w.proxy, f"DB.{MESH.upper()}.ZTM", w.echo, b"case") == b"case"
    assert http_connect_echo(w.proxy, f"db.{MESH}.ztm:{w.echo}", b"over http") == b"over http"
    view = w.client.cli_json("proxy", "get", "config")
    assert view["counters"].get("entrance:mesh_names", 0) >= 3, view["counters"]
    assert not any(e.get("targets") for e in w.client.cli_json("proxy", "get", "exits")), "no proxy exit is used"


def test_tunnel_entrance_with_a_port_target(world: World) -> None:
    w = world
    port = free_port()
    out = w.client.cli("tunnel", "open", "inbound", "tcp/db-echo", "--listen", str(port), "--target", f"db:{w.echo}")
    assert f"port {w.echo} of db" in out.stdout, out.stdout
    wait_until(lambda: echo_roundtrip(port, b"tunnel to db") == b"tunnel to db", TIMEOUT, "the --target entrance")
    described = w.client.cli_json("tunnel", "describe", "inbound", "tcp/db-echo")
    db_id = next(e["id"] for e in w.client.endpoints() if e["name"] == "db")
    assert described["target"] == f"{db_id}:{w.echo}" and described["names"] == {db_id: "db"}, described
    assert described["streams"] >= 1 and described["exit_endpoints"] == []
    w.client.cli("tunnel", "close", "inbound", "tcp/db-echo")


def test_an_endpoint_without_tun_or_expose_ports_refuses_with_the_reason(world: World) -> None:
    w = world
    answer = raw_exchange(w.proxy, f"CONNECT plain.{MESH}.ztm:{w.echo} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 403"), answer
    assert b"takes no port streams: it runs without --tun and without --expose-ports" in answer, answer
    assert socks_code(w.proxy, f"plain.{MESH}.ztm", w.echo) == NOT_ALLOWED
    port = free_port()
    w.client.cli("tunnel", "open", "inbound", "tcp/plain-echo", "--listen", str(port), "--target", f"plain:{w.echo}")
    assert closed_without_answer(port, b"x")  # closed at once
    assert "without --expose-ports" in w.plain.cli("log", "agent", "--lines", "200").stdout
    assert "--expose-ports: members of the joined meshes may open TCP connections and send UDP" in w.db.proc.output()
    assert w.client.cli_json("tunnel", "describe", "inbound", "tcp/plain-echo")["refused"] >= 1
    w.client.cli("tunnel", "close", "inbound", "tcp/plain-echo")


def test_unknown_names_closed_ports_and_udp(world: World) -> None:
    w = world
    assert socks_code(w.proxy, f"nobody.{MESH}.ztm", w.echo) == HOST_UNREACHABLE
    answer = raw_exchange(w.proxy, f"CONNECT nobody.{MESH}.ztm:{w.echo} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 502") and b"no endpoint named 'nobody'" in answer, answer
    closed = free_port()
    assert socks_code(w.proxy, f"db.{MESH}.ztm", closed) == REFUSED
    sock, code, host, port = socks_open(w.proxy, 3, "0.0.0.0", 0)  # UDP ASSOCIATE, then a datagram to `plain`
    with sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert code == ALLOWED
        udp.sendto(b"\x00\x00\x00" + socks_address(f"plain.{MESH}.ztm", w.udp_echo) + b"dgram", (host, port))
        wait_until(
            lambda: w.client.cli_json("proxy", "get", "config")["counters"].get("entrance-udp:refused", 0) >= 1,
            TIMEOUT,
            "the UDP datagram to an endpoint without port flows to be refused",
        )
    assert "takes no port streams" in w.client.cli("log", "agent", "--lines", "200").stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("tcp/x", "--target", "db:0"), "invalid target 'db:0'"),
        (("tcp/x", "--target", "db:99999"), "invalid target 'db:99999'"),
        (("tcp/x", "--target", "db"), "invalid target 'db'"),
        (("tcp/x", "--target", "bad name:22"), "invalid endpoint in target"),
        (("tcp/x", "--target", "db:22", "--exits", "db"), "--target EP:PORT needs no exit"),
        (("tcp/x", "--target", "nobody:22"), "nobody"),
    ],
)
def test_bad_targets_are_one_line_errors(world: World, args: tuple[str, ...], message: str) -> None:
    w = world
    cp = w.client.cli("tunnel", "open", "inbound", *args, "--listen", str(free_port()), check=False)
    assert cp.returncode != 0 and message in cp.stderr, cp
    assert len(cp.stderr.strip().splitlines()) == 1, cp.stderr
    assert "Traceback" not in cp.stderr
    listed = w.client.cli_json("tunnel", "get", "inbound")
    assert not any(i["tunnel"] == "tcp/x" or i["tunnel"] == "udp/x" for i in listed), listed


def datagrams(seed: int) -> list[bytes]:
    """Datagrams of many sizes (one byte, a full 1400-byte packet, 8000 and 30000 bytes; none empty: asyncio's
    `sendto` drops an empty datagram, on the tunnel's UDP flows as here)."""
    rng = random.Random(seed)
    return [rng.randbytes(size) for size in (1, 2, 100, 1400, 8000, 30000)] + [b"\x00\x00", b"\xff" * 3]


def test_udp_by_name_through_a_tunnel_entrance(world: World) -> None:
    w = world
    port = free_port()
    out = w.client.cli(
        "tunnel", "open", "inbound", "udp/db-echo", "--listen", str(port), "--target", f"db:{w.udp_echo}"
    )
    assert f"port {w.udp_echo} of db" in out.stdout, out.stdout
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for sock in clients:
            sock.settimeout(5.0)

        def first() -> bool:
            clients[0].sendto(b"first", ("127.0.0.1", port))
            try:
                return clients[0].recvfrom(1 << 17)[0] == b"first"
            except TimeoutError:
                return False

        wait_until(first, TIMEOUT, "the first datagram through the udp --target entrance")
        for i, sock in enumerate(clients):
            for datagram in datagrams(i):
                sock.sendto(datagram, ("127.0.0.1", port))
                got, _ = sock.recvfrom(1 << 17)
                assert got == datagram, f"client {i}: a {len(datagram)}-byte datagram came back as {len(got)} bytes"
    finally:
        for sock in clients:
            sock.close()
    described = w.client.cli_json("tunnel", "describe", "inbound", "udp/db-echo")
    assert described["streams"] == 2 and described["exit_endpoints"] == [], described  # one flow per client
    assert described["bytes_sent"] == described["bytes_received"] > 0, described
    db_view = w.db.cli_json("get", "app", "net")
    assert db_view["ports"].get("udp_streams", 0) >= 2, db_view["ports"]
    w.client.cli("tunnel", "close", "inbound", "udp/db-echo")


def test_udp_by_name_through_socks5_udp_associate(world: World) -> None:
    w = world
    name = f"db.{MESH}.ztm"
    sock, code, host, port = socks_open(w.proxy, 3, "0.0.0.0", 0)
    with sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert code == ALLOWED
        udp.settimeout(5.0)
        header = b"\x00\x00\x00" + socks_address(name, w.udp_echo)

        def first() -> bool:
            udp.sendto(header + b"first", (host, port))
            try:
                return udp.recvfrom(1 << 17)[0] == header + b"first"
            except TimeoutError:
                return False

        wait_until(first, TIMEOUT, "the first datagram to db.m.ztm through SOCKS5 UDP ASSOCIATE")
        for datagram in datagrams(3):  # SOCKS adds its header: the 30000-byte one still fits
            udp.sendto(header + datagram, (host, port))
            got, _ = udp.recvfrom(1 << 17)
            assert got == header + datagram, f"a {len(datagram)}-byte datagram came back as {len(got)} bytes"
    counters = w.client.cli_json("proxy", "get", "config")["counters"]
    assert counters.get("entrance:mesh_names", 0) >= 1 and counters.get("entrance-udp:streams", 0) >= 1, counters


def mesh_addresses(agent: Agent, name: str) -> tuple[str, str]:
    found = next(e for e in agent.endpoints() if e["name"] == name)
    return str(found["mesh_ip"]), str(found["mesh_ip6"])


def test_mesh_ip_literals_reach_the_endpoint(world: World) -> None:
    w = world
    ip4, ip6 = mesh_addresses(w.client, "db")
    assert socks_echo(w.proxy, ip4, w.echo, b"by ipv4") == b"by ipv4"
    assert socks_echo(w.proxy, ip6, w.echo, b"by ipv6") == b"by ipv6"
    assert http_connect_echo(w.proxy, f"[{ip6}]:{w.echo}", b"http by ipv6") == b"http by ipv6"
    answer = raw_exchange(w.proxy, f"CONNECT {ip4}:{w.echo} HTTP/1.1\r\n\r\nhttp by ipv4".encode())
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"http by ipv4"), answer
    # UDP to the address, through SOCKS5 UDP ASSOCIATE: the reply's source is the address as the client gave it
    sock, code, host, port = socks_open(w.proxy, 3, "0.0.0.0", 0)
    with sock, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        assert code == ALLOWED
        udp.settimeout(10.0)
        header = b"\x00\x00\x00" + socks_address(ip4, w.udp_echo)
        udp.sendto(header + b"udp by ipv4", (host, port))
        assert udp.recvfrom(1 << 17)[0] == header + b"udp by ipv4"
    # the same refusals as for names: an address of the range that no endpoint has, a mesh address without ports
    unknown = str(ipaddress.ip_address(ip4) + 4000)
    assert socks_code(w.proxy, unknown, w.echo) == HOST_UNREACHABLE
    answer = raw_exchange(w.proxy, f"CONNECT {unknown}:{w.echo} HTTP/1.1\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 502") and f"no endpoint with address {unknown}".encode() in answer, answer
    plain4, _ = mesh_addresses(w.client, "plain")
    assert socks_code(w.proxy, plain4, w.echo) == NOT_ALLOWED
    # an address outside the mesh still goes to the exits as before (there are none here)
    answer = raw_exchange(w.proxy, f"CONNECT 192.0.2.1:{w.echo} HTTP/1.1\r\n\r\n".encode())
    assert b"no exit of mesh" in answer, answer
