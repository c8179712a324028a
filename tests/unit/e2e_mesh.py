"""Test helpers for `ztm.e2e`: a mesh CA made with `ztm.pki`, endpoint credentials, and a handshake driver.

`Mesh()` makes a CA; `mesh.creds(user)` an endpoint's `Credentials` (its own fresh key and certificate, a revocation
set on the mesh); `handshake(a, b)` runs a full handshake in memory and returns both sessions. Keys are ECDSA P-256.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ztm import pki
from ztm.e2e import Credentials, Initiator, Responder, Session


class Mesh:
    """A throwaway mesh: CA key and certificate, and a revocation list its members share."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)
        self.mesh_id = pki.new_mesh_id()
        self.ca_key, self.ca_cert = pki.create_ca(self.mesh_id, now=self.now)
        self.revoked: set[int] = set()

    def endpoint_cert(
        self,
        user: str = "alice",
        *,
        ep_id: str | None = None,
        ttl: timedelta = timedelta(hours=2),
        at: datetime | None = None,
    ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = pki.new_key()
        cert = pki.issue_endpoint_cert(
            self.ca_key,
            self.ca_cert,
            user=user,
            ep_id=ep_id or str(uuid.uuid4()),
            public_key=key.public_key(),
            now=at or self.now,
            ttl=ttl,
        )
        return key, cert

    def user_cert(self, user: str = "alice") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = pki.new_key()
        return key, pki.issue_user_cert(self.ca_key, self.ca_cert, user=user, public_key=key.public_key(), now=self.now)

    def creds(self, user: str = "alice", **kw: object) -> Credentials:
        key, cert = self.endpoint_cert(user, **kw)  # type: ignore[arg-type]
        return self.wrap(key, cert)

    def wrap(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> Credentials:
        return Credentials(
            mesh_id=self.mesh_id, ca_cert=self.ca_cert, cert=cert, key=key, revoked=self.revoked.__contains__
        )


def handshake(a: Credentials, b: Credentials) -> tuple[Session, Session]:
    """A full handshake from `a` to `b`, in memory: (a's session, b's session)."""
    ini = Initiator(a, b.ep_id)
    resp = Responder(b)
    auth = ini.on_hello_r(resp.on_hello(ini.hello()))
    s_b = resp.on_auth(auth)
    assert ini.session is not None
    return ini.session, s_b
