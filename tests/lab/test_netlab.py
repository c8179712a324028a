"""The lab itself: NAT works, the LANs are unreachable from outside and from each other, faults, teardown, sweep."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
