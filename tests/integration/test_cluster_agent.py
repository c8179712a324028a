"""The agent in a hub cluster (several hubs of one mesh on PostgreSQL, `make_cluster`): it connects to a hub of its
zone, fails over within 2 s of a kill -9 of that hub (a new tunnelled connection works through another hub), and
moves back make-before-break when its zone's hub returns (a tunnelled connection opened before the move keeps
working)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

from integration.test_hub_list import MESH, SilentWire, hubs, metric
from integration.test_tunnel import Servers, echo_roundtrip, open_inbound, open_outbound
from support import Agent, Hub, free_port, restart_agent, wait_until
from ztm.agent import link

Make = Callable[..., Any]
FAILOVER_BOUND = 2.0
"""Seconds from a kill -9 of the agents' hub until a new tunnelled connection works through another hub."""


def connected(agent: Agent) -> dict[str, Any] | None:
    """The hub `agent` uses now (`ztm get hub`, the one marked connected), or None."""
    status, views = agent.api("GET", f"/api/meshes/{MESH}/hubs")
    assert status == 200, views
    return next((h for h in views if h.get("connected") is True), None)


def on(agent: Agent, hub: Hub) -> bool:
    now = connected(agent)
    return now is not None and hub.address in now.get("addresses", [])


def zone_b_pair(make_cluster: Make, make_agent: Make) -> tuple[Any, Agent, Agent]:
    """Hubs a (zone-a) and b (zone-b), and two agents of zone-b (an entrance and an exit), both on hub b."""
    cluster = make_cluster(hubs=[("a", "zone-a"), ("b", "zone-b")])
    entrance = make_agent("entrance", extra=["--zone", "zone-b"])
    exit_ = make_agent("exit", extra=["--zone", "zone-b"])
    entrance.join(MESH, "entrance", cluster.permit)
    exit_.join(MESH, "exit", cluster.permit)
    for agent in (entrance, exit_):
        wait_until(lambda a=agent: on(a, cluster.hubs[1]), 15, f"{agent.name} on zone-b's hub")  # type: ignore[misc]
    return cluster, entrance, exit_


def test_an_agent_of_zone_b_connects_to_zone_b_and_lists_every_hub(make_cluster: Make, make_agent: Make) -> None:
    cluster = make_cluster(hubs=[("a", "zone-a"), ("b", "zone-b")])
    agent = make_agent("b", extra=["--zone", "zone-b"])
    agent.join(MESH, "bee", cluster.permit)
    wait_until(lambda: on(agent, cluster.hubs[1]), 15, "the agent of zone-b on zone-b's hub")
    listed = wait_until(lambda: got if len(got := hubs(agent)) == 2 else None, 10, "the agent to list both hubs")
    by_zone = {h["zone"]: h for h in listed}
    assert set(by_zone) == {"zone-a", "zone-b"}, listed
    assert by_zone["zone-b"]["connected"] is True and by_zone["zone-a"]["connected"] is False
    assert by_zone["zone-a"]["online"] is True and by_zone["zone-a"]["addresses"] == [cluster.hubs[0].address]
    assert agent.cli_json("describe", "mesh", MESH)["zone"] == "zone-b"


def test_kill9_of_the_hub_fails_over_within_the_bound(make_cluster: Make, make_agent: Make) -> None:
    servers = Servers()
    try:
        cluster, entrance, exit_ = zone_b_pair(make_cluster, make_agent)
        open_outbound(exit_, "tcp/echo", servers.echo())
        port = open_inbound(entrance, "tcp/echo", "--exits", "exit")
        assert echo_roundtrip(port, b"before") == b"before"

        killed = time.monotonic()
        cluster.kill(1)

        def works() -> bool:
            try:
                return echo_roundtrip(port, b"after", timeout=1.0) == b"after"
            except OSError:
                return False

        wait_until(works, 10, "a new tunnelled connection through the other hub", interval=0.01)
        took = time.monotonic() - killed
        print(f"\nkill -9 of zone-b's hub -> a new tunnelled connection works: {took * 1000:.0f} ms")
        assert took < FAILOVER_BOUND, f"failover took {took:.2f}s (bound {FAILOVER_BOUND}s)"
        for agent in (entrance, exit_):
            assert on(agent, cluster.hubs[0]), connected(agent)
            assert metric(agent, "ztm_agent_hub_failovers_total") == 1
    finally:
        servers.close()


def test_a_hub_the_permit_did_not_name_takes_over_after_an_agent_restart(make_cluster: Make, make_agent: Make) -> None:
    cluster = make_cluster(hubs=[("a", "zone-a"), ("b", "zone-b")])
    first, later = cluster.hubs
    assert json.loads(cluster.permit.read_text())["bootstraps"] == [first.address], "hub b started after the permit"
    agent = make_agent("late", extra=["--zone", "zone-a"])
    agent.join(MESH, "late", cluster.permit)
    wait_until(lambda: len(hubs(agent)) == 2, 10, "the agent to learn both hubs")
    # After this restart only the agent's store knows hub b: the permit does not name it.
    restart_agent(agent)
    wait_until(lambda: on(agent, first), 10, "the agent of zone-a back on hub a")
    killed = time.monotonic()
    cluster.kill(0)
    wait_until(lambda: on(agent, later), 5, "the agent on hub b, known only from the stored list", interval=0.02)
    print(f"\nkill -9 of the permit's only hub -> the agent on the hub it learned: {time.monotonic() - killed:.2f} s")


