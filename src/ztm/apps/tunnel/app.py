"""`TunnelApp`: forwards TCP connections and UDP datagrams from an entrance endpoint to an exit endpoint.

Entrance (inbound): listens on local addresses; each accepted TCP connection (or each UDP client address) becomes one
stream through the hub to an exit that offers the same tunnel, chosen round-robin among the online exits it may use
(`ztm.apps.exits`: its own user's and root's, those of `exit_users`, or exactly `exits` in that order), failing over
to the next when one refuses or is unreachable. Endpoint references are resolved to ids when configured. The
client's first bytes (a UDP flow's first datagrams) go with the opening as they arrive, before the exit's answer
(early data, `ztm.agent.early`), and again to the next exit after a refusal.
Exit (outbound): checks the caller against `entrances`/`users` (identities asserted by the hub from certificates)
and the mesh's policy (`tunnel/tcp/NAME` or `tunnel/udp/NAME`, `ztm.agent.gate`: both must allow), connects to a
target (round-robin, failing over), and only then accepts the stream, so a refusal reaches the entrance's client at
once as a closed connection. Each live connection and UDP flow is tracked by the policy gate, which resets it at
once when a new policy no longer allows it. Configuration lives in the agent database and survives restarts.

Direct path: a TCP connection, and a UDP flow (one stream for its whole life), goes first over a direct channel
(`ztm.agent.direct`) when the exit has one (`ztm.agent.apps.open_direct_first` decides); it is the same end-to-end
stream as through the hub (`E2EStream.path` says which path), and the exit takes it in `on_stream` and checks its caller
exactly as on the relay. When the direct channel cannot be used the connection goes through the hub (counted in
`direct_fallbacks`). Both sides count connections per path where the stream is opened or accepted
(`ztm.apps.paths`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

from ztm import epref, h2
from ztm.addr import Address
from ztm.agent import optin
from ztm.agent.apps import AppContext, Caller, MeshApp
from ztm.agent.e2estream import E2EStream
from ztm.agent.early import LIMIT as EARLY_LIMIT
from ztm.agent.early import EarlyData, EarlyReader
from ztm.agent.mesh import Traffic
from ztm.apps import paths
from ztm.apps.exits import ROOT, ExitPolicy
from ztm.apps.tunnel.credit import CreditWaits
from ztm.apps.tunnel.pipe import MAX_DATAGRAM, Deframer, frame, reset_socket, splice_socket
from ztm.apps.tunnel.spec import Inbound, Outbound, PortTarget, TunnelName
from ztm.e2e import SUITE
from ztm.errors import BadInput, Conflict, Forbidden, NotFound, Timeout, Unavailable, ZtmError
from ztm.policy import AppTarget

ENCRYPTION = f"end to end ({SUITE}), relayed or direct"
"""How a tunnel's connections are protected, shown by `ztm tunnel describe` (PROTOCOL.md sections 9 and 11)."""
log = logging.getLogger("ztm.tunnel")

CONNECT_BUDGET = 4.0
"""Seconds an exit may spend connecting to its targets, all of them together: the hub gives a target endpoint 5 s to
accept a stream (`ztm.hub.relay.ACCEPT_TIMEOUT`), so a target that never answers must leave time to try the next."""
EXITS_TTL = 1.0
SLOW_EXIT = 10.0
"""Seconds an exit that did not answer in time (frozen, cut off, but not yet offline at the hub) is tried last."""
UDP_IDLE = 120.0
UDP_QUEUE = 256


