"""Parsing and formatting of `HOST:PORT` addresses as users type them (`[::1]:8888`, `1.2.3.4:8888`, `:7777`)."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from ztm.errors import BadInput

_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?"
)


@dataclass(frozen=True)
class Address:
    """A host (name, IPv4 or IPv6 literal without brackets) and a TCP/UDP port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @classmethod
    def parse(cls, text: str, *, default_host: str | None = None, what: str = "address") -> Address:
        """Parse `HOST:PORT`, `[V6]:PORT`, or (with `default_host`) `PORT` / `:PORT`.

        Raises `BadInput` naming `what` and the expected form.
        """
        hint = f"expected HOST:PORT such as 127.0.0.1:7777 or [::1]:7777, got {text!r}"
        if not isinstance(text, str) or not text.strip():
            raise BadInput(f"{what}: empty; {hint}")
        text = text.strip()
        host: str
        port_text: str
        if text.startswith("["):
            end = text.find("]")
            if end < 0 or not text[end + 1 :].startswith(":"):
                raise BadInput(f"{what}: {hint}")
            host, port_text = text[1:end], text[end + 2 :]
            try:
                if "%" in host:
                    raise ValueError("scope ids are not supported")
                ipaddress.IPv6Address(host)
            except ValueError:
                raise BadInput(f"{what}: {host!r} is not an IPv6 address; {hint}") from None
        elif text.isascii() and text.isdigit() and default_host is not None:
            host, port_text = default_host, text
        else:
            if text.count(":") != 1:
                raise BadInput(f"{what}: {hint}")
            host, port_text = text.split(":")
            if not host:
                if default_host is None:
                    raise BadInput(f"{what}: missing host; {hint}")
                host = default_host
            elif not _valid_host(host):
                raise BadInput(f"{what}: {host!r} is not a valid host name or IP address; {hint}")
        if not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5) or not 0 < int(port_text) < 65536:
            raise BadInput(f"{what}: port must be a number from 1 to 65535; {hint}")
        return cls(host, int(port_text))


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_HOSTNAME.fullmatch(host))
    return True
