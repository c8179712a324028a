"""Attacks on eviction, certificate lifetimes and enrolment (issue 12, items 1, 2 and 13), against real hub and agent
processes on loopback with real TLS.

* An evicted user's second HTTP/2 connection, opened before the eviction and held across it (as a modified agent
  would), can do nothing one second after `ztm evict` returned: no relayed stream, no file published, no services
  announced, no event stream (the endpoint does not come back online), no renewal, no enrolment.
* A connection is closed when its certificate expires.
* An endpoint certificate never outlives its user certificate (`ztm invite --days`), renewal does not extend past
  it, and the agent says plainly that the invitation expired.
* Enrolment beyond the per-user endpoint quota is refused; root deletes records (`ztm delete ep NAME`); an evicted
  user's endpoint names are free for others.

The attacker speaks the wire protocol with the evicted agent's own certificate files (tests/reliability/hubclient.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from e2eclient import layer_of, open_e2e
from integration.test_users import listed_offline, mesh_with_bob, save_certs
from reliability.hubclient import HubClient
from reliability.traffic import EchoServer
from support import Hub, by_name, invite, one_line_error, wait_until
from ztm import pki
from ztm.addr import Address
from ztm.permit import make_permit

MESH = "m"
Make = Callable[..., Any]


# ------------------------------------------------------------------------------------------------------ helpers


def ca_of(hub: Hub) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The mesh CA's key and certificate, read from the hub's database (to mint certificates as root's hub would)."""
    key, cert = hub.ca_pems()
    return pki.key_from_pem(key), pki.cert_from_pem(cert)


def cert_file(path: Path) -> x509.Certificate:
    return pki.cert_from_pem(path.read_text())


def csr(key_file: Path, ep_id: str) -> str:
    return pki.csr_to_pem(pki.make_csr(pki.key_from_pem(key_file.read_text()), name=ep_id))


def answered(client: HubClient, method: str, path: str, body: Any = None) -> str | None:
    """The request succeeded (2xx): a description; refused or failed (error status, closed connection): None."""
    try:
        status, got = client.json(method, path, body)
    except Exception:
        return None
    return f"{method} {path} answered {status}: {str(got)[:80]}" if status < 300 else None


def relayed(client: HubClient, target: str, service: str) -> str | None:
    """An app stream to `target` (a name) through the hub, end-to-end sealed as every app stream must be, carries
    bytes both ways: a description; else None."""

    async def attempt() -> str | None:
        status, _headers, raw = await client.conn.request("GET", "/api/endpoints", timeout=10)
        found = [e["id"] for e in json.loads(raw) if e.get("name") == target] if status == 200 else []
        if not found:
            return None
        stream = await open_e2e(client.conn, layer_of(client.files), found[0], "tunnel", service)
        try:
            await stream.write(b"evicted-but-still-here")
            data = await asyncio.wait_for(stream.read(), 5)
            return f"a relayed stream to {target} echoed {data!r}" if data else None
        finally:
            stream.reset()

    try:
        return client.run(attempt(), 20)
    except Exception:
        return None


def events_open(client: HubClient) -> str | None:
    """GET /api/events answers 200 and a hello (the endpoint would be online again): a description; else None."""

    async def attempt() -> str | None:
        stream = await client.conn.open_stream("GET", "/api/events")
        try:
            status, _ = await asyncio.wait_for(stream.response(), 5)
            if status != 200:
                return None
            line = await asyncio.wait_for(stream.read(), 5)
            return f"GET /api/events answered 200: {bytes(line)[:60]!r}" if line else None
        finally:
            stream.reset()

    try:
        return client.run(attempt(), 15)
    except Exception:
        return None


def empty_file(path: str) -> dict[str, Any]:
    return {"path": path, "size": 0, "time": 0, "hash": hashlib.sha256(b"").hexdigest(), "chunks": [], "acl": {}}


# -------------------------------------------------------------------------------------------------------- item 1


