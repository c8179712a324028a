"""`MeshDns`: the agent's DNS server on its mesh address, port 53, UDP and TCP (issue 17, docs/dns.md).

Names under `MESH.SUFFIX` are answered from the endpoints' mesh addresses (`ztm.net.dns.Zone`, built from
`NetApp.names()` when the first query after a `changed()` comes, and at least once a second, so a join, rename or
leave shows within 1 s); every other name is forwarded to the system's resolvers, the `nameserver` lines of
/etc/resolv.conf (read again when the file changes), never to an address this process serves DNS on (which
/etc/resolv.conf lists once an operator followed the hint below), so two meshes' servers cannot forward to each
other in a loop. Names under the zone are never forwarded at all, which is what keeps systemd-resolved (which sends
only those here) from looping either.

Forwarding is for this host's own programs only (a query from loopback or from the mesh address itself): a peer
that reaches the server over the TUN gets the mesh's names but REFUSED for other names, so the endpoint's resolvers
(a LAN's internal names) are no open resolver for the mesh. Each forwarded UDP query goes out from a fresh socket
connected to the upstream (a random source port, replies from elsewhere never arrive), the first upstream that
answers within `FORWARD_TIMEOUT` wins, and at most `MAX_FORWARDS` are in flight (beyond: SERVFAIL at once). A TCP
client's queries are forwarded over TCP.

Split DNS: on a systemd-resolved host `start` runs `resolvectl dns IFNAME IP`, `resolvectl domain IFNAME
~MESH.SUFFIX` and `resolvectl default-route IFNAME false` (only the mesh's names come here) and `stop` runs
`resolvectl revert IFNAME`; elsewhere it logs the line to add to /etc/resolv.conf, which `view()` (hence `ztm
describe mesh`) shows too. Counters: `dns:queries`, `dns:answered`, `dns:nxdomain`, `dns:forwarded`,
`dns:forward_failed`, `dns:refused` (a peer's query for another name), `dns:dropped`, `dns:errors` (FORMERR,
NOTIMP...), `dns:tcp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import shutil
import socket
import struct
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import dns.rcode

from ztm.net.dns import DROP, Zone, ZoneError

if TYPE_CHECKING:
    from ztm.apps.net.app import NetApp

log = logging.getLogger("ztm.net")

PORT = 53
RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_RUN = Path("/run/systemd/resolve")
FORWARD_TIMEOUT = 2.0
"""Seconds one upstream has to answer a forwarded query before the next is asked."""
MAX_FORWARDS = 256
"""Forwarded queries in flight at once (each holds a socket); beyond, SERVFAIL."""
MAX_TCP_CLIENTS = 64
TCP_IDLE = 10.0
ZONE_MAX_AGE = 1.0
"""Seconds a zone is answered from before it is built again, even without `changed()`."""
RESOLVECTL_TIMEOUT = 5.0
IP_FREEBIND = 15
"""Linux's IP_FREEBIND: bind the mesh address even before the TUN has it."""

SERVING: set[str] = set()
"""Addresses a `MeshDns` of this process listens on: never an upstream."""


