"""A hub that lies in the hub list it sends its agents (tests/security/evil_hub_list.py, real processes, real TLS).

The list can name any address as a hub "of the agent's zone, online": the agent keeps at most 64 valid entries
(malformed ones are left out with a log line, a flood is cut), dials what it lists only to check its certificate
(a hub of *this* mesh, from *this* mesh's CA), so a lure to another mesh's hub gets nothing: the agent stays where it
is, and after its own hub dies it is never connected elsewhere, and it comes back when its hub does.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from integration.test_hub_list import MESH, hubs, metric, online
from integration.test_tunnel import agent_log
from support import free_port, holds_for, restart_hub, start_agent, start_hub, wait_until

EVIL_HUB_LIST = [sys.executable, str(Path(__file__).with_name("evil_hub_list.py"))]
"""`support.start_hub(program=...)`: the real hub, sending the hub list in `ZTM_EVIL_HUB_LIST` after every hello."""


def test_a_lying_hub_list_is_bounded_and_cannot_lure_the_agent_away(tmp_path: Path) -> None:
    foreign = start_hub(tmp_path, name="foreign")  # a real hub, of another mesh (another CA)
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there
    lure = {"id": "f" * 16, "zone": "zone-b", "addresses": [foreign.address], "online": True, "endpoints": 0}
    junk: list[Any] = [
        "not an object",
        {"id": "", "addresses": [dead]},
        {"id": "noport", "addresses": ["localhost"]},
        {"id": "badzone", "zone": "Zone B", "addresses": [dead]},
        {"id": "x" * 500, "addresses": [dead]},
        {"id": "weird", "addresses": [dead], "online": "yes"},
    ]
    flood = [{"id": f"flood{i:05d}", "addresses": [dead], "online": False} for i in range(5000)]
    lie = tmp_path / "hub-list.json"
    lie.write_text(json.dumps([lure, *junk, *flood]))
    hub = start_hub(tmp_path, program=EVIL_HUB_LIST, env={"ZTM_EVIL_HUB_LIST": str(lie)})
    a = start_agent(tmp_path, "a", extra=["--zone", "zone-b"])
    a.join(MESH, "alice", hub.permit)

    # The list arrived (the hubs event after the hello): cut at 64, the malformed entries left out with a log line.
    listed = wait_until(lambda: got if len(got := hubs(a)) > 1 else None, 10, "the agent to keep the hub list")
    ids = [h["id"] for h in listed]
    assert len(listed) == 64, len(listed)
    assert ids[1] == lure["id"] and all(i.startswith("flood") for i in ids[2:]), ids[:4]
    assert not {"noport", "badzone", "weird", ""} & set(ids)
    own = listed[0]
    assert own["connected"] is True and own["addresses"] == [hub.address], own
    logged = "ignored 6 malformed entries (an entry is not a JSON object); kept the first 64 hubs of a list of 5008"
    wait_until(lambda: logged in agent_log(a), 5, "the agent to log the junk and the cut")

    # The lure is "online in the agent's zone": after the dwell time the agent tries it, finds no hub of its mesh
    # there, and stays on its hub (same connection, same hub).
    since = own["since"]
    wait_until(lambda: "moving to a better hub failed" in agent_log(a), 20, "the agent to try the lure and refuse it")
    now = hubs(a)[0]
    assert now["connected"] is True and now["id"] == own["id"] and now["since"] == since, now
    assert metric(a, "ztm_agent_hub_moves_total") == 0

    # Its hub dies: the agent tries the list (the lure, the flood) and the permit, connects to none of them.
    hub.proc.kill9()
    wait_until(lambda: not online(a), 10, "the agent to notice the hub is gone")
    holds_for(lambda: not online(a), 3.0, "the agent stays offline (nothing in the list is a hub of its mesh)")
    assert a.proc.alive
    status, meshes = a.api("GET", "/api/meshes")
    [mesh] = [m for m in meshes if m["name"] == MESH]
    assert status == 200
    assert mesh["status"] == "error" and "\n" not in mesh["error"], mesh
    assert "Traceback" not in a.proc.output()

    # The hub comes back: the agent is back on it, by itself.
    restart_hub(hub)
    started = time.monotonic()
    wait_until(lambda: online(a), 15, "the agent to come back to its hub")
    print(f"\nback on the hub {time.monotonic() - started:.2f}s after it was ready again (the list held 64 entries)")
    assert hubs(a)[0]["id"] == own["id"] and hubs(a)[0]["connected"] is True
