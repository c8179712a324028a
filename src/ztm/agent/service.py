"""`Agent`: the one owner of an agent's state. Joins and leaves meshes, holds the agent key, runs a `MeshSession`
per joined mesh, and answers the local API's questions (routes in agent/api.py call only this class).

A failed operation changes nothing: a join stores the mesh only once its endpoint is online at the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ztm import pki, validate
from ztm.addr import Address
from ztm.agent import peercall, punchmsg
from ztm.agent.applib import AppLibrary
from ztm.agent.apps import Caller, MeshApp
from ztm.agent.mesh import MeshSession, enroll
from ztm.agent.store import AgentStore, MeshRecord
from ztm.agent.tls import MeshFiles
from ztm.apps.net.options import NetOptions
from ztm.errors import Conflict, NotFound, PermitError, Unavailable, ZtmError, from_json
from ztm.h2.connection import CREDIT_WARN
from ztm.permit import Permit

A = TypeVar("A", bound=MeshApp)

log = logging.getLogger("ztm.agent")

JOIN_ONLINE_TIMEOUT = 10.0


class Agent:
    def __init__(self, data: Path, log_tail: Callable[[int], list[str]]) -> None:
        self.data = data
        self.log_tail = log_tail
        self.store = AgentStore(data / "ztm.db")
        self.store.lock()
        pem = self.store.get_meta("agent_key")
        if pem is None:
            pem = pki.key_to_pem(pki.new_key())
            self.store.set_meta("agent_key", pem)
        self.key = pki.key_from_pem(pem)
        self.library = AppLibrary(data, self.store)
        self.meshes: dict[str, MeshSession] = {}
        self.started = time.time()
        self._joining: set[str] = set()
        self.direct_address: Address | None = None
        """Where this agent accepts direct channels (`--direct`), announced to every mesh; None: off."""
        self.p2p = True
        """Punch direct channels to peers behind NAT (`--no-p2p`: off)."""
        self.p2p_keepalive = 5.0
        self.birthday = punchmsg.Birthday(0)
        """The birthday budget of all meshes (`--p2p-birthday`, `--p2p-birthday-every`; off until `run_agent` sets
        it)."""
        self.credit_warn = CREDIT_WARN
        """`--credit-warn`: seconds a stream through the hub waits for credit before the agent warns."""
        self.net = NetOptions()
        """Network mode (`--tun`, `--tun-name`, `--accept-routes`, `--dns-suffix`), for every mesh's `net` app."""
        self.zone = ""
        """This agent's zone (`--zone`): it prefers the online hubs of that zone (`ztm.agent.hubpick`); "" none."""

    def start(self) -> None:
        for record in self.store.meshes():
            try:
                session = self._session(record)
            except ZtmError as exc:
                log.error("mesh %s cannot start: %s", record.name, exc.message)
                continue
            self.meshes[record.name] = session
            session.start()
            log.info("mesh %s: reconnecting as %s", record.name, record.ep_name)

    async def stop(self) -> None:
        for session in list(self.meshes.values()):
            await session.stop()
        self.store.close()

    def _session(self, record: MeshRecord) -> MeshSession:
        session = MeshSession(
            record,
            self._files(record.name),
            self.key,
            save=self.store.save_mesh,
            log_tail=self.log_tail,
            make_apps=self._apps,
            saved_hubs=self.store.hubs(record.name),
            save_hubs=self.store.save_hubs,
            zone=self.zone,
            saved_policy=self.store.policy(record.name),
            save_policy=self.store.save_policy,
        )
        session.direct.announce = self.direct_address
        session.direct.p2p = self.p2p
        session.direct.keepalive = self.p2p_keepalive
        session.direct.birthday = self.birthday
        session.link.credit_warn = self.credit_warn
        session.net = self.net
        return session

    def _apps(self, session: MeshSession) -> dict[str, MeshApp]:
        return self.library.make_apps(session)

    def _files(self, mesh: str) -> MeshFiles:
        return MeshFiles(self.data / "meshes" / mesh)

    def identity(self) -> str:
        return pki.public_key_to_pem(self.key.public_key())

    def get(self, mesh: str) -> MeshSession:
        session = self.meshes.get(mesh)
        if session is None:
            joined = ", ".join(sorted(self.meshes)) or "none"
            raise NotFound(f"no mesh named {mesh!r} is joined here (joined: {joined}); see `ztm get mesh`")
        return session

    def app(self, mesh: str, name: str, kind: type[A], *, running: bool) -> A:
        """The built-in app `name` (of class `kind`) in `mesh`, for its REST routes; NotFound if it is not there, or,
        with `running`, if it is stopped."""
        found = self.get(mesh).apps.get(name)
        if not isinstance(found, kind) or (running and not found.running):
            raise NotFound(f"the {name} app is not running in this mesh")
        return found

    async def join(self, mesh: str, ep_name: str, permit_data: object, labels: list[str]) -> dict[str, Any]:
        validate.name(mesh, "mesh name")
        validate.endpoint_name(ep_name)
        if mesh in self.meshes or mesh in self._joining:
            current = self.meshes.get(mesh)
            who = f" as {current.record.ep_name}" if current else ""
            raise Conflict(f"mesh {mesh!r} is already joined{who}; leave it first with `ztm leave {mesh}`")
        permit = Permit.parse(permit_data if isinstance(permit_data, (dict, str)) else json.dumps(permit_data))
        for other in self.meshes.values():
            if other.record.mesh_id == permit.mesh_id:
                raise Conflict(
                    f"this agent is already in that mesh as {other.name!r} (one endpoint per mesh); "
                    f"leave it first with `ztm leave {other.name}`"
                )
        user_key = permit.private_key or self.key
        if permit.private_key is None and not pki.same_public_key(
            pki.cert_public_key(permit.certificate), self.key.public_key()
        ):
            raise PermitError(
                "this permit was issued for another agent's identity: ask root to invite you with the output of "
                "`ztm identity` run on this machine"
            )
        self._joining.add(mesh)
        files = self._files(mesh)
        try:
            files.write(
                ca=pki.cert_to_pem(permit.ca),
                user_cert=pki.cert_to_pem(permit.certificate),
                user_key=pki.key_to_pem(user_key),
                ep_cert=None,
                agent_key=pki.key_to_pem(self.key),
            )
            ep_id = str(uuid.uuid4())
            answer = await enroll(permit, files, self.key, ep_id=ep_id, name=ep_name, labels=labels)
            files.write_ep_cert(answer["certificate"])
            record = MeshRecord(
                name=mesh,
                mesh_id=permit.mesh_id,
                ep_id=ep_id,
                ep_name=ep_name,
                user=permit.user,
                permit=permit.to_json(),
                ep_cert=answer["certificate"],
                labels=labels,
            )
            session = self._session(record)
            session.start()
            try:
                await asyncio.wait_for(session.link.online.wait(), JOIN_ONLINE_TIMEOUT)
            except TimeoutError:
                error = session.link.error or "no event stream"
                await session.stop()
                raise Unavailable(f"enrolled, but the endpoint did not come online: {error}") from None
            self.store.save_mesh(record)
            self.meshes[mesh] = session
        except BaseException:
            files.remove()
            raise
        finally:
            self._joining.discard(mesh)
        log.info("joined mesh %s as %s (%s, user %s)", mesh, ep_name, ep_id, permit.user)
        return session.view()

    async def leave(self, mesh: str) -> None:
        session = self.get(mesh)
        await session.stop()
        self.store.delete_mesh(mesh)
        del self.meshes[mesh]
        self._files(mesh).remove()
        log.info("left mesh %s", mesh)

    # questions answered through the hub
    async def endpoints(self, mesh: str) -> list[dict[str, Any]]:
        session = self.get(mesh)
        eps = await session.link.request("GET", "/api/endpoints")
        if not isinstance(eps, list):
            raise Unavailable("the hub answered the endpoint list with something else")
        paths = session.direct.paths()
        for ep in eps:
            if isinstance(ep, dict):
                ep["is_local"] = ep.get("id") == session.record.ep_id
                _path_of(ep, paths, session)
        return [ep for ep in eps if isinstance(ep, dict)]

    async def endpoint(self, mesh: str, ref: str) -> dict[str, Any]:
        session = self.get(mesh)
        ep = await session.link.request("GET", f"/api/endpoints/{_ref(ref)}")
        if not isinstance(ep, dict):
            raise Unavailable("the hub answered with something else than an endpoint")
        ep["is_local"] = ep.get("id") == session.record.ep_id
        _path_of(ep, session.direct.paths(), session)
        return ep

    async def call(self, mesh: str, ref: str, method: str, params: Any = None, timeout: int = 10) -> Any:
        """Call `method` on endpoint `ref` (id or name) over an end-to-end stream (`ztm.agent.peercall`)."""
        session = self.get(mesh)
        ep_id = ref if pki.is_valid_ep_id(ref) else str((await self.endpoint(mesh, ref))["id"])
        if ep_id == session.record.ep_id:
            me = Caller(ep_id, session.record.ep_name, session.record.user)
            return await session.dispatch(method, params, me)
        return await peercall.call(session, ep_id, method, params, timeout)

    async def ping_call(self, mesh: str, ref: str, method: str, timeout: int = 10) -> Any:
        """A call answered through the hub's `call` events (only `ping`: it measures the hub's path)."""
        session = self.get(mesh)
        answer = await session.link.request(
            "POST",
            f"/api/endpoints/{_ref(ref)}/call",
            {"method": method, "params": None, "timeout": timeout},
            timeout=timeout + 2,
        )
        if isinstance(answer, dict) and "error" in answer:
            raise from_json(400, answer)
        if not isinstance(answer, dict) or "result" not in answer:
            raise Unavailable("the endpoint answered with something unexpected")
        return answer["result"]

    async def ping(self, mesh: str, ref: str, count: int) -> dict[str, Any]:
        ep = await self.endpoint(mesh, ref)
        rtts = []
        for _ in range(count):
            start = time.perf_counter()
            await self.ping_call(mesh, ep["id"], "ping", timeout=5)
            rtts.append(round((time.perf_counter() - start) * 1000, 3))
        return {"ep": ep["id"], "name": ep["name"], "rtt_ms": rtts}

    async def hub_call(self, mesh: str, method: str, path: str, body: Any = None) -> Any:
        return await self.get(mesh).link.request(method, path, body)

    def stats(self, mesh: str, rates: Callable[[str, int, int], tuple[float, float]]) -> list[dict[str, Any]]:
        session = self.get(mesh)
        link = session.link
        conn = link.conn
        sent = link.bytes_sent + (conn.bytes_sent if conn else 0)
        received = link.bytes_received + (conn.bytes_received if conn else 0)
        send_rate, receive_rate = rates(f"{mesh}/hub", sent, received)
        peers = []
        for ep_id, traffic in sorted(session.traffic.items(), key=lambda kv: kv[1].name):
            peer_send, peer_receive = rates(f"{mesh}/{ep_id}", traffic.sent, traffic.received)
            peers.append(
                {
                    "ep_id": ep_id,
                    "ep_name": traffic.name,
                    "bytes_sent": traffic.sent,
                    "bytes_received": traffic.received,
                    "send_rate": peer_send,
                    "receive_rate": peer_receive,
                    "streams": traffic.streams,
                    "encryption": traffic.protection,
                }
            )
        return [
            {
                "ep_id": "hub",
                "ep_name": link.address or "hub",
                "bytes_sent": sent,
                "bytes_received": received,
                "send_rate": send_rate,
                "receive_rate": receive_rate,
                "streams": 1 if conn is not None and not conn.closed else 0,
                "encryption": "TLS 1.3 to the hub",
            },
            *peers,
        ]

    async def close_quietly(self) -> None:
        with contextlib.suppress(Exception):
            await self.stop()


def _ref(ref: str) -> str:
    """An endpoint id or name, checked before it goes into a hub path."""
    try:
        return validate.ep_id(ref)
    except ZtmError:
        return validate.name(ref, "endpoint name")


def _path_of(ep: dict[str, Any], paths: dict[str, dict[str, object]], session: MeshSession) -> None:
    """How this endpoint's streams reach `ep` now: `path` (`direct`, `lan`, `punched`: a direct channel is up;
    `relay`: through the hub, `path_via` names it; None for this endpoint itself) and the direct channel's TCP
    round-trip time `path_rtt_ms`."""
    if ep["is_local"]:
        ep.update(path=None, path_via=None, path_rtt_ms=None)
        return
    found = paths.get(str(ep.get("id")))
    if found is not None:
        ep.update(path=found["path"], path_via=None, path_rtt_ms=found["rtt_ms"])
    else:
        ep.update(path="relay", path_via=session.link.hub_id or session.link.address, path_rtt_ms=None)
