"""Attacks on the end-to-end layer (`ztm.e2e`, issue 13) from the relay's position, between real endpoint processes.

Two endpoint processes (`e2e_peer.py`) talk over loopback TCP through a relay in this test, which stands where the
hub stands (it forwards every byte, and may read, change, drop or replay them), or where a member posing as the hub
would. The relay must learn no plaintext, and every change it makes must be refused by an endpoint:
- passive: the secret text never appears in what the relay forwarded; both endpoints still get each other's text;
- identity misbinding: a member (eve) puts her certificate and her own valid signature in alice's AUTH: bob refuses;
- replay: the bytes of an earlier stream (RESUME and records), or of the handshake, sent again: bob refuses;
- tamper: one bit of a record flipped: bob refuses.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from support import Proc, wait_until
from ztm import pki

PEER = Path(__file__).with_name("e2e_peer.py")
SECRET = "the-secret-4d1f9b"


@pytest.fixture
def mesh(tmp_path: Path) -> dict[str, str]:
    """A mesh CA and endpoint certificates for alice, bob and eve in tmp_path; their ep ids by name."""
    now = datetime.now(UTC)
    ca_key, ca = pki.create_ca(pki.new_mesh_id(), now=now)
    (tmp_path / "ca.pem").write_text(pki.cert_to_pem(ca))
    ids = {}
    for name in ("alice", "bob", "eve"):
        key = pki.new_key()
        ids[name] = str(uuid.uuid4())
        cert = pki.issue_endpoint_cert(
            ca_key, ca, user=name, ep_id=ids[name], public_key=key.public_key(), now=now, ttl=timedelta(hours=1)
        )
        (tmp_path / f"{name}.pem").write_text(pki.cert_to_pem(cert))
        (tmp_path / f"{name}.key").write_text(pki.key_to_pem(key))
    return ids


def _frames(data: bytes) -> Iterator[tuple[int, bytes]]:
    pos = 0
    while pos + 4 <= len(data):
        length = int.from_bytes(data[pos + 1 : pos + 4], "big")
        yield data[pos], data[pos : pos + 4 + length]
        pos += 4 + length


class Relay:
    """Stands where the hub stands: for each connection the initiator makes to `port`, it connects to the responder
    and copies bytes both ways, keeping a copy of each direction (`conns`). `rewrite(i2r_so_far, r2i_so_far, chunk)`
    may change what goes from initiator to responder."""

    def __init__(self, target: int, rewrite: Callable[[bytes, bytes, bytes], bytes] | None = None) -> None:
        self.target = target
        self.rewrite = rewrite
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.srv.getsockname()[1]
        self.conns: list[tuple[bytearray, bytearray]] = []
        self.socks: list[socket.socket] = [self.srv]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.srv.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            self.socks += [a, b]
            i2r, r2i = bytearray(), bytearray()
            self.conns.append((i2r, r2i))
            threading.Thread(target=self._pump, args=(a, b, i2r, r2i, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(b, a, r2i, i2r, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, seen: bytearray, other: bytearray, i2r: bool) -> None:
        try:
            while data := src.recv(65536):
                if i2r and self.rewrite is not None:
                    data = self.rewrite(bytes(seen), bytes(other), data)
                seen += data
                dst.sendall(data)
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def everything(self) -> bytes:
        return b"".join(bytes(i) + bytes(r) for i, r in self.conns)

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


@pytest.fixture
def relays() -> Iterator[list[Relay]]:
    made: list[Relay] = []
    yield made
    for relay in made:
        relay.close()


def _start(tmp_path: Path) -> tuple[Proc, int]:
    bob = Proc([sys.executable, str(PEER), "responder", str(tmp_path), "bob"], name="e2e-bob")
    port = int(bob.wait_for_output(r"listening (\d+)").group(1))
    return bob, port


def _alice(tmp_path: Path, mesh: dict[str, str], port: int, streams: int = 2) -> Proc:
    argv = [
        sys.executable,
        str(PEER),
        "initiator",
        str(tmp_path),
        "alice",
        str(port),
        mesh["bob"],
        SECRET,
        str(streams),
    ]
    return Proc(argv, name="e2e-alice")


def test_relay_sees_no_plaintext_and_streams_work(tmp_path: Path, mesh: dict[str, str], relays: list[Relay]) -> None:
    bob, port = _start(tmp_path)
    relay = Relay(port)
    relays.append(relay)
    alice = _alice(tmp_path, mesh, relay.port, streams=2)
    alice.wait_for_output(r"\bdone\b")
    out = alice.output()
    for n, text in ((0, SECRET), (1, f"{SECRET} #1"), (2, f"{SECRET} #2")):
        assert f"answer {n}: ack:{text}" in out
        assert f"stream {n} from alice: {text}" in bob.output()
    assert len(relay.conns) == 3
    seen = relay.everything()
    assert len(seen) > 1000 and SECRET.encode() not in seen and b"ack:" not in seen


def test_member_misbinding_its_identity_into_a_handshake_is_refused(
    tmp_path: Path, mesh: dict[str, str], relays: list[Relay]
) -> None:
    """Eve, a member of the mesh, relays alice's handshake to bob and replaces alice's certificate and signature in
    AUTH with her own certificate and a valid signature of hers over the transcript bob will compute."""
    eve_der = pki.cert_from_pem((tmp_path / "eve.pem").read_text()).public_bytes(serialization.Encoding.DER)
    eve_key = pki.key_from_pem((tmp_path / "eve.key").read_text())
    swapped: list[bool] = []

    def swap_auth(i2r: bytes, r2i: bytes, chunk: bytes) -> bytes:
        if not i2r or swapped:  # the HELLO goes through; the AUTH (with alice's first records) is the next chunk
            return chunk
        frames = list(_frames(chunk))
        assert frames[0][0] == 3, frames[0][0]
        auth = frames[0][1]
        cert_len = int.from_bytes(auth[4:6], "big")
        sig_at = 6 + cert_len
        sig_len = int.from_bytes(auth[sig_at : sig_at + 2], "big")
        mac_i = auth[sig_at + 2 + sig_len :]
        hello_r = next(_frames(r2i))[1]
        u16 = len(eve_der).to_bytes(2, "big")
        th3 = hashlib.sha256(i2r + hello_r + u16 + eve_der).digest()
        sig = eve_key.sign(b"ztm-e2e v1 initiator\x00" + th3, ec.ECDSA(hashes.SHA256()))
        body = u16 + eve_der + len(sig).to_bytes(2, "big") + sig + mac_i
        swapped.append(True)
        return bytes([3]) + len(body).to_bytes(3, "big") + body + chunk[len(auth) :]

    bob, port = _start(tmp_path)
    relay = Relay(port, swap_auth)
    relays.append(relay)
    alice = _alice(tmp_path, mesh, relay.port, streams=0)
    bob.wait_for_output(r"refused signature: the initiator's handshake MAC does not verify")
    alice.wait_for_output(r"refused refused: the peer refused")
    assert swapped and "stream 0 from" not in bob.output()


def test_replayed_stream_and_handshake_are_refused(tmp_path: Path, mesh: dict[str, str], relays: list[Relay]) -> None:
    bob, port = _start(tmp_path)
    relay = Relay(port)
    relays.append(relay)
    _alice(tmp_path, mesh, relay.port, streams=1).wait_for_output(r"\bdone\b")
    assert bob.output().count(f"from alice: {SECRET}") == 2
    handshake_bytes, stream_bytes = bytes(relay.conns[0][0]), bytes(relay.conns[1][0])
    # the relay sends stream 1 again, byte for byte: RESUME with the same stream number, and its records
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(stream_bytes)
        bob.wait_for_output(r"refused replay: end-to-end stream 1 was already used")
    # and the whole handshake stream again: bob's new HELLO_R makes alice's old AUTH worthless
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        hello = next(_frames(handshake_bytes))[1]
        sock.sendall(hello)
        wait_until(lambda: sock.recv(65536) or None, 5, "bob's HELLO_R")
        sock.sendall(handshake_bytes[len(hello) :])  # alice's AUTH and records, as recorded
        bob.wait_for_output(r"refused signature: the initiator's handshake signature does not verify")
    assert bob.output().count(f"from alice: {SECRET}") == 2


def test_flipped_bit_in_a_relayed_record_is_refused(tmp_path: Path, mesh: dict[str, str], relays: list[Relay]) -> None:
    flipped: list[bool] = []

    def flip_record(i2r: bytes, r2i: bytes, chunk: bytes) -> bytes:
        if not i2r or flipped:
            return chunk
        auth_len = 4 + int.from_bytes(chunk[1:4], "big")
        b = bytearray(chunk)
        b[auth_len + 10] ^= 0x04  # inside the first record's ciphertext
        flipped.append(True)
        return bytes(b)

    bob, port = _start(tmp_path)
    relay = Relay(port, flip_record)
    relays.append(relay)
    alice = _alice(tmp_path, mesh, relay.port, streams=0)
    bob.wait_for_output(r"refused integrity: end-to-end record failed its integrity check")
    alice.wait_for_output(r"refused")
    assert flipped and "stream 0 from" not in bob.output()
