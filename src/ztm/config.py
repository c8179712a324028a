"""Settings of the long-running processes, as parsed from the command line; defaults live here and nowhere else."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ztm.addr import Address
from ztm.apps.net.options import NetOptions

DEFAULT_HUB_PORT = 8888
DEFAULT_AGENT_LISTEN = Address("127.0.0.1", 7777)
DEFAULT_HUB_LISTEN = Address("0.0.0.0", DEFAULT_HUB_PORT)


def default_data_dir() -> Path:
    """`$ZTM_DATA` if set, else `~/.ztm`: where agent and hub keep their state by default."""
    env = os.environ.get("ZTM_DATA")
    return Path(env) if env else Path.home() / ".ztm"


def agents_registry_dir() -> Path:
    """Per-OS-user directory where each running agent leaves a link to its local socket, named by listen address."""
    return Path.home() / ".ztm" / "agents"


def token_file_name(listen: Address) -> str:
    """File name (in `agents_registry_dir()`) of the token of the agent listening on `listen`."""
    host = listen.host.replace(":", "_")
    return f"{host}_{listen.port}.token"


def socket_link_name(listen: Address) -> str:
    """Name (in `agents_registry_dir()`) of the link to the local socket of the agent listening on `listen`."""
    host = listen.host.replace(":", "_")
    return f"{host}_{listen.port}.sock"


@dataclass(frozen=True)
class HubConfig:
    listen: Address = DEFAULT_HUB_LISTEN
    names: tuple[Address, ...] = ()
    permit: Path | None = None
    data: Path = field(default_factory=default_data_dir)
    max_agents: int = 10000
    max_endpoints_per_user: int = 100
    """Most endpoint records a user other than root may hold (enrolments past it are refused; root deletes some)."""
    cert_ttl: float = 24 * 3600.0
    """Lifetime of endpoint certificates in seconds; agents renew at half-life."""
    heartbeat: float = 10.0
    """Interval agents are told to show they are alive at (an HTTP/2 PING; older agents POST a heartbeat); an
    endpoint is offline after 3 intervals without a byte from it, a closed session, or a silent link loss noticed by
    the kernel (10 s, `ztm.hub.routes.LINK_TIMEOUT`)."""
    admin: Address | None = None
    """Optional localhost admin address (metrics); off unless set."""
    store: str | None = None
    """`postgresql://USER@HOST[:PORT]/DB`: a store shared with the other hubs of a cluster; None: SQLite in `data`."""
    store_password_file: Path | None = None
    """Where the database password is (else libpq's PGPASSWORD / PGPASSFILE)."""
    ca_key_file: Path | None = None
    """The key that seals the mesh's private keys in a shared store (default: `data/ca.key`, made by the first hub)."""
    zone: str = ""
    """The hub's zone (agents of the same zone prefer it); "" for none."""
    mesh_range: str | None = None
    """`--mesh-range`: the IPv4 range endpoint addresses come from, used when the hub creates the mesh (default
    100.64.0.0/10); a hub started later with a different one refuses to start (issue 17)."""


@dataclass(frozen=True)
class AgentConfig:
    listen: Address = DEFAULT_AGENT_LISTEN
    data: Path = field(default_factory=default_data_dir)
    join: str | None = None
    join_as: str | None = None
    permit: Path | None = None
    direct: Address | None = None
    """Where to accept direct channels from peers (`ztm.agent.direct`); off unless set."""
    direct_announce: Address | None = None
    """The address peers dial for `direct` if not that one (a port forwarded on a NAT); default: `direct`, with a
    wildcard host replaced by the address the hub sees."""
    p2p: bool = True
    """Punch direct channels to peers behind NAT (`ztm.agent.punch`); `--no-p2p` turns it off."""
    p2p_keepalive: float = 5.0
    """`--p2p-keepalive`: seconds between TCP keepalives on idle punched channels: they hold NAT mappings open, and
    after a router lost its mappings (a reboot), the side behind it re-creates them with its next keepalive."""
    p2p_birthday: int = 512
    """`--p2p-birthday K`: sockets a side of a birthday attempt towards a peer behind a symmetric NAT, after an
    ordinary punch to it timed out (0: never; docs/nat-traversal.md)."""
    p2p_birthday_every: float = 300.0
    """`--p2p-birthday-every SECONDS`: at most one birthday attempt per peer pair this often, and 4 per agent in twice
    that time."""
    credit_warn: float = 30.0
    """`--credit-warn`: seconds a stream through the hub may wait for flow-control credit, with the hub alive,
    before the agent logs a warning about it (`ztm.h2.connection.CREDIT_WARN` by default)."""
    zone: str | None = None
    """`--zone`: the agent prefers online hubs of this zone. None: keep the zone saved by an earlier run ("" none)."""
    net: NetOptions = field(default_factory=NetOptions)
    """Network mode: `--tun`, `--tun-name`, `--accept-routes`, `--dns-suffix` (`ztm.apps.net`)."""
