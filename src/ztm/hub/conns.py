"""`Connections`: every live hub connection with the peer its verified certificate names, so that access ends when
it should rather than at the next handshake.

`HubState` closes the connections of an evicted user or of a revoked certificate the moment that happens (on every
CRL change), and each connection is closed when its certificate expires (a timer set when it is accepted). Requests
on a connection are re-checked as well (`HubState.check_peer`); this registry is what makes the hub hang up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ztm.hub.state import Peer

log = logging.getLogger("ztm.hub")


@dataclass
class _Live:
    peer: Peer
    close: Callable[[], None]
    expiry: asyncio.TimerHandle


class Connections:
    def __init__(self) -> None:
        self._live: dict[int, _Live] = {}

    def __len__(self) -> int:
        return len(self._live)

    def add(self, key: int, peer: Peer, close: Callable[[], None]) -> None:
        """Track an accepted connection; `close()` is called at the certificate's expiry unless it went before."""
        loop = asyncio.get_running_loop()
        expiry = loop.call_later(max(0.0, peer.not_after - time.time()), self._expired, key)
        self._live[key] = _Live(peer, close, expiry)

    def discard(self, key: int) -> None:
        """Forget a connection that closed."""
        live = self._live.pop(key, None)
        if live is not None:
            live.expiry.cancel()

    def peer(self, key: int) -> Peer | None:
        live = self._live.get(key)
        return live.peer if live is not None else None

    def close_where(self, condition: Callable[[Peer], bool], *, spare: Collection[int] = ()) -> int:
        """Close every connection whose peer meets `condition`, except those in `spare` (closed by their owner);
        returns how many were closed."""
        closed = 0
        for key, live in list(self._live.items()):
            if key not in spare and condition(live.peer):
                self.discard(key)
                live.close()
                closed += 1
        return closed

    def _expired(self, key: int) -> None:
        live = self._live.pop(key, None)
        if live is not None:
            log.info("closing a connection of %s: its certificate expired", live.peer.user)
            live.close()
