"""Cross-hub relay (issue 14 item 7): three hubs on one PostgreSQL, agents on different hubs, everything relayed
entrance -> hub A -> hub B -> exit over the hub-to-hub link. Real hub and agent processes on 127.0.0.1, a real
PostgreSQL (tests/pgserver.py), real TCP and UDP servers.

Covered: endpoints on other hubs listed online; `ztm ping` and relayed calls (the log of an endpoint on another
hub, remote app configuration); TCP tunnels byte-exact with half-close both ways, resets both ways, UDP datagrams;
the proxy; terminal exec; a file published at one hub's endpoint downloaded at another's; end-to-end back-pressure
(a target that reads nothing holds the sender back at a bounded amount in flight, then everything arrives
byte-exact); the far hub's refusals reach the entrance unchanged; the hubs' counters; a lost hub-to-hub link dialled
again. Every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import pgserver
import support
from integration.test_proxy import socks_open
from integration.test_tunnel import (
    Servers,
    check_roundtrip,
    echo_roundtrip,
    open_inbound,
    open_outbound,
    recv_all,
    reply,
    rst,
    upload_after_eof,
)
from reliability.hubclient import HubClient
from support import Agent, Hub, Proc, free_port, holds_for, invite, start_agent, start_cluster, wait_until

MESH = "m"
TIMEOUT = 15.0


@dataclass
class Cluster:
    hubs: list[Hub]
    admins: list[str]
    home: Agent
    """root's endpoint on hub 0: the entrance."""
    office: Agent
    """root's endpoint on hub 1: the exit."""
    lab: Agent
    """root's endpoint on hub 2."""
    servers: Servers
    tmp: Path

    def metrics(self, i: int) -> dict[str, float]:
        """Hub `i`'s counters (its admin port)."""
        return hub_metrics(self.admins[i])


def hub_metrics(admin: str) -> dict[str, float]:
    """A hub's counters and gauges, from its admin port's `/metrics`."""
    host, port = admin.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        text = recv_all(sock).decode()
    found: dict[str, float] = {}
    for line in text.split("\r\n\r\n", 1)[1].splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def _hub_of(agent: Agent, name: str) -> str | None:
    for ep in agent.endpoints():
        if ep["name"] == name and ep.get("online"):
            return str(ep.get("hub") or "")
    return None


