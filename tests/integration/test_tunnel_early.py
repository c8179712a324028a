"""Early data through the tunnel (`ztm.agent.early`, PROTOCOL.md section 11): real hub and agent processes on
127.0.0.1, a real client-speaks-first server.

The entrance sends its client's first bytes with the end-to-end opening instead of after the exit's OK: a request
/ answer protocol (the client speaks first, the server last) is byte-exact over the relay and over a direct channel,
with small first writes and one larger than a stream window; the entrance counts the openings that carried early data
(`ztm_agent_e2e_early_streams_total`). A refused caller's early data never reaches the target: its listener sees no
connection. After the exit agent restarted (its end-to-end sessions are gone), the entrance's RESUME is answered
UNKNOWN and the early data goes again, after a full handshake, in order and byte-exact. Every wait polls with a
deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import Agent, Hub, Proc, free_port, holds_for, restart_agent, start_hub_and_agents, wait_until

from .test_tunnel import MESH, Servers, agent_log, closed_without_answer, described, open_inbound, open_outbound
from .test_tunnel_direct import metric

EARLY = "ztm_agent_e2e_early_streams_total"


class Asked:
    """A client-speaks-first server: reads a request (4-byte big-endian length, then the bytes), answers its
    SHA-256, then waits for the client's end. Counts the connections it accepted (`accepted`)."""

    def __init__(self, servers: Servers) -> None:
        self.accepted = 0
        self.requests = 0

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            try:
                (size,) = struct.unpack("!I", await reader.readexactly(4))
                request = await reader.readexactly(size)
                self.requests += 1
                writer.write(hashlib.sha256(request).digest())
                await writer.drain()
                await reader.read()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        self.port = servers._tcp(handler)


def ask(port: int, request: bytes, timeout: float = 30.0) -> bytes:
    """Send one request at once after connecting (no waiting for anything), read the 32-byte answer."""
    message = struct.pack("!I", len(request)) + request  # made before connecting: the first bytes go at once
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(message)
        answer = b""
        while len(answer) < 32 and (chunk := sock.recv(32 - len(answer))):
            answer += chunk
        return answer


@dataclass
class World:
    hub: Hub
    home: Agent
    """root's entrance."""
    office: Agent
    """root's exit with a direct listener."""
    plain: Agent
    """root's exit without one (relayed only)."""
    servers: Servers
    asked: Asked


def _start(tmp: Path, servers: Servers) -> tuple[Hub, dict[str, Agent], list[Proc]]:
    extra = {"office": ("--direct", f"127.0.0.1:{free_port()}")}
    hub, agents = start_hub_and_agents(tmp, ("home", "office", "plain"), agent_extra=extra)
    for name, agent in agents.items():
        agent.join(MESH, name, hub.permit)
    return hub, agents, [hub.proc, *(a.proc for a in agents.values())]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    servers = Servers()
    procs: list[Proc] = []
    try:
        hub, agents, procs = _start(tmp_path_factory.mktemp("early"), servers)
        yield World(hub, agents["home"], agents["office"], agents["plain"], servers, Asked(servers))
    finally:
        servers.close()
        for proc in reversed(procs):
            proc.stop()


@pytest.mark.parametrize("path", ["relay", "direct"])
def test_client_first_protocol_is_byte_exact_with_early_data(world: World, path: str) -> None:
    exit_agent, exit_name = (world.office, "office") if path == "direct" else (world.plain, "plain")
    tunnel = f"tcp/early-{path}"
    open_outbound(exit_agent, tunnel, world.asked.port)
    port = open_inbound(world.home, tunnel, "--exits", exit_name)
    first = os.urandom(700)
    wait_until(lambda: ask(port, first) == hashlib.sha256(first).digest(), 20, f"an answer over the {path} path")
    if path == "direct":  # the first connection may race the exit's announcement of its listener
        wait_until(lambda: described(world.home, "inbound", tunnel)["direct"] >= 1, 10, "a direct connection")
    before = metric(world.home, EARLY)
    streams = described(world.home, "inbound", tunnel)["paths"][path]
    sizes = (1, 5000, 17 << 20, *(100,) * 5)  # 17 MiB is larger than a stream window: the rest follows the OK
    for size in sizes:
        request = os.urandom(size)
        assert ask(port, request) == hashlib.sha256(request).digest(), size
    assert described(world.home, "inbound", tunnel)["paths"][path] == streams + len(sizes)
    # A client descheduled between its connect and its send (a loaded machine: 3 of 8 in one CI run on the direct
    # path, whose exit answers in about a millisecond) is answered OK first, and its bytes follow the OK: whether an
    # opening carries early data depends on scheduling, the bytes arriving exact does not. At least one must.
    early = metric(world.home, EARLY) - before
    assert early >= 1, f"none of {len(sizes)} openings carried the client's first bytes"


