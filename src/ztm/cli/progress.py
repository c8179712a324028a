"""A progress bar for long transfers, drawn on stderr only when stderr is a terminal (nothing when piped), redrawn
at most ten times a second: `label  [#########-----------]  45%  12.0 MiB / 27.0 MiB  5.1 MiB/s`."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ztm.cli import output

WIDTH = 24
REDRAW = 0.1


class Bar:
    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label = output.clean(label)
        self.total = max(0, total)
        self.stream = stream or sys.stderr
        self.shown = _is_tty(self.stream)
        self.started = time.monotonic()
        self._drawn = 0.0
        self.done = 0

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = max(0, total)
        self.done = done
        now = time.monotonic()
        if self.shown and now - self._drawn >= REDRAW:
            self._drawn = now
            self._draw(now)

    def render(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        fraction = 1.0 if self.total == 0 else min(1.0, self.done / self.total)
        filled = int(fraction * WIDTH)
        rate = self.done / max(now - self.started, 1e-6)
        return (
            f"{self.label}  [{'#' * filled}{'-' * (WIDTH - filled)}]  {fraction * 100:3.0f}%  "
            f"{output.human_bytes(self.done)} / {output.human_bytes(self.total)}  {output.human_rate(rate)}"
        )

    def _draw(self, now: float) -> None:
        self.stream.write("\r" + self.render(now) + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        """Leave the terminal line clean (the caller prints the outcome)."""
        if self.shown:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.shown = False


def _is_tty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
