"""The seed's picture with the real product: hub in the data center, agents at home and at work behind NAT.

Agents only ever dial out to the hub (198.18.0.10:8888); they cannot reach each other (see test_netlab.py), so
everything between them goes through the hub. Written against the CLI contract; see tests/support.py.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import pytest

from lab.netlab import Lab
from support import Agent, start_agent, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MESH = "my-mesh"


def endpoint(agent: Agent, name: str) -> dict[str, Any] | None:
    return next((e for e in agent.endpoints() if e.get("name") == name), None)


def sees_online(agent: Agent, *names: str) -> bool:
    return set(names) <= agent.online_names()


def test_home_and_workplace_through_the_hub_and_eviction(lab: Lab, tmp_path: Path) -> None:
    hub, agents = lab.start_mesh(tmp_path, MESH, {"home": "home", "workplace": "workplace"})
    assert hub.permit.exists()
    home, work = agents["home"], agents["workplace"]
    for agent in (home, work):
        wait_until(functools.partial(sees_online, agent, "home", "workplace"), 20,
                   f"{agent.name} to list home and workplace online")  # fmt: skip

    # The hub sees each agent from its router's WAN address (NAT), if it reports an address at all.
    for agent, name, router in ((home, "home", "home-rtr"), (work, "workplace", "work-rtr")):
        ep = endpoint(agent, name)
        assert ep is not None
        if ep.get("ip"):
            assert ep["ip"] == lab.addr(router), f"hub saw {name} as {ep['ip']}"

    # A second user, bob, on a third agent at the workplace with its own data and HOME.
    bob = start_agent(tmp_path, "bob", netns=lab.ns("workplace"), port=7778)
    identity = tmp_path / "bob.identity.pem"
    identity.write_text(bob.cli("identity").stdout)
    assert "PUBLIC KEY" in identity.read_text()
    bob_permit = tmp_path / "bob.json"
    home.cli("invite", "bob", "--identity", str(identity), "--permit", str(bob_permit))
    assert bob_permit.exists()
    bob.join(MESH, "bob-laptop", bob_permit)
    wait_until(lambda: sees_online(home, "bob-laptop"), 20, "home to list bob-laptop online")
    wait_until(lambda: sees_online(bob, "home", "workplace", "bob-laptop"), 20, "bob to see the mesh")

    # Root evicts bob: the hub drops bob's endpoint within a few seconds, bob's agent says why.
    home.cli("evict", "bob")

    def bob_offline() -> bool:
        ep = endpoint(home, "bob-laptop")
        return ep is not None and not ep.get("online")

    wait_until(bob_offline, 6, "the hub to list bob-laptop offline after the eviction")

    def bob_told() -> dict[str, Any] | None:
        mesh = next((m for m in bob.meshes() if m.get("name") == MESH), None)
        assert mesh is not None, "bob's agent forgot the mesh"
        if mesh.get("status") != "online" and re.search(r"evict|refus", str(mesh.get("error") or ""), re.I):
            return mesh
        return None

    mesh = wait_until(bob_told, 10, "bob's agent to report the mesh not online with an eviction/refused error")
    assert mesh["status"] != "online"

    # Root's endpoints are unaffected, seen from both sides.
    for agent in (home, work):
        assert sees_online(agent, "home", "workplace"), agent.endpoints()
        assert "bob-laptop" not in agent.online_names()
