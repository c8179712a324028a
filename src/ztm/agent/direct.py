"""Direct channels between endpoints of a mesh: mutual TLS 1.3 straight from entrance to exit, the hub as fallback.

An agent started with `--direct ADDR` listens there (`DirectServer`, one port for all its meshes: the client names
the mesh in SNI as `MESH_ID.ztm`) and announces `ADDR` to each mesh through the hub (`POST /api/direct`; a wildcard
host becomes the address the hub sees the agent connect from). Peers find that address in `GET /api/services`.

Trust is the mesh's, nothing new: both sides present their endpoint certificates and verify the other's against
the mesh CA and the hub's current CRL (`GET /api/crl`, fetched after every hello and on every `crl` event, which
the hub sends when it evicts a user). The client also checks the server is the endpoint it meant to reach. On the
listener, the mesh of a channel is the one whose CA verified the peer's chain (the context SNI chose); a certificate
that names another mesh in its SANs is refused and counted (`wrong_mesh`). The
caller's identity (`Caller`) comes only from its verified certificate (endpoint id, user); its name, used by
`--entrances`, from the hub's endpoint record. When a CRL revokes a serial, live channels with that peer close.

Per tunnelled connection, a channel carries an end-to-end stream exactly like a relayed one (`ztm.agent.e2e`,
PROTOCOL.md section 11; `ztm.agent.direct_outer` adapts the TLS connection): RESUME + OPEN on the session the two
endpoints already share (sessions are per peer pair, whichever path made them) or a handshake, then sealed records;
the server hands it to the same dispatch as relayed streams (`MeshSession.serve_stream`), so apps see
`on_stream(id, caller, service)` with the caller from the end-to-end certificate, which must be the endpoint the TLS
certificate names. A channel carries one stream at a time: after both END records it carries the next one (the
client puts it back in its pool, the server waits for the next first flight). So that a new connection costs no TLS
handshake, the client keeps at least `POOL_SIZE` (at most `POOL_MAX`) handshaken channels per peer and dials missing
ones in the background. A peer that cannot be reached (connect, TLS, identity, end-to-end opening) is skipped for a
backoff (`FAIL_MIN` doubling to `FAIL_MAX`), and the caller uses the hub relay.

Peers without a reachable listener (behind NAT, or with none) are punched (`ztm.agent.punch`, on unless
`--no-p2p`): candidates go through an end-to-end call (`punch`, answered by `on_punch`), both sides connect from a
fresh port at once, and the TCP connection that comes up carries a channel exactly like a dialled one (the entrance
is the TLS client). Punching runs in the background (the pool's refill): a connection never waits for it, it takes
the relay until a punched channel is pooled. Punched channels are kept idle much longer (`PUNCHED_IDLE`), with TCP
keepalives holding the NAT mappings, since a new one costs a punch; each channel has a `kind` (the stream's path):
`direct` (dialled listener), `lan` (punched, same NAT, LAN address) or `punched` (through the routers' mappings).

After an ordinary punch to a peer timed out, the next one asks for a birthday attempt (`punchmsg.Birthday`,
`--p2p-birthday K`) and starts at once, without the backoff, if this agent's budget allows one now (else after the
backoff, as any failure): both sides add a burst of 2 K sockets aimed only at the other's hub-attested address,
within each agent's budget; the channel that comes up is the same as any punched one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import ipaddress
import logging
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509

from ztm import pki
from ztm.addr import Address
from ztm.agent import punchmsg
from ztm.agent.direct_outer import DirectConn, DirectOuter
from ztm.agent.early import EarlyData
from ztm.agent.punch import WINDOW, Attempt, PunchError, PunchPort, keep_alive, rtt_ms, silent_for
from ztm.aio import spawn
from ztm.e2e import E2EError
from ztm.errors import BadInput, CertificateError, Forbidden, Unavailable, ZtmError
from ztm.tlsobject import fast_tls

if TYPE_CHECKING:
    from ztm.agent.apps import Caller
    from ztm.agent.e2estream import E2EStream
    from ztm.agent.mesh import MeshSession

log = logging.getLogger("ztm.agent.direct")

CONNECT_TIMEOUT = 1.0
"""Seconds for TCP connect + TLS handshake to a peer's direct address before the relay is used."""
GREETING_TIMEOUT = 60.0
"""Seconds an accepted channel may wait for a stream's first flight (pooled channels wait idle this long at most)."""
POOL_IDLE = 45.0
"""Seconds a pooled channel is kept before the client closes it (less than the server's GREETING_TIMEOUT)."""
POOL_SIZE = 2
POOL_MAX = 8
MAX_CHANNELS = 1024
"""Live channels per peer and direction of use at most; beyond, connections use the relay. A TLS connection costs
about 40 KB on each side, against about 10 KB for a relayed stream, so this bounds what masses of idle
connections cost (bench/RESULTS.md, "Direct path")."""
FAIL_MIN = 2.0
FAIL_MAX = 300.0
PUNCHED_IDLE = 540.0
"""Seconds a pooled punched channel is kept idle by the client (a new one costs a punch; keepalives hold the NAT
mappings); the server waits `PUNCHED_GREETING` for its next stream."""
PUNCHED_GREETING = 600.0
PUNCH_CALL_TIMEOUT = 5.0
"""Seconds the peer has to answer a punch offer (it asks its hub for its mapping first)."""
PUNCH_LIMIT = punchmsg.RateLimit(per_peer=6, total=24, window=10.0)
"""How often peers may make this agent punch (per caller, all callers): each punch sends SYNs to the caller's
candidates for up to `punch.WINDOW` seconds. One limit for the agent, shared by its meshes."""
PUNCH_PACE = punchmsg.RateLimit(per_peer=4, total=64, window=10.0)
"""How often this agent punches to one peer (its pool's refills): under the peer's `PUNCH_LIMIT`, so a burst of
connections does not get refills refused (a connection never waits for a punch anyway: the relay carries it)."""


