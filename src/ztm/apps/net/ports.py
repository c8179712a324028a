"""`PortService`: an endpoint's TCP ports as mesh streams, without a TUN (issue 17, "names without TUN").

A port stream is a stream to the `net` app for service `port/tcp/PORT` (PROTOCOL.md, "Port streams"): the caller
side (`open`, direct first) is used by the tunnel's `--target EP:PORT` entrances and by the SOCKS5/HTTP proxy for
`NAME.MESH.SUFFIX` destinations; the serving side (`on_stream`) connects to PORT on this endpoint and splices.

Who may, at the serving endpoint, from the caller of the stream's verified certificate:
- the endpoint must offer ports at all: network mode up (`--tun`: it connects to its own mesh address, so exactly
  what a packet to that address over the TUN could reach) or `--expose-ports` (it connects to 127.0.0.1: services
  bound to loopback only become reachable from the mesh, hence an explicit switch);
- with a mesh policy, `ip/tcp:PORT` must allow the caller (`PolicyGate.allow_ip`, the same rules as the TUN's
  packets); the live connection is tracked and closed when a new policy no longer allows it. Without a policy the
  switch above is the whole decision (network mode is opt-in by the receiving endpoint).
A service that is not exactly `port/tcp/N` with N from 1 to 65535 in canonical decimal is refused.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import TYPE_CHECKING

from ztm.agent.apps import Caller
from ztm.agent.e2estream import E2EStream
from ztm.apps.tunnel.app import counted_splice
from ztm.apps.tunnel.pipe import reset_socket
from ztm.errors import BadInput, Forbidden, Unavailable
from ztm.policy import AppTarget

if TYPE_CHECKING:
    from ztm.apps.net.app import NetApp

log = logging.getLogger("ztm.agent.net")

PREFIX = "port/tcp/"
_SERVICE = re.compile(r"port/tcp/([1-9][0-9]{0,4})")
CONNECT_BUDGET = 4.0
"""Seconds the serving endpoint may spend connecting to the port: the hub gives it 5 s to accept the stream."""
CONNECT_FAILED = "cannot connect to port"
"""How a refusal for a closed or unreachable port starts (the proxy turns it into "connection refused")."""
KEY = "port"
"""The counters' prefix (`port:streams`, `port:refused`, `port:active`, `port:sent`, ...)."""


def service(port: int) -> str:
    """The service string of a port stream to `port`."""
    return f"{PREFIX}{check_port(port)}"


def check_port(port: object) -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise BadInput(f"invalid port {port!r}: use a TCP port from 1 to 65535")
    return port


def parse_service(text: str) -> int:
    """The port of a `port/tcp/PORT` service; BadInput saying the accepted form otherwise."""
    found = _SERVICE.fullmatch(text)
    if found is None or int(found.group(1)) > 65535:
        shown = text[:80].encode("ascii", "replace").decode()
        raise BadInput(f"invalid port stream {shown!r}: expected port/tcp/PORT with PORT from 1 to 65535")
    return int(found.group(1))


class PortService:
    def __init__(self, app: NetApp) -> None:
        self.app = app

    @property
    def exposed(self) -> bool:
        return self.app.ctx.session.net.expose_ports

    def target_host(self) -> str | None:
        """Where this endpoint connects for a port stream: its mesh address with the TUN up, else 127.0.0.1 with
        `--expose-ports`, else None (it takes no port streams)."""
        if self.app.tun_up and self.app.mesh_ip is not None:
            return self.app.mesh_ip
        return "127.0.0.1" if self.exposed else None

    def admit(self, caller: Caller, port: int) -> str:
        """The host to connect to for `caller`'s stream to `port`; Forbidden with the reason if it may not."""
        app = self.app
        host = self.target_host()
        if host is None:
            me = app.ctx.session.record.ep_name
            if app.ctx.session.net.tun:
                raise Forbidden(f"endpoint {me!r} takes port streams once network mode is up (it is not yet)")
            raise Forbidden(f"endpoint {me!r} takes no port streams: it runs without --tun and without --expose-ports")
        why = app.ctx.session.gate.allow_ip(caller, f"tcp:{port}")
        if why is not None:
            raise Forbidden(f"policy: {why}")
        return host

    async def on_stream(self, stream_id: str, caller: Caller, service_name: str) -> None:
        app, counters = self.app, self.app.counters
        try:
            port = parse_service(service_name)
            host = self.admit(caller, port)
        except (BadInput, Forbidden) as exc:
            counters[f"{KEY}:refused"] += 1
            log.warning("mesh %s: refused %s from %s (user %s): %s", app.ctx.mesh, service_name[:80], caller.name,
                        caller.user, exc.message)  # fmt: skip
            await app.ctx.refuse(stream_id, exc.message)
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

    async def open(self, ep: str, port: int) -> E2EStream:
        """A port stream to `port` on endpoint `ep` (id or name), over a direct channel first, else through the hub;
        ZtmError (NotFound, Forbidden with the endpoint's reason, Unavailable) if it cannot be had."""
        app = self.app
        ep_id = await app.ctx._ep_id(ep)
        if ep_id == app.ctx.ep_id:
            raise BadInput(f"{ep} is this endpoint: connect to 127.0.0.1:{port} directly")
        started = time.monotonic()

        def fallback(_why: str) -> None:
            app.counters[f"{KEY}:direct_fallbacks"] += 1

        address = await app.direct_address(ep_id)
        try:
            stream = await app.ctx.open_stream_direct_first(ep_id, service(port), address, fallback)
        except Unavailable:
            app.counters[f"{KEY}:failed"] += 1
            raise
        app.counters[f"{KEY}:opened"] += 1
        log.debug("mesh %s: port stream to %s:%d in %.1f ms", app.ctx.mesh, ep, port,
                  (time.monotonic() - started) * 1000)  # fmt: skip
        return stream


__all__ = ["PREFIX", "PortService", "check_port", "parse_service", "service"]
