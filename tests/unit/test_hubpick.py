"""The agent's hub choice (`ztm.agent.hubpick`): the hub list parser, zones, tiers, RTT order, a failed hub left out."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ztm.addr import Address
from ztm.agent import hubpick
from ztm.agent.hubpick import Candidate, HubView, check_zone, parse_hub, parse_hubs, plan
from ztm.errors import BadInput


def hub(hub_id: str, *addresses: str, zone: str = "", online: bool = True) -> HubView:
    return HubView(id=hub_id, zone=zone, addresses=tuple(Address.parse(a) for a in addresses), online=online)


def order(tiers: list[list[Candidate]]) -> list[list[str]]:
    return [[str(c.address) for c in tier] for tier in tiers]


A = hub("a", "10.0.0.1:8888", zone="zone-a")
B = hub("b", "10.0.0.2:8888", zone="zone-b")
C = hub("c", "10.0.0.3:8888", "10.0.0.33:8888", zone="zone-b")
D = hub("d", "10.0.0.4:8888", zone="zone-b", online=False)


# ---- zones


@pytest.mark.parametrize("zone", ["a", "0", "zone-b", "eu-west-1", "a" * 32, "9-", ""])
def test_zone_names_accepted(zone: str) -> None:
    assert check_zone(zone) == zone


@pytest.mark.parametrize("zone", ["A", "-a", "a_b", "a b", "a" * 33, "zoné", "a.b", " a", "a\n"])
def test_zone_names_refused_with_one_line(zone: str) -> None:
    with pytest.raises(BadInput) as info:
        check_zone(zone)
    message = info.value.message
    assert message.startswith("--zone: ") and "\n" not in message and "lowercase letters" in message


# ---- choice


def test_own_zone_first_then_any_online_then_unknown_and_bootstraps() -> None:
    tiers = plan([A, B, D], [Address.parse("10.9.9.9:8888")], "zone-b", {})
    assert order(tiers) == [["10.0.0.2:8888"], ["10.0.0.1:8888"], ["10.0.0.4:8888", "10.9.9.9:8888"]]
    assert [c.tier for t in tiers for c in t] == [0, 1, 2, 2]
    assert tiers[2][1].hub_id is None, "a bare bootstrap address claims no hub id"


def test_without_a_zone_every_online_hub_is_one_tier() -> None:
    tiers = plan([A, B, D], [], "", {})
    assert order(tiers) == [["10.0.0.1:8888", "10.0.0.2:8888"], ["10.0.0.4:8888"]]


def test_a_zone_no_hub_has_falls_back_to_any_online_hub() -> None:
    assert order(plan([A, B], [], "zone-x", {})) == [["10.0.0.1:8888", "10.0.0.2:8888"]]


def test_lowest_rtt_first_among_equals_unmeasured_last_ties_by_id() -> None:
    e = hub("e", "10.0.0.5:8888", zone="zone-b")
    tiers = plan([e, B, C], [], "zone-b", {"c": 0.002, "b": 0.010})
    assert order(tiers) == [["10.0.0.3:8888", "10.0.0.33:8888", "10.0.0.2:8888", "10.0.0.5:8888"]]
    tied = plan([C, B], [], "zone-b", {"b": 0.005, "c": 0.005})
    assert order(tied) == [["10.0.0.2:8888", "10.0.0.3:8888", "10.0.0.33:8888"]]


def test_the_failed_hub_is_skipped_unless_it_is_the_only_one() -> None:
    assert order(plan([A, B], [], "zone-b", {}, skip="b")) == [["10.0.0.1:8888"]]
    assert order(plan([B], [], "zone-b", {}, skip="b")) == [["10.0.0.2:8888"]]
    only_bootstrap = [Address.parse("10.9.9.9:8888")]
    assert order(plan([], only_bootstrap, "", {}, skip="10.9.9.9:8888")) == [["10.9.9.9:8888"]]
    two = [Address.parse("10.9.9.9:8888"), Address.parse("10.9.9.8:8888")]
    assert order(plan([], two, "", {}, skip="10.9.9.9:8888")) == [["10.9.9.8:8888"]]


def test_bootstraps_a_listed_hub_names_are_not_dialled_twice() -> None:
    tiers = plan([B], [Address.parse("10.0.0.2:8888")], "", {})
    assert order(tiers) == [["10.0.0.2:8888"]] and tiers[0][0].hub_id == "b"


def test_unknown_hubs_only_bootstraps() -> None:
    boot = [Address.parse("h1:1"), Address.parse("h2:2")]
    assert order(plan([], boot, "zone-b", {"h2:2": 0.001})) == [["h2:2", "h1:1"]]
    assert plan([], [], "", {}) == []


def test_below_keeps_only_strictly_better_tiers() -> None:
    assert order(plan([A, B, D], [], "zone-b", {}, below=1)) == [["10.0.0.2:8888"]]
    assert plan([A, D], [], "zone-b", {}, below=1) == []
    assert hubpick.current_tier([A, B], "zone-b", "a") == 1
    assert hubpick.current_tier([A, B], "zone-b", "b") == 0
    assert hubpick.current_tier([A, B], "zone-b", "zz") == 2


def test_merge_one_replaces_or_adds_within_the_bound() -> None:
    assert hubpick.merge_one([A, B], hub("b", "1.1.1.1:1")) == [A, hub("b", "1.1.1.1:1")]
    many = [hub(f"h{i}", f"10.1.0.{i}:1") for i in range(hubpick.MAX_HUBS)]
    merged = hubpick.merge_one(many, hub("new", "9.9.9.9:9"))
    assert len(merged) == hubpick.MAX_HUBS and merged[0].id == "new"


# ---- the hub list parser


VIEW = {
    "id": "0123456789abcdef",
    "zone": "zone-b",
    "addresses": ["127.0.0.1:8888", "[::1]:8888"],
    "online": True,
    "endpoints": 3,
    "version": "0.9.0",
    "started": "2026-01-01T00:00:00Z",
    "last_seen": "2026-01-01T00:00:01Z",
}


def test_a_valid_view_round_trips() -> None:
    parsed = parse_hub(VIEW)
    assert parsed.to_json() == VIEW
    assert parse_hub(parsed.to_json()) == parsed


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"id": ""}, "id"),
        ({"id": 5}, "id"),
        ({"id": "x\n"}, "id"),
        ({"zone": "Bad Zone"}, "zone"),
        ({"addresses": []}, "no addresses"),
        ({"addresses": "127.0.0.1:1"}, "no addresses"),
        ({"addresses": ["nohost"]}, "address"),
        ({"addresses": [7]}, "not a string"),
        ({"online": "yes"}, "online"),
        ({"version": "v" * 500}, "version"),
    ],
)
def test_malformed_entries_are_refused_with_the_reason(change: dict[str, Any], why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_hub({**VIEW, **change})


def test_list_drops_bad_entries_dedupes_and_bounds_telling_why_once() -> None:
    problems: list[str] = []
    entries = [VIEW, {**VIEW, "zone": "other"}, "junk", {"id": "x"}]
    entries += [{**VIEW, "id": f"h{i}"} for i in range(100)]
    hubs = parse_hubs(entries, problems.append)
    assert hubs is not None and len(hubs) == hubpick.MAX_HUBS
    assert hubs[0].zone == "zone-b", "the first entry of an id wins"
    assert problems == [
        "ignored 2 malformed entries (an entry is not a JSON object); kept the first 64 hubs of a list of 104 entries"
    ]
    assert parse_hubs({"hubs": []}, problems.append) is None


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=8),
    max_leaves=30,
)
VIEWISH = st.fixed_dictionaries(
    {
        "id": st.text(max_size=20) | st.integers(),
        "addresses": st.lists(st.text(max_size=30) | st.sampled_from(["1.2.3.4:5", "[::1]:80", "h:0"]), max_size=3),
    },
    optional={"zone": st.text(max_size=40), "online": JSON, "endpoints": JSON, "version": JSON},
)


@settings(max_examples=300, deadline=None)
@given(st.lists(VIEWISH | JSON, max_size=80) | JSON)
@example([VIEW])
def test_any_json_gives_a_valid_list_or_is_ignored(value: object) -> None:
    problems: list[str] = []
    hubs = parse_hubs(json.loads(json.dumps(value)), problems.append)
    if not isinstance(value, list):
        assert hubs is None
        return
    assert hubs is not None and len(hubs) <= hubpick.MAX_HUBS
    assert len({h.id for h in hubs}) == len(hubs)
    for h in hubs:
        assert h.id and h.addresses and len(h.addresses) <= hubpick.MAX_ADDRESSES
        assert parse_hub(h.to_json()) == h, "what the agent keeps parses again (it is stored and reloaded)"
        assert h.zone == "" or check_zone(h.zone) == h.zone
    assert len(problems) <= 1
    for tier in plan(hubs, [], "zone-b", {}):
        assert tier
