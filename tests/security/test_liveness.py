"""Liveness of hub connections at scale: what an idle, vanished, hung or slow party costs, against real processes.

An idle agent's liveness is its hub connection: the kernel watches the TCP path (keepalive probes and
`TCP_USER_TIMEOUT`, `ztm.tcpalive`) on both ends, and the agent's rare HTTP/2 PING (every `--heartbeat` s at most,
10 s to answer) catches a hung process; no `POST /api/heartbeat` any more. Checked here:

* a member that opened many connections and then vanished silently (its packets dropped: no FIN, no RST) no longer
  holds them at the hub: the hub's kernel gives them up within `ztm.hub.routes.LINK_TIMEOUT` (before, they were held
  until the certificate expired);
* a hub that is only slow (its process stopped for 7 s, longer than the old 2 s + 3 s keepalive) keeps its agents:
  no failover, the same session (before, every agent left it: the reconnect storm of the 3,900-agent run);
* a hung hub (stopped for good) is still left within the PING bound;
* an idle agent stays online through many intervals without a single heartbeat request, and a hung agent (stopped)
  is offline at its hub after 3 intervals of silence.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.test_hub_list import metric, online
from reliability.hubclient import HubClient
from support import (
    Agent,
    Hub,
    LoopbackDrop,
    free_port,
    holds_for,
    invite,
    start_hub_and_agents,
    wait_until,
)
from ztm import h2
from ztm.agent import link
from ztm.hub import routes

MESH = "m"


def fds(hub: Hub) -> int:
    return len(os.listdir(f"/proc/{hub.proc.pid}/fd"))


@contextlib.contextmanager
def stopped(hub: Hub) -> Iterator[None]:
    os.kill(hub.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(hub.proc.pid, signal.SIGCONT)


def hub_counter(admin: str, name: str) -> float:
    import urllib.request

    with urllib.request.urlopen(f"http://{admin}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def endpoint(agent: Agent, name: str) -> dict[str, object]:
    for ep in agent.cli_json("get", "ep"):
        if ep["name"] == name:
            return dict(ep)
    raise AssertionError(f"{name} is not listed")


def test_a_member_that_vanishes_silently_no_longer_holds_its_connections(tmp_path: Path) -> None:
    if (why := LoopbackDrop.missing()) is not None:
        pytest.skip(why)
    hub, agents = start_hub_and_agents(tmp_path, ("root", "mallory"))
    root, mallory = agents["root"], agents["mallory"]
    root.join(MESH, "root", hub.permit)
    mallory.join(MESH, "mallory", invite(root, mallory, "mallory", tmp_path / "mallory.json"))
    client = HubClient(hub.address, mallory.data / "meshes" / MESH)
    extra: list[h2.Connection] = []
    drop: LoopbackDrop | None = None
    try:
        before = fds(hub)

        async def open_and_ping() -> h2.Connection:
            conn = await client._connect()
            await conn.ping(5.0)  # accepted, verified, speaking HTTP/2
            return conn

        extra = [client.run(open_and_ping()) for _ in range(20)]
        held = fds(hub)
        assert held >= before + 20, (before, held)
        ports = [c.local_address[1] for c in [client.conn, *extra] if c.local_address is not None]
        drop = LoopbackDrop(ports)  # mallory's machine is gone: nothing of it arrives, nothing reaches it
        cut = time.monotonic()
        bound = routes.LINK_TIMEOUT + 3.0
        wait_until(
            lambda: fds(hub) <= held - 21, bound + 5, "the hub to drop mallory's 21 silent connections", interval=0.2
        )
        took = time.monotonic() - cut
        print(f"\n21 connections of a vanished member dropped by the hub {took:.2f} s after the cut")
        assert took <= bound, f"the hub held a vanished member's connections {took:.2f}s (bound {bound:g}s)"
        assert hub.proc.alive
    finally:
        if drop is not None:
            drop.close()
        for conn in extra:
            client.loop.call_soon_threadsafe(conn.close)
        client.close()


def test_a_slow_hub_keeps_its_agents_and_a_hung_one_is_left_within_the_bound(tmp_path: Path) -> None:
    hub, agents = start_hub_and_agents(tmp_path, ("root",))
    root = agents["root"]
    root.join(MESH, "root", hub.permit)
    wait_until(lambda: online(root), 10, "root online")
    since = endpoint(root, "root")["online_since"]
    with stopped(hub):  # a CPU-starved hub: its loop does not run for 7 s, its kernel still answers
        time.sleep(7.0)  # the state under test is the passing of time itself
    holds_for(lambda: online(root), 1.0, "root online after the hub came back")
    assert metric(root, "ztm_agent_hub_failovers_total") == 0, "the agent left a hub that was only slow"
    assert endpoint(root, "root")["online_since"] == since, "the slow hub cost the agent its session"

    bound = min(link.KEEPALIVE_INTERVAL, 10.0) + link.KEEPALIVE_TIMEOUT  # the hub's default --heartbeat is 10 s
    with stopped(hub):
        hung = time.monotonic()
        wait_until(lambda: not online(root), bound + 5, "the agent to leave a hung hub", interval=0.1)
        took = time.monotonic() - hung
    print(f"\nhung hub (SIGSTOP) -> the agent leaves it: {took:.2f} s (bound {bound:g} s)")
    assert took <= bound + 1.0, f"a hung hub was noticed after {took:.2f}s (bound {bound:g}s)"


def test_an_idle_agent_sends_no_heartbeats_and_a_hung_one_goes_offline(tmp_path: Path) -> None:
    admin = f"127.0.0.1:{free_port()}"
    interval = 1.0
    hub, agents = start_hub_and_agents(
        tmp_path, ("root", "idle"), hub_extra=["--heartbeat", f"{interval:g}", "--admin", admin]
    )
    root, idle = agents["root"], agents["idle"]
    root.join(MESH, "root", hub.permit)
    idle.join(MESH, "idle", invite(root, idle, "idle", tmp_path / "idle.json"))
    wait_until(lambda: endpoint(root, "idle")["online"], 10, "idle online")
    since = endpoint(root, "idle")["online_since"]
    holds_for(lambda: endpoint(root, "idle")["online_since"] == since, 6 * interval, "idle's session")
    assert hub_counter(admin, "ztm_hub_heartbeats_total") == 0, "agents still POST heartbeats"

    os.kill(idle.proc.pid, signal.SIGSTOP)  # hung: its kernel answers, the process says nothing
    try:
        hung = time.monotonic()
        wait_until(lambda: not endpoint(root, "idle")["online"], 20, "the hung agent offline", interval=0.1)
        took = time.monotonic() - hung
    finally:
        os.kill(idle.proc.pid, signal.SIGCONT)
    bound = 3 * interval + interval / 2 + 0.2  # 3 silent intervals, then the sweep (every half interval)
    print(f"\nhung agent (SIGSTOP) -> offline at its hub: {took:.2f} s (bound {bound:g} s)")
    assert took <= bound + 1.5, f"a hung agent stayed online {took:.2f}s (bound {bound:g}s)"
