"""Connections counted by the path they took, for the tunnel and the proxy (sans-IO: counters in, views out).

A stream's `path` (`E2EStream.path`) says how it reached the peer: "relay" (through the hub), "direct" (the peer's
`--direct` listener), and for punched channels "lan" or "punched". Each connection an app opens or accepts is
counted once, where the stream is opened or accepted, in its `Counter` under `KEY:path_PATH`; `view` turns those
into the `paths` object of `ztm tunnel describe` and the proxy's view, `shown` into the "paths" column
(`relay 3, direct 2`), and the agent's /api/metrics exports them as `ztm_agent_app_streams_by_path`.

The older counters keep their meaning: `KEY:direct` counts connections that did not go through the hub (any path
but "relay"), `KEY:e2e` the relayed ones (sealed end to end: the hub sees ciphertext).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

PATHS = ("relay", "direct", "lan", "punched")
"""The paths every `paths` object lists, zero or not, in this order (a new kind of path is added here)."""
PREFIX = "path_"
"""Counter keys `KEY:path_PATH`."""


def count(counters: Counter[str], key: str, path: str) -> None:
    """One connection of `key` on `path`."""
    counters[f"{key}:{PREFIX}{path}"] += 1
    counters[f"{key}:{'e2e' if path == 'relay' else 'direct'}"] += 1


def view(counters: Counter[str], *keys: str) -> dict[str, int]:
    """`{"relay": n, "direct": n, "lan": n, "punched": n}`, summed over `keys`."""
    return {path: sum(counters[f"{key}:{PREFIX}{path}"] for key in keys) for path in PATHS}


def shown(paths: Any) -> str:
    """`relay 3, direct 2`: the paths that carried connections, in `PATHS` order; "none" when none did."""
    if not isinstance(paths, dict):
        return "-"
    parts = [f"{path} {n}" for path, n in paths.items() if isinstance(n, int) and not isinstance(n, bool) and n > 0]
    return ", ".join(parts) or "none"
