"""The HTTP proxy request-head parser (`ztm.apps.proxy.http1`): CONNECT, absolute URIs rewritten to origin form,
limits, malformed heads; and fuzzing: any bytes give a request, None (incomplete) or an HttpError with a 4xx/5xx
status, never another exception; a valid head cut anywhere is incomplete."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztm.apps.proxy import http1
from ztm.apps.proxy.spec import Credentials, Destination

FUZZ = settings(max_examples=400, deadline=None)


def parse(raw: bytes) -> http1.HttpRequest:
    found = http1.parse_head(raw)
    assert found is not None, "incomplete"
    return found[0]


def test_connect() -> None:
    req = parse(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert req.is_connect and req.destination == Destination("example.com", 443)
    req = parse(b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\n\r\n")
    assert req.destination == Destination("2001:db8::1", 8443)
    found = http1.parse_head(b"\r\nCONNECT 10.0.0.1:22 HTTP/1.0\r\n\r\nSSH-2.0")
    assert found is not None and found[1] == len(b"\r\nCONNECT 10.0.0.1:22 HTTP/1.0\r\n\r\n")


def test_absolute_uri_is_rewritten_to_origin_form() -> None:
    req = parse(
        b"POST http://Example.COM:8080/a/b?c=d#frag HTTP/1.1\r\nHost: wrong\r\nProxy-Connection: keep-alive\r\n"
        b"Proxy-Authorization: Basic eDp5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nContent-Length: 3\r\n"
        b"User-Agent: t\r\n\r\n"
    )
    assert req.destination == Destination("example.com", 8080) and req.path == "/a/b?c=d"
    assert req.upstream_head() == (
        b"POST /a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 3\r\nUser-Agent: t\r\n"
        b"Connection: close\r\n\r\n"
    )
    assert parse(b"GET http://h HTTP/1.1\r\n\r\n").upstream_head() == (
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
    )
    assert (
        parse(b"GET http://[::1]/x HTTP/1.1\r\n\r\n").upstream_head().startswith(b"GET /x HTTP/1.1\r\nHost: [::1]\r\n")
    )
    assert parse(b"GET http://h?q HTTP/1.1\r\n\r\n").path == "/?q"
    upgrade = parse(b"GET http://h/ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n").upstream_head()
    assert b"Upgrade: websocket\r\n" in upgrade and upgrade.endswith(b"Connection: upgrade\r\n\r\n")


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (b"GARBAGE\r\n\r\n", 400, "request line"),
        (b"GET  http://h/ HTTP/1.1\r\n\r\n", 400, "request line"),
        (b"G(T http://h/ HTTP/1.1\r\n\r\n", 400, "method"),
        (b"GET http://h/ HTTP/1.1x\r\n\r\n", 400, "version"),
        (b"GET http://h/ HTTP/2.0\r\n\r\n", 505, "HTTP/2.0"),
        (b"GET / HTTP/1.1\r\n\r\n", 400, "this is a proxy"),
        (b"GET ftp://h/ HTTP/1.1\r\n\r\n", 400, "only http://"),
        (b"GET https://h/ HTTP/1.1\r\n\r\n", 501, "CONNECT"),
        (b"GET http://u:p@h/ HTTP/1.1\r\n\r\n", 400, "user information"),
        (b"GET http:///x HTTP/1.1\r\n\r\n", 400, "no host"),
        (b"GET http://bad_host!/ HTTP/1.1\r\n\r\n", 400, "bad host"),
        (b"GET http://h:0/ HTTP/1.1\r\n\r\n", 400, "bad host"),
        (b"GET http://h/\x01 HTTP/1.1\r\n\r\n", 400, "control"),
        (b"CONNECT h HTTP/1.1\r\n\r\n", 400, "HOST:PORT"),
        (b"CONNECT h:99999 HTTP/1.1\r\n\r\n", 400, "HOST:PORT"),
        (b"CONNECT ::1:80 HTTP/1.1\r\n\r\n", 400, "HOST:PORT"),
        (b"GET http://h/ HTTP/1.1\r\nNoColon\r\n\r\n", 400, "malformed header"),
        (b"GET http://h/ HTTP/1.1\r\nBad Name: x\r\n\r\n", 400, "malformed header"),
        (b"GET http://h/ HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400, "folded"),
        (b"GET http://h/ HTTP/1.1\r\nX: a\x00b\r\n\r\n", 400, "control"),
        (b"GET http://h/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "ambiguous"),
        (b"GET http://h/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "ambiguous"),
        (b"GET http://h/ HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400, "Content-Length"),
        (b"GET http://h/ HTTP/1.1\r\n" + b"X: y\r\n" * 101 + b"\r\n", 431, "header fields"),
        (b"GET http://h/ HTTP/1.1\r\nX: " + b"y" * http1.MAX_HEAD + b"\r\n\r\n", 431, "larger"),
        (b"GET http://h/ HTTP/1.1\r\nX: " + b"y" * http1.MAX_HEAD, 431, "larger"),  # no end yet, already too big
        (b"GET http://h/" + b"a" * http1.MAX_LINE, 414, "request line"),  # no line end yet
        (b"GET http://h/" + b"a" * http1.MAX_LINE + b" HTTP/1.1\r\n\r\n", 414, "request line"),
    ],
)
def test_bad_heads(raw: bytes, status: int, words: str) -> None:
    with pytest.raises(http1.HttpError) as caught:
        http1.parse_head(raw)
    assert caught.value.status == status and words in caught.value.message


def test_incomplete_heads_wait_for_more() -> None:
    assert http1.parse_head(b"") is None
    assert http1.parse_head(b"GET http://h/ HTTP/1.1\r\nHost: h\r\n") is None


def test_responses() -> None:
    answer = http1.response(403, "ztm proxy: denied: rule 1\r\nInjected: yes")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n") and b"Connection: close" in head
    assert body == b"ztm proxy: denied: rule 1  Injected: yes\n"
    assert f"Content-Length: {len(body)}".encode() in head
    assert http1.response(599, "x").startswith(b"HTTP/1.1 599 Error\r\n")


# ------------------------------------------------------------------------------------------------------ fuzzing

header_text = st.text(st.characters(min_codepoint=0, max_codepoint=255), max_size=40)


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes_give_a_request_none_or_an_http_error(data: bytes) -> None:
    _check(data)


@FUZZ
@given(
    st.sampled_from(["GET", "CONNECT", "POST", "G ET", "", "OPTIONS"]),
    st.one_of(st.sampled_from(["http://h/", "h:80", "http://[::1]:8/x", "*", "/", "http://h:99999/"]), header_text),
    st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/3.0", "HTTP/1", ""]),
    st.lists(st.tuples(header_text, header_text), max_size=5),
    st.binary(max_size=30),
)
def test_structured_heads_never_raise_anything_else(
    method: str, target: str, version: str, headers: list[tuple[str, str]], extra: bytes
) -> None:
    head = f"{method} {target} {version}\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n"
    _check(head.encode("latin-1") + extra)


def _check(data: bytes) -> None:
    try:
        found = http1.parse_head(data)
    except http1.HttpError as exc:
        assert 400 <= exc.status < 600 and exc.message
        return
    if found is None:
        return
    req, used = found
    assert 0 < used <= len(data)
    assert 0 < req.destination.port < 65536
    if not req.is_connect:
        head = req.upstream_head()
        assert head.endswith(b"\r\n\r\n") and head.count(b"\r\n") == head.count(b"\n")
        assert head.startswith(f"{req.method} {req.path} {req.version}\r\nHost: ".encode("latin-1"))
        assert head.count(b"\r\n\r\n") == 1 and b"Connection: " in head


@FUZZ
@given(
    st.from_regex(r"[a-z0-9]{1,10}(\.[a-z0-9]{1,10}){0,2}", fullmatch=True),
    st.integers(1, 65535),
    st.from_regex(r"(/[A-Za-z0-9._~%-]{0,8}){0,3}", fullmatch=True),
)
def test_a_valid_head_cut_anywhere_is_incomplete(host: str, port: int, path: str) -> None:
    raw = f"GET http://{host}:{port}{path} HTTP/1.1\r\nAccept: */*\r\n\r\n".encode()
    found = http1.parse_head(raw + b"body")
    assert found is not None and found[1] == len(raw)
    assert found[0].destination == Destination.make(host, port) and found[0].path == (path or "/")
    for cut in range(len(raw)):
        assert http1.parse_head(raw[:cut]) is None


# --------------------------------------------------------------------------------------- Proxy-Authorization


def basic(raw: bytes) -> tuple[tuple[str, str], ...]:
    return (("Host", "x"), ("Proxy-Authorization", "Basic " + base64.b64encode(raw).decode()))


def test_proxy_credentials() -> None:
    assert http1.proxy_credentials((("Host", "x"),)) is None
    assert http1.proxy_credentials(basic(b"alice:pa:ss")) == Credentials(b"alice", b"pa:ss")
    assert http1.proxy_credentials((("proxy-authorization", "basic YTpi"),)) == Credentials(b"a", b"b")
    assert http1.proxy_credentials(basic(b"\xc3\xa9:\xff")) == Credentials(b"\xc3\xa9", b"\xff")
    req = parse(b"CONNECT h:443 HTTP/1.1\r\nProxy-Authorization: Basic YTpi\r\n\r\n")
    assert http1.proxy_credentials(req.headers) == Credentials(b"a", b"b")


@pytest.mark.parametrize(
    ("headers", "status", "why"),
    [
        ((("Proxy-Authorization", "Bearer abc"),), 407, "use Basic"),
        ((("Proxy-Authorization", "Basic !!!"),), 400, "not base64"),
        ((("Proxy-Authorization", "Basic YWJj"),), 400, "no ':'"),  # "abc"
        ((("Proxy-Authorization", "Basic YTpi"), ("Proxy-Authorization", "Basic YTpi")), 400, "several"),
        (basic(b"u" * 256 + b":p"), 407, "longer than 255 bytes"),
        (basic(b"u:" + b"p" * 256), 407, "longer than 255 bytes"),
        (basic(b":p"), 407, "empty"),
        (basic(b"u:"), 407, "empty"),
    ],
)
def test_bad_proxy_credentials(headers: tuple[tuple[str, str], ...], status: int, why: str) -> None:
    with pytest.raises(http1.HttpError) as caught:
        http1.proxy_credentials(headers)
    assert caught.value.status == status and why in caught.value.message


def test_407_asks_for_basic() -> None:
    answer = http1.response(407, "ztm proxy: proxy authentication required")
    assert answer.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
    assert b'\r\nProxy-Authenticate: Basic realm="ztm"\r\n' in answer
    assert b"Proxy-Authenticate" not in http1.response(403, "no")


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(["Proxy-Authorization", "X"]), header_text), max_size=3))
def test_any_proxy_authorization_gives_credentials_none_or_an_http_error(headers: list[tuple[str, str]]) -> None:
    try:
        creds = http1.proxy_credentials(tuple(headers))
    except http1.HttpError as exc:
        assert exc.status in (400, 407) and exc.message
    else:
        if creds is not None:
            assert 0 < len(creds.user) <= 255 and 0 < len(creds.password) <= 255 and b":" not in creds.user


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["Basic ", "basic  ", "BASIC\t"]))
def test_any_basic_token_gives_credentials_or_an_http_error(raw: bytes, scheme: str) -> None:
    header = (("Proxy-Authorization", scheme + base64.b64encode(raw).decode()),)
    try:
        creds = http1.proxy_credentials(header)
    except http1.HttpError as exc:
        assert exc.status in (400, 407)
    else:
        assert creds is not None and creds.user + b":" + creds.password == raw
