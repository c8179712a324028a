"""The TUN device of network mode: open (`IFF_TUN | IFF_NO_PI | IFF_VNET_HDR`, the 10-byte virtio-net header, the
checksum and segmentation offloads), configure with `ip` (addresses, MTU, up, routes), read in batches, write, remove.

The interface is not persistent: closing its descriptor (stop, or the process dying) makes the kernel delete it with
its addresses and routes, so nothing of it outlives the agent.

With `TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6` (and `TUN_F_USO4 | TUN_F_USO6` where the kernel takes them) the kernel
hands over TCP (and UDP) super-packets of up to 64 KiB with the checksum left to the far end's kernel, described by
the vnet header; a peer writes the same header and packet into its own TUN and its kernel segments or delivers them
as they are. One read, one frame, one write per 64 KiB instead of per 1.4 KB segment.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import struct
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("ztm.agent.net")

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
TUN_F_USO4 = 0x20
TUN_F_USO6 = 0x40
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6
VNET_LEN = 10
MTU = 65535 - 20 - 40
"""The interface's MTU (docs/network-mode.md: why this one, and what was measured)."""
READ_SIZE = VNET_LEN + 65535
READ_BATCH = 64
"""Packets read at most per readiness callback before the loop gets a turn."""
IDLE_GAP = 0.001
"""Seconds without a read after which the next readiness reads one packet only (`read_limit`)."""
IP = "ip"


def read_limit(now: float, last: float) -> int:
    """How many packets to read at this readiness (`now`; `last`: the previous read's time): `READ_BATCH` while
    packets keep coming, 1 after `IDLE_GAP` of silence. A lone packet (a ping, a keystroke) then goes out without
    the read that would only say EAGAIN (a syscall and an exception on its way); were more queued, the level-
    triggered readiness fires again at once and the next reads batch."""
    return 1 if now - last > IDLE_GAP else READ_BATCH


class TunError(OSError):
    """The device could not be made or configured (the message says what failed)."""


class TunDevice:
    """An open TUN device: non-blocking, with the vnet header."""

    def __init__(self, fd: int, name: str, offloads: int) -> None:
        self.fd = fd
        self.name = name
        self.offloads = offloads

    @classmethod
    def open(cls, name: str) -> TunDevice:
        """Make interface `name` (TunError if it exists or the kernel refuses)."""
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise TunError(f"cannot open /dev/net/tun: {exc.strerror}") from None
        try:
            ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR)
            fcntl.ioctl(fd, TUNSETIFF, ifr)
            fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_LEN))
            offloads = OFFLOADS | TUN_F_USO4 | TUN_F_USO6
            try:
                fcntl.ioctl(fd, TUNSETOFFLOAD, offloads)
            except OSError:  # a kernel before 6.2 knows no USO
                offloads = OFFLOADS
                fcntl.ioctl(fd, TUNSETOFFLOAD, offloads)
        except OSError as exc:
            os.close(fd)
            raise TunError(f"cannot make interface {name}: {exc.strerror}") from None
        return cls(fd, name, offloads)

    def read_batch(self, limit: int = READ_BATCH) -> list[bytes]:
        """Up to `limit` packets (each the vnet header and the IP packet) that are ready now."""
        out: list[bytes] = []
        read = os.read
        fd = self.fd
        for _ in range(limit):
            try:
                out.append(read(fd, READ_SIZE))
            except BlockingIOError:
                break
        return out

    def write(self, packet: bytes | memoryview) -> bool:
        """Hand `packet` (vnet header and IP packet) to the kernel; False if it refused it (queue full, bad header)."""
        try:
            os.write(self.fd, packet)
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Close the descriptor: the kernel removes the interface, its addresses and routes."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def run(*argv: str, check: bool = True) -> str:
    """Run a command (`ip`, `nft`, `sysctl`), its stdout; TunError with its stderr's first line when it fails."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        raise TunError(f"cannot run {argv[0]}: {exc.strerror}") from None
    out, err = await proc.communicate()
    if check and proc.returncode != 0:
        first = (err.decode(errors="replace").strip().splitlines() or ["failed"])[0]
        raise TunError(f"{' '.join(argv)}: {first}")
    return out.decode(errors="replace")


async def run_input(argv: Sequence[str], text: str) -> None:
    """Run a command with `text` on its stdin (`nft -f -`); TunError when it fails."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        raise TunError(f"cannot run {argv[0]}: {exc.strerror}") from None
    _out, err = await proc.communicate(text.encode())
    if proc.returncode != 0:
        first = (err.decode(errors="replace").strip().splitlines() or ["failed"])[0]
        raise TunError(f"{' '.join(argv)}: {first}")


async def configure(name: str, addr4: str, prefix4: int, addr6: str | None, mtu: int = MTU) -> None:
    """Give interface `name` its mesh addresses (their prefixes route the mesh's ranges to it), the MTU, and up."""
    await run(IP, "link", "set", "dev", name, "mtu", str(mtu), "addrgenmode", "none")  # no link-local chatter
    await run(IP, "addr", "add", f"{addr4}/{prefix4}", "dev", name)
    if addr6 is not None and _enable_ipv6(name):
        await run(IP, "-6", "addr", "add", f"{addr6}/48", "dev", name, "nodad")
    await run(IP, "link", "set", "dev", name, "up")


def _enable_ipv6(name: str) -> bool:
    """IPv6 on interface `name` even where new interfaces get none (`default.disable_ipv6`): the mesh's ULA
    addresses live there. False (logged) where the kernel has no IPv6 at all."""
    path = Path(f"/proc/sys/net/ipv6/conf/{name}/disable_ipv6")
    try:
        if path.read_text().strip() != "0":
            path.write_text("0\n")
    except OSError as exc:
        log.warning("interface %s: no IPv6 mesh address (%s)", name, exc.strerror)
        return False
    return True


async def add_route(name: str, cidr: str) -> None:
    family = "-6" if ":" in cidr else "-4"
    await run(IP, family, "route", "replace", cidr, "dev", name)


async def del_route(name: str, cidr: str) -> None:
    family = "-6" if ":" in cidr else "-4"
    await run(IP, family, "route", "del", cidr, "dev", name, check=False)
