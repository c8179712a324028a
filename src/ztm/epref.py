"""Endpoint references: an endpoint named by id or by name, on a command line or in a stored configuration.

Endpoint names may not parse as ids (`validate.endpoint_name`, checked by agent and hub), so a reference that parses
as an id means that id and nothing else (`matches`). A reference that is configured and kept (`--exits`,
`--entrances`) is resolved to the one id it names at that moment (`resolve`) and stored as the id, so that no
endpoint enrolled later can take it over. No I/O: callers pass the hub's endpoint list.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from ztm import validate
from ztm.errors import Conflict, NotFound


def matches(ref: str, ep_id: str, name: str) -> bool:
    """Does `ref` name the endpoint `ep_id` called `name`? An id-shaped reference matches that id only; any other
    reference matches the name (a name stored before names were resolved to ids)."""
    if validate.looks_like_id(ref):
        return str(uuid.UUID(ref)) == ep_id
    return ref == name


def resolve(refs: Sequence[str], endpoints: Iterable[dict[str, Any]], what: str) -> tuple[str, ...]:
    """Each of `refs` (names or ids) as the id of the one endpoint of `endpoints` (the hub's list) it names now, in
    order, without duplicates; NotFound naming the reference when it names none, Conflict when it names several."""
    known = [e for e in endpoints if isinstance(e.get("id"), str) and isinstance(e.get("name"), str)]
    ids: list[str] = []
    for ref in refs:
        found = [e for e in known if matches(ref, e["id"], e["name"])]
        if not found:
            kind = "id" if validate.looks_like_id(ref) else "named"
            raise NotFound(f"{what}: no endpoint {kind} {ref!r} in this mesh; see `ztm get ep`")
        if len(found) > 1:
            listed = ", ".join(f"{e['id']} (user {e.get('user')})" for e in found)
            raise Conflict(f"{what}: {ref!r} names several endpoints ({listed}); give the id instead")
        ids.append(found[0]["id"])
    return tuple(dict.fromkeys(ids))


def upgrade(refs: tuple[str, ...], endpoints: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """`refs` stored before names were resolved when configured, with each name that names exactly one endpoint
    replaced by its id; ids, and names that name none (or several), stay as they are."""
    known = [e for e in endpoints if isinstance(e.get("id"), str) and isinstance(e.get("name"), str)]
    out = []
    for ref in refs:
        found = [e["id"] for e in known if not validate.looks_like_id(ref) and e["name"] == ref]
        out.append(found[0] if len(found) == 1 else ref)
    return tuple(dict.fromkeys(out))


def has_names(refs: Iterable[str]) -> bool:
    """Whether any of `refs` is a name rather than an id."""
    return any(not validate.looks_like_id(ref) for ref in refs)


def shown(ref: str, names: dict[str, str]) -> str:
    """`ref` for people: `name (id)` when `names` (id -> name) knows the id, else `ref` as it is."""
    name = names.get(ref)
    return f"{name} ({ref})" if name else ref
