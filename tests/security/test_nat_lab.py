"""A hole punched for one peer lets in that peer only: the lab's routers filter by address and port (the property NAT
traversal relies on for not exposing the punching endpoint to the whole Internet).

The victim starts a punch the way tests/lab/punch.py does: it binds port P (and listens on it, as the punch port's
listener will), and its SYN to the peer's candidate leaves through its router, where the peer's router drops it: the
victim's router now has a mapping for P towards that one address and port. Attackers then try to use the hole:
another Internet host, a public host, and the peer's own router address from another port. All are dropped before
the victim's listener (which would accept them). Finally the peer itself, from the candidate port, gets through: the
check could fail, and the hole is real.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

import pytest

import support
from lab.netlab import Lab

pytestmark = pytest.mark.lab

LAB_SITES = {"home": "eim", "workplace": "eim", "fw": "firewall", "pub": "public"}
P, Q = 41000, 42000
"""The victim's punch port, and the peer's."""


def bound(lab: Lab, host: str, port: int) -> socket.socket:
    sock = support.netns_socket(lab.ns(host))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", port))
    return sock


def reaches(lab: Lab, src: str, src_port: int, addr: str, port: int, timeout: float = 0.5) -> bool:
    """A TCP connection from `src`'s port `src_port` (0: any) to `addr:port` completes."""
    with bound(lab, src, src_port) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect((addr, port))
        except OSError:
            return False
        return True


@pytest.fixture
def punching(module_lab: Lab, request: pytest.FixtureRequest) -> Iterator[tuple[Lab, str, str]]:
    """The victim `request.param` mid-punch towards workplace's candidate (work-rtr:Q): (lab, victim, the address
    the victim is seen at: its router's WAN side or its own)."""
    lab, victim = module_lab, request.param
    router = lab.router(victim)
    seen = lab.addr(router) if lab.kind(victim) == "eim" and router else lab.addr(victim)
    with bound(lab, victim, P) as listener, bound(lab, victim, P) as syn:
        listener.listen(8)
        syn.setblocking(False)
        assert syn.connect_ex((lab.addr("work-rtr"), Q)) == errno.EINPROGRESS
        yield lab, victim, seen


@pytest.mark.parametrize("punching", ["home", "fw"], indirect=True)
def test_a_punched_hole_admits_only_the_peer(punching: tuple[Lab, str, str]) -> None:
    lab, victim, seen = punching
    # Another Internet host, a public host, the peer site's router address from other ports: all dropped.
    assert not reaches(lab, "datacenter", 0, seen, P), f"the data center got through {victim}'s hole"
    assert not reaches(lab, "datacenter", Q, seen, P), f"the data center (from port {Q}) got through"
    assert not reaches(lab, "pub", Q, seen, P), f"a public host got through {victim}'s hole"
    assert not reaches(lab, "workplace", Q + 1, seen, P), "the peer's site from another port got through"
    # The peer, from its candidate port (work-rtr keeps Q): the hole is there, and it is the peer's.
    assert reaches(lab, "workplace", Q, seen, P, timeout=3.0), f"the peer did not get through {victim}'s hole"
