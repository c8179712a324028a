"""Decisions of a loaded policy: each `src` form, each `dst` form and APP-PART, the deciding rule (the first in file
order) and its line, default deny, `decide_kind`, `may_tag`, `rules_for`, the memo, the tests runner, and the
example policy of issue 16."""

from __future__ import annotations

import pytest
from policy_examples import ISSUE_EXAMPLE

from ztm.errors import BadInput
from ztm.policy import (
    AppTarget,
    Decision,
    Place,
    Policy,
    Subject,
    TestFailure,
    parse_app_target,
    parse_subject,
    tags_of_labels,
)
from ztm.policy import model as policy_model

NOBODY = Place("nowhere")


def one_rule(src: str, dst: str) -> Policy:
    return Policy.load(
        '{"groups": {"group:ops": ["ops1", "ops2"], "group:none": []},\n'
        ' "tagOwners": {"tag:db": ["root"], "tag:web": ["group:ops"]},\n'
        f' "acls": [{{"action": "accept", "src": ["{src}"], "dst": ["{dst}"]}}]}}'
    )


def allows(policy: Policy, who: Subject, where: Place, what: str) -> bool:
    return policy.decide(who, where, parse_app_target(what)).allowed


def test_the_issue_example_loads_decides_and_its_test_passes() -> None:
    policy = Policy.load(ISSUE_EXAMPLE, version=4)
    assert policy.run_tests(lambda name: frozenset()) == []
    db = Place("db-1", frozenset({"tag:db"}))
    decision = policy.decide(Subject("ops2", "laptop"), db, parse_app_target("tunnel/tcp/pg"))
    assert decision == Decision(True, 5, "acls[0]: accept group:ops -> tag:db:tunnel/tcp/pg", 4)
    assert decision.why() == "allowed by the policy rule at line 5 (acls[0]: accept group:ops -> tag:db:tunnel/tcp/pg)"
    decision = policy.decide(Subject("ops2", "laptop"), Place("build-01"), parse_app_target("terminal"))
    assert (decision.line, decision.rule) == (5, "acls[0]: accept group:ops -> build-01:terminal")
    decision = policy.decide(Subject("dev1"), db, parse_app_target("files/shared/x"))
    assert (decision.line, decision.rule) == (6, "acls[1]: accept * -> *:files/shared/")
    denied = policy.decide(Subject("dev1"), db, parse_app_target("tunnel/tcp/pg"))
    assert denied == Decision(False, 0, "", 4)
    assert denied.why() == "denied: no rule of policy version 4 allows it"


@pytest.mark.parametrize(
    ("src", "who", "expected"),
    [
        ("*", Subject("anyone"), True),
        ("*", Subject("", "", frozenset({"tag:web"})), True),
        ("group:ops", Subject("ops1"), True),
        ("group:ops", Subject("ops3"), False),
        ("group:ops", Subject("ann", "ops1"), False),  # groups hold users, not endpoint names
        ("group:none", Subject("ops1"), False),
        ("tag:web", Subject("ann", "web-1", frozenset({"tag:web"})), True),
        ("tag:web", Subject("ann", "web-1", frozenset({"tag:db"})), False),
        ("tag:web", Subject("tag:web"), False),
        ("ann", Subject("ann"), True),  # a bare name is a user ...
        ("ann", Subject("ann", "laptop"), True),  # ... from any of her endpoints
        ("ann", Subject("bob", "ann"), False),  # never an endpoint name: members choose those at join
        ("ann", Subject("anne", "ann2"), False),
        ("build-01", Subject("root", "build-01"), False),
        ("ann@laptop", Subject("ann", "laptop"), True),
        ("ann@laptop", Subject("ann", "desktop"), False),
        ("ann@laptop", Subject("bob", "laptop"), False),
        ("ann@laptop", Subject("ann"), False),
    ],
)
def test_each_src_form(src: str, who: Subject, expected: bool) -> None:
    assert allows(one_rule(src, "*:*"), who, NOBODY, "terminal") is expected