def test_a_refused_callers_early_data_never_reaches_the_target(world: World) -> None:
    asked = Asked(world.servers)
    open_outbound(world.plain, "tcp/early-refused", asked.port, extra=("--users", "nobody-else"))
    port = open_inbound(world.home, "tcp/early-refused", "--exits", "plain")
    before = metric(world.home, EARLY)
    for _ in range(5):
        assert closed_without_answer(port, struct.pack("!I", 5) + b"hello")
    assert described(world.home, "inbound", "tcp/early-refused")["refused"] == 5
    assert metric(world.home, EARLY) > before, "the entrance sent no early data: the test proves nothing"
    assert asked.accepted == 0, "the target saw a connection from a refused caller"


def test_early_data_is_sent_again_after_an_unknown_session(tmp_path: Path) -> None:
    servers = Servers()
    procs: list[Proc] = []
    try:
        _hub, agents, procs = _start(tmp_path, servers)
        asked = Asked(servers)
        home, plain = agents["home"], agents["plain"]
        open_outbound(plain, "tcp/early-again", asked.port)
        port = open_inbound(home, "tcp/early-again", "--exits", "plain")
        request = os.urandom(3000)
        wait_until(lambda: ask(port, request) == hashlib.sha256(request).digest(), 20, "a first answer")
        plain = restart_agent(plain)  # its sessions are gone; the entrance still holds its side of one
        procs.append(plain.proc)
        wait_until(lambda: "plain" in home.online_names(), 20, "the exit back online")
        again = os.urandom(3000)
        wait_until(lambda: ask(port, again) == hashlib.sha256(again).digest(), 20, "an answer after the restart")
        assert metric(plain, "ztm_agent_e2e_unknown_session_total") >= 1, "the RESUME was not answered UNKNOWN"
        assert metric(plain, "ztm_agent_e2e_early_held_bytes_total") > 0, "no early data after the handshake"
    finally:
        servers.close()
        for proc in reversed(procs):
            proc.stop()


def test_early_data_reaches_at_most_one_exit(world: World) -> None:
    """An exit that does not answer in time (frozen) may still accept later and deliver what it got in the hub's
    `stream` event: the entrance must not send the same first bytes to the next exit. The client's connection is
    closed instead (a client that has not spoken yet still fails over: test_tunnel's failover test)."""
    first, second = Asked(world.servers), Asked(world.servers)
    open_outbound(world.plain, "tcp/early-once", first.port)
    open_outbound(world.office, "tcp/early-once", second.port)
    port = open_inbound(world.home, "tcp/early-once", "--exits", "plain", "office")
    request = os.urandom(200)
    wait_until(lambda: ask(port, request) == hashlib.sha256(request).digest(), 20, "an answer from plain")
    assert (first.requests, second.requests) == (1, 0)
    os.kill(world.plain.proc.pid, signal.SIGSTOP)
    try:
        assert closed_without_answer(port, struct.pack("!I", 7) + b"charge!", timeout=30)
    finally:
        os.kill(world.plain.proc.pid, signal.SIGCONT)
    # plain may take the stale stream after all (its event was queued with the first bytes); office never did
    holds_for(lambda: second.requests == 0 and first.requests <= 2, 2.0, "the request delivered at most once")
    log = agent_log(world.home)
    assert "the client's first bytes may have reached it: not sent to another exit" in log, log[-2000:]
