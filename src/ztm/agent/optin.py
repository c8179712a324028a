"""What only an endpoint's owner may allow, per mesh, on the endpoint itself: root's remote configuration.

Whoever holds a mesh's CA (its hub operator) can mint any identity of that mesh, root's included, so anything root
may do to an endpoint from afar the hub operator may do too. Root's reconfiguration of this endpoint's tunnels and
proxy (`ztm ep NAME tunnel|proxy ...`, relayed calls) is therefore off unless the owner turns it on here with
`ztm root-admin on` (local API `POST /api/meshes/{mesh}/root-admin`, token-guarded: no relayed call can change
it). The owner's own remote configuration stays allowed (`--users`/`--entrances` and the like decide the rest). The
terminal app has its own switch (`ztm terminal enable`, `ztm.apps.terminal.app`). Kept in the agent database under
the pseudo-app `_endpoint` (no app name starts with `_`).
"""

from __future__ import annotations

from ztm.agent.apps import Caller
from ztm.agent.store import AgentStore
from ztm.errors import Forbidden

SCOPE = "_endpoint"
ROOT_ADMIN = "root_admin"
ROOT = "root"


def root_admin(store: AgentStore, mesh: str) -> bool:
    """May root (when it is not the owner) reconfigure this endpoint's tunnels and proxy in `mesh`?"""
    return store.app_items(mesh, SCOPE).get(ROOT_ADMIN) is True


def set_root_admin(store: AgentStore, mesh: str, enabled: bool) -> None:
    if enabled:
        store.app_set(mesh, SCOPE, ROOT_ADMIN, True)
    else:
        store.app_delete(mesh, SCOPE, ROOT_ADMIN)


def check_remote_config(store: AgentStore, mesh: str, owner: str, ep_name: str, caller: Caller, what: str) -> None:
    """Forbidden unless `caller` may configure `what` ("tunnels", "the proxy") on this endpoint from afar: its owner,
    or root when the owner turned root-admin on."""
    if caller.user == owner:
        return
    if caller.user == ROOT:
        if root_admin(store, mesh):
            return
        raise Forbidden(
            f"root may not configure {what} on endpoint {ep_name!r}: its owner ({owner}) has not allowed it; the "
            f"owner turns it on there with 'ztm root-admin on'"
        )
    if owner == ROOT:
        raise Forbidden(f"only root (the owner) may configure {what} on this endpoint")
    raise Forbidden(
        f"only {owner!r} (the owner), or root if the owner allows it there with 'ztm root-admin on', may configure "
        f"{what} on this endpoint"
    )
