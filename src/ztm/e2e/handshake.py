"""The SIGMA-I handshake that makes an end-to-end session: HELLO, HELLO_R, AUTH (PROTOCOL.md section 11).

`Initiator` and `Responder` are sans-IO state machines: they take whole frames (from a `FrameReader`) and return
the frames to send, and finally a `Session`. Each side proves its endpoint certificate's key by signing the
transcript so far (with a role label) and proves it holds the Diffie-Hellman secret with a MAC over the transcript
and its own signature; a certificate is checked against the mesh CA, the mesh id, its kind (endpoint), its validity
now and the revocation list, and, for the responder, the endpoint id the initiator meant to reach.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from ztm import pki
from ztm.e2e import frames
from ztm.e2e.errors import E2EError
from ztm.e2e.record import expand
from ztm.e2e.session import Session
from ztm.errors import BadInput, CertificateError

VERSION = 1
_SALT = b"ztm-e2e v1"
_SIG_R = b"ztm-e2e v1 responder\x00"
_SIG_I = b"ztm-e2e v1 initiator\x00"
_FIN_R = b"ztm-e2e v1 responder finished"
_FIN_I = b"ztm-e2e v1 initiator finished"
_SESSION = b"ztm-e2e v1 session"
_SESSION_ID = b"ztm-e2e v1 session id"
_ECDSA = ec.ECDSA(hashes.SHA256())
_RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass(frozen=True)
class Peer:
    """The endpoint at the other end of a session, from its verified certificate."""

    ep_id: str
    user: str
    serial: int
    not_after: datetime  # aware, UTC


@dataclass
class Credentials:
    """What one endpoint brings to handshakes in one mesh: the mesh CA, its endpoint certificate and key, the
    revocation check (serial -> revoked now?) and a clock (aware UTC). `ValueError` if the certificate is not an
    endpoint certificate of `mesh_id` or the CA is not that mesh's."""

    mesh_id: str
    ca_cert: x509.Certificate
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    revoked: Callable[[int], bool]
    now: Callable[[], datetime] = _utcnow
    ep_id: str = field(init=False)
    cert_der: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            own = pki.identity_of(self.cert)
        except CertificateError as e:
            raise ValueError(f"own certificate: {e}") from None
        if not own.is_endpoint or own.ep_id is None or own.mesh_id != self.mesh_id:
            raise ValueError(f"own certificate is not an endpoint certificate of mesh {self.mesh_id} ({own})")
        try:
            ca_mesh = pki.cert_mesh_id(self.ca_cert)
        except CertificateError as e:
            raise ValueError(f"mesh CA certificate: {e}") from None
        if ca_mesh != self.mesh_id:
            raise ValueError(f"the CA certificate is mesh {ca_mesh}'s, not mesh {self.mesh_id}'s")
        self.ep_id = own.ep_id
        self.cert_der = self.cert.public_bytes(serialization.Encoding.DER)


def check_peer_cert(creds: Credentials, der: bytes, expected_ep: str | None) -> tuple[Peer, ec.EllipticCurvePublicKey]:
    """Verify a peer's endpoint certificate (DER) for `creds`' mesh; the peer and its public key, else `E2EError`."""
    try:
        cert = pki.cert_from_der(der)
        ident = pki.identity_of(cert)
    except (BadInput, CertificateError) as e:
        raise E2EError("certificate", f"the peer's certificate is unusable: {e}") from None
    if ident.mesh_id != creds.mesh_id:
        raise E2EError("wrong_mesh", f"the peer's certificate belongs to mesh {ident.mesh_id}, not {creds.mesh_id}")
    now = creds.now()
    try:
        pki.check_signed_by(cert, creds.ca_cert)
        key = pki.cert_public_key(cert)
    except CertificateError as e:
        raise E2EError("certificate", f"the peer's certificate is refused: {e}") from None
    if not ident.is_endpoint or ident.ep_id is None or ident.user is None:
        raise E2EError("certificate", f"the peer's certificate is not an endpoint certificate ({ident.kind})")
    if now > cert.not_valid_after_utc:
        raise E2EError("expired", f"the peer's certificate expired at {cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}")
    if now < cert.not_valid_before_utc:
        when = f"{cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ}"
        raise E2EError("certificate", f"the peer's certificate is not valid until {when} (check the clocks)")
    if creds.revoked(cert.serial_number):
        raise E2EError("revoked", f"the peer's certificate (endpoint {ident.ep_id}) was revoked")
    if expected_ep is not None and ident.ep_id != expected_ep:
        raise E2EError("wrong_peer", f"the peer is endpoint {ident.ep_id}, not the endpoint {expected_ep} called")
    return Peer(ident.ep_id, ident.user, cert.serial_number, cert.not_valid_after_utc), key


