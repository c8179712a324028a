"""`PortService`: an endpoint's TCP and UDP ports as mesh streams, without a TUN (issue 17, "names without TUN").

A port stream is a stream to the `net` app for service `port/tcp/PORT` (PROTOCOL.md, "Port streams"): the caller
side (`open`, direct first) is used by the tunnel's `--target EP:PORT` entrances and by the SOCKS5/HTTP proxy for
`NAME.MESH.SUFFIX` destinations and mesh addresses; the serving side (`on_stream`) connects to PORT on this endpoint
and splices. A port flow is the same for UDP, service `port/udp/PORT`: one stream per flow (a tunnel entrance's
client address, a SOCKS5 association's destination) carrying datagrams framed as the tunnel's UDP flows are
(`ztm.apps.tunnel.pipe.frame`, `udp_flow`); the serving side sends them from a UDP socket connected to PORT and
sends back what that socket receives. A flow ends after `UDP_IDLE` seconds without a reply, or when either side
resets it; a caller has at most `UDP_FLOWS_PER_CALLER` live flows at an endpoint (more are refused).

Who may, at the serving endpoint, from the caller of the stream's verified certificate:
- the endpoint must offer ports at all: network mode up (`--tun`: it connects to its own mesh address, so exactly
  what a packet to that address over the TUN could reach) or `--expose-ports` (it connects to 127.0.0.1: services
  bound to loopback only become reachable from the mesh, hence an explicit switch);
- with a mesh policy, `ip/tcp:PORT` (`ip/udp:PORT` for a flow) must allow the caller (`PolicyGate.allow_ip`, the
  same rules as the TUN's packets); the live connection or flow is tracked and closed when a new policy no longer
  allows it. Without a policy the switch above is the whole decision (network mode is opt-in by the receiving
  endpoint).
A service that is not exactly `port/tcp/N` or `port/udp/N` with N from 1 to 65535 in canonical decimal is refused.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from typing import TYPE_CHECKING

from ztm.agent.apps import Caller
from ztm.agent.e2estream import E2EStream
from ztm.apps.tunnel.app import UDP_IDLE, UDP_QUEUE, _UdpExit, counted_splice, serve_udp_flow
from ztm.apps.tunnel.pipe import reset_socket
from ztm.errors import BadInput, Forbidden, Unavailable
from ztm.policy import AppTarget

if TYPE_CHECKING:
    from ztm.apps.net.app import NetApp

log = logging.getLogger("ztm.agent.net")

PREFIX = "port/"
PROTOCOLS = ("tcp", "udp")
_SERVICE = re.compile(r"port/(tcp|udp)/([1-9][0-9]{0,4})")
CONNECT_BUDGET = 4.0
"""Seconds the serving endpoint may spend connecting to the port: the hub gives it 5 s to accept the stream."""
CONNECT_FAILED = "cannot connect to port"
"""How a refusal for a closed or unreachable port starts (the proxy turns it into "connection refused")."""
KEY = "port"
"""The counters' prefix (`port:streams`, `port:refused`, `port:active`, `port:sent`, ...)."""
UDP_KEY = "port-udp"
"""The UDP flows' counters' prefix (`port-udp:streams`, `port-udp:active`, `port-udp:sent`, ...)."""
UDP_FLOWS_PER_CALLER = 256
"""Live UDP port flows one caller endpoint may have at this endpoint (each holds a UDP socket and a stream); a
flow idle for `ztm.apps.tunnel.app.UDP_IDLE` seconds ends and frees its place."""


def service(port: int, protocol: str = "tcp") -> str:
    """The service string of a port stream (`tcp`) or flow (`udp`) to `port`."""
    if protocol not in PROTOCOLS:
        raise BadInput(f"invalid protocol {protocol!r}: port streams carry tcp or udp")
    return f"{PREFIX}{protocol}/{check_port(port)}"


def check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BadInput(f"invalid port {port!r}: use a port from 1 to 65535")
    return port


def parse_service(text: str) -> tuple[str, int]:
    """(protocol, port) of a `port/tcp/PORT` or `port/udp/PORT` service; BadInput saying the accepted form otherwise."""
    found = _SERVICE.fullmatch(text)
    if found is None or int(found.group(2)) > 65535:
        shown = text[:80].encode("ascii", "replace").decode()
        raise BadInput(
            f"invalid port stream {shown!r}: expected port/tcp/PORT or port/udp/PORT with PORT from 1 to 65535"
        )
    return found.group(1), int(found.group(2))


