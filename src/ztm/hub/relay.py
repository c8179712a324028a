"""The hub's stream relay: splices an app stream from one endpoint to another.

An entrance agent sends `CONNECT` with `:authority` = the target endpoint and `ztm-app` / `ztm-service` headers. The
hub pushes a `stream` event to the target; the target answers with its own `CONNECT` carrying `ztm-accept: ID`
(or `ztm-refuse: REASON`). The hub then answers 200 to both and copies bytes between the two streams. Flow control is
end to end: each stream's DATA is forwarded from the receive path (`Stream.set_sink`) while the other stream can
take it, and the sender is credited only once the other stream accepted the bytes, so a slow receiver slows the
sender and each direction holds at most one stream window here. Half-close travels through (`end()`), and a reset
on either side resets the other.

A `punch` call (app `calls`, service `punch`: NAT traversal, PROTOCOL.md section 13) is attested: the target's
`stream` event names the caller's address as this hub sees the caller's connection (`from.ip`), and the 200 to the
caller carries the target's, as its hub sees the target's session (`ztm-seen`). Across hubs, the caller's hub
sends its view in the forwarded `CONNECT`'s `ztm-seen` header and the target's hub its view in its 200; a hub takes
the header only from another hub of the mesh (never from an agent).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
from dataclasses import dataclass
from typing import Any

from ztm import h2, validate
from ztm.agent.punchmsg import SEEN_HEADER, normal_ip
from ztm.errors import BadInput, Conflict, Forbidden, NotFound, Timeout, Unavailable, ZtmError
from ztm.hub import limits
from ztm.hub.limits import PendingCounts
from ztm.hub.peers import ANSWER_MARGIN, CALLER_HEADER, HubPeers, Relayed, caller_from, caller_header
from ztm.hub.state import HubState, Peer, Session
from ztm.hub.store import EndpointRecord
from ztm.version import E2E_SINCE

log = logging.getLogger("ztm.hub")

ACCEPT_TIMEOUT = 5.0
FIRST_BYTES = 512
"""Bytes of a stream's first flight (an end-to-end RESUME and OPEN, or a HELLO: about 100) the hub hands the target
in the `stream` event, so the target decides without waiting for its accept to come back (PROTOCOL.md section 7)."""
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:-]{0,127}")
_APP = re.compile(r"[a-z][a-z0-9-]{0,31}")
ATTESTED = ("calls", "punch")
"""(app, service) of the streams whose ends learn each other's hub-seen address: the punch call
(`ztm.agent.peercall.CALLS_APP`)."""


@dataclass(frozen=True)
class Refusal:
    reason: str
    offline: bool = False

    def error(self) -> ZtmError:
        return Unavailable(self.reason) if self.offline else Forbidden(self.reason)


@dataclass
class Pending:
    target: str
    future: asyncio.Future[tuple[h2.Stream, asyncio.Future[None]] | Refusal]


def check_e2e(caller: str, target: str, target_name: str) -> None:
    """Both ends of a relayed stream must speak the same end-to-end layer (PROTOCOL.md section 11): an agent of an
    older release gets a refusal naming the release to upgrade to, instead of a stream that would hang."""
    if caller == target:
        return
    if not caller:
        raise Conflict(
            f"endpoint {target_name!r} accepts only end-to-end encrypted streams, which this agent's release cannot "
            f"make: upgrade it to ztm {E2E_SINCE} or later"
        )
    if not target:
        raise Conflict(
            f"endpoint {target_name!r} runs a ztm release without end-to-end encryption: upgrade it to ztm "
            f"{E2E_SINCE} or later"
        )
    raise Conflict(f"endpoint {target_name!r} speaks end-to-end layer version {target}, this agent {caller}")


def check_app(value: str | None) -> str:
    if value is None or not _APP.fullmatch(value):
        raise BadInput(f"invalid app name {value!r}: lowercase letters, digits and '-'")
    return value


def check_service(value: str | None) -> str:
    if value is None or not _SERVICE.fullmatch(value):
        raise BadInput(f"invalid service name {value!r}: 1-128 letters, digits and . _ / : -")
    return value


class Relay:
    def __init__(self, state: HubState, peers: HubPeers | None = None) -> None:
        self.state = state
        self.peers = peers
        """Links to the other hubs of a cluster: a stream to an endpoint whose session is there goes through."""
        self.pending: dict[str, Pending] = {}
        self.waiting = PendingCounts(
            "streams", limits.MAX_PENDING_STREAMS_PER_CALLER, limits.MAX_PENDING_STREAMS_PER_TARGET
        )
        """Streams waiting for their targets to accept, per caller and per target (a flood is refused, 503)."""
        self.active = 0
        state.offline_hooks.append(self._target_offline)

    def _target_offline(self, ep_id: str) -> None:
        for pending in self.pending.values():
            if pending.target == ep_id and not pending.future.done():
                pending.future.set_result(Refusal("the endpoint went offline before it accepted", offline=True))

    async def connect(self, stream: h2.Stream, peer: Peer) -> None:
        """An entrance asks for a stream to `:authority`; answer once the target accepted or refused.

        The entrance is `peer`'s endpoint, or, when `peer` is another hub of the cluster forwarding the stream, the
        caller that hub names (`ztm-caller`). A target whose session is on another hub is reached through it; a
        forwarded stream is never forwarded again."""
        forwarded = peer.hub_id is not None
        hub_id: str | None = None
        try:
            if forwarded:
                caller = await caller_from(stream.header(CALLER_HEADER), self.state)
            else:
                caller = self.state.require_ep(peer)
            app = check_app(stream.header("ztm-app"))
            service = check_service(stream.header("ztm-service"))
            target = self.state.find_endpoint(stream.authority or "")
            session = self.state.sessions.get(target.id)
            if session is None or session.closed:
                session = None
                hub_id = None if forwarded or self.peers is None else self.state.location(target.id)
                if hub_id is None:
                    where = "is not on this hub" if forwarded else "is offline"
                    raise Unavailable(f"endpoint {target.name!r} {where}")
            if target.id == caller.id:
                raise BadInput("an endpoint cannot open a stream to itself through the hub")
            self.state.watch(caller.id, target.id)  # each end hears of the other's changes (the ends on this hub)
            self.state.watch(target.id, caller.id)
            self.state.policy.first_line(caller, target, app)  # the mesh's policy, as a first line (the exit decides)
            if session is not None:
                check_e2e(stream.header("ztm-e2e") or "", session.e2e, target.name)
            seen: str | None = None
            attested = (app, service) == ATTESTED
            if attested:
                seen = normal_ip(stream.header(SEEN_HEADER) if forwarded else peer.address and peer.address[0])
            self.waiting.reserve(caller.id, target.id, target.name)
        except ZtmError as exc:
            self.state.counters["streams_refused"] += 1
            await _answer_error(stream, exc)
            return
        answer: list[tuple[str, str]] = []
        try:
            if session is None:
                assert hub_id is not None
                forwarded_to = await self._forward(stream, caller, target, app, service, hub_id, seen)
                if forwarded_to is None:
                    return
                other, target_seen = forwarded_to
                outcome: tuple[h2.Stream, asyncio.Future[None], bool] | Refusal | None = (
                    other, asyncio.get_running_loop().create_future(), False
                )  # fmt: skip
            else:
                outcome = await self._offer(session, stream, caller, target, app, service, seen)
                # Only an attested stream's caller learns the target's address (no address parsing for the others).
                target_seen = normal_ip(session.address and session.address[0]) if attested else None
            if attested and target_seen is not None:
                answer.append((SEEN_HEADER, target_seen))
        finally:
            self.waiting.release(caller.id, target.id)
        if outcome is None:
            return
        if isinstance(outcome, Refusal):
            self.state.counters["streams_refused"] += 1
            await _answer_error(stream, outcome.error())
            return
        other, done, first = outcome
        self.state.counters["streams"] += 1
        self.active += 1
        try:
            # A target that got the first flight in the event answers the opening (OK or REFUSE) without waiting
            # for the hub: both 200s go out with the first bytes for their side, one write less each (issue 13/18),
            # even when the target's accept arrived alone (its answer waits for the app, e.g. the target connect).
            await stream.respond(200, answer, hold=first)
            if session is not None:  # a forwarded stream (the hub link's) was answered by the far hub already
                await other.respond(200, hold=first)
            await splice(stream, other, self.state)
        except h2.H2Error:
            stream.reset()
            other.reset()
        finally:
            self.active -= 1
            if not done.done():
                done.set_result(None)

    async def _offer(
        self, session: Session, stream: h2.Stream, caller: EndpointRecord, target: EndpointRecord, app: str,
        service: str, seen: str | None,
    ) -> tuple[h2.Stream, asyncio.Future[None], bool] | Refusal | None:  # fmt: skip
        """Announce the stream to the target (with the caller's address as its hub saw it, `seen`, when attested)
        and wait for its answer: its stream, the future to set when the relay ended, and whether the event carried
        the first flight. None once the caller was answered (503 when the target's event queue has no room for
        peers' events, 504 when the target did not answer in time)."""
        stream_id = os.urandom(16).hex()  # as unguessable as uuid4's, without building a UUID (issue 13/18)
        pending = Pending(target.id, asyncio.get_running_loop().create_future())
        who: dict[str, str] = {"ep": caller.id, "name": caller.name, "user": caller.user}
        if seen is not None:
            who["ip"] = seen
        event: dict[str, Any] = {"type": "stream", "id": stream_id, "from": who, "app": app, "service": service}
        first = stream.take_buffered(FIRST_BYTES)
        if first:  # the opening's first flight, usually here already: the target starts on it before accepting
            event["first"] = base64.b64encode(first).decode()
            self.state.counters["streams_first_flight"] += 1
        if not session.offer(event):
            self.state.counters["streams_refused"] += 1
            await _answer_error(
                stream, Unavailable(f"endpoint {target.name!r} has too many events waiting to be read; try again later")
            )
            return None
        self.pending[stream_id] = pending
        try:
            async with asyncio.timeout(ACCEPT_TIMEOUT):  # a timer, not wait_for's extra future and callbacks
                answer = await pending.future
            return answer if isinstance(answer, Refusal) else (*answer, bool(first))
        except TimeoutError:
            self.state.counters["streams_refused"] += 1
            await _answer_error(stream, Timeout(f"endpoint {target.name!r} did not accept within {ACCEPT_TIMEOUT:g}s"))
            return None
        finally:
            self.pending.pop(stream_id, None)

    async def _forward(
        self, stream: h2.Stream, caller: EndpointRecord, target: EndpointRecord, app: str, service: str, hub_id: str,
        seen: str | None,
    ) -> tuple[h2.Stream, str | None] | None:  # fmt: skip
        """Open the stream at hub `hub_id`, which holds the target's session, and wait for its answer: the stream on
        the hub link once it answered 200, and the target's address as that hub attested it (attested streams); None
        once the entrance got the far hub's error (or ours). `seen`: the caller's address as this hub sees it."""
        assert self.peers is not None
        headers = [("ztm-app", app), ("ztm-service", service), (CALLER_HEADER, caller_header(caller))]
        if seen is not None:
            headers.append((SEEN_HEADER, seen))
        e2e = stream.header("ztm-e2e")
        if e2e is not None:
            headers.append(("ztm-e2e", e2e))
        other: h2.Stream | None = None
        try:
            # The first flight goes with the headers, so the far hub can hand it to the target in the `stream` event.
            other = await self.peers.open_connect(
                hub_id, target.id, headers, stream.take_buffered(FIRST_BYTES), lane=caller.user
            )
            async with asyncio.timeout(ACCEPT_TIMEOUT + ANSWER_MARGIN):
                status, answer = await other.response()
                if status == 200:
                    return other, normal_ip(dict(answer).get(SEEN_HEADER))
                raw = await other.read_all(64 * 1024)
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
            error: ZtmError = Relayed(status, body)
        except ZtmError as exc:
            error = exc
        except TimeoutError:
            error = Timeout(
                f"the hub of endpoint {target.name!r} did not answer within {ACCEPT_TIMEOUT + ANSWER_MARGIN:g}s"
            )
        except h2.H2Error as exc:
            error = Unavailable(f"the link to the hub of endpoint {target.name!r} failed: {exc}")
        if other is not None:
            other.reset()
        self.state.counters["streams_refused"] += 1
        await _answer_error(stream, error)
        return None

    async def accept(self, stream: h2.Stream, peer: Peer, stream_id: str) -> None:
        """The target's answer to a `stream` event: hand its stream to the waiting entrance, or refuse."""
        try:
            ep = self.state.require_ep(peer)
            pending = self.pending.get(stream_id)
            if pending is None or pending.future.done():
                raise NotFound("no such pending stream (it may have timed out)")
            if pending.target != ep.id:
                raise Forbidden("this stream was not addressed to you")
        except ZtmError as exc:
            await _answer_error(stream, exc)
            return
        reason = stream.header("ztm-refuse")
        if reason is not None:
            pending.future.set_result(Refusal(reason[:300] or "refused"))
            await stream.respond(204, end_stream=True)
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending.future.set_result((stream, done))
        await done


async def splice(a: h2.Stream, b: h2.Stream, state: HubState) -> None:
    """Copy both directions until both ended; a reset or lost connection on one side resets the other."""
    loop = asyncio.get_running_loop()
    ab = _Forward(a, b, state, loop.create_future())
    ba = _Forward(b, a, state, loop.create_future())
    try:
        a.set_sink(ab)
        b.set_sink(ba)
        await ab.done  # both directions, one after the other: no gather() future per stream
        await ba.done
    except BaseException:  # cancelled (the hub stops) or a bug: nobody copies any more
        ab.fail()
        ba.fail()
        raise


class _Forward:
    """The sink of `src`: DATA goes to `dst` from the receive path (no task switch) while `dst` can take it.

    When `dst`'s windows or transport cannot take a chunk, the rest is written by a task while `src`'s sink is
    paused: `src` is credited only once `dst` accepted the bytes, so each direction holds at most one window here.
    """

    __slots__ = ("_writer", "done", "dst", "src", "state")

    def __init__(self, src: h2.Stream, dst: h2.Stream, state: HubState, done: asyncio.Future[None]) -> None:
        self.src = src
        self.dst = dst
        self.state = state
        self.done = done
        self._writer: asyncio.Future[None] | None = None

    def stream_data(self, data: bytes) -> None:
        try:
            n = self.dst.write_nowait(data)
        except h2.H2Error:
            self.fail()
            return
        if n:
            self.state.counters["relayed_bytes"] += n
        if n < len(data):
            self.src.pause_sink()
            self._writer = asyncio.ensure_future(self._write_rest(memoryview(data)[n:].toreadonly()))

    async def _write_rest(self, rest: memoryview) -> None:
        try:
            await self.dst.write(rest)
        except h2.H2Error:
            self.fail()
            return
        self._writer = None
        self.state.counters["relayed_bytes"] += len(rest)
        self.src.resume_sink()

    def stream_end(self) -> None:
        try:
            self.dst.end_nowait()
        except h2.H2Error:
            self.fail()
            return
        if not self.done.done():
            self.done.set_result(None)

    def stream_error(self, exc: h2.H2Error) -> None:
        self.fail()

    def fail(self) -> None:
        """Reset both streams (which ends the other direction too); idempotent."""
        if self.done.done():
            return
        self.done.set_result(None)
        if self._writer is not None:
            self._writer.cancel()
        self.src.reset()
        self.dst.reset()


async def _answer_error(stream: h2.Stream, exc: ZtmError) -> None:
    with contextlib.suppress(h2.H2Error):
        await stream.respond(exc.status, [("content-type", "application/json")])
        await stream.write(json.dumps(exc.to_json()).encode(), end_stream=True)


def parse_services(body: dict[str, object]) -> tuple[str, list[str]]:
    app = check_app(validate.field(body, "app", str))
    services = [check_service(s) for s in validate.list_of(body.get("services"), str, "services")]
    if len(services) > 256:
        raise BadInput("at most 256 services per app")
    return app, services
