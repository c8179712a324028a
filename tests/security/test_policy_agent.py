"""Attacks on the mesh's access policy by a member inside the mesh (issue 16): real hub and agent processes, real TLS
on 127.0.0.1. Bob holds a valid certificate of the mesh; the policy gives him one tunnel (`tcp/other`) at root's
endpoint `hq` and nothing else. The exit decides, from the caller's certificate, whatever the hub did or said:

* Through the relay: bob's stream for `tcp/pg` passes the hub's coarse first line (he may use *a* tunnel at `hq`)
  and is refused by `hq`'s exit, counted there (`ztm_agent_policy_denied_total{app="tunnel"}`).
* Over a direct channel (`--direct`), which the hub never sees: bob's stream to `office`, where the policy gives him
  nothing at all (the hub would have refused it relayed), reaches the exit and is refused there.
* A hub that names another endpoint as the caller in its `stream` event (tests/security/evil_hub.py,
  `ZTM_EVIL_HUB=forge-caller` with `ZTM_EVIL_FORGE_NAME=1`: bob's endpoint id and user, but the name `hq`, which a
  policy rule names) does not give bob that endpoint's rights: the exit takes the name from the hub's endpoint list
  for the certificate's endpoint id.

Each attack is first shown to work without the policy (the controls), so a refusal is the policy's doing.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from integration.test_tunnel import MESH, Servers, closed_within, described, echo_roundtrip, open_inbound, open_outbound
from reliability.hubclient import HubClient
from support import Agent, Hub, Proc, free_port, invite, start_hub_and_agents, wait_until

EVIL_HUB = [sys.executable, str(Path(__file__).with_name("evil_hub.py"))]
TIMEOUT = 20.0
POLICY = """{
  "acls": [
    {"action": "accept", "src": ["bob"], "dst": ["hq:tunnel/tcp/other"]},
    {"action": "accept", "src": ["hq"], "dst": ["hq:tunnel/tcp/pg"]},  // root's endpoint `hq` (by its name)
  ],
}"""


@dataclass
class Mesh:
    hub: Hub
    hq: Agent
    """root's endpoint `hq`: the exit of tcp/pg (relayed) and of tcp/other."""
    bob: Agent
    """bob's endpoint `bob-laptop`: the entrance of tcp/pg (and tcp/pgd)."""
    office: Agent | None
    """root's endpoint `office`, reachable directly (`--direct`): the exit of tcp/pgd."""
    ports: dict[str, int]
    """Entrance port on bob's endpoint by tunnel."""


def start(tmp: Path, servers: Servers, *, evil: bool) -> tuple[Mesh, list[Proc]]:
    if evil:
        env = {"ZTM_EVIL_HUB": "forge-caller", "ZTM_EVIL_CALLER": "hq", "ZTM_EVIL_FORGE_NAME": "1"}
        hub, agents = start_hub_and_agents(tmp, ("hq", "bob"), hub_env=env, hub_program=EVIL_HUB)
    else:
        extra = {"office": ("--direct", f"127.0.0.1:{free_port()}")}
        hub, agents = start_hub_and_agents(tmp, ("hq", "bob", "office"), agent_extra=extra)
    procs = [hub.proc, *(a.proc for a in agents.values())]
    hq, bob, office = agents["hq"], agents["bob"], agents.get("office")
    hq.join(MESH, "hq", hub.permit)
    bob.join(MESH, "bob-laptop", invite(hq, bob, "bob", tmp / "bob.json"))
    echo = servers.echo()
    open_outbound(hq, "tcp/pg", echo)
    open_outbound(hq, "tcp/other", echo)
    ports = {"tcp/pg": open_inbound(bob, "tcp/pg", "--exits", "hq")}
    if office is not None:
        office.join(MESH, "office", hub.permit)
        open_outbound(office, "tcp/pgd", echo)
        ports["tcp/pgd"] = open_inbound(bob, "tcp/pgd", "--exits", "office")
    mesh = Mesh(hub, hq, bob, office, ports)
    for tunnel, port in ports.items():  # the controls: with no policy, bob's tunnels work
        wait_until(lambda p=port: echo_roundtrip(p, b"no policy yet") == b"no policy yet", TIMEOUT, tunnel)
    return mesh, procs


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    servers = Servers()
    try:
        yield servers
    finally:
        servers.close()


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory, servers: Servers) -> Iterator[Mesh]:
    yield from _running(tmp_path_factory.mktemp("policy-members"), servers, evil=False)


@pytest.fixture(scope="module")
def evil(tmp_path_factory: pytest.TempPathFactory, servers: Servers) -> Iterator[Mesh]:
    yield from _running(tmp_path_factory.mktemp("policy-forged"), servers, evil=True)


def _running(tmp: Path, servers: Servers, *, evil: bool) -> Iterator[Mesh]:
    mesh, procs = start(tmp, servers, evil=evil)
    try:
        set_policy(mesh, POLICY)
        yield mesh
    finally:
        for proc in reversed(procs):
            proc.stop()


def set_policy(mesh: Mesh, text: str) -> None:
    with HubClient(mesh.hub.address, mesh.hq.data / "meshes" / MESH) as client:
        status, answer = client.json("POST", "/api/policy", {"text": text})
    assert status == 200, (status, answer)
    version = int(answer["version"])
    for agent in (mesh.hq, mesh.office):
        if agent is not None:
            wait_until(lambda a=agent: local_version(a) == version, TIMEOUT, f"{agent.name} to get the policy")


def local_version(agent: Agent) -> int:
    status, view = agent.api("GET", f"/api/meshes/{MESH}/policy/local")
    assert status == 200, view
    return int(view["version"])


def denied(agent: Agent) -> int:
    status, body = agent.api("GET", "/api/metrics")
    assert status == 200, body
    for line in str(body).splitlines():
        if line.startswith("ztm_agent_policy_denied_total{") and 'app="tunnel"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def refused_at_the_exit(mesh: Mesh, exit_agent: Agent, tunnel: str) -> None:
    before = denied(exit_agent)
    for _attempt in range(3):
        closed_within(mesh.ports[tunnel], 5.0, payload=b"bob past the policy")
    assert denied(exit_agent) == before + 3, "the refusals were not the exit's (the hub refused, or nobody did)"


# -------------------------------------------------------------------------------------------------------- tests


def test_a_member_the_policy_does_not_allow_is_refused_at_the_exit_through_the_relay(mesh: Mesh) -> None:
    refused_at_the_exit(mesh, mesh.hq, "tcp/pg")
    assert described(mesh.hq, "outbound", "tcp/pg")["refused"] >= 3


def test_a_member_the_policy_does_not_allow_is_refused_over_a_direct_channel(mesh: Mesh) -> None:
    assert mesh.office is not None
    paths = described(mesh.bob, "inbound", "tcp/pgd")["paths"]
    assert paths.get("direct", 0) >= 1, f"the control did not go direct: {paths}"
    refused_at_the_exit(mesh, mesh.office, "tcp/pgd")  # the hub's first line would have refused it relayed


def test_a_forged_caller_name_gets_the_certificates_rights(evil: Mesh) -> None:
    refused_at_the_exit(evil, evil.hq, "tcp/pg")
    log = evil.hub.proc.output()
    assert "evil hub: telling hq that bob-laptop's stream comes from hq" in log, log[-2000:]
