"""The CLI's defaults: `--agent` and `--mesh` from the flag, the environment, or `~/.ztm/cli.json` (`ztm config`).

Each resolved value remembers where it came from, so `ztm config` can explain it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ztm.addr import Address
from ztm.config import DEFAULT_AGENT_LISTEN
from ztm.errors import BadInput

ENV_AGENT = "ZTM_AGENT"
ENV_MESH = "ZTM_MESH"
KEYS = ("agent", "mesh")
DEFAULT_TIMEOUT = 10.0


def config_path() -> Path:
    """Where `ztm config` saves the defaults of this OS user."""
    return Path.home() / ".ztm" / "cli.json"


def load_saved() -> dict[str, str]:
    """The saved defaults; an absent file is no defaults, an unreadable one an error naming it."""
    path = config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise BadInput(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise BadInput(f"{path} is not JSON: fix or delete it, then run 'ztm config' again") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path} is not a JSON object: fix or delete it, then run 'ztm config' again")
    return {k: v for k, v in data.items() if k in KEYS and isinstance(v, str) and v}


def save(updates: dict[str, str | None]) -> Path:
    """Set (a string) or remove (None) saved defaults; returns the file written."""
    saved = load_saved()
    for key, value in updates.items():
        if value is None:
            saved.pop(key, None)
        else:
            saved[key] = value
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(saved, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path


@dataclass(frozen=True)
class Resolved:
    """A setting's value and where it came from (`--agent`, `env ZTM_AGENT`, `~/.ztm/cli.json`, `default`)."""

    value: str | None
    source: str


def parse_agent(text: str, what: str) -> Address:
    """An agent address as users type it; a bare port means 127.0.0.1."""
    return Address.parse(text, default_host="127.0.0.1", what=what)


def resolve_agent(flag: str | None) -> tuple[Address, str]:
    """The agent to talk to, and the source of that choice."""
    if flag:
        return parse_agent(flag, "--agent"), "--agent"
    env = os.environ.get(ENV_AGENT)
    if env:
        return parse_agent(env, ENV_AGENT), f"env {ENV_AGENT}"
    saved = load_saved().get("agent")
    if saved:
        return parse_agent(saved, f"agent in {config_path()}"), str(config_path())
    return DEFAULT_AGENT_LISTEN, "default"


def resolve_mesh(flag: str | None) -> Resolved:
    """The mesh named by flag, environment or saved default; value None means "pick the agent's only mesh"."""
    if flag:
        return Resolved(flag, "--mesh")
    env = os.environ.get(ENV_MESH)
    if env:
        return Resolved(env, f"env {ENV_MESH}")
    saved = load_saved().get("mesh")
    if saved:
        return Resolved(saved, str(config_path()))
    return Resolved(None, "not set: the agent's only mesh is used")
