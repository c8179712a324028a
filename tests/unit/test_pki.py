"""ztm.pki: keys, certificates, identities, CSRs, CRLs, private files, and what OpenSSL makes of them."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ztm import pki
from ztm.errors import BadInput, CertificateError

E = TypeVar("E", bound=x509.ExtensionType)
NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
EP_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"


@dataclass
class Mesh:
    mesh_id: str
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate

    def user(self, user: str = "alice", now: datetime = NOW, days: int = 365) -> x509.Certificate:
        key = pki.new_key()
        return pki.issue_user_cert(self.ca_key, self.ca, user=user, public_key=key.public_key(), now=now, days=days)


def make_mesh(now: datetime = NOW, days: int = 3650) -> Mesh:
    mesh_id = pki.new_mesh_id()
    key, cert = pki.create_ca(mesh_id, now=now, days=days)
    return Mesh(mesh_id, key, cert)


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    return make_mesh()


def ext(cert: x509.Certificate, cls: type[E]) -> x509.Extension[E]:
    return cert.extensions.get_extension_for_class(cls)


def uris(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.UniformResourceIdentifier)


def craft(
    mesh: Mesh,
    san: list[x509.GeneralName] | None,
    *,
    key: ec.EllipticCurvePrivateKey | None = None,
    issuer: x509.Name | None = None,
    serial: int | None = None,
) -> x509.Certificate:
    """A leaf signed by the mesh CA (or `key`) with arbitrary SANs, to test what identity_of accepts."""
    subject_key = pki.new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crafted")]))
        .issuer_name(issuer or mesh.ca.subject)
        .public_key(subject_key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(key or mesh.ca_key, hashes.SHA256())


# ------------------------------------------------------------------------------------------------ keys, PEM


def test_keys_are_p256_and_round_trip_through_pem() -> None:
    key = pki.new_key()
    assert isinstance(key.curve, ec.SECP256R1)
    pem = pki.key_to_pem(key)
    assert pem.startswith("-----BEGIN PRIVATE KEY-----\n")
    assert pki.key_to_pem(pki.key_from_pem(pem)) == pem
    pub_pem = pki.public_key_to_pem(key.public_key())
    assert pub_pem.startswith("-----BEGIN PUBLIC KEY-----\n")
    assert pki.same_public_key(pki.public_key_from_pem(pub_pem), key.public_key())
    assert not pki.same_public_key(key.public_key(), pki.new_key().public_key())


def _other_keys() -> dict[str, str]:
    p384 = ec.generate_private_key(ec.SECP384R1())
    ed = ed25519.Ed25519PrivateKey.generate()
    enc = serialization.BestAvailableEncryption(b"secret")
    pkcs8 = serialization.PrivateFormat.PKCS8
    pem = serialization.Encoding.PEM
    return {
        "p384": p384.private_bytes(pem, pkcs8, serialization.NoEncryption()).decode(),
        "ed25519": ed.private_bytes(pem, pkcs8, serialization.NoEncryption()).decode(),
        "encrypted": pki.new_key().private_bytes(pem, pkcs8, enc).decode(),
    }


@pytest.mark.parametrize("which", ["garbage", "empty", "public", "cert", "p384", "ed25519", "encrypted", "surrogate"])
def test_key_from_pem_rejects_anything_but_a_p256_private_key(which: str, mesh: Mesh) -> None:
    texts = {
        "garbage": "hello",
        "empty": "",
        "public": pki.public_key_to_pem(pki.new_key().public_key()),
        "cert": pki.cert_to_pem(mesh.ca),
        "surrogate": "-----BEGIN PRIVATE KEY-----\n\ud800\n-----END PRIVATE KEY-----\n",
        **_other_keys(),
    }
    with pytest.raises(BadInput) as info:
        pki.key_from_pem(texts[which])
    assert "private key" in info.value.message


@pytest.mark.parametrize("text", ["", "nope", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"])
def test_public_key_from_pem_rejects_garbage(text: str) -> None:
    with pytest.raises(BadInput, match="public key"):
        pki.public_key_from_pem(text)


def test_public_key_from_pem_rejects_other_curves() -> None:
    pub = ec.generate_private_key(ec.SECP384R1()).public_key()
    pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(BadInput, match="P-256"):
        pki.public_key_from_pem(pem)


def test_certificates_round_trip_through_pem_and_der(mesh: Mesh) -> None:
    cert = mesh.user()
    assert pki.cert_from_pem(pki.cert_to_pem(cert)) == cert
    assert pki.cert_from_der(cert.public_bytes(serialization.Encoding.DER)) == cert
    with pytest.raises(BadInput, match="PEM certificate"):
        pki.cert_from_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(BadInput, match="DER certificate"):
        pki.cert_from_der(b"\x30\x03\x02\x01\x00")


def _der_with(cert: x509.Certificate, at: bytes, value: int) -> bytes:
    """The certificate's DER with the byte just after the first `at` replaced by `value`."""
    der = bytearray(cert.public_bytes(serialization.Encoding.DER))
    i = der.index(at) + len(at)
    der[i] = value
    return bytes(der)


