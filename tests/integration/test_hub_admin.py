"""The hub's admin port: Prometheus metrics that move with what happens on the mesh port."""

from __future__ import annotations

import contextlib
import socket
import ssl
import urllib.request
from collections.abc import Callable
from typing import Any

from support import Agent, Hub, free_port, split_hostport, wait_until

Make = Callable[..., Any]


def metrics(address: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as answer:
        assert answer.status == 200
        text = answer.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_admin_metrics_count_endpoints_handshake_failures_and_relayed_streams(make_hub: Make, make_agent: Make) -> None:
    admin = f"127.0.0.1:{free_port()}"
    hub: Hub = make_hub(extra=["--admin", admin])
    before = metrics(admin)
    assert before["ztm_hub_endpoints_online"] == 0
    assert before["ztm_hub_uptime_seconds"] >= 0

    a: Agent = make_agent("a")
    b: Agent = make_agent("b")
    a.join("m", "a", hub.permit)
    b.join("m", "b", hub.permit)
    wait_until(lambda: metrics(admin)["ztm_hub_endpoints_online"] == 2, 10, "two endpoints online in the metrics")

    # A client that speaks TLS without a certificate, and one that is not TLS at all: both counted, none admitted.
    host, port = split_hostport(hub.address)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        tls.settimeout(5)
        with contextlib.suppress(ssl.SSLError, OSError):
            assert tls.recv(1) == b""
    with socket.create_connection((host, port), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        raw.settimeout(5)
        with contextlib.suppress(OSError):
            raw.recv(100)
    wait_until(
        lambda: metrics(admin).get("ztm_hub_handshake_failures_total", 0) >= 2,
        10,
        "both bad handshakes counted",
    )
    assert metrics(admin)["ztm_hub_endpoints_online"] == 2

    health = urllib.request.urlopen(f"http://{admin}/healthz", timeout=5)
    assert health.read() == b"ok\n"
