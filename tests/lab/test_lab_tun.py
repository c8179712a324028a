"""Network mode across the seed's picture (issue 17): real hubs and agents with `--tun` in the lab's namespaces.

Two endpoints behind NAT (home, workplace), one in the data center with a direct listener, and `home2`, a second
host on home's LAN, all with `--tun`; the workplace also with `--accept-routes`. One lab and one mesh for the module
(the tests run in file order: the later ones stop agents the earlier ones use).

* Ping (IPv4 and IPv6), TCP and UDP by mesh address, across both NATs: the data center over its listener (`direct`),
  the workplace over a punched channel (`punched`), as each side's net view says.
* A packet from a source the sender may not use (another endpoint's mesh address) is dropped and counted at the
  receiver (`spoofed-source`), and never answered.
* home and home2 both route home's LAN (10.77.1.0/24, advertised and approved through the hub's API): the workplace
  reaches home's router at 10.77.1.1 through one of them, which it sees as the router's SNAT address; stopping that
  one's agent moves the route to the other (failover).
* A policy that allows `ip/tcp:PORT_A` (and ICMP) lets a TCP connection to PORT_A through and drops the one to PORT_B
  at the receiving endpoint (counted `policy`).
* Stopping an agent removes its interface, its routes and its nft table, and sets forwarding back.
* `--tun` without CAP_NET_ADMIN: one line says so, and the agent runs on.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import support
from lab import meshlab
from lab.netlab import Lab
from support import Agent, Hub, Proc, base_env, netns_socket, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB_TWINS = ("home",)
MESH = "lan"
LAN = "10.77.1.0/24"
LAN_HOST = "10.77.1.1"
"""home's router on its LAN side: the host behind the subnet routers."""
PORT_A, PORT_B, UDP_PORT = 5001, 5002, 5003
TIMEOUT = 30.0
FAILOVER = 1.0
"""Seconds from a router's clean stop to a ping through the other (0.09-0.11 s measured, RELIABILITY.md)."""
"""Seconds from a subnet router's stop to a ping answered through the other one, at most (under the suite's load)."""

ECHO = """
import socket, sys, threading
ports = [int(p) for p in sys.argv[1:3]]
udp = int(sys.argv[3])
def serve_tcp(port):
    s = socket.socket(socket.AF_INET6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(64)
    while True:
        c, peer = s.accept()
        def run(c=c, peer=peer):
            with c:
                data = b""
                while chunk := c.recv(1 << 20):
                    data += chunk
                c.sendall(peer[0].removeprefix("::ffff:").encode() + b" " + data)
        threading.Thread(target=run, daemon=True).start()
def serve_udp():
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", udp))
    while True:
        data, peer = s.recvfrom(65536)
        s.sendto(data, peer)
for port in ports:
    threading.Thread(target=serve_tcp, args=(port,), daemon=True).start()
threading.Thread(target=serve_udp, daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""
"""TCP on PORT_A and PORT_B (answers `PEER-ADDRESS DATA`), UDP echo on UDP_PORT, IPv4 and IPv6."""


@dataclass
class Net:
    lab: Lab
    hub: Hub
    agents: dict[str, Agent]
    host: dict[str, str]
    """agent name -> its lab host."""
    ip: dict[str, str]
    ip6: dict[str, str]
    ids: dict[str, str]
    stopped: list[str]
    """Agents a test stopped (the first subnet router)."""


AGENTS = {
    "home": ("home", 7777, ["--tun"]),
    "home2": ("home2", 7777, ["--tun"]),
    "workplace": ("workplace", 7777, ["--tun", "--accept-routes"]),
    "dc": ("datacenter", 7778, ["--tun", "--direct", "0.0.0.0:7771"]),
}


def net_view(agent: Agent) -> dict[str, Any]:
    return meshlab.net_view(agent, MESH)


@pytest.fixture(scope="module")
def net(module_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    lab = module_lab
    tmp = tmp_path_factory.mktemp("tun")
    procs: list[Proc] = []
    try:
        hub, agents = meshlab.start_lab_mesh(lab, tmp, MESH, AGENTS, procs)
        for host in ("home", "workplace", "datacenter", "home-rtr"):
            echo = lab.popen(host, [sys.executable, "-c", ECHO, str(PORT_A), str(PORT_B), str(UDP_PORT)],
                             env=base_env(), name=f"echo@{host}")  # fmt: skip
            echo.wait_for_output("ready", timeout=10)
        views = {name: meshlab.wait_tun_up(agent, MESH, TIMEOUT) for name, agent in agents.items()}
        yield Net(
            lab,
            hub,
            agents,
            {name: spec[0] for name, spec in AGENTS.items()},
            {name: v["mesh_ip"] for name, v in views.items()},
            {name: v["mesh_ip6"] for name, v in views.items()},
            {name: agents[name].cli_json("get", "mesh", MESH)["ep_id"] for name in agents},
            [],
        )
    finally:
        support.stop_all(procs)


def ping(net: Net, src: str, addr: str) -> bool:
    return net.lab.exec(net.host[src], ["ping", "-c", "1", "-W", "2", addr], check=False).returncode == 0


def tcp(net: Net, src: str, addr: str, port: int, data: bytes = b"hello", timeout: float = 3.0) -> bytes | None:
    """`data` through the echo server at `addr:port` from agent `src`'s host: its answer (PEER DATA), None if the
    connection fails."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with netns_socket(net.lab.ns(net.host[src]), family) as sock:
            sock.settimeout(timeout)
            sock.connect((addr, port))
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(1 << 20):
                answer += chunk
            return answer
    except OSError:
        return None


