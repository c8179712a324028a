"""`NetApp`: network mode in one mesh (docs/network-mode.md).

With the agent's `--tun`, once the hub has told this endpoint its mesh addresses (`MeshSession.me`), the app makes
the mesh's TUN interface (`ztm.apps.net.tun`), gives it those addresses and reads it: each packet goes to the peer
`RouteTable.lookup` names (its mesh address, or with `--accept-routes` a subnet it routes), through that peer's
`PeerSender` (`ztm.apps.net.sender`: a bounded queue, one `ip` stream, direct first). Packets arriving on peers' `ip`
streams pass `InboundFilter.check` (framing, the source the peer may use, a destination of ours, the mesh policy's
`ip/...` rules) before they are written to the TUN; every drop is counted by reason. An endpoint with approved routes
forwards to its LAN with SNAT (`ztm.apps.net.snat`). `stop` removes the interface, its routes, the nft table and
the DNS settings (`self.dns`, h-ndns's `MeshDns`).

Streams for services `port/...` go to `self.ports` (h-ndns's `PortService`) when it is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from typing import Any, ClassVar

from ztm import h2
from ztm.agent.apps import Caller, MeshApp
from ztm.agent.e2estream import E2EStream
from ztm.aio import spawn
from ztm.apps import paths
from ztm.apps.net import snat as snat_mod
from ztm.apps.net import tun as tun_mod
from ztm.apps.net.dns import MeshDns
from ztm.apps.net.flows import Flows
from ztm.apps.net.frames import Deframer, FrameError
from ztm.apps.net.ports import PortService
from ztm.apps.net.sender import SERVICE, PeerSender
from ztm.errors import BadInput, ZtmError
from ztm.net.filter import InboundFilter
from ztm.net.packet import BadPacket, PacketInfo, parse
from ztm.net.table import PeerAddrs, RouteTable

log = logging.getLogger("ztm.agent.net")

DEFAULT_RANGE = "100.64.0.0/10"
FIND_TTL = 10.0
"""Seconds the peers' announced direct addresses (`find("ip")`) are reused."""
INDEX_KEY = "index"
STREAMS_PER_PEER = 4
"""`ip` streams one peer may have open to this endpoint at once; its oldest is closed for a new one past that (a real
agent keeps one, two while it moves to a direct channel): each holds a frame buffer of up to 64 KiB."""


def packed(address: object) -> bytes | None:
    """The packed bytes of an address string, None if it is not one."""
    if not isinstance(address, str):
        return None
    try:
        return ipaddress.ip_address(address).packed
    except ValueError:
        return None


