"""Built-in apps. Each is a `ztm.agent.apps.MeshApp` subclass; `BUILTIN_APPS` is what every endpoint runs."""

from __future__ import annotations

from ztm.agent.apps import MeshApp
from ztm.apps.appstore.app import AppStoreApp
from ztm.apps.cloud.app import CloudApp
from ztm.apps.files.app import FilesApp
from ztm.apps.proxy.app import ProxyApp
from ztm.apps.terminal.app import TerminalApp
from ztm.apps.tunnel.app import TunnelApp

BUILTIN_APPS: tuple[type[MeshApp], ...] = (TunnelApp, FilesApp, CloudApp, AppStoreApp, TerminalApp, ProxyApp)
