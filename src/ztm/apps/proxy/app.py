"""`ProxyApp`: configuration, routing to exits, and the exit side of proxied connections.

Entrance: with a listen address, the endpoint serves SOCKS5 and HTTP proxy clients on it (`entrance.py`); each
connection (or each UDP destination of a SOCKS association) becomes one stream, service `tcp/HOST/PORT` or
`udp/HOST/PORT`, to an exit whose published targets match the destination (`open_to_exit`) among the exits it may
use (`ztm.apps.exits`: its own user's and root's, those of `exit_users`, or exactly the endpoints of `exits`, resolved
to ids when configured).
Exit: with targets, the endpoint publishes them (`target/KIND/VALUE`, `exclusion/KIND/VALUE`); for each stream it
checks the destination as the client asked for it against the mesh's policy (`proxy/HOST:PORT`, `ztm.agent.gate`),
its targets and exclusions and its rules (for the caller's user, from the certificate), resolves names, connects,
and only then accepts (each live connection or UDP destination tracked by the policy gate, which resets it when a
new policy no longer allows it); otherwise it refuses with `CODE: reason`,
which the entrance turns into a SOCKS5 reply code or an HTTP status. Configuration lives in the agent database.

Credentials (`set_auth`): the entrance then requires SOCKS5 username/password (RFC 1929) or HTTP `Proxy-Authorization:
Basic`; the password is kept as an scrypt hash (`spec.ProxyAuth`), checked off the event loop, and a successful check
is remembered (as an HMAC under a per-process key) so that a client's next connections cost no scrypt.

Direct path: like the tunnel app, every connection (SOCKS5 CONNECT, HTTP CONNECT and forwarding, and each
destination of a SOCKS5 UDP ASSOCIATE) goes over a direct channel (`ztm.agent.direct`) when the chosen exit has
one (`ztm.agent.apps.open_direct_first` decides), else through the hub; the exit applies the same checks with the
caller from the channel's verified certificate. Both sides count connections per path (`paths` in the view,
`ztm.apps.paths`).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import ipaddress
import logging
import secrets
import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from ztm import epref, h2, validate
from ztm.addr import Address
from ztm.agent import optin
from ztm.agent.apps import AppContext, Caller, MeshApp
from ztm.agent.e2estream import E2EStream
from ztm.agent.early import EarlyData
from ztm.apps import paths
from ztm.apps.exits import ROOT, ExitPolicy, check_choice
from ztm.apps.proxy import spec
from ztm.apps.proxy.spec import Credentials, Destination, ProxyAuth, Refused, Rule, TargetSet
from ztm.apps.tunnel.app import UDP_QUEUE, counted_splice, serve_udp_flow
from ztm.apps.tunnel.pipe import reset_socket
from ztm.errors import BadInput, Conflict, Forbidden, NotFound, Timeout, ZtmError
from ztm.policy import AppTarget

log = logging.getLogger("ztm.proxy")

EXITS_TTL = 1.0
RESOLVE_TIMEOUT = 2.0
NAMED_TTL = 30.0
"""Seconds the exit keeps the addresses of a deny rule's name before it resolves the name again."""
CONNECT_BUDGET = 3.5
"""Seconds an exit may spend resolving and connecting: the hub gives it 5 s to accept a stream."""
MAX_PINS = 64
"""Endpoints in `exits`, and users in `exit_users`, each."""
AUTH_CACHE = 256
"""Credentials remembered as verified (HMACs), until the credentials change or the agent restarts."""
AUTH_CHECKS = 2
"""scrypt checks running at a time (each takes about 16 MiB and tens of milliseconds)."""
DEFAULT_MESH_RANGE = "100.64.0.0/10"
"""The mesh's IPv4 range until the hub announced it (`ztm.hub.meshaddr.DEFAULT_RANGE`)."""


@dataclass(frozen=True)
class Exit:
    ep: str
    name: str
    targets: TargetSet
    direct: str | None = None
    """Where the exit takes direct channels (`--direct`), if it announces it."""
    user: str = ""
    """The exit endpoint's user, as the hub enrolled it from its certificate."""


