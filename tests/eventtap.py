"""`EventWatch`: an endpoint's event stream opened from a test with that endpoint's certificate files (a real
agent's, after a normal join), read in the background, to see exactly which events the hub sends that session
(PROTOCOL.md section 5). `headers` go on its `GET /api/events` (e.g. `ztm-events: watched`); the watch's `client`
(a `reliability.hubclient.HubClient`) makes the endpoint's other requests on the same connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reliability.hubclient import HubClient
from support import Hub
from ztm.version import E2E_VERSION


class EventWatch:
    """The event stream of the endpoint whose certificate files are in `mesh_dir`, read in the background: every
    event with the monotonic time it arrived. Heartbeats keep the session alive."""

    def __init__(self, hub: Hub, mesh_dir: Path, headers: Sequence[tuple[str, str]] = ()) -> None:
        self.client = HubClient(hub.address, mesh_dir)
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._tasks: list[asyncio.Future[None]] = []
        self.client.run(self._open([("ztm-e2e", E2E_VERSION), *headers]))

    async def _open(self, headers: list[tuple[str, str]]) -> None:
        stream = await self.client.conn.open_stream("GET", "/api/events", headers)
        status, _ = await asyncio.wait_for(stream.response(), 10)
        assert status == 200, f"GET /api/events answered {status}: {await stream.read_all()!r}"
        self._tasks = [asyncio.ensure_future(self._read(stream)), asyncio.ensure_future(self._beat())]

    async def _read(self, stream: Any) -> None:
        buffer = b""
        while chunk := await stream.read():
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            now = time.monotonic()
            self.events += [(now, json.loads(line)) for line in lines if line]

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(1)
            await self.client.conn.request("POST", "/api/heartbeat", body=b"{}", timeout=5)

    def of(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        return [(t, e) for t, e in list(self.events) if e.get("type") == kind]

    def about(self, ep_id: str) -> list[dict[str, Any]]:
        """The views of endpoint `ep_id` that `endpoint` events brought, oldest first."""
        return [e["ep"] for _t, e in self.of("endpoint") if e["ep"].get("id") == ep_id]

    def close(self) -> None:
        async def stop() -> None:
            for task in self._tasks:
                task.cancel()

        with contextlib.suppress(Exception):
            self.client.run(stop(), 5)
        self.client.close()
