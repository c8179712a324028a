"""A subnet router's side of network mode: IP forwarding on, and the nft table `ztm` that masquerades what comes in
from the mesh interface and leaves for the LAN (docs/network-mode.md says why SNAT), and lets the LAN answer but not
open connections into the mesh. Undone on stop: this interface's chains leave the table, the table goes when it is
empty, and forwarding is set back to what it was if this router turned it on.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ztm.apps.net.tun import TunError, run, run_input

log = logging.getLogger("ztm.agent.net")

TABLE = "ztm"
FORWARDING = (Path("/proc/sys/net/ipv4/ip_forward"), Path("/proc/sys/net/ipv6/conf/all/forwarding"))


class Snat:
    """Forwarding and masquerade for one mesh interface (`start`, `stop`)."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self._restore: dict[Path, str] = {}
        self.active = False

    async def start(self) -> None:
        """Turn forwarding on and install the chains; TunError (state as before) if nft or sysctl fail."""
        if self.active:
            return
        await run_input(["nft", "-f", "-"], _fresh(self.ifname))
        try:
            for path in FORWARDING:
                before = path.read_text().strip()
                if before != "1":
                    path.write_text("1\n")
                    self._restore[path] = before
        except OSError as exc:
            await self.stop()
            raise TunError(f"cannot turn IP forwarding on: {exc.strerror}") from None
        self.active = True

    async def stop(self) -> None:
        """Remove this interface's chains (the table too when empty) and set forwarding back."""
        for path, before in self._restore.items():
            try:
                path.write_text(before + "\n")
            except OSError as exc:
                log.warning("could not set %s back to %s: %s", path, before, exc.strerror)
        self._restore.clear()
        for chain in (f"post_{self.ifname}", f"fwd_{self.ifname}"):
            await run("nft", "delete", "chain", "inet", TABLE, chain, check=False)
        listed = await run("nft", "list", "table", "inet", TABLE, check=False)
        if listed and "chain " not in listed:
            await run("nft", "delete", "table", "inet", TABLE, check=False)
        self.active = False


def _fresh(ifname: str) -> str:
    """Create the table if missing, drop chains of `ifname` left by an agent that died, add them anew."""
    return f"""\
table inet {TABLE} {{
    chain post_{ifname} {{
        type nat hook postrouting priority srcnat; policy accept;
    }}
    chain fwd_{ifname} {{
        type filter hook forward priority filter; policy accept;
    }}
}}
delete chain inet {TABLE} post_{ifname}
delete chain inet {TABLE} fwd_{ifname}
table inet {TABLE} {{
    chain post_{ifname} {{
        type nat hook postrouting priority srcnat; policy accept;
        iifname "{ifname}" oifname != "{ifname}" masquerade
    }}
    chain fwd_{ifname} {{
        type filter hook forward priority filter; policy accept;
        iifname "{ifname}" accept
        oifname "{ifname}" ct state established,related accept
        oifname "{ifname}" drop
    }}
}}
"""
