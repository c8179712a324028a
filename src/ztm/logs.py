"""Process logging: a file in the data directory, stderr, and an in-memory ring that the APIs serve (`ztm log`).

Nothing secret is logged: keys, tokens and permits never pass through a log call. The log file is 0600 all the same
(it names peers, endpoints and addresses).
"""

from __future__ import annotations

import collections
import logging
import os
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


def _private(path: Path) -> None:
    """Create `path` readable by the owner only, or make an existing one so (an older version made it 0644)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


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
        log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private(log_file)
        fh = logging.FileHandler(log_file)
        fh.setFormatter(formatter)
        logger.addHandler(fh)
    return ring
