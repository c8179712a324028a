"""Built-in apps. Each is a `ztm.agent.apps.MeshApp` subclass; `BUILTIN_APPS` is what every endpoint runs."""

from __future__ import annotations

from ztm.agent.apps import MeshApp
from ztm.apps.tunnel.app import TunnelApp

BUILTIN_APPS: tuple[type[MeshApp], ...] = (TunnelApp,)
