"""What a command gets: its parsed arguments, resolved settings, an agent client and output helpers.

Printing rules: with `-o table` (default) messages go to stdout; with `-o json` stdout carries only the API's JSON and
messages go to stderr, so `ztm ... -o json | jq` always sees valid JSON.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ztm.addr import Address
from ztm.cli import output
from ztm.cli.client import AgentClient, segment
from ztm.cli.settings import DEFAULT_TIMEOUT, resolve_agent, resolve_mesh
from ztm.errors import BadInput, NotFound, ZtmError


class UnexpectedAnswer(ZtmError):
    """The agent answered valid JSON of the wrong shape (a version mismatch, or not a ztm agent)."""

    code = "unexpected_answer"


@dataclass(frozen=True)
class Command:
    """One entry of the command table: adding a command (or an app's CLI) is adding one of these."""

    name: str
    group: str
    synopsis: str
    """What follows `ztm` in the overview: `get mesh|hub|ep|app [NAME]`."""
    summary: str
    """One line for `ztm help`."""
    configure: Callable[[argparse.ArgumentParser], None]
    handler: Callable[[Context], int]
    description: str = ""
    examples: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()


@dataclass
class Context:
    args: argparse.Namespace
    parser: argparse.ArgumentParser
    commands: Sequence[Command]
    _client: AgentClient | None = field(default=None, init=False)
    _mesh: str | None = field(default=None, init=False)

    # ---- settings ----

    @property
    def json(self) -> bool:
        return bool(getattr(self.args, "output", "table") == "json")

    @property
    def timeout(self) -> float:
        return float(getattr(self.args, "timeout", DEFAULT_TIMEOUT))

    def agent(self) -> tuple[Address, str]:
        return resolve_agent(getattr(self.args, "agent", None))

    def client(self) -> AgentClient:
        if self._client is None:
            self._client = AgentClient(self.agent()[0], self.timeout)
        return self._client

    def explicit_mesh(self) -> str | None:
        return resolve_mesh(getattr(self.args, "mesh", None)).value

    def mesh(self) -> str:
        """The mesh to act on: named by --mesh / ZTM_MESH / saved default, else the agent's only mesh."""
        if self._mesh is None:
            self._mesh = self.explicit_mesh() or self._only_mesh()
        return self._mesh

    def _only_mesh(self) -> str:
        meshes = self.get_list("/api/meshes")
        names = sorted(str(m.get("name")) for m in meshes if isinstance(m.get("name"), str))
        address = self.client().address
        if not names:
            raise BadInput(
                f"the agent at {address} has not joined any mesh yet: "
                "join one with 'ztm join MESH --as NAME --permit FILE'"
            )
        if len(names) > 1:
            listed = ", ".join(output.clean(n) for n in names)
            raise BadInput(
                f"the agent at {address} has joined several meshes ({listed}): pass --mesh NAME, "
                "or save a default with 'ztm config --mesh NAME'"
            )
        return names[0]

    def mesh_path(self, *parts: str) -> str:
        """`/api/meshes/MESH/part/...` with every part quoted."""
        return "/".join(["/api/meshes", segment(self.mesh()), *(segment(p) for p in parts)])

    # ---- typed requests ----

    def get_list(self, path: str, **kwargs: Any) -> list[dict[str, Any]]:
        return expect_list(self.client().get(path, **kwargs), f"GET {path}")

    def get_obj(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return expect_obj(self.client().get(path, **kwargs), f"GET {path}")

    def local_mesh(self) -> dict[str, Any]:
        return self.get_obj(f"/api/meshes/{segment(self.mesh())}")

    def endpoint_not_found(self, name: str) -> ZtmError:
        """The 404 of an endpoint route, told apart from a mesh this agent has not joined."""
        try:
            self.local_mesh()
        except NotFound:
            return NotFound(f"this agent has not joined a mesh named {output.clean(self.mesh())}; see 'ztm get mesh'")
        return NotFound(f"no endpoint named {output.clean(name)} in mesh {output.clean(self.mesh())}; see 'ztm get ep'")

    # ---- output ----

    def print(self, text: str = "") -> None:
        sys.stdout.write(text + "\n")

    def note(self, text: str) -> None:
        """A message for people: stdout normally, stderr when stdout carries JSON."""
        (sys.stderr if self.json else sys.stdout).write(text + "\n")

    def warn(self, text: str) -> None:
        """A message for people that must stay off stdout (which carries data)."""
        sys.stderr.write(text + "\n")

    def print_json(self, value: object) -> None:
        sys.stdout.write(output.json_text(value) + "\n")


def expect_list(value: object, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise UnexpectedAnswer(f"unexpected answer to {what}: expected a list of objects; see 'ztm version'")
    return value


def expect_obj(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnexpectedAnswer(f"unexpected answer to {what}: expected a JSON object; see 'ztm version'")
    return value
