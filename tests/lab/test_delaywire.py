"""The user-space wire (tests/lab/delaywire.py) spliced into home's cable by `Lab.delay_link`: frames cross with the
delay asked for, the loss fraction is honoured, and undoing it (or closing the lab) leaves the cable as it was."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import support
from lab.netlab import Lab

pytestmark = pytest.mark.lab

SO_RCVBUFFORCE = 33  # Linux (socket(7)); Python's socket module does not name it


def cable(lab: Lab) -> str:
    """Links (with details), addresses and routes on both ends of home's cable."""
    show = (["-o", "-d", "link"], ["-o", "addr"], ["route"])
    return "".join(lab.exec(host, [support.IP, *args]).stdout for host in ("home", "home-rtr") for args in show)


def test_frames_cross_with_the_delay_and_undo_restores_the_cable(lab: Lab) -> None:
    rtr, dc = lab.addr("home-rtr", "lan"), lab.addr("datacenter")
    before = cable(lab)
    clean = lab.rtt("home", rtr)
    assert clean < 0.05
    with lab.delay_link("home", 100) as wire:
        # 100 ms each way: a round trip takes 200 ms more (the wire never sends a frame early).
        delayed = lab.rtt("home", rtr)
        assert 0.2 <= delayed < 0.2 + 0.15, f"RTT {delayed:.3f} s through a 100 ms wire (clean: {clean:.6f} s)"
        # The taps took the cable's names and addresses: NAT to the data center still works, through the wire.
        assert 0.2 <= lab.rtt("home", dc) < 0.35
        spliced = cable(lab)
        assert "eth0-v@" in spliced and "lan0-v@" in spliced and spliced.count(" tun type tap ") == 2
    assert not wire.proc.alive and wire.proc.returncode == 0  # SIGTERM: a clean exit
    assert wire.stats["a_to_b"]["passed"] >= 10 and wire.stats["b_to_a"]["passed"] >= 10
    assert wire.stats["a_to_b"]["lost"] == wire.stats["b_to_a"]["lost"] == 0
    assert cable(lab) == before
    assert lab.rtt("home", rtr) < 0.05
    assert wire.undo() == wire.stats  # idempotent


def test_the_loss_fraction_is_honoured(lab: Lab) -> None:
    rtr, port, count = lab.addr("home-rtr", "lan"), 9100, 500
    with (
        support.netns_socket(lab.ns("home-rtr"), type=socket.SOCK_DGRAM) as rx,
        support.netns_socket(lab.ns("home"), type=socket.SOCK_DGRAM) as tx,
    ):
        rx.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)  # the burst arrives at once
        rx.bind((rtr, port))
        with lab.delay_link("home", 20, loss=0.2) as wire:
            assert lab.rtt("home", rtr, samples=3) >= 0.04  # also resolves the router's MAC address
            for i in range(count):
                tx.sendto(b"%d" % i, (rtr, port))
            got = set()
            rx.settimeout(2.0)  # the last datagram is due 20 ms after it was sent
            with pytest.raises(TimeoutError):
                while True:
                    got.add(int(rx.recv(100)))
        stats = wire.stats["a_to_b"]
    lost = 1 - len(got) / count
    assert 0.12 <= lost <= 0.28, f"{lost:.1%} of {count} datagrams lost through a 20% loss wire ({wire.stats})"
    assert stats["overflow"] == stats["failed"] == 0
    assert stats["lost"] > 0 and stats["passed"] >= len(got)


def test_close_stops_the_wire_and_leaves_nothing(_lab_host: None, tmp_path: Path) -> None:
    lab = Lab(log_dir=tmp_path)
    try:
        lab.start()
        wire = lab.delay_link("home", 10, loss=0.01)
        assert wire.proc.alive
        with pytest.raises(Exception, match="already runs through a wire"):
            lab.delay_link("home", 10)
    finally:
        lab.close()
    assert not wire.proc.alive
    assert lab.leftovers() == []
    assert wire.undo() == {}  # nothing left to undo
