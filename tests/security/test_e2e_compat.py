"""Agents of the previous release (no end-to-end layer) and new ones meet through a new hub (issue 13, item 5).

The previous release's agent is played by a raw hub client holding a real endpoint's certificate (`HubClient`): it
speaks exactly what that release spoke: an event stream and app streams without the `ztm-e2e` header, plaintext
stream bytes, and relayed calls through the hub's `call` events. Each side must get a clear refusal that names the
release to upgrade to, quickly: not a hang, and never plaintext.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from reliability.hubclient import HubClient
from support import Agent, invite, one_line_error, start_hub_and_agents, wait_until
from ztm.version import E2E_SINCE


def _old_agent(agent: Agent, hub_address: str) -> HubClient:
    """`agent`'s endpoint, now driven as the previous release would (the real agent is stopped first)."""
    agent.proc.stop()
    client = HubClient(hub_address, agent.data / "meshes" / "m")

    async def events() -> None:  # the old release's event stream: no ztm-e2e header
        stream = await client.conn.open_stream("GET", "/api/events")
        status, _ = await stream.response()
        assert status == 200
        await stream.read()  # hello

    client.run(events())
    return client


def test_old_and_new_agents_are_refused_with_the_release_to_upgrade_to(tmp_path: Path) -> None:
    hub, agents = start_hub_and_agents(tmp_path, ["alice", "bob"])
    alice, bob = agents["alice"], agents["bob"]
    alice.join("m", "alice-pc", hub.permit)
    bob.join("m", "bob-pc", invite(alice, bob, "bob", tmp_path / "bob.json"))
    echo = alice.cli("tunnel", "open", "outbound", "tcp/echo", "--targets", "127.0.0.1:9")
    assert echo.returncode == 0, echo.stderr
    alice_id = next(e["id"] for e in alice.endpoints() if e["name"] == "alice-pc")
    old = _old_agent(bob, hub.address)
    try:
        wait_until(lambda: "bob-pc" in alice.online_names(), 10, "the old bob online")

        # an old entrance opening a plaintext stream to a new exit: refused by the hub, naming the release
        async def plaintext_stream() -> tuple[int, bytes]:
            stream = await old.conn.open_stream(
                "CONNECT", alice_id, [("ztm-app", "tunnel"), ("ztm-service", "tcp/echo")]
            )
            status, _ = await asyncio.wait_for(stream.response(), 10)
            return status, await stream.read_all()

        start = time.monotonic()
        status, body = old.run(plaintext_stream())
        assert status == 409, body
        message = json.loads(body)["error"]
        assert f"upgrade it to ztm {E2E_SINCE}" in message and "alice-pc" in message, message
        assert time.monotonic() - start < 5

        # an old agent's relayed call carrying data (the log) to a new endpoint: refused, naming the release
        status, answer = old.json("POST", f"/api/endpoints/{alice_id}/call", {"method": "log", "params": {}})
        assert status in (200, 403), answer
        text = json.dumps(answer)
        assert "end-to-end" in text and E2E_SINCE in text and "lines" not in text, answer
        # ping carries nothing and permits nothing: still answered
        status, answer = old.json("POST", f"/api/endpoints/{alice_id}/call", {"method": "ping", "params": None})
        assert status == 200 and "time" in json.dumps(answer), answer

        # a new agent calling the old one: one line naming the release, within the call's time
        start = time.monotonic()
        res = alice.cli("log", "ep", "bob-pc", check=False)
        assert res.returncode != 0
        line = one_line_error(res)
        assert f"upgrade it to ztm {E2E_SINCE}" in line and "without end-to-end encryption" in line, line
        assert time.monotonic() - start < 10
    finally:
        old.close()
