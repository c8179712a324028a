"""The lab itself: NAT works, the LANs are unreachable from outside and from each other, faults, teardown, sweep."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from pathlib import Path

import pytest

import support
from lab import netlab
from lab.netlab import Lab
from support import wait_until

pytestmark = pytest.mark.lab

PY = sys.executable

# Connects, prints what the server said.
CLIENT = """
import socket, sys
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5) as s:
    data = b""
    while chunk := s.recv(100):
        data += chunk
print(data.decode())
"""


def serve(lab: Lab, host: str, port: int) -> support.Proc:
    return lab.serve(host, port)


def seen_as(lab: Lab, host: str, addr: str, port: int) -> str:
    """Connect from a process running in `host`; return the address the server saw."""
    return lab.exec(host, [PY, "-c", CLIENT, addr, str(port)], timeout=15).stdout.strip()


def test_home_and_workplace_reach_the_datacenter_through_nat(lab: Lab) -> None:
    serve(lab, "datacenter", 9000)
    dc = lab.addr("datacenter")
    assert dc == "198.18.0.10"
    assert seen_as(lab, "home", dc, 9000) == "198.18.0.21"
    assert seen_as(lab, "workplace", dc, 9000) == "198.18.0.22"
    # The same through a socket this test process makes inside the namespace.
    with lab.connect("home", dc, 9000) as s:
        assert s.recv(100) == b"198.18.0.21"
    # The "Internet" itself reaches the data center directly, without NAT.
    assert seen_as(lab, "inet", dc, 9000) == "198.18.0.1"


def test_the_datacenter_cannot_open_connections_to_home(lab: Lab) -> None:
    serve(lab, "home", 9001)
    home = lab.addr("home")
    # Controls: the listener is there, and reachable across home's own cable.
    assert lab.can_connect("home", home, 9001)
    assert lab.can_connect("home-rtr", home, 9001)
    # No route from the Internet to a private address...
    assert not lab.can_connect("datacenter", home, 9001, timeout=2)
    # ...and even with one (an attacker next to the router), the router's firewall drops new connections.
    lab.exec("datacenter", [support.IP, "route", "add", "10.77.1.0/24", "via", lab.addr("home-rtr")])
    assert not lab.can_connect("datacenter", home, 9001, timeout=1.5)
    assert not lab.can_connect("inet", home, 9001, timeout=1.5)


def test_home_cannot_reach_the_workplace(lab: Lab) -> None:
    serve(lab, "workplace", 9001)
    serve(lab, "home", 9001)
    work = lab.addr("workplace")
    assert lab.can_connect("workplace", work, 9001)
    assert lab.can_connect("work-rtr", work, 9001)
    assert not lab.can_connect("home", work, 9001, timeout=1.5)
    lab.assert_unreachable("home", "workplace", 9001)
    lab.assert_unreachable("workplace", "home", 9001)
    # Nor the other router's WAN side (no new connections to a router from the WAN).
    serve(lab, "work-rtr", 9002)
    assert lab.can_connect("work-rtr", lab.addr("work-rtr"), 9002)
    lab.assert_unreachable("home", "work-rtr", 9002)


def test_the_isolation_is_the_routers_doing_and_the_check_sees_it(lab: Lab) -> None:
    """`assert_unreachable` can fail: with a route to the workplace's LAN and without work-rtr's drop of new
    connections from the WAN, home reaches the workplace, and the check says so. And it refuses to vouch for a server
    that listens on loopback only."""
    serve(lab, "workplace", 9001)
    nft = netlab._nft()
    assert nft is not None
    # A route alone is not enough: work-rtr's firewall still drops the connection.
    lab.exec("home-rtr", [support.IP, "route", "add", "10.77.2.0/24", "via", lab.addr("work-rtr")])
    lab.assert_unreachable("home", "workplace", 9001)
    # Without the firewall rule, the same check fails.
    lab.exec("work-rtr", [nft, "insert", "rule", "inet", "ztmlab", "forward", "iifname", "wan0", "oifname", "lan0",
                          "accept"])  # fmt: skip
    assert seen_as(lab, "home", lab.addr("workplace"), 9001) == lab.addr("home-rtr")  # masqueraded by home-rtr
    with pytest.raises(AssertionError, match="home reaches workplace"):
        lab.assert_unreachable("home", "workplace", 9001)
    # A server on the workplace's loopback only: the check cannot fail, so it raises instead of passing.
    loopback = lab.popen("workplace", [PY, "-c", LOOPBACK_SERVER, "9003"], name="loopback-only")
    loopback.wait_for_output("ready", timeout=10)
    assert lab.can_connect("workplace", "127.0.0.1", 9003)
    with pytest.raises(netlab.LabError, match="could not fail"):
        lab.assert_unreachable("home", "workplace", 9003)


# Listens on 127.0.0.1 only.
LOOPBACK_SERVER = """
import socket, sys
s = socket.socket()
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
print("ready", flush=True)
while True:
    s.accept()[0].close()
