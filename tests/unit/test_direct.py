"""Direct channels (`ztm.agent.direct`) in one process over real TLS on 127.0.0.1: who may connect.

The sessions are stand-ins (files, record, permit, apps); the TLS, the SNI switch to the mesh's context, the CRL,
the identity checks, the end-to-end layer on each channel and the dispatch to apps (`MeshSession.serve_stream`) are
the product's. A client is taken in only with an endpoint certificate of the mesh's CA
that the current CRL does not revoke; the client takes only the endpoint it meant to reach; a new CRL closes live
channels of revoked peers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from pathlib import Path
from types import MethodType, SimpleNamespace
from typing import Any, cast

import pytest
import uvloop
from cryptography import x509

from ztm import aio, h2, pki
from ztm.addr import Address
from ztm.agent.apps import Caller
from ztm.agent.direct import POOL_MAX, DirectServer, DirectUnreachable, MeshDirect
from ztm.agent.e2e import MeshE2E
from ztm.agent.gate import PolicyGate
from ztm.agent.mesh import MeshSession
from ztm.apps.tunnel.pipe import splice_socket
from ztm.errors import Forbidden
from ztm.policy import Place

NOW = dt.datetime.now(dt.UTC)


class Ca:
    def __init__(self, mesh_id: str) -> None:
        self.mesh_id = mesh_id
        self.key, self.cert = pki.create_ca(mesh_id, now=NOW)
        self.revoked: list[int] = []
        self.number = 0

    def crl(self) -> str:
        self.number += 1
        now = NOW - dt.timedelta(seconds=600 - self.number)  # each CRL newer than the last, none in the future
        return pki.crl_to_pem(pki.build_crl(self.key, self.cert, revoked=self.revoked, number=self.number, now=now))


class App:
    name = "echo"
    running = True

    def __init__(self) -> None:
        self.callers: list[Caller] = []
        self.refuse_user: str | None = None
        self.session: Any = None

    async def on_stream(self, stream_id: str, caller: Caller, service: str) -> None:
        self.callers.append(caller)
        stream = self.session.e2e.pending.pop(stream_id)
        if caller.user == self.refuse_user:
            stream.refuse(Forbidden(f"user {caller.user!r} is not allowed to use {service}"))
            return
        stream.accept()
        await stream.wait_closed()  # the stream is live until it closes, as it is while a tunnel splices it


class Link:
    def __init__(self, ca: Ca) -> None:
        self.ca = ca
        self.conn = None  # no hub connection: these stand-ins never punch

    async def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
        assert (method, path) == ("GET", "/api/crl")
        return {"crl": self.ca.crl(), "number": self.ca.number}


def endpoint(tmp: Path, name: str, ca: Ca, *, trust: Ca | None = None, sign: Ca | None = None) -> Any:
    """A stand-in session of mesh `ca` with an endpoint certificate signed by `sign` (default `ca`)."""
    directory = tmp / name
    directory.mkdir()
    key = pki.new_key()
    ep_id = str(uuid.uuid4())
    signer = sign or ca
    cert = pki.issue_endpoint_cert(
        signer.key, signer.cert, user=name, ep_id=ep_id, public_key=key.public_key(), now=NOW, ttl=dt.timedelta(1)
    )
    pem = pki.cert_to_pem(cert)
    (directory / "ep.crt").write_text(pem)
    pki.write_private(directory / "ep.key", pki.key_to_pem(key))
    (directory / "ca.pem").write_text(pki.cert_to_pem((trust or ca).cert))
    session = SimpleNamespace(
        name="m",
        record=SimpleNamespace(mesh_id=ca.mesh_id, ep_id=ep_id, ep_cert=pem),
        files=SimpleNamespace(dir=directory),
        permit=SimpleNamespace(ca=(trust or ca).cert),
        apps={"echo": App()},
        peers={},
        link=Link(trust or ca),
        serial=cert.serial_number,
    )
    session.e2e = MeshE2E("m", ca.mesh_id, (trust or ca).cert, key, lambda: pem)
    session.direct = MeshDirect(cast(Any, session))
    session.e2e = MeshE2E(name, signer.mesh_id, signer.cert, key, lambda: session.record.ep_cert)
    session.serve_stream = MethodType(MeshSession.serve_stream, session)
    session.gate = PolicyGate("m", place=lambda: Place("", frozenset()), peer=lambda _ep_id: None)  # no policy set
    session._know = MethodType(MeshSession._know, session)
    session.apps["echo"].session = session
    return session


async def serve(server_session: Any) -> tuple[DirectServer, str]:
    server = DirectServer(lambda: [server_session])
    await server.start(Address("127.0.0.1", 0))
    assert server.server is not None
    port = server.server.sockets[0].getsockname()[1]
    return server, f"127.0.0.1:{port}"


def run(coro: Any) -> None:
    """On uvloop, the agents' loop."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