@pytest.fixture(scope="module")
def cluster(pg_server: pgserver.PgServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("cluster")
    if not pg_server.running:
        pg_server.start()
    db = pg_server.create_db()
    procs: list[Proc] = []
    servers = Servers()
    try:
        admins = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        env = {"PGPASSWORD": pg_server.password}
        names = (("hub-a", "za"), ("hub-b", "zb"), ("hub-c", "zc"))  # each agent stays on its zone's hub
        hubs = start_cluster(tmp, pg_server.url(db), env, names, admin=admins).hubs
        procs += [hub.proc for hub in hubs]
        agents = []
        for i, name in enumerate(("home", "office", "lab")):
            agent = start_agent(tmp, name, extra=["--zone", names[i][1]])
            procs.append(agent.proc)
            agent.join(MESH, name, hubs[i].permit)  # each hub's root permit names that hub first
            agents.append(agent)
        home, office, lab = agents
        for agent in agents:
            wait_until(lambda a=agent: {"home", "office", "lab"} <= a.online_names(), TIMEOUT, f"{agent.name} sees all")
        ids = [(hub.data / "hub-id").read_text().strip() for hub in hubs]

        def placed() -> bool:  # an agent may land elsewhere first, then moves to its zone's hub
            return [_hub_of(home, n) for n in ("home", "office", "lab")] == ids

        wait_until(placed, 30, "each agent on its zone's hub")
        yield Cluster(hubs, admins, home, office, lab, servers, tmp)
    finally:
        servers.close()
        for proc in reversed(procs):
            proc.stop()


def tunnel(entrance: Agent, exit_agent: Agent, name: str, target: int | str) -> int:
    """`tunnel open outbound NAME` on `exit_agent` and `inbound NAME` on `entrance`; returns the entrance's port once
    the entrance lists the exit (its service announcement reached the entrance's hub through the store)."""
    open_outbound(exit_agent, name, target)
    port = open_inbound(entrance, name)

    def known() -> bool:
        tunnels = {t["tunnel"]: t for t in entrance.cli_json("tunnel", "get", "tunnel")}
        return exit_agent.name in [peer["name"] for peer in tunnels.get(name, {}).get("outbound", [])]

    wait_until(known, TIMEOUT, f"{entrance.name} to know the exit of {name}")
    return port


def forwarded(cluster: Cluster, i: int, counter: str) -> float:
    return cluster.metrics(i).get(f"ztm_hub_{counter}_total", 0.0)


# -------------------------------------------------------------------------------------------------------- tests


def test_ping_and_calls_across_hubs(cluster: Cluster) -> None:
    before = forwarded(cluster, 0, "calls_forwarded")
    view = cluster.home.cli_json("ping", "ep", "office", "--count", "3")
    assert len(view["rtt_ms"]) == 3, view
    assert forwarded(cluster, 0, "calls_forwarded") >= before + 3
    # A call that rides an end-to-end stream: the log of an endpoint on another hub.
    lines = cluster.lab.cli_json("log", "ep", "home", "-n", "5")
    assert isinstance(lines, dict) and lines["lines"], lines
    assert forwarded(cluster, 2, "streams_forwarded") >= 1 and forwarded(cluster, 2, "hub_links") >= 1
    # Remote app configuration (an end-to-end call too): root's lab configures root's office on another hub.
    out = cluster.lab.cli("ep", "office", "tunnel", "open", "outbound", "tcp/remote", "--targets", "127.0.0.1:9")
    assert "outbound tcp/remote on office" in out.stdout, out.stdout
    assert "tcp/remote" in cluster.lab.cli("ep", "office", "tunnel", "get", "outbound").stdout
    assert "tcp/remote" in cluster.office.cli("tunnel", "get", "outbound").stdout


def test_tcp_across_hubs_is_byte_exact_with_half_close(cluster: Cluster) -> None:
    office, home = cluster.office, cluster.home
    echo_port = tunnel(home, office, "tcp/echo", cluster.servers.echo())
    check_port = tunnel(home, office, "tcp/check", cluster.servers.check())
    before = forwarded(cluster, 0, "streams_forwarded")
    data = os.urandom(4 << 20)
    assert echo_roundtrip(echo_port, data) == data
    data = os.urandom(3 << 20)
    got = check_roundtrip(check_port, data)
    digest = hashlib.sha256(data).digest()
    assert got[:32] == digest and got[32:] == reply(digest)
    greeter, uploads = cluster.servers.greeter()  # the server ends first; the client's upload still arrives
    upload_after_eof(tunnel(home, office, "tcp/greet", greeter), uploads)
    assert echo_roundtrip(echo_port, b"") == b"" and echo_roundtrip(echo_port, b"x") == b"x"
    assert forwarded(cluster, 0, "streams_forwarded") >= before + 5
    status, metrics = office.api("GET", "/api/metrics")
    assert status == 200 and f'ztm_agent_e2e_first_in_event_total{{mesh="{MESH}"}}' in metrics


def test_resets_travel_both_ways_across_hubs(cluster: Cluster) -> None:
    recorder, ends = cluster.servers.recorder()
    client_port = tunnel(cluster.home, cluster.office, "tcp/rst-client", recorder)
    target_port = tunnel(cluster.home, cluster.office, "tcp/rst-target", cluster.servers.resetter())
    with socket.create_connection(("127.0.0.1", client_port), timeout=10) as sock:
        assert sock.recv(5) == b"ready"
        rst(sock)
    wait_until(lambda: ends, 5, "the target to see the client's reset")
    assert ends == ["reset"]
    with socket.create_connection(("127.0.0.1", target_port), timeout=10) as sock:
        sock.sendall(b"anything")
        with pytest.raises(ConnectionResetError):
            recv_all(sock)


def test_udp_across_hubs(cluster: Cluster) -> None:
    port = tunnel(cluster.home, cluster.office, "udp/echo", cluster.servers.udp_echo())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5.0)
        for size in (1, 1400, 65000):
            datagram = os.urandom(size)
            sock.sendto(datagram, ("127.0.0.1", port))
            assert sock.recvfrom(1 << 17)[0] == datagram


def test_proxy_across_hubs(cluster: Cluster) -> None:
    cluster.office.cli("proxy", "config", "--add-target", "127.0.0.0/8")
    proxy = free_port()
    cluster.home.cli("proxy", "config", "--set-listen", str(proxy))
    echo = cluster.servers.echo()
    exits = lambda: [e["name"] for e in cluster.home.cli_json("proxy", "get", "exits")]  # noqa: E731
    wait_until(lambda: "office" in exits(), TIMEOUT, "home to know the proxy exit on another hub")
    sock, code, _, _ = socks_open(proxy, 1, "127.0.0.1", echo)
    with sock:
        assert code == 0
        data = os.urandom(1 << 20)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == data