@pytest.mark.parametrize(
    ("target", "where", "expected"),
    [
        ("*", Place("any"), True),
        ("*", Place(""), True),
        ("db-1", Place("db-1"), True),
        ("db-1", Place("db-2"), False),
        ("db-1", Place("DB-1"), False),
        ("tag:db", Place("db-9", frozenset({"tag:db"})), True),
        ("tag:db", Place("", frozenset({"tag:db", "tag:web"})), True),
        ("tag:db", Place("db-9", frozenset({"tag:web"})), False),
        ("tag:db", Place("tag:db"), False),
    ],
)
def test_each_dst_target(target: str, where: Place, expected: bool) -> None:
    assert allows(one_rule("*", f"{target}:terminal"), Subject("ann"), where, "terminal") is expected


def test_a_tag_target_keeps_its_colon() -> None:
    policy = one_rule("*", "tag:db:tunnel/tcp/pg")
    db = Place("x", frozenset({"tag:db"}))
    assert allows(policy, Subject("ann"), db, "tunnel/tcp/pg")
    assert not allows(policy, Subject("ann"), db, "tunnel/udp/pg")
    assert not allows(policy, Subject("ann"), Place("tag", frozenset({"tag:db"})), "terminal")


@pytest.mark.parametrize(
    ("part", "allowed", "denied"),
    [
        ("*", ["terminal", "tunnel/udp/x", "files/a", "files-write/a", "proxy/h:1", "app/chat"], []),
        ("tunnel/*", ["tunnel/tcp/pg", "tunnel/udp/dns"], ["terminal", "app/chat", "proxy/pg:5432"]),
        ("tunnel/tcp/*", ["tunnel/tcp/pg", "tunnel/tcp/x"], ["tunnel/udp/pg"]),
        ("tunnel/udp/*", ["tunnel/udp/dns"], ["tunnel/tcp/dns"]),
        ("tunnel/tcp/pg", ["tunnel/tcp/pg"], ["tunnel/tcp/pg2", "tunnel/udp/pg", "tunnel/tcp/PG"]),
        ("tunnel/udp/dns", ["tunnel/udp/dns"], ["tunnel/tcp/dns"]),
        ("terminal", ["terminal"], ["tunnel/tcp/terminal", "app/terminal"]),
        ("app/*", ["app/chat", "app/x"], ["terminal"]),
        ("app/chat", ["app/chat"], ["app/chat2", "app/cha"]),
        ("files/", ["files/", "files/a", "files/users/root/key"], ["files-write/a"]),
        ("files/*", ["files/a/b"], ["files-write/a"]),
        ("files/shared/", ["files/shared", "files/shared/", "files/shared/a/b"], ["files/sharedx", "files/users/x"]),
        ("files/shared", ["files/shared", "files/shared/a"], ["files/sharedx", "files/share"]),
        ("files/shared/*", ["files/shared", "files/shared/a"], ["files/sharedx"]),
        (
            "files/shared/ann/",
            ["files/shared/ann/x"],
            ["files/shared/anna/x", "files/shared", "files-write/shared/ann/x"],
        ),
        ("files-write/shared/ann/", ["files-write/shared/ann/x"], ["files/shared/ann/x", "files-write/shared/bob"]),
        ("files-write/", ["files-write/a"], ["files/a"]),
        ("proxy/*", ["proxy/db.lan:5432", "proxy/10.1.2.3:1", "proxy/[::1]:22"], ["tunnel/tcp/db"]),
        ("proxy/*:443", ["proxy/a.b:443", "proxy/1.2.3.4:443"], ["proxy/a.b:444"]),
        ("proxy/db.lan:*", ["proxy/db.lan:1", "proxy/DB.lan.:65535"], ["proxy/db.lan2:1", "proxy/x.db.lan:1"]),
        ("proxy/db.lan:5432", ["proxy/db.lan:5432"], ["proxy/db.lan:5433", "proxy/10.0.0.5:5432"]),
        ("proxy/*.corp.lan:443", ["proxy/db.corp.lan:443", "proxy/a.b.corp.lan:443"], ["proxy/corp.lan:443"]),
        ("proxy/10.0.0.5:5000-5999", ["proxy/10.0.0.5:5000", "proxy/10.0.0.5:5999"], ["proxy/10.0.0.5:6000"]),
        ("proxy/10.0.0.0/8:*", ["proxy/10.255.0.1:1", "proxy/[::ffff:10.0.0.1]:80"], ["proxy/11.0.0.1:1"]),
        ("proxy/fd00::/8:443", ["proxy/[fd12::1]:443", "proxy/fd12::1:443"], ["proxy/[fe80::1]:443"]),
        ("proxy/[::1]:22", ["proxy/[::1]:22", "proxy/::1:22"], ["proxy/127.0.0.1:22"]),
        ("proxy/10.0.0.5:22", ["proxy/10.0.0.5:22", "proxy/[::ffff:10.0.0.5]:22"], ["proxy/10.0.0.6:22"]),
    ],
)
def test_each_app_part(part: str, allowed: list[str], denied: list[str]) -> None:
    policy = one_rule("*", f"*:{part}")
    for what in allowed:
        assert allows(policy, Subject("ann"), NOBODY, what), what
    for what in denied:
        assert not allows(policy, Subject("ann"), NOBODY, what), what


