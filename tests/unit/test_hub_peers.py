"""`ztm.hub.peers`: the decisions about a forwarded request's caller, and errors passed on from another hub (the
hub-to-hub traffic itself is tested with real processes: tests/integration/test_cluster_relay.py and
tests/security/test_hub_peers.py)."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ztm import pki
from ztm.errors import BadInput, Forbidden, Unavailable
from ztm.hub.peers import HubPeers, Relayed, caller_from, caller_header
from ztm.hub.store import EndpointRecord, HubInfo, UserRecord

ALICE = EndpointRecord(id="0d6bf554-5691-4861-b013-26925483e8f6", name="laptop", user="alice")
"""Fixed ids: they name parametrized tests, which must be the same in every collecting process (pytest-xdist)."""
NEWCOMER = EndpointRecord(id="99e37b16-b564-4c96-a445-68300bf5406d", name="new", user="alice")
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
        (
            json.dumps({"ep": "8f02a632-bacc-41df-975d-34a00e899a12", "name": "x", "user": "alice"}),
            Forbidden,
            "not an endpoint",
        ),
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


def _state_with_hub(tmp_path: Path, addresses: list[str]) -> tuple[Any, str]:
    """A hub's state as `HubPeers` sees it: its hub certificate on disk, the mesh CA, one other hub's row."""
    now = dt.datetime.now(dt.UTC)
    ca_key, ca_cert = pki.create_ca(pki.new_mesh_id(), now=now)
    key = pki.new_key()
    cert = pki.issue_hub_cert(
        ca_key, ca_cert, hub_id=pki.new_hub_id(), names=["127.0.0.1"], public_key=key.public_key(), now=now
    )
    tls = tmp_path / "hub-tls"
    tls.mkdir()
    (tls / "hub.crt").write_text(pki.cert_to_pem(cert))
    pki.write_private(tls / "hub.key", pki.key_to_pem(key))
    other = pki.new_hub_id()
    authority = SimpleNamespace(data=tmp_path, ca_pem=pki.cert_to_pem(ca_cert), mesh_id=pki.cert_mesh_id(ca_cert))
    state = SimpleNamespace(authority=authority, hubs={other: HubInfo(id=other, addresses=addresses)},
                            counters=collections.Counter())  # fmt: skip
    return state, other


def test_a_hub_that_cannot_be_reached_is_a_503_naming_each_address(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    state, other = _state_with_hub(tmp_path, [f"127.0.0.1:{closed}", "no port"])
    peers = HubPeers(state)
    with pytest.raises(Unavailable, match=f"cannot reach hub {other}: 127.0.0.1:{closed}: .*refused.*; no port: "):
        asyncio.run(peers.link(other))
    assert state.counters["hub_link_failures"] == 1
    with pytest.raises(Unavailable, match="is not a hub of this mesh any more"):
        asyncio.run(peers.link(pki.new_hub_id()))
