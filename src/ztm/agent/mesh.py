"""`MeshSession`: this agent as an endpoint of one mesh.

It enrols with the permit's user certificate to obtain a short-lived endpoint certificate, renews that certificate
at half-life (or enrols again if it expired while the agent was down), runs the `HubLink`, and answers calls the hub
relays from other endpoints (`ping`, `log`, `info`), deciding who may ask from the hub-asserted caller identity,
which the hub took from the caller's verified certificate. It keeps the mesh's hub list (from the `hello` and `hubs`
events, stored so that it outlives a restart) for the link's choice of hub and for `ztm get hub`. It keeps the mesh's
access policy (the `policy` event, which the hub sends before anything else on every session and again on each
change; stored too, so that a restarted agent whose hub is away enforces the last one it had) in its `PolicyGate`
(`ztm.agent.gate`), which every app asks at its exit, and the peers' endpoint names and labels the gate's subjects
come from (the hub's endpoint list at each connection, then its `endpoint` events).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from ztm import h2, pki
from ztm.addr import Address
from ztm.agent import hubpick, peercall
from ztm.agent.apps import Caller, MeshApp, accept_relayed, refuse_stream
from ztm.agent.direct import MeshDirect
from ztm.agent.e2e import MeshE2E
from ztm.agent.e2estream import E2EStream
from ztm.agent.gate import PolicyGate
from ztm.agent.hubpick import HubView
from ztm.agent.link import HubLink, dial, request
from ztm.agent.store import MeshRecord
from ztm.agent.tls import MeshFiles
from ztm.aio import spawn
from ztm.apps.net.options import NetOptions
from ztm.e2e import E2EError
from ztm.errors import Forbidden, NotFound, Unavailable, ZtmError
from ztm.hub import interest
from ztm.permit import Permit
from ztm.policy import AppTarget, Place, Policy, PolicyError, tags_of_labels
from ztm.timefmt import iso
from ztm.version import E2E_SINCE, __version__

log = logging.getLogger("ztm.agent")

OWN_CHECKS = frozenset({"tunnel", "proxy", "terminal", "files", "net"})
"""Apps that ask the policy gate themselves, with what is asked of them (`tunnel/tcp/NAME`, `proxy/HOST:PORT`,
`terminal`, `files/PATH`, `ip/tcp:22` per packet flow); a stream to any other app is checked here as `app/NAME`
before the app gets it."""
PEERS_WAIT = 2.0
"""Seconds a stream from an endpoint this session does not know yet waits for the hub's endpoint list (its name and
tags for the policy); without an answer the policy sees the caller's user only."""


async def enroll(
    permit: Permit,
    files: MeshFiles,
    key: ec.EllipticCurvePrivateKey,
    *,
    ep_id: str,
    name: str,
    labels: list[str],
    addresses: list[Address] | None = None,
) -> dict[str, Any]:
    """Ask a hub for an endpoint certificate, authenticating with the permit's user certificate (at `addresses`,
    default the permit's bootstraps)."""
    end = permit.certificate.not_valid_after_utc
    if end <= dt.datetime.now(dt.UTC):
        raise Forbidden(
            f"the invitation of user {permit.user!r} to this mesh expired at {iso(end.timestamp())}; "
            "ask root for a new permit (ztm invite), then ztm leave and ztm join with it"
        )
    conn, _hub = await dial(addresses or list(permit.bootstraps), permit.mesh_id, files.user_context())
    try:
        csr = pki.csr_to_pem(pki.make_csr(key, name=ep_id))
        body = {
            "ep_id": ep_id,
            "name": name,
            "csr": csr,
            "hostname": platform.node()[:255],
            "version": __version__,
            "labels": labels,
        }
        answer = await request(conn, "POST", "/api/enroll", body, timeout=10.0)
    finally:
        conn.close()
    if not isinstance(answer, dict) or not isinstance(answer.get("certificate"), str):
        raise ZtmError("the hub answered the enrolment without a certificate")
    pki.verify_issued_by(pki.cert_from_pem(answer["certificate"]), permit.ca, now=dt.datetime.now(dt.UTC))
    return answer


