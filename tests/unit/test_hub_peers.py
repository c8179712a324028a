"""`ztm.hub.peers`: the decisions about a forwarded request's caller, and errors passed on from another hub (the
hub-to-hub traffic itself is tested with real processes: tests/integration/test_cluster_relay.py and
tests/security/test_hub_peers.py)."""

from __future__ import annotations

import asyncio
import json
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from ztm.errors import BadInput, Forbidden
from ztm.hub.peers import Relayed, caller_from, caller_header
from ztm.hub.store import EndpointRecord, UserRecord

ALICE = EndpointRecord(id=str(uuid.uuid4()), name="laptop", user="alice")
NEWCOMER = EndpointRecord(id=str(uuid.uuid4()), name="new", user="alice")
"""In the store but not yet in the hub's memory (it joined at another hub a moment ago)."""


class _Store:
    async def endpoint(self, ep_id: str) -> EndpointRecord | None:
        return NEWCOMER if ep_id == NEWCOMER.id else None


def _state(evicted: bool = False) -> Any:
    users = {"alice": UserRecord("alice", 0.0, 1.0 if evicted else None)}
    return SimpleNamespace(endpoints={ALICE.id: ALICE}, users=users, store=_Store())


def _caller(value: str | None, state: Any = None) -> EndpointRecord:
    return asyncio.run(caller_from(value, state if state is not None else _state()))


def test_the_header_round_trips_for_a_known_endpoint() -> None:
    assert _caller(caller_header(ALICE)) is ALICE


def test_an_endpoint_only_the_store_knows_yet_is_read_from_it() -> None:
    assert _caller(caller_header(NEWCOMER)) == NEWCOMER


@pytest.mark.parametrize(
    ("value", "error", "words"),
    [
        (None, BadInput, "carries the caller"),
        ("not json", BadInput, "not JSON"),
        ("[1]", BadInput, "must be"),
        (json.dumps({"ep": "x", "name": "n", "user": "alice"}), BadInput, "endpoint id"),
        (json.dumps({"ep": ALICE.id, "name": "n", "user": "Bad User"}), BadInput, "user name"),
        (json.dumps({"ep": ALICE.id, "name": "laptop", "user": "root"}), Forbidden, "belongs to user 'alice'"),
        (json.dumps({"ep": str(uuid.uuid4()), "name": "x", "user": "alice"}), Forbidden, "not an endpoint"),
    ],
)
def test_a_bad_or_false_caller_is_refused(value: str | None, error: type[Exception], words: str) -> None:
    with pytest.raises(error, match=words):
        _caller(value)


def test_an_evicted_users_endpoint_is_refused() -> None:
    with pytest.raises(Forbidden, match="not a member"):
        _caller(caller_header(ALICE), _state(evicted=True))


def test_the_far_hubs_error_passes_unchanged() -> None:
    body = {"error": "endpoint 'db' speaks end-to-end layer version 1, this agent 9", "code": "conflict"}
    err = Relayed(409, body)
    assert (err.status, err.to_json(), err.message) == (409, body, body["error"])
    odd = Relayed(502, "not an object")
    assert odd.status == 502 and odd.to_json()["error"] == "the hub of the endpoint answered HTTP 502"
