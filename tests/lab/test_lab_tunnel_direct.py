"""Direct channels across the seed's picture: every agent runs with `--direct 0.0.0.0:7771`.

The exit in the data center is reachable, so home reaches it directly (no hub in the data path); the workplace is
behind NAT, whose router drops connections from outside, so home's attempt to dial its listener fails, its first
connection goes through the hub, and later ones take a punched channel. Both transfers are byte-exact with half-close.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lab.netlab import Lab
from support import Agent, base_env, wait_until

from .test_lab_tunnel import SERVER, transfer

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MESH = "my-mesh"
SERVICE_PORT = 9000
DIRECT = ("--direct", "0.0.0.0:7771")


def inbound(agent: Agent, name: str) -> dict[str, int]:
    view = agent.cli_json("tunnel", "describe", "inbound", name)
    assert isinstance(view, dict)
    return view


def test_datacenter_exit_is_reached_directly_and_natted_workplace_through_the_hub(lab: Lab, tmp_path: Path) -> None:
    env = base_env()
    services = [  # started first: they come up while the mesh does
        lab.popen(host, [sys.executable, "-c", SERVER, str(SERVICE_PORT)], env=env, name=f"service-{host}")
        for host in ("workplace", "datacenter")
    ]
    joins = {"home": "home", "workplace": "workplace", "datacenter": "dc-server"}
    _hub, agents = lab.start_mesh(tmp_path, MESH, joins, agent_extra=DIRECT, ports={"datacenter": 7778})
    home, work, server = agents["home"], agents["workplace"], agents["datacenter"]

    def listening() -> bool:
        for proc in services:
            proc.assert_alive()
        return all(lab.can_connect(h, "127.0.0.1", SERVICE_PORT) for h in ("workplace", "datacenter"))

    wait_until(listening, 10, "the services to listen at the workplace and in the data center")
    lab.assert_unreachable("home", "workplace", 7771)  # the workplace agent's direct listener

    work.cli("tunnel", "open", "outbound", "tcp/office-app", "--targets", f"127.0.0.1:{SERVICE_PORT}")
    server.cli("tunnel", "open", "outbound", "tcp/dc-app", "--targets", f"127.0.0.1:{SERVICE_PORT}")
    home.cli("tunnel", "open", "inbound", "tcp/office-app", "--listen", "19000")
    home.cli("tunnel", "open", "inbound", "tcp/dc-app", "--listen", "19001")

    # the data-center exit: directly (after the hub relayed the very first one, if the direct address was not
    # known yet when it opened)
    for _ in range(3):
        transfer(lab, 19001, 1 << 20)
    wait_until(lambda: inbound(home, "tcp/dc-app")["direct"] >= 2, 10, "home to reach the data center directly")
    dc_view = server.cli_json("tunnel", "describe", "outbound", "tcp/dc-app")
    assert dc_view["direct"] >= 2 and dc_view["bytes_received"] == 3 << 20, dc_view

    # the workplace behind NAT: dialling its listener fails (the router drops it), so the first connection goes
    # through the hub, and a channel is punched in the background (tests/lab/test_lab_p2p.py) for later ones
    transfer(lab, 19000, 1 << 20)
    office = inbound(home, "tcp/office-app")
    assert office["direct"] == 0 and office["streams"] == 1, office
    assert office["direct_fallbacks"] >= 1, office
    wait_until(lambda: home.cli_json("get", "ep", "workplace")["path"] == "punched", 10,
               "home to punch a channel to the workplace")  # fmt: skip
    transfer(lab, 19000, 1 << 20)
    assert inbound(home, "tcp/office-app")["direct"] == 1
    assert work.cli_json("tunnel", "describe", "outbound", "tcp/office-app")["bytes_received"] == 2 << 20