def test_a_connection_held_across_an_eviction_can_do_nothing_after(tmp_path: Path) -> None:
    hub, root, bob, _permit = mesh_with_bob(tmp_path)
    echo = EchoServer()
    try:
        root.cli("tunnel", "open", "outbound", "tcp/echo", "--targets", f"127.0.0.1:{echo.port}", "--users", "bob")
        files = save_certs(bob, tmp_path / "bob-files")
        shutil.copy2(bob.data / "meshes" / MESH / "user.key", files / "user.key")
        bob_ep = pki.identity_of(cert_file(files / "ep.crt")).ep_id
        assert bob_ep is not None
        with HubClient(hub.address, files) as held, HubClient(hub.address, files, user_cert=True) as held_user:
            # Before the eviction the attacker's extra connections work (the controls of the attacks below).
            assert answered(held, "GET", "/api/endpoints"), "bob's second connection did not work before eviction"
            wait_until(lambda: relayed(held, "alice", "tcp/echo"), 15, "bob's relayed stream to alice's echo exit")

            cp = root.cli("evict", "bob")
            evicted = time.monotonic()
            assert cp.stdout.startswith("evicted user bob"), cp.stdout
            with_deadline = True
            try:
                wait_until(lambda: not answered(held, "GET", "/api/endpoints"), 1.0, "bob's held connection to stop")
            except AssertionError:
                with_deadline = False
            elapsed = time.monotonic() - evicted

            worked = [
                relayed(held, "alice", "tcp/echo"),
                answered(held, "POST", "/api/files/entry", empty_file("/shared/bob/after-eviction.txt")),
                answered(held, "POST", "/api/services", {"app": "tunnel", "services": ["outbound/tcp/evil"]}),
                events_open(held),
                answered(held, "POST", "/api/renew", {"csr": csr(files / "ep.key", bob_ep)}),
                answered(
                    held_user,
                    "POST",
                    "/api/enroll",
                    {"ep_id": str(uuid.uuid4()), "name": "bob-again", "csr": csr(files / "ep.key", bob_ep)},
                ),
            ]
            worked = [w for w in worked if w]
            assert with_deadline and not worked, (
                f"{elapsed:.2f}s after `ztm evict bob` returned, bob's held connections still worked: {worked}"
            )
            assert held.conn.closed and held_user.conn.closed, "the hub kept the evicted user's connections open"
        # Nothing of it reached the mesh: bob stays offline, announced nothing, published nothing, enrolled nothing.
        assert listed_offline(root, "bob-laptop")
        eps = by_name(root.endpoints())
        assert "bob-again" not in eps, eps
        with HubClient(hub.address, root.data / "meshes" / MESH) as seen_by_root:
            status, services = seen_by_root.json("GET", "/api/services?app=tunnel")
            assert status == 200 and "evil" not in json.dumps(services), services
            status, listed = seen_by_root.json("GET", "/api/files?prefix=/shared/bob/")
            assert status == 200 and "after-eviction" not in json.dumps(listed), listed
    finally:
        echo.close()


def test_a_connection_is_closed_when_its_certificate_expires(make_mesh: Make, tmp_path: Path) -> None:
    hub, agents = make_mesh(("root",))
    root = agents["root"]
    root.join(MESH, "alice", hub.permit)
    files = save_certs(root, tmp_path / "short")
    ca_key, ca_cert = ca_of(hub)
    genuine = cert_file(files / "ep.crt")
    ep_id = pki.identity_of(genuine).ep_id
    assert ep_id is not None
    short = pki.issue_endpoint_cert(
        ca_key, ca_cert, user="root", ep_id=ep_id, public_key=pki.cert_public_key(genuine),
        now=dt.datetime.now(dt.UTC), ttl=dt.timedelta(seconds=3),
    )  # fmt: skip
    (files / "ep.crt").write_text(pki.cert_to_pem(short))
    expires = short.not_valid_after_utc.timestamp()
    with HubClient(hub.address, files) as client:
        assert answered(client, "GET", "/api/endpoints"), "the short-lived certificate was refused while valid"
        wait_until(lambda: time.time() > expires, 10, "the certificate to expire")
        wait_until(lambda: client.conn.closed, 1.0, "the hub to close the connection at its certificate's expiry")
        assert not answered(client, "GET", "/api/endpoints")


