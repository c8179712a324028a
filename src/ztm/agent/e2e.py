"""End-to-end sessions of one mesh: who we are to peers, the sessions we hold, and opening/answering app streams.

Every app stream between two endpoints is sealed end to end (`ztm.e2e`, PROTOCOL.md section 11): the hub relays
ciphertext and cannot tell, change or fake what it carries. `MeshE2E` runs the I/O around the sans-IO layer:

- the initiator side (`open`): on the outer stream the hub opened to the peer, either RESUME an existing session
  with that peer (no round trip: the OPEN record follows at once) or make a new one (HELLO, HELLO_R, AUTH: one round
  trip more); concurrent openers to the same peer wait for one handshake instead of making one each. The peer must
  prove it is the endpoint we asked for (its certificate's endpoint id).
- the responder side (`respond`): the first frame is a HELLO (new session) or a RESUME (known session, a stream
  number not used before); an unknown or expired session is answered UNKNOWN and the initiator makes a new one on
  the same stream. The caller is whoever the certificate in the handshake says, whatever the hub's `stream` event
  claimed; a difference is logged and counted (`caller_mismatch`).

Trust is the mesh's: the mesh CA (from the permit), our endpoint certificate and key, and the hub's CRL (installed by
`ztm.agent.direct.MeshDirect.apply_crl`, which calls `revoke` here so sessions and streams of a revoked peer end).
Until the first CRL arrived after a (re)connection, handshakes wait for it (`CRL_WAIT`) rather than trust a peer
blindly. Counters (`counters`): handshakes by role, streams by role, failures by reason, caller mismatches, all on
the agent's `/api/metrics`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ztm import h2, pki
from ztm.agent.apps import Caller
from ztm.agent.e2estream import E2EStream, E2EStreamError, Outer
from ztm.agent.early import EarlyData
from ztm.agent.punchmsg import normal_ip
from ztm.e2e import Credentials, E2EError, Initiator, Peer, Responder, Session
from ztm.e2e.frames import (
    AUTH,
    ERROR,
    HELLO,
    HELLO_R,
    RECORD,
    RESUME,
    UNKNOWN,
    FrameReader,
    encode,
    error_frame,
    parse_resume,
    resume_frame,
)
from ztm.e2e.record import OK, OPEN, REFUSE, Channel
from ztm.e2e.store import SessionStore

if TYPE_CHECKING:
    from ztm.agent.mesh import MeshSession

log = logging.getLogger("ztm.agent.e2e")

HANDSHAKE_TIMEOUT = 6.0
"""Seconds for a handshake (or resume) and the peer's answer to OPEN."""
CRL_WAIT = 5.0
"""Seconds a handshake waits for the first CRL from the hub after a (re)connection."""


