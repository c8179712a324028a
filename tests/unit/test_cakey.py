"""`ztm.hub.cakey`: the CA key file and sealing the mesh's private keys for a shared store."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ztm.errors import BadInput
from ztm.hub import cakey

PEM = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIBa\n-----END PRIVATE KEY-----\n"
MESH = "3f0c7d7e-mesh"
KEY = bytes(range(32))


def test_create_then_read(tmp_path: Path) -> None:
    path = tmp_path / "ca.key"
    old = os.umask(0)
    try:
        key = cakey.create_key_file(path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.endswith("\n") and text.count("\n") == 1 and len(base64.b64decode(text)) == 32
    assert cakey.read_key_file(path) == key
    assert cakey.create_key_file(tmp_path / "other.key") != key


def test_create_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "ca.key"
    key = cakey.create_key_file(path)
    with pytest.raises(BadInput, match="already exists"):
        cakey.create_key_file(path)
    assert cakey.read_key_file(path) == key


def test_create_in_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="cannot create the CA key file"):
        cakey.create_key_file(tmp_path / "nope" / "ca.key")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_read_refuses_a_file_others_can_read(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "ca.key"
    cakey.create_key_file(path)
    path.chmod(mode)
    with pytest.raises(BadInput) as err:
        cakey.read_key_file(path)
    assert err.value.message == f"the CA key file {path} is readable by group or others; run: chmod 600 {path}"


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "not a ztm CA key file"),
        (b"not base64!\n", "not a ztm CA key file"),
        (base64.b64encode(b"x" * 31) + b"\n", "not a ztm CA key file"),
        (base64.b64encode(b"x" * 33) + b"\n", "not a ztm CA key file"),
    ],
)
def test_read_refuses_malformed_files(tmp_path: Path, content: bytes, words: str) -> None:
    path = tmp_path / "ca.key"
    path.write_bytes(content)
    path.chmod(0o600)
    with pytest.raises(BadInput, match=words):
        cakey.read_key_file(path)


def test_read_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="does not exist"):
        cakey.read_key_file(tmp_path / "nope")
    (tmp_path / "d").mkdir(mode=0o700)
    with pytest.raises(BadInput, match="not a regular file"):
        cakey.read_key_file(tmp_path / "d")


def test_seal_round_trip_and_fresh_nonces() -> None:
    a = cakey.seal(PEM, KEY, MESH, "ca_key")
    b = cakey.seal(PEM, KEY, MESH, "ca_key")
    assert a.startswith("v1:") and a != b and PEM not in a and cakey.is_sealed(a) and not cakey.is_sealed(PEM)
    assert cakey.unseal(a, KEY, MESH, "ca_key") == PEM == cakey.unseal(b, KEY, MESH, "ca_key")


@pytest.mark.parametrize(
    ("key", "mesh", "what"),
    [(bytes(32), MESH, "ca_key"), (KEY, "another-mesh", "ca_key"), (KEY, MESH, "root_key"), (KEY, MESH + "c", "a_key")],
)
def test_wrong_key_mesh_or_slot(key: bytes, mesh: str, what: str) -> None:
    token = cakey.seal(PEM, KEY, MESH, "ca_key")
    with pytest.raises(BadInput) as err:
        cakey.unseal(token, key, mesh, what, key_file="/etc/ztm/ca.key")
    assert err.value.message.startswith("the CA key file /etc/ztm/ca.key does not open this mesh's keys")
    assert "use the file the first hub made" in err.value.message


def test_tampered_token() -> None:
    token = cakey.seal(PEM, KEY, MESH, "ca_key")
    raw = bytearray(base64.b64decode(token[3:]))
    for i in (0, 12, len(raw) - 1):
        bad = bytearray(raw)
        bad[i] ^= 1
        with pytest.raises(BadInput, match="does not open"):
            cakey.unseal("v1:" + base64.b64encode(bytes(bad)).decode(), KEY, MESH, "ca_key")


@pytest.mark.parametrize(
    ("token", "words"),
    [("", "no version prefix"), (PEM, "no version prefix"), ("v2:AAAA", "newer ztm"), ("v1:!!", "truncated")],
)
def test_malformed_tokens(token: str, words: str) -> None:
    with pytest.raises(BadInput, match=words):
        cakey.unseal(token, KEY, MESH, "ca_key")


@given(st.data())
def test_any_truncation_or_flip_is_bad_input(data: st.DataObject) -> None:
    token = cakey.seal(PEM, KEY, MESH, "ca_key")
    cut = data.draw(st.integers(0, len(token) - 1))
    changed = token[:cut] + data.draw(st.text(max_size=3))
    if changed == token:
        return
    with pytest.raises(BadInput) as err:
        cakey.unseal(changed, KEY, MESH, "ca_key")
    assert "\n" not in err.value.message


@given(st.text(max_size=200))
def test_any_text_unseals_to_bad_input(token: str) -> None:
    with pytest.raises(BadInput):
        cakey.unseal(token, KEY, MESH, "ca_key")


def test_key_length_is_checked() -> None:
    with pytest.raises(ValueError):
        cakey.seal(PEM, b"short", MESH, "ca_key")


def test_seal_meta_round_trip_and_binding() -> None:
    meta = {"mesh_id": MESH, "ca_cert": "CERT", "ca_key": PEM, "root_key": PEM + "root", "hub_id": "h"}
    sealed = cakey.seal_meta(meta, KEY)
    assert sealed["ca_cert"] == "CERT" and sealed["hub_id"] == "h"
    assert cakey.is_sealed(sealed["ca_key"]) and cakey.is_sealed(sealed["root_key"])
    assert cakey.seal_meta(sealed, KEY) == sealed  # idempotent
    assert cakey.unseal_meta(sealed, KEY) == meta
    assert cakey.unseal_meta(meta, KEY) == meta  # plain values stay
    swapped = dict(sealed, ca_key=sealed["root_key"], root_key=sealed["ca_key"])
    with pytest.raises(BadInput, match="does not open"):  # a token moved to the other slot
        cakey.unseal_meta(swapped, KEY, key_file="k")
    with pytest.raises(BadInput, match="the CA key file k does not open"):
        cakey.unseal_meta(sealed, bytes(32), key_file="k")
