"""Several hubs of one mesh on one PostgreSQL (issue 14): one CA, one set of users and endpoints, visibility across
hubs, evictions that reach every hub, the CA key file, name races, and the store going away under live sessions.

Every hub is a real `ztm run hub --store postgresql://...` process, every agent a real `ztm run agent`, and the
database a real PostgreSQL 15 started by the `pg_server` fixture.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from integration.test_users import save_certs
from reliability.hubclient import HubClient
from support import ZTM, Agent, Cluster, Hub, by_name, free_port, holds_for, invite, one_line_error, run, wait_until

MESH = "m"
Make = Callable[..., Any]


def hub_id(hub: Hub) -> str:
    """The hub's own id (a hub on a shared store keeps it in its data directory)."""
    return (hub.data / "hub-id").read_text().strip()


def settle(watcher: Agent, name: str, hub: Hub) -> None:
    """Wait until `watcher` sees endpoint `name` online at `hub` (an agent of a zone moves to its zone's hub)."""
    wait_until(lambda: hub_of(watcher, name) == hub_id(hub), 30, f"{name} online at {hub.proc.name}")


def agent_at(make_agent: Make, name: str, hub: Hub) -> Agent:
    """An agent of `hub`'s zone: it connects to that hub while it is online (its zone's only hub)."""
    assert hub.zone, "give each hub of the test its own zone"
    agent: Agent = make_agent(name, extra=["--zone", hub.zone])
    return agent


def hub_of(agent: Agent, name: str) -> str | None:
    """The hub id holding endpoint `name`'s session, as `agent` sees it (`ztm get ep -o json`)."""
    found = by_name(agent.endpoints()).get(name)
    return None if found is None or not found.get("online") else found.get("hub")


def admin(address: str, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_endpoints_on_two_hubs_see_each_other_within_a_second(make_cluster: Make, make_agent: Make) -> None:
    cluster: Cluster = make_cluster(hubs=[("hub-a", "a"), ("hub-b", "b")])
    a = agent_at(make_agent, "a", cluster.hubs[0])
    b = agent_at(make_agent, "b", cluster.hubs[1])
    a.join(MESH, "alice", cluster.permit)
    wait_until(lambda: "alice" in a.online_names(), 10, "alice online")
    started = time.monotonic()
    b.join(MESH, "bob", cluster.permit)
    wait_until(lambda: "bob" in a.online_names(), 10, "bob online for alice")
    seen = time.monotonic() - started
    print(f"join -> online for another endpoint = {seen:.3f} s (including the join itself)")
    settle(a, "alice", cluster.hubs[0])
    settle(a, "bob", cluster.hubs[1])
    assert hub_of(b, "alice") == hub_id(cluster.hubs[0])
    # one mesh: the same CA in both permits, every endpoint listed at both hubs
    assert cluster.hubs[0].permit_json()["ca"] == cluster.hubs[1].permit_json()["ca"]
    assert {"alice", "bob"} <= set(by_name(b.endpoints()))
    # offline: stop bob's agent, alice sees it offline as fast as on one hub
    b.proc.stop()
    stopped = time.monotonic()
    wait_until(lambda: "bob" not in a.online_names(), 10, "bob offline for alice")
    print(f"agent stopped at hub B -> offline for an endpoint of hub A = {time.monotonic() - stopped:.3f} s")
    assert time.monotonic() - stopped < 5


def test_every_hub_lists_every_hub_with_its_zone(make_cluster: Make, make_agent: Make, tmp_path: Path) -> None:
    cluster: Cluster = make_cluster(hubs=[("hub-a", "east"), ("hub-b", "west")])
    a: Agent = make_agent("a")
    a.join(MESH, "alice", cluster.permit)
    wait_until(lambda: "alice" in a.online_names(), 10, "alice online")
    files = save_certs(a, tmp_path / "alice-certs")
    for hub in cluster.hubs:
        with HubClient(hub.address, files) as client:
            status, answer = client.json("GET", "/api/hubs")
        assert status == 200, answer
        hubs = answer["hubs"]
        assert {h["zone"] for h in hubs} == {"east", "west"}, hubs
        assert all(h["online"] for h in hubs), hubs
        assert {h["addresses"][0] for h in hubs} == {c.address for c in cluster.hubs}
    # a hub that stops cleanly is offline in the other's list at once
    cluster.hubs[0].proc.stop()

    def east_online() -> bool:
        with HubClient(cluster.hubs[1].address, files) as client:
            _status, answer = client.json("GET", "/api/hubs")
        return any(h["online"] for h in answer["hubs"] if h["zone"] == "east")

    wait_until(lambda: not east_online(), 5, "hub-a offline in hub-b's list")


def test_an_eviction_at_one_hub_cuts_the_user_at_every_hub_within_a_second(
    make_cluster: Make, make_agent: Make, tmp_path: Path
) -> None:
    cluster: Cluster = make_cluster(hubs=[("hub-a", "a"), ("hub-b", "b"), ("hub-c", "c")])
    root = agent_at(make_agent, "root", cluster.hubs[0])
    root.join(MESH, "root-ep", cluster.permit)
    bob = agent_at(make_agent, "bob", cluster.hubs[2])
    permit = invite(root, bob, "bob", tmp_path / "bob.json")
    assert cluster.hubs[2].address in json.loads(permit.read_text())["bootstraps"], "the permit does not list hub C"
    bob.join(MESH, "bob-ep", permit)
    settle(root, "root-ep", cluster.hubs[0])
    settle(root, "bob-ep", cluster.hubs[2])
    started = time.monotonic()
    root.cli("evict", "bob")
    wait_until(lambda: "bob-ep" not in root.online_names(), 5, "bob's endpoint offline after the eviction")
    took = time.monotonic() - started
    print(f"evict at hub A -> bob's session at hub C ended = {took:.3f} s")
    assert took < 1.0 * 5  # the 1 s, with room for a loaded CI machine

    def bob_status() -> str | None:
        status = bob.meshes()[0].get("status")
        return str(status) if status in ("evicted", "error") else None

    wait_until(bob_status, 10, "bob's agent to learn it was evicted")
    # and a fresh TLS handshake of bob's at any hub is refused (the CRL of every hub has his certificate)
    # bob's agent keeps trying every hub of its permit: each refuses his certificate
    holds_for(lambda: "bob-ep" not in root.online_names(), 2.0, "bob stays offline at every hub")


def test_two_joins_with_one_name_at_two_hubs_give_one_success_and_one_conflict(
    make_cluster: Make, make_agent: Make
) -> None:
    cluster: Cluster = make_cluster(hubs=[("hub-a", ""), ("hub-b", "")])
    a: Agent = make_agent("a")
    b: Agent = make_agent("b")
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(
                lambda pair: pair[0].cli("join", MESH, "--as", "same", "--permit", str(pair[1]), check=False),
                [(a, cluster.hubs[0].permit), (b, cluster.hubs[1].permit)],
            )
        )
    codes = sorted(cp.returncode for cp in results)
    assert codes[0] == 0 and codes[1] != 0, [(cp.returncode, cp.stdout, cp.stderr) for cp in results]
    loser = next(cp for cp in results if cp.returncode != 0)
    message = one_line_error(loser)
    assert "same" in message and ("taken" in message or "in use" in message), message


