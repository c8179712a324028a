"""Mesh addresses (issue 17): the hub allocates each endpoint an IPv4 address of the mesh range and an IPv6 ULA
address, keeps them across agent and hub restarts, certificate renewals and re-joins, refuses a join once the range
is full, and refuses to start with a `--mesh-range` other than the mesh's.

Real hub and agent processes on 127.0.0.1 with real TLS; every wait polls with a deadline (tests/support.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from reliability.hubclient import HubClient
from support import ZTM, Agent, by_name, one_line_error, restart_agent, restart_hub, run, wait_until
from ztm import pki

MESH = "m"
Make = Callable[..., Any]


def ula(mesh_id: str) -> ipaddress.IPv6Network:
    return ipaddress.IPv6Network((b"\xfd" + hashlib.sha256(mesh_id.encode()).digest()[:5] + bytes(10), 48))


def addresses(agent: Agent) -> dict[str, tuple[str | None, str | None]]:
    return {e["name"]: (e["mesh_ip"], e["mesh_ip6"]) for e in agent.endpoints()}


def mesh_of(agent: Agent) -> dict[str, Any]:
    found = [m for m in agent.meshes() if m.get("name") == MESH]
    assert len(found) == 1, found
    return found[0]


def test_addresses_are_allocated_in_order_and_kept(make_mesh: Make, make_agent: Make) -> None:
    hub, agents = make_mesh(("a", "b"), hub_extra=("--cert-ttl", "6"))
    a, b = agents["a"], agents["b"]
    a.join(MESH, "alice", hub.permit)
    b.join(MESH, "bob", hub.permit)
    mesh = mesh_of(a)
    prefix6 = ula(mesh["mesh_id"])
    assert mesh["mesh_range"] == "100.64.0.0/10" and mesh["mesh_range6"] == str(prefix6), mesh
    first = addresses(a)
    # the lowest free ones, skipping the network address and .1 (kept for later use)
    assert first["alice"][0] == "100.64.0.2" and first["bob"][0] == "100.64.0.3", first
    assert first["alice"][1] == str(prefix6.network_address + 0x64400002), first
    assert first["bob"][1] is not None and ipaddress.IPv6Address(first["bob"][1]) in prefix6
    assert addresses(b) == first
    ep = by_name(a.endpoints())["bob"]
    assert ep["routes"] == [] and ep["routes_pending"] == [], ep
    own = a.cli_json("describe", "ep", "alice")
    assert own["mesh_ip"] == "100.64.0.2", own

    # certificate renewals (6 s certificates renew every ~3 s) keep the address
    old = mesh_of(b)["cert_expires"]
    wait_until(lambda: mesh_of(b)["cert_expires"] != old, 15, "bob to renew its certificate")
    assert addresses(a) == first

    restart_agent(b)
    wait_until(lambda: by_name(a.endpoints())["bob"]["online"], 20, "bob online again after its agent restarted")
    assert addresses(a) == first, "an agent restart changed an address"

    restart_hub(hub)
    wait_until(lambda: all(e["online"] for e in a.endpoints()), 20, "both online after the hub restarted")
    assert addresses(b) == first, "a hub restart changed an address"

    # a re-join under the same name (a new endpoint that replaces the old record) keeps the address
    b.cli("leave", MESH)
    wait_until(lambda: not by_name(a.endpoints())["bob"]["online"], 10, "bob offline after leaving")
    b.join(MESH, "bob", hub.permit)
    again = addresses(a)
    assert again == first, f"a re-join moved bob: {first} -> {again}"

    c = make_agent("c")
    c.join(MESH, "carol", hub.permit)
    assert addresses(a)["carol"][0] == "100.64.0.4"
    # root deletes carol: her address is free again and the next endpoint gets it
    a.cli("delete", "ep", "carol")
    d = make_agent("d")
    d.join(MESH, "dave", hub.permit)
    assert addresses(a)["dave"][0] == "100.64.0.4"


def test_mesh_range_is_fixed_at_creation(make_mesh: Make, make_hub: Make, tmp_path: Path) -> None:
    hub, agents = make_mesh(("a",), hub_extra=("--mesh-range", "10.77.0.0/24"))
    a = agents["a"]
    a.join(MESH, "alice", hub.permit)
    assert addresses(a)["alice"][0] == "10.77.0.2"
    assert mesh_of(a)["mesh_range"] == "10.77.0.0/24"

    # the same range again (or none) is fine; another one refuses to start with one line
    hub.proc.stop()
    argv = list(hub.proc.argv)
    i = argv.index("--mesh-range")
    cp = run([*argv[: i + 1], "10.78.0.0/24", *argv[i + 2 :]], env=hub.env, cwd=hub.dir, check=False, timeout=30)
    assert cp.returncode != 0
    line = one_line_error(cp)
    assert line == "ztm: " + (
        "the mesh was created with range 10.77.0.0/24; --mesh-range 10.78.0.0/24 differs (a mesh's range cannot change)"
    ), line
    restart_hub(hub)
    wait_until(lambda: by_name(a.endpoints())["alice"]["online"], 20, "alice online after the hub restart")
    assert addresses(a)["alice"][0] == "10.77.0.2"

    # bad ranges are refused before anything starts
    for bad, says in [
        ("10.77.0.0", "prefix"),
        ("10.77.0.0/25", "/8 to /24"),
        ("10.77.0.5/24", "did you mean 10.77.0.0/24"),
        ("fd00::/48", "IPv4"),
    ]:
        cp = run([*ZTM, "run", "hub", "--mesh-range", bad, "--data", str(tmp_path / "x")], check=False, timeout=30)
        assert cp.returncode != 0 and says in cp.stderr, (bad, cp.stderr)
        assert "Traceback" not in cp.stderr


def test_a_full_range_refuses_the_join(make_mesh: Make, make_agent: Make) -> None:
    hub, agents = make_mesh(("a",), hub_extra=("--mesh-range", "10.77.1.0/24"))
    a = agents["a"]
    a.join(MESH, "alice", hub.permit)
    # 253 endpoint addresses in a /24 (.0, .1 and .255 are not given): alice has one, enrol 252 more
    with HubClient(hub.address, a.data / "meshes" / MESH, user_cert=True) as client:
        for i in range(252):
            csr = pki.csr_to_pem(pki.make_csr(pki.new_key(), name="x"))
            status, body = client.json(
                "POST", "/api/enroll", {"ep_id": str(uuid.uuid4()), "name": f"filler-{i}", "csr": csr}
            )
            assert status == 200, body
        assert body["ep"]["mesh_ip"] == "10.77.1.254"
        csr = pki.csr_to_pem(pki.make_csr(pki.new_key(), name="x"))
        status, body = client.json("POST", "/api/enroll", {"ep_id": str(uuid.uuid4()), "name": "one-more", "csr": csr})
    assert status == 409 and "range 10.77.1.0/24 is full" in body["error"], body
    c = make_agent("c")
    cp = c.cli("join", MESH, "--as", "carol", "--permit", str(hub.permit), check=False)
    line = one_line_error(cp)
    assert cp.returncode != 0 and "the mesh range 10.77.1.0/24 is full" in line, line
    assert "carol" not in {e["name"] for e in a.endpoints()}