class MeshE2E:
    """End-to-end sessions and streams of one mesh session (see the module docstring)."""

    def __init__(
        self,
        name: str,
        mesh_id: str,
        ca_cert: x509.Certificate,
        key: ec.EllipticCurvePrivateKey,
        ep_cert: Callable[[], str],
        peer_name: Callable[[str], str | None] = lambda _ep: None,
    ) -> None:
        self.name = name
        self._mesh_id = mesh_id
        self._ca_cert = ca_cert
        self._key = key
        self._ep_cert = ep_cert
        """Our current endpoint certificate (PEM): renewals show up at the next handshake."""
        self._peer_name = peer_name
        """An endpoint's name as the hub lists it (for callers the hub misnamed)."""
        self.counters: collections.Counter[str] = collections.Counter()
        self.crl_ready = asyncio.Event()
        self._revoked: frozenset[int] = frozenset()
        self._creds: tuple[str, Credentials] | None = None
        self._outgoing: dict[str, Session] = {}
        """Peer endpoint id -> the session we initiated with it (the one new streams resume)."""
        self._handshakes: dict[str, asyncio.Future[Session]] = {}
        self._incoming = SessionStore()
        """Sessions peers initiated with us, by id (bounded per peer and in all)."""
        self.pending: dict[str, E2EStream] = {}
        """Accepted-but-undecided streams by the id apps use with `AppContext.accept`/`refuse`."""
        self._live: weakref.WeakSet[E2EStream] = weakref.WeakSet()

    # ---- trust -----------------------------------------------------------------------------------------------------

    @classmethod
    def of(cls, session: MeshSession) -> MeshE2E:
        """The end-to-end layer of a mesh session: its CA, key, current certificate, and peers' names."""

        def peer_name(ep_id: str) -> str | None:
            known = session.peers.get(ep_id)
            return str(known["name"]) if known and known.get("name") else None

        return cls(
            session.name, session.record.mesh_id, session.permit.ca, session.key, lambda: session.record.ep_cert,
            peer_name,
        )  # fmt: skip

    def credentials(self) -> Credentials:
        pem = self._ep_cert()
        if self._creds is None or self._creds[0] != pem:
            creds = Credentials(
                mesh_id=self._mesh_id,
                ca_cert=self._ca_cert,
                cert=pki.cert_from_pem(pem),
                key=self._key,
                revoked=self._is_revoked,
            )
            self._creds = (pem, creds)
        return self._creds[1]

    def _is_revoked(self, serial: int) -> bool:
        return serial in self._revoked

    def revoke(self, revoked: frozenset[int]) -> None:
        """A new CRL: drop sessions with revoked peers and reset their live streams."""
        self._revoked = revoked
        self.crl_ready.set()
        self._incoming.drop_revoked(revoked)
        for peer_ep in [k for k, s in self._outgoing.items() if s.peer.serial in revoked]:
            self._outgoing.pop(peer_ep).close()
        for stream in [s for s in self._live if s.peer.serial in revoked]:
            log.info("mesh %s: e2e stream with %s closed: its certificate was revoked", self.name, stream.peer.ep_id)
            stream.reset()

    async def _await_crl(self) -> None:
        if self.crl_ready.is_set():
            return
        try:
            await asyncio.wait_for(self.crl_ready.wait(), CRL_WAIT)
        except TimeoutError:
            raise E2EError("revoked", "no CRL from the hub yet: cannot tell whether the peer was revoked") from None

    # ---- counting ----------------------------------------------------------------------------------------------------

    def failed(self, reason: str, message: str, whom: str) -> None:
        self.counters[f"failures:{reason}"] += 1
        log.warning("mesh %s: e2e: %s: %s: %s", self.name, whom, reason, message)

    def _make_stream(self, outer: Outer, session: Session, channel: Channel) -> E2EStream:
        peer = session.peer

        def report(exc: E2EStreamError) -> None:
            self.failed(exc.reason, str(exc), f"stream with {peer.ep_id} (user {peer.user}) failed")

        stream = E2EStream(outer, channel, peer, suite=session.suite, session_id=session.id, on_failure=report)
        self._live.add(stream)
        return stream

    # ---- initiator ---------------------------------------------------------------------------------------------------

    def _usable(self, table_session: Session | None) -> bool:
        if table_session is None:
            return False
        now = dt.datetime.now(dt.UTC)
        return table_session.usable(time.monotonic(), now) and table_session.peer.serial not in self._revoked

    async def open(
        self,
        outer: Outer,
        peer_ep: str,
        app: str,
        service: str,
        answered: Callable[[], Awaitable[None]],
        early: EarlyData | None = None,
    ) -> E2EStream:
        """Make `outer` (a stream the hub is opening to `peer_ep`) an end-to-end stream for `app`/`service`.

        The first flight goes out before the hub's answer; `answered()` waits for that answer (raising the hub's
        refusal). `early`: the app's bytes so far, sent as DATA records right after the OPEN, and those that arrive
        before the answer as they come (`ztm.agent.early`); they stay in `early` for another attempt until it ends.
        Raises ZtmError if the peer refused, E2EError if the end-to-end checks failed (counted, logged)."""
        opened = False
        if early is not None:
            early.refused = False
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):  # no task per opening, unlike wait_for
                stream = await self._open(outer, peer_ep, app, service, answered, early)
            opened = True
            return stream
        except TimeoutError:
            outer.reset()
            self.failed("timeout", f"no answer within {HANDSHAKE_TIMEOUT:g}s", f"stream to {peer_ep}")
            raise E2EError("timeout", f"endpoint {peer_ep} did not answer within {HANDSHAKE_TIMEOUT:g}s") from None
        except E2EError as exc:
            outer.reset()
            self.failed(exc.reason, exc.message, f"stream to {peer_ep}")
            raise
        finally:
            if early is not None:
                early.detach()
                if early.sent:
                    self.counters["early_streams"] += 1
                    self.counters["early_bytes"] += early.sent
                    if not opened and not early.refused:
                        early.maybe_delivered = True  # not to another peer: this one's app may have them

    async def _open(
        self,
        outer: Outer,
        peer_ep: str,
        app: str,
        service: str,
        answered: Callable[[], Awaitable[None]],
        early: EarlyData | None,
    ) -> E2EStream:
        opening = json.dumps({"app": app, "service": service}).encode()
        reader = FrameReader()
        session = self._outgoing.get(peer_ep)
        if not self._usable(session) and peer_ep in self._handshakes:
            session = await asyncio.shield(self._handshakes[peer_ep])  # another opener is making one
        if session is not None and self._usable(session):
            stream_no = session.next_stream()
            channel = session.channel(stream_no)
            flight = resume_frame(session.id, stream_no) + channel.seal(OPEN, opening)
            await _first_flight(outer, flight + _early_records(early, channel), answered, early, channel)
            ftype, frame = await _read_frame(outer, reader)
            if ftype == RECORD:
                self.counters["resumed"] += 1
                return await self._opened(outer, session, channel, frame + reader.take_rest(), early)
            if early is not None:
                early.detach()  # sent again, sealed for the new session, after the handshake
            if ftype != UNKNOWN:
                raise _unexpected(ftype, frame, "UNKNOWN or a record")
            if self._outgoing.get(peer_ep) is session:
                del self._outgoing[peer_ep]
                session.close()
            self.counters["unknown_session"] += 1
            answered = _nothing
        session, auth = await self._handshake(outer, reader, peer_ep, answered)
        channel = session.channel(0)
        await outer.write(auth + channel.seal(OPEN, opening) + _early_records(early, channel))
        if early is not None:
            early.attach(outer, channel.seal)
        ftype, frame = await _read_frame(outer, reader)
        if ftype != RECORD:
            raise _unexpected(ftype, frame, "a record")
        return await self._opened(outer, session, channel, frame + reader.take_rest(), early)

    async def _handshake(
        self, outer: Outer, reader: FrameReader, peer_ep: str, answered: Callable[[], Awaitable[None]]
    ) -> tuple[Session, bytes]:
        """A new session with `peer_ep` on `outer`: (session, the AUTH frame to send)."""
        future: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
        self._handshakes[peer_ep] = future
        try:
            await self._await_crl()
            initiator = Initiator(self.credentials(), peer_ep)
            await _first_flight(outer, initiator.hello(), answered)
            ftype, frame = await _read_frame(outer, reader)
            if ftype != HELLO_R:
                raise _unexpected(ftype, frame, "HELLO_R")
            auth = initiator.on_hello_r(frame)
            session = initiator.session
            assert session is not None
            old = self._outgoing.get(peer_ep)
            self._outgoing[peer_ep] = session
            if old is not None:
                old.close()  # streams already open keep their keys; the secret goes
            self.counters["handshakes:initiator"] += 1
            future.set_result(session)
            return session, auth
        except BaseException as exc:
            future.set_exception(exc if isinstance(exc, Exception) else E2EError("timeout", "handshake cancelled"))
            future.exception()
            raise
        finally:
            if self._handshakes.get(peer_ep) is future:
                del self._handshakes[peer_ep]

    async def _opened(
        self, outer: Outer, session: Session, channel: Channel, received: bytes, early: EarlyData | None
    ) -> E2EStream:
        if early is not None:
            early.detach()  # the answer is here: the app sends the rest itself, after what was sealed already
        stream = self._make_stream(outer, session, channel)
        if early is not None:
            stream.bytes_sent = early.sent
        stream.start(received)
        inner, payload = await _first_record(stream, "before the peer answered")
        if inner == REFUSE:
            stream.reset()
            if early is not None:
                early.refused = True  # dropped unread by the peer: another peer may have them
            raise stream.refusal(payload)
        if inner != OK:
            stream.reset()
            raise E2EError("malformed", f"expected OK or REFUSE, got record type {inner}")
        self.counters["streams:initiator"] += 1
        return stream

    # ---- responder ---------------------------------------------------------------------------------------------------

    async def respond(self, outer: Outer, first: bytes = b"") -> tuple[E2EStream, str, str]:
        """Run the responder side on an accepted stream: (stream, app, service) once the initiator's OPEN arrived.

        E2EError (counted and logged by the caller's `failed`) if any check fails; an ERROR frame tells the peer
        why when no keys exist yet."""
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT):
                return await self._respond(outer, first)
        except TimeoutError:
            outer.reset()
            raise E2EError("timeout", f"the caller did not open within {HANDSHAKE_TIMEOUT:g}s") from None
        except E2EError as exc:
            if exc.reason not in ("integrity", "truncated"):
                with contextlib.suppress(h2.H2Error):
                    outer.write_nowait(error_frame(f"{exc.reason}: {exc.message}"))
                    outer.end_nowait()
            else:
                outer.reset()
            raise

    async def _respond(self, outer: Outer, first: bytes) -> tuple[E2EStream, str, str]:
        reader = FrameReader()
        if first:
            reader.feed(first)  # what the hub passed in the `stream` event; the rest follows on the stream
            self.counters["first_in_event"] += 1
        ftype, frame = await _read_frame(outer, reader)
        session: Session | None = None
        stream_no = 0
        if ftype == RESUME:
            session_id, stream_no = parse_resume(frame)
            found = self._incoming.resume(session_id, stream_no, time.monotonic(), dt.datetime.now(dt.UTC))
            if found is not None and found.peer.serial not in self._revoked:  # resume: E2EError("replay") if reused
                session = found
            else:
                self.counters["unknown_session"] += 1
                await outer.write(encode(UNKNOWN, b""))
                while ftype != HELLO:  # the records sealed for the unknown session are dropped
                    ftype, frame = await _read_frame(outer, reader)
                    if ftype not in (RECORD, HELLO):
                        raise _unexpected(ftype, frame, "HELLO")
        if session is None:
            if ftype != HELLO:
                raise _unexpected(ftype, frame, "HELLO or RESUME")
            await self._await_crl()
            responder = Responder(self.credentials())
            await outer.write(responder.on_hello(frame))
            ftype, frame = await _read_frame(outer, reader)
            if ftype != AUTH:
                raise _unexpected(ftype, frame, "AUTH")
            session = responder.on_auth(frame)
            stream_no = 0
            self._incoming.add(session)
            self.counters["handshakes:responder"] += 1
        stream = self._make_stream(outer, session, session.channel(stream_no))
        stream.start(reader.take_rest())
        inner, payload = await _first_record(stream, "before the opening")
        if inner != OPEN:
            raise E2EError("malformed", f"expected OPEN, got record type {inner}")
        stream.hold()  # early data after the OPEN waits, bounded by the window, until the app accepts
        app, service = _parse_open(payload)
        self.counters["streams:responder"] += 1
        return stream, app, service

    def decided(self, stream: E2EStream, *, accepted: bool) -> None:
        """Count the early data an opener sent before the app decided: delivered once accepted, dropped unread if
        refused."""
        held = stream.held_bytes
        if held:
            self.counters["early_held_bytes" if accepted else "early_dropped_bytes"] += held

    def caller(self, peer: Peer, claimed: object) -> Caller:
        """The caller as its certificate says; the hub's claim supplies only the name, if it names that endpoint."""
        data = claimed if isinstance(claimed, dict) else {}
        if data.get("ep") == peer.ep_id and data.get("user") == peer.user:
            return Caller(peer.ep_id, str(data.get("name", "")), peer.user, normal_ip(data.get("ip")))
        self.counters["caller_mismatch"] += 1
        log.warning(
            "mesh %s: e2e: the hub named %s (user %s) as the caller but the certificate is endpoint %s (user %s); "
            "acting on the certificate",
            self.name, data.get("name") or data.get("ep"), data.get("user"), peer.ep_id, peer.user,
        )  # fmt: skip
        return Caller(peer.ep_id, self._peer_name(peer.ep_id) or peer.ep_id, peer.user)