def udp(net: Net, src: str, addr: str, data: bytes) -> bool:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with netns_socket(net.lab.ns(net.host[src]), family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        for _ in range(3):
            sock.sendto(data, (addr, UDP_PORT))
            with contextlib.suppress(TimeoutError):
                if sock.recvfrom(65536)[0] == data:
                    return True
    return False


def dropped(net: Net, name: str, reason: str) -> int:
    return int(net_view(net.agents[name])["dropped"].get(reason, 0))


def path_to(net: Net, src: str, dst: str) -> str | None:
    peers = net_view(net.agents[src])["peers"]
    return next((p["path"] for p in peers if p["name"] == dst), None)


# -------------------------------------------------------------------------------------------------------- tests


def test_ping_tcp_and_udp_by_mesh_address_across_nats_direct_where_there_is_a_path(net: Net) -> None:
    for dst in ("workplace", "dc"):
        for addr in (net.ip[dst], net.ip6[dst]):
            assert wait_until(lambda a=addr: ping(net, "home", a), TIMEOUT, f"home to ping {dst} at {addr}")
            answer = tcp(net, "home", addr, PORT_A, b"x" * 200_000)
            assert answer is not None and answer.endswith(b"x" * 200_000), (dst, addr)
            assert answer.split(b" ", 1)[0].decode() in (net.ip["home"], net.ip6["home"]), answer[:60]
            assert udp(net, "home", addr, b"u" * 1200), (dst, addr)
    # the data center's listener and a punched channel to the workplace: the streams move there from the relay
    assert wait_until(lambda: ping(net, "home", net.ip["dc"]) and path_to(net, "home", "dc") == "direct", TIMEOUT,
                      "home's packets to dc to go over its direct listener")  # fmt: skip
    assert wait_until(
        lambda: ping(net, "home", net.ip["workplace"]) and path_to(net, "home", "workplace") in ("punched", "lan"),
        TIMEOUT,
        "home's packets to the workplace to go over a punched channel",
    )
    assert path_to(net, "workplace", "home") is not None  # it answered over its own stream
    status = net.agents["home"].cli("net", "status").stdout
    assert f"network mode: up on ztm0: {net.ip['home']}" in status, status
    assert "peer workplace: path punched" in status or "peer workplace: path lan" in status, status
    metrics = net.agents["home"].api("GET", "/api/metrics")[1]
    assert 'ztm_agent_app_streams_by_path{mesh="lan",app="net",name="workplace",path="punched"}' in metrics


def test_a_packet_from_a_spoofed_source_is_dropped_and_counted(net: Net) -> None:
    before = dropped(net, "home", "spoofed-source")
    # the workplace sends home an ICMP echo from dc's mesh address, through its own TUN and its own stream
    sent = net.lab.exec(
        "workplace",
        [sys.executable, "-c", SPOOF, net.ip["dc"], net.ip["home"]],
        check=False,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr
    assert wait_until(lambda: dropped(net, "home", "spoofed-source") > before, 10, "home to count the spoofed packet")
    assert dropped(net, "dc", "spoofed-source") == 0


SPOOF = """
import socket, struct, sys
src, dst = (socket.inet_aton(a) for a in sys.argv[1:3])
icmp = bytearray(struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + b"spoofed")
s = sum(struct.unpack(f"!{len(icmp) // 2}H", icmp[: len(icmp) // 2 * 2])) + (icmp[-1] << 8 if len(icmp) % 2 else 0)
s = (s >> 16) + (s & 0xFFFF); s += s >> 16
struct.pack_into("!H", icmp, 2, ~s & 0xFFFF)
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, src, dst) + icmp
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
raw.sendto(ip, (sys.argv[2], 0))
"""
"""A raw IPv4 ICMP echo from address argv[1] to argv[2] (IP_HDRINCL)."""


def test_a_subnet_route_through_one_router_fails_over_to_the_other(net: Net) -> None:
    for router in ("home", "home2"):
        net.agents[router].cli("ep", router, "route", "advertise", LAN)
    net.agents["home"].cli("route", "approve", "home", LAN)
    net.agents["home"].cli("route", "approve", "home2", LAN)
    work = net.agents["workplace"]
    chosen = wait_until(lambda: net_view(work)["routes_in_use"].get(LAN), TIMEOUT, "the workplace to take the route")
    assert chosen in (net.ids["home"], net.ids["home2"])
    first = "home" if chosen == net.ids["home"] else "home2"
    other = "home2" if first == "home" else "home"
    assert LAN in net_view(work)["routes_installed"]
    assert wait_until(lambda: ping(net, "workplace", LAN_HOST), TIMEOUT, "the workplace to ping home's LAN")
    answer = tcp(net, "workplace", LAN_HOST, PORT_A, b"via the router")
    assert answer is not None, "no TCP connection to the LAN host through the router"
    seen, _, data = answer.partition(b" ")
    assert data == b"via the router"
    assert seen.decode() == net.lab.addr(first), (seen, "the router's LAN address (SNAT)")
    # the LAN cannot open connections into the mesh through the router, even with a route to the mesh via it
    lan = net.lab.ns("home-rtr")
    mesh_range = net.ip["workplace"].rsplit(".", 2)[0] + ".0.0/16"
    net.lab.exec("home-rtr", ["ip", "route", "replace", mesh_range, "via", net.lab.addr(first)])
    try:
        with netns_socket(lan, socket.AF_INET) as sock:
            sock.settimeout(2.0)
            with pytest.raises(OSError):
                sock.connect((net.ip["workplace"], PORT_A))
    finally:
        net.lab.exec("home-rtr", ["ip", "route", "del", mesh_range], check=False)

    net.agents[first].proc.stop()
    stopped = time.monotonic()
    net.stopped.append(first)
    assert wait_until(lambda: net_view(work)["routes_in_use"].get(LAN) == net.ids[other], TIMEOUT,
                      f"the route to fail over to {other}")  # fmt: skip
    assert wait_until(lambda: ping(net, "workplace", LAN_HOST), TIMEOUT, "the workplace to ping home's LAN again")
    failover = time.monotonic() - stopped
    print(f"subnet router failover: {failover:.2f} s from the first router's stop to a ping through the second")
    assert failover < FAILOVER, f"the failover took {failover:.1f} s"
    answer = tcp(net, "workplace", LAN_HOST, PORT_A, b"again")
    assert answer is not None and answer.endswith(b" again"), answer


def test_the_policy_allows_one_port_and_drops_another_at_the_receiver(net: Net, tmp_path: Path) -> None:
    policy = tmp_path / "policy.hujson"
    rules = f'"*:ip/tcp:{PORT_A}", "*:ip/icmp", "*:ip/udp:*"'
    policy.write_text('{"acls": [{"action": "accept", "src": ["*"], "dst": [' + rules + "]}]}")
    dc, work = net.agents["dc"], net.agents["workplace"]
    work.cli("policy", "set", str(policy), "--note", "network mode test")
    version = wait_until(lambda: (v := dc.api("GET", f"/api/meshes/{MESH}/policy/local")[1]["version"]) > 0 and v,
                         TIMEOUT, "dc to enforce the policy")  # fmt: skip
    assert version
    before = dropped(net, "dc", "policy")
    assert wait_until(lambda: tcp(net, "workplace", net.ip["dc"], PORT_A) is not None, TIMEOUT, "TCP to port A")
    assert tcp(net, "workplace", net.ip["dc"], PORT_B, timeout=2.0) is None
    assert dropped(net, "dc", "policy") > before


def test_stopping_an_agent_removes_its_interface_routes_and_nft_table(net: Net) -> None:
    stopped = net.stopped[0] if net.stopped else "home"
    router = "home2" if stopped == "home" else "home"
    host = net.host[router]
    assert "ztm0" in net.lab.exec(host, ["ip", "-o", "link"]).stdout
    assert "table inet ztm" in net.lab.exec(host, ["nft", "list", "tables"]).stdout
    net.agents[router].proc.stop()
    assert "ztm0" not in net.lab.exec(host, ["ip", "-o", "link"]).stdout
    assert "ztm" not in net.lab.exec(host, ["nft", "list", "tables"]).stdout
    assert net.lab.exec(host, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "0"
    for h in (host, net.host[stopped]):
        assert "ztm0" not in net.lab.exec(h, ["ip", "-o", "link"]).stdout
        assert "ztm0" not in net.lab.exec(h, ["ip", "route"]).stdout
        assert "ztm0" not in net.lab.exec(h, ["ip", "-6", "route"]).stdout
    # no router left: the workplace drops the subnet route; then its own stop leaves nothing either
    work = net.agents["workplace"]
    assert wait_until(lambda: LAN not in net.lab.exec("workplace", ["ip", "route"]).stdout, TIMEOUT,
                      "the workplace to remove the route of a subnet nobody routes")  # fmt: skip
    assert LAN not in net_view(work)["routes_installed"]
    work.proc.stop()
    assert "ztm0" not in net.lab.exec("workplace", ["ip", "-o", "link"]).stdout
    assert "ztm0" not in net.lab.exec("workplace", ["ip", "route"]).stdout


def test_tun_without_cap_net_admin_says_so_in_one_line_and_the_agent_runs_on(net: Net, tmp_path: Path) -> None:
    data = tmp_path / "nocap"
    home = tmp_path / "nocap-home"
    home.mkdir()
    argv = ["setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin", *support.ZTM, "run", "agent",
            "--listen", "127.0.0.1:7790", "--data", str(data), "--tun"]  # fmt: skip
    proc = Proc(argv, env=base_env(home=home), cwd=tmp_path, netns=net.lab.ns("dc2"), name="agent-nocap",
                log_dir=tmp_path)  # fmt: skip
    line = proc.wait_for_output(r"[^\n]*--tun needs CAP_NET_ADMIN[^\n]*", timeout=TIMEOUT).group(0)
    assert "starting without network mode" in line and "Traceback" not in proc.output()
    assert wait_until(lambda: net.lab.can_connect("dc2", "127.0.0.1", 7790), TIMEOUT, "the agent's API")
    proc.assert_alive()
    assert "ztm0" not in net.lab.exec("dc2", ["ip", "-o", "link"]).stdout