# -------------------------------------------------------------------------------------------------------- item 2


def test_an_endpoint_certificate_never_outlives_the_invitation(make_mesh: Make, tmp_path: Path) -> None:
    hub, agents = make_mesh(("root", "carol"), hub_extra=["--cert-ttl", str(3 * 86400)])
    root, carol = agents["root"], agents["carol"]
    root.join(MESH, "alice", hub.permit)
    identity = tmp_path / "carol.pem"
    identity.write_text(carol.cli("identity").stdout)
    permit = tmp_path / "carol.json"
    root.cli("invite", "carol", "--identity", identity, "--permit", permit, "--days", "1")
    carol.join(MESH, "carol-pc", permit)
    files = carol.data / "meshes" / MESH
    user_end = cert_file(files / "user.crt").not_valid_after_utc
    ep = cert_file(files / "ep.crt")
    assert ep.not_valid_after_utc <= user_end, f"endpoint cert ends {ep.not_valid_after_utc}, invitation {user_end}"
    ep_id = pki.identity_of(ep).ep_id
    assert ep_id is not None
    with HubClient(hub.address, files) as client:
        status, got = client.json("POST", "/api/renew", {"csr": csr(files / "ep.key", ep_id)})
    if status == 200:
        renewed = pki.cert_from_pem(got["certificate"]).not_valid_after_utc
        assert renewed <= user_end, f"renewal issued a certificate until {renewed}, past the invitation's {user_end}"
    else:
        assert "invitation" in got["error"], got


def test_the_agent_says_the_invitation_expired(make_mesh: Make, tmp_path: Path) -> None:
    """A user certificate of a few seconds (minted as `ztm invite` would, shorter than its --days allows): the
    endpoint goes offline when it ends, renewal does not extend it, and `ztm get mesh` says why."""
    hub, agents = make_mesh(("root", "dave"))
    root, dave = agents.values()
    root.join(MESH, "alice", hub.permit)
    invited = invite(root, dave, "dave", tmp_path / "dave-invited.json")
    ca_key, ca_cert = ca_of(hub)
    lifetime = 8
    user_cert = pki.cert_from_pem(json.loads(invited.read_text())["agent"]["certificate"])
    user_cert = _shortened(ca_key, ca_cert, user_cert, lifetime)
    permit = tmp_path / "dave.json"
    permit.write_text(make_permit(ca_cert, user_cert, [Address.parse(hub.address)]).to_json())
    dave.join(MESH, "dave-pc", permit)
    end = user_cert.not_valid_after_utc.timestamp()
    assert cert_file(dave.data / "meshes" / MESH / "ep.crt").not_valid_after_utc.timestamp() <= end

    def told() -> dict[str, Any] | None:
        mesh = dave.meshes()[0]
        return mesh if mesh["status"] != "online" and "invitation" in str(mesh["error"]) else None

    mesh = wait_until(told, lifetime + 10, "dave's agent to say its invitation expired")
    assert time.time() >= end - 0.5, "the endpoint went offline before its invitation ended"
    assert "ztm invite" in mesh["error"] or "new permit" in mesh["error"], mesh["error"]
    assert listed_offline(root, "dave-pc")


def _shortened(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cert: x509.Certificate, seconds: int
) -> x509.Certificate:
    """`cert` re-issued by the CA with the same subject, SANs and key, valid for `seconds` from now."""
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(seconds=seconds))
    )
    for ext in cert.extensions:
        builder = builder.add_extension(ext.value, ext.critical)
    return builder.sign(ca_key, hashes.SHA256())


# ------------------------------------------------------------------------------------------------------- item 13


def _enroll(client: HubClient, key: Path, name: str) -> tuple[int, Any]:
    ep_id = str(uuid.uuid4())
    return client.json("POST", "/api/enroll", {"ep_id": ep_id, "name": name, "csr": csr(key, ep_id)})


