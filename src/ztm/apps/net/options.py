"""The agent's network-mode options (`ztm run|start agent --tun --tun-name --accept-routes --dns-suffix
--expose-ports`), as the `net` app of each mesh reads them from its session."""

from __future__ import annotations

import re
from dataclasses import dataclass

DEFAULT_TUN_NAME = "ztm"
DEFAULT_DNS_SUFFIX = "ztm"
TUN_NEEDS_CAP = (
    "--tun needs CAP_NET_ADMIN (run as root, or setcap cap_net_admin+ep on the Python interpreter); "
    "starting without network mode"
)

EXPOSE_PORTS_WARNING = (
    "--expose-ports: members of the joined meshes may open TCP connections and send UDP datagrams to this machine's "
    "127.0.0.1 ports (with no mesh policy, every member to every port: limit it with ip/tcp:PORT and ip/udp:PORT "
    "rules)"
)


@dataclass(frozen=True)
class NetOptions:
    tun: bool = False
    """Network mode in every joined mesh (`--tun`)."""
    tun_name: str = DEFAULT_TUN_NAME
    """Interface name prefix (`--tun-name`): `ztm0`, `ztm1`, ... one per mesh in join order."""
    accept_routes: bool = False
    """Route the subnets other endpoints route (approved by root) through them (`--accept-routes`)."""
    dns_suffix: str = DEFAULT_DNS_SUFFIX
    """Names are `NAME.MESH.SUFFIX` (`--dns-suffix`)."""
    expose_ports: bool = False
    """Take port streams and flows (`port/tcp/PORT`, `port/udp/PORT`) without network mode, connecting to 127.0.0.1
    (`--expose-ports`)."""


def has_net_admin() -> bool:
    """Whether this process has CAP_NET_ADMIN in its effective set (bit 12 of CapEff)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> 12 & 1)
    except (OSError, ValueError, IndexError):
        return False
    return False


_TUN_NAME_RX = re.compile(r"[a-z][a-z0-9_-]{0,11}")
_LABEL_RX = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def check_tun_name(text: str) -> str:
    """`--tun-name PREFIX`: 1 to 12 lowercase letters, digits, `_` or `-`, starting with a letter (Linux allows 15
    characters in an interface name, and the mesh's index follows the prefix); ValueError says what is wrong."""
    if not _TUN_NAME_RX.fullmatch(text):
        raise ValueError(
            f"bad interface prefix {text!r}: use 1 to 12 lowercase letters, digits, '_' or '-', starting with a "
            "letter (e.g. ztm)"
        )
    return text


def check_dns_suffix(text: str) -> str:
    """`--dns-suffix SUFFIX`: DNS labels (lowercase letters, digits, inner '-') joined by dots, at most 100
    characters, e.g. `ztm` or `mesh.example`; ValueError says what is wrong."""
    suffix = text.strip().strip(".").lower()
    if not suffix or len(suffix) > 100 or not all(_LABEL_RX.fullmatch(label) for label in suffix.split(".")):
        raise ValueError(
            f"bad DNS suffix {text!r}: use DNS labels of letters, digits and inner '-' joined by dots, e.g. ztm or "
            "mesh.example"
        )
    return suffix
