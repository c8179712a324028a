"""Permits: the JSON file that lets an agent join a mesh (parsing, checking, writing).

The shape is ZTM's:

    {"ca": "CA CERT PEM",
     "agent": {"certificate": "USER CERT PEM", "privateKey": "KEY PEM (root permit only)"},
     "bootstraps": ["host:port", ...]}

`Permit.parse` checks everything an agent relies on (the certificate is a user certificate issued by the
permit's CA and valid now, the key matches it, the hub addresses parse) and raises only `PermitError`, with
one line naming what is wrong and how to fix it, whatever the input.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ztm import pki
from ztm.addr import Address
from ztm.errors import BadInput, CertificateError, PermitError

DEFAULT_HUB_PORT = 8888
_HINT = "pass the file written by `ztm start hub --permit` or `ztm invite`"


@dataclass(frozen=True)
class Permit:
    """A checked permit: the mesh CA, the user's certificate, its key (root permit only), the hubs."""

    ca: x509.Certificate
    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey | None
    bootstraps: tuple[Address, ...]

    @property
    def identity(self) -> pki.Identity:
        return pki.identity_of(self.certificate)

    @property
    def mesh_id(self) -> str:
        return self.identity.mesh_id

    @property
    def user(self) -> str:
        user = self.identity.user
        assert user is not None  # parse and make_permit only accept user certificates
        return user

    @property
    def has_key(self) -> bool:
        return self.private_key is not None

    @classmethod
    def parse(cls, data: str | bytes | dict[str, Any], *, now: datetime | None = None) -> Permit:
        """Read and check a permit (file text, bytes or decoded JSON); `PermitError` if it cannot be used."""
        try:
            return _parse(data, now or datetime.now(UTC))
        except PermitError as e:
            if "\n" in e.message or "\r" in e.message:  # one line, whatever a library put in it
                raise PermitError(" ".join(e.message.split())) from None
            raise
        except Exception as e:  # a safety net: the checks above are meant to catch everything
            raise PermitError(f"permit is unusable ({type(e).__name__}: {e}); {_HINT}") from None

    def to_json_obj(self) -> dict[str, Any]:
        agent = {"certificate": pki.cert_to_pem(self.certificate)}
        if self.private_key is not None:
            agent["privateKey"] = pki.key_to_pem(self.private_key)
        return {
            "ca": pki.cert_to_pem(self.ca),
            "agent": agent,
            "bootstraps": [str(a) for a in self.bootstraps],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_json_obj(), indent=2) + "\n"


def make_permit(
    ca_cert: x509.Certificate,
    user_cert: x509.Certificate,
    bootstraps: Iterable[Address | str],
    private_key: ec.EllipticCurvePrivateKey | None = None,
    *,
    now: datetime | None = None,
) -> Permit:
    """Build a permit, checked as `Permit.parse` would check it; `PermitError` if it would not be usable."""
    hubs = [str(a) if isinstance(a, Address) else a for a in bootstraps]
    obj: dict[str, Any] = {
        "ca": pki.cert_to_pem(ca_cert),
        "agent": {"certificate": pki.cert_to_pem(user_cert)},
        "bootstraps": hubs,
    }
    if private_key is not None:
        obj["agent"]["privateKey"] = pki.key_to_pem(private_key)
    return Permit.parse(obj, now=now)


def parse_bootstrap(text: str, *, what: str = "hub address") -> Address:
    """A hub address `HOST[:PORT]`, `[V6][:PORT]` or a bare IPv6 (port 8888 by default); else `BadInput`."""
    if not isinstance(text, str):
        raise BadInput(f"{what}: expected a string such as hub.example.com:8888, got {type(text).__name__}")
    t = text.strip()
    if (t.startswith("[") and t.endswith("]")) or (t and ":" not in t):
        t = f"{t}:{DEFAULT_HUB_PORT}"
    elif t.count(":") > 1 and not t.startswith("["):
        t = f"[{t}]:{DEFAULT_HUB_PORT}"  # a bare IPv6 address; Address.parse says so if it is not one
    try:
        return Address.parse(t, what=what)
    except BadInput:
        raise
    except ValueError:  # a non-ASCII digit that int() rejects, or an absurdly long port
        raise BadInput(f"{what}: port must be a number from 1 to 65535, got {text!r}") from None


