"""The exception tree shared by hub, agent and CLI.

Every error a user can meet is a `ZtmError` carrying a one-line message that says what is wrong and how to fix it,
the HTTP status it maps to on an API, and a stable machine-readable `code`. The CLI prints `message` and exits 1;
API servers answer `{"error": message, "code": code}` with `status`.
"""

from __future__ import annotations


class ZtmError(Exception):
    """Base of every error meant for a user."""

    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}


class BadInput(ZtmError):
    """Malformed input: a flag, a body, a permit, a name."""

    status = 400
    code = "bad_input"


class Unauthorized(ZtmError):
    """No credentials, or credentials that do not verify."""

    status = 401
    code = "unauthorized"


class Forbidden(ZtmError):
    """Verified, but not allowed to do this."""

    status = 403
    code = "forbidden"


class NotFound(ZtmError):
    """An unknown mesh, endpoint, user or route."""

    status = 404
    code = "not_found"


class Conflict(ZtmError):
    """The request clashes with existing state (a mesh already joined, a name taken)."""

    status = 409
    code = "conflict"


class Unavailable(ZtmError):
    """A peer (hub, endpoint, agent) could not be reached or is full."""

    status = 503
    code = "unavailable"


class Timeout(Unavailable):
    """A peer did not answer in time."""

    status = 504
    code = "timeout"


class PermitError(BadInput):
    """A permit file that cannot be used."""

    code = "bad_permit"


class CertificateError(Unauthorized):
    """A certificate that does not verify against the mesh CA, is expired, or was evicted."""

    code = "bad_certificate"


_BY_CODE: dict[str, type[ZtmError]] = {
    cls.code: cls
    for cls in (
        ZtmError,
        BadInput,
        Unauthorized,
        Forbidden,
        NotFound,
        Conflict,
        Unavailable,
        Timeout,
        PermitError,
        CertificateError,
    )
}


def from_json(status: int, body: object) -> ZtmError:
    """Rebuild an error received from an API as the matching `ZtmError` subclass."""
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        code = body.get("code")
        cls = _BY_CODE.get(code) if isinstance(code, str) else None
        if cls is None:
            cls = _status_class(status)
        return cls(body["error"])
    return _status_class(status)(f"unexpected answer (HTTP {status})")


def _status_class(status: int) -> type[ZtmError]:
    for cls in (BadInput, Unauthorized, Forbidden, NotFound, Conflict, Timeout, Unavailable):
        if cls.status == status:
            return cls
    return ZtmError
