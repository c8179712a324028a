"""Built-in apps. Each is a `ztm.agent.apps.MeshApp` subclass; `builtin_apps()` is what every endpoint runs.

The app modules are imported on first use, not with this package: the CLI imports small sans-IO parts of apps (the
terminal's framing, the tunnel's specs) and must not pay for every app's runtime at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ztm.agent.apps import MeshApp


def builtin_apps() -> tuple[type[MeshApp], ...]:
    """The built-in apps, in the order `ztm get app` lists them."""
    from ztm.apps.appstore.app import AppStoreApp
    from ztm.apps.cloud.app import CloudApp
    from ztm.apps.files.app import FilesApp
    from ztm.apps.net.app import NetApp
    from ztm.apps.proxy.app import ProxyApp
    from ztm.apps.terminal.app import TerminalApp
    from ztm.apps.tunnel.app import TunnelApp

    return (TunnelApp, FilesApp, CloudApp, AppStoreApp, TerminalApp, ProxyApp, NetApp)
