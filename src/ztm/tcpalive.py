"""Kernel liveness for long-lived TCP connections: TCP keepalive probes plus `TCP_USER_TIMEOUT`.

The kernel sends and answers the probes without waking the process, so an idle connection costs no CPU in Python to
keep watched, and a path that silently lost every packet (cable cut, machine gone, NAT state dropped: no FIN, no RST)
is given up by the kernel `timeout` seconds after the peer was last heard from; the connection then fails with
`ETIMEDOUT` like any other. `TCP_USER_TIMEOUT` bounds unacknowledged data the same way (a peer that vanished while
this side was sending) and, with keepalives on, decides when unanswered probes end the connection.
"""

from __future__ import annotations

import contextlib
import math
import socket
from typing import Any


def watch(sock: Any, *, idle: float, interval: float, timeout: float) -> bool:
    """Probe `sock`'s peer after `idle` seconds of silence, then every `interval` seconds, and give the connection
    up once nothing was heard for `timeout` seconds (with probes out) or data stayed unacknowledged that long.
    `sock` is a socket or an asyncio transport's socket (`get_extra_info("socket")`); returns False when the
    platform lacks an option (then the application's own keepalive is the only watch)."""
    if sock is None:
        return False
    count = max(1, math.ceil((timeout - idle) / interval))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, round(idle)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, round(interval)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, count)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, round(timeout * 1000))
    except (OSError, AttributeError):
        return False
    return True


def settings(sock: Any) -> dict[str, int] | None:
    """The keepalive options in force on `sock` (for tests and diagnostics), or None if they cannot be read."""
    with contextlib.suppress(OSError, AttributeError):
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    return None
