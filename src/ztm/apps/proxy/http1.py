"""The HTTP/1.x proxy request head as a sans-IO parser, and the proxy's own answers.

`parse_head(buf)` takes the bytes received so far and returns `(HttpRequest, bytes consumed)` once the head is
complete, None while it is not, and raises `HttpError` (and nothing else) with the status to answer for malformed,
oversized or unsupported requests. Two kinds of request are served:

* `CONNECT HOST:PORT` (any port): a byte tunnel, answered `200 Connection established` once the exit connected.
* `GET http://HOST[:PORT]/path` and every other method with an absolute `http://` URI: the request is forwarded in
  origin form (`GET /path HTTP/1.1`), with `Host` set from the URI, hop-by-hop and `Proxy-*` headers removed and
  `Connection: close` (one request per client connection; the response and any request body travel unchanged).

When the entrance requires credentials, `proxy_credentials(headers)` reads `Proxy-Authorization: Basic ...`; the
proxy's 407 answer carries `Proxy-Authenticate: Basic realm="ztm"`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass

from ztm.apps.proxy import spec
from ztm.errors import BadInput

MAX_HEAD = 32 * 1024
MAX_LINE = 8 * 1024
MAX_HEADERS = 100

_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_VERSION = re.compile(r"HTTP/(\d)\.(\d)")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te", "trailer"}
)

REASONS = {
    200: "Connection established",
    400: "Bad Request",
    403: "Forbidden",
    407: "Proxy Authentication Required",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    501: "Not Implemented",
    502: "Bad Gateway",
    504: "Gateway Timeout",
    505: "HTTP Version Not Supported",
}
STATUS_OF = {spec.DENIED: 403, spec.TIMEOUT: 504}
"""The answer to a refusal code; everything else is 502."""


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class HttpRequest:
    method: str
    target: str
    version: str
    headers: tuple[tuple[str, str], ...]
    destination: spec.Destination
    path: str | None
    """The origin-form target for an absolute-URI request; None for CONNECT."""

    @property
    def is_connect(self) -> bool:
        return self.path is None

    def upstream_head(self) -> bytes:
        """The request head for the origin server (absolute-URI requests only)."""
        assert self.path is not None
        connection = {
            t.strip().lower() for n, v in self.headers if n.lower() == "connection" for t in v.split(",") if t.strip()
        }
        upgrade = "upgrade" in connection and any(n.lower() == "upgrade" for n, _ in self.headers)
        drop = HOP_BY_HOP | (connection - {"upgrade"}) | {"host"}
        if not upgrade:
            drop |= {"upgrade"}
        host = str(self.destination) if self.destination.port != 80 else _host_text(self.destination.host)
        lines = [f"{self.method} {self.path} {self.version}", f"Host: {host}"]
        lines += [f"{n}: {v}" for n, v in self.headers if n.lower() not in drop]
        lines.append("Connection: upgrade" if upgrade else "Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_head(buf: bytes) -> tuple[HttpRequest, int] | None:
    start = 0
    while buf.startswith(b"\r\n", start) and start < 8:  # empty lines before a request are ignored (RFC 9112 2.2)
        start += 2
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        line_end = buf.find(b"\r\n", start)
        if (line_end < 0 and len(buf) - start > MAX_LINE) or line_end - start > MAX_LINE:
            raise HttpError(414, f"request line longer than {MAX_LINE} bytes")
        if len(buf) > MAX_HEAD:
            raise HttpError(431, f"request head larger than {MAX_HEAD} bytes")
        return None
    if end + 4 > MAX_HEAD:
        raise HttpError(431, f"request head larger than {MAX_HEAD} bytes")
    text = bytes(buf[start:end]).decode("latin-1")
    lines = text.split("\r\n")
    if len(lines[0]) > MAX_LINE:
        raise HttpError(414, f"request line longer than {MAX_LINE} bytes")
    if len(lines) - 1 > MAX_HEADERS:
        raise HttpError(431, f"more than {MAX_HEADERS} header fields")
    method, target, version = _request_line(lines[0])
    headers = tuple(_header(line) for line in lines[1:])
    _check_framing(headers)
    if method == "CONNECT":
        try:
            destination = spec.Destination.parse(target)
        except BadInput as exc:
            raise HttpError(400, f"CONNECT needs HOST:PORT: {exc.message}") from None
        path = None
    else:
        destination, path = _absolute(target)
    return HttpRequest(method, target, version, headers, destination, path), end + 4


def _request_line(line: str) -> tuple[str, str, str]:
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        raise HttpError(400, "malformed request line: expected METHOD TARGET HTTP/1.1")
    method, target, version = parts
    if not _TOKEN.fullmatch(method):
        raise HttpError(400, "malformed request method")
    match = _VERSION.fullmatch(version)
    if match is None:
        raise HttpError(400, "malformed HTTP version")
    if match.group(1) != "1":
        raise HttpError(505, f"{version} is not supported: use HTTP/1.1")
    if _BAD_VALUE.search(target) or any(c > "\x7e" for c in target):
        raise HttpError(400, "control or non-ASCII characters in the request target")
    return method, target, version


def _header(line: str) -> tuple[str, str]:
    if line[:1] in (" ", "\t"):
        raise HttpError(400, "folded header lines are not accepted")
    name, sep, value = line.partition(":")
    if not sep or not _TOKEN.fullmatch(name):
        raise HttpError(400, "malformed header field")
    value = value.strip(" \t")
    if _BAD_VALUE.search(value):
        raise HttpError(400, f"control characters in header {name}")
    return name, value


def _check_framing(headers: tuple[tuple[str, str], ...]) -> None:
    lengths = {v for n, v in headers if n.lower() == "content-length"}
    chunked = any(n.lower() == "transfer-encoding" for n, _ in headers)
    if len(lengths) > 1 or (lengths and chunked):
        raise HttpError(400, "ambiguous message length (Content-Length with Transfer-Encoding, or several lengths)")
    if lengths and not all(c.isdigit() for c in next(iter(lengths))):
        raise HttpError(400, "malformed Content-Length")


def _absolute(target: str) -> tuple[spec.Destination, str]:
    lower = target[:8].lower()
    if lower.startswith("https://"):
        raise HttpError(501, "https:// URIs are not fetched by the proxy: send CONNECT HOST:443 (clients do)")
    if not lower.startswith("http://"):
        if target.startswith("/") or target == "*":
            raise HttpError(400, "this is a proxy: send CONNECT HOST:PORT or an absolute http:// URI")
        raise HttpError(400, "only http:// URIs and CONNECT are proxied")
    rest = target[7:]
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    path = path.split("#", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    if "@" in authority:
        raise HttpError(400, "user information in the URI is not accepted")
    if not authority:
        raise HttpError(400, "no host in the URI")
    try:
        if authority.startswith("[") and authority.endswith("]"):
            destination = spec.Destination.make(authority[1:-1], 80)
        elif authority.startswith("[") or authority.count(":") == 1:
            destination = spec.Destination.parse(authority)
        else:
            destination = spec.Destination.make(authority, 80)
    except BadInput as exc:
        raise HttpError(400, f"bad host in the URI: {exc.message}") from None
    return destination, path


def proxy_credentials(headers: tuple[tuple[str, str], ...]) -> spec.Credentials | None:
    """The `Proxy-Authorization: Basic ...` credentials, None without the header; HttpError 400 for a malformed
    header, 407 for another scheme or a user name or password the entrance cannot have (empty, over 255 bytes)."""
    values = [v for n, v in headers if n.lower() == "proxy-authorization"]
    if not values:
        return None
    if len(values) > 1:
        raise HttpError(400, "several Proxy-Authorization headers")
    scheme, _, token = values[0].partition(" ")
    if scheme.lower() != "basic":
        raise HttpError(407, f"proxy authentication scheme {scheme[:20]!r} is not supported: use Basic")
    try:
        raw = base64.b64decode(token.strip(" \t"), validate=True)
    except (binascii.Error, ValueError):
        raise HttpError(400, "malformed Proxy-Authorization: the Basic credentials are not base64") from None
    user, sep, password = raw.partition(b":")
    if not sep:
        raise HttpError(400, "malformed Proxy-Authorization: no ':' between user name and password")
    if len(user) > spec.MAX_CREDENTIAL or len(password) > spec.MAX_CREDENTIAL:
        raise HttpError(407, f"user name or password longer than {spec.MAX_CREDENTIAL} bytes")
    if not user or not password:
        raise HttpError(407, "empty user name or password")
    return spec.Credentials(user, password)


def response(status: int, message: str) -> bytes:
    """The proxy's own answer: a one-line plain-text reason, and the connection ends (407 asks for Basic)."""
    body = (message.replace("\r", " ").replace("\n", " ") + "\n").encode("utf-8", "replace")
    challenge = 'Proxy-Authenticate: Basic realm="ztm"\r\n' if status == 407 else ""
    head = (
        f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\n{challenge}Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