class NetApp(MeshApp):
    name: ClassVar[str] = "net"
    description: ClassVar[str] = (
        "network mode: a mesh IP address per endpoint on a TUN interface, subnet routes (ztm run agent --tun)"
    )

    def __init__(self, ctx: Any) -> None:
        super().__init__(ctx)
        self.tun_up = False
        self.ifname: str | None = None
        self.error: str | None = None
        """Why network mode is not up (None while it is, or while it was not asked for)."""
        self.dns: MeshDns | None = None
        """The mesh's DNS server (`ztm.apps.net.dns`, made at start with `--dns-suffix`): started and stopped with the
        TUN, told when names change."""
        self.ports: PortService | None = PortService(self)
        """Port streams (`ztm.apps.net.ports`): takes the `port/...` streams, opens them for the tunnel and proxy."""
        self.device: tun_mod.TunDevice | None = None
        self.table = RouteTable()
        self.filter = InboundFilter(self.table, self._own, self._served, self._allow, self._reply)
        self.senders: dict[str, PeerSender] = {}
        self.flows = Flows()
        """The flows this endpoint sent, whose replies pass the policy."""
        self._callers: dict[str, Caller] = {}
        self._receivers: set[_Receiver] = set()
        self._routes: set[str] = set()
        """Subnet routes installed on the interface (`--accept-routes`)."""
        self._snat: snat_mod.Snat | None = None
        self._bringing = False
        self._syncing = False
        self._resync = False
        self._own_addrs: frozenset[bytes] = frozenset()
        self._served_routes: tuple[str, ...] = ()
        self._policy_version = -1
        self._found: dict[str, str | None] = {}
        self._found_at = 0.0
        self._names: dict[str, tuple[str | None, str | None]] = {}
        self._last_read = 0.0
        """When the TUN was last read (`tun.read_limit`)."""

    # ---- what h-ndns reads -------------------------------------------------------------------------------------

    @property
    def mesh_ip(self) -> str | None:
        value = self.ctx.session.me.get("mesh_ip")
        return value if isinstance(value, str) else None

    @property
    def mesh_ip6(self) -> str | None:
        value = self.ctx.session.me.get("mesh_ip6")
        return value if isinstance(value, str) else None

    def names(self) -> dict[str, tuple[str | None, str | None]]:
        """Endpoint name -> (mesh_ip, mesh_ip6): the mesh's endpoints and this one."""
        out: dict[str, tuple[str | None, str | None]] = {}
        for ep in self.ctx.session.peers.values():
            name = ep.get("name")
            if isinstance(name, str) and not ep.get("deleted"):
                out[name] = (_str(ep.get("mesh_ip")), _str(ep.get("mesh_ip6")))
        out[self.ctx.session.record.ep_name] = (self.mesh_ip, self.mesh_ip6)
        return out

    # ---- life ------------------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await super().start()
        session = self.ctx.session
        if self.dns is None:
            self.dns = MeshDns(self, session.net.dns_suffix)
        if session.net.tun:  # the TUN and its DNS need every endpoint's addresses and names, even without a policy;
            session.want_peers()  # others never load the whole list for it (10,000 agents x 10,000 entries at each
            # reconnection): a name through the proxy or a --target is looked up when it is used (`AppContext._ep_id`)
        if self._changed not in session.peers_changed:
            session.peers_changed.append(self._changed)
        self._changed()

    async def on_online(self) -> None:
        self._found_at = 0.0
        if self.tun_up:
            await self._announce()

    async def _announce(self) -> None:
        try:
            await self.ctx.publish([SERVICE])
        except ZtmError as exc:
            log.info("mesh %s: could not announce network mode: %s", self.ctx.mesh, exc.message)

    async def stop(self) -> None:
        session = self.ctx.session
        if self._changed in session.peers_changed:
            session.peers_changed.remove(self._changed)
        await self._down()
        await super().stop()

    async def _down(self) -> None:
        """Everything network mode set up, undone: senders, receivers, SNAT, routes, the interface, DNS."""
        was_up, self.tun_up = self.tun_up, False
        for sender in self.senders.values():
            sender.close()
        self.senders.clear()
        for receiver in list(self._receivers):
            receiver.stream.reset()
        self._receivers.clear()
        device, self.device = self.device, None
        if device is not None:
            asyncio.get_running_loop().remove_reader(device.fd)
        if self._snat is not None:
            await self._snat.stop()
            self._snat = None
        if device is not None:
            for cidr in sorted(self._routes):
                await tun_mod.del_route(device.name, cidr)
            self._routes.clear()
            device.close()  # the kernel removes the interface with its addresses and routes
        if was_up and self.dns is not None:
            try:
                await self.dns.stop()
            except Exception as exc:  # DNS's trouble must not keep the interface up
                log.warning("mesh %s: DNS did not stop cleanly: %s", self.ctx.mesh, exc)
        if was_up:
            log.info("mesh %s: network mode stopped (%s removed)", self.ctx.mesh, self.ifname)

    def _changed(self) -> None:
        """Peers or this endpoint changed: the route table, the filter's decisions, DNS names, the interface."""
        if not self.running:
            return
        self._update_table()
        names = self.names()
        if names != self._names:
            self._names = names
            if self.dns is not None:
                self.dns.changed()
        net = self.ctx.session.net
        if net.tun and not self.tun_up and not self._bringing and self.mesh_ip is not None and self.error is None:
            self._bringing = True
            spawn(self._up(), name=f"net-up-{self.ctx.mesh}")
        elif self.tun_up:
            self._sync_soon()

    def _update_table(self) -> None:
        peers = []
        for ep_id, ep in self.ctx.session.peers.items():
            if ep.get("deleted"):
                continue
            addrs = tuple(a for a in (packed(ep.get("mesh_ip")), packed(ep.get("mesh_ip6"))) if a is not None)
            routes = tuple(r for r in ep.get("routes") or () if isinstance(r, str))
            sender = self.senders.get(ep_id)
            rank = 0.0 if sender is not None and sender.path not in (None, "relay") else 1.0
            peers.append(PeerAddrs(ep_id, addrs, routes, bool(ep.get("online")), rank))
        self._own_addrs = frozenset(a for a in (packed(self.mesh_ip), packed(self.mesh_ip6)) if a is not None)
        served = self.ctx.session.me.get("routes")
        self._served_routes = tuple(r for r in served if isinstance(r, str)) if isinstance(served, list) else ()
        self.table.own = self._own_addrs
        self.table.update(peers, accept_routes=self.ctx.session.net.accept_routes)
        self.filter.forget()

    def _index(self) -> int:
        """This mesh's interface number: stored once chosen (the lowest no other mesh of this agent holds)."""
        mine = self.ctx.config_items().get(INDEX_KEY)
        if isinstance(mine, int) and not isinstance(mine, bool) and mine >= 0:
            return mine
        taken = set()
        for record in self.ctx.store.meshes():
            if record.name != self.ctx.mesh:
                other = self.ctx.store.app_items(record.name, self.name).get(INDEX_KEY)
                if isinstance(other, int):
                    taken.add(other)
        index = next(i for i in range(len(taken) + 1) if i not in taken)
        self.ctx.config_set(INDEX_KEY, index)
        return index

    async def _up(self) -> None:
        try:
            await self._bring_up()
        except tun_mod.TunError as exc:
            self.error = str(exc)
            log.error("mesh %s: network mode not started: %s", self.ctx.mesh, exc)
            await self._down()
        finally:
            self._bringing = False

    async def _bring_up(self) -> None:
        mesh_ip = self.mesh_ip
        assert mesh_ip is not None
        prefix = _prefix(self.ctx.session.mesh_ranges[0])
        name = f"{self.ctx.session.net.tun_name}{self._index()}"
        self.ifname = name
        device = self.device = tun_mod.TunDevice.open(name)
        await tun_mod.configure(name, mesh_ip, prefix, self.mesh_ip6)
        if not self.running:
            await self._down()
            return
        asyncio.get_running_loop().add_reader(device.fd, self._readable)
        self.tun_up = True
        log.info("mesh %s: network mode up: %s %s%s", self.ctx.mesh, name, mesh_ip,
                 f" {self.mesh_ip6}" if self.mesh_ip6 else "")  # fmt: skip
        await self._sync()
        await self._announce()
        if self.dns is not None:
            try:
                await self.dns.start(mesh_ip, name)
            except Exception as exc:  # DNS is a convenience: the addresses work without it
                log.warning("mesh %s: mesh DNS not started: %s", self.ctx.mesh, exc)

    def _sync_soon(self) -> None:
        if self._syncing:
            self._resync = True
            return
        self._syncing = True
        spawn(self._sync_loop(), name=f"net-sync-{self.ctx.mesh}")

    async def _sync_loop(self) -> None:
        try:
            while True:
                self._resync = False
                await self._sync()
                if not self._resync:
                    return
        finally:
            self._syncing = False

    async def _sync(self) -> None:
        """Subnet routes (`--accept-routes`) and this endpoint's router side as the hub describes them now."""
        device = self.device
        if device is None:
            return
        try:
            served = self._served()
            if served and self._snat is None:
                self._snat = snat_mod.Snat(device.name)
                await self._snat.start()
                log.info("mesh %s: routing %s for the mesh (SNAT)", self.ctx.mesh, ", ".join(served))
            elif not served and self._snat is not None:
                await self._snat.stop()
                self._snat = None
            own = set(served) | set(self.ctx.session.me.get("routes_pending") or ())
            wanted = {c for c in self.table.routes_in_use() if c not in own}
            if not self.ctx.session.net.accept_routes:
                wanted = set()
            for cidr in sorted(wanted - self._routes):
                await tun_mod.add_route(device.name, cidr)
                self._routes.add(cidr)
            for cidr in sorted(self._routes - wanted):
                await tun_mod.del_route(device.name, cidr)
                self._routes.discard(cidr)
        except tun_mod.TunError as exc:
            log.warning("mesh %s: network mode: %s", self.ctx.mesh, exc)

    # ---- the data plane ----------------------------------------------------------------------------------------------

    def _readable(self) -> None:
        """Packets from the TUN, each to its peer's sender (no route: dropped, counted)."""
        device = self.device
        if device is None:
            return
        counters = self.counters
        lookup = self.table.lookup
        track = self.ctx.session.gate.policy is not None
        now = time.monotonic()
        limit = tun_mod.read_limit(now, self._last_read)
        self._last_read = now
        touched: set[PeerSender] = set()
        batch = device.read_batch(limit)
        alone = len(batch) == 1
        for buf in batch:
            n = len(buf)
            version = buf[10] >> 4 if n > 10 else 0
            if version == 4 and n >= 30:
                dst = buf[26:30]
            elif version == 6 and n >= 50:
                dst = buf[34:50]
            else:
                counters["malformed-out:dropped"] += 1
                continue
            ep_id = lookup(dst)
            if ep_id is None:
                counters["no-route:dropped"] += 1
                continue
            sender = self.senders.get(ep_id)
            if sender is None:
                peer = self.ctx.session.peers.get(ep_id) or {}
                sender = self.senders[ep_id] = PeerSender(self, ep_id, str(peer.get("name") or ep_id))
            counters["ip:packets_out"] += 1
            counters["ip:bytes_out"] += n - 10
            if track:  # the replies to what this endpoint sends pass the policy (`ztm.apps.net.flows`)
                with contextlib.suppress(BadPacket):
                    self.flows.sent(parse(memoryview(buf)[10:]), now)
            if alone and sender.send_now(buf):  # a lone packet: straight to the stream
                continue
            if sender.put(buf):
                touched.add(sender)
        for sender in touched:  # one write per peer for the whole batch
            sender.kick()

    def deliver(self, ep_id: str, frame: bytes | memoryview) -> bool:
        """A frame from peer `ep_id` (its stream's certificate): checked, then written to the TUN; True if it was."""
        counters = self.counters
        device = self.device
        if device is None:
            counters["down:dropped"] += 1
            return False
        version = self.ctx.session.gate.version
        if version != self._policy_version:
            self._policy_version = version
            self.filter.forget()
        reason = self.filter.check_frame(ep_id, frame)  # the vnet header must fit the packet, then `check`
        if reason is not None:
            counters[f"{reason}:dropped"] += 1
            return False
        if not device.write(frame):
            counters["tun-refused:dropped"] += 1
            return False
        counters["ip:packets_in"] += 1
        counters["ip:bytes_in"] += len(frame) - 10
        return True

    def _reply(self, info: PacketInfo) -> bool:
        """For the filter: whether a packet the policy refused answers a flow this endpoint opened (then it passes)."""
        if self.flows.answers(info, time.monotonic()):
            self.counters["ip:replies"] += 1
            return True
        return False

    def _own(self) -> frozenset[bytes]:
        return self._own_addrs

    def _served(self) -> tuple[str, ...]:
        """The approved routes this endpoint routes for the mesh (as the hub last described it)."""
        return self._served_routes

    def _allow(self, ep_id: str, detail: str) -> str | None:
        caller = self._callers.get(ep_id)
        if caller is None:  # pragma: no cover - a frame only arrives on a stream whose caller was recorded
            return "no stream from this endpoint"
        return self.ctx.session.gate.allow_ip(caller, detail)

    async def direct_address(self, ep_id: str) -> str | None:
        """The direct listener `ep_id` announced (None: none; punching may still make a channel)."""
        now = time.monotonic()
        if now - self._found_at > FIND_TTL:
            self._found_at = now
            try:
                found = await self.ctx.find(SERVICE)
            except (ZtmError, h2.H2Error):
                found = []
            self._found = {str(f.get("ep")): _str(f.get("direct")) for f in found}
        return self._found.get(ep_id)

    # ---- streams from peers --------------------------------------------------------------------------------------

    async def on_stream(self, stream_id: str, caller: Caller, service: str) -> None:
        if service.startswith("port/"):
            if self.ports is None:
                await self.ctx.refuse(stream_id, "this endpoint does not take port streams")
                return
            await self.ports.on_stream(stream_id, caller, service)
            return
        if service != SERVICE:
            await self.ctx.refuse(stream_id, f"the net app has no service {service!r}")
            return
        if not self.tun_up:
            await self.ctx.refuse(stream_id, "network mode is off on this endpoint (ztm run agent --tun)")
            return
        stream = await self.ctx.accept(stream_id)
        self._callers[caller.ep_id] = caller
        paths.count(self.counters, caller.name, stream.path)
        receiver = _Receiver(self, caller.ep_id, stream)
        theirs = sorted((r for r in self._receivers if r.ep_id == caller.ep_id), key=lambda r: r.since)
        for old in theirs[: max(0, len(theirs) + 1 - STREAMS_PER_PEER)]:  # a real agent has one (two while moving)
            self._receivers.discard(old)
            old.stream.reset()
            self.counters["too-many-streams:dropped"] += 1  # a stream closed, not a packet
        self._receivers.add(receiver)
        stream.set_sink(receiver)
        if caller.ep_id in self.senders:  # its peer view may rank a new direct path
            self._update_table()

    # ---- views ---------------------------------------------------------------------------------------------------

    async def cli(self, argv: list[str]) -> str:
        """`ztm net [status]`: the interface, addresses, routes, paths per peer, packets and drops."""
        if argv not in ([], ["status"]):
            raise BadInput("usage: ztm net [status] (the JSON view: ztm get app net -o json)")
        return status_text(self.view())

    def view(self) -> dict[str, Any]:
        view = super().view()
        counters = self.counters
        view.update(
            {
                "tun": self.ctx.session.net.tun,
                "tun_up": self.tun_up,
                "interface": self.ifname if self.tun_up else None,
                "mesh_ip": self.mesh_ip,
                "mesh_ip6": self.mesh_ip6,
                "error": self.error,
                "accept_routes": self.ctx.session.net.accept_routes,
                "expose_ports": self.ctx.session.net.expose_ports,
                "dns": self.dns.view() if self.dns is not None else None,
                "ports": {
                    **{k.partition(":")[2]: v for k, v in sorted(counters.items()) if k.startswith("port:")},
                    **{
                        f"udp_{k.partition(':')[2]}": v
                        for k, v in sorted(counters.items())
                        if k.startswith("port-udp:")
                    },
                },
                "routing": list(self._served()) if self._snat is not None else [],
                "routes_in_use": self.table.routes_in_use(),
                "routes_installed": sorted(self._routes),
                "packets_in": counters["ip:packets_in"],
                "packets_out": counters["ip:packets_out"],
                "bytes_in": counters["ip:bytes_in"],
                "bytes_out": counters["ip:bytes_out"],
                "dropped": {k.partition(":")[0]: v for k, v in sorted(counters.items()) if k.endswith(":dropped")},
                "peers": [
                    {
                        "ep": s.ep_id,
                        "name": s.name,
                        "path": s.path,
                        "queued": s.queue.queued,
                        "paths": paths.view(counters, s.name),
                    }
                    for s in sorted(self.senders.values(), key=lambda s: s.name)
                ],
            }
        )
        return view