class ProxyApp(MeshApp):
    name = "proxy"
    description = "SOCKS5 and HTTP proxy through exits of the mesh"

    def __init__(self, ctx: AppContext) -> None:
        super().__init__(ctx)
        self.listen: Address | None = None
        self.server: asyncio.AbstractServer | None = None
        self.targets = TargetSet()
        self.rules: tuple[Rule, ...] = ()
        self.auth: ProxyAuth | None = None
        self.exit_pins: tuple[str, ...] = ()
        """`exits`: the only exit endpoints (ids) this entrance uses, of any user."""
        self.exit_users: tuple[str, ...] = ()
        """Users whose exits this entrance uses besides its own user's and root's."""
        self._names: dict[str, str] = {}
        """Endpoint id -> name, for showing `exit_pins`."""
        self._auth_key = secrets.token_bytes(32)
        self._verified: dict[bytes, None] = {}
        self._auth_checks = asyncio.Semaphore(AUTH_CHECKS)
        self._rr: Counter[str] = Counter()
        self._exits_cache: tuple[float, list[Exit]] | None = None
        self._named_cache: dict[str, tuple[float, frozenset[spec.IP]]] = {}
        self._addresses_cache: tuple[float, dict[spec.IP, str]] | None = None
        """When, and mesh address -> endpoint id, from the hub's list (`endpoint_at`)."""
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        items = self.ctx.config_items()
        may_listen = True
        try:
            self.targets = TargetSet(
                spec.specs(validate.list_of(items.get("targets"), str, "targets"), "target"),
                spec.specs(validate.list_of(items.get("exclusions"), str, "exclusions"), "exclusion"),
            )
            self.rules = spec.parse_rules(items.get("rules"))
        except ZtmError as exc:
            log.error("mesh %s: proxy targets or rules not restored: %s", self.ctx.mesh, exc.message)
        try:
            self.exit_pins = _refs(items.get("exits"), "exits")
            self.exit_users = validate.user_names(items.get("exit_users"), "exit_users", MAX_PINS)
        except ZtmError as exc:  # never widen the exits by accident: no entrance until it is configured again
            may_listen = False
            log.error("mesh %s: proxy exits not restored (%s): not listening", self.ctx.mesh, exc.message)
        listen = items.get("listen")
        if "auth" in items:
            try:
                self.auth = ProxyAuth.from_json(items["auth"])
            except ZtmError as exc:  # never serve openly what was meant to require credentials
                may_listen = False
                log.error("mesh %s: proxy credentials not restored (%s): not listening", self.ctx.mesh, exc.message)
        if isinstance(listen, str):
            try:
                self.listen = Address.parse(listen, what="listen")
                if may_listen:
                    self.server = await self._serve(self.listen)
                    self._warn_if_open()
            except (ZtmError, OSError) as exc:
                log.error("mesh %s: proxy not listening on %s: %s", self.ctx.mesh, listen, exc)
        await super().start()
        await self._publish_quietly()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
        for task in list(self._tasks):
            task.cancel()
        await super().stop()

    async def on_online(self) -> None:
        await self._publish_quietly()
        if epref.has_names(self.exit_pins):  # stored before names were resolved when configured
            with contextlib.suppress(ZtmError):
                endpoints = await self.ctx.endpoints()
                pins = epref.upgrade(self.exit_pins, endpoints)  # read after the await: configure may have run
                if pins != self.exit_pins:
                    self.ctx.config_set("exits", list(pins))
                    self.exit_pins = pins

    async def _publish_quietly(self) -> None:
        with contextlib.suppress(ZtmError):
            await self.ctx.publish(self.targets.services())

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- configuration --------------------------------------------------------------------------------------

    def config_view(self) -> dict[str, Any]:
        c = self.counters
        view = spec.view_config(str(self.listen) if self.listen else None, self.targets, self.rules, self.auth)
        view["exits"] = list(self.exit_pins)
        view["exit_users"] = list(self.exit_users)
        view["names"] = {ref: self._names[ref] for ref in self.exit_pins if ref in self._names}
        view["listening"] = self.server is not None
        view["counters"] = {
            k: v for k, v in sorted(c.items()) if (not k.endswith(":active") or v) and f":{paths.PREFIX}" not in k
        }
        view["paths"] = {
            "entrance": paths.view(c, "entrance", "entrance-udp"),
            "exit": paths.view(c, "exit", "exit-udp"),
        }
        return view

    async def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply `{set_listen, unset_listen, set_auth: {user, password}, clear_auth, add_targets, remove_targets,
        add_exclusions, remove_exclusions, exits, exit_users}` all or nothing (`exits` and `exit_users` replace the
        lists; endpoint names in `exits` are resolved to ids now)."""
        known = {"set_listen", "unset_listen", "add_targets", "remove_targets", "add_exclusions", "remove_exclusions",
                 "set_auth", "clear_auth", "exits", "exit_users"}  # fmt: skip
        unknown = sorted(set(body) - known)
        if unknown:
            raise BadInput(f"unknown field {unknown[0]!r}: expected {', '.join(sorted(known))}")
        targets = _edit(self.targets.targets, body, "targets", "target")
        exclusions = _edit(self.targets.exclusions, body, "exclusions", "exclusion")
        new = TargetSet(targets, exclusions)
        pins = _refs(body["exits"], "exits") if "exits" in body else self.exit_pins
        exit_users = self.exit_users
        if "exit_users" in body:
            exit_users = validate.user_names(body["exit_users"], "exit_users", MAX_PINS)
        check_choice(pins, exit_users)
        if "exits" in body:
            pins = await self.ctx.resolve_endpoints(pins, "exits")
            self._names.update(await self.ctx.endpoint_names() if pins else {})
        set_listen = body.get("set_listen")
        unset = body.get("unset_listen", False)
        if not isinstance(unset, bool):
            raise BadInput("unset_listen must be true or false")
        if set_listen is not None and unset:
            raise BadInput("give set_listen or unset_listen, not both")
        if set_listen is not None and not isinstance(set_listen, str):
            raise BadInput("set_listen must be a string [IP:]PORT")
        address = Address.parse(set_listen, default_host="127.0.0.1", what="listen") if set_listen is not None else None
        set_auth, clear_auth = body.get("set_auth"), body.get("clear_auth", False)
        if not isinstance(clear_auth, bool):
            raise BadInput("clear_auth must be true or false")
        if set_auth is not None and clear_auth:
            raise BadInput("give set_auth or clear_auth, not both")
        auth = self.auth
        if set_auth is not None:
            if not isinstance(set_auth, dict) or set(set_auth) != {"user", "password"}:
                raise BadInput("set_auth must be an object {user, password}")
            spec.check_credential(set_auth["user"], "user")
            spec.check_credential(set_auth["password"], "password")
            auth = await asyncio.to_thread(ProxyAuth.make, set_auth["user"], set_auth["password"])
        elif clear_auth:
            auth = None
        old_auth, self.auth = self.auth, auth  # before a new listener serves its first client
        try:
            if address is not None:
                await self._relisten(address)
            elif unset:
                await self._relisten(None)
        except BaseException:
            self.auth = old_auth
            raise
        if set_auth is not None or clear_auth:
            self._verified.clear()
            if auth is None:
                self.ctx.config_delete("auth")
                log.info("mesh %s: proxy credentials cleared", self.ctx.mesh)
            else:
                self.ctx.config_set("auth", auth.to_json())
                log.info("mesh %s: proxy credentials set for user %r", self.ctx.mesh, auth.user)
        if address is not None or unset or set_auth is not None or clear_auth:
            self._warn_if_open()
        if (pins, exit_users) != (self.exit_pins, self.exit_users):
            self.ctx.config_set("exits", list(pins))
            self.ctx.config_set("exit_users", list(exit_users))
            self.exit_pins, self.exit_users = pins, exit_users
            self._exits_cache = None
            log.info("mesh %s: proxy entrance uses %s", self.ctx.mesh, self._whose())
        if new != self.targets:
            self.ctx.config_set("targets", [str(t) for t in new.targets])
            self.ctx.config_set("exclusions", [str(e) for e in new.exclusions])
            self.targets = new
            self._exits_cache = None
            await self._publish_quietly()
        return self.config_view()

    async def _relisten(self, address: Address | None) -> None:
        old = self.server
        if old is not None:
            old.close()
            self.server = None
        try:
            server = await self._serve(address) if address is not None else None
        except OSError as exc:
            if self.listen is not None and old is not None:  # back to the previous address, if it still works
                with contextlib.suppress(OSError):
                    self.server = await self._serve(self.listen)
            raise Conflict(f"cannot listen on {address}: {exc.strerror or exc}") from None
        self.server = server
        self.listen = address
        if address is None:
            self.ctx.config_delete("listen")
            log.info("mesh %s: proxy entrance closed", self.ctx.mesh)
        else:
            self.ctx.config_set("listen", str(address))
            log.info("mesh %s: proxy listening on %s", self.ctx.mesh, address)

    @property
    def open_to_network(self) -> bool:
        """Listening beyond loopback without credentials: anyone who reaches the address uses this identity."""
        return self.server is not None and self.auth is None and not _loopback(self.listen)

    def _warn_if_open(self) -> None:
        if self.open_to_network:
            log.warning(
                "mesh %s: proxy listening on %s without credentials: anyone who can reach it uses the mesh as this "
                "endpoint (set them with 'ztm proxy config --set-auth USER')",
                self.ctx.mesh,
                self.listen,
            )

    async def authenticate(self, creds: Credentials) -> bool:
        """Do `creds` match the entrance's credentials? Verified ones are remembered (an HMAC under a per-process
        key, never the password); others cost an scrypt check in a thread, at most `AUTH_CHECKS` at a time."""
        auth = self.auth
        if auth is None:
            return True
        tag = hmac.digest(self._auth_key, len(creds.user).to_bytes(2, "big") + creds.user + creds.password, "sha256")
        if tag in self._verified:
            return True
        async with self._auth_checks:
            ok = await asyncio.to_thread(auth.verify, creds)
        if ok and self.auth is auth:
            if len(self._verified) >= AUTH_CACHE:
                self._verified.pop(next(iter(self._verified)))
            self._verified[tag] = None
        return ok

    async def _serve(self, address: Address) -> asyncio.AbstractServer:
        from ztm.apps.proxy.entrance import serve_client  # entrance imports this module

        def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.spawn(serve_client(self, reader, writer))

        return await asyncio.start_server(on_client, address.host, address.port)

    def list_rules(self) -> list[dict[str, Any]]:
        return [{"number": i, **r.to_json()} for i, r in enumerate(self.rules, 1)]

    def insert_rule(self, rule: Rule, at: object = None) -> list[dict[str, Any]]:
        if len(self.rules) >= spec.MAX_RULES:
            raise Conflict(f"at most {spec.MAX_RULES} rules; delete one first")
        position = len(self.rules) + 1 if at is None else validate.int_range(at, "at", 1, len(self.rules) + 1)
        rules = (*self.rules[: position - 1], rule, *self.rules[position - 1 :])
        self.ctx.config_set("rules", [r.to_json() for r in rules])
        self.rules = rules
        return self.list_rules()

    def delete_rule(self, number: object) -> list[dict[str, Any]]:
        if not self.rules:
            raise NotFound("there are no proxy rules on this endpoint")
        n = validate.int_range(number, "rule number", 1, len(self.rules))
        rules = self.rules[: n - 1] + self.rules[n:]
        self.ctx.config_set("rules", [r.to_json() for r in rules])
        self.rules = rules
        return self.list_rules()

    def policy(self) -> ExitPolicy:
        return ExitPolicy(self.ctx.user, self.exit_pins, self.exit_users)

    def _whose(self) -> str:
        if self.exit_pins:
            return "the exits " + ", ".join(epref.shown(ref, self._names) for ref in self.exit_pins)
        users = dict.fromkeys((self.ctx.user, ROOT, *self.exit_users))
        return "exits of user " + " or ".join(repr(u) for u in users)

    async def mesh_exits(self) -> list[dict[str, Any]]:
        """Every proxy exit of the mesh with its endpoint, user, targets, and whether this entrance uses it."""
        found = await self.ctx.find()
        exits: dict[str, dict[str, Any]] = {}
        policy = self.policy()
        for item in found:
            role_spec = spec.TargetSpec.from_service(str(item.get("service", "")))
            if role_spec is None:
                continue
            used = policy.allows(item) and item.get("ep") != self.ctx.ep_id
            entry = exits.setdefault(
                str(item.get("ep")),
                {"ep": item.get("ep"), "name": item.get("name"), "user": item.get("user"),
                 "online": item.get("online"), "used": used, "targets": [], "exclusions": []},
            )  # fmt: skip
            entry["targets" if role_spec[0] == "target" else "exclusions"].append(str(role_spec[1]))
        return sorted(exits.values(), key=lambda e: str(e["name"]))

    async def call(self, method: str, params: Any, caller: Caller) -> Any:
        """Remote configuration (`ztm ep EP proxy ...`): this endpoint's owner, or root if the owner allows it."""
        ctx = self.ctx
        optin.check_remote_config(ctx.store, ctx.mesh, ctx.user, ctx.session.record.ep_name, caller, "the proxy")
        body = params if isinstance(params, dict) else {}
        if method == "get":
            return self.config_view()
        if method == "config":
            return await self.configure(body)
        if method == "rules":
            return self.list_rules()
        if method == "insert_rule":
            return self.insert_rule(Rule.parse(body), body.get("at"))
        if method == "delete_rule":
            return self.delete_rule(body.get("number"))
        raise NotFound(f"proxy does not answer {method!r}")

    # ---- entrance: choosing an exit ----------------------------------------------------------------------------

    async def _exits(self) -> list[Exit]:
        now = time.monotonic()
        if self._exits_cache is not None and now - self._exits_cache[0] <= EXITS_TTL:
            return self._exits_cache[1]
        found = await self.ctx.find()
        services: dict[str, list[str]] = {}
        names: dict[str, str] = {}
        users: dict[str, str] = {}
        direct: dict[str, str] = {}
        for item in found:
            ep = str(item.get("ep"))
            if item.get("online") and ep != self.ctx.ep_id:
                services.setdefault(ep, []).append(str(item.get("service", "")))
                names[ep] = str(item.get("name"))
                users[ep] = str(item.get("user"))
                if isinstance(item.get("direct"), str):
                    direct[ep] = str(item["direct"])
        exits = [
            Exit(ep, names[ep], TargetSet.from_services(s), direct.get(ep), users[ep])
            for ep, s in sorted(services.items())
        ]
        exits = [e for e in exits if e.targets.targets]
        self._names.update(names)
        if exits:  # an empty answer is not cached: the next connection asks again
            self._exits_cache = (now, exits)
        return exits

    def mesh_endpoint(self, dest: Destination) -> str | None:
        """NAME when `dest` is `NAME.MESH.SUFFIX` of this mesh (its DNS suffix, `--dns-suffix`), else None."""
        zone = f".{self.ctx.mesh}.{self.ctx.session.net.dns_suffix}".lower()
        host = dest.host.lower().rstrip(".")
        if dest.ip is not None or not host.endswith(zone) or len(host) == len(zone):
            return None
        return host[: -len(zone)]

    def in_mesh_range(self, ip: spec.IP) -> bool:
        """Is `ip` in this mesh's IPv4 range or its ULA IPv6 prefix (as the hub announced them)?"""
        v4, v6 = self.ctx.session.mesh_ranges
        text = (v4 or DEFAULT_MESH_RANGE) if ip.version == 4 else v6
        if text is None:
            return False
        try:
            return ip in ipaddress.ip_network(text, strict=False)
        except ValueError:
            return False

    async def endpoint_at(self, ip: spec.IP) -> str | None:
        """The id of the endpoint whose mesh address (IPv4 or IPv6) is `ip`: from the endpoints the agent knows,
        else from the hub's list (kept `EXITS_TTL` seconds); None if no endpoint has it."""
        session = self.ctx.session
        for ep_id, ep in ((session.record.ep_id, session.me), *session.peers.items()):
            if not ep.get("deleted") and ip in _mesh_addresses(ep):
                return ep_id
        now = time.monotonic()
        if self._addresses_cache is None or now - self._addresses_cache[0] > EXITS_TTL:
            try:
                endpoints = await self.ctx.endpoints()
            except ZtmError as exc:
                raise Refused(spec.FAILED, f"cannot look up {ip} at the hub: {exc.message}") from None
            found = {a: str(ep["id"]) for ep in endpoints if isinstance(ep.get("id"), str) for a in _mesh_addresses(ep)}
            self._addresses_cache = (now, found)
        return self._addresses_cache[1].get(ip)

    async def open_to_endpoint(
        self, name: str, dest: Destination, protocol: str, ep_id: str | None = None
    ) -> tuple[E2EStream, Exit]:
        """A port stream or flow (`ztm.apps.net.ports`) to `dest.port` on the endpoint `name` names
        (case-insensitive), for `NAME.MESH.SUFFIX` destinations, or on endpoint `ep_id` (a mesh address): no exit
        is involved; `Refused` with the reason otherwise."""
        from ztm.apps.net.app import NetApp  # the net app imports the tunnel's splice, as this module does
        from ztm.apps.net.ports import CONNECT_FAILED

        net = self.ctx.session.apps.get("net")
        if not isinstance(net, NetApp) or not net.running or net.ports is None:
            raise Refused(spec.FAILED, f"the net app is not running in mesh {self.ctx.mesh}: mesh names need it")
        ref = ep_id
        if ref is None:
            peers = [(str(ep.get("name")), i) for i, ep in self.ctx.session.peers.items() if not ep.get("deleted")]
            found = sorted(i for ep_name, i in peers if ep_name.lower() == name)
            ref = found[0] if found else name
        try:
            stream = await net.ports.open(ref, dest.port, protocol)
        except NotFound:
            raise Refused(spec.UNRESOLVED, f"no endpoint named {name!r} in mesh {self.ctx.mesh}") from None
        except Forbidden as exc:
            code = spec.REFUSED if exc.message.startswith(CONNECT_FAILED) else spec.DENIED
            raise Refused(code, f"{dest}: {exc.message}") from None
        except Timeout as exc:
            raise Refused(spec.TIMEOUT, f"{dest}: {exc.message}") from None
        except ZtmError as exc:
            raise Refused(spec.FAILED, f"{dest}: {exc.message}") from None
        except h2.H2Error as exc:  # the hub connection is closing (GOAWAY, renewal)
            raise Refused(spec.FAILED, f"{dest}: {exc}") from None
        peer = self.ctx.session.peers.get(ref) or {}
        self.counters["entrance:mesh_names" if ep_id is None else "entrance:mesh_addresses"] += 1
        return stream, Exit(ref, str(peer.get("name") or name), TargetSet(), user=str(peer.get("user") or ""))

    async def open_to_exit(
        self, dest: Destination, protocol: str, early: EarlyData | None = None
    ) -> tuple[E2EStream, Exit]:
        """A stream for `dest` to the first matching exit that accepts, over a direct channel when the exit has one
        (when it does not answer, a stream through the hub: `AppContext.open_stream_direct_first`); `Refused`
        otherwise. `early`: the client's bytes that go with the opening (a plain HTTP request, `ztm.agent.early`).
        `NAME.MESH.SUFFIX`, and an address of the mesh's ranges, go to that endpoint's port instead
        (`open_to_endpoint`); an address of the ranges that no endpoint has is refused as an unknown name is."""
        name = self.mesh_endpoint(dest)
        if name is not None:
            return await self.open_to_endpoint(name, dest, protocol)
        ip = dest.ip
        if ip is not None and self.in_mesh_range(ip):
            ep_id = await self.endpoint_at(ip)
            if ep_id is None:
                raise Refused(spec.UNRESOLVED, f"no endpoint with address {ip} in mesh {self.ctx.mesh}")
            return await self.open_to_endpoint(str(ip), dest, protocol, ep_id)
        try:
            exits = await self._exits()
        except ZtmError as exc:
            raise Refused(spec.FAILED, exc.message) from None
        policy = self.policy()
        exits = [e for e in exits if policy.rank(e.ep, e.name, e.user) is not None]
        ranked = [(route, e) for e in exits if (route := e.targets.route(dest))]
        if not ranked:
            raise Refused(
                spec.NO_EXIT, f"no exit of mesh {self.ctx.mesh} offers {dest} (this entrance uses {self._whose()})"
            )
        start = self._rr["exits"] % len(ranked)
        self._rr["exits"] += 1
        ordered = [e for _, e in sorted(ranked[start:] + ranked[:start], key=lambda r: -r[0])]
        problems: list[Refused] = []
        service = dest.service(protocol)

        def fallback(_why: str) -> None:
            self.counters["entrance:direct_fallbacks"] += 1  # on to the relay

        for exit_ep in ordered:
            try:
                opened = await self.ctx.open_stream_direct_first(exit_ep.ep, service, exit_ep.direct, fallback, early)
                return opened, exit_ep
            except Forbidden as exc:  # the exit refused (over either path): its reason starts with a refusal code
                refused = Refused.from_reason(exc.message)
                if exc.message.startswith("policy: "):  # the hub's first line refused it: not allowed, as at the exit
                    refused = Refused(spec.DENIED, exc.message)
            except Timeout as exc:
                refused = Refused(spec.TIMEOUT, exc.message)
            except ZtmError as exc:
                refused = Refused(spec.FAILED, exc.message)
            except h2.H2Error as exc:  # the hub connection is closing (GOAWAY, renewal)
                refused = Refused(spec.FAILED, str(exc))
            self._exits_cache = None
            problems.append(Refused(refused.code, f"exit {exit_ep.name}: {refused.message}"))
            if early is not None and early.maybe_delivered:  # at most once: no other exit gets the request
                break
        first = problems[0]
        return_message = "; ".join(p.message for p in problems)
        raise Refused(first.code, return_message[:400])

    async def pipe(
        self,
        side: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stream: E2EStream,
        peer: Exit,
    ) -> None:
        """Splice a client (or target) socket with an end-to-end stream (relayed or direct), counting bytes for `side`
        and for the peer."""
        traffic = self.ctx.session.traffic_of(peer.ep, peer.name)
        await counted_splice(reader, writer, stream, self.counters, side, traffic)

    # ---- exit -----------------------------------------------------------------------------------------------

    async def on_stream(self, stream_id: str, caller: Caller, service: str) -> None:
        try:
            protocol, dest = Destination.from_service(service)
        except BadInput as exc:
            await self._refuse(stream_id, caller, service, Refused(spec.FAILED, exc.message))
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_BUDGET
        what = AppTarget("proxy", str(dest))
        try:
            try:
                self.ctx.session.gate.check(caller, what)
            except Forbidden as exc:
                raise Refused(spec.DENIED, exc.message) from None
            addresses = await self._admit(dest, protocol, caller)
            if protocol == "tcp":
                reader, writer = await _connect(addresses, dest.port, deadline)
            else:
                queue: asyncio.Queue[bytes] = asyncio.Queue(UDP_QUEUE)
                transport = await _udp_connect(addresses[0], dest.port, queue)
        except Refused as refused:
            await self._refuse(stream_id, caller, service, refused)
            return
        peer = Exit(caller.ep_id, caller.name, TargetSet())
        if protocol == "tcp":
            try:
                stream = await self.ctx.accept(stream_id)
            except BaseException:
                writer.transport.abort()
                raise
            self.counters["exit:streams"] += 1

            def close(_reason: str) -> None:
                stream.reset()
                reset_socket(writer)

            untrack = self.ctx.session.gate.track(caller, what, close)
            try:
                await self.pipe("exit", reader, writer, stream, peer)
            finally:
                untrack()
            return
        await serve_udp_flow(self.ctx, stream_id, caller, what, transport, queue, self.counters, "exit-udp")

    async def _refuse(self, stream_id: str, caller: Caller, service: str, refused: Refused) -> None:
        self._log_refusal(caller, service, refused)
        await self.ctx.refuse(stream_id, refused.reason)

    def _log_refusal(self, caller: Caller, service: str, refused: Refused) -> None:
        self.counters[f"exit:{'denied' if refused.code == spec.DENIED else 'failed'}"] += 1
        log.warning(
            "mesh %s: refused %s for %s (user %s): %s", self.ctx.mesh, service, caller.name, caller.user, refused.reason
        )

    async def _admit(self, dest: Destination, protocol: str, caller: Caller) -> list[spec.IP]:
        """The addresses this exit may connect to for `caller`, in order; `Refused` if none."""
        if not self.targets.targets:
            raise Refused(spec.DENIED, f"endpoint {self.ctx.session.record.name!r} is not a proxy exit")
        if self.targets.route(dest) == 0:
            raise Refused(spec.DENIED, f"{dest} is not among the targets of this exit")
        ip = dest.ip
        if ip is None:
            early = spec.decide_by_name(self.rules, caller.user, dest.host)
            if early is not None and not early[0]:
                raise Refused(spec.DENIED, self._denial(early[1], caller, dest))
        addresses = [ip] if ip is not None else await _resolve(dest, protocol)
        named = await self._named(spec.deny_names(self.rules, caller.user))
        allowed: list[spec.IP] = []
        why = ""
        for address in addresses:
            if not self.targets.allows(dest.name, address):
                why = f"{dest} ({address}) is not among the targets of this exit"
                continue
            ok, number = spec.decide(self.rules, caller.user, dest.name, address, named)
            if not ok:
                why = self._denial(number or 1, caller, dest)
                continue
            allowed.append(address)
        if not allowed:
            raise Refused(spec.DENIED, why)
        return allowed

    async def _named(self, names: list[str]) -> dict[str, frozenset[spec.IP]]:
        """The addresses of deny rules' names as resolved here (cached for `NAMED_TTL`; a name that does not
        resolve has none), so that a rule denying a name denies the same host by address too."""
        now = time.monotonic()
        stale = [n for n in names if n not in self._named_cache or self._named_cache[n][0] <= now]
        if stale:
            found = await asyncio.gather(*(_addresses_of(n) for n in stale))
            for name, addresses in zip(stale, found, strict=True):
                self._named_cache[name] = (now + NAMED_TTL, addresses)
            if len(self._named_cache) > 4 * spec.MAX_RULES:
                self._named_cache = {n: v for n, v in self._named_cache.items() if n in names}
        return {n: self._named_cache[n][1] for n in names}

    def _denial(self, number: int, caller: Caller, dest: Destination) -> str:
        rule = self.rules[number - 1]
        reason = f"rule {number} ({rule}) denies user {caller.user!r} access to {dest}"
        if dest.name is None and rule.target.kind == "suffix":
            reason += " (an address given without a name may be one of those names: allow it by network before it)"
        return reason


