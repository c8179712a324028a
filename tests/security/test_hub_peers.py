"""Attacks on the hub-to-hub routes (issue 14 item 3), against a real hub process on 127.0.0.1.

A hub admits other hubs of its mesh (a hub certificate, `ztm://MESH/hub/ID`, of a hub in the store's hubs table) on
its normal listener, and lets them do exactly two things: forward an app stream (`CONNECT` with `ztm-caller`) and
forward a relayed call (`POST /api/endpoints/EP/call` with `ztm-caller`), to an endpoint whose session is on that
hub. The tests:

- a hub peer asks for everything else (users, endpoints, files, enrolment, the event stream, the log, invitations,
  accepting a stream, answering a call, the CRL): 403 every time;
- a hub peer forwards a call to an endpoint of this hub: it is run, as from the caller the header names, which
  must be an endpoint of the registry whose user is a member (not evicted);
- a forwarded stream or call for an endpoint that is not on this hub is never forwarded again (503);
- the per-caller cap on streams waiting for their targets holds for forwarded streams too (the caller named by the
  forwarding hub is counted like a local one);
- a hub certificate of this mesh whose hub id is not a registered hub, and a hub certificate of another mesh, are
  refused at connect;
- an endpoint (a member) names another caller in `ztm-caller` on a stream or a call: refused (403), so a member can
  never pose as another endpoint through the hub.

The hub peer here is a test client holding a hub certificate: the hub's own (`DATA/hub-tls/`, a registered hub
id, as each hub of a cluster is) or one minted with the mesh CA from the hub's database (what the hub operator
could mint). Every wait polls with a deadline.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reliability.hubclient import HubClient
from support import Agent, Hub, invite, split_hostport, start_hub, start_hub_and_agents
from ztm import h2, pki
from ztm.version import E2E_VERSION

MESH = "m"
CALL = json.dumps({"method": "ping", "params": None, "timeout": 5}).encode()
JSON = [("content-type", "application/json")]


class HubCertClient(HubClient):
    """A raw HTTP/2 connection to a hub with a hub certificate (`cert` holds the chain, `key` its key)."""

    def __init__(self, address: str, ca: Path, cert: Path, key: Path) -> None:
        self._ca, self._cert, self._key = ca, cert, key
        super().__init__(address, cert.parent)

    async def _connect(self) -> h2.Connection:
        host, port = split_hostport(self.address)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(cafile=str(self._ca))
        ctx.load_cert_chain(str(self._cert), str(self._key))
        return await h2.connect(host, port, ctx, timeout=10.0, keepalive=None)


@dataclass
class World:
    hub: Hub
    exit: Agent
    """root's endpoint `exit` on the hub."""
    mallory: Agent
    """user mallory's endpoint `m`: a member."""
    exit_id: str
    mallory_id: str
    ca: Path
    tmp: Path

    def hub_peer(self) -> HubCertClient:
        """A client with this hub's own certificate: a registered hub of the mesh."""
        tls = self.hub.data / "hub-tls"
        return HubCertClient(self.hub.address, self.ca, tls / "hub.crt", tls / "hub.key")

    def member(self, agent: Agent) -> HubClient:
        return HubClient(self.hub.address, agent.data / "meshes" / MESH)


def _ep_id(agent: Agent) -> str:
    identity = pki.identity_of(pki.cert_from_pem((agent.data / "meshes" / MESH / "ep.crt").read_text()))
    assert identity.ep_id is not None
    return identity.ep_id


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    hub, agents = start_hub_and_agents(tmp_path, ("exit", "mallory"))
    exit_agent, mallory = agents["exit"], agents["mallory"]
    try:
        exit_agent.join(MESH, "exit", hub.permit)
        permit = invite(exit_agent, mallory, "mallory", tmp_path / "mallory.json")
        mallory.join(MESH, "m", permit)
        ca = tmp_path / "ca.pem"
        ca.write_text(hub.ca_pems()[1])
        yield World(hub, exit_agent, mallory, _ep_id(exit_agent), _ep_id(mallory), ca, tmp_path)
    finally:
        for proc in (mallory.proc, exit_agent.proc, hub.proc):
            proc.stop()