def test_malformed_certificates_are_bad_input(mesh: Mesh) -> None:
    cert = craft(mesh, None, serial=0x7F << 152)  # 20 bytes
    version = _der_with(cert, b"\xa0\x03\x02\x01", 0x07)  # X.509 version 8
    with pytest.raises(BadInput, match="DER certificate"):
        pki.cert_from_der(version)
    serial = _der_with(cert, b"\xa0\x03\x02\x01\x02\x02\x14", 0xFF)  # a negative serial number: a warning
    with pytest.raises(BadInput, match="DER certificate"):  # in cryptography 50, refused here
        pki.cert_from_der(serial)
    pem = "-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(serial).decode() + "-----END CERTIFICATE-----\n"
    with pytest.raises(BadInput, match="PEM certificate"):
        pki.cert_from_pem(pem)


def test_fingerprint_is_sha256_of_der(mesh: Mesh) -> None:
    der = mesh.ca.public_bytes(serialization.Encoding.DER)
    assert pki.fingerprint(mesh.ca) == hashlib.sha256(der).hexdigest()


def test_ids() -> None:
    for make in (pki.new_mesh_id, pki.new_hub_id):
        a, b = make(), make()
        assert a != b
        assert pki.is_valid_hex_id(a)
        assert len(a) == 16


@pytest.mark.parametrize("name", ["a", "alice", "bob.smith", "x_1-2", "0", "a" * 63])
def test_valid_user_names(name: str) -> None:
    assert pki.check_user(name) == name


@pytest.mark.parametrize("name", ["", "Alice", "-a", ".a", "_a", "a b", "a/b", "a" * 64, "é", "a\n"])
def test_invalid_user_names(name: str) -> None:
    with pytest.raises(BadInput, match="invalid user name"):
        pki.check_user(name)


def test_ep_ids() -> None:
    assert pki.is_valid_ep_id(EP_ID)
    assert not pki.is_valid_ep_id(EP_ID.upper())
    assert not pki.is_valid_ep_id(EP_ID.replace("-", ""))
    assert not pki.is_valid_ep_id("{" + EP_ID + "}")
    assert not pki.is_valid_ep_id("nope")


# ------------------------------------------------------------------------------------------------ issuing


