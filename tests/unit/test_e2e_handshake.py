"""`ztm.e2e` handshake: a full SIGMA-I handshake both ways, and each refusal (certificate of another mesh, expired,
revoked, a user certificate, wrong endpoint, bad signature, bad MAC, the identity-misbinding swap, version)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography.hazmat.primitives import serialization
from e2e_mesh import Mesh, handshake

from ztm import pki
from ztm.e2e import (
    AUTH,
    DATA,
    HELLO_R,
    Credentials,
    E2EError,
    Initiator,
    Responder,
    error_frame,
    frames,
)
from ztm.e2e.frames import Cursor, body_of, encode, u16_bytes


def _reason(exc: pytest.ExceptionInfo[E2EError]) -> str:
    return exc.value.reason


def test_full_handshake_then_records_both_ways() -> None:
    mesh = Mesh()
    alice, bob = mesh.creds("alice"), mesh.creds("bob")
    s_a, s_b = handshake(alice, bob)
    assert s_a.id == s_b.id and len(s_a.id) == 16
    assert s_a.peer.ep_id == bob.ep_id and s_a.peer.user == "bob"
    assert s_b.peer.ep_id == alice.ep_id and s_b.peer.user == "alice"
    assert s_b.peer.serial == alice.cert.serial_number
    assert s_a.peer.not_after == bob.cert.not_valid_after_utc
    assert s_a.initiator and not s_b.initiator
    assert s_a.suite == "X25519-ECDSA-P256-AES256GCM"
    ca, cb = s_a.channel(0), s_b.channel(0)
    assert cb.feed(ca.seal(DATA, b"ping")) == [(DATA, b"ping")]
    assert ca.feed(cb.seal(DATA, b"pong")) == [(DATA, b"pong")]
    # the other way round: bob calls alice, a different session
    s_b2, s_a2 = handshake(bob, alice)
    assert s_b2.id != s_a.id and s_b2.initiator
    c1, c2 = s_b2.channel(0), s_a2.channel(0)
    assert c2.feed(c1.seal(DATA, b"x")) == [(DATA, b"x")]
    # keys differ per session: a record of one does not open in the other
    with pytest.raises(E2EError) as e:
        s_b.channel(0).feed(s_b2.channel(0).seal(DATA, b"x"))
    assert _reason(e) == "integrity"


def test_sessions_are_fresh_each_handshake() -> None:
    mesh = Mesh()
    alice, bob = mesh.creds("alice"), mesh.creds("bob")
    assert handshake(alice, bob)[0].id != handshake(alice, bob)[0].id


def _refused_by_initiator(alice: Credentials, bob: Credentials, expected: str | None = None) -> str:
    ini = Initiator(alice, expected or bob.ep_id)
    resp = Responder(bob)
    hello_r = resp.on_hello(ini.hello())
    with pytest.raises(E2EError) as e:
        ini.on_hello_r(hello_r)
    assert ini.session is None
    return _reason(e)


def _refused_by_responder(alice: Credentials, bob: Credentials) -> str:
    ini = Initiator(alice, bob.ep_id)
    resp = Responder(bob)
    auth = ini.on_hello_r(resp.on_hello(ini.hello()))
    with pytest.raises(E2EError) as e:
        resp.on_auth(auth)
    return _reason(e)


def _posing_as(creds: Credentials, mesh: Mesh, ep_id: str | None = None) -> Credentials:
    """`creds` (a real endpoint's key and certificate) claiming mesh `mesh` and, optionally, endpoint `ep_id`: what
    an attacker holding them sends."""
    creds.mesh_id, creds.ca_cert, creds.revoked = mesh.mesh_id, mesh.ca_cert, mesh.revoked.__contains__
    if ep_id is not None:
        creds.ep_id = ep_id
    return creds


def _rebuild(frame: bytes, ftype: int, fields: list[bytes]) -> bytes:
    assert frame[0] == ftype
    return encode(ftype, b"".join(fields))


def _split_hello_r(frame: bytes) -> list[bytes]:
    cur = Cursor(body_of(frame, HELLO_R), "HELLO_R")
    eph, cert, sig, mac = cur.take(32), cur.u16_bytes(), cur.u16_bytes(), cur.take(32)
    return [eph, cert, sig, mac]


def _split_auth(frame: bytes) -> list[bytes]:
    cur = Cursor(body_of(frame, AUTH), "AUTH")
    return [cur.u16_bytes(), cur.u16_bytes(), cur.take(32)]


def _flip(data: bytes, i: int = -1) -> bytes:
    b = bytearray(data)
    b[i] ^= 0x01
    return bytes(b)


def test_certificate_of_another_mesh_refused_both_ways() -> None:
    mesh, other = Mesh(), Mesh()
    bob = mesh.creds("bob")
    mallory = _posing_as(other.creds("mallory"), mesh)
    assert _refused_by_responder(mallory, bob) == "wrong_mesh"
    alice = mesh.creds("alice")
    fake_bob = _posing_as(other.creds("bob"), mesh, ep_id=bob.ep_id)
    assert _refused_by_initiator(alice, fake_bob, expected=bob.ep_id) == "wrong_mesh"


def test_certificate_naming_this_mesh_from_another_ca_refused() -> None:
    mesh, other = Mesh(), Mesh()
    # another CA that claims to be this mesh's: it can issue certificates naming this mesh id
    other.ca_key, other.ca_cert = pki.create_ca(mesh.mesh_id, now=mesh.now)
    other.mesh_id = mesh.mesh_id
    bob = mesh.creds("bob")
    mallory = _posing_as(other.creds("mallory"), mesh)
    assert _refused_by_responder(mallory, bob) == "certificate"
    fake_bob = _posing_as(other.creds("bob"), mesh, ep_id=bob.ep_id)
    assert _refused_by_initiator(mesh.creds("alice"), fake_bob, expected=bob.ep_id) == "certificate"


def test_expired_certificate_refused_both_ways() -> None:
    mesh = Mesh()
    old = mesh.now - timedelta(hours=3)
    stale_alice = mesh.wrap(*mesh.endpoint_cert("alice", at=old, ttl=timedelta(hours=1)))
    stale_bob = mesh.wrap(*mesh.endpoint_cert("bob", at=old, ttl=timedelta(hours=1)))
    assert _refused_by_responder(stale_alice, mesh.creds("bob")) == "expired"
    assert _refused_by_initiator(mesh.creds("alice"), stale_bob) == "expired"


def test_revoked_certificate_refused_both_ways() -> None:
    mesh = Mesh()
    alice, bob = mesh.creds("alice"), mesh.creds("bob")
    mesh.revoked.add(alice.cert.serial_number)
    assert _refused_by_responder(alice, bob) == "revoked"
    mesh.revoked.clear()
    mesh.revoked.add(bob.cert.serial_number)
    assert _refused_by_initiator(alice, bob) == "revoked"


def test_user_certificate_is_not_an_endpoint_certificate() -> None:
    mesh = Mesh()
    alice, bob = mesh.creds("alice"), mesh.creds("bob")
    with pytest.raises(ValueError, match="not an endpoint certificate"):
        mesh.wrap(*mesh.user_cert("alice"))
    key, cert = mesh.user_cert("alice")
    alice.key, alice.cert = key, cert
    alice.cert_der = cert.public_bytes(serialization.Encoding.DER)
    assert _refused_by_responder(alice, bob) == "certificate"
    bob2 = mesh.creds("bob")
    ep = bob2.ep_id
    bob2.key, bob2.cert, bob2.cert_der = key, cert, alice.cert_der
    assert _refused_by_initiator(mesh.creds("carol"), bob2, expected=ep) == "certificate"


def test_wrong_endpoint_refused() -> None:
    mesh = Mesh()
    alice, bob, carol = mesh.creds("alice"), mesh.creds("bob"), mesh.creds("carol")
    # the HELLO names bob but reaches carol: carol refuses
    ini = Initiator(alice, bob.ep_id)
    with pytest.raises(E2EError) as e:
        Responder(carol).on_hello(ini.hello())
    assert _reason(e) == "wrong_peer"
    # a member (carol) answering as bob with her own certificate: the initiator refuses
    assert _refused_by_initiator(alice, _posing_as(carol, mesh, ep_id=bob.ep_id), expected=bob.ep_id) == "wrong_peer"


def test_hello_of_another_mesh_refused() -> None:
    mesh, other = Mesh(), Mesh()
    bob = mesh.creds("bob")
    ini = Initiator(other.creds("alice"), bob.ep_id)
    with pytest.raises(E2EError) as e:
        Responder(bob).on_hello(ini.hello())
    assert _reason(e) == "wrong_mesh"


def test_version_other_than_1_refused() -> None:
    mesh = Mesh()
    alice, bob = mesh.creds("alice"), mesh.creds("bob")
    hello = bytearray(Initiator(alice, bob.ep_id).hello())
    hello[4] = 2
    with pytest.raises(E2EError) as e:
        Responder(bob).on_hello(bytes(hello))
    assert _reason(e) == "version"


@pytest.mark.parametrize("field", [0, 2, 3])
def test_tampered_hello_r_refused(field: int) -> None:
    """Responder's ephemeral, signature or MAC changed on the way: the initiator refuses."""
    mesh = Mesh()
    alice, bob = mesh.creds("alice"), mesh.creds("bob")
    ini = Initiator(alice, bob.ep_id)
    hello_r = Responder(bob).on_hello(ini.hello())
    parts = _split_hello_r(hello_r)
    parts[field] = _flip(parts[field], 5)
    parts[1], parts[2] = u16_bytes(parts[1]), u16_bytes(parts[2])
    with pytest.raises(E2EError) as e:
        ini.on_hello_r(_rebuild(hello_r, HELLO_R, parts))
    assert _reason(e) == "signature"
    # the responder's ephemeral and signature are checked by the signature, the MAC by itself
    assert ("MAC" if field == 3 else "signature does not verify") in e.value.message
    assert ini.session is None


@pytest.mark.parametrize("field", [1, 2])
def test_tampered_auth_refused(field: int) -> None:
    """Initiator's signature or MAC changed on the way: the responder refuses."""
    mesh = Mesh()
    alice, bob = mesh.creds("alice"), mesh.creds("bob")
    ini = Initiator(alice, bob.ep_id)
    resp = Responder(bob)
    auth = ini.on_hello_r(resp.on_hello(ini.hello()))
    parts = _split_auth(auth)
    parts[field] = _flip(parts[field], 7)
    with pytest.raises(E2EError) as e:
        resp.on_auth(encode(AUTH, u16_bytes(parts[0]) + u16_bytes(parts[1]) + parts[2]))
    assert _reason(e) == "signature"
    assert ("MAC" if field == 2 else "signature does not verify") in e.value.message


def test_identity_misbinding_swap_refused() -> None:
    """E, a member of the mesh, relays alice's handshake to bob but puts its own certificate and a valid signature
    of its own over the transcript in AUTH, so that bob would think he talks to E: bob refuses (the MAC binds
    alice's identity to the DH secret, which E does not know)."""
    mesh = Mesh()
    alice, bob, eve = mesh.creds("alice"), mesh.creds("bob"), mesh.creds("eve")
    ini = Initiator(alice, bob.ep_id)
    resp = Responder(bob)
    hello = ini.hello()
    hello_r = resp.on_hello(hello)
    auth = ini.on_hello_r(hello_r)
    _, _, mac_i = _split_auth(auth)
    import hashlib

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    th3 = hashlib.sha256(hello + hello_r + u16_bytes(eve.cert_der)).digest()
    sig_e = eve.key.sign(b"ztm-e2e v1 initiator\x00" + th3, ec.ECDSA(hashes.SHA256()))
    forged = encode(AUTH, u16_bytes(eve.cert_der) + u16_bytes(sig_e) + mac_i)
    with pytest.raises(E2EError) as e:
        resp.on_auth(forged)
    assert _reason(e) == "signature"
    # eve's certificate with alice's signature fails too
    ini2 = Initiator(alice, bob.ep_id)
    resp2 = Responder(bob)
    auth2 = ini2.on_hello_r(resp2.on_hello(ini2.hello()))
    _, sig_i, mac_i = _split_auth(auth2)
    with pytest.raises(E2EError) as e:
        resp2.on_auth(encode(AUTH, u16_bytes(eve.cert_der) + u16_bytes(sig_i) + mac_i))
    assert _reason(e) == "signature"


def test_responder_signature_cannot_serve_as_initiator_signature() -> None:
    """Reflection: the role labels in what is signed keep one side's signature from being replayed as the other's."""
    mesh = Mesh()
    alice, bob = mesh.creds("alice"), mesh.creds("bob")
    ini = Initiator(alice, bob.ep_id)
    resp = Responder(bob)
    hello_r = resp.on_hello(ini.hello())
    _, cert_r, sig_r, _ = _split_hello_r(hello_r)
    ini.on_hello_r(hello_r)
    with pytest.raises(E2EError) as e:  # bob's own certificate and signature sent back to him as AUTH
        resp.on_auth(encode(AUTH, u16_bytes(cert_r) + u16_bytes(sig_r) + bytes(32)))
    assert _reason(e) == "signature" and "signature does not verify" in e.value.message


def test_error_frame_instead_of_an_answer_is_refused() -> None:
    mesh = Mesh()
    alice, bob = mesh.creds("alice"), mesh.creds("bob")
    ini = Initiator(alice, bob.ep_id)
    ini.hello()
    with pytest.raises(E2EError) as e:
        ini.on_hello_r(error_frame("no such endpoint\nhere"))
    assert _reason(e) == "refused" and "no such endpoint?here" in e.value.message
    ini = Initiator(alice, bob.ep_id)
    ini.hello()
    with pytest.raises(E2EError) as e:
        ini.on_hello_r(frames.unknown_frame())
    assert _reason(e) == "malformed"


def test_degenerate_ephemeral_refused() -> None:
    mesh = Mesh()
    bob = mesh.creds("bob")
    hello = bytearray(Initiator(mesh.creds("alice"), bob.ep_id).hello())
    hello[5:37] = bytes(32)
    with pytest.raises(E2EError) as e:
        Responder(bob).on_hello(bytes(hello))
    assert _reason(e) == "malformed"


def test_truncated_and_trailing_frames_refused() -> None:
    mesh = Mesh()
    alice, bob = mesh.creds("alice"), mesh.creds("bob")
    hello = Initiator(alice, bob.ep_id).hello()
    for bad in (hello[:-1], hello + b"x", encode(1, hello[4:-1]), encode(1, hello[4:] + b"x"), b"", hello[:3]):
        with pytest.raises(E2EError) as e:
            Responder(bob).on_hello(bad)
        assert _reason(e) == "malformed", bad


def test_expand_matches_cryptography_hkdf() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

    from ztm.e2e.record import expand

    key, info = bytes(range(32)), b"ztm-e2e v1 stream i2r" + (7).to_bytes(8, "big")
    assert expand(key, info) == HKDFExpand(hashes.SHA256(), 32, info).derive(key)


def test_credentials_and_initiator_refuse_bad_local_input() -> None:
    mesh, other = Mesh(), Mesh()
    key, cert = mesh.endpoint_cert("alice")
    with pytest.raises(ValueError, match="not mesh"):
        Credentials(mesh_id=mesh.mesh_id, ca_cert=other.ca_cert, cert=cert, key=key, revoked=lambda _: False)
    with pytest.raises(ValueError, match="not an endpoint certificate of mesh"):
        Credentials(mesh_id=other.mesh_id, ca_cert=other.ca_cert, cert=cert, key=key, revoked=lambda _: False)
    with pytest.raises(ValueError, match="not an endpoint id"):
        Initiator(mesh.wrap(key, cert), "bob é")