def test_the_first_rule_in_file_order_decides_and_its_line_is_reported() -> None:
    policy = Policy.load(
        """{
  "groups": {"group:ops": ["ops1"]},
  "acls": [
    {"action": "accept", "src": ["bob"], "dst": ["*:terminal"]},
    {
      "action": "accept",
      "src": ["ann", "group:ops"],
      "dst": ["db:tunnel/*", "*:tunnel/tcp/pg"],
    },
    {"action": "accept", "src": ["*"], "dst": ["*:*"]},
  ],
}"""
    )
    decision = policy.decide(Subject("ops1"), Place("db"), parse_app_target("tunnel/tcp/pg"))
    assert (decision.line, decision.rule) == (5, "acls[1]: accept group:ops -> db:tunnel/*")
    decision = policy.decide(Subject("ops1"), Place("web"), parse_app_target("tunnel/tcp/pg"))
    assert (decision.line, decision.rule) == (5, "acls[1]: accept group:ops -> *:tunnel/tcp/pg")
    decision = policy.decide(Subject("bob"), Place("db"), parse_app_target("tunnel/tcp/pg"))
    assert (decision.line, decision.rule) == (10, "acls[2]: accept * -> *:*")
    decision = policy.decide(Subject("bob"), Place("db"), parse_app_target("terminal"))
    assert (decision.line, decision.rule) == (4, "acls[0]: accept bob -> *:terminal")


def test_default_deny() -> None:
    for text in ("{}", '{"acls": []}', '{"groups": {"group:a": ["ann"]}}'):
        policy = Policy.load(text, version=2)
        for what in ("terminal", "tunnel/tcp/x", "files/", "app/chat", "proxy/a:1"):
            decision = policy.decide(Subject("root", "hub"), Place("x"), parse_app_target(what))
            assert decision == Decision(False, 0, "", 2)
        assert policy.decide_kind(Subject("root"), Place("x"), "terminal").allowed is False
    assert not allows(one_rule("ann", "*:*"), Subject("root"), NOBODY, "terminal")  # root is not special either


def test_an_unknown_kind_is_denied() -> None:
    assert not one_rule("*", "*:*").decide(Subject("ann"), NOBODY, AppTarget("ftp", "x")).allowed


def test_decide_kind() -> None:
    policy = Policy.load(
        """{"tagOwners": {"tag:db": ["root"]}, "acls": [
          {"action": "accept", "src": ["ann"], "dst": ["tag:db:tunnel/tcp/pg", "build:files-write/shared/"]},
          {"action": "accept", "src": ["bob"], "dst": ["*:*"]},
        ]}"""
    )
    db = Place("db-1", frozenset({"tag:db"}))
    assert policy.decide_kind(Subject("ann"), db, "tunnel").line == 2
    assert not policy.decide_kind(Subject("ann"), db, "terminal").allowed
    assert not policy.decide_kind(Subject("ann"), Place("db-2"), "tunnel").allowed
    assert policy.decide_kind(Subject("ann"), Place("build"), "files").allowed  # one files stream: read and write
    assert policy.decide_kind(Subject("ann"), Place("build"), "files-write").allowed
    assert not policy.decide_kind(Subject("ann"), Place("build"), "tunnel").allowed
    decision = policy.decide_kind(Subject("bob"), Place("x"), "app")
    assert (decision.allowed, decision.line, decision.rule) == (True, 3, "acls[1]: accept bob -> *:*")
    assert not policy.decide_kind(Subject("carl"), db, "tunnel").allowed


