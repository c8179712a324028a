"""The identity matrix: every kind of bad client identity is refused by the hub, each in its own test.

One real hub (with its admin port, whose `handshake_failures` counter shows the refusal happened at the hub's TLS
handshake) and one real agent joined as root, whose endpoint id the forged certificates name, so that in each case
exactly one thing is wrong: the issuer, the validity window, the user (evicted), the key usage, the missing client
certificate, the TLS version. A control probe with the agent's genuine endpoint certificate is taken in.

Reuses `tls_probe` / `Probe` from tests/integration/test_users.py (which also covers eviction end to end with curl).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from integration.test_hub_admin import metrics
from integration.test_users import EMPTY_SETTINGS, H2_PREFACE, Probe, tls_probe
from support import (
    Agent,
    Hub,
    free_port,
    invite,
    split_hostport,
    start_agent,
    start_hub_and_agents,
    wait_until,
)
from ztm import pki

MESH = "m"


@dataclass
class World:
    hub: Hub
    admin: str
    root: Agent
    mesh_id: str
    ep_id: str
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    files: Path
    """root's agent's TLS files of the mesh: ca.pem, ep.crt, ep.key, user.crt."""
    tmp: Path

    def refused(self, make_probe: Callable[[], Probe], reason: str | None) -> Probe:
        """Run a probe that must be refused at the hub's handshake: not taken in, counted by the hub, and (unless
        `reason` is None) logged by the hub with `reason`: OpenSSL's words, as RELIABILITY.md's identity matrix
        quotes them."""
        log = self.hub.data / "hub.log"
        offset = log.stat().st_size
        before = metrics(self.admin).get("ztm_hub_handshake_failures_total", 0)
        probe = make_probe()
        assert not probe.accepted, f"the hub took the connection in: {probe}"
        wait_until(
            lambda: metrics(self.admin).get("ztm_hub_handshake_failures_total", 0) > before,
            10,
            "the hub to count a refused TLS handshake",
        )
        self.hub.proc.assert_alive()
        if reason is not None:
            reasons = self.hub_reasons(offset)
            assert reasons, f"the hub logged no refusal: {_read_from(log, offset)!r}"
            assert all(reason in r for r in reasons), f"refused for another reason than {reason!r}: {reasons}"
        return probe

    def hub_reasons(self, offset: int) -> list[str]:
        """The reasons of the refusals the hub logged after byte `offset` of its log (the counter is polled before
        this is called; the log line is written before the counter is read, by the same call)."""
        text = _read_from(self.hub.data / "hub.log", offset)
        assert "more TLS handshakes refused this minute" not in text, (
            "the hub logs only its first ten refusals a minute, and this module made more before this check: "
            "keep the tests that check a reason among the module's first ten refusals"
        )
        return [m.group(1) for m in _REFUSED.finditer(text)]

    def forge(self, name: str, cert: x509.Certificate) -> Path:
        """Write `cert` (for the root agent's key) to a file; returns its path."""
        path = self.tmp / f"{name}.crt"
        path.write_text(pki.cert_to_pem(cert))
        return path


_REFUSED = re.compile(r"TLS handshake from \S+ refused: (.*)$", re.MULTILINE)


def _read_from(path: Path, offset: int) -> str:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("identity")
    admin = f"127.0.0.1:{free_port()}"
    hub, agents = start_hub_and_agents(tmp, ("root",), hub_extra=["--admin", admin])
    root = agents["root"]
    try:
        root.join(MESH, "alpha", hub.permit)
        files = root.data / "meshes" / MESH
        ep_cert = pki.cert_from_pem((files / "ep.crt").read_text())
        identity = pki.identity_of(ep_cert)
        assert identity.ep_id is not None
        ca_key, ca_cert = hub.ca_pems()
        yield World(
            hub=hub,
            admin=admin,
            root=root,
            mesh_id=identity.mesh_id,
            ep_id=identity.ep_id,
            ca_key=pki.key_from_pem(ca_key),
            ca_cert=pki.cert_from_pem(ca_cert),
            files=files,
            tmp=tmp,
        )
    finally:
        root.proc.stop()
        hub.proc.stop()


def _agent_public_key(world: World) -> ec.EllipticCurvePublicKey:
    return pki.cert_public_key(pki.cert_from_pem((world.files / "ep.crt").read_text()))


def _endpoint_cert(world: World, *, now: dt.datetime, ttl: dt.timedelta) -> x509.Certificate:
    return pki.issue_endpoint_cert(
        world.ca_key,
        world.ca_cert,
        user="root",
        ep_id=world.ep_id,
        public_key=_agent_public_key(world),
        now=now,
        ttl=ttl,
    )


def _probe(world: World, cert: Path) -> Probe:
    return tls_probe(world.hub.address, world.files / "ca.pem", cert, world.files / "ep.key")


def test_control_the_genuine_endpoint_certificate_is_taken_in(world: World) -> None:
    probe = _probe(world, world.files / "ep.crt")
    assert probe.accepted, f"the genuine certificate was refused: {probe}"


def test_a_certificate_from_another_ca_is_refused(world: World) -> None:
    # An impostor CA claiming the very same mesh id: only the signature chain is wrong.
    other_key, other_ca = pki.create_ca(world.mesh_id, now=dt.datetime.now(dt.UTC))
    cert = pki.issue_endpoint_cert(
        other_key, other_ca, user="root", ep_id=world.ep_id, public_key=_agent_public_key(world),
        now=dt.datetime.now(dt.UTC), ttl=dt.timedelta(hours=1),
    )  # fmt: skip
    path = world.forge("other-ca", cert)
    world.refused(lambda: _probe(world, path), "unable to get local issuer certificate")


def test_an_expired_certificate_is_refused(world: World) -> None:
    cert = _endpoint_cert(world, now=dt.datetime.now(dt.UTC) - dt.timedelta(days=2), ttl=dt.timedelta(hours=1))
    assert cert.not_valid_after_utc < dt.datetime.now(dt.UTC)
    path = world.forge("expired", cert)
    world.refused(lambda: _probe(world, path), "certificate has expired")


def test_a_certificate_not_yet_valid_is_refused(world: World) -> None:
    cert = _endpoint_cert(world, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=2), ttl=dt.timedelta(hours=24))
    assert cert.not_valid_before_utc > dt.datetime.now(dt.UTC)
    path = world.forge("future", cert)
    world.refused(lambda: _probe(world, path), "certificate is not yet valid")


