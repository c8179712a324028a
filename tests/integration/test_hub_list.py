"""The agent's side of a mesh's hubs with one hub (today's default): the hub list it keeps (from `hello`, stored
across restarts), `ztm get hub` / `ztm describe hub`, the failover counter, the time to come back after a kill -9 of
the hub and its restart on the same address, and `--zone` kept across `ztm start agent` restarts."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from integration.test_mesh_lifecycle import mesh_status, table_rows
from integration.test_process_control import Background
from integration.test_tunnel import Servers, echo_roundtrip, open_inbound, open_outbound
from support import (
    Agent,
    Hub,
    LoopbackDrop,
    free_port,
    join_all,
    restart_agent,
    restart_hub,
    start_agent,
    start_hub,
    start_hub_and_agents,
    wait_until,
)
from ztm.agent import link

MESH = "m"


def hubs(agent: Agent) -> list[dict[str, Any]]:
    got = agent.cli_json("get", "hub")
    assert isinstance(got, list), got
    return got


def metric(agent: Agent, name: str) -> float:
    status, text = agent.api("GET", "/api/metrics")
    assert status == 200, text
    for line in str(text).splitlines():
        if line.startswith(f'{name}{{mesh="{MESH}"}} '):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for mesh {MESH} is not in the agent's metrics")


def online(agent: Agent) -> bool:
    status, meshes = agent.api("GET", "/api/meshes")
    return status == 200 and any(m.get("name") == MESH and m.get("status") == "online" for m in meshes)


def kill9_and_restart(hub: Hub) -> float:
    """kill -9 the hub, start it again on the same data and address; returns when it was ready (monotonic)."""
    hub.proc.kill9()
    restart_hub(hub)
    return time.monotonic()


def test_the_agent_keeps_the_hub_list_and_lists_it(make_mesh: Any) -> None:
    hub, agents = make_mesh(("a",))
    a = agents["a"]
    a.join(MESH, "alice", hub.permit)

    [h] = hubs(a)
    assert re.fullmatch(r"[0-9a-f]{16}", h["id"]) and h["hub_id"] == h["id"], h
    assert h["addresses"] == [hub.address] and h["online"] is True and h["zone"] == ""
    assert h["connected"] is True and h["status"] == "online" and h["address"] == hub.address
    assert isinstance(h["rtt_ms"], float) and isinstance(h["connect_ms"], float) and h["connect_ms"] > 0, h
    [row] = table_rows(a.cli("get", "hub").stdout)
    assert row[:6] == [h["id"], "-", hub.address, "yes", row[4], "*"], row
    assert row[6].endswith(" ms") and row[7] == "online", row
    header = a.cli("get", "hub").stdout.splitlines()[0].split()
    assert header == ["ID", "ZONE", "ADDRESSES", "ONLINE", "ENDPOINTS", "CONNECTED", "RTT", "STATUS", "SINCE"]
    for name in (h["id"], hub.address):
        assert a.cli_json("describe", "hub", name)["id"] == h["id"]
    missing = a.cli("describe", "hub", "nohub", check=False)
    assert missing.returncode == 1 and missing.stderr == f"ztm: no hub nohub in mesh {MESH}; see 'ztm get hub'\n"

    # The hub dies; the agent restarts while it is down: it still knows the hub (from its store), not connected.
    hub.proc.kill9()
    restart_agent(a)
    [kept] = hubs(a)
    assert kept["id"] == h["id"] and kept["addresses"] == [hub.address], kept
    assert kept["connected"] is False and kept["status"] == "standby", kept
    assert mesh_status(a)["status"] in ("connecting", "error")

    # The hub comes back on its address: the agent finds it by itself and marks it connected again.
    restart_hub(hub)
    wait_until(lambda: online(a), 15, "alice to be online again after the hub came back")
    [back] = hubs(a)
    assert back["id"] == h["id"] and back["connected"] is True, back


def test_back_online_after_a_kill9_and_restart_of_the_hub(tmp_path: Path) -> None:
    servers = Servers()
    try:
        echo = servers.echo()
        hub, agents = start_hub_and_agents(tmp_path, ["entrance", "exit"])
        entrance, exit_ = agents["entrance"], agents["exit"]
        join_all(MESH, [(entrance, "entrance"), (exit_, "exit")], hub.permit)
        open_outbound(exit_, "tcp/echo", echo)
        port = open_inbound(entrance, "tcp/echo", "--exits", "exit")
        assert echo_roundtrip(port, b"before") == b"before"
        assert metric(entrance, "ztm_agent_hub_failovers_total") == 0

        killed = time.monotonic()
        ready = kill9_and_restart(hub)
        wait_until(lambda: online(entrance) and online(exit_), 15, "both agents online again")
        back = time.monotonic()

        def works() -> bool:
            try:
                return echo_roundtrip(port, b"after", timeout=3) == b"after"
            except OSError:
                return False

        wait_until(works, 15, "a new tunnelled connection after the hub's restart")
        tunnel = time.monotonic()
        print(
            f"\nhub kill -9 -> restarted: {ready - killed:.2f} s; hub ready -> agents online: {back - ready:.2f} s; "
            f"-> tunnel works: {tunnel - ready:.2f} s"
        )
        # The link retries with a capped backoff (0.1 s doubling to 5 s, jittered) while the hub is down: it is
        # back within one backoff step of the hub's return.
        assert back - ready < 6.0, f"the agents took {back - ready:.2f}s to come back after the hub was ready"
        assert metric(entrance, "ztm_agent_hub_failovers_total") == 1
        assert metric(entrance, "ztm_agent_hub_moves_total") == 0
    finally:
        servers.close()


class SilentWire:
    """A TCP relay on 127.0.0.1 in front of the hub that can go silent: once `cut()`, every packet to or from its
    port is dropped by the kernel (`LoopbackDrop`) and the relay forwards nothing more, without closing anything (no
    FIN, no RST), as a link that loses every packet looks to both ends: keepalive probes go unanswered too. Needs root
    and nftables (the test is skipped without)."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        if (why := LoopbackDrop.missing()) is not None:
            pytest.skip(why)
        self.upstream = upstream
        self.silent = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.drop: LoopbackDrop | None = None
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        self.silent.set()
        self.drop = LoopbackDrop([self.port])

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                self.sockets.append(client)
                if self.silent.is_set():
                    continue  # accepted (the kernel did), never answered
                server = socket.create_connection(self.upstream)
                self.sockets.append(server)
                for a, b in ((client, server), (server, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(1 << 16):
                if not self.silent.is_set():
                    dst.sendall(data)

    def close(self) -> None:
        if self.drop is not None:
            self.drop.close()
        for sock in [self.listener, *self.sockets]:
            sock.close()


def test_a_silent_link_is_detected_within_the_keepalive_bound(tmp_path: Path) -> None:
    upstream = free_port()
    wire = SilentWire(("127.0.0.1", upstream))
    try:
        hub = start_hub(tmp_path, listen=f"127.0.0.1:{upstream}", names=[f"127.0.0.1:{wire.port}"])
        a = start_agent(tmp_path, "a")
        a.join(MESH, "alice", hub.permit)
        wait_until(lambda: online(a), 10, "alice online through the wire")
        cut = time.monotonic()
        wire.cut()
        wait_until(lambda: not online(a), 15, "the agent to notice the silent link", interval=0.05)
        took = time.monotonic() - cut
        bound = link.LINK_TIMEOUT  # the kernel's keepalive on the hub connection
        print(f"\nsilent link -> the agent knows its hub is gone: {took:.2f} s (bound {bound:g} s)")
        assert took <= bound + 1.0, f"a silent link took {took:.2f}s to detect (documented bound {bound:g}s)"
    finally:
        wire.close()


@pytest.fixture
def bg(tmp_path: Path) -> Iterator[Background]:
    with Background(tmp_path) as background:
        yield background


def test_zone_is_kept_across_start_agent_restarts(bg: Background, tmp_path: Path) -> None:
    hub = start_hub(tmp_path)
    address, data = f"127.0.0.1:{free_port()}", bg.tmp / "agent-data"
    bg.watch(data / "agent.pid")

    def zone() -> str:
        described = bg.ok("--agent", address, "describe", "mesh", MESH, "-o", "json")
        return str(json.loads(described)["zone"])

    bg.ok("start", "agent", "--listen", address, "--data", data, "--zone", "zone-b")
    bg.ok("--agent", address, "join", MESH, "--as", "alice", "--permit", hub.permit)
    assert zone() == "zone-b"
    bg.ok("stop", "agent", "--data", data)
    bg.ok("start", "agent", "--listen", address, "--data", data)
    assert zone() == "zone-b", "ztm start agent without --zone forgot the zone"
    bg.ok("stop", "agent", "--data", data)
    bg.ok("start", "agent", "--listen", address, "--data", data, "--zone", "")
    assert zone() == "", "--zone '' did not clear the zone"
    bg.ok("stop", "agent", "--data", data)

    bad = bg.ztm("start", "agent", "--listen", address, "--data", data, "--zone", "Zone_B")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad
    assert "'Zone_B' is not a zone name" in bad.stderr, bad.stderr
