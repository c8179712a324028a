"""NAT traversal across the seed's picture: home and workplace, each behind its own NAT router, punch a direct channel.

Neither can dial the other (their routers drop connections from outside), yet after the first tunnelled connection
(relayed: no waiting for the punch) the two punch a TCP connection through both routers, and later connections
travel on it: byte-exact, and the hub relays none of their bytes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from lab.netlab import Lab
from support import Agent, base_env, start_agent, start_hub, wait_until

from .test_lab_tunnel import SERVER, transfer

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MESH = "my-mesh"
SERVICE_PORT = 9000
ENTRANCE = 19000


def metrics(agent: Agent) -> dict[str, float]:
    """The agent's /api/metrics as {name{labels}: value}."""
    status, text = agent.api("GET", "/api/metrics")
    assert status == 200 and isinstance(text, str), (status, text)
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def direct_counter(agent: Agent, name: str) -> float:
    return metrics(agent).get(f'ztm_agent_direct_{name}_total{{mesh="{MESH}"}}', 0.0)


def path_to(agent: Agent, name: str) -> dict[str, Any]:
    ep = agent.cli_json("get", "ep", name)
    assert isinstance(ep, dict)
    return ep


def test_home_and_workplace_behind_nat_punch_a_direct_channel(lab: Lab, tmp_path: Path) -> None:
    dc = lab.addr("datacenter")
    hub = start_hub(tmp_path, netns=lab.ns("datacenter"), listen="0.0.0.0:8888", names=f"{dc}:8888")
    home = start_agent(tmp_path, "home", netns=lab.ns("home"), port=7777)
    work = start_agent(tmp_path, "workplace", netns=lab.ns("workplace"), port=7777)
    home.join(MESH, "home", hub.permit)
    work.join(MESH, "workplace", hub.permit)
    server = lab.popen("workplace", [sys.executable, "-c", SERVER, str(SERVICE_PORT)], env=base_env(), name="service")
    wait_until(lambda: server.assert_alive() or lab.can_connect("workplace", "127.0.0.1", SERVICE_PORT), 10,
               "the service to listen at the workplace")  # fmt: skip
    lab.assert_unreachable("home", "workplace", SERVICE_PORT)
    work.cli("tunnel", "open", "outbound", "tcp/office-app", "--targets", f"127.0.0.1:{SERVICE_PORT}")
    home.cli("tunnel", "open", "inbound", "tcp/office-app", "--listen", str(ENTRANCE))

    transfer(lab, ENTRANCE, 1 << 20)  # the first: relayed, and it starts the punch
    wait_until(lambda: direct_counter(home, "punch_successes") >= 1, 10, "home to punch a channel to the workplace")
    ep = path_to(home, "workplace")
    assert ep["path"] == "punched", ep
    for _ in range(3):
        transfer(lab, ENTRANCE, 1 << 20)
    view = home.cli_json("tunnel", "describe", "inbound", "tcp/office-app")
    assert view["direct"] >= 3, view
    assert direct_counter(work, "punch_accepted") >= 1
