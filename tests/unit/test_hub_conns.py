"""`ztm.hub.conns.Connections`: closing connections by peer (eviction, revocation), sparing the ones a session
closes itself, and closing each at its certificate's expiry."""

from __future__ import annotations

import asyncio
import time

from ztm.hub.conns import Connections
from ztm.hub.state import Peer


def peer(user: str, serial: int, *, lasts: float = 3600.0) -> Peer:
    return Peer(user=user, ep_id=None, serial=serial, not_after=time.time() + lasts, address=None)


def test_close_where_closes_matching_connections_but_the_spared() -> None:
    async def main() -> None:
        conns = Connections()
        closed: list[int] = []
        for key, (user, serial) in enumerate([("bob", 1), ("bob", 2), ("alice", 3), ("bob", 4)]):
            conns.add(key, peer(user, serial), lambda k=key: closed.append(k))
        assert conns.close_where(lambda p: p.user == "bob", spare={3}) == 2
        assert sorted(closed) == [0, 1]
        assert conns.peer(0) is None and conns.peer(3) is not None and len(conns) == 2
        assert conns.close_where(lambda p: p.serial in {3}) == 1
        assert sorted(closed) == [0, 1, 2]

    asyncio.run(main())


def test_a_connection_is_closed_at_its_certificates_expiry_unless_it_went_before() -> None:
    async def main() -> None:
        conns = Connections()
        closed: list[str] = []
        conns.add(1, peer("bob", 1, lasts=0.05), lambda: closed.append("expired"))
        conns.add(2, peer("bob", 2, lasts=0.05), lambda: closed.append("discarded"))
        conns.discard(2)  # it closed by itself: its timer must not fire
        deadline = time.monotonic() + 5
        while not closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)
        assert closed == ["expired"] and len(conns) == 0

    asyncio.run(main())
