"""`MeshSession` tells each app `on_online` only once the app has started: the hub's `hello` may come while the
session's apps are still starting (a loaded machine), and an app told then, before it had loaded its configuration,
acted on none of it (the proxy never resolved endpoint names stored by an older release:
tests/security/test_exits.py::test_names_stored_before_they_were_resolved_become_ids failed under load)."""

from __future__ import annotations

import asyncio
import types
from typing import Any

from ztm.agent.mesh import MeshSession


class SlowApp:
    def __init__(self, name: str, started: asyncio.Event | None) -> None:
        self.name = name
        self.started = started
        self.config_loaded = False
        self.online_with: list[bool] = []

    async def start(self) -> None:
        if self.started is not None:
            await self.started.wait()
        self.config_loaded = True

    async def on_online(self) -> None:
        self.online_with.append(self.config_loaded)


def session(apps: dict[str, Any]) -> MeshSession:
    s = MeshSession.__new__(MeshSession)
    s.apps = apps
    s._starting = set()
    s._hello = False
    s._peers_stale = False
    s._want_peers = False
    s.peers_changed = []
    s.peers = {}
    s.link = types.SimpleNamespace(events="watched")  # type: ignore[assignment]
    s.labels = []
    s.record = types.SimpleNamespace(name="m")  # type: ignore[assignment]
    s.gate = types.SimpleNamespace(policy=None, recheck=lambda: None)  # type: ignore[assignment]

    async def nothing() -> None:
        pass

    s.direct = types.SimpleNamespace(on_online=nothing)  # type: ignore[assignment]
    s._hub_list = lambda hubs: True  # type: ignore[method-assign]
    return s


def test_an_app_still_starting_at_hello_is_told_once_it_has_started() -> None:
    async def main() -> None:
        gate = asyncio.Event()
        fast, slow = SlowApp("tunnel", None), SlowApp("proxy", gate)
        s = session({"tunnel": fast, "proxy": slow})
        s._starting = set(s.apps)
        starting = asyncio.ensure_future(s._start_apps())
        await asyncio.sleep(0)  # tunnel started; proxy waits
        s._on_event({"type": "hello", "hub": {}})
        await asyncio.sleep(0.01)
        assert fast.online_with == [True] and slow.online_with == []
        gate.set()
        await starting
        await asyncio.sleep(0.01)
        assert slow.online_with == [True]  # told once it had its configuration
        s._on_event({"type": "hello", "hub": {}})  # a reconnection: everyone again
        await asyncio.sleep(0.01)
        assert fast.online_with == [True, True] and slow.online_with == [True, True]

    asyncio.run(main())


def test_an_app_started_later_is_told_at_every_hello() -> None:
    async def main() -> None:
        later = SlowApp("chat", None)
        s = session({})
        await s._start_apps()
        await later.start()
        s.apps["chat"] = later  # started by the app library (ztm app start) after the session began
        s._on_event({"type": "hello", "hub": {}})
        await asyncio.sleep(0.01)
        assert later.online_with == [True]

    asyncio.run(main())
