"""`ztm.agent.gate.PolicyGate` alone: no policy allows everything uncounted; a policy decides from the caller's
certificate user and the endpoint list's name and tags (never the stream's claimed name), counts and refuses with the
rule; tracked connections a new policy denies are closed in the same call, counted, and only those; a connection
tracked after a policy change that already denies it is closed at once."""

from __future__ import annotations

import logging

import pytest

from ztm.agent.apps import Caller
from ztm.agent.gate import PolicyGate
from ztm.errors import Forbidden
from ztm.policy import AppTarget, Place, Policy

POLICY = """{
  "groups": {"group:ops": ["ops1"]},
  "tagOwners": {"tag:db": ["root"], "tag:ci": ["root"]},
  "acls": [
    {"action": "accept", "src": ["group:ops"], "dst": ["tag:db:tunnel/tcp/pg"]},
    {"action": "accept", "src": ["tag:ci"], "dst": ["db-1:terminal"]},
    {"action": "accept", "src": ["bob@build-7", "dave@build-7"], "dst": ["db-1:app/chat"]},
  ],
}"""
PG = AppTarget("tunnel", "tcp/pg")
TERMINAL = AppTarget("terminal", "")

OPS = Caller("a" * 32, "ops-laptop", "ops1")
BOB = Caller("b" * 32, "bob-laptop", "bob")
CI = Caller("c" * 32, "ci-runner", "carol")
PEERS = {
    OPS.ep_id: ("ops-laptop", frozenset[str]()),
    BOB.ep_id: ("bob-laptop", frozenset[str]()),
    CI.ep_id: ("ci-runner", frozenset({"tag:ci"})),
}


def gate(text: str | None = POLICY, version: int = 3) -> PolicyGate:
    g = PolicyGate("m", place=lambda: Place("db-1", frozenset({"tag:db"})), peer=PEERS.get)
    if text is not None:
        g.set_policy(Policy.load(text, version))
    return g


def test_no_policy_allows_everything_and_counts_nothing() -> None:
    g = gate(None)
    assert g.check(BOB, PG).allowed and g.version == 0
    assert not g.counters and g.rules_for_me() == []


def test_a_policy_decides_counts_and_names_the_rule(caplog: pytest.LogCaptureFixture) -> None:
    g = gate()
    decision = g.check(OPS, PG)
    assert decision.allowed and decision.line == 5
    assert g.check(CI, TERMINAL).allowed  # by the tag of its endpoint in the endpoint list
    with caplog.at_level(logging.WARNING, "ztm.agent"), pytest.raises(Forbidden) as refused:
        g.check(BOB, PG)
    assert refused.value.message == "policy: denied: no rule of policy version 3 allows it"
    assert "refused tunnel/tcp/pg to user bob from endpoint bob-laptop" in caplog.text
    assert "no rule of policy version 3 allows it" in caplog.text
    assert g.counters == {"allowed:tunnel": 1, "allowed:terminal": 1, "denied:tunnel": 1}
    assert [line for line, _ in g.rules_for_me()] == [5, 6, 7]


def test_the_name_comes_from_the_endpoint_list_not_the_streams_claim() -> None:
    g = gate()
    posing = Caller(BOB.ep_id, "build-7", "bob")  # the stream's opening named bob's endpoint `build-7`
    with pytest.raises(Forbidden):
        g.check(posing, AppTarget("app", "chat"))
    unknown = Caller("d" * 32, "build-7", "dave")  # not in the list (yet): the claim is all there is
    assert g.check(unknown, AppTarget("app", "chat")).allowed


def test_a_new_policy_closes_what_it_denies_at_once_and_only_that() -> None:
    g = gate()
    closed: list[tuple[str, str]] = []
    g.track(OPS, PG, lambda why: closed.append(("ops", why)))
    g.track(CI, TERMINAL, lambda why: closed.append(("ci", why)))
    assert g.tracked == 2 and not closed
    only_ci = POLICY.replace('"src": ["group:ops"]', '"src": ["nobody"]')
    assert g.set_policy(Policy.load(only_ci, 4)) == 1
    assert closed == [("ops", "policy: denied: no rule of policy version 4 allows it")]
    assert g.tracked == 1 and g.counters["closed:tunnel"] == 1
    assert g.set_policy(Policy.load(only_ci, 5)) == 0  # closed once only
    assert g.set_policy(None) == 0 and g.tracked == 1  # no policy: nothing is denied


def test_untrack_stops_watching_and_a_late_track_is_closed_at_once() -> None:
    g = gate()
    closed: list[str] = []
    untrack = g.track(OPS, PG, closed.append)
    untrack()
    untrack()
    g.set_policy(Policy.load("{}", 9))
    assert closed == [] and g.tracked == 0
    g.track(OPS, PG, closed.append)  # checked before the policy came, tracked after it
    assert closed == ["policy: denied: no rule of policy version 9 allows it"] and g.tracked == 0


def test_a_failing_close_does_not_keep_the_others_open() -> None:
    g = gate()
    closed: list[str] = []

    def broken(_why: str) -> None:
        raise RuntimeError("boom")

    g.track(OPS, PG, broken)
    g.track(OPS, PG, closed.append)
    assert g.set_policy(Policy.load("{}", 4)) == 2 and len(closed) == 1


IP_POLICY = """{
  "groups": {"group:ops": ["ops1"]},
  "tagOwners": {"tag:db": ["root"], "tag:ci": ["root"]},
  "acls": [
    {"action": "accept", "src": ["group:ops"], "dst": ["tag:db:ip/tcp:22", "db-1:ip/10.20.0.0/16/icmp"]},
  ],
}"""


def test_allow_ip_decides_counts_and_logs_a_denial_once_per_version(caplog: pytest.LogCaptureFixture) -> None:
    assert gate(None).allow_ip(BOB, "tcp:22") is None  # no policy: network mode is the receiver's opt-in
    g = gate(IP_POLICY)
    assert g.allow_ip(OPS, "tcp:22") is None
    assert g.allow_ip(OPS, "10.20.1.5/icmp") is None
    with caplog.at_level(logging.WARNING, "ztm.agent"):
        for _ in range(3):
            assert g.allow_ip(OPS, "tcp:23") == "denied: no rule of policy version 3 allows it"
            assert g.allow_ip(BOB, "tcp:22") == "denied: no rule of policy version 3 allows it"
    assert caplog.text.count("dropping ip/tcp:23 from user ops1") == 1
    assert caplog.text.count("dropping ip/tcp:22 from user bob") == 1
    assert g.counters == {"allowed:ip": 2, "denied:ip": 6}
    caplog.clear()
    g.set_policy(Policy.load(IP_POLICY, 4))
    with caplog.at_level(logging.WARNING, "ztm.agent"):
        assert g.allow_ip(OPS, "tcp:23") is not None
        assert g.allow_ip(OPS, "tcp:23") is not None
    assert caplog.text.count("dropping ip/tcp:23 from user ops1") == 1  # again, once, under the new version