class MeshDns:
    def __init__(
        self, app: NetApp, suffix: str, *, port: int = PORT, resolv_conf: Path = RESOLV_CONF, upstream_port: int = PORT
    ) -> None:
        self.app = app
        self.suffix = suffix.strip(".")
        self.port = port
        self.resolv_conf = resolv_conf
        self.upstream_port = upstream_port
        self.ip: str | None = None
        self.ifname: str | None = None
        self.split_dns: str | None = None
        """"systemd-resolved" while resolvectl routes the zone here, else None."""
        self.error: str | None = None
        self.counters: Counter[str] = Counter()
        self._zone: Zone | None = None
        self._zone_at = 0.0
        self._zone_names: dict[str, tuple[str | None, str | None]] = {}
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._forwards = asyncio.Semaphore(MAX_FORWARDS)
        self._tcp_clients = 0
        self._upstreams: tuple[float, list[str]] = (-1.0, [])

    @property
    def zone_text(self) -> str:
        return f"{self.app.ctx.mesh}.{self.suffix}"

    # ---- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self, ip: str, ifname: str | None) -> None:
        """Serve on `ip`:53 (UDP and TCP) and, with `ifname`, set up split DNS. A failure is logged and kept in
        `error` (the TUN stays up without names); never raised."""
        await self.stop()
        self.ip, self.ifname, self.error = ip, ifname, None
        try:
            Zone({}, self.app.ctx.mesh, self.suffix)
        except ZoneError as exc:
            self._fail(f"no mesh DNS: {exc}; choose another --dns-suffix")
            return
        loop = asyncio.get_running_loop()
        try:
            udp = _socket(ip, self.port, socket.SOCK_DGRAM)
            self._udp, _ = await loop.create_datagram_endpoint(lambda: _Udp(self), sock=udp)
            tcp = _socket(ip, self.port, socket.SOCK_STREAM)
            self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp, backlog=MAX_TCP_CLIENTS)
        except OSError as exc:
            self._close()
            self._fail(f"cannot answer DNS on {_show(ip, self.port)}: {exc.strerror or exc}")
            return
        SERVING.add(ip)
        self.changed()
        log.info("mesh %s: DNS for %s on %s", self.app.ctx.mesh, self.zone_text, _show(ip, self.port))
        if ifname is not None:
            await self._split_dns(ip, ifname)

    async def stop(self) -> None:
        if self.split_dns is not None and self.ifname is not None:
            await _resolvectl("revert", self.ifname)
            self.split_dns = None
        self._close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _close(self) -> None:
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None
        if self.ip is not None:
            SERVING.discard(self.ip)

    def _fail(self, message: str) -> None:
        self.error = message
        log.error("mesh %s: %s", self.app.ctx.mesh, message)

    @property
    def listening(self) -> bool:
        return self._udp is not None

    def changed(self) -> None:
        """The endpoints' names or addresses changed: the next query builds the zone again."""
        self._zone = None

    def hint(self) -> str | None:
        """What to add to /etc/resolv.conf where nothing routes the mesh's names here; None when not needed."""
        if not self.listening or self.split_dns is not None or self.ip is None:
            return None
        return f"nameserver {self.ip}  # first line of /etc/resolv.conf: names under {self.zone_text}"

    def mesh_fields(self) -> dict[str, str | None]:
        """What the mesh's view (`ztm describe mesh`) shows: the names, where they are answered, and the line
        /etc/resolv.conf needs where nothing sends those names here."""
        listen = _show(self.ip, self.port) if self.listening and self.ip else None
        return {
            "dns_names": f"NAME.{self.zone_text}",
            "dns_server": f"{listen} (systemd-resolved sends them)" if listen and self.split_dns else listen,
            "dns_resolv_conf": self.hint(),
        }

    def view(self) -> dict[str, Any]:
        return {
            "zone": self.zone_text,
            "listen": _show(self.ip, self.port) if self.listening and self.ip else None,
            "split_dns": self.split_dns,
            "resolv_conf": self.hint(),
            "upstreams": self.upstreams(),
            "error": self.error,
            "counters": {k.removeprefix("dns:"): v for k, v in sorted(self.counters.items())},
        }

    async def _split_dns(self, ip: str, ifname: str) -> None:
        if not resolved_runs():
            log.warning(
                "mesh %s: systemd-resolved is not running here: for names under %s add `nameserver %s` as the first "
                "nameserver line of /etc/resolv.conf (other names are forwarded to the others there)",
                self.app.ctx.mesh,
                self.zone_text,
                ip,
            )
            return
        steps = (("dns", ifname, ip), ("domain", ifname, f"~{self.zone_text}"), ("default-route", ifname, "false"))
        for step in steps:
            problem = await _resolvectl(*step)
            if problem is not None:
                await _resolvectl("revert", ifname)
                log.warning(
                    "mesh %s: split DNS through systemd-resolved failed (%s): add `nameserver %s` to /etc/resolv.conf",
                    self.app.ctx.mesh,
                    problem,
                    ip,
                )
                return
        self.split_dns = "systemd-resolved"
        log.info("mesh %s: systemd-resolved sends names under %s to %s", self.app.ctx.mesh, self.zone_text, ip)

    # ---- answering ----------------------------------------------------------------------------------------------

    def zone(self) -> Zone:
        """The zone of the current names: built again after `changed()`, and when a second old if the names differ
        (a change whose notice was missed; 1,000 names build in about 2.5 ms)."""
        now = time.monotonic()
        if self._zone is None or now - self._zone_at > ZONE_MAX_AGE:
            names = self.app.names()
            if self._zone is None or names != self._zone_names:
                self._zone = Zone(names, self.app.ctx.mesh, self.suffix)
                self._zone_names = names
            self._zone_at = now
        return self._zone

    def local(self, query: bytes, tcp: bool) -> bytes | None:
        """The answer from the zone (counted), `DROP`, or None to forward."""
        c = self.counters
        c["dns:queries"] += 1
        reply = self.zone().answer(query, tcp=tcp)
        if reply is None:
            return None
        if reply == DROP:
            c["dns:dropped"] += 1
            return reply
        rcode = reply[3] & 0xF
        if rcode == dns.rcode.NOERROR:
            c["dns:answered"] += 1
        elif rcode == dns.rcode.NXDOMAIN:
            c["dns:nxdomain"] += 1
        else:
            c["dns:errors"] += 1
        return reply

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def may_forward(self, client: Any) -> bool:
        """Forwarding is for this host's own programs: a query from this endpoint's mesh address (a local program
        asking its own mesh address) or from loopback. A peer reaching this server over the TUN gets the mesh's names
        but REFUSED for others, so the endpoint's resolvers (a LAN's internal names) are no open resolver to the
        mesh."""
        host = str(client[0]) if isinstance(client, tuple) and client else ""
        if host == self.ip:
            return True
        try:
            return ipaddress.ip_address(host.partition("%")[0]).is_loopback
        except ValueError:
            return False

    def refused(self, query: bytes) -> bytes:
        self.counters["dns:refused"] += 1
        return _bare(query, dns.rcode.REFUSED)

    async def forward_for(self, client: Any, query: bytes, tcp: bool) -> bytes:
        return await self.forward(query, tcp) if self.may_forward(client) else self.refused(query)

    async def forward(self, query: bytes, tcp: bool) -> bytes:
        """The first upstream's answer to `query`; SERVFAIL when none answers (or too many are in flight)."""
        if self._forwards.locked():
            self.counters["dns:forward_failed"] += 1
            return _servfail(query)
        async with self._forwards:
            for upstream in self.upstreams():
                try:
                    async with asyncio.timeout(FORWARD_TIMEOUT):
                        reply = await (_ask_tcp if tcp else _ask_udp)(upstream, self.upstream_port, query)
                except (OSError, TimeoutError, asyncio.IncompleteReadError):
                    continue
                self.counters["dns:forwarded"] += 1
                return reply
        self.counters["dns:forward_failed"] += 1
        return _servfail(query)

    def upstreams(self) -> list[str]:
        """The `nameserver` addresses of resolv.conf (read again when it changes), without our own addresses."""
        try:
            mtime = self.resolv_conf.stat().st_mtime
        except OSError:
            mtime = -2.0
        if mtime != self._upstreams[0]:
            self._upstreams = (mtime, _nameservers(self.resolv_conf))
        return [a for a in self._upstreams[1] if a not in SERVING and a != self.ip and a not in ("0.0.0.0", "::")]

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_clients >= MAX_TCP_CLIENTS:
            writer.transport.abort()
            return
        self._tcp_clients += 1
        self.counters["dns:tcp"] += 1
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    size = struct.unpack("!H", await reader.readexactly(2))[0]
                    query = await reader.readexactly(size)
                reply = self.local(query, tcp=True)
                if reply is None:
                    reply = await self.forward_for(writer.get_extra_info("peername"), query, tcp=True)
                if reply == DROP:
                    break
                writer.write(struct.pack("!H", len(reply)) + reply)
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._tcp_clients -= 1
            writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, server: MeshDns) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        reply = self.server.local(data, tcp=False)
        if reply is None:
            if self.server.may_forward(addr):
                self.server.spawn(self._forward(data, addr))
            elif self.transport is not None:
                self.transport.sendto(self.server.refused(data), addr)
        elif reply != DROP and self.transport is not None:
            self.transport.sendto(reply, addr)

    async def _forward(self, query: bytes, addr: Any) -> None:
        reply = await self.server.forward(query, tcp=False)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


