"""Bad end-to-end openings from a member, against real hub and agent processes (issue 13, "Bad input").

Bob holds a valid endpoint certificate and sends alice's endpoint, through the hub, what a broken or hostile agent
would: bytes that are no frame, a HELLO for another mesh, a HELLO of a version that does not exist, a handshake cut
short, and a RESUME replaying a stream number already used. Alice's endpoint must refuse each one with a counted
reason (`ztm_agent_e2e_failures_total{reason=...}`) and a log line, tell the sender why in an ERROR frame where no
keys exist yet, and keep serving everyone else: bob's real agent's tunnel through her works before, during and
after.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from e2eclient import layer_of, open_e2e
from reliability.traffic import EchoServer
from security.test_e2e_hostile_hub import logged, metric
from support import free_port, invite, start_hub_and_agents, tcp_connect, wait_until
from ztm import h2
from ztm.agent.tls import MeshFiles
from ztm.e2e import frames
from ztm.e2e.frames import FrameReader
from ztm.version import E2E_VERSION


def _u8(text: str) -> bytes:
    raw = text.encode()
    return bytes([len(raw)]) + raw


def _echo(port: int, data: bytes) -> bytes:
    with tcp_connect("127.0.0.1", port) as sock:
        sock.sendall(data)
        got = b""
        while len(got) < len(data) and (chunk := sock.recv(65536)):
            got += chunk
        return got


def test_bad_openings_are_refused_counted_and_logged_and_others_keep_working(tmp_path: Path) -> None:
    hub, agents = start_hub_and_agents(tmp_path, ["alice", "bob"])
    alice, bob = agents["alice"], agents["bob"]
    alice.join("m", "alice-pc", hub.permit)
    bob.join("m", "bob-pc", invite(alice, bob, "bob", tmp_path / "bob.json"))
    with EchoServer() as echo:
        assert (
            alice.cli("tunnel", "open", "outbound", "tcp/echo", "--targets", f"127.0.0.1:{echo.port}").returncode == 0
        )
        port = free_port()
        bob.cli("tunnel", "open", "inbound", "tcp/echo", "--listen", str(port), "--exit-users", "root")
        wait_until(lambda: _echo(port, b"before") == b"before", 20, "bob's tunnel through alice")

        alice_id = next(e["id"] for e in alice.endpoints() if e["name"] == "alice-pc")
        files = MeshFiles(bob.data / "meshes" / "m")
        mesh_id = layer_of(files).credentials().mesh_id
        host, hub_port = hub.address.rsplit(":", 1)

        async def attempt(conn: h2.Connection, first: bytes, end: bool = False) -> str:
            """Send `first` as the start of an opening; the ERROR frame's text alice answered ("" if none)."""
            headers = [("ztm-app", "tunnel"), ("ztm-service", "tcp/echo"), ("ztm-e2e", E2E_VERSION)]
            outer = await conn.open_stream("CONNECT", alice_id, headers)
            await outer.write(first, end_stream=end)
            status, _ = await asyncio.wait_for(outer.response(), 10)
            assert status == 200, status
            reader = FrameReader()
            while (frame := reader.next()) is None:
                try:
                    chunk = await asyncio.wait_for(outer.read(), 10)
                except h2.H2Error:
                    return ""
                if not chunk:
                    return ""
                reader.feed(chunk)
            assert frame[0] == frames.ERROR, frame
            return frames.parse_error(frame[1])

        async def attacks() -> dict[str, str]:
            conn = await h2.connect(host, int(hub_port), files.ep_context(), timeout=10)
            try:
                answers = {
                    "malformed": await attempt(conn, b"\x99\x00\x00\x03abc"),
                    "wrong_mesh": await attempt(
                        conn, frames.encode(frames.HELLO, b"\x01" + os.urandom(32) + _u8("0" * 16) + _u8(alice_id))
                    ),
                    "version": await attempt(
                        conn, frames.encode(frames.HELLO, b"\x02" + os.urandom(32) + _u8(mesh_id) + _u8(alice_id))
                    ),
                    "truncated": await attempt(conn, frames.encode(frames.HELLO, b"\x01" + os.urandom(8))[:9], True),
                }
                # a stream number used once may not be used again (a hub replaying a recorded stream)
                layer = layer_of(files)
                for _ in range(2):  # the handshake's stream (number 0), then a resumed one (number 1)
                    stream = await open_e2e(conn, layer, alice_id, "tunnel", "tcp/echo")
                    await stream.write(b"x", end_stream=True)
                    assert await stream.read_all() == b"x"
                session = layer._outgoing[alice_id]
                answers["replay"] = await attempt(conn, frames.resume_frame(session.id, 1))
                return answers
            finally:
                conn.close()
                await asyncio.wait_for(conn.wait_closed(), 10)

        # while the attacks run, bob's real tunnel keeps working
        answers = asyncio.run(attacks())
        assert _echo(port, b"during and after") == b"during and after"

    for reason, answer in answers.items():
        if reason != "truncated":  # a cut-short opening has nobody left to answer
            assert reason in answer, (reason, answer)
        wait_until(
            lambda r=reason: metric(alice, "ztm_agent_e2e_failures_total", reason=r) >= 1,  # type: ignore[misc]
            10,
            f"alice to count a {reason} failure",
        )
        assert logged(alice, "e2e", reason), f"no log line about {reason} on alice"