def test_enrolment_beyond_the_per_user_quota_is_refused(make_mesh: Make, tmp_path: Path) -> None:
    hub, agents = make_mesh(("root", "bob"), hub_extra=["--max-endpoints-per-user", "3"])
    root, bob = agents.values()
    root.join(MESH, "alice", hub.permit)
    permit = tmp_path / "bob.json"
    identity = tmp_path / "bob.pem"
    identity.write_text(bob.cli("identity").stdout)
    root.cli("invite", "bob", "--identity", identity, "--permit", permit)
    bob.join(MESH, "bob-laptop", permit)
    files = bob.data / "meshes" / MESH
    with HubClient(hub.address, files, user_cert=True) as client:
        assert _enroll(client, files / "ep.key", "bob-2")[0] == 200
        assert _enroll(client, files / "ep.key", "bob-3")[0] == 200
        status, got = _enroll(client, files / "ep.key", "bob-4")
        assert status == 409 and "bob-4" not in by_name(root.endpoints()), (status, got)
        assert "3 endpoints" in got["error"] and "ztm delete ep" in got["error"], got

        # Only root deletes records; afterwards the name and the quota slot are free again.
        line = one_line_error(bob.cli("delete", "ep", "bob-2", check=False))
        assert "only root" in line, line
        assert "bob-2" in by_name(root.endpoints())
        assert root.cli("delete", "ep", "bob-2").stdout.startswith("deleted endpoint bob-2")
        assert "bob-2" not in by_name(root.endpoints())
        line = one_line_error(root.cli("delete", "ep", "bob-2", check=False))
        assert "no endpoint named bob-2" in line, line
        assert _enroll(client, files / "ep.key", "bob-4")[0] == 200


def test_one_user_cannot_hoard_endpoint_records(make_mesh: Make, tmp_path: Path) -> None:
    """The attack of the review: on a hub with --max-agents 5, one user enrolled 105 records (names held for good),
    because only sessions were counted. Now the default per-user quota (100) stops it."""
    hub, agents = make_mesh(("root", "bob"), hub_extra=["--max-agents", "5"])
    root, bob = agents.values()
    root.join(MESH, "alice", hub.permit)
    bob.join(MESH, "bob-laptop", invite(root, bob, "bob", tmp_path / "bob.json"))
    files = bob.data / "meshes" / MESH
    with HubClient(hub.address, files, user_cert=True) as client:
        answers = [_enroll(client, files / "ep.key", f"hoard-{i}") for i in range(105)]
    enrolled = sum(1 for status, _ in answers if status == 200)
    assert enrolled == 99, f"bob enrolled {enrolled} more records beside bob-laptop (the quota is 100 in all)"
    status, got = answers[-1]
    assert status == 409 and "100 endpoints" in got["error"], (status, got)
    assert sum(1 for e in root.endpoints() if e["user"] == "bob") == 100


def test_an_evicted_users_endpoint_names_are_released(make_agent: Make, tmp_path: Path) -> None:
    _hub, root, _bob, _permit = mesh_with_bob(tmp_path)
    carol = make_agent("carol")
    root.cli("evict", "bob")
    wait_until(lambda: listed_offline(root, "bob-laptop"), 5, "bob-laptop to go offline")
    permit = tmp_path / "carol.json"
    identity = tmp_path / "carol.pem"
    identity.write_text(carol.cli("identity").stdout)
    root.cli("invite", "carol", "--identity", identity, "--permit", permit)
    carol.join(MESH, "bob-laptop", permit)
    eps = by_name(root.endpoints())
    assert eps["bob-laptop"]["user"] == "carol" and eps["bob-laptop"]["online"], eps


def test_deleting_an_online_endpoint_ends_its_access(tmp_path: Path) -> None:
    hub, root, bob, _permit = mesh_with_bob(tmp_path)
    files = save_certs(bob, tmp_path / "bob-files")
    with HubClient(hub.address, files) as held:
        assert answered(held, "GET", "/api/endpoints")
        root.cli("delete", "ep", "bob-laptop")
        wait_until(lambda: held.conn.closed, 1.0, "the hub to close the deleted endpoint's connections")
    assert "bob-laptop" not in by_name(root.endpoints())