def test_who_may_open_a_direct_channel(tmp_path: Path) -> None:
    async def main() -> None:
        mesh, other = Ca(pki.new_mesh_id()), Ca(pki.new_mesh_id())
        exit_ = endpoint(tmp_path, "exit", mesh)
        alice = endpoint(tmp_path, "alice", mesh)
        mallory = endpoint(tmp_path, "mallory", mesh, sign=other)  # trusts the mesh CA, certificate from another
        carol = endpoint(tmp_path, "carol", mesh)
        for s in (exit_, alice, mallory, carol):
            await s.direct.refresh_crl()
        exit_.peers[alice.record.ep_id] = {"name": "alice-laptop", "user": "alice"}
        exit_.peers[carol.record.ep_id] = {"name": "carol-laptop", "user": "carol"}
        server, address = await serve(exit_)
        app = exit_.apps["echo"]
        try:
            channel = await alice.direct.open(exit_.record.ep_id, address, "echo", "svc")
            assert app.callers == [Caller(alice.record.ep_id, "alice-laptop", "alice")]
            assert channel.peer.ep_id == exit_.record.ep_id and channel.path == "direct"
            channel.reset()

            with pytest.raises(DirectUnreachable):  # refused at the handshake: another CA signed it
                await mallory.direct.open(exit_.record.ep_id, address, "echo", "svc")
            with pytest.raises(DirectUnreachable, match="not"):  # alice expected another endpoint there
                await alice.direct.open(str(uuid.uuid4()), address, "echo", "svc")

            app.refuse_user = "alice"  # the app's refusal travels back as the error it raised
            alice.direct._failed.clear()
            with pytest.raises(Forbidden, match="user 'alice' is not allowed to use svc"):
                await alice.direct.open(exit_.record.ep_id, address, "echo", "svc")
            app.refuse_user = None

            live = await carol.direct.open(exit_.record.ep_id, address, "echo", "svc")
            mesh.revoked.append(carol.serial)  # carol is evicted: the exit closes her live channel ...
            await exit_.direct.refresh_crl()
            await asyncio.wait_for(live.wait_closed(), 5)
            with pytest.raises(h2.H2Error):
                await live.read()
            assert exit_.direct.counters["revoked_closed"] == 1
            carol.direct._failed.clear()
            with pytest.raises(DirectUnreachable):  # ... and refuses her next handshake
                await carol.direct.open(exit_.record.ep_id, address, "echo", "svc")
            alice.direct._failed.clear()
            again = await alice.direct.open(exit_.record.ep_id, address, "echo", "svc")  # others still get in
            again.reset()
        finally:
            for s in (exit_, alice, mallory, carol):
                s.direct.close()
            server.close()

    run(main())


def test_a_crl_the_mesh_ca_did_not_sign_is_rejected(tmp_path: Path) -> None:
    mesh, other = Ca(pki.new_mesh_id()), Ca(pki.new_mesh_id())
    session = endpoint(tmp_path, "ep", mesh)
    with pytest.raises(pki.CertificateError, match="did not sign"):
        session.direct.apply_crl(other.crl(), 1)
    assert session.direct.server_context() is None  # still no CRL: no direct channels at all
    x509.load_pem_x509_crl(mesh.crl().encode())


class SpliceApp:
    """The exit's side as the tunnel app has it: connect to the target, accept, splice (the channel is reused after a
    clean end)."""

    name = "echo"
    running = True

    def __init__(self, target: int, session: Any) -> None:
        self.target = target
        self.session = session

    async def on_stream(self, stream_id: str, caller: Caller, service: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.target)
        stream = self.session.e2e.pending.pop(stream_id)
        stream.accept()
        await splice_socket(reader, writer, stream, _count)


def _count(sent: int, received: int) -> None:
    pass


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read())  # everything up to the client's EOF, then close
    writer.close()


