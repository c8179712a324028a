"""TLS material of one joined mesh on disk (`DATA/meshes/MESH/`, 0700) and the client contexts built from it.

`ssl` loads certificates and keys only from files, so each mesh keeps: the CA, the permit's user certificate (and
root's key for a root permit), and the endpoint certificate with the agent's key. Key files are 0600. With
`SSLKEYLOGFILE` set, the client contexts log their sessions' secrets there (`ztm.keylog`, for debugging).
"""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

from ztm import keylog, pki
from ztm.errors import CertificateError
from ztm.h2 import Connection
from ztm.tlsobject import fast_tls


class MeshFiles:
    def __init__(self, directory: Path) -> None:
        self.dir = directory

    def write(self, *, ca: str, user_cert: str, user_key: str, ep_cert: str | None, agent_key: str) -> None:
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        (self.dir / "ca.pem").write_text(ca)
        (self.dir / "user.crt").write_text(user_cert)
        pki.write_private(self.dir / "user.key", user_key)
        pki.write_private(self.dir / "ep.key", agent_key)
        if ep_cert is not None:
            self.write_ep_cert(ep_cert)

    def write_ep_cert(self, ep_cert: str) -> None:
        tmp = self.dir / "ep.crt.new"
        tmp.write_text(ep_cert)
        tmp.replace(self.dir / "ep.crt")

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def user_context(self) -> ssl.SSLContext:
        return _context(self.dir / "ca.pem", self.dir / "user.crt", self.dir / "user.key")

    def ep_context(self) -> ssl.SSLContext:
        return _context(self.dir / "ca.pem", self.dir / "ep.crt", self.dir / "ep.key")


def _context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # the hub is identified by its URI SAN under the mesh CA (check_hub)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=str(ca))
    ctx.load_cert_chain(str(cert), str(key))
    ctx.set_alpn_protocols(["h2"])
    return keylog.apply(fast_tls(ctx))


def check_hub(conn: Connection, mesh_id: str, address: str) -> str:
    """The hub id of the peer, which must be a hub certificate of `mesh_id`; CertificateError otherwise."""
    if conn.peer_cert_der is None:
        raise CertificateError(f"{address} presented no certificate")
    identity = pki.identity_of(pki.cert_from_der(conn.peer_cert_der))
    if identity.hub_id is None or identity.mesh_id != mesh_id:
        raise CertificateError(f"{address} is not a hub of this mesh (its certificate names no hub of {mesh_id})")
    return identity.hub_id