class MeshServerContext(ssl.SSLContext):
    """The server context of one mesh's direct channels: its CA store is that mesh's CA alone, so a certificate it
    verified belongs to `mesh_id` and no other mesh (whatever mesh its SANs name)."""

    mesh_id: str = ""


class DirectUnreachable(Exception):
    """The peer's direct address cannot be used now; use the relay."""


def sni_name(mesh_id: str) -> str:
    return f"{mesh_id}.ztm"


@dataclass(frozen=True)
class PeerCert:
    """Who is on the other side of a channel, from its verified certificate."""

    mesh_id: str
    ep_id: str
    user: str
    serial: int
    not_after: float
    """When the certificate expires: the channel is closed then."""


def peer_of(transport: asyncio.BaseTransport) -> PeerCert:
    """The verified peer certificate's endpoint identity; CertificateError if it names no endpoint."""
    sslobj = transport.get_extra_info("ssl_object")
    der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
    if not der:
        raise CertificateError("the peer presented no certificate")
    cert = pki.cert_from_der(der)
    identity = pki.identity_of(cert)
    if identity.ep_id is None or identity.user is None:
        raise CertificateError(f"the peer's certificate names no endpoint ({identity})")
    return PeerCert(
        identity.mesh_id, identity.ep_id, identity.user, cert.serial_number, cert.not_valid_after_utc.timestamp()
    )


async def _answered() -> None:
    """A direct channel has no hub to answer the opening: the peer's records are the answer."""