class _Answer(asyncio.DatagramProtocol):
    """The forwarding socket's side: the first response to our query's id."""

    def __init__(self, ident: bytes) -> None:
        self.ident = ident
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) >= 12 and data[:2] == self.ident and data[2] & 0x80 and not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


async def _ask_udp(upstream: str, port: int, query: bytes) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: _Answer(query[:2]), remote_addr=(upstream, port))
    try:
        transport.sendto(query)
        return await protocol.reply
    finally:
        transport.close()


async def _ask_tcp(upstream: str, port: int, query: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(upstream, port)
    try:
        writer.write(struct.pack("!H", len(query)) + query)
        await writer.drain()
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        return await reader.readexactly(size)
    finally:
        writer.close()


def resolved_runs() -> bool:
    """Whether systemd-resolved runs here (its runtime directory exists) and `resolvectl` is on PATH."""
    return shutil.which("resolvectl") is not None and RESOLVED_RUN.is_dir()


def _nameservers(path: Path) -> list[str]:
    """The addresses of the `nameserver` lines of a resolv.conf (zone ids dropped); none if it cannot be read."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    found: list[str] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            with contextlib.suppress(ValueError):
                found.append(str(ipaddress.ip_address(parts[1].partition("%")[0])))
    return list(dict.fromkeys(found))


def _socket(ip: str, port: int, kind: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP if family == socket.AF_INET else socket.IPPROTO_IPV6, IP_FREEBIND, 1)
        sock.bind((ip, port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def _resolvectl(*args: str) -> str | None:
    """Run `resolvectl ARGS`; None if it worked, else its first line of complaint."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "resolvectl", *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
    except OSError as exc:
        return f"resolvectl {' '.join(args)}: {exc.strerror or exc}"
    try:
        async with asyncio.timeout(RESOLVECTL_TIMEOUT):
            _, err = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return f"resolvectl {' '.join(args)}: no answer within {RESOLVECTL_TIMEOUT:g}s"
    if proc.returncode != 0:
        first = err.decode(errors="replace").strip().splitlines()
        return f"resolvectl {' '.join(args)}: {first[0] if first else f'exit {proc.returncode}'}"
    return None


def _servfail(query: bytes) -> bytes:
    return _bare(query, dns.rcode.SERVFAIL)


def _bare(query: bytes, rcode: int) -> bytes:
    """A header-only answer to `query` (its id, opcode and RD; QR and RA set) with `rcode`."""
    if len(query) < 12:
        return DROP
    ident, flags = struct.unpack_from("!HH", query)
    return struct.pack("!HHHHHH", ident, 0x8000 | (flags & 0x7900) | 0x0080 | rcode, 0, 0, 0, 0)


def _show(ip: str | None, port: int) -> str:
    return f"[{ip}]:{port}" if ip and ":" in ip else f"{ip}:{port}"
