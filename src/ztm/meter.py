"""Byte rates over a sliding window, from cumulative counters sampled over time."""

from __future__ import annotations

import collections
import time

WINDOW = 5.0


class RateMeter:
    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._samples: dict[str, collections.deque[tuple[float, int, int]]] = {}

    def sample(self, key: str, sent: int, received: int, now: float | None = None) -> tuple[float, float]:
        """Record the counters of `key` and return (send, receive) bytes per second over the window."""
        now = time.monotonic() if now is None else now
        samples = self._samples.setdefault(key, collections.deque())
        samples.append((now, sent, received))
        while len(samples) > 2 and now - samples[1][0] >= self.window:
            samples.popleft()
        t0, s0, r0 = samples[0]
        elapsed = now - t0
        if elapsed <= 0:
            return 0.0, 0.0
        return max(0.0, (sent - s0) / elapsed), max(0.0, (received - r0) / elapsed)