def _leaf(world: World, *, key_usage: x509.KeyUsage, eku: list[x509.ObjectIdentifier]) -> x509.Certificate:
    """An endpoint certificate of the mesh CA for root's endpoint, with the given key usages."""
    now = dt.datetime.now(dt.UTC)
    public_key = _agent_public_key(world)
    sans = [
        x509.UniformResourceIdentifier(f"ztm://{world.mesh_id}/user/root"),
        x509.UniformResourceIdentifier(f"ztm://{world.mesh_id}/ep/{world.ep_id}"),
    ]
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, world.ep_id)]))
        .issuer_name(world.ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(world.ca_key.public_key()), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(world.ca_key, hashes.SHA256())
    )


def _key_usage(*, digital_signature: bool, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def test_control_a_forged_leaf_with_the_right_key_usage_is_taken_in(world: World) -> None:
    """The builder of the wrong-key-usage cases makes a certificate the hub takes when the usage is right, so the
    refusals below are about the usage and nothing else."""
    cert = _leaf(
        world, key_usage=_key_usage(digital_signature=True, cert_sign=False), eku=[ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    path = world.forge("right-usage", cert)
    assert _probe(world, path).accepted


@pytest.mark.parametrize(
    ("case", "digital_signature", "cert_sign", "eku"),
    [
        ("server-auth-only", True, False, [ExtendedKeyUsageOID.SERVER_AUTH]),
        ("code-signing", True, False, [ExtendedKeyUsageOID.CODE_SIGNING]),
        ("no-digital-signature", False, True, [ExtendedKeyUsageOID.CLIENT_AUTH]),
    ],
)
def test_a_certificate_with_the_wrong_key_usage_is_refused(
    world: World, case: str, digital_signature: bool, cert_sign: bool, eku: list[x509.ObjectIdentifier]
) -> None:
    cert = _leaf(world, key_usage=_key_usage(digital_signature=digital_signature, cert_sign=cert_sign), eku=eku)
    path = world.forge(case, cert)
    world.refused(lambda: _probe(world, path), "unsuitable certificate purpose")


def test_a_certificate_of_an_evicted_user_is_refused(world: World) -> None:
    bob = start_agent(world.tmp, "bob")
    try:
        permit = invite(world.root, bob, "bob", world.tmp / "bob.json")
        bob.join(MESH, "bob-laptop", permit)
        bob_files = bob.data / "meshes" / MESH
        saved = world.tmp / "bob-saved"
        saved.mkdir()
        for name in ("ca.pem", "ep.crt", "ep.key", "user.crt"):
            (saved / name).write_bytes((bob_files / name).read_bytes())
        assert tls_probe(world.hub.address, saved / "ca.pem", saved / "ep.crt", saved / "ep.key").accepted
        bob.proc.stop()  # so that only the probes below meet the hub with bob's certificates
        world.root.cli("evict", "bob")
        for cert in ("ep.crt", "user.crt"):
            world.refused(
                lambda c=cert: tls_probe(world.hub.address, saved / "ca.pem", saved / c, saved / "ep.key"),
                "certificate revoked",
            )
    finally:
        bob.proc.stop()


def _raw_probe(world: World, ctx: ssl.SSLContext) -> Probe:
    """Like `tls_probe` with a caller-made context (no certificate, older TLS versions)."""
    host, port = split_hostport(world.hub.address)
    with socket.create_connection((host, port), timeout=5) as raw:
        try:
            tls = ctx.wrap_socket(raw)
        except (ssl.SSLError, OSError) as exc:
            return Probe(False, None, f"{type(exc).__name__}: {exc}")
        with tls:
            try:
                tls.sendall(H2_PREFACE + EMPTY_SETTINGS)
                return Probe(True, tls.recv(65536), None)
            except (ssl.SSLError, OSError) as exc:
                return Probe(True, None, f"{type(exc).__name__}: {exc}")


def _client_context(world: World, *, with_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cafile=str(world.files / "ca.pem"))
    if with_cert:
        ctx.load_cert_chain(str(world.files / "ep.crt"), str(world.files / "ep.key"))
    ctx.set_alpn_protocols(["h2"])
    return ctx


def test_no_client_certificate_is_refused(world: World) -> None:
    ctx = _client_context(world, with_cert=False)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    probe = world.refused(lambda: _raw_probe(world, ctx), "peer did not return a certificate")
    # TLS 1.3: the client's handshake completes before the hub checks for a certificate; then the hub's alert, or a
    # bare close when asyncio drops the alert (PROTOCOL.md), never an HTTP/2 frame nor silence.
    refused_by_alert = probe.error is not None and "certificate required" in probe.error
    assert probe.first_read == b"" or refused_by_alert, f"not refused by an alert or a close: {probe}"


def test_tls_1_2_is_refused(world: World) -> None:
    """The genuine certificate over TLS 1.2 (a real OpenSSL client): the hub offers TLS 1.3 only."""
    ctx = _client_context(world)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    # The hub logs only ten refusals a minute, and the module's first ten are spent on the cases above (the hub's
    # reason here would be OpenSSL's "unsupported protocol"); the client's side shows the version was refused.
    probe = world.refused(lambda: _raw_probe(world, ctx), None)
    assert not probe.handshake, f"a TLS 1.2 handshake completed: {probe}"


def _client_hello(version: int) -> bytes:
    """A minimal ClientHello offering only `version` (0x0301 TLS 1.0 ... 0x0303 TLS 1.2) and no extensions, so the
    hub's refusal of old versions is tested even where this machine's OpenSSL would not offer them any more."""
    suites = bytes.fromhex("c02bc02fc013c014c009c00a002f0035000a")
    body = version.to_bytes(2, "big") + os.urandom(32) + b"\x00"
    body += len(suites).to_bytes(2, "big") + suites + b"\x01\x00"
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


@pytest.mark.parametrize(("version", "code"), [("TLS 1.2", 0x0303), ("TLS 1.1", 0x0302), ("TLS 1.0", 0x0301)])
def test_tls_1_2_or_lower_client_hello_is_refused(world: World, version: str, code: int) -> None:
    host, port = split_hostport(world.hub.address)
    before = metrics(world.admin).get("ztm_hub_handshake_failures_total", 0)
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(_client_hello(code))
        answer = b""
        with contextlib.suppress(ConnectionError):
            while chunk := sock.recv(4096):
                answer += chunk
    # Either a fatal alert (21) protocol_version (70) or a bare close; never a ServerHello (22).
    assert not answer.startswith(b"\x16"), f"the hub answered a {version} ClientHello with a handshake: {answer[:16]!r}"
    if answer:
        assert answer[0] == 0x15 and answer[5:7] == b"\x02\x46", f"{version}: unexpected answer {answer[:16]!r}"
    wait_until(
        lambda: metrics(world.admin).get("ztm_hub_handshake_failures_total", 0) > before,
        10,
        "the hub to count the refused handshake",
    )