def _verify(key: ec.EllipticCurvePublicKey, sig: bytes, data: bytes, who: str) -> None:
    try:
        key.verify(sig, data, _ECDSA)
    except (InvalidSignature, ValueError):
        raise E2EError("signature", f"the {who}'s handshake signature does not verify: refused") from None


def _check_mac(key: bytes, mac: bytes, data: bytes, who: str) -> None:
    if not hmac.compare_digest(hmac.digest(key, data, "sha256"), mac):
        raise E2EError("signature", f"the {who}'s handshake MAC does not verify (not the key holder?): refused")


def _dh(private: X25519PrivateKey, public: bytes) -> bytes:
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    except ValueError:
        raise E2EError("malformed", "malformed end-to-end handshake: a degenerate X25519 key") from None
    if shared == bytes(32):
        raise E2EError("malformed", "malformed end-to-end handshake: a degenerate X25519 key")
    return hmac.digest(_SALT, shared, "sha256")


def _session(prk: bytes, transcript: bytes) -> tuple[bytes, bytes]:
    th = _h(transcript)
    return _h(_SESSION_ID + th)[:16], expand(prk, _SESSION + th)


def _refused(frame: bytes) -> E2EError:
    return E2EError("refused", f"the peer refused the end-to-end handshake: {frames.parse_error(frame)}")


def _frame_type(frame: bytes) -> int:
    return frame[0] if frame else 0


class Initiator:
    """The calling side: `hello()`, then `on_hello_r(frame)` returns AUTH and sets `session`."""

    def __init__(self, creds: Credentials, expected_ep: str) -> None:
        if not frames.printable_ascii(expected_ep.encode("utf-8")) or len(expected_ep) > 255:
            raise ValueError(f"not an endpoint id: {expected_ep!r}")
        self.creds = creds
        self.expected_ep = expected_ep
        self.session: Session | None = None
        self._eph: X25519PrivateKey | None = X25519PrivateKey.generate()
        self._hello: bytes | None = None

    def hello(self) -> bytes:
        """The HELLO frame (once)."""
        if self._hello is not None or self._eph is None:
            raise RuntimeError("hello() was already called")
        mesh = self.creds.mesh_id.encode("ascii")
        ep = self.expected_ep.encode("ascii")
        eph = self._eph.public_key().public_bytes(*_RAW)
        self._hello = frames.encode(frames.HELLO, bytes([VERSION]) + eph + frames.u8_bytes(mesh) + frames.u8_bytes(ep))
        return self._hello

    def on_hello_r(self, frame: bytes) -> bytes:
        """Check the responder's HELLO_R (certificate, signature, MAC); the AUTH frame. Sets `session`."""
        eph, hello = self._eph, self._hello
        if eph is None or hello is None:
            raise RuntimeError("on_hello_r() needs hello() first, and only once")
        self._eph = None  # one try: the ephemeral secret is gone whatever happens next
        if _frame_type(frame) == frames.ERROR:
            raise _refused(frame)
        cur = frames.Cursor(frames.body_of(frame, frames.HELLO_R), "HELLO_R")
        eph_r = cur.take(32)
        cert_r = cur.u16_bytes()
        sig_r = cur.u16_bytes()
        mac_r = cur.take(32)
        cur.end()
        peer, key_r = check_peer_cert(self.creds, cert_r, self.expected_ep)
        prk = _dh(eph, eph_r)
        th2 = _h(hello + eph_r + frames.u16_bytes(cert_r))
        _verify(key_r, sig_r, _SIG_R + th2, "responder")
        _check_mac(expand(prk, _FIN_R + th2), mac_r, th2 + _h(sig_r), "responder")
        cert_i = self.creds.cert_der
        th3 = _h(hello + frame + frames.u16_bytes(cert_i))
        sig_i = self.creds.key.sign(_SIG_I + th3, _ECDSA)
        mac_i = hmac.digest(expand(prk, _FIN_I + th3), th3 + _h(sig_i), "sha256")
        auth = frames.encode(frames.AUTH, frames.u16_bytes(cert_i) + frames.u16_bytes(sig_i) + mac_i)
        session_id, secret = _session(prk, hello + frame + auth)
        self.session = Session(
            session_id, secret, peer=peer, initiator=True, own_not_after=self.creds.cert.not_valid_after_utc
        )
        return auth


