"""The direct channel's per-message fast path keeps every check of the general one, against real hub and agent
processes on 127.0.0.1 with real TLS.

A 1-byte message on a direct channel goes straight from the TLS read to the app's socket when it is exactly one
small DATA record (`DirectOuter.data_received` -> `E2EStream.stream_data` -> `Channel.open_data`). Bob, a member with
a valid endpoint certificate, opens a tunnel to alice's exit over her `--direct` listener with the agents' own code,
exchanges a byte, then writes raw records on his TLS connection, each alone in its TLS write (the fast path's shape):

- a record whose tag does not authenticate (one bit flipped): the exit fails the stream (`integrity`), and its
  target never sees a byte of it;
- a record over the size limit, sealed with the stream's real key and counter (so it would authenticate): refused
  as `malformed`, nothing of it reaches the target;
- early data sent one small record per write after the OPEN to a service the exit refuses: dropped unread (counted),
  the target never sees a connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from e2eclient import dial_direct, layer_of, open_direct
from integration.test_tunnel import open_outbound
from security.test_e2e_hostile_hub import Recorder, metric
from support import Agent, free_port, invite, start_hub_and_agents, wait_until
from ztm.agent.direct_outer import DirectConn
from ztm.agent.e2estream import E2EStream
from ztm.agent.early import EarlyData
from ztm.agent.tls import MeshFiles
from ztm.e2e import frames
from ztm.e2e.record import DATA
from ztm.errors import ZtmError

MESH = "m"


@dataclass
class World:
    alice: Agent
    """the exit, listening for direct channels."""
    bob: Agent
    direct: str
    target: str
    """alice's endpoint id."""
    recorder: Recorder
    """tcp/open's target (bob may use it); tcp/root-only's is the same server (bob may not)."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("direct-fastpath")
    procs = []
    try:
        direct = f"127.0.0.1:{free_port()}"
        hub, agents = start_hub_and_agents(tmp, ("alice", "bob"), agent_extra={"alice": ["--direct", direct]})
        procs += [hub.proc, *(agent.proc for agent in agents.values())]
        alice, bob = agents["alice"], agents["bob"]
        alice.join(MESH, "alice-pc", hub.permit)
        bob.join(MESH, "bob-pc", invite(alice, bob, "bob", tmp / "bob.json"))
        alice.proc.wait_for_output(r"direct channels announced at 127\.0\.0\.1:", 20)
        target = str(next(e["id"] for e in bob.endpoints() if e["name"] == "alice-pc"))
        with Recorder() as recorder:
            open_outbound(alice, "tcp/open", recorder.port)
            open_outbound(alice, "tcp/root-only", recorder.port, extra=("--users", "root"))
            yield World(alice, bob, direct, target, recorder)
    finally:
        for proc in reversed(procs):
            proc.stop()


async def _opened(world: World) -> tuple[DirectConn, E2EStream]:
    """Bob's direct channel and a tunnel stream to tcp/open on it, after one byte went there and back (the exit's
    splice is on, the stream in its data phase: the fast path's state)."""
    files = MeshFiles(world.bob.data / "meshes" / MESH)
    conn = await dial_direct(files.dir, world.direct)
    stream = await open_direct(conn, layer_of(files), world.target, "tunnel", "tcp/open")
    stream.write_nowait(b"a")
    assert await asyncio.wait_for(stream.read(), 10) == b"a"
    return conn, stream


async def _closed(conn: DirectConn) -> None:
    """The exit closes bob's channel after a failed record (its stream reset aborts the TLS connection)."""
    deadline = time.monotonic() + 10
    while not conn.lost:
        assert time.monotonic() < deadline, "the exit kept the channel open after a bad record"
        await asyncio.sleep(0.02)


def _raw(conn: DirectConn, record: bytes) -> None:
    assert conn.transport is not None
    conn.transport.write(record)


def test_a_record_that_fails_authentication_never_reaches_the_target(world: World) -> None:
    before = metric(world.alice, "ztm_agent_e2e_failures_total", reason="integrity")
    connections = len(world.recorder.received)

    async def main() -> None:
        conn, stream = await _opened(world)
        try:
            record = bytearray(stream._channel.seal(DATA, b"Z"))  # the next record bob's side would send...
            record[-1] ^= 1  # ...its tag broken
            _raw(conn, bytes(record))
            await _closed(conn)
        finally:
            conn.abort()

    asyncio.run(main())
    wait_until(
        lambda: metric(world.alice, "ztm_agent_e2e_failures_total", reason="integrity") > before, 10, "the failure"
    )
    assert len(world.recorder.received) == connections + 1
    wait_until(lambda: world.recorder.ended[connections], 10, "the target's connection to end")
    assert bytes(world.recorder.received[connections]) == b"a", "the target got bytes of a record that failed"


def test_an_oversized_record_that_authenticates_never_reaches_the_target(world: World) -> None:
    before = metric(world.alice, "ztm_agent_e2e_failures_total", reason="malformed")
    connections = len(world.recorder.received)

    async def main() -> None:
        conn, stream = await _opened(world)
        try:
            channel = stream._channel
            payload = b"\x00" + b"O" * (frames.MAX_PAYLOAD + 1)  # DATA, one byte over the limit
            header = (frames.RECORD << 24 | (len(payload) + frames.TAG)).to_bytes(4, "big")
            nonce = channel._send_ctr.to_bytes(12, "big")  # the key and counter bob's side would use next
            _raw(conn, header + AESGCM(channel._send_key).encrypt(nonce, payload, header))
            await _closed(conn)
        finally:
            conn.abort()

    asyncio.run(main())
    wait_until(
        lambda: metric(world.alice, "ztm_agent_e2e_failures_total", reason="malformed") > before, 10, "the failure"
    )
    assert len(world.recorder.received) == connections + 1
    wait_until(lambda: world.recorder.ended[connections], 10, "the target's connection to end")
    assert bytes(world.recorder.received[connections]) == b"a", "the target got bytes of an oversized record"


def test_early_data_before_the_acceptance_is_dropped_when_refused(world: World) -> None:
    before = metric(world.alice, "ztm_agent_e2e_early_dropped_bytes_total")
    connections = len(world.recorder.received)
    files = MeshFiles(world.bob.data / "meshes" / MESH)

    async def main() -> None:
        conn = await dial_direct(files.dir, world.direct)
        early = EarlyData(b"e")
        try:
            opening = asyncio.ensure_future(
                open_direct(conn, layer_of(files), world.target, "tunnel", "tcp/root-only", early)
            )
            while not opening.done():  # one small record per write until the refusal
                early.feed(b"e")
                await asyncio.sleep(0.001)
            with pytest.raises(ZtmError):
                await opening
        finally:
            conn.abort()

    asyncio.run(main())
    wait_until(lambda: metric(world.alice, "ztm_agent_e2e_early_dropped_bytes_total") > before, 10, "the drop")
    assert len(world.recorder.received) == connections, "the target saw a connection from a refused caller"
