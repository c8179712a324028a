"""Mesh addresses and subnet routes in a cluster of hubs on one PostgreSQL store (issue 17): enrolments racing at
two hubs never get one address twice (the store's unique index decides, the loser picks again), a route advertised
at one hub and approved at the other reaches the endpoints of both, a hub started with another `--mesh-range`
refuses to start, and endpoints recorded before addresses existed get theirs at the next start.

Real `ztm run hub --store postgresql://...` processes, real agents, a real PostgreSQL 15 (the `pg_server` fixture).
"""

from __future__ import annotations

import concurrent.futures
import sqlite3
import uuid
from collections.abc import Callable
from typing import Any

from integration.test_cluster import agent_at, failed_hub, settle
from reliability.hubclient import HubClient
from support import Agent, Cluster, by_name, restart_hub, wait_until
from ztm import pki

MESH = "m"
LAN = "10.20.0.0/16"
Make = Callable[..., Any]


def _enrol_many(hub_address: str, agent: Agent, prefix: str, count: int) -> list[tuple[int, Any]]:
    """`count` enrolments of new endpoints of the agent's user, as fast as one connection goes."""
    answers = []
    with HubClient(hub_address, agent.data / "meshes" / MESH, user_cert=True) as client:
        for i in range(count):
            csr = pki.csr_to_pem(pki.make_csr(pki.new_key(), name="x"))
            answers.append(
                client.json("POST", "/api/enroll", {"ep_id": str(uuid.uuid4()), "name": f"{prefix}-{i}", "csr": csr})
            )
    return answers


def test_racing_enrolments_at_two_hubs_get_distinct_addresses(make_cluster: Make, make_agent: Make) -> None:
    cluster: Cluster = make_cluster(hubs=[("hub-a", "a"), ("hub-b", "b")])
    hub_a, hub_b = cluster.hubs
    a, b = agent_at(make_agent, "a", hub_a), agent_at(make_agent, "b", hub_b)
    a.join(MESH, "alice", cluster.permit)
    b.join(MESH, "bob", cluster.permit)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(lambda args: _enrol_many(*args), [(hub_a.address, a, "at-a", 25), (hub_b.address, b, "at-b", 25)])
        )
    answers = [x for r in results for x in r]
    assert all(status == 200 for status, _ in answers), [x for x in answers if x[0] != 200][:3]
    given = [body["ep"]["mesh_ip"] for _, body in answers]
    assert len(set(given)) == len(given) == 50, sorted(given)
    listed = {e["name"]: e["mesh_ip"] for e in a.endpoints()}
    assert len(listed) == 52 and len(set(listed.values())) == 52, listed
    assert listed == {e["name"]: e["mesh_ip"] for e in b.endpoints()}, "the hubs disagree on an address"
    assert all(body["ep"]["mesh_ip"] == listed[body["ep"]["name"]] for _, body in answers)

    # a hub of this mesh started with another range refuses to start, in one line
    line = failed_hub(
        dict(hub_b.env),
        hub_b.dir / "other-data",
        "--store",
        cluster.store,
        "--ca-key-file",
        str(hub_a.data / "ca.key"),
        "--names",
        "127.0.0.1:1",
        "--mesh-range",
        "10.0.0.0/8",
    )
    assert line == (
        "ztm: the mesh was created with range 100.64.0.0/10; --mesh-range 10.0.0.0/8 differs (a mesh's range "
        "cannot change)"
    ), line


def test_a_route_advertised_at_one_hub_and_approved_at_the_other_reaches_both(
    make_cluster: Make, make_agent: Make
) -> None:
    cluster: Cluster = make_cluster(hubs=[("hub-a", "a"), ("hub-b", "b")])
    hub_a, hub_b = cluster.hubs
    a, b = agent_at(make_agent, "a", hub_a), agent_at(make_agent, "b", hub_b)
    a.join(MESH, "alice", cluster.permit)
    b.join(MESH, "bob", cluster.permit)
    settle(a, "alice", hub_a)
    settle(a, "bob", hub_b)

    a.cli("ep", "alice", "route", "advertise", LAN)
    wait_until(lambda: by_name(b.endpoints())["alice"]["routes_pending"] == [LAN], 5, "hub B to list the route")
    b.cli("route", "approve", "alice", LAN)  # root, at the other hub
    wait_until(lambda: by_name(a.endpoints())["alice"]["routes"] == [LAN], 5, "hub A to list the route approved")
    status, routes = a.api("GET", f"/api/meshes/{MESH}/routes")
    assert status == 200 and [(r["name"], r["cidr"], r["approved"], r["approved_by"]) for r in routes] == [
        ("alice", LAN, True, "root")
    ], routes
    a.cli("ep", "alice", "route", "withdraw", LAN)
    wait_until(lambda: by_name(b.endpoints())["alice"]["routes"] == [], 5, "hub B to drop the withdrawn route")


def test_endpoints_recorded_before_addresses_get_them_at_the_next_start(make_mesh: Make) -> None:
    """The state a store migration leaves (the column added, every address empty, no range in the meta): the
    first start gives every endpoint an address, oldest first, and records the range."""
    hub, agents = make_mesh(("a", "b"))
    a, b = agents["a"], agents["b"]
    a.join(MESH, "alice", hub.permit)
    b.join(MESH, "bob", hub.permit)
    hub.proc.stop()
    db = sqlite3.connect(hub.data / "ztm-hub.db")
    with db:
        db.execute("UPDATE endpoints SET mesh_ip = NULL")
        db.execute("DELETE FROM meta WHERE key IN ('mesh_range', 'mesh_range6')")
        db.execute("UPDATE endpoints SET first_seen = first_seen + 1000 WHERE name = 'alice'")  # bob is older now
    db.close()
    restart_hub(hub)
    wait_until(lambda: all(e["online"] for e in a.endpoints()), 20, "both online after the hub restart")
    assert {e["name"]: e["mesh_ip"] for e in a.endpoints()} == {"bob": "100.64.0.2", "alice": "100.64.0.3"}
    db = sqlite3.connect(f"file:{hub.data / 'ztm-hub.db'}?mode=ro", uri=True)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta WHERE key LIKE 'mesh_range%'").fetchall())
    finally:
        db.close()
    assert meta["mesh_range"] == "100.64.0.0/10" and meta["mesh_range6"].endswith("::/48"), meta