def test_ca_certificate(mesh: Mesh) -> None:
    ca = mesh.ca
    assert ca.subject.rfc4514_string() == f"CN=ztm mesh {mesh.mesh_id} CA"
    assert ca.issuer == ca.subject
    basic = ext(ca, x509.BasicConstraints)
    assert basic.critical
    assert basic.value == x509.BasicConstraints(ca=True, path_length=0)
    usage = ext(ca, x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign and usage.value.crl_sign and not usage.value.digital_signature
    assert ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert uris(ca) == [f"ztm://{mesh.mesh_id}/ca"]
    assert ca.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert ca.not_valid_after_utc == NOW + timedelta(days=3650)
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    assert pki.cert_mesh_id(ca) == mesh.mesh_id
    ident = pki.identity_of(ca)
    assert ident.is_ca and ident.kind == "ca" and ident.user is None
    ca.verify_directly_issued_by(ca)


@pytest.mark.parametrize("bad", ["", "ABCDEF0123456789", "0123", "g" * 16, "0123456789abcdef0"])
def test_create_ca_checks_the_mesh_id(bad: str) -> None:
    with pytest.raises(BadInput, match="mesh id"):
        pki.create_ca(bad, now=NOW)


def _check_leaf_common(cert: x509.Certificate, mesh: Mesh) -> None:
    basic = ext(cert, x509.BasicConstraints)
    assert basic.value.ca is False
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature and not usage.value.key_cert_sign
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(mesh.ca, x509.SubjectKeyIdentifier).value.digest
    assert cert.issuer == mesh.ca.subject
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5)
    cert.verify_directly_issued_by(mesh.ca)


def test_user_certificate(mesh: Mesh) -> None:
    key = pki.new_key()
    cert = pki.issue_user_cert(mesh.ca_key, mesh.ca, user="alice", public_key=key.public_key(), now=NOW)
    _check_leaf_common(cert, mesh)
    assert cert.subject.rfc4514_string() == "CN=alice"
    assert uris(cert) == [f"ztm://{mesh.mesh_id}/user/alice"]
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.not_valid_after_utc == NOW + timedelta(days=365)
    assert pki.same_public_key(key.public_key(), cert.public_key())
    ident = pki.verify_issued_by(cert, mesh.ca, now=NOW)
    assert ident == pki.Identity(mesh_id=mesh.mesh_id, user="alice")
    assert ident.is_user and not ident.is_endpoint and ident.kind == "user"
    assert str(ident) == f"ztm://{mesh.mesh_id}/user/alice"


def test_serial_numbers_are_random(mesh: Mesh) -> None:
    serials = {mesh.user().serial_number for _ in range(5)}
    assert len(serials) == 5
    assert all(s.bit_length() > 64 for s in serials)


def test_endpoint_certificate(mesh: Mesh) -> None:
    key = pki.new_key()
    cert = pki.issue_endpoint_cert(
        mesh.ca_key, mesh.ca, user="bob", ep_id=EP_ID, public_key=key.public_key(), now=NOW, ttl=timedelta(hours=24)
    )
    _check_leaf_common(cert, mesh)
    assert cert.subject.rfc4514_string() == f"CN={EP_ID}"
    assert uris(cert) == [f"ztm://{mesh.mesh_id}/user/bob", f"ztm://{mesh.mesh_id}/ep/{EP_ID}"]
    usage = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == usage
    assert cert.not_valid_after_utc == NOW + timedelta(hours=24)
    ident = pki.verify_issued_by(cert, mesh.ca, now=NOW)
    assert ident == pki.Identity(mesh_id=mesh.mesh_id, user="bob", ep_id=EP_ID)
    assert ident.is_endpoint and not ident.is_user and ident.kind == "endpoint"


@pytest.mark.parametrize(("user", "ep_id"), [("Bob", EP_ID), ("bob", EP_ID.upper()), ("bob", "x")])
def test_endpoint_certificate_checks_its_names(mesh: Mesh, user: str, ep_id: str) -> None:
    with pytest.raises(BadInput):
        pki.issue_endpoint_cert(
            mesh.ca_key,
            mesh.ca,
            user=user,
            ep_id=ep_id,
            public_key=pki.new_key().public_key(),
            now=NOW,
            ttl=timedelta(hours=1),
        )