def test_a_silent_link_fails_over_within_the_keepalive_bound(make_cluster: Make, make_agent: Make) -> None:
    port = free_port()
    wire = SilentWire(("127.0.0.1", port))
    try:
        cluster = make_cluster(
            hubs=[("a", "zone-a"), ("b", "zone-b")],
            listen=[None, f"127.0.0.1:{port}"],
            names=[None, f"127.0.0.1:{wire.port}"],
        )
        agent = make_agent("b", extra=["--zone", "zone-b"])
        agent.join(MESH, "bee", cluster.permit)
        wait_until(lambda: on(agent, cluster.hubs[1]), 15, "the agent on zone-b's hub (through the wire)")
        cut = time.monotonic()
        wire.cut()  # hub b lives on; only this agent's link to it goes silent
        wait_until(lambda: on(agent, cluster.hubs[0]), 15, "the agent on hub a", interval=0.05)
        took = time.monotonic() - cut
        bound = link.LINK_TIMEOUT  # the kernel's keepalive on the hub connection
        print(f"\nsilent link to hub b -> the agent on hub a: {took:.2f} s (keepalive bound {bound:g} s)")
        assert took <= bound + FAILOVER_BOUND, f"{took:.2f}s after the link went silent"
    finally:
        wire.close()


def test_back_to_its_zone_make_before_break(make_cluster: Make, make_agent: Make) -> None:
    servers = Servers()
    try:
        cluster, entrance, exit_ = zone_b_pair(make_cluster, make_agent)
        open_outbound(exit_, "tcp/echo", servers.echo())
        port = open_inbound(entrance, "tcp/echo", "--exits", "exit")
        cluster.kill(1)
        for agent in (entrance, exit_):
            wait_until(lambda a=agent: on(a, cluster.hubs[0]), 10, f"{agent.name} on hub a")  # type: ignore[misc]
        # (an agent may have moved once already: it enrols through the permit's first hub, then goes to its zone's)
        moves = {agent.name: metric(agent, "ztm_agent_hub_moves_total") for agent in (entrance, exit_)}

        # A long-running connection through the tunnel, opened while the agents are on hub a.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as long_lived:
            long_lived.sendall(b"ping-1")
            assert long_lived.recv(64) == b"ping-1"
            cluster.restart(1)
            for agent in (entrance, exit_):
                # The move waits out the dwell time after the failover (link.MIN_DWELL, 10 s).
                wait_until(lambda a=agent: on(a, cluster.hubs[1]), 30, f"{agent.name} back on zone-b's hub")  # type: ignore[misc]
                assert metric(agent, "ztm_agent_hub_moves_total") == moves[agent.name] + 1
            # The connection opened before the move still works: its stream finishes on the old hub connection.
            long_lived.sendall(b"ping-2")
            assert long_lived.recv(64) == b"ping-2"
        assert echo_roundtrip(port, b"new") == b"new", "a new connection after the move"
    finally:
        servers.close()


def test_a_file_download_survives_a_kill_of_the_hub(make_cluster: Make, make_agent: Make, tmp_path: Any) -> None:
    """kill -9 of the hub in the middle of a relayed file download: both agents fail over and the download
    completes byte-exact (the downloader retries its chunk streams through the new hub)."""
    import os
    import threading

    cluster, downloader, publisher = zone_b_pair(make_cluster, make_agent)
    data = os.urandom(12 * (1 << 20) + 333)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    path = "/shared/root/big.bin"
    publisher.cli_json("publish", "file", path, "-i", local)
    wait_until(lambda: [f for f in downloader.cli_json("get", "file") if f["path"] == path], 10, "the entry")
    out = tmp_path / "copy.bin"
    result: list[Any] = []
    worker = threading.Thread(
        target=lambda: result.append(
            downloader.cli("download", "file", path, "-o", out, "--rate", "3M", check=False, timeout=120)
        )
    )
    worker.start()
    try:

        def part_done() -> dict[str, Any] | None:
            status, jobs = downloader.api("GET", f"/api/meshes/{MESH}/apps/files/downloads?path={path}")
            job = next((j for j in jobs if j.get("path") == path), None) if status == 200 else None
            return job if job is not None and 2 <= job["chunks_done"] < job["chunks"] else None

        before = wait_until(part_done, 30, "a few chunks of the download in")
        cluster.kill(1)
        killed = time.monotonic()
    finally:
        worker.join(120)
    cp = result[0]
    assert cp.returncode == 0, f"download failed after the hub was killed: {cp.stdout} {cp.stderr}"
    print(
        f"download finished {time.monotonic() - killed:.2f} s after the kill of its hub "
        f"({before['chunks_done']} of {before['chunks']} chunks were in)"
    )
    assert out.read_bytes() == data