class MeshDirect:
    """Direct channels of one mesh session: TLS contexts with the CRL, the client pool, live channels."""

    def __init__(self, session: MeshSession) -> None:
        self.session = session
        self.announce: Address | None = None
        """Set by the agent when it listens for direct channels: announced to the hub after every hello."""
        self.live: dict[DirectOuter, PeerCert] = {}
        """Streams on channels (both directions), and whose they are."""
        self.per_peer: collections.Counter[str] = collections.Counter()
        """Live channels by peer endpoint id (`MAX_CHANNELS`)."""
        self.revoked: frozenset[int] = frozenset()
        self.crl_number = -1
        self.counters: collections.Counter[str] = collections.Counter()
        self._contexts: tuple[str, ssl.SSLContext, ssl.SSLContext] | None = None
        self._pool: dict[str, collections.deque[DirectConn]] = {}
        self._refilling: set[str] = set()
        self._failed: dict[str, tuple[float, float]] = {}
        """Peer endpoint id -> (skip until, last delay)."""
        self.running = True
        self.p2p = True
        """Punch channels to peers without a reachable listener (`--no-p2p`: off)."""
        self.keepalive = 5.0
        """Seconds between TCP keepalives on idle punched channels (`--p2p-keepalive`)."""
        self._local_ip: str | None = None
        """This endpoint's address on its hub connection at the last hello (a change means it moved)."""
        self._listener_failed: dict[str, tuple[float, float]] = {}
        """Peer endpoint id -> (skip its listener until, last delay): punch instead meanwhile."""
        self._waiting: dict[DirectConn, PeerCert] = {}
        """Accepted channels waiting for their (next) stream, and whose they are."""
        self.birthday = punchmsg.Birthday(0)
        """The agent's birthday budget (`--p2p-birthday`), shared by its meshes; off (K = 0) until the agent sets it."""
        self._birthday_next: set[str] = set()
        """Peers whose last ordinary punch timed out: the next punch to them asks for a birthday attempt."""

    # ---- CRL and contexts --------------------------------------------------------------------------------------

    @property
    def _crl_file(self) -> Any:
        return self.session.files.dir / "direct-ca-crl.pem"

    async def on_online(self) -> None:
        """After every hello: drop punched channels if this endpoint's address changed, fetch the CRL, announce the
        direct address."""
        self._check_address()
        try:
            await self.refresh_crl()
            if self.announce is not None:
                host = None if self.announce.host in ("0.0.0.0", "::") else self.announce.host
                answer = await self.session.link.request(
                    "POST", "/api/direct", {"port": self.announce.port, "host": host}
                )
                log.info("mesh %s: direct channels announced at %s", self.session.name, answer.get("direct"))
        except (ZtmError, OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("mesh %s: direct channels not set up: %s", self.session.name, exc)

    def _check_address(self) -> None:
        """A new hub session from another local address (the endpoint moved: a new lease, another network): its
        punched channels are bound to the old address and carry nothing any more; close them so that new
        connections take the relay at once and a new punch starts, rather than waiting on a dead path."""
        conn = self.session.link.conn
        local = conn.local_address[0] if conn is not None and conn.local_address is not None else None
        if local is None:
            return
        before, self._local_ip = self._local_ip, local
        if before is None or before == local:
            return
        dropped = 0
        for pool in self._pool.values():
            for proto in [p for p in pool if p.kind != "direct"]:
                pool.remove(proto)
                proto.abort()
                dropped += 1
        for proto in [p for p in self._waiting if p.kind != "direct"]:
            proto.abort()
            dropped += 1
        for outer in [o for o in self.live if o.conn.kind != "direct"]:
            outer.reset()
            dropped += 1
        self._failed.clear()  # the old address's failures say nothing about the new one
        self.counters["moved"] += 1
        log.info("mesh %s: this endpoint's address changed (%s -> %s): %d punched channels closed",
                 self.session.name, before, local, dropped)  # fmt: skip

    async def on_crl(self) -> None:
        """The hub changed its CRL (an eviction): install the new one, closing revoked peers' channels. A failed
        fetch is retried (1 s, 2 s, 4 s, 8 s): until it is in, a revoked peer could still open channels here."""
        for delay in (1.0, 2.0, 4.0, 8.0, None):
            try:
                await self.refresh_crl()
                return
            except (ZtmError, OSError, ValueError, TypeError, KeyError) as exc:
                log.warning("mesh %s: could not fetch the new CRL: %s", self.session.name, exc)
            if delay is not None:
                await asyncio.sleep(delay)

    async def refresh_crl(self) -> None:
        answer = await self.session.link.request("GET", "/api/crl")
        self.apply_crl(str(answer["crl"]), int(answer["number"]))

    def apply_crl(self, pem: str, number: int) -> None:
        """Check and install a CRL from the hub: new contexts for new channels; revoked peers' channels close."""
        crl = x509.load_pem_x509_crl(pem.encode())
        if not crl.is_signature_valid(pki.cert_public_key(self.session.permit.ca)):
            raise CertificateError("the hub sent a CRL that the mesh CA did not sign")
        tmp = self._crl_file.with_suffix(".new")
        tmp.write_text((self.session.files.dir / "ca.pem").read_text() + pem)
        tmp.replace(self._crl_file)
        self.revoked = frozenset(r.serial_number for r in crl)
        self.crl_number = number
        self._contexts = None
        for outer, peer in [(o, p) for o, p in self.live.items() if p.serial in self.revoked]:
            log.info("mesh %s: closing the direct channel of %s: its certificate is revoked", self.session.name,
                     peer.user)  # fmt: skip
            self.counters["revoked_closed"] += 1
            outer.reset()
        for proto, peer in list(self._waiting.items()):
            if peer.serial in self.revoked:
                proto.abort()
        for pool in self._pool.values():
            for proto in pool:
                proto.abort()
            pool.clear()
        self.session.e2e.revoke(self.revoked)  # after the direct streams above, which are counted

    def _ensure_contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext] | None:
        """(server, client) contexts, rebuilt after a CRL or certificate change; None before the first CRL."""
        if self.crl_number < 0:
            return None
        cert = self.session.record.ep_cert
        if self._contexts is None or self._contexts[0] is not cert:
            d = self.session.files.dir
            server = MeshServerContext(ssl.PROTOCOL_TLS_SERVER)
            server.mesh_id = self.session.record.mesh_id
            client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            client.check_hostname = False  # the peer is checked by its endpoint URI SAN (`open`)
            for ctx in (server, client):
                ctx.minimum_version = ssl.TLSVersion.TLSv1_3
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.load_cert_chain(str(d / "ep.crt"), str(d / "ep.key"))
                ctx.load_verify_locations(cafile=str(self._crl_file))
                ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
            server.num_tickets = 0  # see DirectServer.start
            for ctx in (server, client):
                fast_tls(ctx)  # uvloop calls OpenSSL's read/write/pending without ssl.py's wrappers
            self._contexts = (cert, server, client)
        return self._contexts[1], self._contexts[2]

    def server_context(self) -> ssl.SSLContext | None:
        contexts = self._ensure_contexts()
        return contexts[0] if contexts else None

    # ---- server side -------------------------------------------------------------------------------------------

    async def serve(self, conn: DirectConn, peer: PeerCert) -> None:
        """A channel from a peer of this mesh, idle: its next stream's first flight goes to the end-to-end layer,
        then to the app it opens, exactly as a relayed stream (`MeshSession.serve_stream`)."""
        if peer.ep_id == self.session.record.ep_id or peer.serial in self.revoked:
            conn.abort()
            return
        self._waiting[conn] = peer
        try:
            await asyncio.wait_for(conn.first_flight(), conn.idle_limit or GREETING_TIMEOUT)
        except TimeoutError:  # idle too long
            conn.abort()
            return
        except BaseException:  # the agent stops
            conn.abort()
            raise
        finally:
            self._waiting.pop(conn, None)
        if conn.lost:
            return
        if peer.serial in self.revoked:  # revoked while the channel waited (apply_crl aborts those, too)
            conn.abort()
            return
        if self.per_peer[peer.ep_id] >= MAX_CHANNELS:  # an honest peer keeps to the same limit
            conn.abort()
            return
        outer = self._outer(conn, peer)
        self.counters["accepted"] += 1
        e2e = self.session.e2e
        try:
            stream, app_name, service = await e2e.respond(outer)
        except E2EError as exc:
            e2e.failed(exc.reason, exc.message, f"refused a direct stream from {peer.ep_id} (user {peer.user})")
            outer.close()  # after the ERROR frame, if any
            return
        except BaseException:  # cancelled (the agent stops) or a bug: never leave the peer hanging
            outer.reset()
            raise
        stream.path = conn.kind
        if (stream.peer.ep_id, stream.peer.user) != (peer.ep_id, peer.user):
            e2e.failed(
                "identity",
                f"the end-to-end certificate is endpoint {stream.peer.ep_id} (user {stream.peer.user}), the TLS one "
                f"{peer.ep_id} (user {peer.user})",
                "refused a direct stream",
            )
            stream.reset()
            return
        try:
            name = await self._name_of(peer)
        except ZtmError as exc:
            stream.refuse(exc)
            return
        except BaseException:
            stream.reset()
            raise
        claimed = {"ep": peer.ep_id, "user": peer.user, "name": name}
        await self.session.serve_stream(f"direct-{outer.id}", stream, e2e.caller(stream.peer, claimed), app_name,
                                        service)  # fmt: skip

    def _outer(self, conn: DirectConn, peer: PeerCert) -> DirectOuter:
        """A stream on `conn` (counted live, per peer, until it is done)."""
        outer = DirectOuter(conn, self._stream_done)
        self.live[outer] = peer
        self.per_peer[peer.ep_id] += 1
        return outer

    def _stream_done(self, outer: DirectOuter) -> None:
        peer = self.live.pop(outer, None)
        if peer is not None:
            self.per_peer[peer.ep_id] -= 1

    def _reuse(self, conn: DirectConn, peer: PeerCert) -> None:
        """A stream on `conn` finished cleanly both ways: the connection carries the next one."""
        if peer.serial in self.revoked or not self.running or time.time() >= peer.not_after:
            conn.close()
        elif conn.server:
            spawn(self.serve(conn, peer), name="direct-serve")
        else:
            self.put_back(peer.ep_id, conn)

    async def _name_of(self, peer: PeerCert) -> str:
        """The peer's endpoint name from the hub (events or a lookup); the certificate carries only its id."""
        known = self.session.peers.get(peer.ep_id)
        if known is None or known.get("user") != peer.user:
            found = await self.session.link.request("GET", f"/api/endpoints/{peer.ep_id}")
            if not isinstance(found, dict) or found.get("user") != peer.user:
                raise ZtmError("the hub does not know this endpoint certificate")
            self.session.peers[peer.ep_id] = known = found
        return str(known.get("name", ""))

    # ---- client side -------------------------------------------------------------------------------------------

    def reachable(self, ep_id: str) -> bool:
        return _clear(self._failed, ep_id)

    def usable(self, ep_id: str, address: str | None) -> bool:
        """Whether a stream to `ep_id` (announcing `address`, or no listener) should try a direct channel first: a
        pooled one is always worth taking (even while new channels to it back off), else a new one if it is not
        backing off."""
        if any(c.usable for c in self._pool.get(ep_id, ())):
            return True
        if not self.reachable(ep_id):
            return False
        return address is not None or self.p2p_blocker() is None

    def pooled(self, ep_id: str) -> bool:
        """A handshaken channel to `ep_id` waits in the pool: a stream opened now goes direct at once."""
        return any(c.usable for c in self._pool.get(ep_id, ()))

    def prepare(self, ep_id: str, address: str | None) -> None:
        """Get channels to `ep_id` ready in the background (dial its listener at `address`, or punch), unless it is
        backing off: a long-lived stream on the relay (the net app's) moves once one is pooled."""
        if self.reachable(ep_id) and (address is not None or self.p2p_blocker() is None):
            self._refill(ep_id, address)

    def _mark_failed(self, ep_id: str, reason: str) -> None:
        delay = _back_off(self._failed, ep_id)
        self.counters["failures"] += 1
        log.info("mesh %s: direct channel to %s failed (%s); relay for %.0f s", self.session.name, ep_id, reason, delay)

    def _listener_usable(self, ep_id: str) -> bool:
        return _clear(self._listener_failed, ep_id)

    def _listener_down(self, ep_id: str) -> None:
        _back_off(self._listener_failed, ep_id)

    async def open(
        self, ep_id: str, address: str | None, app: str, service: str, early: EarlyData | None = None
    ) -> E2EStream:
        """An end-to-end stream to `app` on endpoint `ep_id`, accepted for `service`, on a direct channel: a pooled
        one, else a new one to its listener at `address`. With no listener to dial (None, or it failed lately), the
        pool is refilled by punching in the background and DirectUnreachable says to use the relay meanwhile.

        DirectUnreachable: use the relay. ZtmError: the peer's app refused (the relay would refuse too).
        """
        if self.per_peer[ep_id] >= MAX_CHANNELS:
            self.counters["over_limit"] += 1
            raise DirectUnreachable(f"{MAX_CHANNELS} channels to it are open")
        for _attempt in range(3):
            conn = self._take(ep_id)
            pooled = conn is not None
            if conn is None and not self.reachable(ep_id):
                raise DirectUnreachable("backing off")
            if conn is None:
                if address is None or not self._listener_usable(ep_id):
                    if self.p2p_blocker() is not None:
                        raise DirectUnreachable("its listener failed lately" if address else "it has no listener")
                    self._refill(ep_id, address)
                    raise DirectUnreachable("no channel yet: punching one in the background")
                try:
                    conn, _peer = await self._dial_listener(ep_id, address)
                except DirectUnreachable as exc:
                    self._listener_down(ep_id)
                    if self.p2p_blocker() is None:
                        self._refill(ep_id, address)  # punch instead
                    else:
                        self._mark_failed(ep_id, str(exc))
                    raise
            self._refill(ep_id, address)
            assert conn.peer is not None
            outer = self._outer(conn, conn.peer)
            try:
                stream = await self.session.e2e.open(outer, ep_id, app, service, _answered, early)
            except E2EError as exc:
                outer.reset()
                if pooled and exc.reason == "truncated" and not (early is not None and early.maybe_delivered):
                    continue  # the server closed it meanwhile (restart, idle): take another
                self._mark_failed(ep_id, exc.message)
                raise DirectUnreachable(exc.message) from None
            except BaseException:  # a refusal (ZtmError), or cancelled: the client went away or the agent stops
                outer.reset()
                raise
            self._failed.pop(ep_id, None)
            stream.path = conn.kind
            self.counters["opened"] += 1
            return stream
        raise DirectUnreachable("every pooled channel was closed")

    def put_back(self, ep_id: str, conn: DirectConn) -> None:
        """A reused channel back into the pool (closed if the pool is full)."""
        pool = self._pool.setdefault(ep_id, collections.deque())
        if len(pool) >= POOL_MAX:
            conn.abort()
            return
        conn.made = time.monotonic()
        pool.append(conn)

    def _take(self, ep_id: str) -> DirectConn | None:
        pool = self._pool.get(ep_id)
        now = time.monotonic()
        while pool:
            proto = pool.popleft()
            if proto.usable and now - proto.made < (proto.idle_limit or POOL_IDLE) and not self._silent(proto):
                return proto
            proto.abort()
        return None

    def _silent(self, conn: DirectConn) -> bool:
        """A punched channel whose peer has not answered a keepalive (its path died: the peer's machine went away,
        a router dropped the mappings for good): not to be used, a new connection would hang on it."""
        if conn.kind == "direct" or conn.transport is None:
            return False
        silent = silent_for(conn.transport.get_extra_info("socket"))
        if silent is not None and silent > 2 * self.keepalive + 1:
            self.counters["punched_silent_closed"] += 1
            return True
        return False

    def _refill(self, ep_id: str, address: str | None) -> None:
        if ep_id in self._refilling or not self.running:
            return
        self._refilling.add(ep_id)
        spawn(self._fill(ep_id, address), name=f"direct-pool-{ep_id}")

    async def _fill(self, ep_id: str, address: str | None) -> None:
        try:
            pool = self._pool.setdefault(ep_id, collections.deque())
            while sum(1 for p in pool if p.usable) < POOL_SIZE and self.reachable(ep_id) and self.running:
                punching = address is None or not self._listener_usable(ep_id)
                if punching and not PUNCH_PACE.allow(f"{self.session.record.mesh_id}/{ep_id}"):
                    self.counters["punch_paced"] += 1  # the exit takes so many a minute: the next refill punches
                    return
                ordinary = ep_id not in self._birthday_next
                try:
                    proto, _peer = await self._dial(ep_id, address)
                except DirectUnreachable as exc:
                    if ordinary and self._birthday_now(ep_id):
                        continue  # an ordinary punch timed out: the birthday attempt at once, not after the backoff
                    if any(p.usable for p in pool):  # channels left: no reason to keep new connections off them
                        log.info("mesh %s: refilling the direct pool to %s failed (%s)", self.session.name, ep_id, exc)
                    else:
                        self._mark_failed(ep_id, str(exc))
                    return
                if not self.running:
                    proto.abort()
                    return
                pool.append(proto)
        finally:
            self._refilling.discard(ep_id)

    def _birthday_now(self, ep_id: str) -> bool:
        """Whether the punch to `ep_id` that just failed was an ordinary one that timed out and the next may be a
        birthday attempt now (within this agent's budget): then it starts at once rather than after the backoff,
        once (a birthday attempt that fails, or is refused, backs off as any failure)."""
        pair = f"{self.session.record.mesh_id}/{ep_id}"
        return ep_id in self._birthday_next and self.birthday.refusal(pair) is None

    async def _dial(self, ep_id: str, address: str | None) -> tuple[DirectConn, PeerCert]:
        """A new channel to `ep_id`: its listener if it has one that did not fail lately, else (or if that fails)
        a punched one."""
        if address is not None and self._listener_usable(ep_id):
            try:
                return await self._dial_listener(ep_id, address)
            except DirectUnreachable:
                self._listener_down(ep_id)
                if self.p2p_blocker() is not None:
                    raise
        return await self._punch(ep_id)

    async def _dial_listener(self, ep_id: str, address: str) -> tuple[DirectConn, PeerCert]:
        contexts = self._ensure_contexts()
        if contexts is None:
            raise DirectUnreachable("no CRL from the hub yet")
        try:
            target = Address.parse(address)
        except ZtmError:
            raise DirectUnreachable(f"bad address {address!r}") from None
        loop = asyncio.get_running_loop()
        try:
            _transport, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: DirectConn(server=False),
                    target.host,
                    target.port,
                    ssl=contexts[1],
                    server_hostname=sni_name(self.session.record.mesh_id),
                    ssl_handshake_timeout=CONNECT_TIMEOUT,
                ),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:
            raise DirectUnreachable(f"{address}: {getattr(exc, 'strerror', None) or exc or 'timeout'}") from None
        try:
            peer = self._expected(proto, ep_id, address)
        except ZtmError as exc:
            proto.abort()
            raise DirectUnreachable(exc.message) from None
        _set_nodelay(proto.transport)
        self._adopt(proto, peer)
        return proto, peer

    def _expected(self, proto: DirectConn, ep_id: str, where: str) -> PeerCert:
        """The server's verified certificate, which must be endpoint `ep_id` of this mesh (CertificateError)."""
        peer = _peer_checked(proto)
        if peer.ep_id != ep_id or peer.mesh_id != self.session.record.mesh_id:
            raise CertificateError(f"{where} is endpoint {peer.ep_id}, not {ep_id}")
        return peer

    # ---- punching (ztm.agent.punch) --------------------------------------------------------------------------

    def p2p_blocker(self) -> str | None:
        """Why this endpoint cannot punch now (None: it can)."""
        if not self.p2p:
            return "punching is off (--no-p2p)"
        if not self.running:
            return "the mesh session is stopping"
        conn = self.session.link.conn
        if conn is None or conn.closed or conn.local_address is None or conn.peer_address is None:
            return "not connected to the hub"
        try:
            loopback = _is_loopback(conn.local_address[0])
        except ValueError:
            return "the hub connection's address is unknown"
        if loopback:
            return "this endpoint reaches its hub over loopback (it runs on the hub's machine)"
        if self._ensure_contexts() is None:
            return "no CRL from the hub yet"
        return None

    def _punch_port(self) -> tuple[PunchPort, str, tuple[str, int], int]:
        """A fresh punch port in the family of the hub connection; this endpoint's LAN address; the hub's address;
        the family as 4 or 6."""
        conn = self.session.link.conn
        assert conn is not None and conn.local_address is not None and conn.peer_address is not None
        lan = conn.local_address[0]
        version = ipaddress.ip_address(lan).version
        try:
            port = PunchPort(socket.AF_INET6 if version == 6 else socket.AF_INET)
        except OSError as exc:
            raise PunchError("socket", f"cannot open a punch port: {exc.strerror or exc}") from None
        return port, lan, conn.peer_address, version

    async def _reflexive(self, port: PunchPort, hub: tuple[str, int]) -> tuple[str, int] | None:
        try:
            return await port.reflect(hub, self.session.files.ep_context(), self.session.record.mesh_id)
        except PunchError as exc:
            self.counters["punch_reflect_failures"] += 1
            log.info("mesh %s: %s", self.session.name, exc.message)
            return None

    @staticmethod
    def _candidates(lan: str, port: int, reflexive: tuple[str, int] | None) -> tuple[punchmsg.Candidate, ...]:
        found = [punchmsg.Candidate("lan", lan, port)]
        if reflexive is not None:
            found.append(punchmsg.Candidate("reflexive", reflexive[0], reflexive[1]))
        return tuple(found)

    def _plausible(
        self, peer: punchmsg.Punch, our_public: str | None, version: int, attested: str | None
    ) -> list[tuple[str, int]]:
        kept, dropped = punchmsg.plausible(peer, our_public, version, attested)
        for reason in dropped:
            self.counters[f"punch_candidates_refused_{reason}"] += 1
        return [c.address for c in kept]

    async def _punch(self, ep_id: str) -> tuple[DirectConn, PeerCert]:
        """Punch a channel to `ep_id` (this side is the entrance: the TLS client). DirectUnreachable if it fails."""
        blocker = self.p2p_blocker()
        if blocker is not None:
            raise DirectUnreachable(f"cannot punch: {blocker}")
        self.counters["punch_attempts"] += 1
        started = time.monotonic()
        port: PunchPort | None = None
        pair = f"{self.session.record.mesh_id}/{ep_id}"
        want = 0
        if ep_id in self._birthday_next:
            refused = self.birthday.refusal(pair)
            if refused is None:
                want = self.birthday.k
            else:
                self.counters[f"punch_birthday_refused_{refused}"] += 1
        spray: punchmsg.Spray | None = None
        try:
            port, lan, hub, version = self._punch_port()
            reflexive = await self._reflexive(port, hub)
            offer = punchmsg.Punch(secrets.token_hex(16), self._candidates(lan, port.port, reflexive), want)
            from ztm.agent import peercall  # here: peercall -> apps -> this module

            try:
                raw, seen = await peercall.call_seen(self.session, ep_id, "punch", offer.to_json(), PUNCH_CALL_TIMEOUT)
            except ZtmError as exc:
                raise PunchError("refused", f"the peer did not take the punch: {exc.message}") from None
            try:
                answer = punchmsg.parse(raw)
            except BadInput as exc:
                raise PunchError("bad_answer", f"the peer's answer: {exc.message}") from None
            if answer.id != offer.id:
                raise PunchError("bad_answer", "the peer answered another punch")
            our_public = reflexive[0] if reflexive else None
            if answer.birthday and 0 < answer.birthday <= want:
                spray = self._spray(answer, seen, our_public, version, pair)
            remotes = self._plausible(answer, our_public, version, seen)
            if not remotes and spray is None:
                raise PunchError("no_candidates", "the peer offered no address this endpoint may dial")
            attempt = port.attempt(remotes, spray)
            try:
                conn, peer, kind, remote = await self._first_channel(attempt, ep_id, answer, our_public)
            finally:
                self.counters["punch_birthday_sockets"] += attempt.sprayed
        except PunchError as exc:
            self.counters[f"punch_failures_{exc.reason}"] += 1
            if exc.reason == "timeout" and spray is None:
                self._birthday_next.add(ep_id)
            raise DirectUnreachable(f"punch: {exc.message}") from None
        finally:
            if port is not None:
                port.close()
            if spray is not None:
                self.birthday.done()
        self.counters["punch_successes"] += 1
        self._birthday_next.discard(ep_id)
        if spray is not None:
            self.counters["punch_birthday_successes"] += 1
        log.info("mesh %s: punched a %s channel to %s (%s:%d) in %.0f ms%s", self.session.name, kind, ep_id, remote[0],
                 remote[1], (time.monotonic() - started) * 1000, " (birthday)" if spray else "")  # fmt: skip
        return conn, peer

    async def _first_channel(
        self, attempt: Attempt, ep_id: str, answer: punchmsg.Punch, our_public: str | None
    ) -> tuple[DirectConn, PeerCert, str, tuple[str, int]]:
        """The first connection of `attempt` that becomes a TLS channel with `ep_id` (this side the client); the
        others are closed with the attempt. PunchError: the last TLS failure, or `timeout` if none connected."""
        last: PunchError | None = None
        while True:
            try:
                sock, remote = await attempt.next()
            except TimeoutError:
                if last is not None:
                    raise last from None
                raise PunchError("timeout", f"no TCP connection within {WINDOW:g}s ({attempt.tries} tries)") from None
            kind = punchmsg.path_kind(remote, answer, our_public)
            try:
                conn, peer = await self._tls_client(sock, ep_id, kind)
            except PunchError as exc:
                last = exc
                continue
            attempt.close()
            return conn, peer, kind, remote

    def _spray(
        self, peer: punchmsg.Punch, attested: str | None, our_public: str | None, version: int, pair: str
    ) -> punchmsg.Spray | None:
        """The birthday burst to aim at `peer` (which asked for or agreed to one), if the rules allow it: its
        reflexive candidate at its hub-attested address, and this agent's budget (each refusal counted)."""
        refused = punchmsg.birthday_refusal(peer, attested, our_public, version)
        if refused is None and not self.birthday.take(pair):
            refused = self.birthday.refusal(pair) or "rate"
        if refused is not None:
            self.counters[f"punch_birthday_refused_{refused}"] += 1
            return None
        self.counters["punch_birthday_attempts"] += 1
        return punchmsg.spray(peer, min(peer.birthday, self.birthday.k))

    async def _tls_client(self, sock: socket.socket, ep_id: str, kind: str) -> tuple[DirectConn, PeerCert]:
        contexts = self._ensure_contexts()
        if contexts is None:
            sock.close()
            raise PunchError("tls", "no CRL from the hub yet")
        keep_alive(sock, self.keepalive)
        loop = asyncio.get_running_loop()
        try:
            _transport, proto = await asyncio.wait_for(
                loop.create_connection(
                    lambda: DirectConn(server=False),
                    sock=sock,
                    ssl=contexts[1],
                    server_hostname=sni_name(self.session.record.mesh_id),
                    ssl_handshake_timeout=3 * CONNECT_TIMEOUT,
                ),
                3 * CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as exc:
            sock.close()
            raise PunchError("tls", f"TLS on the punched connection failed: {exc or 'timeout'}") from None
        try:
            peer = self._expected(proto, ep_id, "the punched connection")
        except ZtmError as exc:
            proto.abort()
            raise PunchError("identity", exc.message) from None
        proto.kind = kind
        proto.idle_limit = PUNCHED_IDLE
        self._adopt(proto, peer)
        return proto, peer

    async def on_punch(self, params: object, caller: Caller) -> dict[str, object]:
        """A peer's punch offer (an end-to-end call: `caller` is proven): answer with this endpoint's candidates and
        start connecting to the peer's; the channel that comes up is served like an accepted one."""
        if not self.p2p:
            self.counters["punch_refused_off"] += 1
            raise Forbidden("this endpoint does not punch (--no-p2p): use the hub relay")
        blocker = self.p2p_blocker()
        if blocker is not None:
            self.counters["punch_refused_unable"] += 1
            raise Unavailable(f"this endpoint cannot punch now: {blocker}")
        if caller.ep_id == self.session.record.ep_id:
            raise BadInput("an endpoint does not punch to itself")
        try:
            offer = punchmsg.parse(params)
        except BadInput:
            self.counters["punch_refused_bad"] += 1
            raise
        if not PUNCH_LIMIT.allow(f"{self.session.record.mesh_id}/{caller.ep_id}"):
            self.counters["punch_refused_rate"] += 1
            raise Unavailable("too many punches asked of this endpoint; try again in a few seconds")
        try:
            port, lan, hub, version = self._punch_port()
        except PunchError as exc:
            raise Unavailable(exc.message) from None
        reflexive = await self._reflexive(port, hub)
        our_public = reflexive[0] if reflexive else None
        spray: punchmsg.Spray | None = None
        if offer.birthday:
            pair = f"{self.session.record.mesh_id}/{caller.ep_id}"
            if self.birthday.k <= 0:
                self.counters["punch_birthday_refused_off"] += 1
            else:
                spray = self._spray(offer, caller.ip, our_public, version, pair)
        answer = punchmsg.Punch(
            offer.id, self._candidates(lan, port.port, reflexive), spray.k if spray is not None else 0
        )
        remotes = self._plausible(offer, our_public, version, caller.ip)
        self.counters["punch_answered"] += 1
        spawn(self._punch_serve(port, remotes, caller.ep_id, offer, our_public, spray), name=f"punch-{caller.ep_id}")
        return answer.to_json()

    async def _punch_serve(
        self, port: PunchPort, remotes: list[tuple[str, int]], ep_id: str, offer: punchmsg.Punch, public: str | None,
        spray: punchmsg.Spray | None = None,
    ) -> None:  # fmt: skip
        """Connect to the caller's candidates (and accept on the port; and send the birthday burst `spray`) until
        one connection is a TLS channel with the caller, or the window ends."""
        attempt = port.attempt(remotes, spray)
        done = asyncio.Event()
        handshakes: set[asyncio.Task[None]] = set()
        try:
            while not done.is_set():
                got = asyncio.ensure_future(attempt.next())
                stop = asyncio.ensure_future(done.wait())
                await asyncio.wait({got, stop}, return_when=asyncio.FIRST_COMPLETED)
                stop.cancel()
                if not got.done():
                    got.cancel()
                    break
                if got.exception() is not None:  # TimeoutError: the window is over
                    break
                sock, remote = got.result()
                kind = punchmsg.path_kind(remote, offer, public)
                task = asyncio.ensure_future(self._tls_server(sock, ep_id, kind, done))
                handshakes.add(task)
                task.add_done_callback(handshakes.discard)
            if handshakes:
                await asyncio.wait(handshakes, timeout=3 * CONNECT_TIMEOUT)
            if not done.is_set():
                self.counters["punch_answer_timeouts"] += 1
            elif spray is not None:
                self.counters["punch_birthday_successes"] += 1
        finally:
            for task in handshakes:
                task.cancel()
            port.close()
            if spray is not None:
                self.counters["punch_birthday_sockets"] += attempt.sprayed
                self.birthday.done()

    async def _tls_server(self, sock: socket.socket, ep_id: str, kind: str, done: asyncio.Event) -> None:
        context = self.server_context()
        if context is None or done.is_set():
            sock.close()
            return
        keep_alive(sock, self.keepalive)
        loop = asyncio.get_running_loop()
        proto = DirectConn(server=True)  # uvloop returns its SSL protocol here, not ours: keep ours
        try:
            transport, _ = await asyncio.wait_for(
                loop.connect_accepted_socket(
                    lambda: proto, sock, ssl=context, ssl_handshake_timeout=3 * CONNECT_TIMEOUT
                ),
                3 * CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError):
            sock.close()
            return
        try:
            peer = peer_of(transport)
        except ZtmError:
            proto.abort()
            return
        if peer.ep_id != ep_id or peer.mesh_id != self.session.record.mesh_id:
            self.counters["punch_wrong_peer"] += 1
            log.warning("mesh %s: a punched connection for %s presented endpoint %s (user %s); closed",
                        self.session.name, ep_id, peer.ep_id, peer.user)  # fmt: skip
            proto.abort()
            return
        done.set()
        proto.kind = kind
        proto.idle_limit = PUNCHED_GREETING
        self.counters["punch_accepted"] += 1
        self._adopt(proto, peer)
        spawn(self.serve(proto, peer), name="direct-serve")

    def paths(self) -> dict[str, dict[str, object]]:
        """Per peer endpoint id with a direct channel (in use, pooled or waiting): its kind and TCP round-trip time."""
        conns: list[DirectConn] = [outer.conn for outer in self.live]
        conns += [c for pool in self._pool.values() for c in pool]
        conns += list(self._waiting)
        found: dict[str, dict[str, object]] = {}
        for conn in conns:
            if conn.peer is None or not conn.usable or conn.peer.ep_id in found:
                continue
            sock = conn.transport.get_extra_info("socket") if conn.transport is not None else None
            found[conn.peer.ep_id] = {"path": conn.kind, "rtt_ms": rtt_ms(sock)}
        return found

    def _adopt(self, conn: DirectConn, peer: PeerCert) -> None:
        """`conn` is a channel with `peer` (verified): reused after each clean stream, closed when its certificate
        ends (as the hub closes its connections then)."""
        conn.peer = peer
        conn.on_release = lambda c: self._reuse(c, peer)
        timer = asyncio.get_running_loop().call_later(max(0.0, peer.not_after - time.time()), self._expired, conn)
        conn.on_lost = timer.cancel

    def _expired(self, conn: DirectConn) -> None:
        if conn.peer is not None:
            log.info("mesh %s: closing a direct channel of %s: its certificate expired", self.session.name,
                     conn.peer.user)  # fmt: skip
        conn.abort()

    def close(self) -> None:
        self.running = False
        for pool in self._pool.values():
            for proto in pool:
                proto.abort()
            pool.clear()
        for outer in list(self.live):
            outer.reset()


def _clear(failures: dict[str, tuple[float, float]], ep_id: str) -> bool:
    """Whether `ep_id` is past its backoff in `failures` (peer id -> (skip until, last delay))."""
    failed = failures.get(ep_id)
    return failed is None or time.monotonic() >= failed[0]


def _back_off(failures: dict[str, tuple[float, float]], ep_id: str) -> float:
    """One more failure of `ep_id`: skip it for `FAIL_MIN` seconds, doubling each time up to `FAIL_MAX`; the delay."""
    _until, last = failures.get(ep_id, (0.0, 0.0))
    delay = min(FAIL_MAX, max(FAIL_MIN, last * 2))
    failures[ep_id] = (time.monotonic() + delay, delay)
    return delay


@functools.lru_cache(maxsize=64)
def _is_loopback(host: str) -> bool:
    """Whether the address literal `host` is a loopback address (ValueError if it is no address). Cached: asked at
    every connection an entrance opens (`p2p_blocker`), always about the same few addresses (issue 13/18)."""
    return ipaddress.ip_address(host).is_loopback


def _peer_checked(proto: DirectConn) -> PeerCert:
    assert proto.transport is not None
    return peer_of(proto.transport)


def _set_nodelay(transport: asyncio.BaseTransport | None) -> None:
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class DirectServer:
    """The agent's direct listener, shared by its meshes (SNI `MESH_ID.ztm` picks the mesh's context)."""

    def __init__(self, sessions: Callable[[], Iterable[MeshSession]]) -> None:
        self._sessions = sessions
        self.server: asyncio.AbstractServer | None = None
        self.handshake_failures = 0

    def _session(self, mesh_id: str) -> MeshSession | None:
        return next((s for s in self._sessions() if s.record.mesh_id == mesh_id), None)

    async def start(self, address: Address) -> None:
        base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        base.minimum_version = ssl.TLSVersion.TLSv1_3
        # OpenSSL keeps the verify mode and flags of the context a connection started with, even after the SNI
        # callback switched it to the mesh's context (whose certificate and CA store are used): set them here too.
        base.verify_mode = ssl.CERT_REQUIRED
        base.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        base.sni_callback = self._sni
        # No TLS 1.3 session tickets: nobody resumes (a channel is reused instead of re-handshaken), and the two
        # tickets a server sends by default cost handshake CPU on both sides and ~2.5 KB of OpenSSL memory on each
        # side for as long as the channel lives (bench/RESULTS.md, "Direct path"). A connection takes this from the
        # context it started with, not from the mesh's context the SNI callback switches to: set it here.
        base.num_tickets = 0
        fast_tls(base)  # the SSLObject's class comes from this context too
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            self._protocol, address.host, address.port, ssl=base, ssl_handshake_timeout=10.0
        )

    def _sni(self, sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
        mesh_id = (name or "").removesuffix(".ztm")
        session = self._session(mesh_id) if name and name.endswith(".ztm") else None
        context = session.direct.server_context() if session is not None else None
        if context is None:
            self.handshake_failures += 1
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        sslobj.context = context
        return None

    def _protocol(self) -> DirectConn:
        proto = DirectConn(server=True)
        proto.on_made = self._accepted
        return proto

    def _accepted(self, proto: DirectConn) -> None:
        """A handshaken channel: its mesh is the one whose CA verified the chain (the context SNI chose), and the
        certificate must name that mesh; one that names another mesh is refused and counted (`wrong_mesh`)."""
        assert proto.transport is not None
        sslobj = proto.transport.get_extra_info("ssl_object")
        context = sslobj.context if sslobj is not None else None
        session = self._session(context.mesh_id) if isinstance(context, MeshServerContext) else None
        if session is None:
            self.handshake_failures += 1
            proto.abort()
            return
        try:
            peer = peer_of(proto.transport)
        except ZtmError:
            proto.abort()
            return
        if peer.mesh_id != session.record.mesh_id:
            session.direct.counters["wrong_mesh"] += 1
            log.warning(
                "mesh %s: direct channel refused: a certificate verified by this mesh's CA claims mesh %s (%s of %s)",
                session.name,
                peer.mesh_id,
                peer.ep_id,
                peer.user,
            )
            proto.abort()
            return
        _set_nodelay(proto.transport)
        session.direct._adopt(proto, peer)
        spawn(session.direct.serve(proto, peer), name="direct-serve")

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