def test_hub_certificate(mesh: Mesh) -> None:
    hub_id = pki.new_hub_id()
    names = ["hub.example.com", "127.0.0.1", "::1", "[fe80::1]", "Hub.Example.com.", "localhost"]
    cert = pki.issue_hub_cert(
        mesh.ca_key, mesh.ca, hub_id=hub_id, names=names, public_key=pki.new_key().public_key(), now=NOW
    )
    _check_leaf_common(cert, mesh)
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"ztm://{mesh.mesh_id}/hub/{hub_id}"]
    assert san.get_values_for_type(x509.DNSName) == ["hub.example.com", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1", "fe80::1"]
    assert set(ext(cert, x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    assert cert.not_valid_after_utc == NOW + timedelta(days=3650)
    ident = pki.verify_issued_by(cert, mesh.ca, now=NOW)
    assert ident == pki.Identity(mesh_id=mesh.mesh_id, hub_id=hub_id)
    assert ident.is_hub and ident.kind == "hub"


@pytest.mark.parametrize("name", ["hub:8888", "127.0.0.1:8888", "[::1]:8888", "", "a b", "-x.com", "a..b", "é.com"])
def test_hub_names_must_be_bare_hosts(mesh: Mesh, name: str) -> None:
    with pytest.raises(BadInput, match="hub name"):
        pki.issue_hub_cert(
            mesh.ca_key, mesh.ca, hub_id="0" * 16, names=[name], public_key=pki.new_key().public_key(), now=NOW
        )


def test_hub_id_is_checked(mesh: Mesh) -> None:
    with pytest.raises(BadInput, match="hub id"):
        pki.issue_hub_cert(
            mesh.ca_key, mesh.ca, hub_id="hub1", names=[], public_key=pki.new_key().public_key(), now=NOW
        )


def test_leaf_never_outlives_its_ca() -> None:
    short = make_mesh(days=30)
    cert = short.user(days=365)
    assert cert.not_valid_after_utc == short.ca.not_valid_after_utc


def test_naive_times_are_utc(mesh: Mesh) -> None:
    cert = mesh.user(now=NOW.replace(tzinfo=None))
    assert cert.not_valid_before_utc == NOW - timedelta(minutes=5)
    assert pki.verify_issued_by(cert, mesh.ca, now=NOW.replace(tzinfo=None)).user == "alice"


def test_issuing_needs_a_p256_key_and_a_ca(mesh: Mesh) -> None:
    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(BadInput, match="P-256"):
        pki.issue_user_cert(mesh.ca_key, mesh.ca, user="a", public_key=other, now=NOW)
    leaf = mesh.user()
    with pytest.raises(CertificateError, match="not a ztm CA"):
        pki.issue_user_cert(mesh.ca_key, leaf, user="a", public_key=pki.new_key().public_key(), now=NOW)


# ------------------------------------------------------------------------------------------------ identities


def test_identity_needs_uri_sans(mesh: Mesh) -> None:
    with pytest.raises(CertificateError, match="no ztm identity"):
        pki.identity_of(craft(mesh, None))
    with pytest.raises(CertificateError, match="no ztm identity"):
        pki.identity_of(craft(mesh, [x509.DNSName("example.com")]))


@pytest.mark.parametrize(
    "paths",
    [
        ["https://example.com/user/alice"],
        ["ztm://{m}/user/Alice"],
        ["ztm://{m}/user/"],
        ["ztm://{m}/user/alice/x"],
        ["ztm://{m}/ep/not-a-uuid"],
        ["ztm://{m}/hub/xyz"],
        ["ztm://{m}/cat"],
        ["ztm://{m}/root/alice"],
        ["ztm://ABCDEF0123456789/user/alice"],
        ["ztm://{m}/user/alice", "ztm://{m}/user/bob"],
        ["ztm://{m}/user/alice", "ztm://{m}/hub/0123456789abcdef"],
        ["ztm://{m}/ca", "ztm://{m}/user/alice"],
        ["ztm://{m}/ep/" + EP_ID],
        ["ztm://{m}/user/alice", "ztm://0123456789abcdef/ep/" + EP_ID],
    ],
)
def test_identity_rejects_malformed_or_inconsistent_uris(mesh: Mesh, paths: list[str]) -> None:
    cert = craft(mesh, [x509.UniformResourceIdentifier(p.format(m=mesh.mesh_id)) for p in paths])
    with pytest.raises(CertificateError, match="certificate"):
        pki.identity_of(cert)


def test_verify_rejects_another_ca(mesh: Mesh) -> None:
    other = make_mesh()
    with pytest.raises(CertificateError, match="not issued by this mesh's CA"):
        pki.verify_issued_by(other.user(), mesh.ca, now=NOW)
    # same subject name, other key: the signature is what counts
    forged = craft(mesh, [x509.UniformResourceIdentifier(f"ztm://{mesh.mesh_id}/user/eve")], key=other.ca_key)
    with pytest.raises(CertificateError, match="not issued by this mesh's CA"):
        pki.verify_issued_by(forged, mesh.ca, now=NOW)


def test_verify_checks_the_validity_window(mesh: Mesh) -> None:
    cert = mesh.user(days=10)
    assert pki.verify_issued_by(cert, mesh.ca, now=NOW + timedelta(days=10)).user == "alice"
    with pytest.raises(CertificateError, match=r"^certificate expired at 2026-05-11T12:00:00Z$"):
        pki.verify_issued_by(cert, mesh.ca, now=NOW + timedelta(days=10, seconds=1))
    with pytest.raises(CertificateError, match=r"^certificate not valid until 2026-05-01T11:55:00Z$"):
        pki.verify_issued_by(cert, mesh.ca, now=NOW - timedelta(minutes=6))


def test_verify_checks_the_mesh_id(mesh: Mesh) -> None:
    cert = craft(mesh, [x509.UniformResourceIdentifier("ztm://0123456789abcdef/user/alice")])
    with pytest.raises(CertificateError, match="belongs to mesh 0123456789abcdef"):
        pki.verify_issued_by(cert, mesh.ca, now=NOW)


# ------------------------------------------------------------------------------------------------ CSR, CRL


def test_csr_round_trip() -> None:
    key = pki.new_key()
    pem = pki.csr_to_pem(pki.make_csr(key, name="alice"))
    assert pem.startswith("-----BEGIN CERTIFICATE REQUEST-----")
    assert pki.same_public_key(key.public_key(), pki.csr_from_pem(pem))


def test_csr_with_a_bad_signature_is_refused() -> None:
    der = bytearray(pki.make_csr(pki.new_key(), name="alice").public_bytes(serialization.Encoding.DER))
    der[-3] ^= 0x01  # inside the ECDSA signature
    pem = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(BadInput, match="signature does not verify"):
        pki.csr_from_pem(pem)


def test_csr_garbage_and_other_curves_are_refused() -> None:
    with pytest.raises(BadInput, match="certificate request"):
        pki.csr_from_pem("hello")
    p384 = ec.generate_private_key(ec.SECP384R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(p384, hashes.SHA256())
    )
    with pytest.raises(BadInput, match="P-256"):
        pki.csr_from_pem(pki.csr_to_pem(csr))


def test_crl(mesh: Mesh) -> None:
    crl = pki.build_crl(mesh.ca_key, mesh.ca, revoked=[5, 7, 5], number=3, now=NOW)
    assert crl.is_signature_valid(pki.cert_public_key(mesh.ca))
    assert crl.issuer == mesh.ca.subject
    assert sorted(r.serial_number for r in crl) == [5, 7]
    assert crl.get_revoked_certificate_by_serial_number(7) is not None
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 3
    assert crl.last_update_utc == NOW
    assert crl.next_update_utc == NOW + timedelta(days=30)
    assert pki.crl_to_pem(crl).startswith("-----BEGIN X509 CRL-----")


# ------------------------------------------------------------------------------------------------ private files


def test_write_private_creates_0600_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "key.pem"
    path.write_text("old")
    path.chmod(0o644)
    pki.write_private(path, "new secret")
    assert path.read_text() == "new secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pki.write_private(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]


def test_write_private_creates_the_file_0600_exclusively(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    real_open = os.open

    def spy(path: str, flags: int, mode: int = 0o777, **kw: object) -> int:
        calls.append((flags, mode))
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", spy)
    old = os.umask(0o022)
    try:
        pki.write_private(tmp_path / "k", "x")
    finally:
        os.umask(old)
    flags, mode = calls[0]
    assert flags & os.O_CREAT and flags & os.O_EXCL
    assert mode == 0o600


def test_write_private_with_a_strict_umask_still_writes(tmp_path: Path) -> None:
    old = os.umask(0o277)
    try:
        pki.write_private(tmp_path / "k", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600


def test_write_private_leaves_the_old_file_on_failure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "key.pem"
    path.write_text("old")

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        pki.write_private(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]


# ------------------------------------------------------------------------------------------------ real TLS
#
# These establish the facts the hub relies on (see the module docstring of ztm.pki): a loopback TLS 1.3
# server holding a hub certificate and a client holding an endpoint certificate, both trusting the mesh CA.


@dataclass
class Party:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    def chain_file(self, tmp: Path) -> Path:
        path = tmp / f"{self.cert.serial_number}.pem"
        path.write_text(pki.cert_to_pem(self.cert) + pki.key_to_pem(self.key))
        return path


def real_now() -> datetime:
    return datetime.now(UTC)


def endpoint(mesh: Mesh, *, now: datetime | None = None, ttl: timedelta = timedelta(hours=1)) -> Party:
    key = pki.new_key()
    cert = pki.issue_endpoint_cert(
        mesh.ca_key, mesh.ca, user="alice", ep_id=EP_ID, public_key=key.public_key(), now=now or real_now(), ttl=ttl
    )
    return Party(cert, key)


def hub(mesh: Mesh) -> Party:
    key = pki.new_key()
    cert = pki.issue_hub_cert(
        mesh.ca_key, mesh.ca, hub_id=pki.new_hub_id(), names=["localhost", "127.0.0.1"], public_key=key.public_key(),
        now=real_now(),
    )  # fmt: skip
    return Party(cert, key)


@pytest.fixture(scope="module")
def live() -> Mesh:
    """A mesh whose CA was made long ago, so certificates can be issued in the past and the future."""
    return make_mesh(now=real_now() - timedelta(days=1000), days=3650)


def server_context(server: Party, ca: x509.Certificate, tmp: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(server.chain_file(tmp))
    ctx.load_verify_locations(cadata=pki.cert_to_pem(ca))
    return ctx


def client_context(client: Party, ca: x509.Certificate, tmp: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.load_cert_chain(client.chain_file(tmp))
    ctx.load_verify_locations(cadata=pki.cert_to_pem(ca))
    return ctx


@dataclass
class Outcome:
    server_error: OSError | None
    client_error: OSError | None
    peer_der: bytes | None

    @property
    def ok(self) -> bool:
        return self.server_error is None and self.client_error is None

    @property
    def server_reason(self) -> str:
        err = self.server_error
        assert isinstance(err, ssl.SSLCertVerificationError), err
        return err.verify_message


def handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str | None = None) -> Outcome:
    """One TLS connection on loopback; the server sends b"ok" once the handshake is done."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    out = Outcome(None, None, None)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
        except OSError as e:
            out.server_error = e
            return
        conn.settimeout(5)
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                out.peer_der = tls.getpeercert(binary_form=True)
                tls.sendall(b"ok")
        except OSError as e:  # ssl.SSLError is an OSError
            out.server_error = e
        finally:
            conn.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            if tls.recv(2) != b"ok":
                raise ConnectionError("server closed the connection")
    except OSError as e:
        out.client_error = e
    finally:
        thread.join(10)
        listener.close()
    return out


@pytest.fixture
def tls_pair(live: Mesh, tmp_path: Path) -> Iterator[Callable[..., Outcome]]:
    """handshake(client=Party, server_setup=callable(ctx)) with a hub of the live mesh as server."""
    server = hub(live)

    def run(client: Party, setup: Callable[[ssl.SSLContext], None] | None = None) -> Outcome:
        sctx = server_context(server, live.ca, tmp_path)
        if setup:
            setup(sctx)
        return handshake(sctx, client_context(client, live.ca, tmp_path))

    yield run


def test_tls_endpoint_client_and_hub_server_handshake(live: Mesh, tls_pair: Callable[..., Outcome]) -> None:
    client = endpoint(live)
    out = tls_pair(client)
    assert out.ok, out
    assert out.peer_der is not None
    peer = pki.cert_from_der(out.peer_der)
    assert pki.verify_issued_by(peer, live.ca, now=real_now()) == pki.Identity(live.mesh_id, "alice", EP_ID)


@pytest.mark.parametrize(("name", "ok"), [("localhost", True), ("127.0.0.1", True), ("example.com", False)])
def test_tls_hub_names_verify_with_check_hostname(live: Mesh, tmp_path: Path, name: str, ok: bool) -> None:
    cctx = client_context(endpoint(live), live.ca, tmp_path)
    cctx.check_hostname = True
    out = handshake(server_context(hub(live), live.ca, tmp_path), cctx, server_hostname=name)
    if ok:
        assert out.ok, out
    else:
        assert isinstance(out.client_error, ssl.SSLCertVerificationError)
        assert "Hostname mismatch" in out.client_error.verify_message


def test_tls_strict_verification_accepts_our_certificates(live: Mesh, tmp_path: Path) -> None:
    sctx = server_context(hub(live), live.ca, tmp_path)
    cctx = client_context(endpoint(live), live.ca, tmp_path)
    sctx.verify_flags |= ssl.VERIFY_X509_STRICT
    cctx.verify_flags |= ssl.VERIFY_X509_STRICT
    assert handshake(sctx, cctx).ok


def test_tls_refuses_expired_and_not_yet_valid_clients(live: Mesh, tls_pair: Callable[..., Outcome]) -> None:
    expired = endpoint(live, now=real_now() - timedelta(days=2), ttl=timedelta(days=1))
    out = tls_pair(expired)
    assert out.client_error is not None
    assert out.server_reason == "certificate has expired"
    future = endpoint(live, now=real_now() + timedelta(days=1))
    assert tls_pair(future).server_reason == "certificate is not yet valid"


def test_tls_refuses_a_client_of_another_ca(tls_pair: Callable[..., Outcome]) -> None:
    out = tls_pair(endpoint(make_mesh(now=real_now())))
    assert out.client_error is not None
    assert out.server_reason == "unable to get local issuer certificate"


def test_tls_client_refuses_a_hub_of_another_ca(live: Mesh, tmp_path: Path) -> None:
    other = make_mesh(now=real_now())
    out = handshake(server_context(hub(other), other.ca, tmp_path), client_context(endpoint(live), live.ca, tmp_path))
    assert isinstance(out.client_error, ssl.SSLCertVerificationError)
    # the server sends its CA along (OpenSSL builds the chain from its trust store): the client sees it untrusted
    assert out.client_error.verify_message == "self-signed certificate in certificate chain"


def _crl_file(tmp: Path, mesh: Mesh, revoked: list[int], *, now: datetime, with_ca: bool, n: int = 1) -> Path:
    path = tmp / f"crl-{n}.pem"
    crl = pki.crl_to_pem(pki.build_crl(mesh.ca_key, mesh.ca, revoked=revoked, number=n, now=now))
    path.write_text((pki.cert_to_pem(mesh.ca) if with_ca else "") + crl)
    return path


def test_tls_crl_from_cafile_refuses_a_revoked_client(
    live: Mesh, tls_pair: Callable[..., Outcome], tmp_path: Path
) -> None:
    evicted, kept = endpoint(live), endpoint(live)
    path = _crl_file(tmp_path, live, [evicted.cert.serial_number], now=real_now(), with_ca=True)

    def setup(ctx: ssl.SSLContext) -> None:
        ctx.load_verify_locations(cafile=path)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        assert ctx.cert_store_stats()["crl"] == 1

    out = tls_pair(evicted, setup)
    assert out.server_reason == "certificate revoked"
    assert isinstance(out.server_error, ssl.SSLCertVerificationError)
    assert out.server_error.verify_code == 23
    assert isinstance(out.client_error, ssl.SSLError)
    assert "revoked" in str(out.client_error)
    assert tls_pair(kept, setup).ok


def test_tls_crl_in_cadata_is_silently_ignored(live: Mesh, tls_pair: Callable[..., Outcome]) -> None:
    evicted = endpoint(live)
    crl = pki.build_crl(live.ca_key, live.ca, revoked=[evicted.cert.serial_number], number=1, now=real_now())

    def setup(ctx: ssl.SSLContext) -> None:
        with pytest.raises(ssl.SSLError, match="no start line"):
            ctx.load_verify_locations(cadata=pki.crl_to_pem(crl))  # a CRL alone is an error...
        ctx.load_verify_locations(cadata=pki.cert_to_pem(live.ca) + pki.crl_to_pem(crl))
        assert ctx.cert_store_stats()["crl"] == 0  # ...after a certificate it is skipped without a word
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF

    assert tls_pair(evicted, setup).server_reason == "unable to get certificate CRL"


def test_tls_crl_check_without_a_crl_refuses_everyone(live: Mesh, tls_pair: Callable[..., Outcome]) -> None:
    def setup(ctx: ssl.SSLContext) -> None:
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF

    assert tls_pair(endpoint(live), setup).server_reason == "unable to get certificate CRL"


def test_tls_stale_crl_refuses_everyone(live: Mesh, tls_pair: Callable[..., Outcome], tmp_path: Path) -> None:
    path = _crl_file(tmp_path, live, [], now=real_now() - timedelta(days=31), with_ca=False)

    def setup(ctx: ssl.SSLContext) -> None:
        ctx.load_verify_locations(cafile=path)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF

    assert tls_pair(endpoint(live), setup).server_reason == "CRL has expired"


def test_tls_crl_update_on_a_live_context(live: Mesh, tmp_path: Path) -> None:
    """A CRL with a later last_update, loaded into the context in use, takes over (unless it is from the future)."""
    client = endpoint(live)
    sctx = server_context(hub(live), live.ca, tmp_path)
    sctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    cctx = client_context(client, live.ca, tmp_path)
    t0 = real_now() - timedelta(minutes=1)
    serial = client.cert.serial_number

    sctx.load_verify_locations(cafile=_crl_file(tmp_path, live, [], now=t0, with_ca=False, n=1))
    assert handshake(sctx, cctx).ok
    revoking = _crl_file(tmp_path, live, [serial], now=t0 + timedelta(seconds=1), with_ca=False, n=2)
    sctx.load_verify_locations(cafile=revoking)
    assert handshake(sctx, cctx).server_reason == "certificate revoked"
    sctx.load_verify_locations(cafile=_crl_file(tmp_path, live, [], now=t0 + timedelta(seconds=2), with_ca=False, n=3))
    assert handshake(sctx, cctx).ok
    future = real_now() + timedelta(minutes=5)
    sctx.load_verify_locations(cafile=_crl_file(tmp_path, live, [serial], now=future, with_ca=False, n=4))
    assert handshake(sctx, cctx).ok  # a CRL from the future is not used
    assert sctx.cert_store_stats()["crl"] == 4
