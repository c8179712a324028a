"""ztm.addr.Address: parsing HOST:PORT as users type it, and formatting it back."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ztm.addr import Address
from ztm.errors import BadInput

FUZZ = settings(max_examples=200, deadline=None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7777", Address("127.0.0.1", 7777)),
        ("  127.0.0.1:7777\n", Address("127.0.0.1", 7777)),
        ("localhost:1", Address("localhost", 1)),
        ("hub.example.com:65535", Address("hub.example.com", 65535)),
        ("hub.example.com.:8888", Address("hub.example.com.", 8888)),
        ("under_score:80", Address("under_score", 80)),
        ("[::1]:8888", Address("::1", 8888)),
        ("[2001:db8::1]:443", Address("2001:db8::1", 443)),
        ("[::ffff:1.2.3.4]:1", Address("::ffff:1.2.3.4", 1)),
        ("h:0080", Address("h", 80)),
    ],
)
def test_parse(text: str, expected: Address) -> None:
    assert Address.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [("7777", Address("0.0.0.0", 7777)), (":7777", Address("0.0.0.0", 7777)), ("1.2.3.4:5", Address("1.2.3.4", 5))],
)
def test_parse_with_default_host(text: str, expected: Address) -> None:
    assert Address.parse(text, default_host="0.0.0.0") == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "7777",
        ":7777",
        "host",
        "host:",
        "host:0",
        "host:65536",
        "host:-1",
        "host:+1",
        "host:1.5",
        "host:port",
        "a:b:c",
        "::1:80",
        "[::1]",
        "[::1]80",
        "[::1:80",
        "[1.2.3.4]:80",
        "[host]:80",
        "bad host:80",
        "-bad:80",
        "bad-:80",
        "a..b:80",
        "é.com:80",
        "a/b:80",
        "x" * 64 + ":80",
        ("a." * 127) + "ab:80",
    ],
)
def test_bad_addresses_raise_bad_input(text: str) -> None:
    with pytest.raises(BadInput) as info:
        Address.parse(text, what="--listen")
    assert info.value.message.startswith("--listen: ")
    assert "expected HOST:PORT" in info.value.message


def test_not_a_string() -> None:
    with pytest.raises(BadInput, match="empty"):
        Address.parse(None)  # type: ignore[arg-type]


def test_str_and_is_ip() -> None:
    assert str(Address("::1", 80)) == "[::1]:80"
    assert str(Address("1.2.3.4", 80)) == "1.2.3.4:80"
    assert str(Address("h", 80)) == "h:80"
    assert Address("::1", 1).is_ip and Address("1.2.3.4", 1).is_ip
    assert not Address("localhost", 1).is_ip


# ------------------------------------------------------------------------------------------------ fuzz


def parse_or_bad_input(text: str, default_host: str | None = None) -> Address | None:
    try:
        return Address.parse(text, default_host=default_host)
    except BadInput as e:
        assert e.message
        return None


address_like = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="0123456789abcdef.:[]% -_xyz\n", max_size=40),
    st.builds(
        "{}:{}".format,
        st.one_of(st.ip_addresses().map(str), st.from_regex(r"[a-z0-9.-]{0,20}", fullmatch=True)),
        st.one_of(st.integers(-5, 70000).map(str), st.text("0123456789", max_size=6)),
    ),
    st.builds("[{}]:{}".format, st.ip_addresses(v=6).map(str), st.integers(0, 70000)),
)


@FUZZ
@given(address_like, st.sampled_from([None, "0.0.0.0", "::"]))
@example("[::1]:80", None)
def test_parse_only_raises_bad_input_and_round_trips(text: str, default_host: str | None) -> None:
    addr = parse_or_bad_input(text, default_host)
    if addr is None:
        return
    assert 0 < addr.port < 65536
    assert addr.host
    assert Address.parse(str(addr)) == addr
    if addr.is_ip:
        assert str(addr) == f"{'[' + addr.host + ']' if ':' in addr.host else addr.host}:{addr.port}"


hostnames = st.from_regex(
    r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?){0,3}", fullmatch=True
)


@FUZZ
@given(st.one_of(st.ip_addresses().map(str), hostnames), st.integers(1, 65535))
def test_every_valid_address_round_trips(host: str, port: int) -> None:
    addr = Address(host, port)
    assert Address.parse(str(addr)) == addr
    assert Address.parse(f"  {addr}  ") == addr
    assert addr.is_ip == _is_ip(host)


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------------ known bugs
# Found by the fuzz above, fixed in ztm.addr; kept as regression tests.


def test_superscript_port_is_bad_input() -> None:
    with pytest.raises(BadInput):
        Address.parse("host:²")


def test_huge_port_is_bad_input() -> None:
    with pytest.raises(BadInput):
        Address.parse("host:" + "1" * 5000)


def test_host_with_a_newline_is_bad_input() -> None:
    with pytest.raises(BadInput):
        Address.parse("host\n:80")


def test_ipv6_scope_with_control_characters_is_bad_input() -> None:
    with pytest.raises(BadInput):
        Address.parse("[fe80::1%\n]:80")


def test_non_ascii_digits_are_bad_input() -> None:
    with pytest.raises(BadInput):
        Address.parse("host:٨٠")
