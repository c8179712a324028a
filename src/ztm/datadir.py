"""The data directory of a hub or agent: created 0700, and made 0700 at every start.

Keys, tokens, the database, the logs and the agent's local socket live there; a directory that others may enter
would expose whatever a bug or an old version left readable. One that belongs to another OS user is refused.
"""

from __future__ import annotations

import fcntl
import logging
import os
import stat
from pathlib import Path

from ztm.errors import BadInput, Conflict

log = logging.getLogger("ztm")


def prepare(path: Path) -> str | None:
    """Create `path` (0700) or make an existing one 0700. Returns a note when the mode was changed (to log once
    logging is set up); raises `BadInput` for a directory of another user or something that is not a directory."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise BadInput(f"the data directory {path} is not a directory: pick another with --data")
    if info.st_uid != os.geteuid():
        raise BadInput(
            f"the data directory {path} belongs to OS user id {info.st_uid}, not to you (uid {os.geteuid()}): "
            "run as its owner, or pick another with --data"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        path.chmod(0o700)
        return f"made the data directory {path} private (mode 0700; it was {mode:04o})"
    return None


_held: list[int] = []


def lock(path: Path, what: str, lock_path: Path | None = None) -> int:
    """Refuse to run beside another process serving the data directory `path`: an advisory lock on `lock_path`
    (default `path/lock`), held until the process exits. Returns the descriptor."""
    lock_path = lock_path or path / "lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise Conflict(
            f"another {what} is already running on {path} (lock {lock_path} is held); "
            f"stop it first, or give this one its own --data directory"
        ) from None
    _held.append(fd)
    return fd