class PortService:
    def __init__(self, app: NetApp) -> None:
        self.app = app
        self.flows: Counter[str] = Counter()
        """Caller endpoint id -> its live UDP port flows here."""

    @property
    def exposed(self) -> bool:
        return self.app.ctx.session.net.expose_ports

    def target_host(self) -> str | None:
        """Where this endpoint connects for a port stream: its mesh address with the TUN up, else 127.0.0.1 with
        `--expose-ports`, else None (it takes no port streams)."""
        if self.app.tun_up and self.app.mesh_ip is not None:
            return self.app.mesh_ip
        return "127.0.0.1" if self.exposed else None

    def admit(self, caller: Caller, protocol: str, port: int) -> str:
        """The host to connect to for `caller`'s stream (`tcp`) or flow (`udp`) to `port`; Forbidden with the reason
        if it may not."""
        app = self.app
        host = self.target_host()
        if host is None:
            me = app.ctx.session.record.ep_name
            if app.ctx.session.net.tun:
                raise Forbidden(f"endpoint {me!r} takes port streams once network mode is up (it is not yet)")
            raise Forbidden(f"endpoint {me!r} takes no port streams: it runs without --tun and without --expose-ports")
        why = app.ctx.session.gate.allow_ip(caller, f"{protocol}:{port}")
        if why is not None:
            raise Forbidden(f"policy: {why}")
        if protocol == "udp" and self.flows[caller.ep_id] >= UDP_FLOWS_PER_CALLER:
            raise Forbidden(
                f"too many UDP flows: endpoint {caller.name!r} has {UDP_FLOWS_PER_CALLER} live here (the most one "
                f"caller may have; each ends after {UDP_IDLE:g} s without traffic)"
            )
        return host

    async def on_stream(self, stream_id: str, caller: Caller, service_name: str) -> None:
        app, counters = self.app, self.app.counters
        try:
            protocol, port = parse_service(service_name)
            host = self.admit(caller, protocol, port)
        except (BadInput, Forbidden) as exc:
            counters[f"{KEY}:refused"] += 1
            log.warning("mesh %s: refused %s from %s (user %s): %s", app.ctx.mesh, service_name[:80], caller.name,
                        caller.user, exc.message)  # fmt: skip
            await app.ctx.refuse(stream_id, exc.message)
            return
        if protocol == "udp":
            self.flows[caller.ep_id] += 1  # before the first await: a flood of opens counts at once
            try:
                await self._serve_flow(stream_id, caller, host, port)
            finally:
                self.flows[caller.ep_id] -= 1
                if self.flows[caller.ep_id] <= 0:
                    del self.flows[caller.ep_id]
            return
        try:
            async with asyncio.timeout(CONNECT_BUDGET):
                reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError) as exc:
            counters[f"{KEY}:refused"] += 1
            reason = f"{CONNECT_FAILED} {port}: {getattr(exc, 'strerror', None) or exc or 'timeout'}"
            log.info("mesh %s: port stream from %s: %s", app.ctx.mesh, caller.name, reason)
            await app.ctx.refuse(stream_id, reason)
            return
        try:
            stream = await app.ctx.accept(stream_id)
        except BaseException:
            writer.transport.abort()
            raise
        counters[f"{KEY}:streams"] += 1

        def close(_reason: str) -> None:
            stream.reset()
            reset_socket(writer)

        untrack = app.ctx.session.gate.track(caller, AppTarget("ip", f"tcp:{port}"), close)
        try:
            traffic = app.ctx.session.traffic_of(caller.ep_id, caller.name)
            await counted_splice(reader, writer, stream, counters, KEY, traffic)
        finally:
            untrack()

    async def _serve_flow(self, stream_id: str, caller: Caller, host: str, port: int) -> None:
        """One UDP port flow: a UDP socket connected to `host`:`port`, datagrams both ways until it ends."""
        app, counters = self.app, self.app.counters
        queue: asyncio.Queue[bytes] = asyncio.Queue(UDP_QUEUE)
        try:
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _UdpExit(queue), remote_addr=(host, port)
            )
        except OSError as exc:
            counters[f"{UDP_KEY}:refused"] += 1
            await app.ctx.refuse(stream_id, f"{CONNECT_FAILED} {port}: {exc.strerror or exc}")
            return
        counters[f"{UDP_KEY}:active"] += 1
        try:
            what = AppTarget("ip", f"udp:{port}")
            await serve_udp_flow(app.ctx, stream_id, caller, what, transport, queue, counters, UDP_KEY)
        finally:
            counters[f"{UDP_KEY}:active"] -= 1

    async def open(self, ep: str, port: int, protocol: str = "tcp") -> E2EStream:
        """A port stream (`tcp`) or flow (`udp`) to `port` on endpoint `ep` (id or name), over a direct channel
        first, else through the hub; ZtmError (NotFound, Forbidden with the endpoint's reason, Unavailable) if it
        cannot be had."""
        app = self.app
        ep_id = await app.ctx._ep_id(ep)
        if ep_id == app.ctx.ep_id:
            raise BadInput(f"{ep} is this endpoint: connect to 127.0.0.1:{port} directly")
        started = time.monotonic()

        def fallback(_why: str) -> None:
            app.counters[f"{KEY}:direct_fallbacks"] += 1

        address = await app.direct_address(ep_id)
        try:
            stream = await app.ctx.open_stream_direct_first(ep_id, service(port, protocol), address, fallback)
        except Unavailable:
            app.counters[f"{KEY}:failed"] += 1
            raise
        app.counters[f"{KEY}:opened"] += 1
        log.debug("mesh %s: port %s to %s:%d in %.1f ms", app.ctx.mesh, protocol, ep, port,
                  (time.monotonic() - started) * 1000)  # fmt: skip
        return stream


__all__ = ["PREFIX", "UDP_FLOWS_PER_CALLER", "PortService", "check_port", "parse_service", "service"]
