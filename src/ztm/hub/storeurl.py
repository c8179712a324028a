"""The hub's `--store` value (a PostgreSQL URL) and `--store-password-file`, checked before anything connects.

`parse_store_url(text)` accepts `postgresql://USER@HOST[:PORT]/DB[?PARAM=VALUE&...]` (also `postgres://`, IPv6 hosts
as `[::1]`, percent-escapes in the user and database names, and libpq's connection parameters such as `sslmode`) and
returns a `StoreUrl`: its `redacted()` display form and the libpq `conninfo()` string. Anything else is a `BadInput`
with one line naming what is wrong and an example. A password is refused wherever it appears (in the user part or as a
`password=` parameter): it belongs in PGPASSWORD, PGPASSFILE or `--store-password-file`, never on a command line that
`ps` shows and shells keep. No error message repeats the user part of the URL.

`read_password_file(path)` reads the first line of a `--store-password-file`. Sans-IO apart from that one read.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from ztm.errors import BadInput

EXAMPLE = "postgresql://ztm@db.example.net:5432/ztm"
PASSWORD_ADVICE = "put the password in PGPASSWORD, PGPASSFILE or --store-password-file, never on the command line"  # noqa: S105 (advice, not a password)

PARAMS = frozenset(
    {
        "application_name", "channel_binding", "client_encoding", "connect_timeout", "gssencmode", "keepalives",
        "keepalives_count", "keepalives_idle", "keepalives_interval", "krbsrvname", "options", "passfile",
        "require_auth", "ssl_max_protocol_version", "ssl_min_protocol_version", "sslcert", "sslcompression",
        "sslcrl", "sslcrldir", "sslkey", "sslmode", "sslrootcert", "sslsni", "target_session_attrs",
        "tcp_user_timeout",
    }
)  # fmt: skip
"""libpq parameters passed through from the query string (host, port, user and dbname come from the URL itself)."""

_SECRET_PARAMS = frozenset({"password", "sslpassword"})
_IN_URL_PARAMS = frozenset({"host", "hostaddr", "port", "user", "dbname", "service"})
_SCHEME = re.compile(r"(postgres(?:ql)?)://", re.IGNORECASE)
_HOSTNAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,252})")


@dataclass(frozen=True)
class StoreUrl:
    """A checked PostgreSQL store URL (never holds a password)."""

    user: str
    host: str
    port: int
    dbname: str
    params: dict[str, str] = field(default_factory=dict)

    def redacted(self) -> str:
        """The URL for logs and messages: `postgresql://USER@HOST:PORT/DB` plus its parameters (no secret is ever in
        a StoreUrl, so nothing is hidden, but this is the one form that is printed)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        query = "&".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return f"postgresql://{self.user}@{host}:{self.port}/{self.dbname}" + (f"?{query}" if query else "")

    def connect_kwargs(self) -> dict[str, str]:
        """libpq keyword parameters (without a password: the caller adds it, or libpq reads PGPASSWORD/PGPASSFILE)."""
        return {"host": self.host, "port": str(self.port), "user": self.user, "dbname": self.dbname, **self.params}

    def conninfo(self) -> str:
        """The libpq `key='value' ...` connection string of `connect_kwargs()`."""
        return " ".join(f"{k}={_quote(v)}" for k, v in self.connect_kwargs().items())


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _bad(what: str) -> BadInput:
    return BadInput(f"bad --store URL: {what}; example: --store {EXAMPLE}")


