"""Fuzzing the policy language with hypothesis: random text, token soup and mutated valid policies never raise
anything but `PolicyError` (one line, a position inside the text) and finish quickly (a deadline per example); the
HuJSON reader agrees with the stdlib `json` on JSON; a generated valid policy loads, and decides without error and
consistently with its rules."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from policy_examples import ISSUE_EXAMPLE, RICH

from ztm.policy import AppTarget, Place, Policy, PolicyError, Subject
from ztm.policy.hujson import parse

FUZZ = settings(max_examples=300, deadline=timedelta(seconds=2), suppress_health_check=[HealthCheck.too_slow])

TOKENS = [
    "{", "}", "[", "]", ",", ":", " ", "\n", "//", "/*", "*/", '"', "\\", "'", "1", "-", "0", ".5", "e9", "true",
    "null", '"acls"', '"groups"', '"tagOwners"', '"tests"', '"admins"', '"action"', '"accept"', '"deny"', '"src"',
    '"dst"', '"*"', '"*:*"', '"group:ops"', '"tag:db"', '"tag:db:tunnel/tcp/pg"', '"ops1"', '"ops1@x"',
    '"*:proxy/10.0.0.0/8:1-2"', '"*:files/shared/"', '"x:terminal"', "\\u00e9", "\\u", "\\ud800", "\\udc00",
    "\\x", "12", "é", "\t", "\x00",
]  # fmt: skip


def check_error(text: str, exc: PolicyError) -> None:
    assert "\n" not in exc.message
    assert exc.message.startswith(f"policy line {exc.line}, column {exc.column}: ")
    lines = text.split("\n")
    assert 1 <= exc.line <= len(lines)
    assert 1 <= exc.column <= len(lines[exc.line - 1]) + 1


def load_or_error(text: str) -> Policy | None:
    try:
        policy = Policy.load(text)
    except PolicyError as exc:
        check_error(text, exc)
        return None
    policy.run_tests(lambda name: frozenset({"tag:db"}))
    return policy


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    load_or_error(text)


OPENINGS = ["", "{", '{"acls": [', '{"acls": [{"action": "accept", "src": ["', '{"x": "', '{"tests": [{"src": ']


@FUZZ
@given(st.sampled_from(OPENINGS), st.lists(st.sampled_from(TOKENS), max_size=80).map("".join))
def test_token_soup(opening: str, soup: str) -> None:
    load_or_error(opening + soup)


STRING_BITS = [
    "\\",
    "\\u",
    "\\u12",
    "\\ud800",
    "\\udc00",
    "\\u00e9",
    "u",
    "0",
    '"',
    "n",
    "/",
    "é",
    "\n",
    "\x01",
    "\ud800",
]


@FUZZ
@given(st.lists(st.sampled_from(STRING_BITS), max_size=12).map("".join))
def test_strings_and_escapes(inside: str) -> None:
    text = '{"x": "' + inside + '"}'
    if load_or_error(text) is None:
        return
    expected = json.loads(text)["x"]
    assert plain(text)["x"] == expected


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from([RICH, ISSUE_EXAMPLE]))
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 12)))
        action = draw(st.sampled_from(["delete", "insert", "replace", "repeat"]))
        piece = draw(st.sampled_from(TOKENS) | st.text(max_size=4))
        if action == "delete":
            text = text[:start] + text[end:]
        elif action == "insert":
            text = text[:start] + piece + text[start:]
        elif action == "replace":
            text = text[:start] + piece + text[end:]
        else:
            text = text[:end] + text[start:end] + text[end:]
    return text


@FUZZ
@given(mutated())
def test_mutated_valid_policies(text: str) -> None:
    load_or_error(text)


def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("duplicate key")
    return dict(pairs)


def plain(text: str) -> Any:
    def walk(node: Any) -> Any:
        if node.kind == "object":
            return {key.text: walk(value) for key, value in node.members}
        if node.kind == "array":
            return [walk(item) for item in node.items]
        return node.value

    return walk(parse(text))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**15), 10**15) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=20,
)  # fmt: skip


@FUZZ
@given(json_values, st.booleans())
def test_the_reader_reads_json_as_the_stdlib_does(value: Any, indent: bool) -> None:
    text = json.dumps(value, indent=2 if indent else None, ensure_ascii=indent)
    assert plain(text) == json.loads(text)


@FUZZ
@given(st.lists(st.sampled_from([t for t in TOKENS if "/" not in t and "'" not in t]), max_size=40).map("".join))
def test_what_json_reads_the_reader_reads_the_same(text: str) -> None:
    try:
        expected = json.loads(text, object_pairs_hook=no_duplicates)
    except ValueError:
        return
    assert plain(text) == expected


# --- generated valid policies ------------------------------------------------------------------------------------

users = st.sampled_from(["ann", "bob", "carl", "ops1", "root"])
eps = st.sampled_from(["laptop", "db-1", "web-1", "gw", "ann"])
groups_ = st.sampled_from(["group:ops", "group:dev"])
tags = st.sampled_from(["tag:db", "tag:web"])
srcs = st.one_of(
    st.just("*"), groups_, tags, users, eps, st.builds(lambda u, e: f"{u}@{e}", users, eps)
)  # fmt: skip
parts = st.sampled_from([
    "*", "tunnel/*", "tunnel/tcp/*", "tunnel/udp/*", "tunnel/tcp/pg", "tunnel/udp/dns", "terminal", "app/*",
    "app/chat", "files/", "files/*", "files/shared/", "files/shared/ann", "files-write/shared/ann/", "proxy/*",
    "proxy/*:443", "proxy/db.lan:5432", "proxy/*.corp.lan:1-1024", "proxy/10.0.0.0/8:*", "proxy/[::1]:22",
    "ip/*", "ip/tcp:22", "ip/udp:5000-5100", "ip/tcp:*", "ip/icmp", "ip/10.20.0.0/16/tcp:22", "ip/10.20.0.0/16/*",
    "ip/fd00:20::/64/udp:*", "ip/proto:47",
])  # fmt: skip
targets_ = st.one_of(st.just("*"), tags, eps)
dsts = st.builds(lambda t, p: f"{t}:{p}", targets_, parts)
rules = st.fixed_dictionaries(
    {
        "action": st.just("accept"),
        "src": st.lists(srcs, min_size=1, max_size=3),
        "dst": st.lists(dsts, min_size=1, max_size=3),
    }
)
policies = st.fixed_dictionaries(
    {
        "groups": st.just({"group:ops": ["ops1", "bob"], "group:dev": []}),
        "tagOwners": st.just({"tag:db": ["root"], "tag:web": ["group:ops"]}),
        "acls": st.lists(rules, max_size=8),
    },
    optional={"admins": st.lists(users, max_size=2)},
)
asked = st.sampled_from([
    AppTarget("tunnel", "tcp/pg"), AppTarget("tunnel", "udp/dns"), AppTarget("terminal", ""),
    AppTarget("app", "chat"), AppTarget("files", "/shared/ann/x"), AppTarget("files-write", "/shared/ann/x"),
    AppTarget("proxy", "db.lan:5432"), AppTarget("proxy", "a.corp.lan:443"), AppTarget("proxy", "10.1.2.3:80"),
    AppTarget("proxy", "[::1]:22"), AppTarget("files", "/shared/../users/root/k"), AppTarget("ip", "tcp:22"),
    AppTarget("ip", "udp:5001"), AppTarget("ip", "tcp:*"), AppTarget("ip", "icmp"), AppTarget("ip", "proto:47"),
    AppTarget("ip", "10.20.1.5/tcp:22"), AppTarget("ip", "fd00:20::5/udp:53"), AppTarget("ip", "10.30.0.1/icmp"),
])  # fmt: skip
subjects = st.builds(Subject, users, eps | st.just(""), st.frozensets(tags, max_size=2))
places = st.builds(Place, eps, st.frozensets(tags, max_size=2))


def scan(policy: Policy, who: Subject, where: Place, what: AppTarget) -> int:
    """The line of the first rule that allows it, by looking at every rule (what the index must agree with)."""
    for rule in policy._spec.rules:
        if any(s.matches(who) for s in rule.srcs) and any(d.matches(where, what) for d in rule.dsts):
            return rule.line
    return 0


def hujson(policy: dict[str, Any], trailing: bool) -> str:
    """The policy as HuJSON: one rule per line, a comment, and trailing commas if asked."""
    comma = "," if trailing else ""
    acls = ",\n".join("    " + json.dumps(rule) for rule in policy["acls"])
    head = {key: value for key, value in policy.items() if key != "acls"}
    body = json.dumps(head)[1:-1]
    return "{ // generated\n  " + body + ',\n  "acls": [\n' + acls + (comma if acls else "") + "\n  ]" + comma + "\n}"


@FUZZ
@given(policies, st.booleans(), st.lists(st.tuples(subjects, places, asked), min_size=1, max_size=10))
def test_a_generated_policy_loads_and_decides_consistently(
    policy: dict[str, Any], trailing: bool, asks: list[tuple[Subject, Place, AppTarget]]
) -> None:
    text = hujson(policy, trailing)
    loaded = Policy.load(text, version=3)
    fresh = Policy.load(text, version=3)
    assert loaded.admins == frozenset(policy.get("admins", []))
    lines = text.split("\n")
    for who, where, what in asks:
        decision = loaded.decide(who, where, what)
        assert decision == fresh.decide(who, where, what) == loaded.decide(who, where, what)  # memo or not: same
        kind = loaded.decide_kind(who, where, what.kind)
        assert decision.line == scan(loaded, who, where, what)  # the rule index finds what a scan finds
        if decision.allowed:
            assert kind.allowed  # the coarse first line never refuses what the exit allows
            index = int(decision.rule.removeprefix("acls[").partition("]")[0])
            rule = policy["acls"][index]
            assert lines[decision.line - 1] == "    " + json.dumps(rule) + (
                "," if index < len(policy["acls"]) - 1 or trailing else ""
            )
            _, _, arrow = decision.rule.partition(": accept ")
            src, _, dst = arrow.partition(" -> ")
            assert src in rule["src"] and dst in rule["dst"]
            for earlier in policy["acls"][:index]:
                if "*" in earlier["src"] and not (what.kind == "ip" and "/" in what.detail):
                    assert "*:*" not in earlier["dst"]  # an earlier rule allowing everything would have decided
        else:
            assert decision.line == 0 and decision.rule == "" and decision.version == 3
            if not (what.kind == "ip" and "/" in what.detail):  # `*` does not cover a routed LAN
                assert not any("*" in r["src"] and "*:*" in r["dst"] for r in policy["acls"])
        loaded.rules_for(where)
        loaded.may_tag(who.user, "tag:db")
