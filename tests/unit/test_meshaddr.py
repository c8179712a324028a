"""`ztm.hub.meshaddr` (issue 17): the mesh range, its IPv6 ULA /48, allocation of endpoint addresses, and the
validation of advertised route CIDRs (a hypothesis fuzz of the parser: any text gives a normalised CIDR that obeys
every rule, or a one-line `BadInput`, never another exception)."""

from __future__ import annotations

import hashlib
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztm.errors import BadInput
from ztm.hub import meshaddr

MESH4 = ipaddress.IPv4Network("100.64.0.0/10")
MESH6 = meshaddr.ula48("0123456789abcdef")


def test_the_ula_prefix_comes_from_the_mesh_id() -> None:
    digest = hashlib.sha256(b"0123456789abcdef").digest()
    assert MESH6.prefixlen == 48
    assert MESH6.network_address.packed[:6] == b"\xfd" + digest[:5]
    assert meshaddr.ula48("other") != MESH6
    assert meshaddr.ip6_of(MESH6, "100.64.0.5") == str(MESH6.network_address + 0x64400005)
    assert meshaddr.ip6_of(MESH6, "100.64.0.5").endswith("::6440:5")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("100.64.0.0", "with a prefix"),
        ("100.64.0.0/7", "/8 to /24"),
        ("100.64.0.0/25", "/8 to /24"),
        ("100.64.0.1/10", "did you mean 100.64.0.0/10"),
        ("fd00::/48", "IPv4"),
        ("banana/10", "not an IPv4 network"),
        (5, "with a prefix"),
    ],
)
def test_bad_ranges(text: object, says: str) -> None:
    with pytest.raises(BadInput) as err:
        meshaddr.parse_range(text)
    assert says in err.value.message and "\n" not in err.value.message


def test_good_ranges() -> None:
    assert meshaddr.parse_range(meshaddr.DEFAULT_RANGE) == MESH4
    assert meshaddr.parse_range("10.0.0.0/8").prefixlen == 8
    assert meshaddr.parse_range("192.168.7.0/24").num_addresses == 256


def test_allocation_takes_the_lowest_free_address_and_skips_network_first_and_broadcast() -> None:
    net = ipaddress.IPv4Network("10.9.0.0/24")
    assert meshaddr.first_free(net, set()) == "10.9.0.2"
    assert meshaddr.first_free(net, {"10.9.0.2", "10.9.0.3"}) == "10.9.0.4"
    assert meshaddr.first_free(net, {"10.9.0.2", "10.9.0.4"}) == "10.9.0.3"  # a freed address is reused first
    assert meshaddr.first_free(net, {"1.2.3.4", "nonsense"}) == "10.9.0.2"  # addresses outside count for nothing
    taken = {str(a) for a in list(net.hosts())[1:-1]}  # .2 .. .253
    assert meshaddr.first_free(net, taken) == "10.9.0.254"
    assert meshaddr.first_free(net, taken | {"10.9.0.254"}) is None  # never .255 (broadcast) nor .0 nor .1
    assert meshaddr.capacity(net) == 253


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("10.20.0.5/16", "did you mean 10.20.0.0/16"),
        ("0.0.0.0/0", "exit nodes"),
        ("::/0", "exit nodes"),
        ("100.64.0.0/16", "overlaps the mesh range 100.64.0.0/10"),
        ("100.0.0.0/8", "overlaps the mesh range"),
        (str(MESH6.supernet(new_prefix=32)), "overlaps the mesh range"),
        (str(ipaddress.IPv6Network((MESH6.network_address, 64))), "overlaps the mesh range"),
        ("127.0.0.0/8", "loopback"),
        ("::1/128", "loopback"),
        ("169.254.1.0/24", "link-local"),
        ("fe80::/64", "link-local"),
        ("239.0.0.0/8", "multicast"),
        ("ff02::/16", "multicast"),
        ("0.0.0.0/8", "unspecified"),
        ("::ffff:10.0.0.0/104", "IPv4-mapped"),
        ("10.0.0.0/7", "prefix /7"),
        ("2001:db8::/15", "prefix /15"),
        ("10.20.0.0", "not a CIDR"),
        ("10.20.0.0/33", "not a CIDR"),
        ("", "a CIDR string"),
        (None, "a CIDR string"),
        (["10.0.0.0/8"], "a CIDR string"),
        ("x" * 100, "not a CIDR"),
    ],
)
def test_bad_routes(text: object, says: str) -> None:
    with pytest.raises(BadInput) as err:
        meshaddr.parse_route(text, MESH4, MESH6)
    assert says in err.value.message and "\n" not in err.value.message