def _caller(ep: str, name: str, user: str) -> tuple[str, str]:
    return ("ztm-caller", json.dumps({"ep": ep, "name": name, "user": user}))


def _connect_status(client: HubClient, target: str, headers: list[tuple[str, str]]) -> tuple[int, dict[str, str]]:
    """Open a CONNECT to `target` and return the hub's answer (status, JSON body)."""

    async def go() -> tuple[int, bytes]:
        stream = await client.conn.open_stream("CONNECT", target, headers)
        try:
            status, _ = await stream.response()
            return status, await stream.read_all() if status != 200 else b"{}"
        finally:
            stream.reset()

    status, raw = client.run(go(), 20)
    return status, json.loads(raw)


def test_a_hub_peer_may_only_forward(world: World) -> None:
    with world.hub_peer() as peer:
        attempts = [
            ("GET", "/api/status", None),
            ("GET", "/api/users", None),
            ("GET", "/api/endpoints", None),
            ("GET", f"/api/endpoints/{world.exit_id}", None),
            ("POST", "/api/enroll", b"{}"),
            ("POST", "/api/renew", b"{}"),
            ("POST", "/api/heartbeat", b"{}"),
            ("GET", "/api/events", None),
            ("GET", "/api/log", None),
            ("GET", "/api/files", None),
            ("POST", "/api/files/entry", b"{}"),
            ("GET", "/api/services?app=tunnel", None),
            ("POST", "/api/services", b'{"app": "tunnel", "services": ["tcp/x"]}'),
            ("POST", "/api/users/eve/invite", b"{}"),
            ("POST", "/api/users/mallory/evict", b"{}"),
            ("DELETE", f"/api/endpoints/{world.mallory_id}", None),
            ("POST", f"/api/endpoints/{world.exit_id}/labels", b'{"add": ["x"]}'),
            ("POST", "/api/calls/" + "0" * 32, b"{}"),
            ("GET", "/api/crl", None),
            ("POST", "/api/direct", b'{"port": 1}'),
        ]
        for method, path, body in attempts:
            status, answer = peer.request(method, path, body, [_caller(world.exit_id, "exit", "root")])
            assert status == 403, f"{method} {path} by a hub peer: {status} {answer}"
            assert "may only forward" in answer["error"], answer
        # Accepting a stream is an endpoint's act, never a hub's.
        status, answer = _connect_status(peer, "ztm", [("ztm-accept", "0" * 32)])
        assert status == 403 and "may only forward" in answer["error"], (status, answer)
        # What it may do: forward a call from mallory to exit, whose session is on this hub.
        status, answer = peer.request(
            "POST", f"/api/endpoints/{world.exit_id}/call", CALL, [*JSON, _caller(world.mallory_id, "m", "mallory")]
        )
        assert status == 200 and "time" in answer["result"], (status, answer)
        # ... and only with the caller named, as a verified member of the mesh.
        status, answer = peer.request("POST", f"/api/endpoints/{world.exit_id}/call", CALL, JSON)
        assert status == 400 and "ztm-caller" in answer["error"], (status, answer)
        status, answer = peer.request(
            "POST", f"/api/endpoints/{world.exit_id}/call", CALL, [*JSON, _caller(world.mallory_id, "m", "root")]
        )
        assert status == 403 and "belongs to user 'mallory'" in answer["error"], (status, answer)
        # ... whose user is a member now: once mallory is evicted, no hub may forward for her endpoint.
        world.exit.cli("evict", "mallory")
        status, answer = peer.request(
            "POST", f"/api/endpoints/{world.exit_id}/call", CALL, [*JSON, _caller(world.mallory_id, "m", "mallory")]
        )
        assert status == 403 and "not a member" in answer["error"], (status, answer)