def test_may_tag() -> None:
    policy = Policy.load(
        '{"groups": {"group:ops": ["ops1"]}, "tagOwners": {"tag:db": ["ann", "group:ops"], "tag:web": []}}'
    )
    assert policy.may_tag("root", "tag:db") and policy.may_tag("root", "tag:undefined")
    assert policy.may_tag("ann", "tag:db") and policy.may_tag("ops1", "tag:db")
    assert not policy.may_tag("bob", "tag:db")
    assert not policy.may_tag("ann", "tag:web")
    assert not policy.may_tag("ann", "tag:other")
    assert not policy.may_tag("group:ops", "tag:db")


def test_rules_for() -> None:
    policy = Policy.load(
        """{"tagOwners": {"tag:db": ["root"]}, "acls": [
          {"action": "accept", "src": ["ann", "bob"], "dst": ["tag:db:tunnel/tcp/pg", "web:terminal"]},
          {"action": "accept", "src": ["*"], "dst": ["*:files/shared/"]},
          {"action": "accept", "src": ["carl"], "dst": ["web:app/chat", "web:terminal"]},
        ]}"""
    )
    assert policy.rules_for(Place("db-1", frozenset({"tag:db"}))) == [
        (2, "acls[0]: accept ann, bob -> tag:db:tunnel/tcp/pg"),
        (3, "acls[1]: accept * -> *:files/shared/"),
    ]
    assert policy.rules_for(Place("web")) == [
        (2, "acls[0]: accept ann, bob -> web:terminal"),
        (3, "acls[1]: accept * -> *:files/shared/"),
        (4, "acls[2]: accept carl -> web:app/chat, web:terminal"),
    ]
    assert Policy.load("{}").rules_for(Place("web")) == []


def test_decisions_are_memoised_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(policy_model, "MEMO_SIZE", 4)
    policy = one_rule("*", "*:tunnel/*")
    calls: list[AppTarget] = []
    inner = policy._decide

    def counted(who: Subject, where: Place, what: AppTarget) -> Decision:
        calls.append(what)
        return inner(who, where, what)

    monkeypatch.setattr(policy, "_decide", counted)
    first = policy.decide(Subject("ann"), NOBODY, AppTarget("tunnel", "tcp/a"))
    assert policy.decide(Subject("ann"), NOBODY, AppTarget("tunnel", "tcp/a")) is first
    assert len(calls) == 1
    for index in range(10):
        policy.decide(Subject("ann"), NOBODY, AppTarget("tunnel", f"tcp/{index}"))
    assert len(policy._memo) == 4
    assert len(calls) == 11


def test_the_tests_runner() -> None:
    text = """{
  "tagOwners": {"tag:db": ["root"]},
  "acls": [
    {"action": "accept", "src": ["ann"], "dst": ["tag:db:tunnel/tcp/pg"]},
    {"action": "accept", "src": ["*"], "dst": ["build:terminal"]},
  ],
  "tests": [
    {"src": "ann", "accept": ["tag:db:tunnel/tcp/pg", "db-1:tunnel/tcp/pg"]},
    {"src": "bob", "accept": ["tag:db:tunnel/tcp/pg"],
     "deny": ["build:terminal", "db-1:terminal"]},
    {"src": "tag:db", "accept": ["build:terminal"], "deny": ["db-1:tunnel/tcp/pg"]},
    {"src": "ann@db-1", "deny": ["build:files/shared/x"]},
  ],
}"""
    policy = Policy.load(text)
    failures = policy.run_tests(lambda name: frozenset({"tag:db"}) if name.startswith("db-") else frozenset())
    assert failures == [
        TestFailure(9, "test at line 9: bob -> tag:db:tunnel/tcp/pg should be accepted, no rule allows it"),
        TestFailure(
            10,
            "test at line 10: bob -> build:terminal should be denied, but the rule at line 5 allows it "
            "(acls[1]: accept * -> build:terminal)",
        ),
    ]
    # the endpoint "db-1" has tag:db only if tags_of says so
    failures = policy.run_tests(lambda name: frozenset())
    assert [f.line for f in failures] == [8, 9, 10]
    assert Policy.load('{"tests": []}').run_tests(lambda name: frozenset()) == []


