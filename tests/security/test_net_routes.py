"""Attacks on subnet routes (issue 17) by members of a mesh, against a real hub and real agents on 127.0.0.1.

Routes decide where other endpoints send a whole network's packets, so who may change them matters:

- a member advertises a route for another user's endpoint (to draw that endpoint's name into routing it, or to fill
  its 64 slots): refused (403), nothing stored, the refusal audited;
- a member approves (or unapproves) a route, its own included: only root approves (403, nothing changes);
- root approves a CIDR naming one endpoint: only that endpoint's route is approved, never another endpoint's
  advertisement of the same network (a forged `ep` in the body cannot approve someone else's route, and naming an
  endpoint that does not advertise the CIDR changes nothing);
- routes that would capture mesh traffic or more than a LAN (overlapping the mesh range or its ULA /48, loopback,
  link-local, multicast, default routes, a host address with bits set): refused with one line, nothing stored;
- 65 routes on one endpoint: refused;
- a route flood from one member (advertise/withdraw in a loop): bounded to `CHANGES_PER_MINUTE` changes per user
  and minute (so the audit log and every agent's event stream stay bounded), other users are not affected.

The requests go straight to the hub with the member's own endpoint certificate (tests/reliability/hubclient.py), as
a modified agent would send them, and through the agent's local API and CLI.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from reliability.hubclient import HubClient
from support import Agent, Hub, by_name, invite, one_line_error, start_hub_and_agents, wait_until
from ztm.hub.meshnet import CHANGES_PER_MINUTE

MESH = "m"
LAN = "10.20.0.0/16"


@dataclass
class World:
    hub: Hub
    root: Agent
    bob: Agent
    carol: Agent
    ids: dict[str, str]

    def client(self, agent: Agent) -> HubClient:
        return HubClient(self.hub.address, agent.data / "meshes" / MESH)

    def routes(self) -> list[tuple[str, str, bool]]:
        status, routes = self.root.api("GET", f"/api/meshes/{MESH}/routes")
        assert status == 200, routes
        return sorted((r["name"], r["cidr"], r["approved"]) for r in routes)

    def audit(self, user: str) -> list[dict[str, Any]]:
        with self.client(self.root) as c:
            status, rows = c.json("GET", f"/api/audit?user={user}")
        assert status == 200, rows
        return list(rows)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("netroutes")
    hub, agents = start_hub_and_agents(tmp, ("root", "bob", "carol"))
    try:
        root, bob, carol = agents["root"], agents["bob"], agents["carol"]
        root.join(MESH, "alice", hub.permit)
        bob.join(MESH, "bob", invite(root, bob, "bob", tmp / "bob.json"))
        carol.join(MESH, "carol", invite(root, carol, "carol", tmp / "carol.json"))
        ids = {e["name"]: e["id"] for e in root.endpoints()}
        yield World(hub, root, bob, carol, ids)
    finally:
        for proc in (hub.proc, *(a.proc for a in agents.values())):
            proc.stop()


def _reset(w: World) -> None:
    """Withdraw every route (as root, one request per endpoint), so each test starts from none."""
    held: dict[str, list[str]] = {}
    for name, cidr, _ in w.routes():
        held.setdefault(name, []).append(cidr)
    for name, cidrs in held.items():
        w.root.cli("ep", name, "route", "withdraw", *cidrs)
    assert w.routes() == []


def test_a_member_cannot_advertise_routes_for_another_users_endpoint(world: World) -> None:
    w = world
    _reset(w)
    with w.client(w.bob) as c:
        status, body = c.json("POST", f"/api/endpoints/{w.ids['alice']}/routes", {"advertise": [LAN]})
        assert status == 403 and "only 'root' (the owner) or root" in body["error"], body
        status, body = c.json("POST", f"/api/endpoints/{w.ids['carol']}/routes", {"advertise": [LAN]})
        assert status == 403, body
    line = one_line_error(w.bob.cli("ep", "alice", "route", "advertise", LAN, check=False))
    assert "only 'root' (the owner) or root may change the routes of endpoint 'alice'" in line, line
    assert w.routes() == [], "a refused advertisement was stored"
    denied = [r for r in w.audit("bob") if r["action"] == "denied"]
    assert any(r["detail"]["attempted"] == "route.advertise" and r["target"] == "alice" for r in denied), denied

    # its own endpoint: fine, and pending until root approves
    w.bob.cli("ep", "bob", "route", "advertise", LAN)
    assert w.routes() == [("bob", LAN, False)]
    # and root may advertise for any endpoint (the owner's consent is root's to give)
    w.root.cli("ep", "carol", "route", "advertise", "10.30.0.0/16")
    assert ("carol", "10.30.0.0/16", False) in w.routes()
    # withdrawing another user's route is refused too
    with w.client(w.bob) as c:
        status, body = c.json("POST", f"/api/endpoints/{w.ids['carol']}/routes", {"withdraw": ["10.30.0.0/16"]})
    assert status == 403, body
    assert ("carol", "10.30.0.0/16", False) in w.routes()


def test_only_root_approves(world: World) -> None:
    w = world
    _reset(w)
    w.bob.cli("ep", "bob", "route", "advertise", LAN)
    with w.client(w.bob) as c:
        for ep in (w.ids["bob"], "bob"):
            status, body = c.json("POST", "/api/routes/approve", {"ep": ep, "cidrs": [LAN], "approved": True})
            assert status == 403 and body["error"] == "only root may approve routes; you are 'bob'", body
    line = one_line_error(w.bob.cli("route", "approve", "bob", LAN, check=False))
    assert "only root may approve routes" in line, line
    assert w.routes() == [("bob", LAN, False)], "a member approved a route"
    w.root.cli("route", "approve", "bob", LAN)
    assert w.routes() == [("bob", LAN, True)]
    ep = by_name(w.carol.endpoints())["bob"]
    assert ep["routes"] == [LAN] and ep["routes_pending"] == [], ep
    # a member cannot take root's approval back either
    with w.client(w.carol) as c:
        status, body = c.json("POST", "/api/routes/approve", {"ep": "bob", "cidrs": [LAN], "approved": False})
    assert status == 403, body
    assert w.routes() == [("bob", LAN, True)]
    assert any(r["action"] == "route.approve" for r in w.audit("root")), "the approval is not in the audit log"


def test_an_approval_names_only_the_endpoint_in_its_body(world: World) -> None:
    w = world
    _reset(w)
    w.bob.cli("ep", "bob", "route", "advertise", LAN)
    w.carol.cli("ep", "carol", "route", "advertise", LAN, "10.40.0.0/16")
    with w.client(w.root) as c:
        # carol's CIDR, bob named: bob does not advertise it, nothing changes anywhere
        status, body = c.json("POST", "/api/routes/approve", {"ep": "bob", "cidrs": ["10.40.0.0/16"]})
        assert status == 404 and "does not advertise 10.40.0.0/16" in body["error"], body
        # a list with one CIDR of the named endpoint and one it does not advertise: refused whole
        status, body = c.json("POST", "/api/routes/approve", {"ep": "bob", "cidrs": [LAN, "10.40.0.0/16"]})
        assert status == 404, body
        assert w.routes() == [("bob", LAN, False), ("carol", LAN, False), ("carol", "10.40.0.0/16", False)]
        # the shared CIDR for bob: carol's advertisement of the same network stays pending
        status, body = c.json("POST", "/api/routes/approve", {"ep": w.ids["bob"], "cidrs": [LAN]})
        assert status == 200 and body["name"] == "bob" and body["routes"] == [LAN], body
    assert w.routes() == [("bob", LAN, True), ("carol", LAN, False), ("carol", "10.40.0.0/16", False)]
    # withdrawing an approved route removes it: advertised again, it needs a new approval
    w.bob.cli("ep", "bob", "route", "withdraw", LAN)
    w.bob.cli("ep", "bob", "route", "advertise", LAN)
    assert ("bob", LAN, False) in w.routes()


def _ula(mesh_id: str) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network((b"\xfd" + hashlib.sha256(mesh_id.encode()).digest()[:5] + bytes(10), 48))


def test_routes_that_would_capture_mesh_or_special_traffic_are_refused(world: World) -> None:
    w = world
    _reset(w)
    mesh_id = next(m for m in w.bob.meshes() if m["name"] == MESH)["mesh_id"]
    ula = _ula(mesh_id)
    bad = {
        "100.64.0.0/16": "overlaps the mesh range 100.64.0.0/10",
        "100.0.0.0/8": "overlaps the mesh range",
        "100.64.0.3/32": "overlaps the mesh range",
        str(ipaddress.IPv6Network((ula.network_address, 64))): f"overlaps the mesh range {ula}",
        str(ula.supernet(new_prefix=32)): "overlaps the mesh range",
        "0.0.0.0/0": "exit nodes",
        "::/0": "exit nodes",
        "127.0.0.0/8": "loopback",
        "169.254.0.0/16": "link-local",
        "239.1.0.0/16": "multicast",
        "fe80::/64": "link-local",
        "ff02::/16": "multicast",
        "10.20.0.5/16": "did you mean 10.20.0.0/16",
        "10.0.0.0/7": "prefix /7",
        "2001:db8::/12": "prefix /12",
        "10.20.0.0": "not a CIDR",
        "not-a-network/8": "not a CIDR",
    }
    with w.client(w.bob) as c:
        for cidr, says in bad.items():
            status, body = c.json("POST", f"/api/endpoints/{w.ids['bob']}/routes", {"advertise": [LAN, cidr]})
            assert status == 400 and says in body["error"], (cidr, body)
            assert "\n" not in body["error"]
    line = one_line_error(w.bob.cli("ep", "bob", "route", "advertise", "10.20.0.5/16", check=False))
    assert line.endswith("did you mean 10.20.0.0/16"), line
    assert w.routes() == [], "part of a refused request was stored"


def test_more_than_64_routes_are_refused(world: World) -> None:
    w = world
    _reset(w)
    many = [f"10.{i}.0.0/16" for i in range(65)]
    with w.client(w.bob) as c:
        path = f"/api/endpoints/{w.ids['bob']}/routes"
        status, body = c.json("POST", path, {"advertise": many})
        assert status == 400 and "at most 64" in body["error"], body
        status, body = c.json("POST", path, {"advertise": many[:64]})
        assert status == 200 and len(body["routes_pending"]) == 64, body
        status, body = c.json("POST", path, {"advertise": many[64:]})
        assert status == 400 and "would advertise 65 routes; at most 64" in body["error"], body
    assert len(w.routes()) == 64


def test_a_route_flood_from_one_member_is_bounded(world: World) -> None:
    w = world
    _reset(w)
    audit_before = len([r for r in w.audit("carol") if r["action"].startswith("route.")])
    codes: dict[int, int] = {}
    errors: set[str] = set()
    changes, pending = 0, None
    with w.client(w.carol) as c:
        path = f"/api/endpoints/{w.ids['carol']}/routes"
        for i in range(3 * CHANGES_PER_MINUTE):
            status, body = c.json("POST", path, {"advertise" if i % 2 == 0 else "withdraw": ["10.50.0.0/16"]})
            codes[status] = codes.get(status, 0) + 1
            if status != 200:
                errors.add(body["error"])
            elif body["routes_pending"] != pending:
                changes, pending = changes + 1, body["routes_pending"]
    # past the budget every change is refused (503); what is asked again is answered as it stands (200, no change),
    # and a withdrawal of what is not advertised is a 404
    assert changes <= CHANGES_PER_MINUTE and codes.get(503, 0) >= CHANGES_PER_MINUTE // 2, (changes, codes)
    assert set(codes) <= {200, 404, 503}, codes
    assert all("route changes this minute" in e or "does not advertise" in e for e in errors), errors
    rows = [r for r in w.audit("carol") if r["action"].startswith("route.")]
    assert len(rows) - audit_before <= CHANGES_PER_MINUTE, f"{len(rows) - audit_before} audit rows for a flood"
    # others are not slowed down by carol's flood, and carol's session lives on
    w.bob.cli("ep", "bob", "route", "advertise", LAN)
    assert ("bob", LAN, False) in w.routes()
    wait_until(lambda: by_name(w.root.endpoints())["carol"]["online"], 5, "carol still online after her flood")
    w.hub.proc.assert_alive()
