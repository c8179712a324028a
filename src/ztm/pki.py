"""Keys, certificates, CSRs and CRLs of a ztm mesh (pure functions; the only I/O is `write_private`).

Every key is ECDSA P-256 and every signature SHA-256. Whom a certificate names is carried only in its URI
SANs (SPIFFE style): `ztm://MESH_ID/ca`, `ztm://MESH_ID/user/USER`, `ztm://MESH_ID/ep/EP_ID`,
`ztm://MESH_ID/hub/HUB_ID`. `identity_of` reads them back; `verify_issued_by` checks a certificate against
the mesh CA. A `now` may be aware or naive (naive is taken as UTC). Every certificate starts 5 minutes
before `now` (clock skew), and a leaf never outlives its CA (its end is clipped to the CA's).

Enforcing eviction at the TLS handshake (the hub does this); confirmed on Python 3.11 / OpenSSL 3.0 by
tests/unit/test_pki.py:

* Load the CA with `ctx.load_verify_locations(cadata=CA_PEM)` (or from a file), and the CRL FROM A FILE:
  `ctx.load_verify_locations(cafile=PATH)` where PATH holds `crl_to_pem(build_crl(...))`, alone or after
  the CA PEM in the same file. Then `ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF`.
* `cadata=` never loads a CRL: after a certificate it silently SKIPS the CRL block (no error, and
  `ctx.cert_store_stats()["crl"]` stays 0); alone it fails with "no start line". Check
  `cert_store_stats()["crl"] >= 1` after loading.
* With `VERIFY_CRL_CHECK_LEAF` a current CRL of the CA must always be loaded, an empty one when nobody is
  evicted: without one every client is refused ("unable to get certificate CRL"), and so is every client
  once its `next_update` has passed ("CRL has expired") or while its `last_update` is in the future ("CRL
  is not yet valid"). Re-issue the CRL well before `next_update`.
* A revoked client fails on the server with `ssl.SSLCertVerificationError` (verify_code 23, "certificate
  revoked"). In TLS 1.3 the client's `do_handshake` succeeds; it sees the alert on its first read.
* To evict on a running server, load the new CRL into the same context (`load_verify_locations(cafile=)`).
  OpenSSL keeps every CRL loaded and uses the one with the latest `last_update` not in the future, so a new
  CRL needs a `last_update` at least one whole second after the previous one's (`build_crl` sets it to
  `now`; on a tie OpenSSL may use either). A fresh `SSLContext` for new connections works too.
  Neither affects sessions already established: close those separately.
"""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ztm import validate
from ztm.errors import BadInput, CertificateError

SKEW = timedelta(minutes=5)
"""How far before `now` a new certificate becomes valid, to tolerate clocks that lag."""

_MESH_ID = re.compile(r"[0-9a-f]{16}")
_URI = re.compile(r"ztm://(?P<mesh>[0-9a-f]{16})/(?:(?P<ca>ca)|(?P<kind>user|ep|hub)/(?P<value>[^/]+))")
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")
# what cryptography raises on malformed input (its deprecation warnings are raised, inside `_strict()`)
_PARSE_ERRORS = (
    ValueError,
    CryptographyDeprecationWarning,
    TypeError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
)


# --------------------------------------------------------------------------------------------- names and ids


def new_mesh_id() -> str:
    """A fresh mesh id: 16 lowercase hex characters."""
    return secrets.token_hex(8)


def new_hub_id() -> str:
    """A fresh hub id: 16 lowercase hex characters."""
    return secrets.token_hex(8)


def is_valid_user(name: str) -> bool:
    """True for a user name: 1-63 characters `[a-z0-9][a-z0-9._-]*`."""
    return isinstance(name, str) and validate.USER.fullmatch(name) is not None


def is_valid_ep_id(ep_id: str) -> bool:
    """True for an endpoint id: a UUID in lowercase canonical form."""
    try:
        return isinstance(ep_id, str) and str(uuid.UUID(ep_id)) == ep_id
    except ValueError:
        return False


def is_valid_hex_id(value: str) -> bool:
    """True for a mesh or hub id: 16 lowercase hex characters."""
    return isinstance(value, str) and _MESH_ID.fullmatch(value) is not None


