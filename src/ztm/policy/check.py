"""From a parsed HuJSON tree to a checked, compiled policy (`Spec`), or a `PolicyError` at the first thing wrong.

The checks: only the known keys at each level (an unknown key is an error, never ignored), the right type for each
value, "accept" as the only action, every `group:` and `tag:` used is defined (groups in `groups`, tags in
`tagOwners`), groups hold users only (no nesting), every `src`, `dst` and test entry is one of the accepted forms.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ztm import validate
from ztm.errors import BadInput
from ztm.policy.errors import PolicyError
from ztm.policy.hujson import Node, kind_name
from ztm.policy.rules import Check, Dst, Rule, Src
from ztm.policy.target import PartError, parse_app_target, parse_part
from ztm.policy.who import GROUP, TAG, parse_subject

TOP_KEYS = ("groups", "tagOwners", "acls", "tests", "admins")
ACL_KEYS = ("action", "src", "dst")
TEST_KEYS = ("src", "accept", "deny")
HINTS = {
    "users": "Tailscale's old 'users' is 'src' here",
    "ports": "Tailscale's old 'ports' is 'dst' here",
    "proto": "ztm has no 'proto': write tunnel/tcp/NAME or tunnel/udp/NAME in dst",
    "hosts": "ztm has no 'hosts': name endpoints, tags or proxy/HOST:PORT in dst",
    "ssh": "ztm's terminal is the dst part 'terminal'",
    "grants": "ztm has no 'grants': write acls",
}
"""Hints for keys of Tailscale's policy file that ztm does not take (the policy of a Tailscale user moving over)."""
T = TypeVar("T")


@dataclass(frozen=True)
class Spec:
    """A checked policy: group members, tag owners (users and groups as written), admins, rules and test checks."""

    groups: dict[str, frozenset[str]]
    tag_owners: dict[str, frozenset[str]]
    admins: frozenset[str]
    rules: tuple[Rule, ...]
    checks: tuple[Check, ...]
    tests: int


def _error(node: Node, what: str) -> PolicyError:
    return PolicyError(node.line, node.column, what)