class _Receiver:
    """The sink of one peer's `ip` stream: frames out of its chunks, each delivered through the filter."""

    def __init__(self, app: NetApp, ep_id: str, stream: E2EStream) -> None:
        self.app = app
        self.ep_id = ep_id
        self.stream = stream
        self.deframer = Deframer()
        self.since = time.monotonic()

    def stream_data(self, data: bytes) -> None:
        try:
            frames = self.deframer.feed(data)
        except FrameError as exc:
            self.app.counters["bad-frame:dropped"] += 1
            log.warning("mesh %s: closed a broken ip stream from %s: %s", self.app.ctx.mesh, self.ep_id, exc)
            self.app._receivers.discard(self)
            self.stream.reset()
            return
        deliver = self.app.deliver
        written = False
        for frame in frames:
            written = deliver(self.ep_id, frame) or written
        if written:  # what the kernel answered at once (an echo reply, TCP's ACK) goes out now, not a loop turn later
            self.app._readable()

    def stream_end(self) -> None:
        self.app._receivers.discard(self)
        self.stream.end_nowait()

    def stream_error(self, exc: h2.H2Error) -> None:
        self.app._receivers.discard(self)


def status_text(view: dict[str, Any]) -> str:
    """The lines of `ztm net status`."""
    if view["tun_up"]:
        lines = [f"network mode: up on {view['interface']}: {view['mesh_ip']} {view['mesh_ip6'] or ''}".rstrip()]
    elif view["tun"]:
        lines = [f"network mode: not up ({view['error'] or 'waiting for this endpoint addresses from the hub'})"]
    else:
        lines = ["network mode: off (ztm run agent --tun)"]
    lines.append(f"this endpoint: {view['mesh_ip'] or '-'} {view['mesh_ip6'] or ''}".rstrip())
    if view["routing"]:
        lines.append(f"routing for the mesh (SNAT): {', '.join(view['routing'])}")
    for cidr, ep in view["routes_in_use"].items():
        lines.append(f"route {cidr} via {ep}{'' if cidr in view['routes_installed'] else ' (not installed)'}")
    lines.append(f"packets: in {view['packets_in']} ({view['bytes_in']} B), out {view['packets_out']} "
                 f"({view['bytes_out']} B)")  # fmt: skip
    dropped = ", ".join(f"{k} {v}" for k, v in view["dropped"].items()) or "none"
    lines.append(f"dropped: {dropped}")
    for peer in view["peers"]:
        lines.append(f"peer {peer['name']}: path {peer['path'] or '-'}, queued {peer['queued']} B, streams "
                     f"{paths.shown(peer['paths'])}")  # fmt: skip
    return "\n".join(lines) + "\n"


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _prefix(mesh_range: object) -> int:
    try:
        return ipaddress.ip_network(mesh_range if isinstance(mesh_range, str) else DEFAULT_RANGE).prefixlen
    except ValueError:
        return ipaddress.ip_network(DEFAULT_RANGE).prefixlen
