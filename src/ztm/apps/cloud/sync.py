"""The mirror's decision for one file, as a pure function: compare the local copy, the mesh copy and the state both
had at the last sync (the base), and say what to do.

- same content on both sides: nothing (the base is brought up to date);
- only one side has it: copy it over (deletions are not mirrored: a file deleted on one side comes back from the
  other, so nothing is ever lost);
- one side changed since the base: copy that side over;
- both changed (or there is no base yet): the newer modification time wins.
A direction that is off turns its copy into nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Action(Enum):
    NOTHING = "nothing"
    UPLOAD = "upload"
    DOWNLOAD = "download"


@dataclass(frozen=True)
class Side:
    hash: str
    time: float


def decide(local: Side | None, mesh: Side | None, base: str | None, *, upload: bool, download: bool) -> Action:
    if local is None and mesh is None:
        return Action.NOTHING
    if local is not None and mesh is not None and local.hash == mesh.hash:
        return Action.NOTHING
    if mesh is None:
        wanted = Action.UPLOAD
    elif local is None:
        wanted = Action.DOWNLOAD
    else:
        local_changed = base is None or local.hash != base
        mesh_changed = base is None or mesh.hash != base
        if local_changed and not mesh_changed:
            wanted = Action.UPLOAD
        elif mesh_changed and not local_changed:
            wanted = Action.DOWNLOAD
        else:
            wanted = Action.UPLOAD if local.time > mesh.time else Action.DOWNLOAD
    if wanted is Action.UPLOAD and not upload:
        return Action.NOTHING
    if wanted is Action.DOWNLOAD and not download:
        return Action.NOTHING
    return wanted