def _refs(value: object, what: str) -> tuple[str, ...]:
    """Endpoint names or ids (as configured: ids)."""
    items = validate.list_of(value, str, what)
    if len(items) > MAX_PINS:
        raise BadInput(f"{what}: at most {MAX_PINS} endpoints")
    for item in items:
        if not validate.looks_like_id(item):
            validate.name(item, f"endpoint in {what}")
    return tuple(dict.fromkeys(items))


def _mesh_addresses(ep: dict[str, Any]) -> list[spec.IP]:
    """An endpoint's mesh addresses (IPv4 and IPv6) as the hub lists them."""
    found = (spec.parse_ip(value) for value in (ep.get("mesh_ip"), ep.get("mesh_ip6")) if isinstance(value, str))
    return [ip for ip in found if ip is not None]


def _loopback(address: Address | None) -> bool:
    if address is None or address.host == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.host).is_loopback
    except ValueError:
        return False


def _edit(
    current: tuple[spec.TargetSpec, ...], body: dict[str, Any], plural: str, what: str
) -> tuple[spec.TargetSpec, ...]:
    add = spec.specs(validate.list_of(body.get(f"add_{plural}"), str, f"add_{plural}"), what)
    remove = spec.specs(validate.list_of(body.get(f"remove_{plural}"), str, f"remove_{plural}"), what)
    for item in remove:
        if item not in current and item not in add:
            have = ", ".join(map(str, current)) or "none"
            raise NotFound(f"no {what} {item} to remove (the {plural}: {have})")
    result = tuple(dict.fromkeys(x for x in (*current, *add) if x not in remove))
    if len(result) > spec.MAX_SPECS:
        raise BadInput(f"at most {spec.MAX_SPECS} {plural}")
    return result


