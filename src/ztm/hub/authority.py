"""The hub as certificate authority: creates or loads the mesh CA, issues certificates, keeps the CRL, and builds
the TLS server context that enforces all of it at the handshake.

TLS policy: TLS 1.3 only, a client certificate is required and must chain to the mesh CA, the leaf is checked
against the CRL (evicted users' certificates), ALPN `h2`. A fresh `ssl.SSLContext` is built whenever the CRL
changes; the server asks for the current one on every accepted connection. With `SSLKEYLOGFILE` set, each context
logs its sessions' secrets there (`ztm.keylog`, for debugging).
"""

from __future__ import annotations

import datetime as dt
import ssl
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ztm import keylog, pki
from ztm.addr import Address
from ztm.errors import BadInput
from ztm.hub import cakey, meshaddr
from ztm.hub.store import HubStore
from ztm.tlsobject import fast_tls

ROOT_USER = "root"


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Authority:
    def __init__(
        self, store: HubStore, data: Path, names: Sequence[Address], meta: dict[str, str], keys: dict[str, str]
    ) -> None:
        """Use `load` (the store is asynchronous). `keys`: the CA and root private keys (PEM), unsealed."""
        self.store = store
        self.data = data
        now = utcnow()
        self.mesh_id = meta["mesh_id"]
        self.hub_id = meta["hub_id"] if not store.shared else _own_hub_id(data)
        self.ca_key = pki.key_from_pem(keys["ca_key"])
        self.ca_cert = pki.cert_from_pem(meta["ca_cert"])
        self.ca_pem = meta["ca_cert"]
        self.root_key = pki.key_from_pem(keys["root_key"])
        self.root_cert = pki.cert_from_pem(meta["root_cert"])
        self.crl_number = int(meta.get("crl_number", "0"))
        """Increases with every CRL this hub signs (seconds since the epoch, or one more than the last): hubs of a
        cluster sign their own CRLs with the shared CA key, and none has to write the number to the store."""
        self.names = tuple(names)
        self._tls_dir = data / "hub-tls"
        self._tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write_hub_cert(now)
        self._context: ssl.SSLContext | None = None
        self.crl_pem = ""
        """The current CRL alone (PEM); agents fetch it (`GET /api/crl`) to check direct peers' certificates."""

    @classmethod
    async def load(
        cls, store: HubStore, data: Path, names: Sequence[Address], *, seal_key: bytes | None = None,
        key_file: Path | None = None, mesh_range: str | None = None,
    ) -> Authority:  # fmt: skip
        """The mesh in `store`, created (CA, root user) when the store has none yet. With `seal_key` (a shared
        store) the private keys are kept sealed in the store (`ztm.hub.cakey`); a key that does not open them is a
        one-line `BadInput` naming `key_file`."""
        meta = await store.get_meta()
        if "ca_cert" not in meta:
            meta = await cls._create(store, utcnow(), seal_key, mesh_range)
        keys = {"ca_key": meta["ca_key"], "root_key": meta["root_key"]}
        if seal_key is not None:
            for what in keys:
                if not cakey.is_sealed(keys[what]):
                    raise BadInput(
                        f"the store holds this mesh's {what.replace('_', ' ')} unsealed; move the mesh with "
                        "'ztm hub migrate', which seals it"
                    )
                keys[what] = cakey.unseal(keys[what], seal_key, meta["mesh_id"], what, key_file=key_file or "given")
        return cls(store, data, names, meta, keys)

    @staticmethod
    async def _create(
        store: HubStore, now: dt.datetime, seal_key: bytes | None, mesh_range: str | None = None
    ) -> dict[str, str]:
        mesh_id = pki.new_mesh_id()
        ca_key, ca_cert = pki.create_ca(mesh_id, now=now)
        root_key = pki.new_key()
        root_cert = pki.issue_user_cert(
            ca_key, ca_cert, user=ROOT_USER, public_key=root_key.public_key(), now=now, days=3650
        )
        ca_pem, root_pem = pki.key_to_pem(ca_key), pki.key_to_pem(root_key)
        if seal_key is not None:
            ca_pem = cakey.seal(ca_pem, seal_key, mesh_id, "ca_key")
            root_pem = cakey.seal(root_pem, seal_key, mesh_id, "root_key")
        meta = {
            "mesh_id": mesh_id,
            "hub_id": pki.new_hub_id(),
            "ca_key": ca_pem,
            "ca_cert": pki.cert_to_pem(ca_cert),
            "root_key": root_pem,
            "root_cert": pki.cert_to_pem(root_cert),
            "crl_number": "0",
            # issue 17: the mesh's address ranges, fixed at creation (`ztm.hub.meshnet.settle_range`)
            "mesh_range": str(meshaddr.parse_range(mesh_range or meshaddr.DEFAULT_RANGE)),
            "mesh_range6": str(meshaddr.ula48(mesh_id)),
        }
        stored = await store.create_meta(meta)
        if stored.get("mesh_id") != mesh_id:
            return stored  # another hub of the cluster created the mesh first: join it
        await store.upsert_user(ROOT_USER)
        await store.record_cert(
            root_cert.serial_number, ROOT_USER, None, "user", root_cert.not_valid_after_utc.timestamp()
        )
        return stored

    def _write_hub_cert(self, now: dt.datetime) -> None:
        key = pki.new_key()
        hosts = [a.host for a in self.names]
        cert = pki.issue_hub_cert(
            self.ca_key, self.ca_cert, hub_id=self.hub_id, names=hosts, public_key=key.public_key(), now=now
        )
        pki.write_private(self._tls_dir / "hub.key", pki.key_to_pem(key))
        (self._tls_dir / "hub.crt").write_text(pki.cert_to_pem(cert) + self.ca_pem)

    # issuing
    async def issue_user(self, user: str, public_key: ec.EllipticCurvePublicKey, days: int) -> x509.Certificate:
        cert = pki.issue_user_cert(self.ca_key, self.ca_cert, user=user, public_key=public_key, now=utcnow(), days=days)
        await self.store.record_cert(cert.serial_number, user, None, "user", cert.not_valid_after_utc.timestamp())
        return cert

    async def issue_endpoint(
        self, user: str, ep_id: str, public_key: ec.EllipticCurvePublicKey, ttl: float
    ) -> x509.Certificate:
        cert = pki.issue_endpoint_cert(
            self.ca_key,
            self.ca_cert,
            user=user,
            ep_id=ep_id,
            public_key=public_key,
            now=utcnow(),
            ttl=dt.timedelta(seconds=ttl),
        )
        await self.store.record_cert(cert.serial_number, user, ep_id, "endpoint", cert.not_valid_after_utc.timestamp())
        return cert

    # revocation and TLS
    def rebuild_crl(self, revoked: Iterable[int]) -> None:
        """Write a new CRL with `revoked` serials and drop the cached TLS context."""
        self.crl_number = max(self.crl_number + 1, int(time.time()))
        crl = pki.build_crl(self.ca_key, self.ca_cert, revoked=revoked, number=self.crl_number, now=utcnow())
        self.crl_pem = pki.crl_to_pem(crl)
        (self._tls_dir / "ca-crl.pem").write_text(self.ca_pem + self.crl_pem)
        self._context = None

    def server_context(self) -> ssl.SSLContext:
        if self._context is None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_cert_chain(self._tls_dir / "hub.crt", self._tls_dir / "hub.key")
            ctx.load_verify_locations(cafile=str(self._tls_dir / "ca-crl.pem"))
            ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
            ctx.set_alpn_protocols(["h2"])
            self._context = keylog.apply(fast_tls(ctx))
        return self._context


def _own_hub_id(data: Path) -> str:
    """A hub of a shared store keeps its own id in its data directory (`hub-id`), made at its first start: the
    mesh's meta names the first hub only."""
    path = data / "hub-id"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        hub_id = pki.new_hub_id()
        path.write_text(hub_id + "\n")
        return hub_id
