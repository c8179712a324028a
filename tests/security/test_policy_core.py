"""Attacks on the policy language itself (`ztm.policy`, pure: no processes, the decision every exit takes): targets
spelled to slip past a rule that does not allow them, and hostile policy texts that would crash or stall the hub
that loads them. Enforcement at the exits with real processes is tested with the apps (tests/security/ of the agent
work); here the decision function is attacked directly, as an exit calls it."""

from __future__ import annotations

import time

import pytest

from ztm.errors import BadInput
from ztm.policy import MAX_POLICY_BYTES, Place, Policy, PolicyError, Subject, parse_app_target
from ztm.policy.target import AppTarget

POLICY = """{
  "groups": {"group:ops": ["ops1"]},
  "tagOwners": {"tag:db": ["root"]},
  "acls": [
    {"action": "accept", "src": ["*"], "dst": ["*:files/shared/", "*:files-write/shared/eve/"]},
    {"action": "accept", "src": ["*"], "dst": ["*:proxy/10.0.0.0/8:5432", "*:proxy/*.corp.lan:443"]},
    {"action": "accept", "src": ["group:ops"], "dst": ["tag:db:tunnel/tcp/pg"]},
  ],
}"""
EVE = Subject("eve", "eve-laptop")
SERVER = Place("server", frozenset())


def allowed(what: AppTarget, who: Subject = EVE, where: Place = SERVER) -> bool:
    return Policy.load(POLICY).decide(who, where, what).allowed


@pytest.mark.parametrize(
    "path",
    [
        "/shared/../users/root/key",  # climbs out of the allowed prefix
        "/shared/./../users/root/key",
        "/shared//../users/root",
        "/shared/a\n/users/root",
    ],
)
def test_file_paths_cannot_climb_out_of_the_allowed_prefix(path: str) -> None:
    assert not allowed(AppTarget("files", path))
    assert not allowed(AppTarget("files-write", path.replace("shared", "shared/eve", 1)))
    with pytest.raises(BadInput):
        parse_app_target("files/" + path.removeprefix("/"))


@pytest.mark.parametrize("path", ["/sharedx/a", "/Shared/a", "/shared-x", "/users/root/shared/a"])
def test_file_prefixes_match_at_name_boundaries_only(path: str) -> None:
    assert not allowed(AppTarget("files", path))
    assert parse_app_target("files" + path) == AppTarget("files", path)
    assert not allowed(AppTarget("files", path.removeprefix("/")))  # not absolute


def test_file_paths_inside_the_prefix_are_allowed() -> None:
    assert allowed(AppTarget("files", "/shared/a/b"))
    assert allowed(AppTarget("files", "/shared"))
    assert not allowed(AppTarget("files-write", "/shared/a"))  # read does not give write
    assert allowed(AppTarget("files-write", "/shared/eve/notes"))


@pytest.mark.parametrize(
    "host",
    [
        "0x0a000005",  # 10.0.0.5 to inet_aton, a "name" to a naive matcher
        "167772165",
        "012.0.0.5",
        "10.5",
        "0x7f.1",
    ],
)
def test_numeric_host_spellings_are_not_names(host: str) -> None:
    """The exit resolves these as IP addresses (inet_aton's forms), so no name rule may match them and they are not
    valid targets: only canonical IP literals are matched against CIDRs."""
    text = f"""{{"acls": [{{"action": "accept", "src": ["*"], "dst": ["*:proxy/{host}:5432"]}}]}}"""
    with pytest.raises(PolicyError, match="column"):
        Policy.load(text)
    assert not allowed(AppTarget("proxy", f"{host}:5432"))
    with pytest.raises(BadInput):
        parse_app_target(f"proxy/{host}:5432")


@pytest.mark.parametrize(
    ("detail", "expected"),
    [
        ("10.0.0.5:5432", True),
        ("[::ffff:10.0.0.5]:5432", True),  # the IPv4-mapped form is the same host
        ("11.0.0.5:5432", False),
        ("10.0.0.5:5433", False),
        ("10.0.0.5:05432", False),
        ("db.corp.lan:443", True),
        ("DB.Corp.LAN.:443", True),
        ("corp.lan:443", False),  # *.suffix is below the suffix only
        ("evilcorp.lan:443", False),
        ("db.corp.lan.evil.com:443", False),
        ("db.corp.lan:4430", False),
        ("db.corp.lan:443:443", False),
        ("db.corp.lan/x:443", False),
    ],
)
def test_proxy_targets_match_only_what_the_rule_says(detail: str, expected: bool) -> None:
    assert allowed(AppTarget("proxy", detail)) is expected


def test_a_tag_or_group_is_only_what_the_subject_carries() -> None:
    pg = AppTarget("tunnel", "tcp/pg")
    db = Place("db-1", frozenset({"tag:db"}))
    assert allowed(pg, Subject("ops1", "x"), db)
    assert not allowed(pg, Subject("ops1", "x"), Place("tag:db"))  # an endpoint NAMED like the tag is not tagged
    assert not allowed(pg, Subject("group:ops"), db)  # a user cannot be named like the group
    assert not allowed(pg, Subject("ops2", "ops1"), db)  # a group lists users, not endpoint names
    assert not allowed(AppTarget("tunnel", "tcp/pg/../x"), Subject("ops1"), db)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000,
        "{" + '"a":' * 50_000,
        '{"acls": [' + "1e99999999999999999999999999999999999999999," * 10 + "]}",
        '{"acls": [' + "9" * 5000 + "]}",
        "/*" * 300_000,
        '{"groups": {' + ",".join(f'"group:g{i}": ["u"]' for i in range(30_000)) + ', "group:z": ["group:g1"]}}',
        '{"x": "' + "\\u00e9" * 170_000 + '"}',
    ],
)
def test_hostile_policy_texts_fail_fast_with_a_position(text: str) -> None:
    start = time.perf_counter()
    with pytest.raises(PolicyError) as caught:
        Policy.load(text)
    assert time.perf_counter() - start < 10.0  # no hang (about 0.3 s each on an idle machine)
    assert caught.value.line >= 1 and caught.value.column >= 1
    assert "\n" not in caught.value.message


def test_a_policy_over_the_size_limit_is_refused_before_parsing() -> None:
    text = '{"acls": []}' + " " * MAX_POLICY_BYTES
    with pytest.raises(PolicyError, match="over the limit"):
        Policy.load(text)