def _parse(data: object, now: datetime) -> Permit:
    obj = _load_json(data)
    ca = _pem_cert("ca", obj.get("ca"))
    agent = obj.get("agent")
    if not isinstance(agent, dict):
        raise PermitError(f'permit field "agent" is {_missing_or_type(agent, "an object")}; {_HINT}')
    cert = _pem_cert("agent.certificate", agent.get("certificate"))
    key = _private_key(agent.get("privateKey"))
    bootstraps = _bootstraps(obj.get("bootstraps"))
    _check_ca(ca, now)
    _check_certificate(cert, ca, now)
    if key is not None and not _same_key(key, cert):
        raise PermitError(
            'permit field "agent.privateKey" does not match "agent.certificate"; the two must come from the same permit'
        )
    return Permit(ca=ca, certificate=cert, private_key=key, bootstraps=bootstraps)


def _load_json(data: object) -> dict[str, Any]:
    if isinstance(data, bytes | bytearray | memoryview):
        try:
            data = bytes(data).decode("utf-8-sig")
        except UnicodeDecodeError as e:
            where = f"{e.reason} at byte {e.start}"
            raise PermitError(f"permit is not JSON: not UTF-8 text ({where}); {_HINT}") from None
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except (ValueError, RecursionError) as e:
            raise PermitError(f"permit is not JSON: {_short(e)}; {_HINT}") from None
    if not isinstance(data, dict):
        raise PermitError(f"permit must be a JSON object, got {_json_type(data)}; {_HINT}")
    return data


def _pem_cert(field: str, value: object) -> x509.Certificate:
    if not isinstance(value, str):
        what = "a PEM certificate string"
        raise PermitError(f'permit field "{field}" is {_missing_or_type(value, what)}; {_HINT}')
    try:
        return pki.cert_from_pem(value)
    except BadInput:
        raise PermitError(f'permit field "{field}" is not a PEM certificate; {_HINT}') from None


def _private_key(value: object) -> ec.EllipticCurvePrivateKey | None:
    if value is None:
        return None
    if not isinstance(value, str):
        what = "a PEM private key string"
        raise PermitError(f'permit field "agent.privateKey" is {_missing_or_type(value, what)}; {_HINT}')
    try:
        return pki.key_from_pem(value)
    except BadInput as e:
        raise PermitError(f'permit field "agent.privateKey": {e.message}') from None


def _bootstraps(value: object) -> tuple[Address, ...]:
    if not isinstance(value, list):
        what = "a list of hub addresses"
        raise PermitError(f'permit field "bootstraps" is {_missing_or_type(value, what)}; {_HINT}')
    if not value:
        raise PermitError('permit field "bootstraps" is empty; list at least one hub address (HOST:PORT)')
    out: list[Address] = []
    for i, item in enumerate(value):
        try:
            out.append(parse_bootstrap(item, what=f'permit field "bootstraps[{i}]"'))
        except BadInput as e:
            raise PermitError(e.message) from None
    return tuple(out)


def _check_ca(ca: x509.Certificate, now: datetime) -> None:
    try:
        pki.check_ca(ca)
    except CertificateError as e:
        why = _short(e)
        raise PermitError(f"the permit's CA certificate is not a ztm mesh CA ({why}); {_HINT}") from None
    try:
        pki.check_validity(ca, now=now)
    except CertificateError as e:
        raise PermitError(f"the permit's CA {e.message}; the mesh needs a new CA") from None


def _check_certificate(cert: x509.Certificate, ca: x509.Certificate, now: datetime) -> None:
    try:
        pki.check_signed_by(cert, ca)
    except CertificateError:
        raise PermitError(
            "the permit's certificate was not issued by its CA; the permit was edited or mixes two meshes, "
            "ask the mesh admin for a new one (`ztm invite`)"
        ) from None
    try:
        pki.check_validity(cert, now=now)
    except CertificateError as e:
        hint = "ask the mesh admin for a new permit (`ztm invite`)"
        raise PermitError(f"the permit's {e.message}; {hint}") from None
    try:
        ident = pki.identity_of(cert)
    except CertificateError as e:
        raise PermitError(f"the permit's {e.message}") from None
    if not ident.is_user or ident.mesh_id != pki.cert_mesh_id(ca):
        raise PermitError(
            f"the permit's certificate is not a user certificate of its mesh (it names {ident}); "
            "a permit carries the certificate `ztm invite` issues"
        )


def _same_key(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    try:
        return pki.same_public_key(key.public_key(), pki.cert_public_key(cert))
    except CertificateError:
        return False


def _missing_or_type(value: object, expected: str) -> str:
    if value is None:
        return f"missing (expected {expected})"
    return f"{_json_type(value)}, not {expected}"


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number"}
    if value is None:
        return "null"
    return names.get(type(value), "a number" if isinstance(value, float) else type(value).__name__)


def _short(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."
