"""Tunnel configuration as data: names like `tcp/web`, inbound (entrance) and outbound (exit) specs, parsed from
untrusted JSON into frozen dataclasses; every failure is a `BadInput` naming the field and the accepted form."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ztm import validate
from ztm.addr import Address
from ztm.apps.exits import check_choice
from ztm.errors import BadInput

PROTOCOLS = ("tcp", "udp")
MAX_ITEMS = 64


@dataclass(frozen=True)
class TunnelName:
    protocol: str
    name: str

    def __str__(self) -> str:
        return f"{self.protocol}/{self.name}"

    @classmethod
    def parse(cls, text: object) -> TunnelName:
        hint = "expected tcp/NAME or udp/NAME, NAME of letters, digits, '.', '_' or '-'"
        if text is None:
            raise BadInput(f"missing field 'tunnel': {hint}")
        if not isinstance(text, str) or "/" not in text:
            raise BadInput(f"invalid tunnel {text!r}: {hint}")
        protocol, _, name = text.partition("/")
        if protocol not in PROTOCOLS or not validate.NAME.fullmatch(name):
            raise BadInput(f"invalid tunnel {text!r}: {hint}")
        return cls(protocol, name)


def _peers(value: object, what: str) -> tuple[str, ...]:
    items = validate.list_of(value, str, what)
    if len(items) > MAX_ITEMS:
        raise BadInput(f"{what}: at most {MAX_ITEMS} entries")
    for item in items:
        try:
            validate.ep_id(item)
        except BadInput:
            validate.name(item, f"endpoint in {what}")
    return tuple(dict.fromkeys(items))


def _addresses(value: object, what: str, default_host: str | None) -> tuple[Address, ...]:
    items = validate.list_of(value, str, what)
    if not items:
        raise BadInput(f"{what}: give at least one HOST:PORT")
    if len(items) > MAX_ITEMS:
        raise BadInput(f"{what}: at most {MAX_ITEMS} entries")
    return tuple(dict.fromkeys(Address.parse(i, default_host=default_host, what=what) for i in items))


@dataclass(frozen=True)
class PortTarget:
    """`EP:PORT`: a TCP or UDP port on an endpoint (the tunnel's protocol), reached by a port stream or flow
    (`ztm.apps.net.ports`), no exit needed."""

    ep: str
    """The endpoint's name or id (an id once configured)."""
    port: int

    def __str__(self) -> str:
        return f"{self.ep}:{self.port}"

    @classmethod
    def parse(cls, value: object) -> PortTarget:
        hint = "expected EP:PORT, an endpoint name or id and a port from 1 to 65535 (e.g. db:5432)"
        if not isinstance(value, str) or ":" not in value:
            raise BadInput(f"invalid target {value!r}: {hint}")
        ep, _, port = value.rpartition(":")
        if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535 or port != str(int(port)):
            raise BadInput(f"invalid target {value!r}: {hint}")
        try:
            validate.ep_id(ep)
        except BadInput:
            validate.name(ep, "endpoint in target")
        return cls(ep, int(port))


@dataclass(frozen=True)
class Inbound:
    """The entrance side: local listen addresses forwarded to an exit of the same tunnel: one of `exits` (endpoint
    ids once configured) in that order, or else one of the entrance's own user, of root or of `exit_users`
    (`ztm.apps.exits`); or, with `target`, straight to a port of that endpoint (a port stream for TCP, a port flow
    per client address for UDP)."""

    tunnel: TunnelName
    listen: tuple[Address, ...]
    exits: tuple[str, ...] = ()
    exit_users: tuple[str, ...] = ()
    target: PortTarget | None = None

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Inbound:
        exits = _peers(body.get("exits"), "exits")
        exit_users = validate.user_names(body.get("exit_users"), "exit_users", MAX_ITEMS)
        check_choice(exits, exit_users)
        tunnel = TunnelName.parse(body.get("tunnel"))
        raw_target = body.get("target")
        target = PortTarget.parse(raw_target) if raw_target is not None else None
        if target is not None and (exits or exit_users):
            raise BadInput("give a target EP:PORT or exits/exit_users, not both: a target needs no exit")
        return cls(tunnel, _addresses(body.get("listen"), "listen", "127.0.0.1"), exits, exit_users, target)

    def to_json(self) -> dict[str, Any]:
        view: dict[str, Any] = {
            "tunnel": str(self.tunnel),
            "listen": [str(a) for a in self.listen],
            "exits": list(self.exits),
            "exit_users": list(self.exit_users),
        }
        if self.target is not None:
            view["target"] = str(self.target)
        return view


@dataclass(frozen=True)
class Outbound:
    """The exit side: targets this endpoint connects to for entrances of the tunnel (round-robin)."""

    tunnel: TunnelName
    targets: tuple[Address, ...]
    entrances: tuple[str, ...] = ()
    users: tuple[str, ...] = ()

    @classmethod
    def parse(cls, body: dict[str, Any]) -> Outbound:
        return cls(
            TunnelName.parse(body.get("tunnel")),
            _addresses(body.get("targets"), "targets", None),
            _peers(body.get("entrances"), "entrances"),
            validate.user_names(body.get("users"), "users", MAX_ITEMS),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "tunnel": str(self.tunnel),
            "targets": [str(a) for a in self.targets],
            "entrances": list(self.entrances),
            "users": list(self.users),
        }