"""


def test_link_down_and_up(lab: Lab) -> None:
    serve(lab, "datacenter", 9000)
    dc = lab.addr("datacenter")
    assert lab.can_connect("home", dc, 9000)
    lab.link_down("home")
    assert not lab.can_connect("home", dc, 9000, timeout=1)
    assert lab.can_connect("workplace", dc, 9000)
    lab.link_up("home")
    wait_until(lambda: lab.can_connect("home", dc, 9000, timeout=1), 10, "home to reach the data center again")
    lab.link_down("datacenter")
    assert not lab.can_connect("workplace", dc, 9000, timeout=1)
    lab.link_up("datacenter")
    wait_until(lambda: lab.can_connect("workplace", dc, 9000, timeout=1), 10, "the data center to come back")
    assert seen_as(lab, "home", dc, 9000) == "198.18.0.21"
    with pytest.raises(KeyError):
        lab.link_down("inet")


def _pid_gone(pid: int) -> bool:
    """True when `pid` no longer runs (gone, or a zombie waiting for its new parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


def test_teardown_removes_namespaces_processes_and_nothing_else(_lab_host: None, tmp_path: Path) -> None:
    root_links = support.run([support.IP, "-o", "link", "show"]).stdout.count("\n")
    lab = Lab(log_dir=tmp_path)
    try:
        lab.start()
        assert sorted(ns for ns in netlab.list_namespaces() if ns.startswith(lab.prefix)) == sorted(lab.namespaces)
        # The host's own namespace gets no interface: every veth is created inside the lab.
        assert support.run([support.IP, "-o", "link", "show"]).stdout.count("\n") == root_links
        # A process that left its process group (as a daemon would) is still found and killed by close().
        spawner = lab.popen("home", [PY, "-c", (
            "import subprocess, sys; "
            "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
            "print('child', p.pid, flush=True); import time; time.sleep(600)"
        )])  # fmt: skip
        child = int(spawner.wait_for_output(r"child (\d+)").group(1))
        assert not _pid_gone(child)
    finally:
        lab.close()
    assert not [ns for ns in netlab.list_namespaces() if ns.startswith(lab.prefix)]
    assert lab.leftovers() == []
    assert not spawner.alive
    wait_until(lambda: _pid_gone(child), 10, "the escaped child to be killed")
    assert not (netlab.OWNER_DIR / f"{lab.id}.json").exists()
    lab.close()  # idempotent


def test_sweep_removes_labs_of_dead_runs_only(_lab_host: None, tmp_path: Path) -> None:
    crashed, live = Lab(log_dir=tmp_path), Lab(log_dir=tmp_path)
    try:
        crashed.start()
        live.start()
        stray = crashed.popen("datacenter", [PY, "-c", "import time; time.sleep(600)"])
        # Pretend the crashed lab's owner died: a start time that no live process has.
        owner = netlab.OWNER_DIR / f"{crashed.id}.json"
        owner.write_text(json.dumps({"pid": os.getpid(), "start": "0"}))
        removed = netlab.sweep_stale()
        assert set(crashed.namespaces) <= set(removed)
        assert not set(live.namespaces) & set(removed)
        assert crashed.leftovers() == []
        assert sorted(live.leftovers()) == sorted(live.namespaces)
        wait_until(lambda: not stray.alive, 10, "the stray process in the crashed lab to be killed")
        assert not owner.exists()
    finally:
        crashed.close()
        live.close()
    assert live.leftovers() == []


def test_cli_sweep(_lab_host: None) -> None:
    cp = subprocess.run([PY, str(Path(netlab.__file__)), "sweep"], capture_output=True, text=True, timeout=60,
                        check=True, env=support.base_env())  # fmt: skip
    assert cp.stdout.startswith("removed:")


# ------------------------------------------------------------------------------------ router kinds (one lab)

LAB_SITES = {"home": "eim", "sym": "symmetric", "fw": "firewall", "pub": "public"}
LAB_TWINS = ("home",)
"""`module_lab`'s sites: one of each kind, and a second host (`home2`) on home's LAN."""
REFLECT = 9100
SITE_HOSTS = ("home", "home2", "sym", "fw", "pub")


@pytest.fixture(scope="module")
def kinds_lab(module_lab: Lab) -> Iterator[Lab]:
    """`module_lab` with `IP:PORT` reflectors on ports 9100 and 9101 of both data centers, and a `serve` on port
    9200 of every site host."""
    procs = [module_lab.serve(dc, port, show_port=True) for dc in ("datacenter", "dc2") for port in (REFLECT, 9101)]
    procs += [module_lab.serve(host, 9200) for host in SITE_HOSTS]
    yield module_lab
    for proc in procs:
        proc.stop()


def servers(lab: Lab) -> list[tuple[str, int]]:
    return [(lab.addr(dc), port) for dc in ("datacenter", "dc2") for port in (REFLECT, 9101)]


def test_kinds_names_and_addresses(kinds_lab: Lab) -> None:
    lab = kinds_lab
    assert [lab.kind(s) for s in LAB_SITES] == ["eim", "symmetric", "firewall", "public"]
    assert lab.routers == ["home-rtr", "sym-rtr", "fw-rtr"]
    assert (lab.router("home"), lab.router("sym"), lab.router("fw"), lab.router("pub")) == (
        "home-rtr", "sym-rtr", "fw-rtr", None
    )  # fmt: skip
    # home is site 1, the others 3, 4, 5 in the order given (2 is the workplace's, absent here).
    assert (lab.addr("home-rtr"), lab.addr("home-rtr", side="lan")) == ("198.18.0.21", "10.77.1.1")
    assert (lab.addr("home"), lab.addr("home2")) == ("10.77.1.10", "10.77.1.11")
    assert (lab.addr("sym-rtr"), lab.addr("sym-rtr", side="lan"), lab.addr("sym")) == (
        "198.18.0.23", "10.77.3.1", "10.77.3.10"
    )  # fmt: skip
    assert (lab.addr("fw-rtr"), lab.addr("fw-rtr", side="lan"), lab.addr("fw")) == (
        "198.18.0.24", "198.19.4.1", "198.19.4.10"
    )  # fmt: skip
    assert lab.addr("pub") == "198.18.0.45"
    assert "workplace" not in lab.hosts and "work-rtr" not in lab.hosts
    with pytest.raises(KeyError, match="no site 'workplace'"):
        lab.kind("workplace")
    with pytest.raises(KeyError):
        lab.addr("pub", side="lan")


@pytest.mark.parametrize(
    ("sites", "twins", "error"),
    [
        ({"Home": "eim"}, (), "bad site name 'Home'"),
        ({"faraway1": "eim"}, (), "bad site name 'faraway1'"),
        ({"db": "eim"}, (), "site name 'db' is taken"),
        ({"home": "cgnat"}, (), "unknown kind 'cgnat'; kinds: eim, symmetric, firewall, public"),
        ({"home": "public"}, ("home",), "a public site has no LAN"),
        ({"home": "eim"}, ("away",), "twin of 'away': no such site"),
        ({"home": "eim", "home2": "eim"}, ("home",), "already a site"),
        ({}, (), "at least one site"),
        ({f"s{i}": "eim" for i in range(20)}, (), "at most 19"),
    ],
)
def test_a_lab_that_cannot_be_built_says_why_before_making_anything(
    _lab_host: None, sites: dict[str, str], twins: tuple[str, ...], error: str
) -> None:
    before = netlab.list_namespaces()
    with pytest.raises(netlab.LabError, match=re.escape(error)):
        Lab(sites=sites, twins=twins)
    assert netlab.list_namespaces() == before


def test_eim_keeps_the_port_for_every_destination(kinds_lab: Lab) -> None:
    lab = kinds_lab
    seen = {lab.mapped("home", 30000, addr, port) for addr, port in servers(lab)}  # both data centers, 2 ports
    assert seen == {(lab.addr("home-rtr"), 30000)}  # one mapping, the local port kept (it was free)
    # The twin behind the same router, from another port: its own port kept too.
    assert lab.mapped("home2", 30001, *servers(lab)[0]) == (lab.addr("home-rtr"), 30001)


def test_eim_picks_another_port_only_when_the_one_asked_for_is_taken(kinds_lab: Lab) -> None:
    """Two LAN hosts from the same local port to the same server: the second cannot have the same mapping."""
    lab = kinds_lab
    dc = servers(lab)[0]
    first = lab.mapped("home", 30002, *dc)
    second = lab.mapped("home2", 30002, *dc)
    assert first == (lab.addr("home-rtr"), 30002)
    assert second[0] == lab.addr("home-rtr") and second[1] != 30002


def test_symmetric_maps_every_destination_to_a_new_port(kinds_lab: Lab) -> None:
    lab = kinds_lab
    seen = [lab.mapped("sym", 30000, addr, port) for addr, port in servers(lab)]
    assert {ip for ip, _ in seen} == {lab.addr("sym-rtr")}
    ports = [port for _, port in seen]
    assert len(set(ports)) > 1, f"symmetric NAT kept one port for {len(ports)} destinations: {ports}"


@pytest.mark.parametrize("host", ["fw", "pub"])
def test_firewall_and_public_hosts_are_seen_as_themselves(kinds_lab: Lab, host: str) -> None:
    lab = kinds_lab
    assert {lab.mapped(host, 30000, addr, port) for addr, port in servers(lab)} == {(lab.addr(host), 30000)}


def _dropped(lab: Lab, src: str, addr: str, port: int) -> bool:
    """True when a connection attempt from `src` gets no answer at all (dropped), False when it is refused."""
    try:
        lab.connect(src, addr, port, timeout=0.5).close()
    except TimeoutError:
        return True
    except ConnectionRefusedError:
        return False
    raise AssertionError(f"{src} connected to {addr}:{port}")


def test_new_inbound_connections_are_dropped_except_to_public_hosts(kinds_lab: Lab) -> None:
    lab = kinds_lab
    for host in ("home", "home2", "sym", "fw"):
        lab.assert_unreachable("datacenter", host, 9200)
    # The firewall's LAN is routed: every host on the Internet has the route, the router drops the connection
    # silently (no reset), as the NAT routers drop connections to their own WAN side.
    assert _dropped(lab, "datacenter", lab.addr("fw"), 9200)
    assert _dropped(lab, "pub", lab.addr("fw"), 9200)
    for router in lab.routers:
        assert _dropped(lab, "datacenter", lab.addr(router), 9200)
    # The public host takes them, from anywhere.
    for src in ("datacenter", "home", "sym", "fw"):
        assert lab.can_connect(src, lab.addr("pub"), 9200), src


def test_twins_reach_each_other_on_their_lan(kinds_lab: Lab) -> None:
    lab = kinds_lab
    assert seen_as(lab, "home", lab.addr("home2"), 9200) == lab.addr("home")  # no NAT between them
    assert seen_as(lab, "home2", lab.addr("home"), 9200) == lab.addr("home2")
    # Nobody else reaches the twin: it is behind the router like home.
    lab.assert_unreachable("sym", "home2", 9200)


class _Held:
    """A TCP connection from a site host to a server socket in the data center, both ends held by this test."""

    def __init__(self, lab: Lab, host: str, listener: socket.socket) -> None:
        self.client = lab.connect(host, lab.addr("datacenter"), listener.getsockname()[1])
        self.server, self.seen = listener.accept()
        for sock in (self.client, self.server):
            sock.settimeout(1.5)

    def delivers(self, to_client: bool) -> bool:
        """Send a byte one way; True when it arrives within 1.5 s."""
        return bool(_deliveries([self], to_client))

    def close(self) -> None:
        self.client.close()
        self.server.close()


def _deliveries(conns: Sequence[_Held], to_client: bool, wait: float = 1.5) -> list[_Held]:
    """Send a byte one way on each of `conns` at once; those where it arrives within `wait` seconds."""
    for conn in conns:
        (conn.server if to_client else conn.client).sendall(b"x")
    deadline = time.monotonic() + wait
    arrived = []
    for conn in conns:
        dst = conn.client if to_client else conn.server
        dst.settimeout(max(0.001, deadline - time.monotonic()))
        try:
            if dst.recv(10) == b"x":
                arrived.append(conn)
        except TimeoutError:
            pass
    return arrived


@pytest.fixture
def dc_listener(kinds_lab: Lab) -> Iterator[socket.socket]:
    sock = support.netns_socket(kinds_lab.ns("datacenter"))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("0.0.0.0", 9300))
    sock.listen(8)
    with sock:
        yield sock


