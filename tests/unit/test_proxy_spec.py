"""Proxy configuration as data (`ztm.apps.proxy.spec`): destinations and their service names, target specs and
sets (matching, exclusions, publishing), rules (first match wins), refusal reasons; fuzzing of the parsers."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztm.apps.proxy import spec
from ztm.apps.proxy.spec import Destination, Rule, TargetSet, TargetSpec
from ztm.errors import BadInput

FUZZ = settings(max_examples=300, deadline=None)


def ip(text: str) -> spec.IP:
    return ipaddress.ip_address(text)


def test_destinations_and_service_names() -> None:
    assert Destination.parse("Example.COM.:443") == Destination("example.com", 443)
    assert Destination.parse("[::FFFF:10.0.0.1]:1") == Destination("10.0.0.1", 1)
    assert str(Destination.parse("[2001:db8::1]:80")) == "[2001:db8::1]:80"
    d = Destination("2001:db8::1", 80)
    assert d.service("udp") == "udp/2001:db8::1/80"
    assert Destination.from_service("udp/2001:db8::1/80") == ("udp", d)
    assert Destination.from_service("tcp/a.b/1") == ("tcp", Destination("a.b", 1))
    for bad in ("a.b:0", "a.b:x", "a b:1", "[::1:1", "::1:80", "h", "x" * 119 + ":1", "é.com:1"):
        with pytest.raises(BadInput):
            Destination.parse(bad)
    for bad in ("tcp/a", "sctp/a/1", "tcp//1", "tcp/a/99999", "tcp/a/b"):
        with pytest.raises(BadInput):
            Destination.from_service(bad)


def test_target_specs() -> None:
    assert TargetSpec.parse("*") == TargetSpec("any", "")
    assert TargetSpec.parse("*.Corp.Example") == TargetSpec("suffix", "corp.example")
    assert TargetSpec.parse("10.1.2.3/8") == TargetSpec("cidr", "10.0.0.0/8")
    assert TargetSpec.parse("10.1.2.3") == TargetSpec("cidr", "10.1.2.3/32")
    assert TargetSpec.parse("fd00::/8") == TargetSpec("cidr", "fd00::/8")
    assert str(TargetSpec.parse("*.a.b")) == "*.a.b"
    for bad in ("", "*.", "*.*.a", "a b", "10.0.0.0/33", "1.2.3.4/x", "a..b", None, 5):
        with pytest.raises(BadInput):
            TargetSpec.parse(bad)
    suffix = TargetSpec.parse("*.corp")
    assert suffix.matches_name("a.corp") and suffix.matches_name("a.b.corp") and not suffix.matches_name("corp")
    assert not suffix.matches_name("xcorp")
    exact = TargetSpec.parse("corp")
    assert exact.matches_name("corp") and not exact.matches_name("a.corp")
    net = TargetSpec.parse("10.0.0.0/8")
    assert net.matches_ip(ip("10.9.9.9")) and not net.matches_ip(ip("11.0.0.1")) and not net.matches_ip(ip("::1"))
    assert not net.matches_name("10.0.0.1")


def test_target_sets_route_and_publish() -> None:
    targets = TargetSet(
        spec.specs(["*.corp", "intranet", "10.0.0.0/8"], "t"), spec.specs(["secret.corp", "10.0.0.1"], "e")
    )
    asked = ("a.corp:1", "intranet:1", "secret.corp:1", "10.2.3.4:1", "10.0.0.1:1", "11.0.0.1:1", "other.org:1")
    route = {text: targets.route(Destination.parse(text)) for text in asked}
    assert route == {
        "a.corp:1": 2, "intranet:1": 2, "secret.corp:1": 0, "10.2.3.4:1": 2, "10.0.0.1:1": 0, "11.0.0.1:1": 0,
        "other.org:1": 1,  # may resolve into 10.0.0.0/8: the exit decides
    }  # fmt: skip
    assert targets.allows("other.org", ip("10.3.3.3")) and not targets.allows("other.org", ip("11.1.1.1"))
    assert not targets.allows("a.corp", ip("10.0.0.1"))  # a name resolving into an excluded network
    services = targets.services()
    assert services == [
        "target/suffix/corp", "target/domain/intranet", "target/cidr/10.0.0.0/8",
        "exclusion/domain/secret.corp", "exclusion/cidr/10.0.0.1/32",
    ]  # fmt: skip
    assert TargetSet.from_services([*services, "junk", "target/cidr/x", "target/any"]) == TargetSet(
        (*targets.targets, TargetSpec("any", "")), targets.exclusions
    )
    assert TargetSet().route(Destination("a.b", 1)) == 0


def test_rules_first_match_wins() -> None:
    rules = spec.parse_rules([
        {"action": "deny", "user": "bob", "target": "*.secret.corp"},
        {"action": "allow", "user": "*", "target": "10.0.0.0/8"},
        {"action": "deny", "user": "*", "target": "*"},
    ])  # fmt: skip
    assert spec.decide(rules, "bob", "x.secret.corp", ip("10.0.0.5")) == (False, 1)
    assert spec.decide(rules, "alice", "x.secret.corp", ip("10.0.0.5")) == (True, 2)
    assert spec.decide(rules, "alice", None, ip("192.168.1.1")) == (False, 3)
    assert spec.decide((), "alice", None, ip("192.168.1.1")) == (True, None)
    assert spec.decide_by_name(rules, "bob", "x.secret.corp") == (False, 1)
    assert spec.decide_by_name(rules, "alice", "x.secret.corp") is None  # a network rule comes first
    assert str(rules[0]) == "deny bob *.secret.corp" and Rule.parse(rules[0].to_json()) == rules[0]
    for bad in (
        {"action": "maybe", "user": "*", "target": "*"},
        {"action": "allow", "user": "Bob", "target": "*"},
        {"action": "allow", "user": "*", "target": "a b"},
        {"action": "allow", "target": "*"},
        "allow * *",
    ):
        with pytest.raises(BadInput):
            Rule.parse(bad)
    with pytest.raises(BadInput):
        spec.parse_rules([{"action": "allow", "user": "*", "target": "*"}] * (spec.MAX_RULES + 1))


def test_a_deny_rule_on_a_name_covers_its_addresses() -> None:
    rules = spec.parse_rules([
        {"action": "deny", "user": "bob", "target": "localhost"},
        {"action": "deny", "user": "bob", "target": "*.secret.corp"},
        {"action": "allow", "user": "*", "target": "localhost"},
    ])  # fmt: skip
    named = {"localhost": frozenset({ip("127.0.0.1"), ip("::1")})}
    assert spec.deny_names(rules, "bob") == ["localhost"] and spec.deny_names(rules, "alice") == []
    assert spec.decide(rules, "bob", None, ip("127.0.0.1"), named) == (False, 1)  # the address given directly
    assert spec.decide(rules, "bob", "alias.example", ip("::1"), named) == (False, 1)  # another name for it
    assert spec.decide(rules, "bob", "other.example", ip("127.0.0.2"), named) == (True, None)
    assert spec.decide(rules, "alice", None, ip("127.0.0.1"), named) == (True, None)
    # A wildcard cannot be resolved: it denies every address given without a name (fail closed), not named ones.
    assert spec.decide(rules, "bob", None, ip("10.1.2.3"), named) == (False, 2)
    assert spec.decide(rules, "bob", "www.example", ip("10.1.2.3"), named) == (True, None)
    # An allow rule on a name stays a name rule.
    assert spec.decide(rules[2:], "carol", None, ip("127.0.0.1"), named) == (True, None)


def test_refusal_reasons() -> None:
    reason = spec.Refused(spec.DENIED, "rule 1 denies").reason
    assert reason == "denied: rule 1 denies" and spec.refusal_code(reason) == spec.DENIED
    back = spec.Refused.from_reason(reason)
    assert (back.code, back.message) == (spec.DENIED, "rule 1 denies")
    other = spec.Refused.from_reason("endpoint 'x' is offline")
    assert other.code == spec.FAILED and other.message == "endpoint 'x' is offline"


@FUZZ
@given(st.text(max_size=80))
def test_parsers_raise_only_bad_input(text: str) -> None:
    for parse in (TargetSpec.parse, Destination.parse, Destination.from_service):
        try:
            parse(text)
        except BadInput as exc:
            assert exc.message
    try:
        found = TargetSpec.from_service(text)
    except Exception as exc:  # pragma: no cover - reported by the assertion
        raise AssertionError(f"from_service raised {exc!r}") from exc
    assert found is None or found[0] in ("target", "exclusion")


@FUZZ
@given(
    st.one_of(st.ip_addresses().map(str), st.from_regex(r"(\*\.)?[a-z0-9]{1,8}(\.[a-z0-9]{1,8}){0,2}", fullmatch=True))
)
def test_published_targets_read_back_the_same(text: str) -> None:
    target = TargetSpec.parse(text)
    assert TargetSpec.from_service(target.service("target")) == ("target", target)
    assert TargetSpec.parse(str(target)) == target


# ------------------------------------------------------------------------------------------------ credentials


def test_proxy_auth_hashes_and_verifies_in_constant_form() -> None:
    auth = spec.ProxyAuth.make("alice", "correct horse")
    stored = auth.to_json()
    assert stored["user"] == "alice" and stored["kdf"] == "scrypt" and "correct horse" not in str(stored)
    assert "correct" not in repr(auth) and auth.view() == {"user": "alice", "password": "set"}
    again = spec.ProxyAuth.from_json(stored)
    assert again == auth
    assert again.verify(spec.Credentials(b"alice", b"correct horse"))
    assert not again.verify(spec.Credentials(b"alice", b"correct horse "))
    assert not again.verify(spec.Credentials(b"bob", b"correct horse"))
    assert not again.verify(spec.Credentials(b"alice", b"x" * 300))
    assert spec.ProxyAuth.make("alice", "correct horse").salt != auth.salt  # salted
    unicode = spec.ProxyAuth.make("\u00e9lise", "p\u00e4ss")
    assert unicode.verify(spec.Credentials("\u00e9lise".encode(), "p\u00e4ss".encode()))
    view = spec.view_config(None, TargetSet(), (), auth)
    assert view["auth"] == {"user": "alice", "password": "set"} and "hash" not in str(view)


@pytest.mark.parametrize(
    ("user", "password", "why"),
    [
        ("", "p", "user: expected a non-empty"),
        ("a:b", "p", "no ':'"),
        (" a", "p", "spaces"),
        ("a\x00", "p", "control"),
        ("u" * 256, "p", "at most 255"),
        ("a", "", "password: expected a non-empty"),
        ("a", "\u00e9" * 128, "at most 255"),
        ("a", "p\n", "control"),
        ("a", 5, "expected a non-empty string"),
    ],
)
def test_bad_credentials_are_refused(user: object, password: object, why: str) -> None:
    with pytest.raises(BadInput, match=why):
        spec.ProxyAuth.make(user, password)


def test_stored_auth_is_checked() -> None:
    good = spec.ProxyAuth.make("alice", "pw").to_json()
    for bad in (None, {}, {**good, "kdf": "md5"}, {**good, "n": 3}, {**good, "salt": "zz"}, {**good, "user": "a:b"}):
        with pytest.raises(BadInput, match="proxy auth"):
            spec.ProxyAuth.from_json(bad)
