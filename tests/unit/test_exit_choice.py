"""Which exits an entrance may use (`ztm.apps.exits`), endpoint references (`ztm.epref`) and endpoint names that
read as ids (`ztm.validate.endpoint_name`): the rules of issue 12 items 4 and 5, as data."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from ztm import epref, validate
from ztm.apps.exits import ExitPolicy, check_choice
from ztm.apps.tunnel.spec import Inbound
from ztm.errors import BadInput, Conflict, NotFound

A, B, M = (
    "5efbba86-602c-42bc-acfa-79f9d5d3a37d",
    "0d6bf554-5691-4861-b013-26925483e8f6",
    "80cca963-0a2a-4b4e-ad02-fc94f8233f98",
)
"""Fixed ids: they name parametrized tests, which must be the same in every collecting process (pytest-xdist)."""


def entry(ep: str, name: str, user: str) -> dict[str, Any]:
    return {"ep": ep, "name": name, "user": user, "online": True}


FOUND = [entry(M, "mallory-box", "mallory"), entry(A, "office", "alice"), entry(B, "hq", "root")]


def test_by_default_only_the_own_users_and_roots_exits() -> None:
    assert [e["name"] for e in ExitPolicy("alice").choose(FOUND)] == ["office", "hq"]
    assert [e["name"] for e in ExitPolicy("bob").choose(FOUND)] == ["hq"]
    assert [e["name"] for e in ExitPolicy("mallory").choose(FOUND)] == ["mallory-box", "hq"]


def test_exit_users_widen_and_exits_pin_in_order_whoever_owns_them() -> None:
    assert [e["name"] for e in ExitPolicy("alice", exit_users=("mallory",)).choose(FOUND)] == [
        "mallory-box",
        "office",
        "hq",
    ]
    assert [e["name"] for e in ExitPolicy("alice", exits=(B, M)).choose(FOUND)] == ["hq", "mallory-box"]
    assert ExitPolicy("alice", exits=(str(uuid.uuid4()),)).choose(FOUND) == []
    with pytest.raises(BadInput, match="not both"):
        check_choice((A,), ("bob",))
    with pytest.raises(BadInput, match="not both"):
        Inbound.parse({"tunnel": "tcp/x", "listen": ["80"], "exits": [A], "exit_users": ["bob"]})


def test_the_user_is_the_registrys_never_a_name() -> None:
    # An endpoint named "root" or "alice" is still mallory's.
    found = [entry(M, "root", "mallory"), entry(str(uuid.uuid4()), "alice", "mallory")]
    assert ExitPolicy("alice").choose(found) == []


def test_an_id_reference_matches_that_id_only() -> None:
    assert epref.matches(A, A, "office")
    assert epref.matches(A.upper(), A, "office")
    assert not epref.matches(A, M, A)  # an endpoint *named* like A's id (enrolled before such names were refused)
    assert epref.matches("office", A, "office") and not epref.matches("office", A, "hq")
    assert ExitPolicy("alice", exits=(A,)).choose([entry(M, A, "mallory")]) == []


def test_resolve_names_to_ids() -> None:
    eps = [{"id": e["ep"], "name": e["name"], "user": e["user"]} for e in FOUND]
    assert epref.resolve(["office", B, "office"], eps, "exits") == (A, B)
    with pytest.raises(NotFound, match="exits: no endpoint named 'nosuch'"):
        epref.resolve(["nosuch"], eps, "exits")
    other = str(uuid.uuid4())
    with pytest.raises(NotFound, match=f"no endpoint id '{other}'"):
        epref.resolve([other], eps, "exits")
    with pytest.raises(Conflict, match="several endpoints"):
        epref.resolve(["office"], [*eps, {"id": M, "name": "office", "user": "mallory"}], "exits")
    assert epref.resolve([A], [{"id": M, "name": A, "user": "mallory"}, *eps], "exits") == (A,)
    assert epref.shown(A, {A: "office"}) == f"office ({A})" and epref.shown(M, {}) == M


def test_stored_names_are_upgraded_to_ids_where_unambiguous() -> None:
    eps = [{"id": A, "name": "office"}, {"id": B, "name": "hq"}, {"id": M, "name": "hq"}]
    assert epref.upgrade(("office", "hq", "gone", M), eps) == (A, "hq", "gone", M)
    assert epref.upgrade((A, "office"), eps) == (A,)
    assert epref.has_names(("office",)) and not epref.has_names((A, B))


@pytest.mark.parametrize("name", [A, A.upper(), A.replace("-", ""), "-".join(A.replace("-", ""))])
def test_endpoint_names_may_not_read_as_ids(name: str) -> None:
    assert validate.looks_like_id(name)
    with pytest.raises(BadInput, match="reads as an endpoint id"):
        validate.endpoint_name(name)


@pytest.mark.parametrize("name", ["laptop", "office-1", "deadbeef", A[:-1], A + "0", "x" + A[1:]])
def test_other_names_are_fine(name: str) -> None:
    assert validate.endpoint_name(name) == name