async def _addresses_of(name: str) -> frozenset[spec.IP]:
    """Every address `name` resolves to here; none if it does not resolve in time."""
    try:
        infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(name, None), RESOLVE_TIMEOUT)
    except (OSError, TimeoutError):
        return frozenset()
    found = (spec.parse_ip(str(info[4][0]).partition("%")[0]) for info in infos)
    return frozenset(a for a in found if a is not None)


async def _resolve(dest: Destination, protocol: str) -> list[spec.IP]:
    loop = asyncio.get_running_loop()
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(dest.host, dest.port, type=kind), RESOLVE_TIMEOUT)
    except TimeoutError:
        raise Refused(spec.UNRESOLVED, f"resolving {dest.host} took longer than {RESOLVE_TIMEOUT:g}s") from None
    except OSError as exc:
        raise Refused(spec.UNRESOLVED, f"cannot resolve {dest.host}: {exc.strerror or exc}") from None
    found = [spec.parse_ip(str(info[4][0]).partition("%")[0]) for info in infos]
    addresses = list(dict.fromkeys(a for a in found if a is not None))
    if not addresses:
        raise Refused(spec.UNRESOLVED, f"{dest.host} has no address")
    return addresses


_ERRNO_CODES = {
    errno.ECONNREFUSED: spec.REFUSED,
    errno.ENETUNREACH: spec.NET_UNREACHABLE,
    errno.EHOSTUNREACH: spec.UNREACHABLE,
    errno.ETIMEDOUT: spec.TIMEOUT,
}


