"""The hub's audit log (issue 16): who did what, when, from where, kept append-only in the hub's store.

`AuditLog.record` writes one row (`ztm.hub.store.AuditEntry`) for an action a member made: a join or enrolment, a
certificate renewal, an invitation, an eviction, an endpoint deleted (`leave`), labels, apps and files published,
subnet routes advertised, withdrawn, approved and unapproved (`route.*`),
policy versions (those are written in the policy's own transaction, `HubStore.add_policy`), the hub's start and stop.
The row is written BEFORE the action's own store write and awaited: if it cannot be written the action fails as any
store write would (`Unavailable`), so an action that succeeded always has its row (a row whose action then failed
is possible, and says what was attempted). Heartbeats, streams and reads are never audited.

`denied` records a refused admin attempt (a non-root invite, evict, endpoint deletion, policy change): it never
raises (the refusal is what the caller gets), and at most `DENIED_PER_MINUTE` rows per user and minute are written,
so a member cannot fill the hub's disk with refusals (the rest are counted in `audit_denied_dropped`).

No method here, in the store or in the routes edits or deletes a row: `GET /api/audit` and the admin port's
`/audit` only read them.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import TYPE_CHECKING, Any

from ztm.errors import ZtmError
from ztm.hub.store import AuditEntry, HubStore

if TYPE_CHECKING:
    from ztm.hub.state import Peer

log = logging.getLogger("ztm.hub")

ACTIONS = frozenset(
    {
        "join", "leave", "enroll", "renew", "invite", "evict", "policy-set", "policy-rollback", "label",
        "app-publish", "file-publish", "hub-start", "hub-stop", "denied", "route.advertise", "route.withdraw",
        "route.approve", "route.unapprove",
    }
)  # fmt: skip
"""Every action string the hub records (PROTOCOL.md, "Audit log")."""
DENIED_PER_MINUTE = 30
"""Rows of refused attempts written per user and minute at most."""
MAX_LIMIT = 10_000
"""Rows one `GET /api/audit` returns at most."""


class AuditLog:
    def __init__(self, store: HubStore, hub_id: str, ep_names: dict[str, Any], counters: collections.Counter[str]):
        """`ep_names`: the hub's endpoint records by id (their `.name` is the `actor_ep` of a row)."""
        self.store = store
        self.hub_id = hub_id
        self._endpoints = ep_names
        self.counters = counters
        self._denied: dict[str, tuple[float, int]] = {}

    def entry(self, peer: Peer | None, action: str, target: str, detail: dict[str, Any] | None = None) -> AuditEntry:
        """The row for `action` by `peer` (None: the hub itself), not yet written."""
        assert action in ACTIONS, action
        actor = actor_ep = source = ""
        if peer is not None:
            actor = peer.user if peer.hub_id is None else f"hub:{peer.hub_id}"
            ep = self._endpoints.get(peer.ep_id) if peer.ep_id is not None else None
            actor_ep = ep.name if ep is not None else ""
            if peer.address is not None:
                host, port = peer.address
                source = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return AuditEntry(
            seq=0, at=time.time(), hub=self.hub_id, actor=actor, actor_ep=actor_ep, action=action, target=target,
            detail=dict(detail or {}), source=source,
        )  # fmt: skip

    async def record(self, peer: Peer | None, action: str, target: str, detail: dict[str, Any] | None = None) -> None:
        """Write the row now (before the action's own store write); `Unavailable` when the store cannot take it,
        and then the action must not happen."""
        await self.store.audit_add(self.entry(peer, action, target, detail))
        self.counters["audit_rows"] += 1

    async def denied(self, peer: Peer, attempted: str, target: str, refusal: str) -> None:
        """Record a refused admin attempt (rate-limited per user; never raises)."""
        now = time.monotonic()
        start, count = self._denied.get(peer.user, (now, 0))
        if now - start >= 60:
            start, count = now, 0
        if count >= DENIED_PER_MINUTE:
            self.counters["audit_denied_dropped"] += 1
            return
        self._denied[peer.user] = (start, count + 1)
        if len(self._denied) > 10_000:  # forget idle users' windows
            self._denied = {u: w for u, w in self._denied.items() if now - w[0] < 60}
        try:
            await self.record(peer, "denied", target, {"attempted": attempted, "refusal": refusal})
        except ZtmError as exc:
            log.warning("could not write the audit row of a refused %s by %s: %s", attempted, peer.user, exc.message)

    async def query(
        self, since_seq: int | None = None, since_time: float | None = None, user: str | None = None, limit: int = 1000
    ) -> list[dict[str, Any]]:
        rows = await self.store.audit(since_seq, since_time, user, min(limit, MAX_LIMIT))
        return [view(r) for r in rows]


def view(entry: AuditEntry) -> dict[str, Any]:
    """A row as the API and the admin export give it."""
    return {
        "seq": entry.seq,
        "at": entry.at,
        "hub": entry.hub,
        "actor": entry.actor,
        "actor_ep": entry.actor_ep,
        "action": entry.action,
        "target": entry.target,
        "detail": entry.detail,
        "source": entry.source,
    }
