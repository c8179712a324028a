"""Held answers on a relayed connection's path (issue 13), against real hub and agent processes.

To save writes, the exit holds its accept's HEADERS for its first answer on the stream, and the hub holds its 200s
to both ends for the first bytes it relays to them (at most `ztm.h2.connection.HOLD_MAX`, 50 ms). A held answer must
never hold back a refusal: a caller the exit refuses hears so at once (its client's connection is closed without a
byte), not after the hold's bound, and its first bytes never reach the target, which does not even see a connection.
"""

from __future__ import annotations

import statistics
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from integration.test_tunnel import MESH, Servers, closed_without_answer, described, open_inbound, open_outbound
from integration.test_tunnel_early import Asked
from support import Agent, Hub, start_hub_and_agents
from ztm.h2.connection import HOLD_MAX

ATTEMPTS = 15


@pytest.fixture
def relayed(tmp_path: Path) -> Iterator[tuple[Hub, Agent, Agent, Servers]]:
    servers = Servers()
    hub, agents = start_hub_and_agents(tmp_path, ("home", "plain"))  # no direct listener: every stream is relayed
    try:
        for name, agent in agents.items():
            agent.join(MESH, name, hub.permit)
        yield hub, agents["home"], agents["plain"], servers
    finally:
        servers.close()
        for proc in (*(a.proc for a in agents.values()), hub.proc):
            proc.stop()


def test_a_refused_caller_hears_it_at_once_through_the_held_answers(
    relayed: tuple[Hub, Agent, Agent, Servers],
) -> None:
    _hub, home, plain, servers = relayed
    asked = Asked(servers)
    open_outbound(plain, "tcp/held", asked.port, extra=("--users", "nobody-else"))
    port = open_inbound(home, "tcp/held", "--exits", "plain")
    took = []
    for _ in range(ATTEMPTS):
        start = time.monotonic()
        assert closed_without_answer(port, struct.pack("!I", 5) + b"hello")
        took.append(time.monotonic() - start)
    assert described(home, "inbound", "tcp/held")["refused"] == ATTEMPTS, "not refused by the exit: proves nothing"
    assert asked.accepted == 0, "the target saw a connection from a refused caller"
    # Each refusal is one relay trip there and back; one that waited for a hold's bound takes longer than HOLD_MAX.
    assert statistics.median(took) < HOLD_MAX, f"refusals waited for a held answer: {[round(t, 4) for t in took]}"
