"""The policy's network-mode parts (`ip/`): each pattern form and what it matches (ports, ranges, `*`, ICMP, other
protocols, fragments), routed destinations matched only by a CIDR part (never by `*` nor a part without a CIDR),
IPv6, `decide_kind("ip")`, the `tests` entries, `parse_app_target`, and every error at its line and column."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztm.errors import BadInput
from ztm.policy import AppTarget, Place, Policy, PolicyError, Subject, parse_app_target
from ztm.policy.ip import IpError, parse_detail, parse_pattern

ANN = Subject("ann", "laptop")
HERE = Place("gw", frozenset({"tag:gw"}))


def one(part: str) -> Policy:
    return Policy.load(
        '{"tagOwners": {"tag:gw": ["root"]},\n "acls": [{"action": "accept", "src": ["ann"], "dst": ["tag:gw:'
        + part
        + '"]}]}'
    )


def allows(policy: Policy, detail: str, where: Place = HERE) -> bool:
    return policy.decide(ANN, where, AppTarget("ip", detail)).allowed


@pytest.mark.parametrize(
    ("part", "allowed", "denied"),
    [
        ("ip/*", ["tcp:22", "udp:1", "icmp", "proto:47", "tcp:*", "tcp:0"], ["10.20.1.5/tcp:22", "fd00::1/icmp"]),
        ("ip/tcp:22", ["tcp:22"], ["tcp:23", "udp:22", "tcp:*", "10.20.1.5/tcp:22", "icmp"]),
        ("ip/udp:5000-5100", ["udp:5000", "udp:5050", "udp:5100"], ["udp:4999", "udp:5101", "tcp:5050", "udp:*"]),
        ("ip/tcp:*", ["tcp:1", "tcp:65535", "tcp:0", "tcp:*"], ["udp:1", "icmp", "10.0.0.1/tcp:1"]),
        ("ip/tcp:1-65535", ["tcp:1", "tcp:65535"], ["tcp:*", "tcp:0"]),  # a range never covers a fragment
        ("ip/icmp", ["icmp"], ["tcp:1", "proto:47", "10.20.1.5/icmp"]),
        ("ip/proto:47", ["proto:47"], ["proto:50", "tcp:47"]),
        ("ip/10.20.0.0/16/tcp:22", ["10.20.1.5/tcp:22", "10.20.255.255/tcp:22"], ["tcp:22", "10.21.0.1/tcp:22"]),
        ("ip/10.20.0.0/16/*", ["10.20.1.5/tcp:9", "10.20.0.1/icmp", "10.20.3.3/udp:*"], ["tcp:9", "fd00::1/icmp"]),
        ("ip/10.20.1.5/udp:53", ["10.20.1.5/udp:53"], ["10.20.1.6/udp:53", "10.20.1.5/tcp:53"]),
        ("ip/fd00:20::/64/udp:*", ["fd00:20::5/udp:53", "fd00:20::5/udp:*"], ["fd00:21::5/udp:53", "10.0.0.1/udp:1"]),
        ("ip/0.0.0.0/0/*", ["8.8.8.8/tcp:1", "10.20.1.5/icmp"], ["fd00::1/icmp", "tcp:1"]),
        ("*", ["tcp:22", "icmp", "proto:47"], ["10.20.1.5/tcp:22", "fd00:20::5/icmp"]),
        ("tunnel/*", [], ["tcp:22", "icmp"]),
    ],
)
def test_each_ip_part(part: str, allowed: list[str], denied: list[str]) -> None:
    policy = one(part)
    for detail in allowed:
        assert allows(policy, detail), (part, detail)
    for detail in denied:
        assert not allows(policy, detail), (part, detail)


def test_the_target_still_decides() -> None:
    policy = one("ip/tcp:22")
    assert not allows(policy, "tcp:22", Place("other"))
    assert allows(policy, "tcp:22", Place("other", frozenset({"tag:gw"})))


def test_decide_kind_ip_is_the_hubs_first_line() -> None:
    assert one("ip/10.20.0.0/16/tcp:22").decide_kind(ANN, HERE, "ip").allowed
    assert one("*").decide_kind(ANN, HERE, "ip").allowed
    assert not one("app/*").decide_kind(ANN, HERE, "ip").allowed
    assert not one("ip/*").decide_kind(ANN, HERE, "app").allowed
    assert not one("ip/*").decide_kind(ANN, Place("other"), "ip").allowed


def test_tests_take_ip_entries() -> None:
    text = """{
  "acls": [{"action": "accept", "src": ["ann"], "dst": ["gw:ip/tcp:22", "gw:ip/10.20.0.0/16/icmp"]}],
  "tests": [{"src": "ann", "accept": ["gw:ip/tcp:22", "gw:ip/10.20.9.9/icmp"],
             "deny": ["gw:ip/tcp:23", "gw:ip/10.21.0.1/icmp", "gw:ip/tcp:*", "gw:ip/icmp"]}],
}"""
    policy = Policy.load(text)
    assert policy.run_tests(lambda name: frozenset()) == []
    failing = Policy.load(text.replace('"gw:ip/tcp:23"', '"gw:ip/tcp:22"'))
    [failure] = failing.run_tests(lambda name: frozenset())
    assert failure.message == (
        "test at line 4: ann -> gw:ip/tcp:22 should be denied, but the rule at line 2 allows it "
        "(acls[0]: accept ann -> gw:ip/tcp:22)"
    )


def test_parse_app_target() -> None:
    assert parse_app_target("ip/tcp:22") == AppTarget("ip", "tcp:22")
    assert str(parse_app_target("ip/10.20.1.5/udp:53")) == "ip/10.20.1.5/udp:53"
    assert parse_app_target("ip/fd00:20::5/icmp") == AppTarget("ip", "fd00:20::5/icmp")
    for bad in ("ip/", "ip/*", "ip/tcp", "ip/tcp:1-2", "ip/tcp:65536", "ip/10.20.0.0/16/tcp:1", "ip/x/tcp:1",
                "ip/proto:6", "ip/proto:256", "ip/tcp:022", "ip/icmp6", "ip/fe80::1%eth0/tcp:1"):  # fmt: skip
        with pytest.raises(BadInput) as caught:
            parse_app_target(bad)
        assert caught.value.message.startswith(f"invalid app target {bad!r}: ") and "\n" not in caught.value.message


def test_parse_detail() -> None:
    assert parse_detail("tcp:0") == (None, "tcp", 0)
    assert parse_detail("udp:*") == (None, "udp", None)
    assert parse_detail("proto:0") == (None, "proto", 0)
    with pytest.raises(IpError):
        parse_detail("proto:17")


def position(part: str) -> PolicyError:
    text = '{"acls": [\n  {"action": "accept", "src": ["*"],\n   "dst": ["web-1:ip/tcp:22", "*:' + part + '"]}]}'
    with pytest.raises(PolicyError) as caught:
        Policy.load(text)
    error = caught.value
    assert (error.line, error.column) == (3, 31), error.message
    assert "\n" not in error.message
    return error


@pytest.mark.parametrize(
    ("part", "message"),
    [
        (
            "ip/10.20.0.5/16/tcp:22",
            "'10.20.0.5/16' is not a CIDR such as 10.20.0.0/16 or fd00:20::/64: did you mean 10.20.0.0/16",
        ),
        ("ip/10.20.0.0/33/*", "the prefix length is 0 to 32"),
        ("ip/fd00:20::1/64/*", "did you mean fd00:20::/64"),
        ("ip/10.20.0.0/16", "says no protocol: write ip/10.20.0.0/16/* or ip/10.20.0.0/16/tcp:PORT"),
        ("ip/db.lan/tcp:22", "'db.lan' is not an IP address or CIDR"),
        ("ip/fe80::%eth0/64/*", "'fe80::%eth0' is not an IP address or CIDR"),
        ("ip/tcp", "write ip/tcp:* for every TCP port, or ip/tcp:PORT"),
        ("ip/udp:0", "port '0' is not a number from 1 to 65535"),
        ("ip/udp:70000", "port '70000' is not a number from 1 to 65535"),
        ("ip/tcp:5100-5000", "port range '5100-5000' runs backwards: write 5000-5100"),
        ("ip/tcp:022", "port '022' has a leading zero: write 22"),
        ("ip/tcp:a-b", "port 'a' is not a number"),
        ("ip/proto:6", "protocol 6 is tcp: write ip/tcp:PORTS"),
        ("ip/proto:58", "protocol 58 is icmpv6: write ip/icmp"),
        ("ip/proto:300", "protocol '300' is not a number from 0 to 255"),
        ("ip/icmpv6", "write ip/icmp: it covers ICMP and ICMPv6"),
        ("ip/gre", "'gre' is not a protocol part: use ip/*"),
        ("ip/", "'' is not a protocol part"),
        ("ip/10.20.0.0/16/tcp:22/x", "is not a protocol part"),
    ],
)
def test_errors_name_line_and_column(part: str, message: str) -> None:
    error = position(part)
    assert message in error.message, error.message
    assert error.message.startswith(f"policy line 3, column 31: dst '*:{part}': ")


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet="0123456789abcdef.:/%*-tcpudimorx ", max_size=40), st.text(max_size=20))
def test_fuzz_ip_patterns_and_details(text: str, other: str) -> None:
    """Any text after `ip/`: a pattern and a detail, or an IpError; a pattern's `matches` never raises."""
    for candidate in (text, other):
        try:
            pattern = parse_pattern(candidate)
        except IpError:
            pattern = None
        with contextlib.suppress(IpError):
            parse_detail(candidate)
        if pattern is not None:
            assert pattern.matches(other) in (True, False) and pattern.matches(text) in (True, False)
