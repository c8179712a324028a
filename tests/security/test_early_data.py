"""Attacks on early data (PROTOCOL.md section 11, "Early data"), against real hub and agent processes.

An entrance sends its client's first bytes as sealed DATA records right after the OPEN, before the exit answered;
the exit holds them unread until its app accepted. What an attacker can do with that:
- a hub replays a whole stream (the RESUME, the OPEN and the early DATA, byte for byte, as a new `stream` event):
  the exit refuses it (`replay`, the stream number was used) and its target sees each request once;
- a member floods early data at an exit whose app has not decided yet: the exit stops reading at once (credit
  withheld), so the flood costs it at most what one read brought, and the refusal drops that unread;
- a caller the exit refuses sent early data with its OPEN: the data is dropped unread and the target never sees a
  byte, nor even a connection (over the relay and over a direct channel).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from e2eclient import dial_direct, layer_of
from integration.test_tunnel import Servers, blackhole, open_inbound, open_outbound
from integration.test_tunnel_early import Asked
from security.test_e2e_hostile_hub import Recorder, hostile_mesh, metric
from support import Agent, Hub, free_port, holds_for, invite, start_hub_and_agents, wait_until
from ztm import h2
from ztm.agent.direct_outer import DirectOuter
from ztm.agent.e2e import MeshE2E
from ztm.agent.tls import MeshFiles
from ztm.e2e.frames import resume_frame
from ztm.e2e.record import DATA, OPEN
from ztm.errors import ZtmError
from ztm.version import E2E_VERSION

from .test_e2e_hostile_hub import MESH


def _rss(pid: int) -> int:
    """The process's resident set in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_hub_replaying_a_stream_with_its_early_data_gets_replay(tmp_path: Path) -> None:
    mesh = hostile_mesh(tmp_path, {"ZTM_EVIL_HUB": "replay"})
    with Recorder() as target:
        open_outbound(mesh.alice, "tcp/rec", target.port)
        port = open_inbound(mesh.bob, "tcp/rec", "--exit-users", "alice")
        sent: list[bytes] = []

        def one_request() -> bool:
            request = f"request #{len(sent)}: early\n".encode()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(request)
                echoed = b""
                while len(echoed) < len(request) and (chunk := sock.recv(4096)):
                    echoed += chunk
            assert echoed == request
            sent.append(request)
            return "evil hub: replayed" in mesh.hub.proc.output()

        wait_until(one_request, 30, "the hub to replay a stream whose first flight carried early data")
        wait_until(
            lambda: metric(mesh.alice, "ztm_agent_e2e_failures_total", reason="replay") >= 1,
            10,
            "the exit to refuse the replayed stream",
        )
        # the target saw every request exactly once, on its own connection; the replay added none
        holds_for(lambda: len(target.received) == len(sent), 1.5, "no connection more than the client made")
        assert sorted(bytes(r) for r in target.received) == sorted(sent)


@dataclass
class Pair:
    """alice's exit (listening for direct channels at `direct`, endpoint id `target`), bob's member endpoint with
    his end-to-end layer (`files`, `layer`: the attacker's), and a client-speaks-first target server `asked`."""

    hub: Hub
    alice: Agent
    bob: Agent
    direct: str
    target: str
    asked: Asked
    files: MeshFiles
    layer: MeshE2E


@contextlib.contextmanager
def _pair(tmp_path: Path) -> Iterator[Pair]:
    direct = f"127.0.0.1:{free_port()}"
    hub, agents = start_hub_and_agents(tmp_path, ("alice", "bob"), agent_extra={"alice": ["--direct", direct]})
    servers = Servers()
    alice, bob = agents["alice"], agents["bob"]
    try:
        alice.join(MESH, "alice-pc", hub.permit)
        bob.join(MESH, "bob-pc", invite(alice, bob, "bob", tmp_path / "bob.json"))
        alice.proc.wait_for_output(r"direct channels announced at 127\.0\.0\.1:", 20)
        target = str(next(e["id"] for e in bob.endpoints() if e["name"] == "alice-pc"))
        files = MeshFiles(bob.data / "meshes" / MESH)
        yield Pair(hub, alice, bob, direct, target, Asked(servers), files, layer_of(files))
    finally:
        servers.close()
        for proc in (alice.proc, bob.proc, hub.proc):
            proc.stop()


