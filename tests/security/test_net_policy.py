"""Attacks on network mode's policy (issue 17) against a real hub and real agents with real TLS on loopback: the
attackers speak the wire protocol with their own agents' certificate files (tests/reliability/hubclient.py).

* A member whom the policy allows every installed app (`app/*`) at an endpoint, and nothing of network mode, opens a
  `net` stream there (a packet stream `ip`, or a port stream `port/tcp/22`): the hub's first line refuses it as kind
  `ip` ("-> alice:ip"), before the target hears of it. Before the fix the hub took `net` for an installed app, so
  `app/*` let the stream through to the target.
* A member allowed `ip/tcp:22` there is not refused at the hub (the target's inbound filter decides per packet).
* A policy whose `ip/` parts are malformed (a CIDR with host bits, a backwards port range, an unknown protocol) is
  refused by the hub with the line and column, and nothing changes.
* `ztm policy check` decides `ip/` targets through the real agent and hub: a rule without a CIDR covers the
  endpoint's own mesh addresses only, never a routed LAN address.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from integration.test_hub_admin import metrics
from reliability.hubclient import HubClient
from support import Agent, Hub, policy_mesh
from ztm.version import E2E_VERSION

MESH = "m"
POLICY = """{
  "tagOwners": {"tag:gw": ["root"]},
  "acls": [
    {"action": "accept", "src": ["bob"], "dst": ["tag:gw:ip/tcp:22", "tag:gw:ip/10.20.0.0/16/udp:5000-5100"]},
    {"action": "accept", "src": ["carol"], "dst": ["*:app/*"]},
  ],
  "tests": [
    {"src": "bob", "accept": ["alice:ip/tcp:22", "alice:ip/10.20.1.5/udp:5001"],
     "deny": ["alice:ip/tcp:23", "alice:ip/10.20.1.5/tcp:22", "alice:ip/10.21.0.1/udp:5001"]},
    {"src": "carol", "accept": ["alice:app/chat"], "deny": ["alice:ip/tcp:22", "alice:ip/icmp"]},
  ],
}
"""


@dataclass
class World:
    hub: Hub
    admin: str
    root: Agent
    """root's agent, endpoint `alice` (tag:gw)."""
    bob: Agent
    as_root: HubClient
    as_bob: HubClient
    as_carol: HubClient
    """endpoint `carol-pc`: allowed every installed app, nothing of network mode."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("net-policy-attacks")
    with policy_mesh(tmp, MESH, ("carol", "carol-pc", "carol"), ("root", "bob", "carol")) as m:
        c = m.clients
        world = World(m.hub, m.admin, m.agents["root"], m.agents["bob"], c["root"], c["bob"], c["carol"])
        status, got = world.as_root.json("POST", "/api/endpoints/alice/labels", {"add": ["tag:gw"]})
        assert status == 200, got
        status, got = world.as_root.json("POST", "/api/policy", {"text": POLICY})
        assert status == 200, got
        yield world


def _open(client: HubClient, target: str, app: str, service: str) -> tuple[int, dict[str, Any]]:
    """A CONNECT through the hub to endpoint `target` (its name); the hub's (or the target's) answer."""

    async def go() -> tuple[int, bytes]:
        headers = [("ztm-app", app), ("ztm-service", service), ("ztm-e2e", E2E_VERSION)]
        stream = await client.conn.open_stream("CONNECT", target, headers)
        try:
            status, _ = await stream.response()
            return status, await stream.read_all() if status != 200 else b"{}"
        finally:
            stream.reset()

    status, raw = client.run(go(), 20)
    try:
        return status, json.loads(raw or b"{}")
    except ValueError:
        return status, {"raw": raw.decode(errors="replace")}


def version(world: World) -> int:
    status, got = world.as_root.json("GET", "/api/policy")
    assert status == 200, got
    return int(got["version"])


def test_app_star_does_not_open_network_mode_at_the_hub(world: World) -> None:
    """carol may reach every installed app at alice; a `net` stream is network mode (kind ip), not an app."""
    policy = version(world)
    denied_before = metrics(world.admin).get("ztm_hub_streams_denied_by_policy_total", 0.0)
    for service in ("ip", "port/tcp/22"):
        status, got = _open(world.as_carol, "alice", "net", service)
        assert status == 403, (service, status, got)
        assert got.get("error") == (
            f"policy: denied: no rule of policy version {policy} allows it (carol@carol-pc -> alice:ip)"
        ), got
    assert metrics(world.admin)["ztm_hub_streams_denied_by_policy_total"] == denied_before + 2
    # the same member's installed-app stream still goes on to alice (which decides in full)
    status, got = _open(world.as_carol, "alice", "chat", "x")
    assert not (status == 403 and "carol-pc ->" in got.get("error", "")), got


def test_a_member_allowed_ip_passes_the_first_line(world: World) -> None:
    denied_before = metrics(world.admin).get("ztm_hub_streams_denied_by_policy_total", 0.0)
    status, got = _open(world.as_bob, "alice", "net", "ip")
    assert not (status == 403 and "bob-laptop ->" in got.get("error", "")), got
    assert metrics(world.admin).get("ztm_hub_streams_denied_by_policy_total", 0.0) == denied_before


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ("ip/10.20.0.5/16/tcp:22", "'10.20.0.5/16' is not a CIDR such as 10.20.0.0/16 or fd00:20::/64: did you mean "
         "10.20.0.0/16"),
        ("ip/udp:5100-5000", "port range '5100-5000' runs backwards: write 5000-5100"),
        ("ip/gre", "'gre' is not a protocol part"),
    ],
)  # fmt: skip
def test_a_malformed_ip_part_is_refused_at_its_line_and_column(world: World, part: str, message: str) -> None:
    before = version(world)
    text = POLICY.replace('"*:app/*"]', f'"*:app/*", "alice:{part}"]')
    status, got = world.as_root.json("POST", "/api/policy", {"text": text})
    assert status == 400, got
    assert got["error"].startswith(f"policy line 5, column 63: dst 'alice:{part}': "), got
    assert message in got["error"], got
    assert version(world) == before


def test_policy_check_decides_ip_targets_through_the_agent(world: World) -> None:
    policy = version(world)
    cli = world.bob.cli
    out = cli("policy", "check", "--from", "bob", "--to", "alice", "ip/tcp:22").stdout.splitlines()
    assert out[0] == f"allowed: bob -> alice:ip/tcp:22 (policy version {policy})", out
    out = cli("policy", "check", "--from", "bob", "--to", "alice", "ip/10.20.1.5/tcp:22").stdout.splitlines()
    assert out[0] == f"denied: bob -> alice:ip/10.20.1.5/tcp:22 (policy version {policy})", out
    got = world.bob.cli_json("policy", "check", "--from", "bob", "--to", "alice", "ip/10.20.1.5/udp:5001")
    assert (got["allowed"], got["line"]) == (True, 4), got
    bad = cli("policy", "check", "--from", "bob", "--to", "alice", "ip/tcp:99999", check=False)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert "invalid app target 'ip/tcp:99999'" in bad.stderr, bad.stderr
