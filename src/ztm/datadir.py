"""The data directory of a hub or agent: created 0700, and made 0700 at every start.

Keys, tokens, the database, the logs and the agent's local socket live there; a directory that others may enter
would expose whatever a bug or an old version left readable. One that belongs to another OS user is refused.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from ztm.errors import BadInput

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