def test_a_forwarded_request_is_never_forwarded_again(world: World) -> None:
    world.mallory.proc.stop()  # its endpoint is on no hub now
    with world.hub_peer() as peer:
        caller = _caller(world.exit_id, "exit", "root")
        status, answer = peer.request("POST", f"/api/endpoints/{world.mallory_id}/call", CALL, [*JSON, caller])
        assert status == 503 and "is not on this hub" in answer["error"], (status, answer)
        headers = [("ztm-app", "tunnel"), ("ztm-service", "tcp/x"), ("ztm-e2e", "1"), caller]
        status, answer = _connect_status(peer, world.mallory_id, headers)
        assert status == 503 and "is not on this hub" in answer["error"], (status, answer)


def _refused_at_connect(world: World, cert: Path, key: Path) -> str:
    with pytest.raises(h2.H2Error) as caught:
        HubCertClient(world.hub.address, world.ca, cert, key).close()
    return str(caught.value)


def test_a_hub_certificate_of_an_unregistered_hub_is_refused(world: World) -> None:
    ca_key, ca_cert = (pki.key_from_pem(world.hub.ca_pems()[0]), pki.cert_from_pem(world.hub.ca_pems()[1]))
    key = pki.new_key()
    cert = pki.issue_hub_cert(
        ca_key, ca_cert, hub_id=pki.new_hub_id(), names=["127.0.0.1"], public_key=key.public_key(),
        now=dt.datetime.now(dt.UTC),
    )  # fmt: skip
    cert_file, key_file = world.tmp / "rogue-hub.crt", world.tmp / "rogue-hub.key"
    cert_file.write_text(pki.cert_to_pem(cert))
    pki.write_private(key_file, pki.key_to_pem(key))
    _refused_at_connect(world, cert_file, key_file)
    assert "is not a hub of this mesh" in world.hub.proc.output()


def test_a_hub_certificate_of_another_mesh_is_refused(world: World) -> None:
    other = start_hub(world.tmp, name="other-hub")
    try:
        tls = other.data / "hub-tls"
        message = _refused_at_connect(world, tls / "hub.crt", tls / "hub.key")
        assert "certificate" in message.lower() or "refused" in message.lower() or "closed" in message.lower(), message
    finally:
        other.proc.stop()


def test_a_member_cannot_name_another_caller(world: World) -> None:
    # mallory claims to be root's `exit` endpoint when calling it and when opening a stream to it.
    forged = _caller(world.exit_id, "exit", "root")
    with world.member(world.mallory) as client:
        status, answer = client.request("POST", f"/api/endpoints/{world.exit_id}/call", CALL, [*JSON, forged])
        assert status == 403 and "ztm-caller" in answer["error"], (status, answer)
        headers = [("ztm-app", "tunnel"), ("ztm-service", "tcp/x"), ("ztm-e2e", "1"), forged]
        status, answer = _connect_status(client, world.exit_id, headers)
        assert status == 403 and "ztm-caller" in answer["error"], (status, answer)
        # Without the header, the same call is an ordinary member's call (the control).
        status, answer = client.request("POST", f"/api/endpoints/{world.exit_id}/call", CALL, JSON)
        assert status == 200 and "time" in answer["result"], (status, answer)


def test_the_callers_cap_holds_for_forwarded_streams(world: World) -> None:
    """A hub forwards a flood of streams from mallory to an exit that does not answer (frozen): the receiving hub
    holds at most 256 of them waiting, as for a local caller, and refuses the next with 503."""
    pid = world.exit.proc.pid
    os.kill(pid, signal.SIGSTOP)  # still online at the hub, but it accepts nothing
    try:
        with world.hub_peer() as peer:
            headers = [("ztm-app", "tunnel"), ("ztm-service", "tcp/x"), ("ztm-e2e", E2E_VERSION)]
            headers.append(_caller(world.mallory_id, "m", "mallory"))

            async def flood() -> tuple[int, bytes]:
                streams = [await peer.conn.open_stream("CONNECT", world.exit_id, headers) for _ in range(257)]
                try:
                    status, _ = await streams[-1].response()
                    return status, await streams[-1].read_all()
                finally:
                    for stream in streams:
                        stream.reset()

            status, raw = peer.run(flood(), 30)
            answer = json.loads(raw)
            assert status == 503 and "already has 256 streams waiting" in answer["error"], (status, answer)
    finally:
        os.kill(pid, signal.SIGCONT)
