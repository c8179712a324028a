"""ztm.permit: reading, checking and writing permit files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ztm import pki
from ztm.addr import Address
from ztm.errors import BadInput, PermitError
from ztm.permit import Permit, make_permit, parse_bootstrap

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
EP_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
HINT = "pass the file written by `ztm start hub --permit` or `ztm invite`"


@dataclass
class Mesh:
    ca_key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate
    user_key: ec.EllipticCurvePrivateKey
    user_cert: x509.Certificate

    @property
    def mesh_id(self) -> str:
        return pki.cert_mesh_id(self.ca)

    def root_obj(self) -> dict[str, Any]:
        return make_permit(self.ca, self.user_cert, ["hub.example.com:8888"], self.user_key, now=NOW).to_json_obj()


def new_mesh(user: str = "root", now: datetime = NOW) -> Mesh:
    ca_key, ca = pki.create_ca(pki.new_mesh_id(), now=now)
    key = pki.new_key()
    cert = pki.issue_user_cert(ca_key, ca, user=user, public_key=key.public_key(), now=now, days=30)
    return Mesh(ca_key, ca, key, cert)


@pytest.fixture(scope="module")
def mesh() -> Mesh:
    return new_mesh()


def parse_error(data: object, now: datetime = NOW) -> str:
    with pytest.raises(PermitError) as info:
        Permit.parse(data, now=now)  # type: ignore[arg-type]
    message = info.value.message
    assert "\n" not in message
    assert not message.startswith("permit is unusable"), message  # the safety net must not be needed
    return message


# ------------------------------------------------------------------------------------------------ good permits


def test_root_permit_round_trips(mesh: Mesh) -> None:
    hubs: list[Address | str] = ["hub.example.com:8888", Address("::1", 9999)]
    permit = make_permit(mesh.ca, mesh.user_cert, hubs, mesh.user_key, now=NOW)
    assert permit.mesh_id == mesh.mesh_id
    assert permit.user == "root"
    assert permit.has_key
    assert permit.bootstraps == (Address("hub.example.com", 8888), Address("::1", 9999))
    text = permit.to_json()
    assert text.endswith("}\n")
    assert text.startswith('{\n  "ca": "-----BEGIN CERTIFICATE-----')
    obj = json.loads(text)
    assert obj == permit.to_json_obj()
    assert set(obj) == {"ca", "agent", "bootstraps"}
    assert set(obj["agent"]) == {"certificate", "privateKey"}
    assert obj["bootstraps"] == ["hub.example.com:8888", "[::1]:9999"]
    for form in (text, text.encode(), obj):
        again = Permit.parse(form, now=NOW)
        assert again.ca == permit.ca
        assert again.certificate == permit.certificate
        assert again.private_key is not None
        assert pki.key_to_pem(again.private_key) == pki.key_to_pem(mesh.user_key)
        assert again.bootstraps == permit.bootstraps
        assert again.to_json() == text


def test_invited_permit_has_no_key() -> None:
    m = new_mesh("alice", now=datetime.now(UTC))  # and parse at the real time
    permit = make_permit(m.ca, m.user_cert, ["10.0.0.1:8888"])
    assert not permit.has_key
    assert permit.user == "alice"
    obj = permit.to_json_obj()
    assert obj["agent"] == {"certificate": pki.cert_to_pem(m.user_cert)}
    assert Permit.parse(permit.to_json()).private_key is None
    obj["agent"]["privateKey"] = None
    assert Permit.parse(obj).private_key is None


def test_permit_file_written_privately_parses(mesh: Mesh, tmp_path: Path) -> None:
    path = tmp_path / "root.json"
    pki.write_private(path, make_permit(mesh.ca, mesh.user_cert, ["h:1"], mesh.user_key, now=NOW).to_json())
    assert Permit.parse(path.read_bytes(), now=NOW).user == "root"


def test_utf8_bom_is_accepted(mesh: Mesh) -> None:
    text = json.dumps(mesh.root_obj())
    assert Permit.parse(b"\xef\xbb\xbf" + text.encode(), now=NOW).user == "root"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("hub.example.com", Address("hub.example.com", 8888)),
        ("hub.example.com:443", Address("hub.example.com", 443)),
        (" 10.1.2.3 ", Address("10.1.2.3", 8888)),
        ("10.1.2.3:1", Address("10.1.2.3", 1)),
        ("::1", Address("::1", 8888)),
        ("fe80::1", Address("fe80::1", 8888)),
        ("[::1]", Address("::1", 8888)),
        ("[::1]:7000", Address("::1", 7000)),
    ],
)
def test_bootstrap_port_defaults_to_8888(text: str, expected: Address) -> None:
    assert parse_bootstrap(text) == expected


@pytest.mark.parametrize("text", ["", ":", "h:", "h:0", "h:65536", "h:x", "a b", "::g", "[::1", "[x]:1", "h:²", 5])
def test_bad_bootstraps(text: Any) -> None:
    with pytest.raises(BadInput, match="hub address"):
        parse_bootstrap(text)


# ------------------------------------------------------------------------------------------------ bad permits


@pytest.mark.parametrize("data", ["", "{", "nope", "[1,", b"\xff\xfe", "[" * 100_000])
def test_not_json(data: str | bytes) -> None:
    message = parse_error(data)
    assert message.startswith("permit is not JSON: ")
    assert message.endswith(HINT)


@pytest.mark.parametrize(("data", "kind"), [("[]", "a list"), ("1", "a number"), ('"x"', "a string"), ("null", "null")])
def test_not_an_object(data: str, kind: str) -> None:
    assert parse_error(data) == f"permit must be a JSON object, got {kind}; {HINT}"


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("ca",), None, 'permit field "ca" is missing (expected a PEM certificate string)'),
        (("ca",), 5, 'permit field "ca" is a number, not a PEM certificate string'),
        (("ca",), "junk", 'permit field "ca" is not a PEM certificate'),
        (("agent",), None, 'permit field "agent" is missing (expected an object)'),
        (("agent",), [], 'permit field "agent" is a list, not an object'),
        (("agent", "certificate"), None, 'permit field "agent.certificate" is missing'),
        (("agent", "certificate"), {}, 'permit field "agent.certificate" is an object, not a PEM certificate'),
        (("agent", "certificate"), "-----BEGIN CERTIFICATE-----\nAA==\n", '"agent.certificate" is not a PEM'),
        (("agent", "privateKey"), True, 'permit field "agent.privateKey" is a boolean, not a PEM private key'),
        (("agent", "privateKey"), "junk", 'permit field "agent.privateKey": not a PEM private key'),
        (("bootstraps",), None, 'permit field "bootstraps" is missing (expected a list of hub addresses)'),
        (("bootstraps",), "h:1", 'permit field "bootstraps" is a string, not a list of hub addresses'),
        (("bootstraps",), [], 'permit field "bootstraps" is empty'),
        (("bootstraps",), ["h:1", 7], 'permit field "bootstraps[1]": expected a string'),
        (("bootstraps",), ["h:99999"], 'permit field "bootstraps[0]": port must be a number from 1 to 65535'),
        (("bootstraps",), ["bad host:1"], "permit field \"bootstraps[0]\": 'bad host' is not a valid host"),
    ],
)
def test_bad_fields_are_named(mesh: Mesh, path: tuple[str, ...], value: object, expected: str) -> None:
    obj = mesh.root_obj()
    target = obj
    for key in path[:-1]:
        target = target[key]
    if value is None:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    assert expected in parse_error(obj)


def test_certificate_from_another_ca(mesh: Mesh) -> None:
    obj = mesh.root_obj()
    obj["ca"] = pki.cert_to_pem(new_mesh().ca)
    assert parse_error(obj).startswith("the permit's certificate was not issued by its CA")


def test_expired_and_not_yet_valid_certificate(mesh: Mesh) -> None:
    obj = mesh.root_obj()
    message = parse_error(obj, now=NOW + timedelta(days=31))
    assert message.startswith("the permit's certificate expired at 2026-05-31T12:00:00Z; ask the mesh admin")
    key = pki.new_key()
    later = pki.issue_user_cert(
        mesh.ca_key, mesh.ca, user="x", public_key=key.public_key(), now=NOW + timedelta(days=1)
    )
    obj["agent"] = {"certificate": pki.cert_to_pem(later)}
    message = parse_error(obj, now=NOW + timedelta(hours=1))
    assert message.startswith("the permit's certificate not valid until 2026-05-02T11:55:00Z")


def test_expired_ca(mesh: Mesh) -> None:
    message = parse_error(mesh.root_obj(), now=NOW + timedelta(days=3651))
    assert message.startswith("the permit's CA certificate expired at")


def test_key_not_matching_the_certificate(mesh: Mesh) -> None:
    obj = mesh.root_obj()
    obj["agent"]["privateKey"] = pki.key_to_pem(pki.new_key())
    assert parse_error(obj).startswith('permit field "agent.privateKey" does not match "agent.certificate"')


def test_key_of_another_curve(mesh: Mesh) -> None:
    obj = mesh.root_obj()
    p384 = ec.generate_private_key(ec.SECP384R1())
    obj["agent"]["privateKey"] = p384.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    assert "P-256" in parse_error(obj)


def test_endpoint_and_hub_certificates_are_not_user_certificates(mesh: Mesh) -> None:
    key = pki.new_key()
    ep = pki.issue_endpoint_cert(
        mesh.ca_key, mesh.ca, user="root", ep_id=EP_ID, public_key=key.public_key(), now=NOW, ttl=timedelta(days=1)
    )
    hub = pki.issue_hub_cert(
        mesh.ca_key, mesh.ca, hub_id="0123456789abcdef", names=["h"], public_key=key.public_key(), now=NOW
    )
    for cert in (ep, hub):
        obj = mesh.root_obj()
        obj["agent"] = {"certificate": pki.cert_to_pem(cert), "privateKey": pki.key_to_pem(key)}
        assert parse_error(obj).startswith("the permit's certificate is not a user certificate of its mesh")
    obj = mesh.root_obj()
    obj["agent"]["certificate"] = obj["ca"]
    obj["agent"]["privateKey"] = pki.key_to_pem(mesh.ca_key)
    assert "not a user certificate" in parse_error(obj)


def test_ca_field_must_hold_a_ca(mesh: Mesh) -> None:
    obj = mesh.root_obj()
    obj["ca"] = obj["agent"]["certificate"]
    assert parse_error(obj).startswith("the permit's CA certificate is not a ztm mesh CA")


def test_make_permit_checks_too(mesh: Mesh) -> None:
    with pytest.raises(PermitError, match="empty"):
        make_permit(mesh.ca, mesh.user_cert, [], now=NOW)
    with pytest.raises(PermitError, match="does not match"):
        make_permit(mesh.ca, mesh.user_cert, ["h"], pki.new_key(), now=NOW)
    with pytest.raises(PermitError, match="not issued by its CA"):
        make_permit(new_mesh().ca, mesh.user_cert, ["h"], now=NOW)
    with pytest.raises(PermitError, match="expired"):
        make_permit(mesh.ca, mesh.user_cert, ["h"], now=NOW + timedelta(days=31))


def test_permit_errors_are_bad_input() -> None:
    with pytest.raises(BadInput) as info:
        Permit.parse("{")
    assert info.value.code == "bad_permit"
    assert info.value.status == 400