def _show(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")


def _members(node: Node, where: str, known: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Node]:
    """The members of the object `node`, by key; PolicyError for a non-object, an unknown key or a missing one."""
    if node.kind != "object":
        raise _error(node, f"{where} must be an object {{...}}, not {kind_name(node.kind)}")
    found: dict[str, Node] = {}
    for key, value in node.members:
        if key.text not in known:
            close = difflib.get_close_matches(key.text, known, n=1) if len(key.text) < 40 else []
            hint = f"{HINTS[key.text]}; " if key.text in HINTS else f"did you mean {close[0]!r}? " if close else ""
            raise _error(key, f"unknown key {_show(key.text)} in {where} ({hint}known: {', '.join(known)})")
        found[key.text] = value
    for name in required:
        if name not in found:
            raise _error(node, f"{where} has no {name!r}: add it (it needs {', '.join(required)})")
    return found


def _strings(node: Node, where: str, example: str, *, empty: bool = True) -> list[Node]:
    if node.kind != "array":
        raise _error(node, f"{where} must be an array of strings such as {example}, not {kind_name(node.kind)}")
    if not empty and not node.items:
        raise _error(node, f"{where} is empty: list at least one entry such as {example}")
    for item in node.items:
        if item.kind != "string":
            raise _error(item, f"{where} holds strings such as {example}, not {kind_name(item.kind)}")
    return node.items


def _user(node: Node, where: str) -> str:
    if not validate.USER.fullmatch(node.text):
        raise _error(
            node,
            f"{_show(node.text)} in {where} is not a user name: use lowercase letters, digits, '.', '_' or '-'"
            + (" (groups cannot contain groups: list the users)" if node.text.startswith("group:") else ""),
        )
    return node.text


def load_spec(root: Node) -> Spec:
    """The checked policy of the parsed text `root`; PolicyError at the first problem."""
    top = _members(root, "the top level", TOP_KEYS)
    groups = _groups(top["groups"]) if "groups" in top else {}
    owners = _tag_owners(top["tagOwners"], groups) if "tagOwners" in top else {}
    admins = (
        frozenset(_user(n, "admins") for n in _strings(top["admins"], "admins", '["alice"]'))
        if "admins" in top
        else frozenset()
    )
    rules = _acls(top["acls"], groups, owners) if "acls" in top else ()
    checks, tests = _tests(top["tests"], owners) if "tests" in top else ((), 0)
    return Spec(groups, owners, admins, rules, checks, tests)


def _groups(node: Node) -> dict[str, frozenset[str]]:
    if node.kind != "object":
        raise _error(node, f'groups must be an object such as {{"group:ops": ["ops1"]}}, not {kind_name(node.kind)}')
    groups: dict[str, frozenset[str]] = {}
    for key, value in node.members:
        if not GROUP.fullmatch(key.text):
            raise _error(key, f"group name {_show(key.text)} must be group:NAME (NAME: letters, digits, '.', '_', '-')")
        users = _strings(value, key.text, '["ops1", "ops2"]')
        groups[key.text] = frozenset(_user(n, key.text) for n in users)
    return groups


def _tag_owners(node: Node, groups: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    if node.kind != "object":
        raise _error(node, f'tagOwners must be an object such as {{"tag:db": ["root"]}}, not {kind_name(node.kind)}')
    owners: dict[str, frozenset[str]] = {}
    for key, value in node.members:
        if not TAG.fullmatch(key.text):
            raise _error(
                key,
                f"tag {_show(key.text)} must be tag:NAME (NAME: letters, digits, '.', '_', '-'; 63 characters in all)",
            )
        found: set[str] = set()
        for item in _strings(value, key.text, '["root", "group:ops"]'):
            if item.text.startswith("group:"):
                _group(item, groups)
                found.add(item.text)
            else:
                found.add(_user(item, f"the owners of {key.text}"))
        owners[key.text] = frozenset(found)
    return owners


def _group(node: Node, groups: dict[str, frozenset[str]]) -> frozenset[str]:
    if node.text not in groups:
        raise _error(node, f'{_show(node.text)} is not defined: add it to "groups" or fix the name')
    return groups[node.text]


def _tag(node: Node, text: str, owners: dict[str, frozenset[str]]) -> str:
    if not TAG.fullmatch(text):
        raise _error(node, f"tag {_show(text)} must be tag:NAME (NAME: letters, digits, '.', '_', '-')")
    if text not in owners:
        raise _error(node, f'tag {_show(text)} is not defined: add it to "tagOwners" (who may give it) or fix the name')
    return text


def _acls(node: Node, groups: dict[str, frozenset[str]], owners: dict[str, frozenset[str]]) -> tuple[Rule, ...]:
    if node.kind != "array":
        raise _error(node, f'acls must be an array of rules [{{"action": "accept", ...}}], not {kind_name(node.kind)}')
    rules: list[Rule] = []
    for index, item in enumerate(node.items):
        where = f"acls[{index}]"
        fields = _members(item, where, ACL_KEYS, ACL_KEYS)
        action = fields["action"]
        if action.kind != "string" or action.text != "accept":
            shown = _show(action.text) if action.kind == "string" else kind_name(action.kind)
            raise _error(
                action,
                f'action {shown} is not allowed: the only action is "accept" (what no rule accepts is denied, so '
                "leave out what must be denied)",
            )
        srcs = tuple(
            _src(n, groups, owners) for n in _strings(fields["src"], f"{where}.src", '["group:ops"]', empty=False)
        )
        dsts = tuple(
            _dst(n, owners) for n in _strings(fields["dst"], f"{where}.dst", '["tag:db:tunnel/tcp/pg"]', empty=False)
        )
        rules.append(Rule(index, item.line, srcs, dsts))
    return tuple(rules)


def _src(node: Node, groups: dict[str, frozenset[str]], owners: dict[str, frozenset[str]]) -> Src:
    text = node.text
    if text == "*":
        return Src(text, node.line, node.column, "any")
    if text.startswith("group:"):
        return Src(text, node.line, node.column, "group", users=_group(node, groups))
    if text.startswith("tag:"):
        return Src(_tag(node, text, owners), node.line, node.column, "tag")
    user, at, ep = text.partition("@")
    if at:
        if not validate.USER.fullmatch(user) or not validate.NAME.fullmatch(ep):
            raise _error(node, f"src {_show(text)}: USER@ENDPOINT needs a user name and an endpoint name")
        return Src(text, node.line, node.column, "pair", user=user, ep=ep)
    if validate.NAME.fullmatch(text):
        return Src(text, node.line, node.column, "name")
    raise _error(
        node,
        f"src {_show(text)} is not one of: *, group:NAME, tag:NAME, a user or endpoint name, USER@ENDPOINT",
    )


def _split_target(node: Node, text: str) -> tuple[str, str]:
    """TARGET and APP-PART of "TARGET:APP-PART" (a tag's own ':' is part of TARGET)."""
    start = text.find(":", 4) if text.startswith("tag:") else text.find(":")
    if start < 0:
        raise _error(
            node,
            f"{_show(text)} has no ':': write TARGET:APP-PART, TARGET an endpoint name, tag:NAME or * "
            "(e.g. tag:db:tunnel/tcp/pg or build-01:terminal)",
        )
    return text[:start], text[start + 1 :]


def _target_name(node: Node, target: str, owners: dict[str, frozenset[str]], *, star: bool) -> str:
    if target == "*" and star:
        return target
    if target.startswith("tag:"):
        return _tag(node, target, owners)
    if not validate.NAME.fullmatch(target):
        raise _error(
            node,
            f"target {_show(target)} is not an endpoint name"
            + (", tag:NAME or *" if star else " or tag:NAME (a test names one endpoint or tag, not *)"),
        )
    return target


def _dst(node: Node, owners: dict[str, frozenset[str]]) -> Dst:
    target, part = _split_target(node, node.text)
    target = _target_name(node, target, owners, star=True)
    try:
        compiled = parse_part(part)
    except PartError as exc:
        raise _error(node, f"dst {_show(node.text)}: {exc}") from None
    return Dst(node.text, node.line, node.column, target, compiled)


def _tests(node: Node, owners: dict[str, frozenset[str]]) -> tuple[tuple[Check, ...], int]:
    if node.kind != "array":
        raise _error(
            node, f'tests must be an array of tests [{{"src": ..., "accept": [...]}}], not {kind_name(node.kind)}'
        )
    checks: list[Check] = []
    for index, item in enumerate(node.items):
        where = f"tests[{index}]"
        fields = _members(item, where, TEST_KEYS, ("src",))
        src = fields["src"]
        if src.kind != "string":
            raise _error(src, f'{where}.src must be a string such as "ops1", not {kind_name(src.kind)}')
        if src.text.startswith("tag:"):
            _tag(src, src.text, owners)
        else:
            _checked(src, parse_subject, src.text)
        if "accept" not in fields and "deny" not in fields:
            raise _error(item, f'{where} has neither "accept" nor "deny": add what {src.text} must reach or not')
        for key in ("accept", "deny"):
            if key in fields:
                for entry in _strings(fields[key], f"{where}.{key}", '["tag:db:tunnel/tcp/pg"]'):
                    target, part = _split_target(entry, entry.text)
                    place = _target_name(entry, target, owners, star=False)
                    what = _checked(entry, parse_app_target, part)
                    checks.append(Check(entry.line, entry.column, src.text, entry.text, place, what, key == "accept"))
    return tuple(checks), len(node.items)


def _checked(node: Node, parse: Callable[[str], T], text: str) -> T:
    try:
        return parse(text)
    except BadInput as exc:
        raise _error(node, exc.message) from None
