"""A tunnel across the seed's picture: a client at home reaches a service at the workplace, both behind NAT, through
the hub in the data center. Neither side can reach the other directly (see test_netlab.py); the bytes go home ->
datacenter hub -> workplace and back, byte-exact, with half-close in both directions.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import threading
from pathlib import Path

import pytest

from lab.netlab import Lab
from support import base_env, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MESH = "my-mesh"
SERVICE_PORT = 9000
ENTRANCE_PORT = 19000

# Inside the workplace namespace: reads the upload until EOF, answers sha256(upload) and the upload reversed, ends.
# It listens on every address, so that the check that home cannot reach it directly could fail.
SERVER = """
import hashlib, socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
def serve(c):
    data = bytearray()
    while chunk := c.recv(65536):
        data += chunk
    c.sendall(hashlib.sha256(data).digest() + bytes(reversed(data)))
    c.shutdown(socket.SHUT_WR)
    c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def transfer(lab: Lab, port: int, size: int) -> None:
    """Upload `size` random bytes through home's entrance `port`, half-close, check the service's answer."""
    data = os.urandom(size)
    with lab.connect("home", "127.0.0.1", port, timeout=20) as sock:
        sender = threading.Thread(target=lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
        sender.start()
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
        sender.join(20)
    got = b"".join(chunks)
    assert got[:32] == hashlib.sha256(data).digest(), "the service did not get the upload byte-exact"
    assert got[32:] == data[::-1], "home did not get the answer byte-exact"


def test_tcp_tunnel_from_home_to_the_workplace_through_the_hub(lab: Lab, tmp_path: Path) -> None:
    _hub, agents = lab.start_mesh(tmp_path, MESH, {"home": "home", "workplace": "workplace"})
    home, work = agents["home"], agents["workplace"]

    server = lab.popen("workplace", [sys.executable, "-c", SERVER, str(SERVICE_PORT)], env=base_env(), name="service")

    def listening() -> bool:
        server.assert_alive()
        return lab.can_connect("workplace", "127.0.0.1", SERVICE_PORT)

    wait_until(listening, 10, "the service to listen at the workplace")
    lab.assert_unreachable("home", "workplace", SERVICE_PORT)

    work.cli("tunnel", "open", "outbound", "tcp/office-app", "--targets", f"127.0.0.1:{SERVICE_PORT}",
             "--entrances", "home")  # fmt: skip
    home.cli("tunnel", "open", "inbound", "tcp/office-app", "--listen", str(ENTRANCE_PORT))

    size = 2 << 20
    transfer(lab, ENTRANCE_PORT, size)

    outbound = work.cli_json("tunnel", "describe", "outbound", "tcp/office-app")
    assert outbound["streams"] == 1 and outbound["bytes_received"] == size
    tunnels = {t["tunnel"]: t for t in home.cli_json("tunnel", "get", "tunnel")}
    assert [p["name"] for p in tunnels["tcp/office-app"]["outbound"]] == ["workplace"]