def check_user(name: str) -> str:
    """Return `name` if it is a valid user name, else raise `BadInput` saying what a user name looks like."""
    if not is_valid_user(name):
        raise BadInput(
            f"invalid user name {name!r}: use 1-63 characters, lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _check_ep_id(ep_id: str) -> str:
    if not is_valid_ep_id(ep_id):
        raise BadInput(f"invalid endpoint id {ep_id!r}: expected a lowercase UUID")
    return ep_id


def _check_hex_id(value: str, what: str) -> str:
    if not is_valid_hex_id(value):
        raise BadInput(f"invalid {what} {value!r}: expected 16 lowercase hex characters")
    return value


# ---------------------------------------------------------------------------------------------- keys and PEM


def new_key() -> ec.EllipticCurvePrivateKey:
    """A fresh ECDSA P-256 private key."""
    return ec.generate_private_key(ec.SECP256R1())


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> str:
    """The key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def key_from_pem(text: str) -> ec.EllipticCurvePrivateKey:
    """Load an unencrypted PEM EC P-256 private key; `BadInput` for anything else."""
    try:
        with _strict():
            key = serialization.load_pem_private_key(_pem_bytes(text), password=None)
    except _PARSE_ERRORS:
        raise BadInput("not a PEM private key (expected an unencrypted '-----BEGIN PRIVATE KEY-----' block)") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise BadInput("the private key is not an ECDSA P-256 key; ztm only uses P-256 keys")
    return key


def public_key_to_pem(pub: ec.EllipticCurvePublicKey) -> str:
    """The public key as SubjectPublicKeyInfo PEM."""
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")


def public_key_from_pem(text: str) -> ec.EllipticCurvePublicKey:
    """Load a PEM EC P-256 public key; `BadInput` for anything else."""
    try:
        with _strict():
            pub = serialization.load_pem_public_key(_pem_bytes(text))
    except _PARSE_ERRORS:
        raise BadInput("not a PEM public key (expected a '-----BEGIN PUBLIC KEY-----' block)") from None
    return _p256_public(pub)


def _p256_public(pub: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(pub, ec.EllipticCurvePublicKey) or not isinstance(pub.curve, ec.SECP256R1):
        raise BadInput("the public key is not an ECDSA P-256 key; ztm only uses P-256 keys")
    return pub


def same_public_key(a: ec.EllipticCurvePublicKey, b: object) -> bool:
    """True if `b` is the same public key as `a`."""
    if not isinstance(b, ec.EllipticCurvePublicKey):
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return a.public_bytes(*fmt) == b.public_bytes(*fmt)


def cert_to_pem(cert: x509.Certificate) -> str:
    """The certificate as PEM."""
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def cert_from_pem(text: str) -> x509.Certificate:
    """Load the first certificate of a PEM text; `BadInput` if there is none."""
    try:
        with _strict():
            return x509.load_pem_x509_certificate(_pem_bytes(text))
    except _PARSE_ERRORS:
        raise BadInput("not a valid PEM certificate (expected a '-----BEGIN CERTIFICATE-----' block)") from None


def cert_from_der(data: bytes) -> x509.Certificate:
    """Load a DER certificate (`SSLSocket.getpeercert(binary_form=True)`); `BadInput` if it is not one."""
    try:
        with _strict():
            return x509.load_der_x509_certificate(bytes(data))
    except _PARSE_ERRORS:
        raise BadInput("not a valid DER certificate") from None


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER, lowercase hex."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _pem_bytes(text: str | bytes) -> bytes:
    if isinstance(text, bytes):
        return text
    if not isinstance(text, str):
        raise TypeError("expected PEM text")
    return text.encode("utf-8")  # a lone surrogate raises UnicodeEncodeError, a ValueError


# ------------------------------------------------------------------------------------------------ identities


@dataclass(frozen=True)
class Identity:
    """Who a certificate names, read from its `ztm://` URI SANs."""

    mesh_id: str
    user: str | None = None
    ep_id: str | None = None
    hub_id: str | None = None
    is_ca: bool = False

    @property
    def kind(self) -> str:
        """One of "ca", "hub", "endpoint", "user"."""
        if self.is_ca:
            return "ca"
        if self.hub_id is not None:
            return "hub"
        return "endpoint" if self.ep_id is not None else "user"

    @property
    def is_user(self) -> bool:
        """A user certificate (names a user and no endpoint): what permits carry."""
        return self.kind == "user"

    @property
    def is_endpoint(self) -> bool:
        """An endpoint certificate (names a user and an endpoint): what agents present to the hub."""
        return self.kind == "endpoint"

    @property
    def is_hub(self) -> bool:
        return self.kind == "hub"

    @property
    def uris(self) -> list[str]:
        """The URI SANs that name this identity."""
        base = f"ztm://{self.mesh_id}"
        out = [f"{base}/ca"] if self.is_ca else []
        out += [f"{base}/user/{self.user}"] if self.user is not None else []
        out += [f"{base}/ep/{self.ep_id}"] if self.ep_id is not None else []
        out += [f"{base}/hub/{self.hub_id}"] if self.hub_id is not None else []
        return out

    def __str__(self) -> str:
        return " ".join(self.uris)


_VALID: dict[str, Callable[[str], bool]] = {
    "ca": lambda value: value == "",
    "user": is_valid_user,
    "ep": is_valid_ep_id,
    "hub": is_valid_hex_id,
}


def identity_of(cert: x509.Certificate) -> Identity:
    """Read the identity from the certificate's URI SANs; `CertificateError` if they are missing or malformed.

    This does not verify anything: call `verify_issued_by` for a certificate that comes from a peer.
    """
    try:
        with _strict():
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    except _PARSE_ERRORS as e:
        raise CertificateError(f"certificate has malformed extensions: {e}") from None
    if not uris:
        raise CertificateError("certificate names no ztm identity (no ztm:// URI SAN); a ztm CA did not issue it")
    meshes: set[str] = set()
    found: dict[str, str] = {}
    for uri in uris:
        m = _URI.fullmatch(uri)
        if m is None:
            raise CertificateError(f"certificate has a malformed identity URI {uri!r}")
        meshes.add(m["mesh"])
        kind, value = ("ca", "") if m["ca"] else (m["kind"], m["value"])
        if kind in found or not _VALID[kind](value):
            raise CertificateError(f"certificate has a malformed or repeated identity URI {uri!r}")
        found[kind] = value
    if len(meshes) != 1:
        raise CertificateError(f"certificate names several meshes ({', '.join(sorted(meshes))})")
    if set(found) not in ({"ca"}, {"user"}, {"user", "ep"}, {"hub"}):
        raise CertificateError(f"certificate names an impossible identity combination ({', '.join(uris)})")
    return Identity(
        mesh_id=meshes.pop(),
        user=found.get("user"),
        ep_id=found.get("ep"),
        hub_id=found.get("hub"),
        is_ca="ca" in found,
    )


def cert_mesh_id(ca_cert: x509.Certificate) -> str:
    """The mesh id of a CA certificate; `CertificateError` if it is not a ztm CA certificate."""
    ident = identity_of(ca_cert)
    if not ident.is_ca:
        raise CertificateError(f"not a ztm CA certificate (it names {ident})")
    return ident.mesh_id


def check_ca(ca_cert: x509.Certificate) -> str:
    """The mesh id of a ztm CA certificate: one naming `ztm://MESH_ID/ca`, marked as a CA, self-signed.

    `CertificateError` if it is not one. Its validity window is not checked.
    """
    mesh_id = cert_mesh_id(ca_cert)
    try:
        with _strict():
            basic = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise CertificateError("CA certificate has no basic constraints") from None
    except _PARSE_ERRORS as e:
        raise CertificateError(f"certificate has malformed extensions: {e}") from None
    if not basic.ca:
        raise CertificateError("CA certificate's basic constraints say it is not a CA")
    try:
        ca_cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, *_PARSE_ERRORS):
        raise CertificateError("CA certificate is not validly self-signed") from None
    return mesh_id


def cert_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    """The certificate's P-256 public key; `CertificateError` if it has another kind."""
    try:
        return _p256_public(cert.public_key())
    except (BadInput, *_PARSE_ERRORS):
        raise CertificateError("certificate does not hold an ECDSA P-256 public key") from None


def check_signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """`CertificateError` unless `cert` was issued and signed by `ca_cert`."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (InvalidSignature, *_PARSE_ERRORS):
        raise CertificateError(
            f"certificate was not issued by this mesh's CA ({ca_cert.subject.rfc4514_string()})"
        ) from None


def check_validity(cert: x509.Certificate, *, now: datetime) -> None:
    """`CertificateError` unless `now` is within the certificate's validity window."""
    now = _utc(now)
    if now < cert.not_valid_before_utc:
        raise CertificateError(f"certificate not valid until {_fmt(cert.not_valid_before_utc)}")
    if now > cert.not_valid_after_utc:
        raise CertificateError(f"certificate expired at {_fmt(cert.not_valid_after_utc)}")


def verify_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate, *, now: datetime) -> Identity:
    """Check `cert` against the mesh CA (signature, validity at `now`, mesh id) and return whom it names.

    Revocation is not checked here: the hub checks its eviction list (and the TLS handshake checks the CRL).
    """
    check_signed_by(cert, ca_cert)
    check_validity(cert, now=now)
    ident = identity_of(cert)
    mesh_id = cert_mesh_id(ca_cert)
    if ident.mesh_id != mesh_id:
        raise CertificateError(f"certificate belongs to mesh {ident.mesh_id}, not to this mesh {mesh_id}")
    return ident