def test_reboot_router_loses_the_mappings(kinds_lab: Lab, dc_listener: socket.socket) -> None:
    """After `reboot_router`, what the data center sends on a connection made before no longer gets in: the router
    has no mapping (eim, symmetric) or no state (firewall) for it; new connections work at once."""
    lab = kinds_lab
    held = {router: _Held(lab, host, dc_listener) for router, host in (("home-rtr", "home"), ("sym-rtr", "sym"),
                                                                         ("fw-rtr", "fw"))}  # fmt: skip
    try:
        for router, conn in held.items():
            assert conn.delivers(to_client=True), f"{router}: no data before the reboot"
            assert lab.conntrack_count(router) > 0
        for router in held:
            lab.reboot_router(router)
            assert lab.conntrack_count(router) == 0
        still = _deliveries(list(held.values()), to_client=True)
        assert not still, f"routers still forward connections they had before: {[c.seen for c in still]}"
        # The routers themselves still work.
        for host in ("home", "sym", "fw"):
            with closing(_Held(lab, host, dc_listener)) as fresh:
                assert fresh.delivers(to_client=True)
    finally:
        for conn in held.values():
            conn.close()
    with pytest.raises(KeyError, match="not a router"):
        lab.reboot_router("pub")


def test_readdress_moves_a_host_and_breaks_its_connections(kinds_lab: Lab, dc_listener: socket.socket) -> None:
    lab = kinds_lab
    old = lab.addr("fw")
    held = _Held(lab, "fw", dc_listener)
    try:
        assert held.seen[0] == old
        assert held.delivers(to_client=True) and held.delivers(to_client=False)
        lab.readdress("fw", "198.19.4.20")
        try:
            assert lab.addr("fw") == "198.19.4.20"
            # The data center sees the new address, on a new connection and in the reflector's answer...
            with closing(_Held(lab, "fw", dc_listener)) as fresh:
                assert fresh.seen[0] == "198.19.4.20"
                assert fresh.delivers(to_client=True)
            assert lab.mapped("fw", 30003, *servers(lab)[0]) == ("198.19.4.20", 30003)
            # ...and the old connection, bound to the old address, carries nothing either way.
            assert not held.delivers(to_client=True)
            assert not held.delivers(to_client=False)
            # Twins behind a NAT too: home2's old address is gone from its LAN.
            lab.readdress("home2", "10.77.1.20")
            assert seen_as(lab, "home2", lab.addr("home"), 9200) == "10.77.1.20"
        finally:
            lab.readdress("fw", old)
            if lab.addr("home2") != "10.77.1.11":
                lab.readdress("home2", "10.77.1.11")
    finally:
        held.close()
    assert seen_as(lab, "fw", lab.addr("datacenter"), REFLECT).startswith(f"{old}:")


