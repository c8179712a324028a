"""A mesh in the lab: a hub in the datacenter's namespace and agents in the sites' namespaces, joined; the network
mode lab tests' common world (tests/lab/test_lab_tun.py, tests/lab/test_lab_dns.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lab.netlab import Lab
from support import Agent, Hub, Proc, start_agent, start_hub, wait_until

HUB_PORT = 8888


def net_view(agent: Agent, mesh: str) -> dict[str, Any]:
    """The `net` app's view on `agent` in `mesh` (`GET /api/meshes/MESH/apps`)."""
    status, apps = agent.api("GET", f"/api/meshes/{mesh}/apps")
    assert status == 200, apps
    return next(a for a in apps if a["name"] == "net")


def wait_tun_up(agent: Agent, mesh: str, timeout: float) -> dict[str, Any]:
    """`agent`'s net view once its TUN in `mesh` is up."""
    view: dict[str, Any] = wait_until(
        lambda: (v := net_view(agent, mesh))["tun_up"] and v, timeout, f"{agent.name}'s TUN up"
    )
    return view


def start_lab_mesh(
    lab: Lab, tmp: Path, mesh: str, agents: Mapping[str, tuple[str, int, Sequence[str]]], procs: list[Proc]
) -> tuple[Hub, dict[str, Agent]]:
    """A hub on 0.0.0.0:HUB_PORT in the datacenter's namespace, then each agent of `agents` (name -> (lab host, API
    port, options)) started in its host's namespace and joined to `mesh` as endpoint `name`, side by side. Every
    process started is appended to `procs` at once: the caller stops them, also when this raises."""
    dc = lab.addr("datacenter")
    hub = start_hub(tmp, netns=lab.ns("datacenter"), listen=f"0.0.0.0:{HUB_PORT}", names=f"{dc}:{HUB_PORT}")
    procs.append(hub.proc)

    def agent_of(name: str) -> Agent:
        host, port, extra = agents[name]
        agent = start_agent(tmp, name, netns=lab.ns(host), port=port, extra=list(extra))
        procs.append(agent.proc)
        agent.join(mesh, name, hub.permit)
        return agent

    with ThreadPoolExecutor(len(agents)) as pool:
        started = dict(zip(agents, pool.map(agent_of, agents), strict=True))
    return hub, started
