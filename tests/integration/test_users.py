"""Users of a mesh through the `ztm` command line: invitations, who may invite and evict, and eviction enforced at
the hub's TLS handshake (checked with raw TLS connections and with curl as an independent HTTP/2 client).

Real hub and agent processes on 127.0.0.1 with real TLS; every wait polls with a deadline (tests/support.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from support import (
    Agent,
    Hub,
    by_name,
    holds_for,
    invite,
    one_line_error,
    restart_agent,
    run,
    split_hostport,
    start_hub_and_agents,
    wait_until,
)

MESH = "m"
Make = Callable[..., Any]
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
CURL = shutil.which("curl")


# ------------------------------------------------------------------------------------------------------ helpers


def the_mesh(agent: Agent) -> dict[str, Any]:
    meshes = agent.meshes()
    assert [m.get("name") for m in meshes] == [MESH], f"{agent.name}: ztm get mesh lists {meshes}"
    return meshes[0]


def listed_offline(root: Agent, name: str) -> bool:
    """Root's agent asks the hub (API, no CLI start-up time) and sees `name` listed offline."""
    status, eps = root.api("GET", f"/api/meshes/{MESH}/endpoints")
    assert status == 200, f"root's agent could not list the endpoints: {status} {eps}"
    ep = by_name(eps).get(name)
    return ep is not None and ep["online"] is False


@dataclass
class Probe:
    """What a raw TLS 1.3 + HTTP/2 client saw at the hub."""

    handshake: bool
    """The client's side of the handshake completed (with TLS 1.3 it does before the server checks our cert)."""
    first_read: bytes | None
    """The first bytes the hub sent after our HTTP/2 preface; b"" when it closed; None when reading raised."""
    error: str | None
    """The TLS error (alert) or OS error met, if any."""

    @property
    def accepted(self) -> bool:
        """The hub answered our preface with its HTTP/2 SETTINGS frame: it took us in."""
        data = self.first_read
        return data is not None and len(data) >= 9 and data[3] == 0x04


def tls_probe(address: str, ca: Path, cert: Path, key: Path) -> Probe:
    """Connect to the hub with a client certificate, TLS 1.3 and ALPN h2, send the HTTP/2 preface and read once."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # as the agent: the hub is identified by the mesh CA, not by a host name
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["h2"])
    host, port = split_hostport(address)
    with socket.create_connection((host, port), timeout=5) as raw:
        try:
            tls = ctx.wrap_socket(raw)
        except (ssl.SSLError, OSError) as exc:
            return Probe(False, None, f"{type(exc).__name__}: {exc}")
        with tls:
            assert tls.version() == "TLSv1.3" and tls.selected_alpn_protocol() == "h2"
            try:
                tls.sendall(H2_PREFACE + EMPTY_SETTINGS)
                return Probe(True, tls.recv(65536), None)
            except (ssl.SSLError, OSError) as exc:
                return Probe(True, None, f"{type(exc).__name__}: {exc}")


def save_certs(agent: Agent, into: Path) -> Path:
    """Copy the agent's TLS files of MESH (ca.pem, ep.crt, ep.key, user.crt) to `into`."""
    into.mkdir()
    for name in ("ca.pem", "ep.crt", "ep.key", "user.crt"):
        shutil.copy2(agent.data / "meshes" / MESH / name, into / name)
    return into


def mesh_with_bob(tmp_path: Path) -> tuple[Hub, Agent, Agent, Path]:
    """A hub, root's agent `alice` and bob's agent `bob-laptop` (invited), both online."""
    hub, agents = start_hub_and_agents(tmp_path, ("root", "bob"))
    root, bob = agents["root"], agents["bob"]
    root.join(MESH, "alice", hub.permit)
    permit = invite(root, bob, "bob", tmp_path / "bob.json")
    bob.join(MESH, "bob-laptop", permit)
    return hub, root, bob, permit