# --------------------------------------------------------------------------------------------------- issuing


def create_ca(mesh_id: str, *, now: datetime, days: int = 3650) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new self-signed mesh CA: its key and certificate (`ztm://MESH_ID/ca`)."""
    _check_hex_id(mesh_id, "mesh id")
    key = new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ztm mesh {mesh_id} CA")])
    now = _utc(now)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.SubjectAlternativeName([_uri(mesh_id, "ca")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_user_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    user: str,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    days: int = 365,
) -> x509.Certificate:
    """A user certificate (`ztm://MESH/user/USER`, clientAuth): the certificate a permit carries."""
    mesh_id = cert_mesh_id(ca_cert)
    check_user(user)
    return _issue_leaf(
        ca_key,
        ca_cert,
        cn=user,
        sans=[_uri(mesh_id, "user", user)],
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
        public_key=public_key,
        now=now,
        lifetime=timedelta(days=days),
    )


def issue_endpoint_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    user: str,
    ep_id: str,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    ttl: timedelta,
) -> x509.Certificate:
    """An endpoint certificate (`ztm://MESH/user/USER` and `ztm://MESH/ep/EP_ID`, clientAuth and serverAuth: an
    endpoint is the server of the direct channels peers open to it) for `ttl`."""
    mesh_id = cert_mesh_id(ca_cert)
    check_user(user)
    _check_ep_id(ep_id)
    return _issue_leaf(
        ca_key,
        ca_cert,
        cn=ep_id,
        sans=[_uri(mesh_id, "user", user), _uri(mesh_id, "ep", ep_id)],
        eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],  # serverAuth: direct channels
        public_key=public_key,
        now=now,
        lifetime=ttl,
    )


def issue_hub_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    hub_id: str,
    names: Sequence[str],
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    days: int = 3650,
) -> x509.Certificate:
    """A hub certificate (`ztm://MESH/hub/HUB_ID`, serverAuth + clientAuth), plus a DNS or IP SAN per name.

    `names` are bare hosts (`hub.example.com`, `192.0.2.1`, `::1` or `[::1]`), no ports; else `BadInput`.
    """
    mesh_id = cert_mesh_id(ca_cert)
    _check_hex_id(hub_id, "hub id")
    sans: list[x509.GeneralName] = [_uri(mesh_id, "hub", hub_id)]
    for host in names:
        name = _host_san(host)
        if name not in sans:
            sans.append(name)
    return _issue_leaf(
        ca_key,
        ca_cert,
        cn=hub_id,
        sans=sans,
        eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        public_key=public_key,
        now=now,
        lifetime=timedelta(days=days),
    )


def _issue_leaf(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    cn: str,
    sans: list[x509.GeneralName],
    eku: list[x509.ObjectIdentifier],
    public_key: ec.EllipticCurvePublicKey,
    now: datetime,
    lifetime: timedelta,
) -> x509.Certificate:
    public_key = _p256_public(public_key)
    if lifetime <= timedelta(0):
        raise BadInput(f"certificate lifetime must be positive, got {lifetime}")
    now = _utc(now)
    not_after = min(now + lifetime, ca_cert.not_valid_after_utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - SKEW)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(ca_key, ca_cert), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _authority_key_id(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _uri(mesh_id: str, kind: str, value: str | None = None) -> x509.UniformResourceIdentifier:
    path = kind if value is None else f"{kind}/{value}"
    return x509.UniformResourceIdentifier(f"ztm://{mesh_id}/{path}")


def _host_san(host: str) -> x509.GeneralName:
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        return x509.IPAddress(ipaddress.ip_address(bare))
    except ValueError:
        pass
    name = host.lower().rstrip(".")
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise BadInput(f"hub name {host!r} is not a host name or IP address (give hosts without ports)")
    return x509.DNSName(name)


# ------------------------------------------------------------------------------------------------------ CSRs


def make_csr(key: ec.EllipticCurvePrivateKey, *, name: str) -> x509.CertificateSigningRequest:
    """A CSR with CN `name`, proving possession of `key` (what `ztm identity` hands to the mesh admin)."""
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )


def csr_to_pem(csr: x509.CertificateSigningRequest) -> str:
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def csr_from_pem(text: str) -> ec.EllipticCurvePublicKey:
    """The P-256 public key of a PEM CSR whose signature verifies; `BadInput` otherwise."""
    try:
        with _strict():
            csr = x509.load_pem_x509_csr(_pem_bytes(text))
            pub = csr.public_key()
            valid = csr.is_signature_valid
    except _PARSE_ERRORS:
        raise BadInput(
            "not a PEM certificate request (expected a '-----BEGIN CERTIFICATE REQUEST-----' block "
            "as written by `ztm identity`)"
        ) from None
    if not valid:
        raise BadInput("the certificate request's signature does not verify; make it again with `ztm identity`")
    return _p256_public(pub)


# ------------------------------------------------------------------------------------------------------ CRLs


def build_crl(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    revoked: Iterable[int],
    number: int,
    now: datetime,
    next_update: timedelta = timedelta(days=30),
) -> x509.CertificateRevocationList:
    """A CRL of the CA revoking the certificates with serial numbers `revoked`, numbered `number`.

    `last_update` is `now`; see the module docstring for how a TLS server must load it.
    """
    now = _utc(now)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now)
        .next_update(now + next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(_authority_key_id(ca_key, ca_cert), critical=False)
    )
    for serial in sorted(set(revoked)):
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now).build()
        )
    return builder.sign(ca_key, hashes.SHA256())


def crl_to_pem(crl: x509.CertificateRevocationList) -> str:
    return crl.public_bytes(serialization.Encoding.PEM).decode("ascii")


# ----------------------------------------------------------------------------------------------------- files


def write_private(path: Path, data: str | bytes) -> None:
    """Atomically replace `path` with `data`, readable by the owner only (0600) from the instant it exists.

    The bytes go to a temporary file in the same directory, created with O_EXCL and mode 0600, are
    fsynced, then renamed over `path`; a crash leaves either the old file or the new one.
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(tmp, flags, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)  # the umask may have removed the owner's write bit
            view = memoryview(raw)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# --------------------------------------------------------------------------------------------------- helpers


@contextmanager
def _strict() -> Iterator[None]:
    """Raise cryptography's deprecation warnings (a negative serial number, ...): such input is refused.

    They are what cryptography will refuse to parse in a later release; ztm's CA never makes them.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", CryptographyDeprecationWarning)
        yield


def _utc(now: datetime) -> datetime:
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _fmt(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
