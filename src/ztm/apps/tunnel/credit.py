"""Per tunnel, the time its relayed streams waited for the far end's flow-control credit.

A stream whose writes wait for credit is held back by the other side: normal for a while with a slow reader, a stall
if it never ends (issue 18). `ztm tunnel describe` shows `credit_wait_ms` (finished streams and running ones, so a
stall shows as a number that keeps growing) and `waiting_for_credit` (streams waiting right now); the agent's log
warns about a long wait while the hub is alive (`ztm.h2.Connection`).
"""

from __future__ import annotations

from collections import defaultdict

from ztm.agent.e2estream import E2EStream


class CreditWaits:
    """Relayed streams per tunnel key, and the credit waits of those that finished."""

    def __init__(self) -> None:
        self._done: defaultdict[str, float] = defaultdict(float)  # seconds, streams that finished
        self._live: defaultdict[str, set[E2EStream]] = defaultdict(set)

    def add(self, key: str, stream: E2EStream) -> None:
        self._live[key].add(stream)

    def remove(self, key: str, stream: E2EStream) -> None:
        live = self._live[key]
        live.discard(stream)
        if not live:
            del self._live[key]
        self._done[key] += stream.credit_wait

    def stats(self, key: str) -> dict[str, int]:
        live = self._live.get(key, set())
        seconds = self._done.get(key, 0.0) + sum(s.credit_wait for s in live)
        return {
            "credit_wait_ms": round(seconds * 1000),
            "waiting_for_credit": sum(1 for s in live if s.credit_waiting > 0),
        }