def parse_store_url(text: str) -> StoreUrl:
    """Check a `--store` value; `BadInput` (one line) for anything that is not a usable PostgreSQL URL."""
    if not text.strip():
        raise _bad("it is empty")
    if any(ord(c) < 0x21 or c == "\x7f" for c in text):
        raise _bad("it contains a space or a control character (percent-encode them, e.g. %20)")
    scheme = _SCHEME.match(text)
    if scheme is None:
        raise _bad("it must start with postgresql:// (or postgres://)")
    rest = text[scheme.end() :]
    if "#" in rest:
        raise _bad("a '#' fragment has no meaning here (percent-encode a '#' in a name as %23)")
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hostport = netloc.rpartition("@")
    if ":" in userinfo:
        raise BadInput(f"the --store URL carries a password: {PASSWORD_ADVICE}")
    if not at or not userinfo:
        raise _bad("it names no user (USER@ before the host)")
    user = _unquote(userinfo, "the user name")
    host, port = _host_port(hostport)
    if not slash or not path:
        raise _bad("it names no database (/DB after the host)")
    if "/" in path:
        raise _bad("the database name is one path segment (percent-encode a '/' in it as %2F)")
    dbname = _unquote(path, "the database name")
    return StoreUrl(user=user, host=host, port=port, dbname=dbname, params=_params(query))


def _unquote(text: str, what: str) -> str:
    try:
        value = unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise _bad(f"{what} has a percent-escape that is not UTF-8") from None
    if not value or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise _bad(f"{what} is empty or has a control character")
    return value


def _host_port(hostport: str) -> tuple[str, int]:
    if not hostport:
        raise _bad("it names no host (USER@HOST)")
    if "," in hostport:
        raise _bad("give one host (several hosts in one URL are not supported)")
    if hostport.startswith("["):
        inside, close, after = hostport[1:].partition("]")
        if not close:
            raise _bad("an IPv6 address needs its closing ']', e.g. postgresql://ztm@[::1]:5432/ztm")
        try:
            host = str(ipaddress.IPv6Address(inside))
        except ValueError:
            raise _bad(f"[{inside}] is not an IPv6 address") from None
        if after and not after.startswith(":"):
            raise _bad("only ':PORT' may follow the ']' of an IPv6 address")
        port_text = after[1:] if after else None
    else:
        host, colon, port_text_ = hostport.partition(":")
        port_text = port_text_ if colon else None
        if not _HOSTNAME.fullmatch(host):
            raise _bad(f"{host!r} is not a host name or an IPv4 address (write an IPv6 address as [::1])")
    if port_text is None:
        return host, 5432
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise _bad(f"port {port_text!r} is not a number from 1 to 65535")
    return host, int(port_text)


def _params(query: str) -> dict[str, str]:
    params: dict[str, str] = {}
    if not query:
        return params
    for item in query.split("&"):
        key_raw, eq, value_raw = item.partition("=")
        key = _unquote(key_raw, "a parameter name") if key_raw else ""
        if key in _SECRET_PARAMS:
            raise BadInput(f"the --store URL carries a password ({key}=): {PASSWORD_ADVICE}")
        if not eq or not key:
            raise _bad("parameters are NAME=VALUE joined by '&', e.g. ?sslmode=verify-full")
        if key in _IN_URL_PARAMS:
            raise _bad(f"{key} belongs in the URL itself (postgresql://USER@HOST:PORT/DB), not in a parameter")
        if key not in PARAMS:
            raise _bad(f"unknown parameter {key!r} (known: {', '.join(sorted(PARAMS))})")
        if key in params:
            raise _bad(f"parameter {key!r} is given twice")
        params[key] = _unquote(value_raw, f"the value of {key}") if value_raw else ""
    return params


def read_password_file(path: Path) -> str:
    """The database password: the first line of `--store-password-file FILE`, stripped; `BadInput` when the file
    is missing, unreadable or has an empty first line."""
    try:
        with path.open(encoding="utf-8") as f:
            first = f.readline(4096)
    except FileNotFoundError:
        raise BadInput(f"--store-password-file {path} does not exist; write the database password into it") from None
    except IsADirectoryError:
        raise BadInput(f"--store-password-file {path} is a directory; give the file holding the password") from None
    except PermissionError:
        raise BadInput(f"cannot read --store-password-file {path}: permission denied; make it readable") from None
    except UnicodeDecodeError:
        raise BadInput(f"--store-password-file {path} is not UTF-8 text; put the password on its first line") from None
    except OSError as exc:
        raise BadInput(f"cannot read --store-password-file {path}: {exc.strerror or exc}") from None
    password = first.strip()
    if not password:
        raise BadInput(f"--store-password-file {path} has an empty first line; put the database password there")
    return password
