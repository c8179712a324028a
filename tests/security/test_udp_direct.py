"""UDP over direct channels (issue 15, item 5), against real hub and agent processes on 127.0.0.1 with real TLS.

The attacker here is whoever runs or watches the hub: before, every UDP tunnel flow and every SOCKS5 UDP ASSOCIATE
flow went through the hub even when the exit took direct channels, so the hub saw each datagram's size and timing
(sealed, but traffic analysis needs no plaintext) and carried its bandwidth. Now such a flow goes straight to an
exit that answers directly: the hub relays not one byte of it (its admin metric `ztm_hub_relayed_bytes_total`).

And nobody gets around an exit's rules on the direct path: bob, whom the exit's tunnel does not admit, is refused
over the direct channel itself (the caller from his verified certificate), and a proxy deny rule refuses a SOCKS UDP
destination there too, with the hub relaying nothing of either.
"""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from integration.test_proxy import socks_address, socks_open
from integration.test_tunnel import Servers, agent_log, described, echo_roundtrip, open_inbound, open_outbound
from reliability.traffic import EchoServer
from support import Agent, Hub, Proc, free_port, invite, join_all, start_agent, start_hub, wait_until

MESH = "m"
RELAYED = "ztm_hub_relayed_bytes_total"


@dataclass
class World:
    hub: Hub
    admin: str
    """the hub's admin (metrics) address."""
    alice: Agent
    """root's exit, taking direct channels (`--direct`): a tunnel and a proxy exit."""
    home: Agent
    """root's entrance: tunnels and a proxy on `proxy`."""
    bob: Agent
    """user bob's entrance, which alice's `udp/home-only` does not admit."""
    proxy: int
    udp_echo: int
    tcp_echo: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("udp-direct")
    procs: list[Proc] = []
    servers = Servers()
    echo = EchoServer()
    try:
        admin = f"127.0.0.1:{free_port()}"
        hub = start_hub(tmp, extra=["--admin", admin])
        procs.append(hub.proc)
        alice = start_agent(tmp, "alice", extra=["--direct", f"127.0.0.1:{free_port()}"])
        home, bob = start_agent(tmp, "home"), start_agent(tmp, "bob")
        procs += [alice.proc, home.proc, bob.proc]
        join_all(MESH, [(alice, "alice"), (home, "home")], hub.permit)
        bob.join(MESH, "bob", invite(home, bob, "bob", tmp / "bob.json"))
        alice.proc.wait_for_output(r"direct channels announced at 127\.0\.0\.1:", 20)
        alice.cli("proxy", "config", "--add-target", "127.0.0.1")
        proxy = free_port()
        home.cli("proxy", "config", "--set-listen", str(proxy))
        yield World(hub, admin, alice, home, bob, proxy, servers.udp_echo(), echo.port)
    finally:
        echo.close()
        servers.close()
        for proc in reversed(procs):
            proc.stop()


def relayed(world: World) -> float:
    with urllib.request.urlopen(f"http://{world.admin}/metrics", timeout=5) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith(RELAYED + " "):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def warm_up(world: World, entrance: Agent, name: str) -> None:
    """A TCP tunnel from `entrance` to alice until a connection went direct (the CRL is in, the address known)."""
    open_outbound(world.alice, name, world.tcp_echo)
    port = open_inbound(entrance, name)
    wait_until(
        lambda: echo_roundtrip(port, b"warm") == b"warm" and described(entrance, "inbound", name)["direct"] >= 1,
        20,
        "a TCP connection over the direct channel",
    )


def socks_warm_up(world: World) -> None:
    """SOCKS CONNECTs through home's proxy until one went over the direct channel to alice."""

    def went_direct() -> bool:
        socks_open(world.proxy, 1, "127.0.0.1", world.tcp_echo)[0].close()
        return bool(world.home.cli_json("proxy", "get")["counters"].get("entrance:direct", 0) >= 1)

    wait_until(went_direct, 20, "a SOCKS CONNECT over the direct channel")


