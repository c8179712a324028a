"""`ztm.hub.limits.PendingCounts` and the event queue's byte budget (`ztm.hub.state.Session`), without a network."""

from __future__ import annotations

import asyncio

import pytest

from ztm.errors import Unavailable
from ztm.hub import limits
from ztm.hub.limits import PendingCounts
from ztm.hub.state import Session, encode_event


def test_pending_counts_cap_each_caller_and_each_target() -> None:
    counts = PendingCounts("streams", per_caller=2, per_target=3)
    counts.reserve("a", "t", "target")
    counts.reserve("a", "t", "target")
    with pytest.raises(Unavailable, match="this endpoint already has 2 streams waiting"):
        counts.reserve("a", "t", "target")
    counts.reserve("b", "t", "target")
    with pytest.raises(Unavailable, match="endpoint 'target' already has 3 streams waiting for it"):
        counts.reserve("c", "t", "target")
    counts.reserve("c", "u", "other")  # another target is not affected
    counts.release("a", "t")
    counts.reserve("c", "t", "target")
    for caller in ("a", "b", "c"):
        counts.release(caller, "t")
    counts.release("c", "u")
    assert counts.callers == {} and counts.targets == {}


def _session(closed: list[bool]) -> Session:
    return Session(ep_id="ep", user="u", close_connection=lambda: closed.append(True), address=None, cert_not_after=0)


def test_peers_events_stop_at_their_share_and_never_end_the_session() -> None:
    async def go() -> None:
        closed: list[bool] = []
        session = _session(closed)
        event = {"type": "call", "id": "x", "params": "p" * 1000}
        size = len(encode_event(event))
        taken = 0
        while session.offer(event):
            taken += 1
        assert taken == limits.PEER_EVENT_BYTES // size
        assert not session.closed and not closed
        assert session.queued_bytes == taken * size
        items = await session.take(10)
        assert len(items) == 10 and session.queued_bytes == (taken - 10) * size
        assert session.offer(event)  # room again once the endpoint read some

    asyncio.run(go())


def test_an_endpoint_that_lets_its_own_events_pile_up_past_the_budget_is_ended() -> None:
    async def go() -> None:
        closed: list[bool] = []
        session = _session(closed)
        line = encode_event({"type": "endpoint", "ep": "x" * 10000})
        for _ in range(limits.EVENT_QUEUE_BYTES // len(line)):
            session.push_line("endpoint", line)
        assert not session.closed and not closed
        session.push_line("endpoint", line)
        assert session.closed and closed == [True]
        items = await session.take(1 << 20)
        assert items[-1] is None and session.queued_bytes == 0

    asyncio.run(go())


def test_a_waiting_endpoint_event_is_replaced_by_a_newer_one_of_the_same_endpoint() -> None:
    async def go() -> None:
        session = _session([])
        first = encode_event({"type": "endpoint", "ep": {"id": "a", "labels": []}})
        for i in range(10_000):
            session.push_line("endpoint", encode_event({"type": "endpoint", "ep": {"id": "a", "labels": [str(i)]}}),
                              "endpoint/a")  # fmt: skip
        session.push_line("endpoint", first, "endpoint/b")
        session.push_line("crl", b'{"type":"crl"}\n')
        newest = encode_event({"type": "endpoint", "ep": {"id": "a", "labels": ["9999"]}})
        assert session.queued_bytes == len(newest) + len(first) + len(b'{"type":"crl"}\n')
        items = await session.take(100)
        assert items == [("endpoint", newest), ("endpoint", first), ("crl", b'{"type":"crl"}\n')]
        assert session.queued_bytes == 0 and not session.latest

    asyncio.run(go())