class Responder:
    """The called side: `on_hello(frame)` returns HELLO_R, `on_auth(frame)` returns the `Session`."""

    def __init__(self, creds: Credentials) -> None:
        self.creds = creds
        self._prk: bytes | None = None
        self._transcript = b""  # frame(HELLO) | frame(HELLO_R)
        self._done = False

    def on_hello(self, frame: bytes) -> bytes:
        """Check the initiator's HELLO (version, mesh, that it is meant for this endpoint); the HELLO_R frame."""
        if self._transcript or self._done:
            raise RuntimeError("on_hello() may be called once")
        self._done = True
        cur = frames.Cursor(frames.body_of(frame, frames.HELLO), "HELLO")
        version = cur.u8()
        if version != VERSION:
            raise E2EError("version", f"the peer speaks end-to-end version {version}, this agent only {VERSION}")
        eph_i = cur.take(32)
        mesh = cur.ascii()
        ep = cur.ascii()
        cur.end()
        if mesh != self.creds.mesh_id:
            raise E2EError("wrong_mesh", f"the peer called mesh {mesh}, this is mesh {self.creds.mesh_id}")
        if ep != self.creds.ep_id:
            raise E2EError("wrong_peer", f"the peer called endpoint {ep}, this is endpoint {self.creds.ep_id}")
        eph = X25519PrivateKey.generate()
        prk = _dh(eph, eph_i)
        eph_r = eph.public_key().public_bytes(*_RAW)
        cert_r = self.creds.cert_der
        th2 = _h(frame + eph_r + frames.u16_bytes(cert_r))
        sig_r = self.creds.key.sign(_SIG_R + th2, _ECDSA)
        mac_r = hmac.digest(expand(prk, _FIN_R + th2), th2 + _h(sig_r), "sha256")
        hello_r = frames.encode(frames.HELLO_R, eph_r + frames.u16_bytes(cert_r) + frames.u16_bytes(sig_r) + mac_r)
        self._prk = prk
        self._transcript = frame + hello_r
        return hello_r

    def on_auth(self, frame: bytes) -> Session:
        """Check the initiator's AUTH (certificate, signature, MAC); the new `Session`."""
        prk = self._prk
        if prk is None:
            raise RuntimeError("on_auth() needs on_hello() first, and only once")
        self._prk = None  # one try
        if _frame_type(frame) == frames.ERROR:
            raise _refused(frame)
        cur = frames.Cursor(frames.body_of(frame, frames.AUTH), "AUTH")
        cert_i = cur.u16_bytes()
        sig_i = cur.u16_bytes()
        mac_i = cur.take(32)
        cur.end()
        peer, key_i = check_peer_cert(self.creds, cert_i, None)
        th3 = _h(self._transcript + frames.u16_bytes(cert_i))
        _verify(key_i, sig_i, _SIG_I + th3, "initiator")
        _check_mac(expand(prk, _FIN_I + th3), mac_i, th3 + _h(sig_i), "initiator")
        session_id, secret = _session(prk, self._transcript + frame)
        self._transcript = b""
        return Session(
            session_id, secret, peer=peer, initiator=False, own_not_after=self.creds.cert.not_valid_after_utc
        )
