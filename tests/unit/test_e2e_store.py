"""`ztm.e2e.SessionStore`: lookups, the bounds (8 per peer, a total), and that dropped sessions are closed."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from e2e_mesh import Mesh, handshake

from ztm.e2e import SESSION_MAX_AGE, E2EError, SessionStore


def test_store_bounds_and_lookups() -> None:
    mesh = Mesh()
    alice, bob, carol = mesh.creds("alice"), mesh.creds("bob"), mesh.creds("carol")
    at_bob = SessionStore(per_peer=8, total=10)
    at_alice = SessionStore()
    from_alice = []
    for _ in range(9):
        s_a, s_b = handshake(alice, bob)
        at_alice.add(s_a)
        at_bob.add(s_b)
        from_alice.append(s_b)
    assert len(at_bob) == 8
    assert at_bob.get(from_alice[0].id) is None and from_alice[0].closed  # the oldest of alice's went
    assert all(at_bob.get(s.id) is s for s in from_alice[1:])
    from_carol = [handshake(carol, bob)[1] for _ in range(3)]
    for s in from_carol:
        at_bob.add(s)
    assert len(at_bob) == 10 and at_bob.get(from_alice[1].id) is None and at_bob.get(from_alice[2].id) is not None
    now = s_a.peer.not_after - timedelta(hours=1)
    mono = time.monotonic()
    assert at_alice.for_peer(bob.ep_id, mono, now) is s_a  # the newest
    newest = from_alice[-1]
    assert at_bob.resume(newest.id, 1, mono, now) is newest
    with pytest.raises(E2EError) as e:
        at_bob.resume(newest.id, 1, mono, now)
    assert e.value.reason == "replay"
    assert at_bob.resume(newest.id, 2, newest.created + SESSION_MAX_AGE + 1, now) is None  # too old: UNKNOWN
    assert at_bob.resume(bytes(16), 1, mono, now) is None
    assert at_alice.resume(s_a.id, 1, mono, now) is None  # alice initiated it: never resumed at her end
    assert at_alice.for_peer(carol.ep_id, mono, now) is None
    assert at_bob.for_peer(alice.ep_id, mono, now) is None  # bob responded to those: not his to resume
    # a millisecond past the age: (created + MAX_AGE) - created can round to just under MAX_AGE in floating point
    assert at_alice.for_peer(bob.ep_id, s_a.created + SESSION_MAX_AGE + 0.001, now) is None
    at_alice.expire(s_a.created + SESSION_MAX_AGE + 0.001, now)
    assert len(at_alice) == 0 and s_a.closed
    at_bob.drop_peer(carol.ep_id)
    assert len(at_bob) == 7 and all(s.closed for s in from_carol)
