"""Process logging: a file in the data directory, stderr, and an in-memory ring that the APIs serve (`ztm log`).

Nothing secret is logged: keys, tokens and permits never pass through a log call.
"""

from __future__ import annotations

import collections
import logging
import sys
from pathlib import Path


class RingHandler(logging.Handler):
    """Keeps the last `size` formatted records for the log routes."""

    def __init__(self, size: int = 2000) -> None:
        super().__init__()
        self.lines: collections.deque[str] = collections.deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.handleError(record)

    def tail(self, n: int) -> list[str]:
        n = max(0, min(n, len(self.lines)))
        return list(self.lines)[len(self.lines) - n :]


_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup(log_file: Path | None, *, level: int = logging.INFO, stderr: bool = True) -> RingHandler:
    """Configure the root `ztm` logger once for a hub or agent process and return its ring."""
    logger = logging.getLogger("ztm")
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    formatter = logging.Formatter(_FORMAT)
    ring = RingHandler()
    ring.setFormatter(formatter)
    logger.addHandler(ring)
    if stderr:
        err = logging.StreamHandler(sys.stderr)
        err.setFormatter(formatter)
        logger.addHandler(err)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(formatter)
        logger.addHandler(fh)
    return ring
