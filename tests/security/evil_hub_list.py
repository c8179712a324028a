"""A hostile hub for the hub-list tests: the real `ztm run hub`, patched at startup to lie in the hub list it sends.

Run it as `python tests/security/evil_hub_list.py run hub ...` (`support.start_hub(..., program=EVIL_HUB_LIST)`).
`ZTM_EVIL_HUB_LIST` names a JSON file holding a list of entries (any JSON: the attack is what the agent must survive).
The `hello` event's `hub.hubs` describes this hub alone (online, zone `ZTM_EVIL_HUB_ZONE`, default none); right after
the `hello`, a `hubs` event sends this hub's entry followed by the file's entries. Each time it logs one line
`evil hub: ...`, so a failure report shows that it acted. Nothing in `src/` knows about it.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ztm.hub import state as hubstate

log = logging.getLogger("ztm.hub")


def install(path: Path, zone: str) -> None:
    entries = json.loads(path.read_text())
    status = hubstate.HubState.status
    push = hubstate.Session.push

    def own(self: hubstate.HubState) -> dict[str, Any]:
        names = [str(a) for a in self.authority.names]
        return {"id": self.authority.hub_id, "zone": zone, "addresses": names, "online": True, "endpoints": 1}

    def lying_status(self: hubstate.HubState) -> dict[str, Any]:
        view = status(self)
        view["zone"] = zone
        view["hubs"] = [own(self)]
        return view

    def push_then_lie(self: hubstate.Session, event: dict[str, Any]) -> None:
        push(self, event)
        if event.get("type") == "hello":
            hub = event["hub"]
            mine = {"id": hub["hub_id"], "zone": zone, "addresses": hub["names"], "online": True, "endpoints": 1}
            push(self, {"type": "hubs", "hubs": [mine, *entries]})
            log.warning("evil hub: sent endpoint %s a hub list of %d entries", self.ep_id, len(entries) + 1)

    hubstate.HubState.status = lying_status  # type: ignore[method-assign]
    hubstate.Session.push = push_then_lie  # type: ignore[method-assign]


def main() -> int:
    path = os.environ.get("ZTM_EVIL_HUB_LIST", "")
    try:
        install(Path(path), os.environ.get("ZTM_EVIL_HUB_ZONE", ""))
    except (OSError, ValueError) as exc:
        print(f"evil_hub_list: ZTM_EVIL_HUB_LIST={path!r}: {exc}", file=sys.stderr)
        return 2
    from ztm.cli.main import main as ztm_main

    return ztm_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
