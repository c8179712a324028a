"""The compiled form of a policy: its `acls` as `Rule`s of `Src` and `Dst` matchers and its `tests` as `Check`s,
each remembering the line and column it was written at. Built by `ztm.policy.check`, used by `ztm.policy.model`."""

from __future__ import annotations

from dataclasses import dataclass

from ztm.policy.target import AppTarget, Part
from ztm.policy.who import Place, Subject


@dataclass(frozen=True)
class Src:
    """One `src` entry: `kind` "any" (`*`), "group" (`users` are its members), "tag", "name" (a user: never an
    endpoint name, which any member may choose at join) or "pair" (`USER@EP`: `user` and `ep`)."""

    text: str
    line: int
    column: int
    kind: str
    users: frozenset[str] = frozenset()
    user: str = ""
    ep: str = ""

    def matches(self, who: Subject) -> bool:
        kind = self.kind
        if kind == "any":
            return True
        if kind == "name":
            return who.user == self.text
        if kind == "group":
            return who.user in self.users
        if kind == "tag":
            return self.text in who.tags
        return who.user == self.user and who.ep == self.ep


@dataclass(frozen=True)
class Dst:
    """One `dst` entry, TARGET:APP-PART: `target` is "*", "tag:NAME" or an endpoint name; `part` the pattern."""

    text: str
    line: int
    column: int
    target: str
    part: Part

    def reaches(self, where: Place) -> bool:
        """True if this entry's TARGET names `where`."""
        target = self.target
        if target == "*":
            return True
        if target.startswith("tag:"):
            return target in where.tags
        return where.ep == target

    def matches(self, where: Place, what: AppTarget) -> bool:
        return self.reaches(where) and self.part.matches(what)


@dataclass(frozen=True)
class Rule:
    """`acls[index]`, written at `line`: accept from any of `srcs` to any of `dsts`."""

    index: int
    line: int
    srcs: tuple[Src, ...]
    dsts: tuple[Dst, ...]

    def describe(self, srcs: tuple[Src, ...] | list[Src], dsts: tuple[Dst, ...] | list[Dst]) -> str:
        """'acls[0]: accept group:ops -> tag:db:tunnel/tcp/pg' for the given entries of this rule."""
        return f"acls[{self.index}]: accept {', '.join(s.text for s in srcs)} -> {', '.join(d.text for d in dsts)}"


@dataclass(frozen=True)
class Check:
    """One entry of a test's `accept` (`accept` True) or `deny` list: from the test's `src` to `target` at the
    endpoint or tag `place`, written at `line`, `column` as `text`."""

    line: int
    column: int
    src: str
    text: str
    place: str
    target: AppTarget
    accept: bool
