"""Direct channels carry the end-to-end layer (issue 13, item 3: one channel protocol for both paths), against real
hub and agent processes on 127.0.0.1 with real TLS.

Alice's endpoint is a tunnel exit listening for direct channels (`--direct`); bob is a member holding a valid
endpoint certificate. Over a direct channel, bob must speak the end-to-end layer exactly as through the hub:

- the old plaintext protocol (a JSON greeting line inside TLS, then length-framed bytes) is refused: the exit
  answers nothing, passes nothing to its target, and counts the failure (`malformed`);
- the end-to-end layer works over the same TLS channel, with the caller from the end-to-end certificate: alice's
  exit refuses bob with exactly the same words over both paths (same caller), and a permitted tunnel answers over
  both (an `E2EStream` either way, counted `direct` or `e2e` by the exit);
- the end-to-end identity must be the TLS one: bob cannot open a stream as carol on his own TLS channel even
  holding carol's key (refused, counted `identity`, carol never seen as the caller).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from e2eclient import dial_direct, direct_context, layer_of, open_direct, open_e2e
from integration.test_tunnel import described, open_outbound
from reliability.traffic import EchoServer
from security.test_e2e_hostile_hub import metric
from support import Agent, Hub, free_port, invite, start_hub_and_agents, wait_until
from ztm import h2, pki
from ztm.agent.e2estream import E2EStream
from ztm.agent.tls import MeshFiles
from ztm.e2e import E2EError
from ztm.errors import ZtmError

MESH = "m"


@dataclass
class World:
    hub: Hub
    alice: Agent
    """the exit, listening for direct channels."""
    bob: Agent
    carol: Agent
    direct: str
    """alice's direct address."""
    target: str
    """alice's endpoint id."""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("direct-e2e")
    procs = []
    try:
        direct = f"127.0.0.1:{free_port()}"
        hub, agents = start_hub_and_agents(tmp, ("alice", "bob", "carol"), agent_extra={"alice": ["--direct", direct]})
        procs += [hub.proc, *(agent.proc for agent in agents.values())]
        alice, bob, carol = agents["alice"], agents["bob"], agents["carol"]
        alice.join(MESH, "alice-pc", hub.permit)
        bob.join(MESH, "bob-pc", invite(alice, bob, "bob", tmp / "bob.json"))
        carol.join(MESH, "carol-pc", invite(alice, carol, "carol", tmp / "carol.json"))
        alice.proc.wait_for_output(r"direct channels announced at 127\.0\.0\.1:", 20)
        target = str(next(e["id"] for e in bob.endpoints() if e["name"] == "alice-pc"))
        with EchoServer() as echo:
            open_outbound(alice, "tcp/open", echo.port)
            open_outbound(alice, "tcp/root-only", echo.port, extra=("--users", "root"))
            yield World(hub, alice, bob, carol, direct, target)
    finally:
        for proc in reversed(procs):
            proc.stop()


def test_the_old_plaintext_greeting_is_refused_on_a_direct_channel(world: World) -> None:
    """Bob, with his valid certificate, speaks the old direct protocol (plaintext inside TLS, no end-to-end layer):
    the exit must not answer `{"ok": true}` nor take his bytes to its target."""
    folder = world.bob.data / "meshes" / MESH
    before = metric(world.alice, "ztm_agent_e2e_failures_total", reason="malformed")
    counts = described(world.alice, "outbound", "tcp/open")
    host, port = world.direct.rsplit(":", 1)
    mesh_id = pki.cert_mesh_id(pki.cert_from_pem((folder / "ca.pem").read_text()))
    received = bytearray()
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        direct_context(folder).wrap_socket(raw, server_hostname=f"{mesh_id}.ztm") as tls,
    ):
        tls.sendall(json.dumps({"app": "tunnel", "service": "tcp/open"}).encode() + b"\n")
        tls.sendall(struct.pack("!I", 13) + b"old-plaintext")
        with contextlib.suppress(OSError):
            while chunk := tls.recv(4096):
                received += chunk
    assert b'"ok"' not in received and b"old-plaintext" not in received, bytes(received)
    wait_until(
        lambda: metric(world.alice, "ztm_agent_e2e_failures_total", reason="malformed") > before, 10, "a refusal"
    )
    after = described(world.alice, "outbound", "tcp/open")
    assert (after["direct"], after["e2e"]) == (counts["direct"], counts["e2e"]), (counts, after)


async def _exchange(stream: E2EStream, data: bytes) -> bytes:
    await stream.write(data, end_stream=True)
    return await asyncio.wait_for(stream.read_all(), 10)


def test_the_same_caller_and_stream_over_both_paths(world: World) -> None:
    """Bob opens the same tunnels through the hub and over a direct channel, speaking the end-to-end layer: alice's
    exit names the same caller in its refusal over both, and serves the permitted tunnel over both."""
    files = MeshFiles(world.bob.data / "meshes" / MESH)
    target, direct = world.target, world.direct
    host, hub_port = world.hub.address.rsplit(":", 1)
    before = described(world.alice, "outbound", "tcp/open")

    async def main() -> None:
        layer = layer_of(files)
        conn = await h2.connect(host, int(hub_port), files.ep_context(), timeout=10)
        try:
            refusals = []
            for path in ("relay", "direct"):
                with pytest.raises(ZtmError) as refused:
                    if path == "relay":
                        await open_e2e(conn, layer, target, "tunnel", "tcp/root-only")
                    else:
                        channel = await dial_direct(files.dir, direct)
                        try:
                            await open_direct(channel, layer, target, "tunnel", "tcp/root-only")
                        finally:
                            channel.abort()
                refusals.append(refused.value.message)
            assert refusals[0] == refusals[1] == "user 'bob' is not allowed to use tcp/root-only", refusals

            relayed = await open_e2e(conn, layer, target, "tunnel", "tcp/open")
            channel = await dial_direct(files.dir, direct)
            try:
                straight = await open_direct(channel, layer, target, "tunnel", "tcp/open")
                assert type(relayed) is type(straight) is E2EStream
                assert relayed.peer == straight.peer and relayed.session_id == straight.session_id  # one session
                assert await _exchange(relayed, b"via the hub") == b"via the hub"
                assert await _exchange(straight, b"straight") == b"straight"
            finally:
                channel.abort()
        finally:
            conn.close()
            await asyncio.wait_for(conn.wait_closed(), 10)

    asyncio.run(main())
    after = described(world.alice, "outbound", "tcp/open")
    assert after["direct"] == before["direct"] + 1 and after["e2e"] == before["e2e"] + 1, (before, after)


def test_the_end_to_end_identity_must_be_the_tls_one(world: World) -> None:
    """Bob's TLS channel, carol's end-to-end handshake (bob holds carol's key too): refused and counted; the exit
    never takes carol as the caller of bob's channel."""
    before = metric(world.alice, "ztm_agent_e2e_failures_total", reason="identity")
    carol = layer_of(MeshFiles(world.carol.data / "meshes" / MESH))

    async def main() -> None:
        channel = await dial_direct(world.bob.data / "meshes" / MESH, world.direct)
        try:
            with pytest.raises((E2EError, ZtmError, h2.H2Error)):
                stream = await open_direct(channel, carol, world.target, "tunnel", "tcp/open")
                await _exchange(stream, b"as carol")
        finally:
            channel.abort()

    asyncio.run(main())
    wait_until(lambda: metric(world.alice, "ztm_agent_e2e_failures_total", reason="identity") > before, 10, "a refusal")
