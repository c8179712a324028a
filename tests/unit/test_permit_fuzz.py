"""Fuzzing ztm.permit.Permit.parse: whatever it is given, it returns a Permit or raises PermitError."""

from __future__ import annotations

import base64
import copy
import functools
import json
import re
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ztm import pki
from ztm.errors import PermitError
from ztm.permit import Permit, make_permit

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
FUZZ = settings(max_examples=200, deadline=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@functools.cache
def real() -> dict[str, Any]:
    """A valid root permit, and PEM texts to swap in (another mesh's CA, an unrelated key)."""
    ca_key, ca = pki.create_ca(pki.new_mesh_id(), now=NOW)
    key = pki.new_key()
    cert = pki.issue_user_cert(ca_key, ca, user="root", public_key=key.public_key(), now=NOW)
    permit = make_permit(ca, cert, ["hub.example.com:8888", "[::1]:7777"], key, now=NOW)
    _, other_ca = pki.create_ca(pki.new_mesh_id(), now=NOW)
    return {
        "permit": permit,
        "obj": permit.to_json_obj(),
        "text": permit.to_json(),
        "pems": [
            pki.cert_to_pem(ca),
            pki.cert_to_pem(cert),
            pki.cert_to_pem(other_ca),
            pki.key_to_pem(key),
            pki.key_to_pem(pki.new_key()),
            pki.public_key_to_pem(key.public_key()),
        ],
    }


def check(data: object) -> Permit | None:
    """Parse; the only acceptable failure is a one-line PermitError that the safety net did not have to make."""
    try:
        permit = Permit.parse(data, now=NOW)  # type: ignore[arg-type]
    except PermitError as e:
        assert e.message and "\n" not in e.message, e.message
        assert not e.message.startswith("permit is unusable"), e.message
        return None
    assert permit.user == "root"
    assert permit.mesh_id == real()["permit"].mesh_id
    assert permit.bootstraps
    return permit


@FUZZ
@given(json_values)
def test_random_json(value: object) -> None:
    assert check(value) is None
    assert check(json.dumps(value)) is None


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes(data: bytes) -> None:
    assert check(data) is None


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    assert check(text) is None


# a field is kept, dropped, swapped for another real PEM, or replaced by an arbitrary JSON value
def field_choice(keep: object) -> st.SearchStrategy[object]:
    drop = st.just(_DROP)
    pem = st.integers(0, 5).map(lambda i: real()["pems"][i])
    return st.one_of(st.just(keep), drop, pem, json_values)


_DROP = object()


def _put(obj: dict[str, Any], key: str, value: object) -> None:
    if value is _DROP:
        obj.pop(key, None)
    else:
        obj[key] = value


@FUZZ
@given(st.data())
def test_right_keys_wrong_values(data: st.DataObject) -> None:
    obj = copy.deepcopy(real()["obj"])
    agent = dict(obj["agent"])
    _put(agent, "certificate", data.draw(field_choice(agent["certificate"])))
    _put(agent, "privateKey", data.draw(field_choice(agent["privateKey"])))
    _put(obj, "ca", data.draw(field_choice(obj["ca"])))
    _put(obj, "agent", data.draw(st.one_of(st.just(agent), field_choice(agent))))
    hubs = st.lists(st.one_of(st.text(max_size=30), json_values, st.sampled_from(["h:1", "::1", "[::1]"])))
    _put(obj, "bootstraps", data.draw(st.one_of(st.just(obj["bootstraps"]), field_choice(None), hubs)))
    if data.draw(st.booleans()):
        obj[data.draw(st.text(max_size=5))] = data.draw(json_values)
    check(obj)
    check(json.dumps(obj))


@FUZZ
@given(st.data())
def test_mutated_permit_text(data: st.DataObject) -> None:
    text: str = real()["text"]
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(text)))
        op = data.draw(st.sampled_from(["truncate", "replace", "insert", "delete"]))
        if op == "truncate":
            text = text[:i]
        elif op == "replace":
            text = text[:i] + data.draw(st.characters()) + text[i + 1 :]
        elif op == "insert":
            text = text[:i] + data.draw(st.text(max_size=5)) + text[i:]
        else:
            text = text[:i] + text[i + data.draw(st.integers(1, 50)) :]
    check(text)
    check(text.encode("utf-8", "surrogatepass"))


_PEM_BODY = re.compile(r"(-----BEGIN [A-Z ]+-----\n)(.*?)(\n-----END [A-Z ]+-----)", re.S)


@FUZZ
@given(st.data())
def test_mutated_der_inside_valid_pem(data: st.DataObject) -> None:
    """Corrupt the DER of one certificate or key while keeping the JSON and the PEM armour valid."""
    obj = copy.deepcopy(real()["obj"])
    field = data.draw(st.sampled_from(["ca", "certificate", "privateKey"]))
    holder = obj if field == "ca" else obj["agent"]
    match = _PEM_BODY.search(holder[field])
    assert match is not None
    der = bytearray(base64.b64decode(match[2]))
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
        i = data.draw(st.integers(0, len(der) - 1))
        if op == "flip":
            der[i] ^= data.draw(st.integers(1, 255))
        elif op == "truncate":
            del der[i:]
        else:
            der[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        if not der:
            break
    body = "\n".join(re.findall(".{1,64}", base64.b64encode(bytes(der)).decode()))
    holder[field] = match[1] + body + match[3] + "\n"
    permit = check(obj)
    if permit is not None:  # a flip in an unsigned or ignored part (e.g. the key's optional public copy)
        assert field == "privateKey" or permit.certificate == real()["permit"].certificate
