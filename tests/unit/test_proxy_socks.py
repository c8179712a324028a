"""The SOCKS5 codec of the proxy app (`ztm.apps.proxy.socks`): examples of each message, replies, the UDP header;
and fuzzing: for any bytes, every parser returns a message, None (incomplete) or raises SocksError, nothing else; and
a valid message cut anywhere is "incomplete", never an error or a wrong message."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztm.apps.proxy import socks
from ztm.apps.proxy.spec import Credentials, Destination

FUZZ = settings(max_examples=400, deadline=None)


def request(command: int, atyp: int, address: bytes, port: int) -> bytes:
    return bytes([5, command, 0, atyp]) + address + struct.pack("!H", port)


def test_greeting() -> None:
    assert socks.parse_greeting(b"") is None
    assert socks.parse_greeting(b"\x05") is None
    assert socks.parse_greeting(b"\x05\x02\x00") is None
    greeting, used = socks.parse_greeting(b"\x05\x02\x02\x00rest") or (None, 0)
    assert greeting is not None and greeting.no_auth and used == 4
    greeting, _ = socks.parse_greeting(b"\x05\x01\x02") or (None, 0)
    assert greeting is not None and not greeting.no_auth
    with pytest.raises(socks.SocksError, match="not SOCKS version 5"):
        socks.parse_greeting(b"\x04\x01")
    with pytest.raises(socks.SocksError, match="no authentication method"):
        socks.parse_greeting(b"\x05\x00")


@pytest.mark.parametrize(
    ("raw", "host", "port"),
    [
        (request(1, 1, bytes([10, 0, 0, 1]), 80), "10.0.0.1", 80),
        (request(1, 3, b"\x0bExample.COM", 443), "example.com", 443),
        (request(1, 3, b"\x0cexample.com.", 443), "example.com", 443),
        (request(1, 4, ipaddress.IPv6Address("2001:db8::1").packed, 22), "2001:db8::1", 22),
        (request(1, 4, ipaddress.IPv6Address("::ffff:1.2.3.4").packed, 22), "1.2.3.4", 22),
        (request(3, 1, bytes(4), 0), None, 0),
        (request(3, 1, bytes([127, 0, 0, 1]), 5353), "127.0.0.1", 5353),
    ],
)
def test_requests(raw: bytes, host: str | None, port: int) -> None:
    found = socks.parse_request(raw + b"early data")
    assert found is not None
    req, used = found
    assert used == len(raw)
    assert (req.destination.host if req.destination else None) == host
    assert req.port == port


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (request(2, 1, bytes(4), 80), socks.COMMAND_NOT_SUPPORTED),
        (bytes([5, 9, 0, 1]) + bytes(6), socks.COMMAND_NOT_SUPPORTED),
        (bytes([5, 1, 0, 7]), socks.ADDRESS_NOT_SUPPORTED),
        (request(1, 3, b"\x00", 80), socks.HOST_UNREACHABLE),
        (request(1, 3, b"\x03a b", 80), socks.HOST_UNREACHABLE),
        (request(1, 3, b"\x02\xc3\xa9", 80), socks.HOST_UNREACHABLE),
        (request(1, 3, bytes([120]) + b"a" * 120, 80), socks.HOST_UNREACHABLE),  # too long for a service name
        (request(1, 1, bytes(4), 0), socks.HOST_UNREACHABLE),  # CONNECT to port 0
        (bytes([4, 1, 0, 1]) + bytes(6), socks.GENERAL_FAILURE),
    ],
)
def test_bad_requests_carry_their_reply_code(raw: bytes, code: int) -> None:
    with pytest.raises(socks.SocksError) as caught:
        socks.parse_request(raw)
    assert caught.value.reply == code and caught.value.message


def test_replies_and_addresses() -> None:
    assert socks.reply(socks.SUCCEEDED) == b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    assert socks.reply(socks.NOT_ALLOWED, "::1", 1080) == b"\x05\x02\x00\x04" + bytes(15) + b"\x01\x04\x38"
    assert socks.encode_address("a.b", 1) == b"\x03\x03a.b\x00\x01"
    assert socks.choice(socks.NO_ACCEPTABLE) == b"\x05\xff"


def test_udp_datagrams_round_trip() -> None:
    for dest in (Destination("10.1.2.3", 53), Destination("host.example", 9), Destination("fd00::5", 1)):
        data = socks.encode_datagram(dest, b"payload")
        assert socks.parse_datagram(data) == (dest, b"payload")
    for bad, why in (
        (b"\x00\x00", "shorter"),
        (b"\x00\x01\x00\x01" + bytes(6), "reserved"),
        (b"\x00\x00\x01\x01" + bytes(6), "fragmented"),
        (b"\x00\x00\x00\x01\x01\x02", "truncated"),
        (b"\x00\x00\x00\x09abc", "address type"),
    ):
        with pytest.raises(socks.SocksError, match=why):
            socks.parse_datagram(bad)


# ------------------------------------------------------------------------------------------------------ fuzzing


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_give_a_message_none_or_a_socks_error(data: bytes) -> None:
    for parse in (socks.parse_greeting, socks.parse_request):
        try:
            found = parse(data)
        except socks.SocksError as exc:
            assert exc.message and (exc.reply is None or 0 < exc.reply < 9)
        else:
            assert found is None or 0 < found[1] <= len(data)
    try:
        dest, payload = socks.parse_datagram(data)
    except socks.SocksError as exc:
        assert exc.message
    else:
        assert data.endswith(payload) and 0 < dest.port < 65536


hosts = st.one_of(
    st.ip_addresses().map(str),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}", fullmatch=True),
)


@FUZZ
@given(hosts, st.integers(1, 65535), st.sampled_from([1, 3]), st.binary(max_size=20))
def test_a_valid_request_cut_anywhere_is_incomplete(host: str, port: int, command: int, extra: bytes) -> None:
    raw = bytes([5, command, 0]) + socks.encode_address(host, port)
    found = socks.parse_request(raw + extra)
    assert found is not None and found[1] == len(raw)
    req = found[0]
    unspecified = command == 3 and host in ("0.0.0.0", "::")  # UDP ASSOCIATE from any address of the client
    assert req.destination == (None if unspecified else Destination.make(host, port)) and req.port == port
    for cut in range(len(raw)):
        assert socks.parse_request(raw[:cut]) is None


@FUZZ
@given(st.binary(min_size=1, max_size=255), st.binary(max_size=10))
def test_a_valid_greeting_cut_anywhere_is_incomplete(methods: bytes, extra: bytes) -> None:
    raw = bytes([5, len(methods)]) + methods
    assert socks.parse_greeting(raw + extra) == (socks.Greeting(methods), len(raw))
    for cut in range(len(raw)):
        assert socks.parse_greeting(raw[:cut]) is None


# ------------------------------------------------------------------------------------- username/password (RFC 1929)


def userpass(user: bytes, password: bytes) -> bytes:
    return bytes([1, len(user)]) + user + bytes([len(password)]) + password


def test_userpass_method_and_sub_negotiation() -> None:
    greeting, _ = socks.parse_greeting(b"\x05\x02\x00\x02") or (None, 0)
    assert greeting is not None and greeting.userpass and greeting.no_auth
    greeting, _ = socks.parse_greeting(b"\x05\x01\x00") or (None, 0)
    assert greeting is not None and not greeting.userpass
    raw = userpass(b"alice", b"s3cret:with colon")
    found = socks.parse_userpass(raw + b"\x05\x01\x00")
    assert found == (Credentials(b"alice", b"s3cret:with colon"), len(raw))
    assert "s3cret" not in repr(found[0])  # never in a log line or a traceback
    assert socks.parse_userpass(userpass(b"u" * 255, b"p" * 255)) is not None  # the longest RFC 1929 allows
    assert socks.auth_status(socks.AUTH_OK) == b"\x01\x00" and socks.auth_status(socks.AUTH_FAILED) == b"\x01\x01"


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"\x05\x05alice\x01p", "version 0x05"),  # a client that skipped the sub-negotiation
        (b"\x00", "version 0x00"),
        (b"\x01\x00\x01p", "empty user name"),
        (b"\x01\x01u\x00", "empty password"),
    ],
)
def test_bad_userpass_sub_negotiations(raw: bytes, why: str) -> None:
    with pytest.raises(socks.SocksError, match=why):
        socks.parse_userpass(raw)


@FUZZ
@given(st.binary(max_size=600))
def test_any_bytes_give_credentials_none_or_a_socks_error(data: bytes) -> None:
    try:
        found = socks.parse_userpass(data)
    except socks.SocksError as exc:
        assert exc.message and exc.reply is None
    else:
        if found is not None:
            creds, used = found
            assert used == 3 + len(creds.user) + len(creds.password) <= len(data)
            assert 0 < len(creds.user) < 256 and 0 < len(creds.password) < 256


@FUZZ
@given(st.binary(min_size=1, max_size=255), st.binary(min_size=1, max_size=255), st.binary(max_size=10))
def test_a_valid_userpass_cut_anywhere_is_incomplete(user: bytes, password: bytes, extra: bytes) -> None:
    raw = userpass(user, password)
    assert socks.parse_userpass(raw + extra) == (Credentials(user, password), len(raw))
    for cut in range(len(raw)):
        assert socks.parse_userpass(raw[:cut]) is None
