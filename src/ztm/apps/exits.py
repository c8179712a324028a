"""Which exits an entrance may use, for the tunnel and the proxy alike (data only, no I/O).

An exit is an entry of the hub's service registry (`GET /api/services`): `ep`, `name` and `user`, where `user` is
the user of the announcing endpoint's certificate as the hub enrolled it, never a claim of the endpoint. Any member
may offer any tunnel name or proxy target, so an entrance that took every exit would hand its connections (and
their bytes) to whichever member offers the same name. The rule:

* by default an entrance uses only exits of its own user or of root;
* `exit_users` adds users whose exits it uses too;
* `exits` names endpoints (ids, resolved when configured): then exactly those are used, in that order, whoever owns
  them, and `exit_users` is not used (an entrance gives one or the other).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ztm import epref
from ztm.errors import BadInput

ROOT = "root"


@dataclass(frozen=True)
class ExitPolicy:
    user: str
    """The entrance endpoint's own user."""
    exits: tuple[str, ...] = ()
    exit_users: tuple[str, ...] = ()

    def rank(self, ep: str, name: str, user: str) -> int | None:
        """None if the entrance may not use this exit; else its place in the order (0 unless `exits` pins it)."""
        if self.exits:
            for i, ref in enumerate(self.exits):
                if epref.matches(ref, ep, name):
                    return i
            return None
        return 0 if user in (self.user, ROOT, *self.exit_users) else None

    def allows(self, entry: dict[str, Any]) -> bool:
        return self.rank(str(entry.get("ep")), str(entry.get("name")), str(entry.get("user"))) is not None

    def choose(self, found: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The entries of `found` this entrance may use: pinned ones in pin order, others as they came."""
        ranked = [
            (r, e)
            for e in found
            if (r := self.rank(str(e.get("ep")), str(e.get("name")), str(e.get("user")))) is not None
        ]
        return [e for _, e in sorted(ranked, key=lambda r: r[0])]


def check_choice(exits: tuple[str, ...], exit_users: tuple[str, ...]) -> None:
    """An entrance pins `exits` or widens `exit_users`, not both."""
    if exits and exit_users:
        raise BadInput(
            "give exits (use exactly these endpoints) or exit_users (also use exits of these users), not both"
        )