@pytest.mark.parametrize(
    ("host", "ip", "error"),
    [
        ("fw", "10.77.1.20", "not a host address of fw's network 198.19.4.0/24"),
        ("fw", "198.19.4.255", "not a host address"),
        ("fw", "198.19.4.1", "already fw-rtr's address"),
        ("home", "10.77.1.11", "already home2's address"),
        ("home", "10.77.1.x", "bad address '10.77.1.x'"),
    ],
)
def test_readdress_refuses_a_bad_address_and_changes_nothing(kinds_lab: Lab, host: str, ip: str, error: str) -> None:
    lab = kinds_lab
    before = lab.addr(host)
    with pytest.raises(netlab.LabError, match=re.escape(error)):
        lab.readdress(host, ip)
    assert lab.addr(host) == before
    assert seen_as(lab, host, lab.addr("pub"), 9200) in (before, lab.addr("home-rtr"))
    with pytest.raises(KeyError, match="not a site's host"):
        lab.readdress("datacenter", "198.18.0.99")


def test_home_and_workplace_of_other_kinds_with_twins(make_lab: Callable[..., Lab]) -> None:
    """`make_lab`: a lab of its own for one test. The default sites' names keep their routers and numbers whatever
    their kind; twins share the LAN of a symmetric NAT and of a firewall."""
    lab = make_lab(sites={"home": "symmetric", "workplace": "firewall"}, twins=("home", "workplace"))
    assert lab.routers == ["home-rtr", "work-rtr"]
    assert [lab.addr(h) for h in ("home", "home2", "workplace", "workplace2")] == [
        "10.77.1.10", "10.77.1.11", "198.19.2.10", "198.19.2.11"
    ]  # fmt: skip
    lab.serve("home", 9200)
    lab.serve("workplace", 9200)
    assert seen_as(lab, "home2", lab.addr("home"), 9200) == lab.addr("home2")
    assert seen_as(lab, "workplace2", lab.addr("workplace"), 9200) == lab.addr("workplace2")
    # Between the sites: the firewall drops what the symmetric NAT sends it, like anything new from outside.
    lab.assert_unreachable("home2", "workplace", 9200)
    lab.assert_unreachable("workplace2", "home", 9200)