async def _connect(
    addresses: list[spec.IP], port: int, deadline: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    loop = asyncio.get_running_loop()
    problems: list[tuple[str, str]] = []
    for i, address in enumerate(addresses):
        share = max(0.1, (deadline - loop.time()) / (len(addresses) - i))
        try:
            return await asyncio.wait_for(asyncio.open_connection(str(address), port), share)
        except TimeoutError:
            problems.append((spec.TIMEOUT, f"{_show(address, port)}: no answer within {share:.1f}s"))
        except OSError as exc:
            code = _ERRNO_CODES.get(exc.errno or 0, spec.UNREACHABLE)
            problems.append((code, f"{_show(address, port)}: {exc.strerror or exc}"))
    raise Refused(problems[0][0], "cannot connect to " + "; ".join(p for _, p in problems))


async def _udp_connect(address: spec.IP, port: int, queue: asyncio.Queue[bytes]) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    try:
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpTarget(queue), remote_addr=(str(address), port))
    except OSError as exc:
        code = _ERRNO_CODES.get(exc.errno or 0, spec.UNREACHABLE)
        raise Refused(code, f"cannot reach {_show(address, port)}: {exc.strerror or exc}") from None
    return transport


def _show(address: spec.IP, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


class _UdpTarget(asyncio.DatagramProtocol):
    def __init__(self, queue: asyncio.Queue[bytes]) -> None:
        self.queue = queue

    def datagram_received(self, data: bytes, addr: Any) -> None:
        with contextlib.suppress(asyncio.QueueFull):
            self.queue.put_nowait(data)