def test_a_caller_endpoint_in_a_test_carries_its_tags() -> None:
    policy = Policy.load(
        """{"tagOwners": {"tag:ci": ["root"]},
           "acls": [{"action": "accept", "src": ["tag:ci"], "dst": ["*:app/build"]}],
           "tests": [{"src": "bot@runner-1", "accept": ["x:app/build"]}]}"""
    )
    assert policy.run_tests(lambda name: frozenset({"tag:ci"}) if name == "runner-1" else frozenset()) == []
    assert len(policy.run_tests(lambda name: frozenset())) == 1


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("tunnel/tcp/pg", AppTarget("tunnel", "tcp/pg")),
        ("tunnel/udp/dns", AppTarget("tunnel", "udp/dns")),
        ("terminal", AppTarget("terminal", "")),
        ("files/users/root/x", AppTarget("files", "/users/root/x")),
        ("files/", AppTarget("files", "/")),
        ("files-write/shared/", AppTarget("files-write", "/shared/")),
        ("proxy/db.lan:5432", AppTarget("proxy", "db.lan:5432")),
        ("proxy/10.0.0.5:5432", AppTarget("proxy", "10.0.0.5:5432")),
        ("proxy/[fd00::1]:443", AppTarget("proxy", "[fd00::1]:443")),
        ("app/chat", AppTarget("app", "chat")),
    ],
)
def test_parse_app_target_and_str(text: str, target: AppTarget) -> None:
    assert parse_app_target(text) == target
    assert str(target) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "ssh",
        "terminal/",
        "tunnel/tcp/",
        "tunnel/tcp/*",
        "tunnel/icmp/x",
        "tunnel/tcp",
        "proxy/db.lan",
        "proxy/*:443",
        "proxy/db.lan:*",
        "proxy/db.lan:1-2",
        "proxy/10.0.0.0/8:22",
        "proxy/a b:1",
        "files",
        "files/a/../b",
        "files//a",
        "app/",
        "app/*",
        "app/Chat",
        "*",
    ],
)
def test_parse_app_target_refuses_with_the_forms(text: str) -> None:
    with pytest.raises(BadInput) as caught:
        parse_app_target(text)
    assert "\n" not in caught.value.message
    assert caught.value.message.startswith(f"invalid app target {text!r}: ")


def test_parse_subject_and_tags_of_labels() -> None:
    assert parse_subject("ann") == Subject("ann")
    assert parse_subject("ann@Laptop-1") == Subject("ann", "Laptop-1")
    for bad in ("", "Ann", "ann@", "@laptop", "ann@lap top", "a@b@c", "tag:db", "group:ops"):
        with pytest.raises(BadInput, match="write USER or USER@ENDPOINT"):
            parse_subject(bad)
    assert tags_of_labels(["tag:db", "env=prod", "tag:web", "tagged"]) == frozenset({"tag:db", "tag:web"})
    assert str(Subject("ann", "laptop")) == "ann@laptop" and str(Subject("ann")) == "ann"


def test_kind_decisions_are_memoised_apart_from_full_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    policy = one_rule("*", "*:tunnel/tcp/pg")
    calls: list[str] = []
    inner = policy._decide_kind

    def counted(who: Subject, where: Place, kind: str) -> Decision:
        calls.append(kind)
        return inner(who, where, kind)

    monkeypatch.setattr(policy, "_decide_kind", counted)
    first = policy.decide_kind(Subject("ann"), NOBODY, "tunnel")
    assert first.allowed and policy.decide_kind(Subject("ann"), NOBODY, "tunnel") is first and calls == ["tunnel"]
    assert not policy.decide_kind(Subject("ann"), NOBODY, "terminal").allowed
    # a kind's answer is never taken for a full decision, nor the other way round
    assert not policy.decide(Subject("ann"), NOBODY, AppTarget("tunnel", "tcp/other")).allowed
    assert policy.decide_kind(Subject("ann"), NOBODY, "tunnel") is first and calls == ["tunnel", "terminal"]
