"""NAT traversal across every pair of router kinds (issue 15's matrix), with real hub and agent processes.

One lab (`module_lab`) with two sites of each kind (`eim`: a home router keeping ports; `symmetric`: a new random
port per destination; `firewall`: no translation, outbound only; `public`: no router) and a twin of home (two hosts
behind one router), a hub in the data center, an agent on every host, each offering its local echo service as a
tunnel. For each pair, the entrance's first tunnelled connection goes through the hub at once (no waiting for the
punch), the punch runs in the background, and the path the pair ends up on is asserted, with a byte-exact transfer
on it; on a direct path, the hub relays none of the transfer's bytes.

Expected (`PAIRS`, the table in docs/nat-traversal.md): direct (`punched`) for every pair where at least one side
maps endpoint-independently or does not translate; `lan` for the twins; the relay only between two symmetric NATs.
Between a symmetric NAT and an eim NAT or a firewall (both directions), the ordinary punch times out (no simultaneous
open can meet: tests/lab/test_lab_nat.py shows it with plain sockets), and the next punch, at once, is a birthday
attempt (K = 512 sockets a side, about 1 - exp(-K*K/64,512) = 98.3 % per attempt; bench/p2p_birthday.py
measured 40 of 41 attempts in the lab). The test keeps connecting for `BIRTHDAY_BOUND` seconds, which leaves room
for four birthday attempts (the first at once, the others after backoffs of 2, 4 and 8 s; the agents run with
`--p2p-birthday-every 5` so that the per-pair limit allows them), so a cell fails by bad luck with probability
0.017 ** 4 = 8e-8 by the model, or 0.05 ** 4 = 6e-6 even at a pessimistic 95 % per attempt, and the four cells
together below 2.5e-5 (< 1e-4). A lucky run takes about 3.5 s per cell (the ordinary punch's 3 s, then the
attempt's 0.3 s at once).
"""

from __future__ import annotations

import contextlib
import itertools
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from integration.test_tunnel import recv_all
from lab.netlab import Lab
from support import Agent, Hub, Proc, base_env, wait_until

from . import test_lab_nat
from .test_lab_tunnel import SERVER

pytestmark = [pytest.mark.lab, pytest.mark.slow]

LAB_SITES = test_lab_nat.LAB_SITES
"""Two sites of each router kind, as the plain-socket matrix (tests/lab/test_lab_nat.py)."""
LAB_TWINS = test_lab_nat.LAB_TWINS
HOSTS = (*LAB_SITES, "home2")
MESH = "my-mesh"
SERVICE_PORT = 9000
ADMIN_PORT = 9999
PAIRS = [
    ("home", "workplace", "punched"),
    ("home", "sym2", "punched"),
    ("sym2", "workplace", "punched"),
    ("home", "fw2", "punched"),
    ("home", "pub2", "punched"),
    ("sym1", "sym2", "relay"),
    ("sym1", "fw2", "punched"),
    ("fw1", "sym1", "punched"),
    ("sym1", "pub2", "punched"),
    ("fw1", "fw2", "punched"),
    ("fw1", "pub2", "punched"),
    ("pub1", "pub2", "punched"),
    ("home", "home2", "lan"),
]
"""(entrance, exit, the path their tunnel ends up on)."""
BIRTHDAY = {("home", "sym2"), ("sym2", "workplace"), ("sym1", "fw2"), ("fw1", "sym1")}
"""The pairs that go direct by the birthday method (after their ordinary punch timed out)."""
BIRTHDAY_EVERY = 5
"""`--p2p-birthday-every` of the lab's agents: one birthday attempt per pair per 5 s (300 s by default)."""
BIRTHDAY_BOUND = 50.0
"""Seconds from the ordinary punch's failure until the birthday channel must be up: four attempts fit (each 3 s at
most, the first at once, the others after backoffs of 2, 4 and 8 s: the fourth starts about 23 s in), with room
for a loaded machine."""
DIRECT_BOUND = 1.0
"""Seconds from the first connection of a punchable pair to its punched channel: issue 15's target (p50 <= 1 s),
held for every pair; bench/p2p.py measures the median (bench/RESULTS.md, "Issue 15")."""
PUNCH_BOUND = 5.0
"""Seconds from the first connection until the punch is decided: the 3 s attempt window (`punch.WINDOW`) plus
the candidate exchange and TLS, with room for a loaded machine. docs/nat-traversal.md reports the measured time."""


@dataclass
class Mesh:
    lab: Lab
    hub: Hub
    agents: dict[str, Agent]
    ports: Iterator[int]

    def hub_counter(self, name: str) -> float:
        return self.lab.hub_counter("datacenter", ADMIN_PORT, name)


def counter(agent: Agent, name: str) -> float:
    """The agent's `ztm_agent_direct_NAME_total` for the mesh (0 if it never counted one)."""
    status, text = agent.api("GET", "/api/metrics")
    assert status == 200, text
    for line in str(text).splitlines():
        if line.startswith(f'ztm_agent_direct_{name}_total{{mesh="{MESH}"}} '):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def path(agent: Agent, peer: str) -> str:
    ep = agent.cli_json("get", "ep", peer)
    assert isinstance(ep, dict), ep
    return str(ep["path"])


