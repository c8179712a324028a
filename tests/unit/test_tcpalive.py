"""`ztm.tcpalive`: the kernel's keepalive options as set on a real TCP socket."""

from __future__ import annotations

import socket

from ztm import tcpalive
from ztm.agent import link
from ztm.hub import routes


def test_watch_sets_probes_and_a_user_timeout_that_meet_at_the_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname()) as sock:
        assert tcpalive.watch(sock, idle=link.LINK_IDLE, interval=link.LINK_INTERVAL, timeout=link.LINK_TIMEOUT)
        got = tcpalive.settings(sock)
    assert got == {"keepalive": 1, "idle": 2, "interval": 1, "count": 3, "user_timeout_ms": 5000}
    # the last probe goes out when the timeout is reached: probes end the connection at the stated bound, not later
    assert got["idle"] + got["count"] * got["interval"] == link.LINK_TIMEOUT


def test_the_hubs_watch_gives_up_at_its_stated_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener, socket.create_connection(listener.getsockname()) as sock:
        assert tcpalive.watch(sock, idle=routes.LINK_IDLE, interval=routes.LINK_INTERVAL, timeout=routes.LINK_TIMEOUT)
        got = tcpalive.settings(sock)
    assert got is not None and got["user_timeout_ms"] == 10_000
    assert got["idle"] + got["count"] * got["interval"] == routes.LINK_TIMEOUT


def test_no_socket_is_no_watch() -> None:
    assert not tcpalive.watch(None, idle=2, interval=1, timeout=5)
    assert tcpalive.settings(None) is None
