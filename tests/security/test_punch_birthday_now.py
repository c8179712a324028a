"""The birthday attempt straight after an ordinary punch timed out (issue 15, time to direct for symmetric pairs),
and the limits it keeps, with real hub and agent processes in the NAT lab.

An entrance behind an eim router (`home`) and exits behind symmetric NATs (`sym1`, `sym2`): the ordinary punch
cannot meet a symmetric NAT's next mapping and times out after its 3 s window. The next punch to that peer is a
birthday attempt; it starts at once, without the 2 s backoff and without waiting for another connection to start it,
so the pair is direct about 3.3 s after its first connection instead of 5.5 s (bench/p2p_birthday.py).

What a member cannot make an agent do with it (the limits of docs/nat-traversal.md still hold): a loop of
connections to a peer whose birthday attempt fails (symmetric <-> symmetric) gets one burst from each side per
`--p2p-birthday-every`, and no loop of immediate retries: after the one birthday attempt, failures back off as before.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lab.netlab import Lab
from lab.test_lab_p2p import counter, echo, path
from lab.test_lab_tunnel import SERVER
from support import Agent, Proc, base_env, wait_until

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB_SITES = {"home": "eim", "sym1": "symmetric", "sym2": "symmetric"}
MESH = "my-mesh"
SERVICE_PORT = 9000
ADMIN_PORT = 9999
PUNCH_BOUND = 6.0
"""Seconds from the first connection until the ordinary punch timed out: its 3 s window plus the candidate
exchange, with room for a loaded machine."""
AT_ONCE = 1.5
"""Seconds from the ordinary punch's timeout to the birthday attempt's start when nothing else happens (no new
connection): it starts at once (the candidate exchange, well under a second); before, it waited for the 2 s backoff
and then for a new connection."""
FAILURES = ("timeout", "no_candidates", "refused", "tls", "identity")


@dataclass
class World:
    lab: Lab
    agents: dict[str, Agent]
    ports: Iterator[int]


@pytest.fixture(scope="module")
def world(module_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    lab = module_lab
    tmp = tmp_path_factory.mktemp("birthday-now")
    _hub, agents = lab.start_mesh(
        tmp, MESH, {h: h for h in LAB_SITES}, hub_extra=["--admin", f"127.0.0.1:{ADMIN_PORT}"]
    )
    services: list[Proc] = []
    for host in ("sym1", "sym2"):
        services.append(lab.popen(host, [sys.executable, "-c", SERVER, str(SERVICE_PORT)], env=base_env()))
        agents[host].cli("tunnel", "open", "outbound", f"tcp/svc-{host}", "--targets", f"127.0.0.1:{SERVICE_PORT}")
    wait_until(lambda: all(lab.can_connect(h, "127.0.0.1", SERVICE_PORT) for h in ("sym1", "sym2")), 10, "services")
    yield World(lab, agents, itertools.count(19000))
    for proc in services:
        proc.stop()


def decided(agent: Agent) -> float:
    return counter(agent, "punch_successes") + sum(counter(agent, f"punch_failures_{r}") for r in FAILURES)


def test_the_birthday_attempt_starts_at_once_after_an_ordinary_timeout(world: World) -> None:
    lab, home = world.lab, world.agents["home"]
    port = next(world.ports)
    home.cli("tunnel", "open", "inbound", "tcp/svc-sym1", "--listen", str(port))
    echo(lab, "home", port, b"first" * 1000)  # through the hub at once; it starts the ordinary punch
    wait_until(lambda: counter(home, "punch_failures_timeout") >= 1, PUNCH_BOUND, "the ordinary punch to time out")
    timed_out = time.monotonic()
    # no further connection: nothing but the timeout itself may start the birthday attempt
    wait_until(lambda: counter(home, "punch_birthday_attempts") >= 1, AT_ONCE, "the birthday attempt to start")
    print(f"the birthday attempt started {time.monotonic() - timed_out:.2f} s after the ordinary punch timed out")
    wait_until(lambda: decided(home) >= 2, PUNCH_BOUND, "the birthday attempt to succeed or fail")
    if counter(home, "punch_birthday_successes") == 1:  # 98 % of attempts at K = 512 (bench/p2p_birthday.py)
        assert path(home, "sym1") == "punched"
        echo(lab, "home", port, bytes(range(256)) * 1024)
        view = home.cli_json("tunnel", "describe", "inbound", "tcp/svc-sym1")
        assert view["paths"]["punched"] >= 1, view


def test_a_loop_of_connections_gets_one_burst_and_no_loop_of_retries(world: World) -> None:
    lab, entrance, exit_agent = world.lab, world.agents["sym1"], world.agents["sym2"]
    port = next(world.ports)
    entrance.cli("tunnel", "open", "inbound", "tcp/svc-sym2", "--listen", str(port))
    tried = counter(entrance, "punch_attempts")
    bursts = (counter(entrance, "punch_birthday_attempts"), counter(exit_agent, "punch_birthday_attempts"))
    started = time.monotonic()
    while time.monotonic() - started < 14.0:  # ordinary (3 s), birthday (3 s), backoffs of 2 and 4 s, ...
        echo(lab, "sym1", port, b"again")
        time.sleep(0.1)  # pacing the attacker's loop, not waiting for a state
    assert path(entrance, "sym2") == "relay"  # symmetric <-> symmetric: no birthday guess can meet
    assert counter(entrance, "punch_birthday_attempts") - bursts[0] == 1, "more than one burst from the entrance"
    assert counter(exit_agent, "punch_birthday_attempts") - bursts[1] == 1, "more than one burst from the exit"
    assert counter(entrance, "punch_birthday_refused_rate") >= 1  # the next punch asked, the budget said no
    # 14 s hold: the ordinary punch, the birthday one at once, then one each after the 2 s and 4 s backoffs at most
    assert counter(entrance, "punch_attempts") - tried <= 4