def test_a_hub_with_the_wrong_ca_key_file_refuses_to_start(make_cluster: Make, tmp_path: Path, pg_url: Any) -> None:
    make_cluster(hubs=[("hub-a", "")])
    wrong = tmp_path / "wrong.key"
    from ztm.hub import cakey

    cakey.create_key_file(wrong)
    cp = run(
        [
            *ZTM, "run", "hub", "--listen", f"127.0.0.1:{free_port()}", "--data",
            str(tmp_path / "other-data"), "--store", pg_url.url, "--ca-key-file", str(wrong),
        ],
        env=pg_url.env,
        check=False,
        timeout=30,
    )  # fmt: skip
    assert cp.returncode != 0
    message = one_line_error(cp)
    assert "CA key file" in message and str(wrong) in message, message
    assert pg_url.password not in cp.stdout + cp.stderr


def test_a_later_hub_without_the_key_file_says_to_copy_it(make_cluster: Make, tmp_path: Path, pg_url: Any) -> None:
    make_cluster(hubs=[("hub-a", "")])
    cp = run(
        [
            *ZTM, "run", "hub", "--listen", f"127.0.0.1:{free_port()}", "--data",
            str(tmp_path / "other-data"), "--store", pg_url.url,
        ],
        env=pg_url.env,
        check=False,
        timeout=30,
    )  # fmt: skip
    assert cp.returncode != 0
    message = one_line_error(cp)
    assert "copy the first hub's key file" in message, message


def test_the_store_going_away_keeps_sessions_and_refuses_changes_then_recovers(
    make_cluster: Make, make_agent: Make, pg_url: Any, tmp_path: Path
) -> None:
    admin_port = free_port()
    cluster: Cluster = make_cluster(hubs=[("hub-a", "")], extra=["--admin", f"127.0.0.1:{admin_port}"])
    root: Agent = make_agent("root")
    root.join(MESH, "root-ep", cluster.permit)
    wait_until(lambda: "root-ep" in root.online_names(), 10, "root online")
    carol: Agent = make_agent("carol")
    pg_url.server.stop()
    try:

        def store_away() -> str | None:
            status, body = admin(f"127.0.0.1:{admin_port}", "/healthz")
            return body if status == 503 else None

        body = wait_until(store_away, 10, "/healthz to report the store away")
        assert "store unavailable" in body, body
        # live: the session stays, listing works (memory)
        assert "root-ep" in root.online_names()
        # changes: refused with one line, nothing written
        identity = tmp_path / "carol.pem"
        identity.write_text(carol.cli("identity").stdout)
        cp = root.cli("invite", "carol", "--identity", identity, "--permit", tmp_path / "carol.json", check=False)
        assert cp.returncode != 0
        assert "store unavailable" in one_line_error(cp), one_line_error(cp)
    finally:
        pg_url.server.start()
    wait_until(lambda: admin(f"127.0.0.1:{admin_port}", "/healthz")[0] == 200, 20, "/healthz ok again")
    assert "root-ep" in root.online_names()
    invite(root, carol, "carol", tmp_path / "carol.json")
    carol.join(MESH, "carol-ep", tmp_path / "carol.json")
    wait_until(lambda: "carol-ep" in root.online_names(), 10, "carol online after the store came back")


def test_a_single_sqlite_hub_lists_itself(hub: Hub, make_agent: Make) -> None:
    a: Agent = make_agent("a")
    a.join(MESH, "alice", hub.permit)
    wait_until(lambda: "alice" in a.online_names(), 10, "alice online")
    assert hub_of(a, "alice") is not None