def evict_bob(root: Agent) -> float:
    """`ztm evict bob` on root's agent; returns how long after the command returned the hub listed bob offline."""
    cp = root.cli("evict", "bob")
    returned = time.monotonic()
    assert cp.stdout.startswith("evicted user bob from mesh m"), cp.stdout
    wait_until(lambda: listed_offline(root, "bob-laptop"), 5, "the hub to list bob-laptop offline after the eviction")
    return time.monotonic() - returned


# -------------------------------------------------------------------------------------------------------- tests


def test_invite_flow(make_mesh: Make, tmp_path: Path) -> None:
    hub, agents = make_mesh(("root", "bob"))
    root, bob = agents.values()
    root.join(MESH, "alice", hub.permit)

    identity = tmp_path / "bob.pem"
    identity.write_text(bob.cli("identity").stdout)
    assert identity.read_text().startswith("-----BEGIN PUBLIC KEY-----")
    permit = tmp_path / "bob.json"
    cp = root.cli("invite", "bob", "--identity", identity, "--permit", permit)
    assert f"wrote {permit} (mode 0600)" in cp.stdout and "no private key" in cp.stdout

    assert os.stat(permit).st_mode & 0o777 == 0o600
    data = json.loads(permit.read_text())
    assert set(data) == {"ca", "agent", "bootstraps"}, data.keys()
    assert "privateKey" not in data["agent"] and "PRIVATE KEY" not in permit.read_text()
    assert data["bootstraps"] == [hub.address]
    # The certificate certifies bob's own key, as user bob of this mesh.
    cert = x509.load_pem_x509_certificate(data["agent"]["certificate"].encode())
    spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    assert cert.public_key().public_bytes(*spki).decode() == identity.read_text()
    uris = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.UniformResourceIdentifier
    )
    mesh_id = the_mesh(root)["mesh_id"]
    assert uris == [f"ztm://{mesh_id}/user/bob"], uris

    # Writing the permit again without --force is refused; nothing is overwritten.
    before = permit.read_bytes()
    line = one_line_error(root.cli("invite", "bob", "--identity", identity, "--permit", permit, check=False))
    assert "--force" in line, line
    assert permit.read_bytes() == before

    bob.join(MESH, "bob-laptop", permit)
    mesh = the_mesh(bob)
    assert mesh["user"] == "bob" and mesh["status"] == "online" and mesh["ep_name"] == "bob-laptop"
    for agent in (root, bob):
        eps = by_name(agent.endpoints())
        assert eps["bob-laptop"]["user"] == "bob" and eps["bob-laptop"]["online"] is True
        assert eps["alice"]["user"] == "root"
    rows = [line.split() for line in root.cli("get", "ep").stdout.splitlines()[1:]]
    assert rows[1][:3] == ["bob-laptop", "bob", "online"], rows


def test_a_permit_for_another_identity_is_refused(make_mesh: Make, tmp_path: Path) -> None:
    hub, agents = make_mesh(("root", "bob", "mallory"))
    root, bob, mallory = agents.values()
    root.join(MESH, "alice", hub.permit)
    permit = invite(root, bob, "bob", tmp_path / "bob.json")

    cp = mallory.cli("join", MESH, "--as", "bob-laptop", "--permit", permit, check=False)
    line = one_line_error(cp)
    assert "another agent's identity" in line and "ztm identity" in line, line
    assert mallory.meshes() == []
    assert "has not joined any mesh" in mallory.cli("get", "mesh").stdout
    assert not (mallory.data / "meshes" / MESH).exists(), "a refused join left TLS files behind"
    assert "bob-laptop" not in by_name(root.endpoints()), "the hub enrolled an endpoint for a refused permit"
    # The permit still works for the agent it was made for.
    bob.join(MESH, "bob-laptop", permit)
    assert by_name(root.endpoints())["bob-laptop"]["online"] is True