def test_good_routes() -> None:
    assert meshaddr.parse_route("10.20.0.0/16", MESH4, MESH6) == "10.20.0.0/16"
    assert meshaddr.parse_route("192.168.5.7/32", MESH4, MESH6) == "192.168.5.7/32"
    assert meshaddr.parse_route("2001:DB8:0::/32", MESH4, MESH6) == "2001:db8::/32"
    assert meshaddr.parse_route("100.128.0.0/16", MESH4, MESH6) == "100.128.0.0/16"  # just past the range
    assert meshaddr.parse_routes(["10.1.0.0/16", "10.1.0.0/16", "10.2.0.0/16"], MESH4, MESH6) == [
        "10.1.0.0/16",
        "10.2.0.0/16",
    ]
    with pytest.raises(BadInput, match="at most 64"):
        meshaddr.parse_routes([f"10.{i}.0.0/16" for i in range(65)], MESH4, MESH6)
    with pytest.raises(BadInput, match="list of CIDRs"):
        meshaddr.parse_routes([], MESH4, MESH6)
    assert meshaddr.sorted_cidrs(["fd00:1::/32", "10.2.0.0/16", "10.1.0.0/24", "10.1.0.0/16"]) == [
        "10.1.0.0/16",
        "10.1.0.0/24",
        "10.2.0.0/16",
        "fd00:1::/32",
    ]


SPECIAL = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "0.0.0.0/8", "::1/128",
                                              "fe80::/10", "ff00::/8", "::ffff:0:0/96")]  # fmt: skip
CIDRISH = st.one_of(
    st.builds(lambda a, p: f"{ipaddress.IPv4Address(a)}/{p}", st.integers(0, 2**32 - 1), st.integers(-1, 34)),
    st.builds(lambda a, p: f"{ipaddress.IPv6Address(a)}/{p}", st.integers(0, 2**128 - 1), st.integers(-1, 130)),
    st.builds(lambda p: f"{MESH6.network_address}/{p}", st.integers(0, 128)),
    st.text(max_size=50),
    st.text(alphabet="0123456789abcdef.:/ ", max_size=45),
)


@settings(max_examples=3000, deadline=None)
@given(text=CIDRISH)
def test_the_route_parser_never_accepts_a_bad_route_nor_crashes(text: str) -> None:
    try:
        cidr = meshaddr.parse_route(text, MESH4, MESH6)
    except BadInput as exc:
        assert exc.message and "\n" not in exc.message
        return
    net = ipaddress.ip_network(cidr)  # strict: the network address, no host bits
    assert str(net) == cidr
    assert (8 if net.version == 4 else 16) <= net.prefixlen
    assert not net.overlaps(MESH4 if net.version == 4 else MESH6)  # type: ignore[arg-type]
    assert not any(net.version == s.version and net.overlaps(s) for s in SPECIAL)  # type: ignore[arg-type]
    assert meshaddr.parse_route(cidr, MESH4, MESH6) == cidr  # normal form is a fixed point


def test_after_a_collision_an_address_anywhere_in_the_range_free_and_never_reserved() -> None:
    """`anywhere`: hubs whose views lag must not all retry on the lowest free addresses (bench/RESULTS.md)."""
    net = ipaddress.IPv4Network("10.9.0.0/24")
    taken = {f"10.9.0.{i}" for i in range(2, 200)}
    picks = {meshaddr.first_free(net, taken, anywhere=True) for _ in range(200)}
    assert None not in picks and not picks & taken
    assert all(200 <= int(str(p).rsplit(".", 1)[1]) <= 254 for p in picks)
    assert len(picks) > 10  # spread, not always the lowest (10.9.0.200)
    full = taken | {f"10.9.0.{i}" for i in range(200, 255)}
    assert meshaddr.first_free(net, full, anywhere=True) is None
    assert meshaddr.first_free(net, full - {"10.9.0.77"}, anywhere=True) == "10.9.0.77"  # the last one is found