def test_terminal_exec_across_hubs(cluster: Cluster) -> None:
    cluster.office.cli("terminal", "config", "--set-shell", "/bin/sh")
    cluster.office.cli("terminal", "enable")
    cp = cluster.lab.cli("terminal", "exec", "office", "--", "echo out; echo err >&2; exit 3", check=False)
    assert (cp.returncode, cp.stdout, cp.stderr) == (3, "out\n", "err\n")


def test_a_file_published_at_one_hub_is_downloaded_at_another(cluster: Cluster) -> None:
    data = os.urandom(2 * (1 << 20) + 777)
    local = cluster.tmp / "upload.bin"
    local.write_bytes(data)
    path = "/shared/root/cluster/report.bin"
    cluster.office.cli_json("publish", "file", path, "-i", local)
    wait_until(lambda: [f for f in cluster.lab.cli_json("get", "file") if f["path"] == path], TIMEOUT, "the entry")
    out = cluster.tmp / "download.bin"
    cluster.lab.cli("download", "file", path, "-o", out)
    assert out.read_bytes() == data


class _HeldServer:
    """Accepts one connection and reads nothing until `release()`; then reads to EOF and keeps the SHA-256."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.released = threading.Event()
        self.digest: bytes | None = None
        self.received = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with contextlib.suppress(OSError):  # closed by the test, or reset by a sender it never read from
            conn, _ = self.sock.accept()
            with conn:
                self.released.wait(120)
                h = hashlib.sha256()
                while data := conn.recv(1 << 20):
                    h.update(data)
                    self.received += len(data)
                self.digest = h.digest()

    def close(self) -> None:
        self.released.set()
        self.sock.close()


def test_back_pressure_holds_across_hubs(cluster: Cluster) -> None:
    """A target that reads nothing holds the sender back: the bytes in flight stay bounded (the windows of the
    path, not the whole transfer), then every byte arrives once it reads again."""
    total = 160 << 20
    held = _HeldServer()
    try:
        port = tunnel(cluster.home, cluster.office, "tcp/held", f"127.0.0.1:{held.port}")
        block = hashlib.sha256(b"held").digest() * 32768  # 1 MiB
        sent = [0]

        def send() -> None:
            with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
                while sent[0] < total:
                    sock.sendall(block)
                    sent[0] += len(block)
                sock.shutdown(socket.SHUT_WR)
                sock.recv(1)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        wait_until(lambda: sent[0] >= 8 << 20, TIMEOUT, "the first bytes to go out")
        mark = {"sent": -1, "since": time.monotonic()}

        def settled() -> bool:
            """True once the sender made no progress for a second (progress measured between polls)."""
            now = time.monotonic()
            if sent[0] != mark["sent"]:
                mark["sent"], mark["since"] = sent[0], now
                return False
            return now - mark["since"] >= 1.0

        wait_until(settled, 30, "the sender to be held back")
        holds_for(lambda: sent[0] < total, 1.0, "the sender held back below the whole transfer")
        in_flight = sent[0]
        assert in_flight < total, "nothing held the sender back"
        held.released.set()
        sender.join(120)
        wait_until(lambda: held.digest, 60, "the target to read everything")
        expected = hashlib.sha256(block * (total // len(block))).digest()
        assert held.received == total and held.digest == expected
        print(f"held back at {in_flight >> 20} MiB in flight of {total >> 20} MiB")
    finally:
        held.close()


def test_the_far_hubs_refusals_reach_the_entrance_unchanged(cluster: Cluster) -> None:
    office_id = next(e["id"] for e in cluster.home.endpoints() if e["name"] == "office")
    with HubClient(cluster.hubs[0].address, cluster.home.data / "meshes" / MESH) as client:

        async def connect(headers: list[tuple[str, str]]) -> tuple[int, bytes]:
            stream = await client.conn.open_stream("CONNECT", office_id, headers)
            try:
                status, _ = await stream.response()
                return status, await stream.read_all()
            finally:
                stream.reset()

        # An end-to-end layer the exit does not speak: hub B's 409 and its words, through hub A.
        status, raw = client.run(connect([("ztm-app", "tunnel"), ("ztm-service", "tcp/x"), ("ztm-e2e", "9")]))
        body = json.loads(raw)
        assert status == 409 and "speaks end-to-end layer version" in body["error"], (status, body)
        assert body["code"] == "conflict"


def test_a_lost_hub_link_is_dialled_again(make_cluster: Callable[..., support.Cluster], tmp_path: Path) -> None:
    """Hub B dies (kill -9) and comes back; its agent returns to it (its zone's hub); the next stream from hub A's
    entrance dials the hub-to-hub link again and goes through."""
    admins = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    cluster = make_cluster(hubs=[("hub-a", "za"), ("hub-b", "zb")], admin=admins)
    home = start_agent(tmp_path, "home", extra=["--zone", "za"])
    office = start_agent(tmp_path, "office", extra=["--zone", "zb"])
    servers = Servers()
    try:
        home.join(MESH, "home", cluster.hubs[0].permit)
        office.join(MESH, "office", cluster.hubs[1].permit)
        hub_b = (cluster.hubs[1].data / "hub-id").read_text().strip()
        wait_until(lambda: _hub_of(home, "office") == hub_b, TIMEOUT, "home to see office on hub B")
        port = tunnel(home, office, "tcp/echo", servers.echo())
        assert echo_roundtrip(port, b"before") == b"before"
        links = hub_metrics(admins[0])["ztm_hub_hub_links_total"]
        cluster.kill(1)
        cluster.restart(1)
        wait_until(lambda: _hub_of(home, "office") == hub_b, 30, "office back on hub B, as home sees it")
        wait_until(lambda: echo_roundtrip(port, b"after") == b"after", TIMEOUT, "a stream through the new link")
        assert hub_metrics(admins[0])["ztm_hub_hub_links_total"] >= links + 1
    finally:
        servers.close()
        office.proc.stop()
        home.proc.stop()


def test_streams_that_nobody_reads_do_not_hold_up_another_users(cluster: Cluster) -> None:
    """Five cross-hub streams of root's, from home (hub A) to office (hub B), whose target accepts and never reads fill
    what they may hold (their stream windows, 16 MiB each, at both hubs and at office, and their link's 64 MiB
    connection window); a stream of another user, guest, from hub A to another endpoint of hub B must still get
    through: hub links are per caller user (`ztm.hub.peers`), so a member cannot stall the others' cross-hub
    traffic. (Before the lanes, one A -> B link carried everyone's streams and the guest's stream timed out.)"""
    office2 = start_agent(cluster.tmp, "office2", extra=["--zone", "zb"])
    guest = start_agent(cluster.tmp, "guest", extra=["--zone", "za"])
    held = [_HeldServer() for _ in range(5)]
    sent = [0] * len(held)
    try:
        office2.join(MESH, "office2", cluster.hubs[1].permit)
        hub_b = (cluster.hubs[1].data / "hub-id").read_text().strip()
        wait_until(lambda: _hub_of(cluster.home, "office2") == hub_b, 30, "office2 on hub B")
        guest.join(MESH, "guest", invite(cluster.home, guest, "guest", cluster.tmp / "guest.json"))
        hub_a = (cluster.hubs[0].data / "hub-id").read_text().strip()
        wait_until(lambda: _hub_of(cluster.home, "guest") == hub_a, 30, "guest on hub A")
        echo_port = tunnel(guest, office2, "tcp/probe-echo", cluster.servers.echo())
        assert echo_roundtrip(echo_port, b"before") == b"before"
        ports = [
            tunnel(cluster.home, cluster.office, f"tcp/stall-{i}", f"127.0.0.1:{h.port}") for i, h in enumerate(held)
        ]
        block = b"z" * (1 << 20)

        def send(i: int) -> None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", ports[i]), timeout=60) as sock:
                while sent[i] < 64 << 20:
                    sock.sendall(block)
                    sent[i] += len(block)

        threads = [threading.Thread(target=send, args=(i,), daemon=True) for i in range(len(held))]
        for thread in threads:
            thread.start()
        mark = {"sent": -1, "since": time.monotonic()}

        def settled() -> bool:
            now = time.monotonic()
            if sum(sent) != mark["sent"]:
                mark["sent"], mark["since"] = sum(sent), now
                return False
            return now - mark["since"] >= 1.0

        wait_until(settled, 60, "the senders to be held back")
        print(f"held back at {sum(sent) >> 20} MiB sent on {len(held)} streams")
        assert echo_roundtrip(echo_port, b"still through", timeout=5.0) == b"still through"
    finally:
        for h in held:
            h.close()
        office2.proc.stop()
        guest.proc.stop()