def test_only_root_invites_and_evicts(tmp_path: Path) -> None:
    _hub, root, bob, _permit = mesh_with_bob(tmp_path)
    carol = tmp_path / "carol.pem"
    carol.write_text(root.cli("identity").stdout)

    line = one_line_error(bob.cli("invite", "carol", "--identity", carol, "--permit", tmp_path / "c.json", check=False))
    assert "only root may invite" in line, line
    assert not (tmp_path / "c.json").exists()
    for user in ("root", "bob"):
        line = one_line_error(bob.cli("evict", user, check=False))
        assert "only root may evict" in line, line
    line = one_line_error(bob.cli("log", "hub", check=False))
    assert "root" in line, line
    line = one_line_error(bob.cli("log", "ep", "alice", check=False))
    assert "root" in line, line
    # Nothing changed: both still online, bob is not evicted.
    assert {"alice", "bob-laptop"} <= root.online_names()
    assert the_mesh(bob)["status"] == "online"
    line = one_line_error(root.cli("evict", "root", check=False))
    assert "root cannot be evicted" in line, line


def test_evict_is_immediate_and_enforced_at_the_tls_handshake(make_agent: Make, tmp_path: Path) -> None:
    hub, root, bob, _permit = mesh_with_bob(tmp_path)
    root2 = make_agent("root2")
    root2.join(MESH, "alice2", hub.permit)
    before = by_name(root.endpoints())

    elapsed = evict_bob(root)
    assert elapsed < 1.0, f"the hub listed bob-laptop offline {elapsed:.2f}s after ztm evict returned"

    def bob_told() -> dict[str, Any] | None:
        mesh = the_mesh(bob)
        return mesh if mesh["status"] != "online" and "evict" in str(mesh["error"]) else None

    mesh = wait_until(bob_told, 5, "bob's agent to report the mesh not online because of the eviction")
    assert mesh["status"] == "error", mesh
    # Root's endpoints stayed online on the very same sessions.
    after = by_name(root.endpoints())
    for name in ("alice", "alice2"):
        assert after[name]["online"] is True, after[name]
        assert after[name]["online_since"] == before.get(name, after[name])["online_since"], name
    rows = {r.split()[0]: r.split() for r in root.cli("get", "ep").stdout.splitlines()[1:]}
    assert rows["bob-laptop"][1:3] == ["bob", "offline"], rows

    # The refusal happens at the TLS handshake: bob's endpoint and user certificates are both turned away...
    bob_dir = bob.data / "meshes" / MESH
    ca = bob_dir / "ca.pem"
    with_ep = tls_probe(hub.address, ca, bob_dir / "ep.crt", bob_dir / "ep.key")
    with_user = tls_probe(hub.address, ca, bob_dir / "user.crt", bob_dir / "ep.key")
    # ...while root's endpoint certificate from another agent's directory gets in.
    root_dir = root.data / "meshes" / MESH
    with_root = tls_probe(hub.address, root_dir / "ca.pem", root_dir / "ep.crt", root_dir / "ep.key")
    assert with_root.accepted, f"root's endpoint certificate was not taken in: {with_root}"
    assert not with_ep.accepted, f"the hub took in bob's endpoint certificate after the eviction: {with_ep}"
    assert not with_user.accepted, f"the hub took in bob's user certificate after the eviction: {with_user}"
    # The post-handshake check (second line) never saw bob: the handshake itself failed.
    assert not re.search(r"refused bob from", hub.proc.output()), "bob got past the TLS handshake"

    # curl as an independent HTTP/2 client: root's certificate gets the hub status, bob's does not.
    assert CURL, "curl is needed for the interop check"
    url = f"https://{hub.address}/api/status"
    cp = run([CURL, "-sS", "--http2", "--max-time", "10", "--cacert", root_dir / "ca.pem",
              "--cert", root_dir / "ep.crt", "--key", root_dir / "ep.key", url])  # fmt: skip
    status = json.loads(cp.stdout)
    assert status["mesh_id"] == the_mesh(root)["mesh_id"] and status["hub_id"], status
    cp = run([CURL, "-sS", "--http2", "--max-time", "10", "--cacert", ca, "--cert", bob_dir / "ep.crt",
              "--key", bob_dir / "ep.key", url], check=False)  # fmt: skip
    assert cp.returncode != 0 and "mesh_id" not in cp.stdout, cp

    # With TLS 1.3 the client sees the refusal on its first read. OpenSSL queues a 'certificate revoked' alert, but
    # asyncio's and uvloop's TLS layers drop queued output when a handshake fails, so the client may see a bare
    # close instead (a known limitation, see PROTOCOL.md). Either way it never receives an HTTP/2 frame.
    for what, probe in (("endpoint", with_ep), ("user", with_user)):
        assert probe.error is not None or not probe.accepted, f"bob's {what} certificate: {probe}"
        if probe.error and "alert" in probe.error:
            assert re.search(r"alert certificate revoked", probe.error, re.I), probe


