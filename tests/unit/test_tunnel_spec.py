"""Tunnel configuration parsing (`ztm.apps.tunnel.spec`): what is accepted and normalised, what is refused, and a fuzz
of every field with arbitrary JSON: the only exception ever raised is `BadInput`, and whatever is accepted survives a
round trip through `to_json` (that is how it is stored and restored). The command line's own check of tunnel names
agrees with the agent's."""

from __future__ import annotations

import argparse
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztm.addr import Address
from ztm.apps.tunnel.spec import MAX_ITEMS, Inbound, Outbound, TunnelName
from ztm.cli.tunnel import tunnel_type
from ztm.errors import BadInput

EP_ID = str(uuid.UUID(int=7))


# ---------------------------------------------------------------------------------------------------- names


@pytest.mark.parametrize("text", ["tcp/web", "udp/dns", "tcp/a", "tcp/A.b_c-d", "udp/0", "tcp/" + "x" * 63])
def test_valid_names(text: str) -> None:
    name = TunnelName.parse(text)
    assert str(name) == text
    assert name.protocol == text[:3] and name.name == text[4:]
    assert tunnel_type(text) == text


@pytest.mark.parametrize(
    "value",
    [None, 5, [], {}, "", "tcp", "tcp/", "/web", "http/web", "TCP/web", "tcp/-web", "tcp/.web", "tcp/a b", "tcp/a/b",
     "tcp/" + "x" * 64, "tcp/é", "tcp/web\n", " tcp/web", "tcp\\web", "tcp:web"],
)  # fmt: skip
def test_invalid_names(value: object) -> None:
    with pytest.raises(BadInput, match="expected tcp/NAME or udp/NAME"):
        TunnelName.parse(value)
    if isinstance(value, str):
        with pytest.raises(argparse.ArgumentTypeError, match="expected tcp/NAME or udp/NAME"):
            tunnel_type(value)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=80), st.from_regex(r"(tcp|udp|TCP|x)/[A-Za-z0-9._/ -]{0,70}", fullmatch=True)))
def test_cli_and_agent_agree_on_names(text: str) -> None:
    try:
        TunnelName.parse(text)
        agent_ok = True
    except BadInput:
        agent_ok = False
    try:
        tunnel_type(text)
        cli_ok = True
    except argparse.ArgumentTypeError:
        cli_ok = False
    assert cli_ok == agent_ok, text


# ------------------------------------------------------------------------------------------------ inbound


def test_inbound_listen_defaults_to_loopback_and_dedupes() -> None:
    spec = Inbound.parse(
        {"tunnel": "tcp/web", "listen": ["8080", ":8080", "127.0.0.1:8080", "0.0.0.0:9000", "[::1]:7000"]}
    )
    assert spec.listen == (Address("127.0.0.1", 8080), Address("0.0.0.0", 9000), Address("::1", 7000))
    assert spec.exits == ()
    assert spec.to_json() == {
        "tunnel": "tcp/web",
        "listen": ["127.0.0.1:8080", "0.0.0.0:9000", "[::1]:7000"],
        "exits": [],
        "exit_users": [],
    }


