"""What the hub keeps durably, as one interface with two back ends: the records (`EndpointRecord`, `UserRecord`,
`HubInfo`, `Presence`) and the `HubStore` protocol that `HubState` and `Authority` call.

Back ends: `ztm.hub.store_sqlite.SqliteStore` (the embedded default, one hub per data directory) and
`ztm.hub.store_pg.PgStore` (PostgreSQL: every hub started on the same database serves the same mesh). Every method
that writes is one transaction: it either happens whole or raises `Unavailable` (the store cannot be reached or
written: "store unavailable, retrying") or `Conflict` (a uniqueness rule, e.g. an endpoint name taken by a
concurrent join at another hub), and the caller changes its in-memory view only after it returned.

Change notification (cluster): a hub that changed shared state calls `notify(kind, payload)`; every other hub on
the same store gets `(kind, payload)` through the callback given to `subscribe` (PostgreSQL LISTEN/NOTIFY; the
SQLite store has no other hub and delivers nothing). Payloads are small JSON objects (< 7,000 bytes encoded):
they name what changed, and receivers reload it from the store (`endpoint`, `file`, `policy`, ...) or apply it
(`presence`).

Issue 17: every endpoint record holds its mesh address (`mesh_ip`, unique: a store refuses a second record with it
by raising `AddressTaken`), and `RouteRecord` rows keep the subnet routes endpoints advertise.

Issue 16: the mesh's access policy is kept as numbered versions (`PolicyVersion`, never edited: a rollback is a new
version), and the audit log as `AuditEntry` rows that no method edits or deletes (append-only; `seq` orders them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ztm.errors import Conflict


@dataclass
class EndpointRecord:
    id: str
    name: str
    user: str
    labels: list[str] = field(default_factory=list)
    version: str = ""
    hostname: str = ""
    first_seen: float = 0.0
    last_seen: float | None = None
    user_not_after: float | None = None
    """When the user certificate the endpoint enrolled with expires: its endpoint certificates never outlive it
    (None for records from before this was kept: the user's latest user certificate counts)."""
    mesh_ip: str | None = None
    """Its IPv4 address in the mesh range (issue 17; unique in the store; None until the hub allocated one)."""


@dataclass
class RouteRecord:
    """A subnet route an endpoint advertises (issue 17): a CIDR, approved by root or pending."""

    ep_id: str
    cidr: str
    approved: bool = False
    advertised_at: float = 0.0
    approved_by: str | None = None


class AddressTaken(Conflict):
    """The mesh address an enrolment wanted is held by another endpoint record (another hub of the cluster took it
    first): the caller allocates again."""


@dataclass
class UserRecord:
    name: str
    created: float
    evicted_at: float | None = None


@dataclass
class HubInfo:
    """One hub of the mesh, as it registers itself in the store's hubs table and refreshes it (`heartbeat`)."""

    id: str
    addresses: list[str]
    """Where agents dial it (`HOST:PORT`, its `--names`)."""
    zone: str = ""
    version: str = ""
    started: float = 0.0
    heartbeat: float = 0.0
    """When the hub last refreshed its row (store clock seconds since the epoch)."""
    online: int = 0
    """Endpoints with a live session on it, as of its last heartbeat."""
    admin: str = ""
    """Its admin address (`HOST:PORT`) or ""."""


@dataclass
class Presence:
    """Which hub holds an endpoint's live session, where it came from, and its direct address (if it announced
    one): the cluster-wide "online" view."""

    ep_id: str
    hub_id: str
    since: float
    address: str = ""
    direct: str = ""
    e2e: str = ""
    services: dict[str, list[str]] = field(default_factory=dict)
    """App -> the services it offers (published by the agent after every hello)."""


@dataclass
class PolicyVersion:
    """One version of the mesh's access policy (`ztm.policy`): the text exactly as set, who set it and when."""

    version: int
    text: str
    set_by: str
    set_at: float
    note: str = ""


@dataclass
class AuditEntry:
    """One row of the hub's append-only audit log (`ztm.hub.audit`)."""

    seq: int
    """Its order in the store (assigned by the store; 0 before it is added)."""
    at: float
    hub: str
    """The id of the hub that recorded it."""
    actor: str
    """The user who acted ("" for the hub itself: hub-start, hub-stop)."""
    actor_ep: str
    """The name of the endpoint the actor acted from ("" for a user certificate or the hub)."""
    action: str
    target: str
    detail: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    """Where the request came from (`HOST:PORT` as the hub saw it), "" for the hub itself."""


Notify = Callable[[str, dict[str, Any]], None]


class HubStore(Protocol):
    kind: str
    """"sqlite" or "postgresql"."""
    shared: bool
    """True when other hubs may use the same store (PostgreSQL): the hub then encrypts the CA key, registers
    itself in the hubs table, publishes presence and listens for notifications."""

    @property
    def available(self) -> bool:
        """False while the store cannot be reached (calls raise `Unavailable`; it reconnects by itself)."""
        ...

    @property
    def problem(self) -> str:
        """Why it is unavailable ("" when it is available)."""
        ...

    async def close(self) -> None: ...

    # meta: mesh id, CA certificate, (sealed) CA and root keys, CRL number
    async def get_meta(self) -> dict[str, str]: ...
    async def set_meta(self, values: dict[str, str]) -> None: ...
    async def create_meta(self, values: dict[str, str]) -> dict[str, str]:
        """Store `values` if the store has no mesh yet (no `ca_cert`), atomically; return the meta now stored
        (the caller's, or the mesh another hub created first)."""
        ...

    # users
    async def users(self) -> list[UserRecord]: ...
    async def upsert_user(self, name: str, *, evicted_at: float | None = None) -> None: ...
    async def evict_user(self, name: str, at: float) -> None:
        """Mark the user evicted and revoke every certificate of theirs, in one transaction."""
        ...

    # certificates
    async def record_cert(self, serial: int, user: str, ep_id: str | None, kind: str, not_after: float) -> None: ...
    async def user_cert_end(self, user: str) -> float | None: ...
    async def revoked_serials(self, now: float) -> list[int]: ...
    async def prune_certs(self, now: float) -> None: ...

    # endpoints
    async def endpoints(self) -> list[EndpointRecord]: ...
    async def endpoint(self, ep_id: str) -> EndpointRecord | None: ...
    async def enroll_endpoint(self, ep: EndpointRecord, *, replaces: list[str]) -> None:
        """Delete the records `replaces` (ids whose name `ep` takes over; their routes too) and save `ep`, in one
        transaction. `Conflict` if another endpoint record holds `ep.name` (names are unique in the store), one line
        naming it; `AddressTaken` if another holds `ep.mesh_ip`."""
        ...

    async def save_endpoint(self, ep: EndpointRecord) -> None:
        """Insert or update the record; `AddressTaken` if another record holds `ep.mesh_ip`."""
        ...

    async def delete_endpoint(self, ep_id: str) -> None:
        """Delete the record and its routes and revoke the endpoint's certificates, in one transaction."""
        ...

    async def touch_endpoints(self, seen: dict[str, float]) -> None: ...
    async def claim_address(self, ep_id: str, mesh_ip: str) -> str | None:
        """Give the endpoint `mesh_ip` if its record has no address yet (atomically); returns the record's address
        now (None: no such record). `AddressTaken` if another record holds `mesh_ip`."""
        ...

    # subnet routes (issue 17); an endpoint's routes go with its record (delete_endpoint, replaces)
    async def routes(self, ep_id: str | None = None) -> list[RouteRecord]:
        """Every route, or the endpoint's."""
        ...

    async def set_routes(self, ep_id: str, routes: list[RouteRecord]) -> None:
        """Replace the endpoint's routes with `routes`, in one transaction."""
        ...

    # the mesh file space (ztm.hub.files): one JSON entry per path
    async def files(self) -> list[str]: ...
    async def file(self, path: str) -> str | None: ...
    async def save_file(self, path: str, entry: str) -> None: ...
    async def delete_file(self, path: str) -> None: ...

    # the access policy: numbered versions, never edited
    async def policy_versions(self) -> list[PolicyVersion]:
        """Every version, oldest first."""
        ...

    async def policy(self, version: int | None = None) -> PolicyVersion | None:
        """That version (None: the newest); None when there is no such version (or none at all)."""
        ...

    async def add_policy(self, text: str, set_by: str, note: str, audit: AuditEntry | None = None) -> int:
        """Store `text` as the next version (one more than the newest, atomically: a concurrent add at another hub
        gets the next number) together with its audit row, if given (its `detail` gains `version`), in one transaction;
        returns the new version."""
        ...

    # the audit log: append-only (no method edits or deletes a row)
    async def audit_add(self, entry: AuditEntry) -> int:
        """Append one row; returns its `seq`."""
        ...

    async def audit(
        self, since_seq: int | None = None, since_time: float | None = None, user: str | None = None, limit: int = 1000
    ) -> list[AuditEntry]:
        """Rows with `seq` > `since_seq`, `at` >= `since_time` and actor `user` (each when given), oldest first, at
        most `limit`."""
        ...

    # cluster
    async def register_hub(self, hub: HubInfo) -> None:
        """Insert or replace this hub's row (and drop presence rows it left from an earlier run)."""
        ...

    async def heartbeat_hub(self, hub_id: str, online: int) -> float:
        """Refresh this hub's row; returns the store's clock (seconds), which every hub compares heartbeats
        against (hubs' own clocks may differ)."""
        ...

    async def remove_hub(self, hub_id: str) -> None:
        """Delete the hub's row and its presence rows (a clean stop)."""
        ...

    async def hubs(self) -> list[HubInfo]: ...
    async def set_presence(self, presence: Presence) -> None: ...
    async def clear_presence(self, ep_id: str, hub_id: str) -> None:
        """Delete the endpoint's presence row if `hub_id` still holds it (a newer session elsewhere stays)."""
        ...

    async def presences(self) -> list[Presence]: ...
    async def notify(self, kind: str, payload: dict[str, Any]) -> None: ...
    def subscribe(self, callback: Notify) -> None:
        """Call `callback(kind, payload)` on the event loop for every notification of another hub."""
        ...
