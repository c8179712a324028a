"""UDP tunnels over direct channels across the seed's picture (issue 15, item 5).

The exit in the data center runs with `--direct 0.0.0.0:7771` and is reachable: home's UDP flows to it go directly,
counted `direct` in `paths` on both sides, with the hub relaying none of their bytes (its admin metric). The
workplace agent is behind NAT (its router drops connections from outside): home's flows to it go through the hub,
as before, after one failed direct attempt. Datagrams are byte-exact both ways.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.netlab import Lab
from support import Agent, base_env, netns_socket, start_agent, start_hub, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MESH = "my-mesh"
UDP_PORT = 9001
DIRECT = ("--direct", "0.0.0.0:7771")
UDP_ECHO = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", int(sys.argv[1])))
while True:
    data, peer = s.recvfrom(65536)
    s.sendto(data, peer)
"""


def inbound(agent: Agent, name: str) -> dict[str, Any]:
    view = agent.cli_json("tunnel", "describe", "inbound", name)
    assert isinstance(view, dict)
    return view


def echoes(lab: Lab, port: int, datagrams: list[bytes]) -> bool:
    """One flow from a fresh socket at home: every datagram out through home's entrance `port` and back, exact."""
    with netns_socket(lab.ns("home"), socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(5)
        for datagram in datagrams:
            client.sendto(datagram, ("127.0.0.1", port))
            try:
                if client.recvfrom(1 << 17)[0] != datagram:
                    return False
            except TimeoutError:
                return False
    return True


def test_udp_flows_go_direct_to_the_datacenter_and_through_the_hub_to_the_natted_workplace(
    lab: Lab, tmp_path: Path
) -> None:
    dc = lab.addr("datacenter")
    admin = "127.0.0.1:9100"
    hub = start_hub(
        tmp_path, netns=lab.ns("datacenter"), listen="0.0.0.0:8888", names=f"{dc}:8888", extra=["--admin", admin]
    )
    home = start_agent(tmp_path, "home", netns=lab.ns("home"), port=7777, extra=DIRECT)
    work = start_agent(tmp_path, "workplace", netns=lab.ns("workplace"), port=7777, extra=DIRECT)
    server = start_agent(tmp_path, "dc-server", netns=lab.ns("datacenter"), port=7778, extra=DIRECT)
    for agent, name in ((home, "home"), (work, "workplace"), (server, "dc-server")):
        agent.join(MESH, name, hub.permit)
    for host in ("workplace", "datacenter"):
        lab.popen(host, [sys.executable, "-c", UDP_ECHO, str(UDP_PORT)], env=base_env(), name=f"udp-echo-{host}")

    def relayed() -> float:
        with netns_socket(lab.ns("datacenter")) as sock:  # the admin port listens inside the data center
            sock.settimeout(5)
            host, port = admin.split(":")
            sock.connect((host, int(port)))
            sock.sendall(b"GET /metrics HTTP/1.0\r\nHost: hub\r\n\r\n")
            body = b""
            while chunk := sock.recv(65536):
                body += chunk
        for line in body.decode().splitlines():
            if line.startswith("ztm_hub_relayed_bytes_total "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    server.cli("tunnel", "open", "outbound", "udp/dc-echo", "--targets", f"127.0.0.1:{UDP_PORT}")
    work.cli("tunnel", "open", "outbound", "udp/office-echo", "--targets", f"127.0.0.1:{UDP_PORT}")
    home.cli("tunnel", "open", "inbound", "udp/dc-echo", "--listen", "19002")
    home.cli("tunnel", "open", "inbound", "udp/office-echo", "--listen", "19003")

    # the data center: directly, once the exit's direct address and the CRL are in (the first flows may race them)
    wait_until(
        lambda: echoes(lab, 19002, [b"warm"]) and inbound(home, "udp/dc-echo")["paths"]["direct"] >= 1,
        30,
        "a UDP flow going direct",
    )
    before = relayed()
    datagrams = [os.urandom(n) for n in (1, 512, 1400, 9000, 40000)]
    assert echoes(lab, 19002, datagrams)
    assert relayed() == before, "the hub relayed bytes of a UDP flow between home and the data center"
    view = inbound(home, "udp/dc-echo")
    exit_view = server.cli_json("tunnel", "describe", "outbound", "udp/dc-echo")
    assert exit_view["paths"] == view["paths"], (exit_view, view)

    # the workplace behind NAT: the direct attempt fails (the router drops it), the hub relays the flows
    for _ in range(2):
        assert wait_until(lambda: echoes(lab, 19003, [os.urandom(1200)]), 30, "a UDP flow to the workplace")
    office = inbound(home, "udp/office-echo")
    assert office["paths"] == {"relay": office["streams"], "direct": 0, "lan": 0, "punched": 0}, office
    assert office["direct_fallbacks"] >= 1, office