def udp_exchange(port: int, datagrams: list[bytes], wrap: bytes = b"", to: tuple[str, int] | None = None) -> None:
    """Each datagram (with the SOCKS header `wrap`) out and back, byte-exact, from one fresh client socket."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(10)
        for datagram in datagrams:
            client.sendto(wrap + datagram, to or ("127.0.0.1", port))
            back, _ = client.recvfrom(1 << 17)
            assert back == wrap + datagram, (len(back), len(datagram))


def test_the_hub_relays_no_byte_of_a_udp_tunnel_flow(world: World) -> None:
    warm_up(world, world.home, "tcp/warm-home")
    open_outbound(world.alice, "udp/echo", world.udp_echo)
    port = open_inbound(world.home, "udp/echo")
    before = relayed(world)
    datagrams = [os.urandom(n) for n in (1, 100, 1400, 8000, 30000, 65000)]
    udp_exchange(port, datagrams)
    assert relayed(world) - before == 0, f"the hub relayed {relayed(world) - before:.0f} bytes of the UDP flow"
    assert described(world.alice, "outbound", "udp/echo")["streams"] == 1
    assert described(world.home, "inbound", "udp/echo")["paths"]["direct"] == 1


def test_the_hub_relays_no_byte_of_a_socks_udp_flow(world: World) -> None:
    socks_warm_up(world)
    control, code, host, port = socks_open(world.proxy, 3, "0.0.0.0", 0)
    with control:
        assert code == 0
        before = relayed(world)
        header = b"\x00\x00\x00" + socks_address("127.0.0.1", world.udp_echo)
        udp_exchange(port, [os.urandom(n) for n in (1, 700, 20000)], wrap=header, to=(host, port))
        assert relayed(world) - before == 0, f"the hub relayed {relayed(world) - before:.0f} bytes of the SOCKS flow"


def test_an_entrance_the_exit_does_not_admit_is_refused_on_the_direct_path(world: World) -> None:
    warm_up(world, world.bob, "tcp/warm-bob")
    open_outbound(world.alice, "udp/home-only", world.udp_echo, extra=("--entrances", "home"))
    port = open_inbound(world.bob, "udp/home-only")
    before = relayed(world)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"let me in", ("127.0.0.1", port))
        wait_until(lambda: described(world.bob, "inbound", "udp/home-only")["refused"] >= 1, 10, "bob refused")
        client.settimeout(0.5)
        with pytest.raises(TimeoutError):
            client.recvfrom(1 << 16)
    assert "refused udp/home-only from bob (user bob): endpoint 'bob' is not an allowed entrance" in agent_log(
        world.alice
    )
    view = described(world.bob, "inbound", "udp/home-only")
    assert view["direct_fallbacks"] == 0 and view["streams"] == 0, view
    assert relayed(world) - before == 0, "bob's refused flow went through the hub, not over the direct channel"


def test_the_exits_proxy_rules_hold_for_udp_on_the_direct_path(world: World) -> None:
    """A deny rule at the exit refuses a SOCKS UDP destination over the direct channel, the hub relaying nothing."""

    def refused() -> int:
        return int(world.home.cli_json("proxy", "get")["counters"].get("entrance-udp:refused", 0))

    socks_warm_up(world)
    world.alice.cli("proxy", "rules", "--deny", "root", "127.0.0.1")
    try:
        before, count = relayed(world), refused()
        control, code, host, port = socks_open(world.proxy, 3, "0.0.0.0", 0)
        with control, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            assert code == 0
            client.sendto(b"\x00\x00\x00" + socks_address("127.0.0.1", world.udp_echo) + b"denied", (host, port))
            wait_until(lambda: refused() > count, 10, "the UDP destination refused")
            client.settimeout(0.5)
            with pytest.raises(TimeoutError):
                client.recvfrom(1 << 16)
        denial = "denied: rule 1 (deny root 127.0.0.1/32) denies user 'root' access to 127.0.0.1:"
        assert denial in agent_log(world.alice)
        assert relayed(world) == before, "the refused UDP destination went through the hub"
    finally:
        world.alice.cli("proxy", "rules", "--delete", "1")