def echo(lab: Lab, host: str, port: int, data: bytes) -> None:
    """Send `data` through `host`'s entrance `port`, half-close, check the echo service's answer byte-exact."""
    import hashlib

    with lab.connect(host, "127.0.0.1", port, timeout=20) as sock:
        sock.sendall(data)
        sock.shutdown(2 - 1)  # SHUT_WR
        got = recv_all(sock)
    assert got[:32] == hashlib.sha256(data).digest(), "the service did not get the upload byte-exact"
    assert got[32:] == data[::-1], "the answer did not come back byte-exact"


@pytest.fixture(scope="module")
def mesh(module_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    lab = module_lab
    tmp = tmp_path_factory.mktemp("p2p")
    hub, agents = lab.start_mesh(
        tmp,
        MESH,
        {h: h for h in HOSTS},
        hub_extra=["--admin", f"127.0.0.1:{ADMIN_PORT}"],
        agent_extra=["--p2p-birthday-every", str(BIRTHDAY_EVERY)],
    )
    env = base_env()
    services: list[Proc] = [
        lab.popen(h, [sys.executable, "-c", SERVER, str(SERVICE_PORT)], env=env, name=f"svc-{h}") for h in HOSTS
    ]
    for host, agent in agents.items():
        agent.cli("tunnel", "open", "outbound", f"tcp/svc-{host}", "--targets", f"127.0.0.1:{SERVICE_PORT}")
    wait_until(lambda: all(lab.can_connect(h, "127.0.0.1", SERVICE_PORT) for h in HOSTS), 10, "the services")
    yield Mesh(lab, hub, agents, itertools.count(19000))
    for proc in services:
        with contextlib.suppress(Exception):
            proc.stop()


@pytest.mark.parametrize(("entrance", "exit_host", "expected"), PAIRS, ids=[f"{a}-{b}" for a, b, _ in PAIRS])
def test_pair_ends_up_on_the_expected_path(mesh: Mesh, entrance: str, exit_host: str, expected: str) -> None:
    lab, a = mesh.lab, mesh.agents[entrance]
    port = next(mesh.ports)
    a.cli("tunnel", "open", "inbound", f"tcp/svc-{exit_host}", "--listen", str(port))
    tried = counter(a, "punch_attempts")
    timeouts, born = counter(a, "punch_failures_timeout"), counter(a, "punch_birthday_successes")
    decided = counter(a, "punch_successes") + sum(
        counter(a, f"punch_failures_{r}") for r in ("timeout", "no_candidates", "refused", "tls", "identity")
    )
    started = time.monotonic()
    echo(lab, entrance, port, b"first" * 1000)  # at once, through the hub, and it starts the punch
    wait_until(lambda: counter(a, "punch_attempts") > tried, PUNCH_BOUND, f"{entrance} to punch to {exit_host}")

    def punch_decided() -> bool:
        done = counter(a, "punch_successes") + sum(
            counter(a, f"punch_failures_{r}") for r in ("timeout", "no_candidates", "refused", "tls", "identity")
        )
        return done > decided

    wait_until(punch_decided, PUNCH_BOUND, f"the punch from {entrance} to {exit_host} to succeed or fail")
    took = time.monotonic() - started
    if (entrance, exit_host) in BIRTHDAY:
        # the ordinary punch cannot meet a symmetric NAT's next mapping (the birthday attempt then starts at once)
        assert counter(a, "punch_failures_timeout") == timeouts + 1

        def birthday_channel() -> bool:  # ... later connections (a failed attempt's retry) until it is up
            echo(lab, entrance, port, b"again")
            return path(a, exit_host) == expected

        wait_until(birthday_channel, BIRTHDAY_BOUND, f"a birthday channel from {entrance} to {exit_host}", 0.2)
        assert counter(a, "punch_birthday_successes") == born + 1
        print(f"{entrance} -> {exit_host}: direct by the birthday method after {time.monotonic() - started:.1f} s")
    got = path(a, exit_host)
    if expected == "relay" and got == "punched" and counter(a, "punch_birthday_successes") > born:
        # two symmetric NATs: the birthday attempt (at once after the ordinary timeout) met by chance, which the
        # matrix does not promise but may happen; the pair is then held to the direct path's checks below
        print(f"{entrance} -> {exit_host}: direct by a lucky birthday attempt")
        expected = "punched"
    assert got == expected
    by_birthday = BIRTHDAY | {("sym1", "sym2"), ("sym2", "sym1")}
    if expected != "relay" and (entrance, exit_host) not in by_birthday:  # up well within 1 s (the target)
        assert took < DIRECT_BOUND, f"the direct path took {took:.2f} s (bound {DIRECT_BOUND:g} s)"
    relayed = mesh.hub_counter("relayed_bytes")
    data = bytes(range(256)) * 4096  # 1 MiB
    echo(lab, entrance, port, data)
    view = a.cli_json("tunnel", "describe", "inbound", f"tcp/svc-{exit_host}")
    if expected == "relay":
        assert view["direct"] == 0, view
        assert mesh.hub_counter("relayed_bytes") - relayed >= 2 * len(data)
    else:
        assert view["direct"] >= 1 and view["paths"][expected] >= 1, view
        assert mesh.hub_counter("relayed_bytes") - relayed < 4096, "the hub relayed bytes of a direct transfer"