@dataclass
class Traffic:
    """Bytes and live streams exchanged with one peer endpoint, for `ztm stats`."""

    name: str
    sent: int = 0
    received: int = 0
    streams: int = 0
    protection: str = ""
    """How the latest stream with the peer was protected ("e2e SUITE" relayed, "e2e SUITE direct")."""


class MeshSession:
    def __init__(
        self,
        record: MeshRecord,
        files: MeshFiles,
        key: ec.EllipticCurvePrivateKey,
        *,
        save: Callable[[MeshRecord], None],
        log_tail: Callable[[int], list[str]],
        make_apps: Callable[[MeshSession], dict[str, MeshApp]] | None = None,
        saved_hubs: object = None,
        save_hubs: Callable[[str, list[dict[str, Any]]], None] | None = None,
        zone: str = "",
        saved_policy: tuple[int, str] | None = None,
        save_policy: Callable[[str, int, str], None] | None = None,
    ) -> None:
        self.record = record
        self.files = files
        self.key = key
        # Checked as of the join: a permit that expired since still names the mesh, and the link says it expired.
        self.permit = Permit.parse(record.permit, now=dt.datetime.fromtimestamp(record.joined_at, dt.UTC))
        self._save = save
        self._log_tail = log_tail
        self.peers: dict[str, dict[str, Any]] = {}
        """The mesh's endpoints by id, as the hub describes them (its list at each connection, then its events)."""
        self._peers_task: asyncio.Task[None] | None = None
        self._peers_fresh: set[str] = set()
        self._peers_stale = True
        """True until the hub's endpoint list was loaded on this connection (fetched only while a policy is set)."""
        self.labels: list[str] = list(record.labels)
        """This endpoint's labels as the hub last described it (its tags are the policy's place)."""
        self.me: dict[str, Any] = {}
        """This endpoint's own latest view at the hub (the `hello` event's `ep`, then its own `endpoint` events)."""
        self._want_peers = False
        self.peers_changed: list[Callable[[], None]] = []
        """Called (synchronously) whenever `peers` or `me` changed: an event, or the hub's list loaded."""
        self.net = NetOptions()
        """The agent's network-mode options (`--tun` ...), set by the agent before `start`; the `net` app reads them."""
        self.mesh_ranges: tuple[str | None, str | None] = (None, None)
        """The mesh's IPv4 range and IPv6 /48 as the hub's status last said (issue 17; None until a hello)."""
        self._save_policy = save_policy
        self.gate = PolicyGate(record.name, place=self.place, peer=self._peer_view)
        """The mesh's access policy, asked by every app at its exit (`ztm.agent.gate`)."""
        if saved_policy is not None:
            self._apply_policy(*saved_policy, save=False)
        self.traffic: dict[str, Traffic] = {}
        self._save_hubs = save_hubs
        self.hubs: list[HubView] = hubpick.parse_hubs(saved_hubs, self._bad_hub_list) or []
        """The mesh's hubs as they last told this agent (stored: it outlives restarts)."""
        self.link = HubLink(
            label=record.name,
            bootstraps=list(self.permit.bootstraps),
            mesh_id=record.mesh_id,
            context=files.ep_context,
            before_connect=self._ensure_cert,
            on_event=self._on_event,
            hubs=lambda: self.hubs,
            zone=zone,
            events=self._events_wanted,
        )
        self._renewer: asyncio.Task[None] | None = None
        self._starting: set[str] = set()
        """Apps of this session's first start whose `start` has not returned: they are not told `on_online` yet (an
        app told before it has loaded its configuration would act on none of it)."""
        self._hello = False
        """A `hello` came since the session began: an app that finishes starting later is told `on_online` then."""
        self._cert_received = time.time()
        self.apps: dict[str, MeshApp] = make_apps(self) if make_apps else {}
        self.e2e = MeshE2E.of(self)
        """End-to-end sessions with peers of this mesh (`ztm.agent.e2e`); every relayed app stream is sealed."""
        self.direct = MeshDirect(self)
        """Direct channels to and from peers of this mesh (`ztm.agent.direct`)."""

    @property
    def name(self) -> str:
        return self.record.name

    def start(self) -> None:
        self._starting = set(self.apps)  # before the link can bring a hello
        self.link.start()
        self._renewer = spawn(self._renew_loop(), name=f"renew-{self.name}")
        spawn(self._start_apps(), name=f"apps-{self.name}")

    async def _start_apps(self) -> None:
        for name, app in list(self.apps.items()):
            try:
                await app.start()
            except Exception as exc:  # an app's failure (third-party code too) must not keep the others from starting
                log.error("mesh %s: app %s failed to start: %s: %s", self.name, app.name, type(exc).__name__, exc)
                continue
            finally:
                self._starting.discard(name)
            if self._hello:  # the hub's hello came while this app was starting: it missed that on_online
                spawn(app.on_online(), name=f"online-{self.name}-{app.name}")

    async def stop(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for app in list(self.apps.values()):
            try:
                await app.stop()
            except Exception as exc:  # an app's failure (third-party code too) must not keep the session running
                log.error("mesh %s: app %s failed to stop: %s: %s", self.name, app.name, type(exc).__name__, exc)
        self.direct.close()
        await self.link.stop()

    def traffic_of(self, ep_id: str, name: str) -> Traffic:
        traffic = self.traffic.get(ep_id)
        if traffic is None:
            traffic = self.traffic[ep_id] = Traffic(name)
        return traffic

    # certificates
    def cert_window(self) -> tuple[float, float]:
        """(start, end) of the endpoint certificate's useful life. The hub backdates `notBefore` for clock skew, so
        the start is when we received the certificate (or loaded it), which makes half-life a real half-life."""
        cert = pki.cert_from_pem(self.record.ep_cert)
        start = max(cert.not_valid_before_utc.timestamp(), self._cert_received)
        return start, cert.not_valid_after_utc.timestamp()

    async def _ensure_cert(self) -> None:
        """Before dialling: enrol again if the endpoint certificate expired (or nearly) while we were away."""
        start, end = self.cert_window()
        if time.time() < end - (end - start) * 0.1:
            return
        log.info("mesh %s: endpoint certificate expired or about to; enrolling again", self.name)
        listed = [a for hub in self.hubs for a in hub.addresses]
        answer = await enroll(
            self.permit,
            self.files,
            self.key,
            ep_id=self.record.ep_id,
            name=self.record.ep_name,
            labels=[],
            addresses=[*self.permit.bootstraps, *(a for a in listed if a not in self.permit.bootstraps)],
        )
        self._store_cert(answer["certificate"])

    def _store_cert(self, pem: str) -> None:
        self._cert_received = time.time()
        self.files.write_ep_cert(pem)
        self.record.ep_cert = pem
        self._save(self.record)

    async def _renew_loop(self) -> None:
        while True:
            start, end = self.cert_window()
            await asyncio.sleep(max(0.5, start + (end - start) / 2 - time.time()))
            try:
                csr = pki.csr_to_pem(pki.make_csr(self.key, name=self.record.ep_id))
                answer = await self.link.request("POST", "/api/renew", {"csr": csr})
                self._store_cert(answer["certificate"])
                log.info("mesh %s: renewed the endpoint certificate", self.name)
                self.link.renew_now()
            except Forbidden as exc:  # e.g. the invitation ends with this certificate: no use asking before it does
                log.warning("mesh %s: certificate renewal refused: %s", self.name, exc.message)
                await asyncio.sleep(max(30.0, end - time.time()))
            except (ZtmError, KeyError, TypeError) as exc:  # e.g. the hub restarting: try again before the end
                pause = min(30.0, max(0.5, (end - time.time()) / 4))
                log.warning("mesh %s: certificate renewal failed (%s); retrying in %.1f s", self.name, exc, pause)
                await asyncio.sleep(pause)

    # events and calls
    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "policy":
            self._policy_event(event)
        elif kind == "endpoint" and isinstance(event.get("ep"), dict):
            self._endpoint_event(event["ep"])
        elif kind == "unwatch" and isinstance(event.get("ep"), str):
            self._unwatched(event["ep"])
        elif kind == "call":
            spawn(self._answer(event), name=f"call-{self.name}")
        elif kind == "stream":
            spawn(self._stream(event), name=f"stream-{self.name}")
        elif kind == "crl":
            spawn(self.direct.on_crl(), name=f"crl-{self.name}")
        elif kind == "hubs":
            self._hub_list(event.get("hubs"))
        elif kind == "hello":
            hub = event.get("hub")
            if isinstance(hub, dict) and not self._hub_list(hub.get("hubs")):
                self._hub_itself(hub)
            if isinstance(hub, dict):
                ranges = hub.get("mesh_range"), hub.get("mesh_range6")
                self.mesh_ranges = (_str_or_none(ranges[0]), _str_or_none(ranges[1]))
            if isinstance(event.get("ep"), dict):
                self.me = event["ep"]
                self._own_labels(event["ep"].get("labels"))
                self._tell_peers_changed()
            self._peers_stale = True
            if self.link.events != interest.ALL and self.peers:
                # this session watches nothing yet: what `peers` holds would no longer be kept up to date
                self.peers.clear()
                self._tell_peers_changed()
            if self.gate.policy is not None or self._want_peers:
                self._refresh_peers()
            spawn(self.direct.on_online(), name=f"direct-{self.name}")
            self._hello = True
            for name, app in self.apps.items():
                if name not in self._starting:
                    spawn(app.on_online(), name=f"online-{self.name}-{app.name}")

    # the policy, and the endpoints it names
    def _policy_event(self, event: dict[str, Any]) -> None:
        version, text = event.get("version"), event.get("text")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0 or not isinstance(text, str):
            log.warning("mesh %s: ignored a policy event without a version number and a text", self.name)
            return
        self._apply_policy(version, text, save=True)
        if (self.gate.policy is not None or self._want_peers) and self._peers_stale:
            self._refresh_peers()

    def _apply_policy(self, version: int, text: str, *, save: bool) -> None:
        """Enforce policy `version` (0 or an empty text: none is set) from now on; what it no longer allows closes."""
        current = self.gate.policy
        if current is not None and current.version == version and current.text == text:
            return
        if current is None and (version == 0 or not text):
            return
        policy: Policy | None = None
        if version != 0 and text:
            try:
                policy = Policy.load(text, version)
            except PolicyError as exc:  # the hub checked it: a newer language? Refuse everything rather than guess
                log.error(
                    "mesh %s: policy version %d does not load here (%s); refusing everything until one does: upgrade "
                    "ztm on this endpoint",
                    self.name, version, exc.message,
                )  # fmt: skip
                policy = Policy.load("{}", version)
        closed = self.gate.set_policy(policy)
        log.info(
            "mesh %s: policy version %d in force%s", self.name, version,
            f"; closed {closed} connection(s) it no longer allows" if closed else "",
        )  # fmt: skip
        if save and self._save_policy is not None:
            try:
                self._save_policy(self.name, version, text if policy is not None else "")
            except Exception as exc:  # a full disk: the policy in memory still holds until the agent restarts
                log.warning("mesh %s: could not store the policy: %s", self.name, exc)

    def place(self) -> Place:
        """This endpoint as the policy sees it: its name and its labels' tags."""
        return Place(self.record.ep_name, tags_of_labels(self.labels))

    def _peer_view(self, ep_id: str) -> tuple[str, frozenset[str]] | None:
        ep = self.peers.get(ep_id)
        if ep is None or not isinstance(ep.get("name"), str):
            return None
        labels = ep.get("labels")
        return ep["name"], tags_of_labels(label for label in labels or () if isinstance(label, str))

    def _endpoint_event(self, ep: dict[str, Any]) -> None:
        ep_id = str(ep.get("id"))
        if ep_id == self.record.ep_id:
            self.me = ep
            self._own_labels(ep.get("labels"))
            self._tell_peers_changed()
            return
        before = self._peer_view(ep_id)
        self.peers[ep_id] = ep
        self._peers_fresh.add(ep_id)
        if before is not None and before != self._peer_view(ep_id):
            self.gate.recheck()  # renamed or relabelled: its live connections are checked again
        self._tell_peers_changed()

    def _events_wanted(self) -> str:
        """The `endpoint` events to ask for when the event stream opens (`ztm.hub.interest`): all of them while this
        agent keeps the whole list (a policy's gate needs callers' labels; network mode and DNS need every name),
        else only those about the peers it deals with."""
        return interest.ALL if self.gate.policy is not None or self._want_peers else interest.WATCHED

    def _unwatched(self, ep_id: str) -> None:
        """The hub stopped telling this session about `ep_id` (it watches too many others): forget the copy, which
        would go stale; it is looked up again when needed."""
        if self.link.events != interest.ALL and self.peers.pop(ep_id, None) is not None:
            self._tell_peers_changed()

    def want_peers(self) -> None:
        """Keep `peers` loaded for every endpoint even without a policy (network mode and DNS need their addresses):
        the hub's list at each connection, then its events."""
        if self._want_peers:
            return
        self._want_peers = True
        if self.link.status == "online":
            self._refresh_peers()

    def _tell_peers_changed(self) -> None:
        for listener in list(self.peers_changed):
            try:
                listener()
            except Exception as exc:  # an app's listener must not break the event stream
                log.error("mesh %s: a peers listener failed: %s: %s", self.name, type(exc).__name__, exc)

    def _own_labels(self, labels: object) -> None:
        if not isinstance(labels, list):
            return
        labels = [label for label in labels if isinstance(label, str)]
        if labels != self.labels:
            self.labels = labels
            self.gate.recheck()

    def _refresh_peers(self) -> asyncio.Task[None]:
        """Load the hub's endpoint list into `peers` (once at a time); `endpoint` events that arrive meanwhile are
        newer and kept."""
        task = self._peers_task
        if task is None or task.done():
            task = self._peers_task = spawn(self._load_peers(), name=f"peers-{self.name}")
        return task

    async def _widen_events(self) -> bool:
        """Have this connection's event stream carry every `endpoint` event (it opened asking for those of watched
        peers only: a policy came after the hello, or network mode started); False if the hub could not."""
        if self.link.events == interest.ALL:
            return True
        try:
            await self.link.request("POST", "/api/events/interest", {"events": interest.ALL})
        except NotFound:  # a hub of an earlier release: it sends every event anyway
            pass
        except ZtmError as exc:
            log.info("mesh %s: could not ask for every endpoint event: %s", self.name, exc.message)
            return False
        self.link.events = interest.ALL
        return True

    async def _load_peers(self) -> None:
        if not await self._widen_events():  # first: no event may fall between the list and the stream
            return
        self._peers_fresh.clear()
        try:
            found = await self.link.request("GET", "/api/endpoints")
        except ZtmError as exc:
            log.info("mesh %s: could not load the endpoint list: %s", self.name, exc.message)
            return
        if not isinstance(found, list):
            return
        self._peers_stale = False
        for ep in found:
            if isinstance(ep, dict) and isinstance(ep.get("id"), str):
                if ep["id"] == self.record.ep_id:
                    self._own_labels(ep.get("labels"))
                    if ep["id"] not in self._peers_fresh:
                        self.me = ep
                elif ep["id"] not in self._peers_fresh:
                    self.peers[ep["id"]] = ep
        self.gate.recheck()
        self._tell_peers_changed()

    async def _know(self, caller: Caller) -> None:
        """With a policy in force, wait (briefly) for the hub's endpoint list when it does not know the caller."""
        if self.gate.policy is None or caller.ep_id in self.peers or self.link.status != "online":
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._refresh_peers()), PEERS_WAIT)

    # the hub list
    def _bad_hub_list(self, problem: str) -> None:
        log.warning("mesh %s: the hub list: %s", self.name, problem)

    def _hub_list(self, value: object) -> bool:
        """A hub's list of the mesh's hubs (`hello` or `hubs` event): keep it, store it, let the link reconsider.
        False when there is none to keep: a hub on its own (no cluster) sends an empty list, older hubs none."""
        if value is None or value == []:
            return False
        hubs = hubpick.parse_hubs(value, self._bad_hub_list)
        if hubs is None:
            log.warning("mesh %s: ignored a hub list that is not a list", self.name)
            return False
        if not hubs:
            return False
        self._keep_hubs(hubs)
        return True

    def _hub_itself(self, status: dict[str, Any]) -> None:
        """A hub that sends no list (alone on its store, or older) describes only itself: update its entry."""
        hub_id = self.link.hub_id
        if hub_id is None:
            return
        addresses: list[str] = [a for a in status.get("names") or [] if isinstance(a, str)]
        if self.link.address is not None and not addresses:
            addresses.append(self.link.address)
        entry = {
            "id": hub_id,
            "zone": status.get("zone") if isinstance(status.get("zone"), str) else "",
            "addresses": addresses,
            "online": True,
            "endpoints": status.get("online"),
            "version": status.get("version"),
            "started": status.get("started"),
            "last_seen": iso(time.time()),
        }
        try:
            hub = hubpick.parse_hub(entry)
        except ValueError as exc:
            log.warning("mesh %s: ignored the hub's description of itself: %s", self.name, exc)
            return
        self._keep_hubs(hubpick.merge_one(self.hubs, hub))

    def _keep_hubs(self, hubs: list[HubView]) -> None:
        changed = hubs != self.hubs
        self.hubs = hubs
        if changed and self._save_hubs is not None:
            try:
                self._save_hubs(self.name, [h.to_json() for h in hubs])
            except Exception as exc:  # a full disk must not break the link: the list in memory still serves
                log.warning("mesh %s: could not store the hub list: %s", self.name, exc)
        self.link.reconsider()

    async def _stream(self, event: dict[str, Any]) -> None:
        """A peer asked (through the hub) for a stream to one of our apps: take it, run the end-to-end opening, and
        hand it to the app the sealed OPEN names, with the caller its certificate names (not the hub's claim)."""
        stream_id, app_name, service = event.get("id"), event.get("app"), event.get("service")
        if not isinstance(stream_id, str) or not isinstance(service, str):
            return
        app = self.apps.get(str(app_name))
        conn = self.link.conn
        if conn is None:
            return
        try:
            if app_name != peercall.CALLS_APP and (app is None or not app.running):
                await refuse_stream(conn, stream_id, f"app {app_name!r} is not running there")
                return
            first = _first_flight(event.get("first"))
            # With the first flight in the event, the opening goes on while the accept travels to the hub.
            outer = await accept_relayed(conn, stream_id, wait=not first)
        except (ZtmError, h2.H2Error, TimeoutError) as exc:
            log.info("mesh %s: stream %s for %s/%s failed: %s", self.name, stream_id, app_name, service, exc)
            return
        claimed = event.get("from")
        try:
            stream, app_name, service = await self.e2e.respond(outer, first)
        except E2EError as exc:
            who = claimed.get("name") if isinstance(claimed, dict) else None
            self.e2e.failed(exc.reason, exc.message, f"refused a stream from {who or 'an unknown caller'}")
            return
        await self.serve_stream(stream_id, stream, self.e2e.caller(stream.peer, claimed), app_name, service)

    async def serve_stream(
        self, stream_id: str, stream: E2EStream, caller: Caller, app_name: str, service: str
    ) -> None:
        """An end-to-end stream a peer opened, relayed or direct (`stream.path`), after its opening: hand it to the
        app its OPEN names (`on_stream`, then `AppContext.accept/refuse`), with the caller its certificate names."""
        if app_name == peercall.CALLS_APP:
            await peercall.serve(self, stream, caller, service)
            return
        app = self.apps.get(app_name)
        if app is None or not app.running:
            self.e2e.decided(stream, accepted=False)
            stream.refuse(NotFound(f"app {app_name!r} is not running there"))
            return
        await self._know(caller)
        untrack: Callable[[], None] | None = None
        if app_name not in OWN_CHECKS:
            what = AppTarget("app", app_name)
            try:
                self.gate.check(caller, what)
            except Forbidden as exc:
                self.e2e.decided(stream, accepted=False)
                stream.refuse(exc)
                return
            untrack = self.gate.track(caller, what, lambda _reason: stream.reset())
        self.e2e.pending[stream_id] = stream
        try:
            await app.on_stream(stream_id, caller, service)
        except (ZtmError, h2.H2Error, TimeoutError) as exc:
            log.info("mesh %s: stream %s for %s/%s failed: %s", self.name, stream_id, app_name, service, exc)
        finally:
            left = self.e2e.pending.pop(stream_id, None)
            if left is not None:
                self.e2e.decided(left, accepted=False)
                left.refuse(Unavailable(f"app {app_name} did not take the stream"))
            if untrack is not None and left is not None:  # never taken: nothing to watch
                untrack()
            elif untrack is not None:
                spawn(_untrack_at_end(stream, untrack), name=f"app-stream-{self.name}")

    async def _answer(self, event: dict[str, Any]) -> None:
        """A `call` event from the hub: only `ping`, which carries nothing and permits nothing, is answered this way;
        everything else comes over an end-to-end stream (`ztm.agent.peercall`), where the caller is proven."""
        call_id = event.get("id")
        if not isinstance(call_id, str):
            return
        method = str(event.get("method"))
        if method == "ping":
            result: dict[str, Any] = {"result": {"time": time.time()}}
        else:
            result = Forbidden(
                f"{method!r} is answered only over an end-to-end stream: upgrade the calling agent to ztm {E2E_SINCE}"
            ).to_json()
        with contextlib.suppress(ZtmError):
            await self.link.request("POST", f"/api/calls/{call_id}", result)

    async def dispatch(self, method: str, params: Any, caller: Caller) -> Any:
        """Run a call from `caller` (its identity proven by the end-to-end handshake)."""
        if method.startswith("app."):
            app_name, _, app_method = method[4:].partition(".")
            app = self.apps.get(app_name)
            if app is None:
                raise NotFound(f"app {app_name!r} is not installed on this endpoint")
            return await app.call(app_method, params, caller)
        if method == "ping":
            return {"time": time.time()}
        if method == "punch":
            return await self.direct.on_punch(params, caller)
        if method == "info":
            return {"version": __version__, "hostname": platform.node(), "python": platform.python_version()}
        if method == "log":
            if caller.user not in (self.record.user, "root"):
                raise Forbidden(f"only {self.record.user!r} (the owner) or root may read this endpoint's log")
            lines = params.get("lines", 100) if isinstance(params, dict) else 100
            lines = lines if isinstance(lines, int) and 0 < lines <= 2000 else 100
            return {"lines": self._log_tail(lines)}
        raise NotFound(f"endpoint does not answer {method!r}")

    # views
    def view(self) -> dict[str, Any]:
        _start, end = self.cert_window()
        link = self.link
        dns = getattr(self.apps.get("net"), "dns", None)  # the net app's MeshDns (ztm.apps.net.dns)
        return {
            **(dns.mesh_fields() if dns is not None else {}),
            "name": self.name,
            "mesh_id": self.record.mesh_id,
            "ep_id": self.record.ep_id,
            "ep_name": self.record.ep_name,
            "user": self.record.user,
            "hubs": [str(a) for a in self.permit.bootstraps],
            "status": link.status,
            "error": link.error,
            "joined_at": iso(self.record.joined_at),
            "connected_since": iso(link.since) if link.status == "online" else None,
            "cert_expires": iso(end),
            "zone": link.zone,
            "mesh_range": self.mesh_ranges[0],
            "mesh_range6": self.mesh_ranges[1],
        }

    async def hub_views(self) -> list[dict[str, Any]]:
        """Every hub of the mesh (the stored list; the permit's bootstraps while none is known), the one this agent
        is connected to marked `connected`, with its live RTT (an HTTP/2 PING) and traffic."""
        link = self.link
        rtt: float | None = None
        conn = link.conn
        if conn is not None and not conn.closed:
            with contextlib.suppress(Exception):
                rtt = round(await conn.ping(timeout=2.0) * 1000, 3)
        sent = link.bytes_sent + (conn.bytes_sent if conn else 0)
        received = link.bytes_received + (conn.bytes_received if conn else 0)
        online = link.status == "online"
        views: list[dict[str, Any]] = []
        hubs = list(self.hubs)
        if link.hub_id is not None and all(h.id != link.hub_id for h in hubs) and link.address:
            with contextlib.suppress(ValueError):
                hubs.insert(0, hubpick.parse_hub({"id": link.hub_id, "addresses": [link.address], "online": online}))
        listed = {a for h in hubs for a in h.addresses}
        for hub in hubs:
            current = online and hub.id == link.hub_id
            connect = link.rtts.get(hub.id)
            view = hub.to_json()
            view.update(
                {
                    "hub_id": hub.id,
                    "address": link.address if current else str(hub.addresses[0]),
                    "connected": current,
                    "status": link.status if current else ("standby" if hub.online else "offline"),
                    "error": link.error if current else None,
                    "rtt_ms": rtt if current else None,
                    "connect_ms": None if connect is None else round(connect * 1000, 3),
                    "since": iso(link.since) if current and link.since else None,
                    "version": (link.hub.get("version") if current else None) or hub.version,
                    "bytes_sent": sent if current else 0,
                    "bytes_received": received if current else 0,
                }
            )
            views.append(view)
        for address in self.permit.bootstraps:
            if address not in listed:
                current = online and link.hub_id is None and link.address == str(address)
                views.append(
                    {
                        "id": None,
                        "hub_id": None,
                        "zone": "",
                        "addresses": [str(address)],
                        "online": None,
                        "endpoints": None,
                        "address": str(address),
                        "connected": current,
                        "status": link.status if current else "unknown",
                        "error": link.error if not online else None,
                        "rtt_ms": rtt if current else None,
                        "connect_ms": None,
                        "since": None,
                        "version": None,
                        "bytes_sent": sent if current else 0,
                        "bytes_received": received if current else 0,
                    }
                )
        return views


async def _untrack_at_end(stream: E2EStream, untrack: Callable[[], None]) -> None:
    """Stop watching an installed app's stream for the policy once it ended (the app may keep it after `on_stream`)."""
    try:
        await stream.wait_closed()
    finally:
        untrack()


def _str_or_none(value: object) -> str | None:
    return value[:64] if isinstance(value, str) else None


def _first_flight(value: object) -> bytes:
    """The opening's first bytes the hub passed in a `stream` event (base64, at most 512 bytes); b"" if none."""
    if not isinstance(value, str) or len(value) > 1024:
        return b""
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return b""
