"""`KeyedQueue`: work on keys (endpoint ids) done by a fixed number of workers, the latest request per key only.

A hub publishes an endpoint's presence to the store each time its session opens, closes or changes what it offers.
One task per change (as before) let a crowd of sessions take every store connection at once (enrolments then
waited past their deadline: "all 4 store connections stayed busy for 6 s"), and let two writes of one endpoint race
(online written after offline: the other hubs saw it online until the anti-entropy repaired it). Here a key asked
for again while it waits is not queued twice, and a key is never worked on by two workers at once: the worker that
takes it reads the current state, so the last write is always the latest state.

`put` and `take` are plain functions (no I/O); `run` is the worker loop around an async `work(key)`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("ztm.hub")


class KeyedQueue:
    def __init__(self) -> None:
        self._waiting: dict[str, None] = {}
        """Keys asked for and not taken yet, oldest first."""
        self._busy: set[str] = set()
        """Keys a worker is on."""
        self._wake = asyncio.Event()

    def put(self, key: str) -> None:
        """Work on `key` (again): once, after any work on it that is going on now."""
        self._waiting[key] = None
        self._wake.set()

    def take(self) -> str | None:
        """The oldest waiting key no worker is on (now marked busy), or None."""
        for key in self._waiting:
            if key not in self._busy:
                del self._waiting[key]
                self._busy.add(key)
                return key
        return None

    def done(self, key: str) -> None:
        self._busy.discard(key)
        if key in self._waiting:
            self._wake.set()  # asked for again meanwhile: another worker may take it now

    def __len__(self) -> int:
        return len(self._waiting)

    async def run(self, work: Callable[[str], Awaitable[None]]) -> None:
        """One worker: take keys and `work` on them, forever (start as many as may run at once)."""
        while True:
            key = self.take()
            if key is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                await work(key)
            except Exception:  # one key's failure must not stop the worker
                log.exception("work on %s failed", key)
            finally:
                self.done(key)