def test_recycled_channels_leave_nothing_behind(tmp_path: Path) -> None:
    """Hundreds of tunnelled connections, one by one and in bursts wider than the pool, over reused TLS channels:
    afterwards both agents' tables (live streams, per-peer counts, pool, channels waiting for a stream, tasks)
    are back to their size before, up to the pool itself (bench/RESULTS.md, "Direct path": RSS per round)."""

    async def main() -> None:
        mesh = Ca(pki.new_mesh_id())
        exit_, alice = endpoint(tmp_path, "exit", mesh), endpoint(tmp_path, "alice", mesh)
        for s in (exit_, alice):
            await s.direct.refresh_crl()
        exit_.peers[alice.record.ep_id] = {"name": "alice-laptop", "user": "alice"}
        echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
        exit_.apps["echo"] = SpliceApp(echo.sockets[0].getsockname()[1], exit_)
        handshakes = 0
        server = DirectServer(lambda: [exit_])
        make_protocol = server._protocol

        def counted() -> Any:
            nonlocal handshakes
            handshakes += 1
            return make_protocol()

        server._protocol = counted  # type: ignore[method-assign]
        await server.start(Address("127.0.0.1", 0))
        assert server.server is not None
        address = f"127.0.0.1:{server.server.sockets[0].getsockname()[1]}"

        async def entrance(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            stream = await alice.direct.open(exit_.record.ep_id, address, "echo", "svc")
            await splice_socket(reader, writer, stream, _count)

        inbound = await asyncio.start_server(entrance, "127.0.0.1", 0)
        port = inbound.sockets[0].getsockname()[1]

        async def one(i: int) -> None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping %d" % i)
            writer.write_eof()
            assert await asyncio.wait_for(reader.read(), 5) == b"ping %d" % i
            writer.close()
            await writer.wait_closed()

        def tables() -> dict[str, int]:
            return {
                "live": len(alice.direct.live) + len(exit_.direct.live),
                "busy": sum(alice.direct.per_peer.values()) + sum(exit_.direct.per_peer.values()),
                "pooled": sum(len(p) for p in alice.direct._pool.values()),
                "waiting": len(exit_.direct._waiting),
                "tasks": len(aio._TASKS),
            }

        async def settled() -> dict[str, int]:
            """The tables once the last ends travelled (the exit's reused channels wait for the next stream)."""
            for _ in range(200):
                now = tables()
                if now["live"] == 0 and now["waiting"] == now["pooled"]:
                    return now
                await asyncio.sleep(0.01)
            return tables()

        try:
            await one(0)
            before = await settled()
            for i in range(200):
                await one(i)
            for burst in range(5):  # more at once than the pool keeps: the surplus is closed, not kept
                await asyncio.gather(*(one(100 * burst + i) for i in range(3 * POOL_MAX)))
            after = await settled()
            assert after["live"] == after["busy"] == 0
            assert before["pooled"] <= after["pooled"] <= POOL_MAX
            assert after["waiting"] == after["pooled"]  # each pooled channel's other end, and nothing else
            assert after["tasks"] <= before["tasks"] + POOL_MAX  # one "direct-serve" per waiting channel at most
            assert exit_.direct.counters["accepted"] == 1 + 200 + 5 * 3 * POOL_MAX
            assert handshakes <= 1 + 5 * 3 * POOL_MAX  # one-by-one connections reused channels

            alice.direct.close()  # the pool closes: the exit's waiting channels end too
            for _ in range(200):
                if not exit_.direct._waiting:
                    break
                await asyncio.sleep(0.01)
            idle = {"live": 0, "busy": 0, "pooled": 0, "waiting": 0}
            assert tables() == {**idle, "tasks": before["tasks"] - before["waiting"]}  # no serve task left either
        finally:
            for s in (exit_, alice):
                s.direct.close()
            server.close()
            inbound.close()
            echo.close()

    run(main())


def test_pooled_channels_are_used_while_new_ones_back_off(tmp_path: Path) -> None:
    """A refill that failed (e.g. the peer refused a punch past its rate limit) backs off new channels to that peer,
    not the healthy ones already pooled: new connections keep taking them instead of going through the hub
    (bench/RESULTS.md "Issue 15" found whole transfers relayed that way)."""

    async def main() -> None:
        mesh = Ca(pki.new_mesh_id())
        exit_ = endpoint(tmp_path, "exit", mesh)
        alice = endpoint(tmp_path, "alice", mesh)
        for s in (exit_, alice):
            await s.direct.refresh_crl()
        exit_.peers[alice.record.ep_id] = {"name": "alice-laptop", "user": "alice"}
        server, address = await serve(exit_)
        ep = exit_.record.ep_id
        try:
            first = await alice.direct.open(ep, address, "echo", "svc")
            first.reset()
            async with asyncio.timeout(5):  # the pool's background refill dials the listener
                while not any(c.usable for c in alice.direct._pool.get(ep, ())):
                    await asyncio.sleep(0.01)
            alice.direct._mark_failed(ep, "a refill was refused")  # as `_fill` does when no channel is left
            assert not alice.direct.reachable(ep)
            assert alice.direct.usable(ep, address)
            again = await alice.direct.open(ep, address, "echo", "svc")
            assert again.path == "direct"
            again.reset()
        finally:
            alice.direct.close()
            exit_.direct.close()
            server.close()

    run(main())
