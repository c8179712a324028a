"""Free TCP ports for the tests' servers, picked where nothing else takes them between the pick and the bind.

A port the kernel picks (`bind(("127.0.0.1", 0))`) comes from its ephemeral range, the same range every outgoing
connection on the machine takes its source port from: with two pytest workers starting hubs and agents, another
process's connection could take the port between our pick and the server's bind (it happened: a hub's `--admin` port
taken). So ports come from below the ephemeral range instead, a separate slice per pytest-xdist worker, each handed out
at most once per process (until the slice wraps), and checked free with a bind. Stdlib only: bench/ imports it too.
"""

from __future__ import annotations

import os
import random
import socket
from pathlib import Path

LOWEST = 10000
"""The first port of the tests' ports (well above the registered services the machine may run)."""

_given: set[int] = set()
_next: int | None = None


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def _slice() -> range:
    """This process's ports: its pytest-xdist worker's share of [LOWEST, start of the ephemeral range)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdecimal() else 0
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or "1"))
    width = (_ephemeral_low() - LOWEST) // count
    if width < 100:  # an odd ephemeral range: fall back to the kernel's pick
        return range(0)
    return range(LOWEST + index * width, LOWEST + (index + 1) * width)


def _bindable(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now, outside the ephemeral range, not handed out before by this process."""
    global _next
    ports = _slice()
    if not ports:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])
    if _next is None:
        _next = random.randrange(len(ports))  # a run after a crashed one does not meet its leftovers first
    for _ in range(len(ports)):
        port = ports[_next % len(ports)]
        _next += 1
        if len(_given) >= len(ports) // 2:
            _given.clear()  # wrapped: ports from long ago are free again
        if port not in _given and _bindable(host, port):
            _given.add(port)
            return port
    raise OSError(f"no free TCP port on {host} in {ports.start}-{ports.stop - 1}")
