"""Attacks on an endpoint by insiders of a mesh, against real hub and agent processes on 127.0.0.1 (issue 12).

- Cross-mesh identity on the direct listener: the operator of mesh B (who holds B's CA key) forges a certificate
  that claims to be root's endpoint of mesh A, signs it with B's CA and presents it to an agent that joined both
  meshes, naming mesh B in SNI. The agent must take the identity's mesh from the CA that verified the chain: the
  channel is refused (and counted), never served as root of mesh A.

Every wait polls with a deadline.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import sqlite3
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from support import Agent, Hub, free_port, start_agent, start_hub, wait_until
from ztm import pki


def _hub_ca(hub: Hub) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """What the hub's operator holds: the mesh CA's key and certificate (from the hub's database)."""
    db = sqlite3.connect(f"file:{hub.data / 'ztm-hub.db'}?mode=ro", uri=True)
    try:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
    finally:
        db.close()
    return pki.key_from_pem(meta["ca_key"]), pki.cert_from_pem(meta["ca_cert"])


def _identity(agent: Agent, mesh: str) -> pki.Identity:
    cert = pki.cert_from_pem((agent.data / "meshes" / mesh / "ep.crt").read_text())
    return pki.identity_of(cert)


def _metric(agent: Agent, name: str) -> float:
    status, text = agent.api("GET", "/api/metrics")
    assert status == 200, text
    total = 0.0
    for line in str(text).splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ------------------------------------------------------------------------------- item 3: cross-mesh identity


@dataclass
class TwoMeshes:
    hub_a: Hub
    hub_b: Hub
    home: Agent
    """root's endpoint in mesh A (its id is what the forger claims)."""
    victim: Agent
    """joined to mesh A (as `exit`, with an outbound only root's `home` may use) and to mesh B; listens --direct."""
    direct: int
    target: socket.socket
    """The service behind the victim's outbound: whoever reaches it got through."""
    tmp: Path


@pytest.fixture
def two_meshes(tmp_path: Path) -> Iterator[TwoMeshes]:
    hub_a, hub_b = start_hub(tmp_path, name="hub-a"), start_hub(tmp_path, name="hub-b")
    direct = free_port()
    home = start_agent(tmp_path, "home")
    victim = start_agent(tmp_path, "victim", extra=["--direct", f"127.0.0.1:{direct}"])
    target = socket.create_server(("127.0.0.1", 0))
    target.settimeout(0.2)
    try:
        home.join("a", "home", hub_a.permit)
        victim.join("a", "exit", hub_a.permit)
        victim.join("b", "exit-b", hub_b.permit)
        port = target.getsockname()[1]
        victim.cli("--mesh", "a", "tunnel", "open", "outbound", "tcp/db", "--targets", f"127.0.0.1:{port}",
                   "--users", "root", "--entrances", "home")  # fmt: skip
        yield TwoMeshes(hub_a, hub_b, home, victim, direct, target, tmp_path)
    finally:
        target.close()
        for proc in (victim.proc, home.proc, hub_b.proc, hub_a.proc):
            proc.stop()


def _forge_cross_mesh(world: TwoMeshes) -> tuple[Path, Path]:
    """A certificate signed by mesh B's CA that says `ztm://A/user/root` + `ztm://A/ep/HOME`; (cert, key) files."""
    ca_key_b, ca_cert_b = _hub_ca(world.hub_b)
    home = _identity(world.home, "a")
    assert home.ep_id is not None
    key = pki.new_key()
    now = dt.datetime.now(dt.UTC)
    cert = pki._issue_leaf(  # the CA's own signing step, with SANs of the other mesh
        ca_key_b,
        ca_cert_b,
        cn=home.ep_id,
        sans=[pki._uri(home.mesh_id, "user", "root"), pki._uri(home.mesh_id, "ep", home.ep_id)],
        eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        public_key=key.public_key(),
        now=now,
        lifetime=dt.timedelta(hours=1),
    )
    cert_file, key_file = world.tmp / "forged.crt", world.tmp / "forged.key"
    cert_file.write_text(pki.cert_to_pem(cert))
    key_file.write_text(pki.key_to_pem(key))
    return cert_file, key_file


def _direct_greeting(port: int, sni: str, cert: Path, key: Path, greeting: dict[str, str]) -> bytes:
    """TLS to the direct listener with (cert, key), SNI `sni`; send the greeting; the answer line (b'' if closed)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # the attacker does not care who the server is
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(str(cert), str(key))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        try:
            with ctx.wrap_socket(raw, server_hostname=sni) as tls:
                tls.sendall(json.dumps(greeting).encode() + b"\n")
                answer = b""
                while not answer.endswith(b"\n"):
                    chunk = tls.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
                return answer
        except (ssl.SSLError, ConnectionError):
            return b""


def test_cross_mesh_certificate_is_not_served_as_the_other_mesh(two_meshes: TwoMeshes) -> None:
    world = two_meshes
    mesh_b = _identity(world.victim, "b").mesh_id
    cert, key = _forge_cross_mesh(world)

    def listening() -> bool:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", world.direct), timeout=1).close()
            return True
        return False

    wait_until(listening, 10, "the victim's direct listener")
    before = _metric(world.victim, "ztm_agent_direct_wrong_mesh_total")
    answer = _direct_greeting(world.direct, f"{mesh_b}.ztm", cert, key, {"app": "tunnel", "service": "tcp/db"})
    reached = False
    with contextlib.suppress(TimeoutError, OSError):
        world.target.accept()[0].close()
        reached = True
    assert answer == b"" and not reached, (
        f"a certificate of mesh B's CA was served as root of mesh A: answer {answer!r}, target reached: {reached}"
    )
    wait_until(
        lambda: _metric(world.victim, "ztm_agent_direct_wrong_mesh_total") > before,
        10,
        "the victim to count the refused cross-mesh certificate",
    )
    world.victim.proc.assert_alive()