def test_inbound_exits_keep_their_order() -> None:
    spec = Inbound.parse({"tunnel": "udp/dns", "listen": ["53"], "exits": ["b", EP_ID, "a", "b"]})
    assert spec.exits == ("b", EP_ID, "a")
    assert Inbound.parse(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"listen": ["80"]}, "missing field .tunnel."),
        ({"tunnel": 5, "listen": ["80"]}, "invalid tunnel 5"),
        ({"tunnel": "tcp/x"}, "listen: give at least one"),
        ({"tunnel": "tcp/x", "listen": []}, "listen: give at least one"),
        ({"tunnel": "tcp/x", "listen": "80"}, "listen must be a list"),
        ({"tunnel": "tcp/x", "listen": [80]}, "listen must be a list of strings"),
        ({"tunnel": "tcp/x", "listen": ["0"]}, "port must be a number from 1 to 65535"),
        ({"tunnel": "tcp/x", "listen": ["65536"]}, "port must be"),
        ({"tunnel": "tcp/x", "listen": ["bad host!:80"]}, "not a valid host"),
        ({"tunnel": "tcp/x", "listen": [str(1000 + i) for i in range(MAX_ITEMS + 1)]}, f"at most {MAX_ITEMS}"),
        ({"tunnel": "tcp/x", "listen": ["80"], "exits": "a"}, "exits must be a list"),
        ({"tunnel": "tcp/x", "listen": ["80"], "exits": ["bad name!"]}, "invalid endpoint in exits"),
        ({"tunnel": "tcp/x", "listen": ["80"], "exits": [f"e{i}" for i in range(MAX_ITEMS + 1)]}, "at most"),
    ],
)
def test_inbound_refusals(body: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        Inbound.parse(body)


# ----------------------------------------------------------------------------------------------- outbound


def test_outbound_needs_hosts_and_checks_users() -> None:
    spec = Outbound.parse(
        {
            "tunnel": "tcp/web",
            "targets": ["10.0.0.1:80", "web.internal:8080", "[fd00::1]:80", "10.0.0.1:80"],
            "entrances": ["laptop", EP_ID],
            "users": ["alice", "bob", "alice"],
        }
    )
    assert [str(t) for t in spec.targets] == ["10.0.0.1:80", "web.internal:8080", "[fd00::1]:80"]
    assert spec.entrances == ("laptop", EP_ID) and spec.users == ("alice", "bob")
    assert Outbound.parse(spec.to_json()) == spec
    with pytest.raises(BadInput, match="missing host"):
        Outbound.parse({"tunnel": "tcp/web", "targets": [":80"]})
    with pytest.raises(BadInput, match="expected HOST:PORT"):
        Outbound.parse({"tunnel": "tcp/web", "targets": ["80"]})
    with pytest.raises(BadInput, match="invalid user name"):
        Outbound.parse({"tunnel": "tcp/web", "targets": ["a:1"], "users": ["Alice"]})
    with pytest.raises(BadInput, match="users must be a list"):
        Outbound.parse({"tunnel": "tcp/web", "targets": ["a:1"], "users": "alice"})
    with pytest.raises(BadInput, match="invalid endpoint in entrances"):
        Outbound.parse({"tunnel": "tcp/web", "targets": ["a:1"], "entrances": ["-x"]})


# ---------------------------------------------------------------------------------------------------- fuzz

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=20,
)
VALID_ADDRESS = st.builds(
    lambda h, p: f"{h}:{p}" if h is not None else str(p),
    st.sampled_from([None, "", "127.0.0.1", "0.0.0.0", "[::1]", "[fd00::1]", "web.internal", "localhost"]),
    st.integers(1, 65535),
)
ADDRESS_LIKE = st.one_of(
    VALID_ADDRESS,
    VALID_ADDRESS,
    st.text(max_size=30),
    st.integers(-5, 70000).map(str),
    st.builds(
        lambda h, p: f"{h}:{p}",
        st.sampled_from(["", "127.0.0.1", "::1", "[::1]", "[::1", "a.b", "bad host", "é", "1.2.3.4.5"]),
        st.integers(-5, 70000),
    ),
)
VALID_NAME = st.one_of(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True), st.just(EP_ID))
NAME_LIKE = st.one_of(
    VALID_NAME,
    VALID_NAME,
    st.text(max_size=70),
    st.sampled_from(["Home", EP_ID.upper(), "-x", "x" * 64, "a b"]),
)


def _field(valid: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field as an attacker might send it: missing, any JSON, a short list of valid or plausible items, or a list
    around the length limit."""
    return st.one_of(
        st.lists(valid, max_size=4),
        st.lists(valid, max_size=4),
        st.lists(anything, max_size=4),
        st.integers(MAX_ITEMS - 1, MAX_ITEMS + 2).flatmap(lambda n: valid.map(lambda item: [item] * n)),
        st.just(...),
        JSON,
    )


def _body(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    def build(values: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in values.items() if v is not ...}

    return st.fixed_dictionaries(fields).map(build)


TUNNEL = st.one_of(
    st.from_regex(r"(tcp|udp)/[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True),
    st.from_regex(r"(tcp|udp)/[A-Za-z0-9][A-Za-z0-9._-]{0,10}", fullmatch=True),
    st.sampled_from(["tcp/", "x/y", "TCP/a"]),
    JSON,
)


@settings(max_examples=300, deadline=None)
@given(_body(tunnel=TUNNEL, listen=_field(VALID_ADDRESS, ADDRESS_LIKE), exits=_field(VALID_NAME, NAME_LIKE)))
def test_fuzz_inbound_only_bad_input(body: dict[str, Any]) -> None:
    try:
        spec = Inbound.parse(body)
    except BadInput as exc:
        assert exc.message and "\n" not in exc.message
        return
    assert 1 <= len(spec.listen) <= MAX_ITEMS and len(spec.exits) <= MAX_ITEMS
    assert Inbound.parse(spec.to_json()) == spec


@settings(max_examples=300, deadline=None)
@given(
    _body(
        tunnel=TUNNEL,
        targets=_field(VALID_ADDRESS, ADDRESS_LIKE),
        entrances=_field(VALID_NAME, NAME_LIKE),
        users=_field(VALID_NAME, NAME_LIKE),
    ),
)
def test_fuzz_outbound_only_bad_input(body: dict[str, Any]) -> None:
    try:
        spec = Outbound.parse(body)
    except BadInput as exc:
        assert exc.message and "\n" not in exc.message
        return
    assert 1 <= len(spec.targets) <= MAX_ITEMS and len(spec.entrances) <= MAX_ITEMS
    assert Outbound.parse(spec.to_json()) == spec


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_fuzz_names_only_bad_input(value: object) -> None:
    try:
        name = TunnelName.parse(value)
    except BadInput:
        return
    assert TunnelName.parse(str(name)) == name