class TunnelApp(MeshApp):
    name = "tunnel"
    description = "TCP and UDP port forwarding between endpoints"

    def __init__(self, ctx: AppContext) -> None:
        super().__init__(ctx)
        self.inbound: dict[str, Inbound] = {}
        self.outbound: dict[str, Outbound] = {}
        self.listeners: dict[str, list[asyncio.AbstractServer | asyncio.DatagramTransport]] = {}
        self._rr: Counter[str] = Counter()
        self.credit_waits = CreditWaits()
        self._exits_cache: dict[str, tuple[float, list[dict[str, Any]]]] = {}
        self._slow: dict[str, float] = {}
        """Exit endpoint id -> until when it is tried last (it let a stream time out)."""
        self._tasks: set[asyncio.Task[Any]] = set()

    # lifecycle
    async def start(self) -> None:
        for key, value in self.ctx.config_items().items():
            try:
                if key.startswith("inbound/") and isinstance(value, dict):
                    spec = Inbound.parse(value)
                    self.inbound[str(spec.tunnel)] = spec  # listed even if it cannot listen (listening: false)
                    self.listeners[str(spec.tunnel)] = await self._listen(spec)
                elif key.startswith("outbound/") and isinstance(value, dict):
                    out = Outbound.parse(value)
                    self.outbound[str(out.tunnel)] = out
            except (ZtmError, OSError) as exc:
                log.error("mesh %s: tunnel %s not restored: %s", self.ctx.mesh, key, exc)
        await super().start()
        await self._publish_quietly()  # the hub's hello may have come (and on_online run) before this restore

    async def stop(self) -> None:
        for name in list(self.listeners):
            self._close_listeners(name)
        for task in list(self._tasks):
            task.cancel()
        await super().stop()

    async def on_online(self) -> None:
        with contextlib.suppress(ZtmError):
            await self._publish()
        with contextlib.suppress(ZtmError):
            await self._upgrade_references()

    async def _upgrade_references(self) -> None:
        """Endpoint names in `exits`/`entrances` stored before names were resolved when configured: resolved to ids
        now, once, where the hub knows exactly one endpoint of that name (`epref.upgrade`)."""
        specs: list[Inbound | Outbound] = [*self.inbound.values(), *self.outbound.values()]
        if not any(epref.has_names(s.exits if isinstance(s, Inbound) else s.entrances) for s in specs):
            return
        endpoints = await self.ctx.endpoints()
        for key, inbound in list(self.inbound.items()):
            exits = epref.upgrade(inbound.exits, endpoints)
            if exits != inbound.exits:
                self.inbound[key] = dataclasses.replace(inbound, exits=exits)
                self.ctx.config_set(f"inbound/{key}", self.inbound[key].to_json())
        for key, outbound in list(self.outbound.items()):
            entrances = epref.upgrade(outbound.entrances, endpoints)
            if entrances != outbound.entrances:
                self.outbound[key] = dataclasses.replace(outbound, entrances=entrances)
                self.ctx.config_set(f"outbound/{key}", self.outbound[key].to_json())

    async def _publish(self) -> None:
        services = [f"outbound/{n}" for n in self.outbound] + [f"inbound/{n}" for n in self.inbound]
        await self.ctx.publish(services)

    # configuration
    async def open_inbound(self, spec: Inbound) -> dict[str, Any]:
        spec = dataclasses.replace(spec, exits=await self.ctx.resolve_endpoints(spec.exits, "exits"))
        if spec.target is not None:
            (ep,) = await self.ctx.resolve_endpoints((spec.target.ep,), "target")
            spec = dataclasses.replace(spec, target=PortTarget(ep, spec.target.port))
        key = str(spec.tunnel)
        old = self.listeners.pop(key, None)
        if old is not None:
            _close_all(old)
        try:
            listeners = await self._listen(spec)
        except OSError as exc:
            if key in self.inbound:  # back to the previous configuration, if it can still listen
                with contextlib.suppress(OSError):
                    self.listeners[key] = await self._listen(self.inbound[key])
            raise Conflict(f"cannot listen for {key}: {exc.strerror or exc}") from None
        self.listeners[key] = listeners
        self.ctx.config_set(f"inbound/{key}", spec.to_json())
        self.inbound[key] = spec
        self._exits_cache.pop(key, None)
        await self._publish_quietly()
        log.info("mesh %s: inbound %s listening on %s", self.ctx.mesh, key, ", ".join(map(str, spec.listen)))
        return await self.describe_inbound(key)

    async def open_outbound(self, spec: Outbound) -> dict[str, Any]:
        spec = dataclasses.replace(spec, entrances=await self.ctx.resolve_endpoints(spec.entrances, "entrances"))
        key = str(spec.tunnel)
        self.ctx.config_set(f"outbound/{key}", spec.to_json())
        self.outbound[key] = spec
        await self._publish_quietly()
        log.info("mesh %s: outbound %s to %s", self.ctx.mesh, key, ", ".join(map(str, spec.targets)))
        return await self.describe_outbound(key)

    async def close(self, kind: str, tunnel: TunnelName) -> None:
        key = str(tunnel)
        table: dict[str, Any] = self.inbound if kind == "inbound" else self.outbound
        if key not in table:
            raise NotFound(f"no {kind} {key} on this endpoint; see `ztm tunnel get {kind}`")
        self.ctx.config_delete(f"{kind}/{key}")
        del table[key]
        if kind == "inbound":
            self._close_listeners(key)
        await self._publish_quietly()

    async def _publish_quietly(self) -> None:
        with contextlib.suppress(ZtmError):
            await self._publish()

    async def describe_inbound(self, key: str, names: dict[str, str] | None = None) -> dict[str, Any]:
        """The entrance's configuration and counters, `names` (id -> name) of the endpoints it pins, and
        `exit_endpoints`: the online exits it would use now, each with its endpoint and user (null when the hub
        cannot be asked)."""
        spec = self.inbound.get(key)
        if spec is None:
            raise NotFound(f"no inbound {key} on this endpoint; see `ztm tunnel get inbound`")
        refs = (*spec.exits, spec.target.ep) if spec.target is not None else spec.exits
        if names is None:
            names = await self.ctx.endpoint_names() if refs else {}
        usable: list[dict[str, Any]] | None = []  # a port target uses no exit
        if spec.target is None:
            try:
                usable = [
                    {k: e.get(k) for k in ("ep", "name", "user", "direct")} for e in await self._usable_exits(key, spec)
                ]
            except ZtmError:
                usable = None
        return {
            **spec.to_json(),
            "kind": "inbound",
            "listening": key in self.listeners,
            "names": {ref: names[ref] for ref in refs if ref in names},
            "exit_endpoints": usable,
            **self._stats(key),
        }

    async def describe_outbound(self, key: str, names: dict[str, str] | None = None) -> dict[str, Any]:
        """The exit's configuration and counters, with `names` (id -> name) of the entrances it admits."""
        spec = self.outbound.get(key)
        if spec is None:
            raise NotFound(f"no outbound {key} on this endpoint; see `ztm tunnel get outbound`")
        if names is None:
            names = await self.ctx.endpoint_names() if spec.entrances else {}
        shown = {ref: names[ref] for ref in spec.entrances if ref in names}
        return {**spec.to_json(), "kind": "outbound", "names": shown, **self._stats(key)}

    def _stats(self, key: str) -> dict[str, Any]:
        c = self.counters
        return {
            "streams": c[f"{key}:streams"],
            "active": c[f"{key}:active"],
            "refused": c[f"{key}:refused"],
            "direct": c[f"{key}:direct"],
            "direct_fallbacks": c[f"{key}:fallbacks"],
            "e2e": c[f"{key}:e2e"],
            "paths": paths.view(c, key),
            "bytes_sent": c[f"{key}:sent"],
            "bytes_received": c[f"{key}:received"],
            **self.credit_waits.stats(key),
            "encryption": ENCRYPTION,
        }

    async def call(self, method: str, params: Any, caller: Caller) -> Any:
        """Remote configuration (`ztm ep EP tunnel ...`): this endpoint's owner, or root if the owner allows it."""
        ctx = self.ctx
        optin.check_remote_config(ctx.store, ctx.mesh, ctx.user, ctx.session.record.ep_name, caller, "tunnels")
        body = params if isinstance(params, dict) else {}
        if method == "open_inbound":
            return await self.open_inbound(Inbound.parse(body))
        if method == "open_outbound":
            return await self.open_outbound(Outbound.parse(body))
        if method == "close":
            kind = body.get("kind")
            if kind not in ("inbound", "outbound"):
                raise BadInput("kind must be inbound or outbound")
            await self.close(str(kind), TunnelName.parse(body.get("tunnel")))
            return {"closed": True}
        if method == "list":
            return await self.list_local()
        raise NotFound(f"tunnel does not answer {method!r}")

    async def list_local(self) -> dict[str, Any]:
        pinned = any(s.exits for s in self.inbound.values()) or any(s.entrances for s in self.outbound.values())
        names = await self.ctx.endpoint_names() if pinned else {}
        return {
            "inbound": [await self.describe_inbound(k, names) for k in sorted(self.inbound)],
            "outbound": [await self.describe_outbound(k, names) for k in sorted(self.outbound)],
        }

    # entrance
    async def _listen(self, spec: Inbound) -> list[asyncio.AbstractServer | asyncio.DatagramTransport]:
        loop = asyncio.get_running_loop()
        opened: list[asyncio.AbstractServer | asyncio.DatagramTransport] = []
        key = str(spec.tunnel)

        def on_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._spawn(self._accept_tcp(key, reader, writer))

        def on_udp() -> _UdpEntrance:
            return _UdpEntrance(self, key)

        try:
            for address in spec.listen:
                if spec.tunnel.protocol == "tcp":
                    server = await asyncio.start_server(on_tcp, address.host, address.port)
                    opened.append(server)
                else:
                    transport, _ = await loop.create_datagram_endpoint(on_udp, local_addr=(address.host, address.port))
                    opened.append(transport)
        except OSError:
            _close_all(opened)
            raise
        return opened

    def _close_listeners(self, key: str) -> None:
        _close_all(self.listeners.pop(key, []))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _usable_exits(self, key: str, spec: Inbound | None) -> list[dict[str, Any]]:
        """The online exits of tunnel `key` this entrance may use (`ztm.apps.exits`), pinned ones in pin order."""
        cached = self._exits_cache.get(key)
        now = time.monotonic()
        if cached is None or now - cached[0] > EXITS_TTL:
            found = await self.ctx.find(f"outbound/{key}")
            cached = (now, [f for f in found if f.get("online") and f.get("ep") != self.ctx.ep_id])
            if cached[1]:  # an empty answer is not cached: the next connection asks again (fast recovery)
                self._exits_cache[key] = cached
        if spec is None:
            return ExitPolicy(self.ctx.user).choose(cached[1])
        return ExitPolicy(self.ctx.user, spec.exits, spec.exit_users).choose(cached[1])

    async def _exits(self, key: str) -> list[dict[str, Any]]:
        spec = self.inbound.get(key)
        exits = await self._usable_exits(key, spec)
        now = time.monotonic()
        if exits and (spec is None or not spec.exits):
            start = self._rr[key] % len(exits)
            self._rr[key] += 1
            exits = exits[start:] + exits[:start]
        return sorted(exits, key=lambda e: self._slow.get(e["ep"], 0.0) > now)  # stable: slow ones last

    async def open_to_exit(self, key: str, early: EarlyData | None = None) -> tuple[E2EStream, dict[str, Any]]:
        """A stream to the first exit of tunnel `key` that accepts, over a direct channel when it has one, else
        through the hub (`AppContext.open_stream_direct_first`); Unavailable if none does. `early`: the client's
        bytes so far, sent with the opening (again to the next exit after a refusal, `ztm.agent.early`)."""
        exits = await self._exits(key)
        if not exits:
            raise Unavailable(f"no online exit of {self._whose(key)} offers {key}")
        problems = []

        def fallback(_why: str) -> None:
            self.counters[f"{key}:fallbacks"] += 1  # on to the relay

        for exit_ep in exits:
            try:
                stream = await self.ctx.open_stream_direct_first(
                    exit_ep["ep"], key, exit_ep.get("direct"), fallback, early
                )
                return stream, exit_ep
            # a refusal over the direct channel is final too; H2Error: the hub connection is closing (GOAWAY, renewal)
            except (ZtmError, h2.H2Error) as exc:
                problems.append(f"{exit_ep['name']}: {exc.message}")
                self._exits_cache.pop(key, None)
                if isinstance(exc, Timeout):  # the hub waited for it in vain: do not make every client wait
                    self._slow[exit_ep["ep"]] = time.monotonic() + SLOW_EXIT
                if early is not None and early.maybe_delivered:  # at most once: no other exit gets the bytes
                    problems.append("the client's first bytes may have reached it: not sent to another exit")
                    break
        raise Unavailable("every exit refused: " + "; ".join(problems))

    def _whose(self, key: str) -> str:
        spec = self.inbound.get(key)
        if spec is not None and spec.exits:
            return "the endpoints of --exits"
        users = dict.fromkeys((self.ctx.user, ROOT, *(spec.exit_users if spec else ())))
        return "user " + " or ".join(repr(u) for u in users)

    async def open_to_port(self, target: PortTarget, protocol: str = "tcp") -> tuple[E2EStream, dict[str, Any]]:
        """A port stream (`tcp`) or flow (`udp`) to `target` (`ztm.apps.net.ports`: direct first, else through the
        hub), for an entrance with `--target EP:PORT`; ZtmError if the net app is not running or the endpoint
        refuses."""
        from ztm.apps.net.app import NetApp  # the net app imports the tunnel's splice

        net = self.ctx.session.apps.get("net")
        if not isinstance(net, NetApp) or not net.running or net.ports is None:
            raise Unavailable(f"the net app is not running in mesh {self.ctx.mesh}: port targets need it")
        try:
            stream = await net.ports.open(target.ep, target.port, protocol)
        except ZtmError as exc:
            raise Unavailable(f"{target}: {exc.message}") from None
        except h2.H2Error as exc:  # the hub connection is closing (GOAWAY, renewal)
            raise Unavailable(f"{target}: {exc}") from None
        peer = self.ctx.session.peers.get(target.ep) or {}
        return stream, {"ep": target.ep, "name": str(peer.get("name") or target.ep)}

    async def _accept_tcp(self, key: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        spec = self.inbound.get(key)
        # the client's first bytes go with the opening, as they arrive, not after the exit's answer (early data)
        early = EarlyReader(reader, cast(asyncio.Transport, writer.transport), EarlyData())
        try:
            if spec is not None and spec.target is not None:
                stream, exit_ep = await self.open_to_port(spec.target)
            else:
                stream, exit_ep = await self.open_to_exit(key, early.early)
        except ZtmError as exc:
            self.counters[f"{key}:refused"] += 1
            log.info("mesh %s: inbound %s: connection closed: %s", self.ctx.mesh, key, exc.message)
            if early.early.maybe_delivered:  # the exit may have taken the client's bytes (then its target reset):
                reset_socket(writer)  # a reset, as for a connection that failed after it began
            else:
                writer.transport.abort()
            return
        except BaseException:  # cancelled (the agent stops), or a bug: never leave the client hanging
            writer.transport.abort()
            raise
        await self._pipe(key, reader, writer, stream, exit_ep["ep"], exit_ep["name"], early)

    async def _pipe(
        self,
        key: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stream: E2EStream,
        peer: str,
        peer_name: str,
        early: EarlyReader | None = None,
    ) -> None:
        self.counters[f"{key}:streams"] += 1
        traffic = self.ctx.session.traffic_of(peer, peer_name)
        await counted_splice(reader, writer, stream, self.counters, key, traffic, self.credit_waits, early)

    # exit
    def _admit(self, caller: Caller, service: str) -> tuple[TunnelName, str, Outbound]:
        """The outbound `service` names, if `caller` may use it; a logged, counted ZtmError if not."""
        try:
            tunnel = TunnelName.parse(service)
            key = str(tunnel)
            spec = self.outbound.get(key)
            if spec is None:
                raise NotFound(f"no outbound {key} on this endpoint")
            if spec.entrances and not any(epref.matches(r, caller.ep_id, caller.name) for r in spec.entrances):
                raise Forbidden(f"endpoint {caller.name!r} is not an allowed entrance of {key}")
            if spec.users and caller.user not in spec.users:
                raise Forbidden(f"user {caller.user!r} is not allowed to use {key}")
            self.ctx.session.gate.check(caller, policy_target(tunnel))
        except ZtmError as exc:
            self.counters[f"{service}:refused"] += 1
            log.warning(
                "mesh %s: refused %s from %s (user %s): %s",
                self.ctx.mesh,
                service,
                caller.name,
                caller.user,
                exc.message,
            )
            raise
        return tunnel, key, spec

    async def on_stream(self, stream_id: str, caller: Caller, service: str) -> None:
        try:
            tunnel, key, spec = self._admit(caller, service)
        except ZtmError as exc:
            await self.ctx.refuse(stream_id, exc.message)
            return
        if tunnel.protocol == "tcp":
            await self._exit_tcp(stream_id, caller, key, spec)
        else:
            await self._exit_udp(stream_id, caller, key, spec)

    def _targets(self, key: str, spec: Outbound) -> list[Address]:
        start = self._rr[f"out:{key}"] % len(spec.targets)
        self._rr[f"out:{key}"] += 1
        return list(spec.targets[start:] + spec.targets[:start])

    async def _connect_target(
        self, caller: Caller, key: str, spec: Outbound
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the first target that answers (round-robin); a counted, logged Unavailable if none."""
        problems = []
        targets = self._targets(key, spec)
        deadline = time.monotonic() + CONNECT_BUDGET
        for i, target in enumerate(targets):
            share = max(0.1, (deadline - time.monotonic()) / (len(targets) - i))
            try:
                async with asyncio.timeout(share):  # no task per connection, unlike wait_for (issue 13/18)
                    return await asyncio.open_connection(target.host, target.port)
            except (OSError, TimeoutError) as exc:
                problems.append(f"{target}: {getattr(exc, 'strerror', None) or exc or 'timeout'}")
        self.counters[f"{key}:refused"] += 1
        reason = "cannot reach the target: " + "; ".join(problems)
        log.warning("mesh %s: outbound %s for %s: %s", self.ctx.mesh, key, caller.name, reason)
        raise Unavailable(reason)

    async def _exit_tcp(self, stream_id: str, caller: Caller, key: str, spec: Outbound) -> None:
        try:
            reader, writer = await self._connect_target(caller, key, spec)
        except Unavailable as exc:
            await self.ctx.refuse(stream_id, exc.message)
            return
        try:
            stream = await self.ctx.accept(stream_id)
        except (ZtmError, h2.H2Error, TimeoutError):
            writer.transport.abort()
            raise

        def close(_reason: str) -> None:
            stream.reset()
            reset_socket(writer)

        untrack = self.ctx.session.gate.track(caller, policy_target(spec.tunnel), close)
        try:
            await self._pipe(key, reader, writer, stream, caller.ep_id, caller.name)
        finally:
            untrack()

    async def _exit_udp(self, stream_id: str, caller: Caller, key: str, spec: Outbound) -> None:
        loop = asyncio.get_running_loop()
        target = self._targets(key, spec)[0]
        queue: asyncio.Queue[bytes] = asyncio.Queue(UDP_QUEUE)
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpExit(queue), remote_addr=(target.host, target.port)
            )
        except OSError as exc:
            await self.ctx.refuse(stream_id, f"cannot reach the target {target}: {exc.strerror or exc}")
            return
        what = policy_target(spec.tunnel)
        await serve_udp_flow(self.ctx, stream_id, caller, what, transport, queue, self.counters, key)


def policy_target(tunnel: TunnelName) -> AppTarget:
    """What the mesh's policy is asked for a stream to this exit: `tunnel/tcp/NAME` or `tunnel/udp/NAME`."""
    return AppTarget("tunnel", f"{tunnel.protocol}/{tunnel.name}")


class _UdpExit(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(data)


class _UdpEntrance(asyncio.DatagramProtocol):
    """One stream per client address; datagrams wait in a bounded queue while the stream opens."""

    def __init__(self, app: TunnelApp, key: str) -> None:
        self.app = app
        self.key = key
        self.transport: asyncio.DatagramTransport | None = None
        self.flows: dict[Any, asyncio.Queue[bytes]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) > MAX_DATAGRAM:
            return
        queue = self.flows.get(addr)
        if queue is None:
            queue = self.flows[addr] = asyncio.Queue(UDP_QUEUE)
            self.app._spawn(self._flow(addr, queue))
        with contextlib.suppress(asyncio.QueueFull):
            queue.put_nowait(data)

    async def _flow(self, addr: Any, queue: asyncio.Queue[bytes]) -> None:
        key = self.key
        spec = self.app.inbound.get(key)
        early = EarlyData()  # the datagrams already here go with the opening; later ones wait in the queue
        over = b""
        taken = 0
        while not over and not queue.empty():
            framed = frame(queue.get_nowait())
            taken += len(framed) - 2
            if len(early) + len(framed) <= EARLY_LIMIT:
                early.feed(framed)
            else:
                over = framed  # sent once the exit answered, before the queue's
        try:
            if spec is not None and spec.target is not None:  # a port flow: no early data, all sent after the answer
                stream, _exit = await self.app.open_to_port(spec.target, "udp")
            else:
                stream, _exit = await self.app.open_to_exit(key, early)
        except ZtmError as exc:
            self.app.counters[f"{key}:refused"] += 1
            log.info("mesh %s: inbound %s: datagrams from %s dropped: %s", self.app.ctx.mesh, key, addr, exc.message)
            self.flows.pop(addr, None)
            return
        self.app.counters[f"{key}:streams"] += 1
        paths.count(self.app.counters, key, stream.path)
        self.app.counters[f"{key}:sent"] += taken
        if rest := early.done() + over:  # what the windows did not take yet goes first
            with contextlib.suppress(h2.H2Error):  # a failed stream ends the flow in `udp_flow`
                await stream.write(rest)

        def send(datagram: bytes) -> None:
            if self.transport is not None:
                self.transport.sendto(datagram, addr)

        try:
            await udp_flow(stream, queue, send, self.app.counters, key)
        finally:
            self.flows.pop(addr, None)


async def counted_splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stream: E2EStream,
    counters: Counter[str],
    key: str,
    traffic: Traffic,
    waits: CreditWaits | None = None,
    early: EarlyReader | None = None,
) -> None:
    """`splice`, counted: the connection by its path (`ztm.apps.paths`), `KEY:active` while it runs, bytes in
    `KEY:sent` and `KEY:received`, and the same in the peer's `traffic` (`ztm stats ep`); a relayed stream's waits
    for credit in `waits`. The tunnel's and the proxy's data path."""
    paths.count(counters, key, stream.path)
    traffic.protection = f"e2e {stream.suite}" if stream.path == "relay" else f"e2e {stream.suite} {stream.path}"
    stream.label = key
    if waits is not None:
        waits.add(key, stream)
    counters[f"{key}:active"] += 1
    traffic.streams += 1
    sent_key, received_key = f"{key}:sent", f"{key}:received"

    def count(sent: int, received: int) -> None:  # once per message: one direction at a time
        if sent:
            counters[sent_key] += sent
            traffic.sent += sent
        if received:
            counters[received_key] += received
            traffic.received += received

    try:
        await splice(reader, writer, stream, count, early)
    finally:
        counters[f"{key}:active"] -= 1
        traffic.streams -= 1
        if waits is not None:
            waits.remove(key, stream)


async def splice(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    stream: E2EStream,
    count: Callable[[int, int], None],
    early: EarlyReader | None = None,
) -> None:
    """Splice a local TCP socket with an end-to-end stream, relayed or direct (a direct channel's TLS connection
    is reused after a clean end both ways), after the opening's `early` data if it had some. Also the proxy app's
    data path."""
    await splice_socket(reader, writer, stream, count, early)


async def serve_udp_flow(
    ctx: AppContext,
    stream_id: str,
    caller: Caller,
    what: AppTarget,
    transport: asyncio.DatagramTransport,
    queue: asyncio.Queue[bytes],
    counters: Counter[str],
    key: str,
) -> None:
    """The serving side of one UDP flow whose socket `transport` is ready (what it receives lands in `queue`): accept
    stream `stream_id`, count it (`KEY:streams`, its path), carry datagrams both ways (`udp_flow`) while the policy
    gate allows `what` for `caller`; the socket is closed at the end. The tunnel's exits, the proxy's and the net
    app's port flows."""
    try:
        stream = await ctx.accept(stream_id)
    except BaseException:
        transport.close()
        raise
    counters[f"{key}:streams"] += 1
    paths.count(counters, key, stream.path)

    def close(_reason: str) -> None:
        stream.reset()
        transport.close()

    untrack = ctx.session.gate.track(caller, what, close)
    try:
        await udp_flow(stream, queue, transport.sendto, counters, key)
    finally:
        untrack()
        transport.close()


async def udp_flow(
    stream: E2EStream,
    queue: asyncio.Queue[bytes],
    send: Callable[[bytes], None],
    counters: Counter[str],
    key: str,
) -> None:
    """Carry one UDP flow over a stream: datagrams from `queue` go out framed, framed datagrams from the stream go to
    `send`. The flow ends when either direction ends (idle timeout, reset, socket error); the stream is reset."""

    async def up() -> None:
        while True:
            datagram = await asyncio.wait_for(queue.get(), UDP_IDLE)
            await stream.write(frame(datagram))
            counters[f"{key}:sent"] += len(datagram)

    async def down() -> None:
        deframer = Deframer()
        while data := await stream.read():
            for datagram in deframer.feed(data):
                send(datagram)
                counters[f"{key}:received"] += len(datagram)

    tasks = [asyncio.ensure_future(_quietly(up())), asyncio.ensure_future(_quietly(down()))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        stream.reset()


async def _quietly(coro: Any) -> None:
    """A UDP flow direction ends on idle timeout, a reset stream or a socket error; the flow then ends as a whole."""
    with contextlib.suppress(TimeoutError, h2.H2Error, OSError):
        await coro


def _close_all(items: list[asyncio.AbstractServer | asyncio.DatagramTransport]) -> None:
    for item in items:
        item.close()