def test_a_member_flooding_early_data_before_the_accept_costs_the_exit_one_read(tmp_path: Path) -> None:
    with _pair(tmp_path) as pair, blackhole() as hole:
        alice, files, layer, target = pair.alice, pair.files, pair.layer, pair.target
        open_outbound(alice, "tcp/open", pair.asked.port)
        open_outbound(alice, "tcp/slow", hole)  # connecting hangs: the exit decides only after 4 s

        async def flood() -> tuple[int, float]:
            # a session first (a handshake on a stream the exit accepts), then a stream that only floods
            channel = await dial_direct(files.dir, pair.direct)
            stream = await layer.open(DirectOuter(channel), target, "tunnel", "tcp/open", _nothing)
            stream.reset()
            channel.abort()
            session = layer._outgoing[target]
            channel = await dial_direct(files.dir, pair.direct)
            outer = DirectOuter(channel)
            number = session.next_stream()
            keys = session.channel(number)
            opening = json.dumps({"app": "tunnel", "service": "tcp/slow"}).encode()
            # the first flight as a real opener sends it: OPEN and a first (small) early record in one write, so
            # the exit reads that record with the OPEN and holds it; the flood after it waits in the channel
            await outer.write(
                resume_frame(session.id, number) + keys.seal(OPEN, opening) + keys.seal(DATA, bytes(1000))
            )
            chunk = bytes(65536)
            written, peak = 0, 0
            deadline = time.monotonic() + 3.0
            try:
                while time.monotonic() < deadline and written < 512 << 20:
                    try:
                        await asyncio.wait_for(outer.write(keys.seal(DATA, chunk)), deadline - time.monotonic())
                    except TimeoutError:
                        break  # the exit stopped reading: our writes wait for room that never comes
                    written += len(chunk)
                    peak = max(peak, _rss(alice.proc.pid) - base)
                # the channel stays open until the exit decided (4 s after the OPEN): a reset before that would
                # end the stream with nothing left to decide on, and the test would wait for nothing
                end = time.monotonic() + 15.0
                while time.monotonic() < end and not await asyncio.to_thread(dropped):
                    await asyncio.sleep(0.1)
            finally:
                channel.abort()
            return written, peak

        def dropped() -> bool:
            return metric(alice, "ztm_agent_e2e_early_dropped_bytes_total") > 0

        base = _rss(alice.proc.pid)
        written, peak = asyncio.run(flood())
        print(f"flood: {written} bytes written in 3 s, exit RSS grew by at most {peak} from {base}")
        # The exit stops reading at the OPEN: the writes stall after what the kernel's socket buffers take.
        assert written < 64 << 20, f"the exit kept reading the flood: {written} bytes taken in 3 s"
        assert peak < 32 << 20, f"the exit grew by {peak} bytes during the flood"
        wait_until(dropped, 5, "the refusal to drop the flood")
        dropped = metric(alice, "ztm_agent_e2e_early_dropped_bytes_total")
        assert dropped <= 1 << 20, f"the exit held {dropped} bytes of early data before deciding"
        assert pair.asked.accepted == 1, "only the accepted stream's connection reached a target"


async def _nothing() -> None:
    return None


def test_a_refused_callers_early_data_is_dropped_unread_on_both_paths(tmp_path: Path) -> None:
    with _pair(tmp_path) as pair:
        alice, files, layer, target, direct, asked = (
            pair.alice, pair.files, pair.layer, pair.target, pair.direct, pair.asked
        )  # fmt: skip
        open_outbound(alice, "tcp/root-only", asked.port, extra=("--users", "root"))
        host, hub_port = pair.hub.address.rsplit(":", 1)
        secret = b"GET /secret HTTP/1.1\r\n\r\n"

        async def attempt(path: str) -> str:
            from ztm.agent.early import EarlyData  # here: the test runs (and fails) on code without early data too

            early = EarlyData(struct.pack("!I", len(secret)) + secret)
            if path == "direct":
                channel = await dial_direct(files.dir, direct)
                try:
                    await layer.open(DirectOuter(channel), target, "tunnel", "tcp/root-only", _nothing, early)
                finally:
                    channel.abort()
                return "accepted"
            conn = await h2.connect(host, int(hub_port), files.ep_context(), timeout=10)
            try:
                headers = [("ztm-app", "tunnel"), ("ztm-service", "tcp/root-only"), ("ztm-e2e", E2E_VERSION)]
                outer = await conn.open_stream("CONNECT", target, headers)
                await layer.open(outer, target, "tunnel", "tcp/root-only", _nothing, early)
            finally:
                conn.close()
                await conn.wait_closed()  # closed before asyncio.run ends: no unclosed transport left to the GC
            return "accepted"

        for path in ("relay", "direct", "relay", "direct"):
            before = metric(alice, "ztm_agent_e2e_early_dropped_bytes_total")
            try:
                outcome = asyncio.run(attempt(path))
            except ZtmError as exc:
                outcome = exc.message
            assert outcome == "user 'bob' is not allowed to use tcp/root-only", (path, outcome)
            wait_until(
                lambda b=before: metric(alice, "ztm_agent_e2e_early_dropped_bytes_total") > b,
                20,
                f"the exit to drop the early data ({path})",
            )
        assert asked.accepted == 0, "the target saw a connection from a refused caller"