def test_an_evicted_agent_stays_out_after_a_restart(tmp_path: Path) -> None:
    _hub, root, bob, _permit = mesh_with_bob(tmp_path)
    evict_bob(root)
    restart_agent(bob)
    mark = len(bob.proc.output())

    def still_out() -> bool:
        assert listed_offline(root, "bob-laptop"), "bob-laptop came back online after its eviction"
        status, mesh = bob.api("GET", f"/api/meshes/{MESH}")
        assert status == 200 and mesh["status"] != "online", f"bob's restarted agent says {mesh}"
        return True

    def refusals() -> int:
        return bob.proc.output()[mark:].count("cannot reach a hub of this mesh")

    # Watch for 3 s and until the restarted agent has been turned away at least 3 times.
    holds_for(still_out, 3.0, "bob's restarted agent staying out")
    wait_until(lambda: still_out() and refusals() >= 3, 15, "bob's agent to be refused 3 times")
    mesh = the_mesh(bob)
    assert mesh["status"] == "error" and mesh["error"], mesh
    assert re.search(r"evict|revok|refus|did not accept", mesh["error"]), mesh["error"]
    assert by_name(root.endpoints())["alice"]["online"] is True


def test_a_new_invitation_lets_bob_back_but_old_certificates_stay_revoked(tmp_path: Path) -> None:
    hub, root, bob, _permit = mesh_with_bob(tmp_path)
    old = save_certs(bob, tmp_path / "old-certs")
    old_ep_id = the_mesh(bob)["ep_id"]
    evict_bob(root)

    permit2 = invite(root, bob, "bob", tmp_path / "bob2.json")
    assert permit2.read_bytes() != (tmp_path / "bob.json").read_bytes()
    line = one_line_error(bob.cli("join", MESH, "--as", "bob-laptop", "--permit", permit2, check=False))
    assert f"ztm leave {MESH}" in line, line  # still joined (evicted): leave first
    bob.cli("leave", MESH)
    bob.join(MESH, "bob-laptop", permit2)

    mesh = the_mesh(bob)
    assert mesh["status"] == "online" and mesh["user"] == "bob" and mesh["ep_id"] != old_ep_id
    eps = [e for e in root.endpoints() if e["name"] == "bob-laptop"]
    assert len(eps) == 1 and eps[0]["online"] is True and eps[0]["user"] == "bob", eps
    bob.cli("ping", "ep", "alice", "--count", "1")

    new = bob.data / "meshes" / MESH
    assert tls_probe(hub.address, new / "ca.pem", new / "ep.crt", new / "ep.key").accepted
    for name in ("ep.crt", "user.crt"):
        probe = tls_probe(hub.address, old / "ca.pem", old / name, old / "ep.key")
        assert not probe.accepted, f"bob's old {name} from before the eviction was taken in again: {probe}"
