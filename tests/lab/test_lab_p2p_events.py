"""NAT traversal under change: a path switch under a running transfer, router reboots, an endpoint that moves.

Home and workplace sit behind their own eim NAT routers (the default lab); home's tunnel reaches the workplace's
echo service. The tests run in order on one mesh:
1. The first connection is a long transfer through the hub; the punch completes while it runs; new connections take
   the punched channel, and the long one finishes on the relay, not cut.
2. Both routers reboot (every NAT mapping lost) while a transfer runs on the punched channel: it finishes
   byte-exact, and new connections work right after.
3. Home gets a new address (DHCP, a move): its punched channels are bound to the old one; the agent reconnects to
   the hub, drops them, and new connections work at once (the relay), then a new channel is punched.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from integration.test_tunnel import recv_all
from lab.netlab import Lab
from support import Agent, base_env, wait_until

from .test_lab_p2p import counter, path
from .test_lab_tunnel import SERVER

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MESH = "my-mesh"
SERVICE_PORT = 9000
ENTRANCE = 19000


@dataclass
class Pair:
    lab: Lab
    home: Agent
    work: Agent

    def inbound(self) -> dict[str, int]:
        view = self.home.cli_json("tunnel", "describe", "inbound", "tcp/office")
        assert isinstance(view, dict)
        return view


class SlowUpload(threading.Thread):
    """Upload `size` bytes through home's entrance in `seconds`, then check the echo service's answer."""

    def __init__(self, lab: Lab, size: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.sock = lab.connect("home", "127.0.0.1", ENTRANCE, timeout=60)
        self.data = bytes(range(256)) * (size // 256)
        self.seconds = seconds
        self.error: str | None = None

    def run(self) -> None:
        try:
            chunk = 64 << 10
            pause = self.seconds / (len(self.data) / chunk)
            for i in range(0, len(self.data), chunk):
                self.sock.sendall(self.data[i : i + chunk])
                time.sleep(pause)  # pacing the upload, not waiting for state
            self.sock.shutdown(socket.SHUT_WR)
            got = recv_all(self.sock)
            if got[:32] != hashlib.sha256(self.data).digest() or got[32:] != self.data[::-1]:
                self.error = f"not byte-exact ({len(got)} bytes back)"
        except OSError as exc:
            self.error = f"cut: {exc}"
        finally:
            self.sock.close()

    def finish(self, timeout: float) -> None:
        self.join(timeout)
        assert not self.is_alive(), "the transfer did not finish"
        assert self.error is None, self.error


def quick(lab: Lab) -> None:
    data = b"quick" * 2000
    with lab.connect("home", "127.0.0.1", ENTRANCE, timeout=20) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        got = recv_all(sock)
    assert got[32:] == data[::-1] and got[:32] == hashlib.sha256(data).digest()


@pytest.fixture(scope="module")
def pair(module_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    lab = module_lab
    tmp = tmp_path_factory.mktemp("p2p-events")
    _hub, agents = lab.start_mesh(tmp, MESH, {"home": "home", "workplace": "workplace"})
    home, work = agents["home"], agents["workplace"]
    service = lab.popen("workplace", [sys.executable, "-c", SERVER, str(SERVICE_PORT)], env=base_env(), name="svc")
    wait_until(lambda: lab.can_connect("workplace", "127.0.0.1", SERVICE_PORT), 10, "the service")
    work.cli("tunnel", "open", "outbound", "tcp/office", "--targets", f"127.0.0.1:{SERVICE_PORT}")
    home.cli("tunnel", "open", "inbound", "tcp/office", "--listen", str(ENTRANCE))
    yield Pair(lab, home, work)
    with contextlib.suppress(Exception):
        service.stop()


def test_the_path_switches_under_a_relayed_transfer_without_cutting_it(pair: Pair) -> None:
    first = SlowUpload(pair.lab, 4 << 20, 3.0)  # the first connection: relayed, and it starts the punch
    first.start()
    wait_until(lambda: path(pair.home, "workplace") == "punched", 5, "the punched channel, while the transfer runs")
    assert first.is_alive(), "the transfer ended before the switch: make it longer"
    quick(pair.lab)  # a new connection: on the punched channel
    assert pair.inbound()["direct"] == 1
    first.finish(30)
    view = pair.inbound()
    assert view["streams"] == 2 and view["direct"] == 1, view


def test_router_reboots_during_a_direct_transfer(pair: Pair) -> None:
    wait_until(lambda: path(pair.home, "workplace") == "punched", 5, "the punched channel")
    direct = pair.inbound()["direct"]
    upload = SlowUpload(pair.lab, 4 << 20, 2.0)
    upload.start()
    wait_until(lambda: pair.inbound()["active"] >= 1, 5, "the transfer to start")
    for router in ("home-rtr", "work-rtr"):
        pair.lab.reboot_router(router)
    upload.finish(60)
    assert pair.inbound()["direct"] == direct + 1, "the transfer did not run on the punched channel"
    quick(pair.lab)  # and new connections work right after


def test_an_endpoint_that_moves_drops_its_punched_channels(pair: Pair) -> None:
    wait_until(lambda: path(pair.home, "workplace") == "punched", 5, "the punched channel")
    punched = counter(pair.home, "punch_successes")
    pair.lab.readdress("home", "10.77.1.20")
    wait_until(lambda: pair.home.cli_json("get", "ep", "home")["ip"] is not None
               and path(pair.home, "workplace") == "relay", 20,
               "home back at the hub from its new address, its old channels dropped")  # fmt: skip
    assert counter(pair.home, "moved") == 1  # it saw its new address at its new hub session
    quick(pair.lab)  # at once: through the hub
    wait_until(lambda: counter(pair.home, "punch_successes") > punched, 10, "a new punched channel")
    quick(pair.lab)
    assert path(pair.home, "workplace") == "punched"