async def _first_record(stream: E2EStream, when: str) -> tuple[int, bytes]:
    """The stream's first control record (OPEN, OK or REFUSE); its failure as an E2EError with its reason."""
    try:
        return await stream.control()
    except E2EStreamError as exc:
        raise E2EError(exc.reason, str(exc)) from None
    except h2.H2Error as exc:
        raise E2EError("truncated", f"the stream failed {when}: {exc}") from None


async def _nothing() -> None:
    return None


def _early_records(early: EarlyData | None, channel: Channel) -> bytes:
    return b"" if early is None else early.first_records(channel.seal_data)


async def _first_flight(
    outer: Outer,
    data: bytes,
    answered: Callable[[], Awaitable[None]],
    early: EarlyData | None = None,
    channel: Channel | None = None,
) -> None:
    """Send the opening's first flight (before the hub answered), then wait for the hub's answer; early data that
    arrives meanwhile follows the flight as it comes (`channel`'s records). A hub that refused at once may have reset
    the stream under the write: its refusal is what the caller gets."""
    try:
        await outer.write(data)
    except h2.H2Error as exc:
        await answered()  # raises the hub's refusal if it sent one
        raise E2EError("truncated", f"the stream failed before the peer answered: {exc}") from None
    if early is not None and channel is not None:
        early.attach(outer, channel.seal)
    await answered()


async def _read_frame(outer: Outer, reader: FrameReader) -> tuple[int, bytes]:
    while (frame := reader.next()) is None:
        try:
            chunk = await outer.read()
        except h2.H2Error as exc:
            raise E2EError("truncated", f"the stream failed during the end-to-end opening: {exc}") from None
        if not chunk:
            raise E2EError("truncated", "the stream ended during the end-to-end opening")
        reader.feed(chunk)
    ftype, whole = frame
    if ftype == ERROR:
        text = whole[4:].decode("utf-8", "replace")
        raise E2EError("refused", f"the peer refused the end-to-end opening: {text}")
    return ftype, whole


def _unexpected(ftype: int, frame: bytes, wanted: str) -> E2EError:
    return E2EError("malformed", f"expected {wanted}, got frame type {ftype} ({len(frame)} bytes)")


def _parse_open(payload: bytes) -> tuple[str, str]:
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("app"), str) or not isinstance(body.get("service"), str):
        raise E2EError("malformed", 'the OPEN record is not {"app": ..., "service": ...}')
    return body["app"], body["service"]
