"""Punch messages (`ztm.agent.punchmsg`): parsing, the plausibility rules for a peer's candidates, the rate limit.

A peer's candidates are attacker-controlled: whatever a member sends, this endpoint dials at most
`MAX_CANDIDATES` addresses, never loopback, link-local, multicast, unspecified or reserved ones, never a port below
`MIN_PORT`, and a LAN address only of a peer behind the same public address (or the peer's own public address).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztm.agent import punchmsg
from ztm.agent.punch import PunchPort
from ztm.agent.punchmsg import Candidate, Punch, RateLimit, parse, path_kind, plausible
from ztm.errors import BadInput

NONCE = "0123456789abcdef0123456789abcdef"


def offer(*candidates: dict[str, Any]) -> dict[str, Any]:
    return {"v": 1, "id": NONCE, "candidates": list(candidates)}


def cand(kind: str, ip: str, port: int) -> dict[str, Any]:
    return {"kind": kind, "ip": ip, "port": port}


def test_parse_round_trip() -> None:
    msg = offer(cand("lan", "10.0.0.5", 40000), cand("reflexive", "203.0.113.7", 40001))
    punch = parse(msg)
    assert punch.to_json() == msg
    assert punch.public_ip == "203.0.113.7"
    assert parse(offer(cand("lan", "2001:db8::1", 5000))).candidates[0].ip == "2001:db8::1"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([], "a punch message is a JSON object"),
        ({"v": 1, "id": NONCE, "candidates": [], "x": 1}, "has no field 'x'"),
        ({"v": 2, "id": NONCE, "candidates": []}, "version 2 is not supported"),
        ({"v": 1, "id": "xyz", "candidates": []}, "id is 16 to 64 lowercase hex digits"),
        ({"v": 1, "id": NONCE, "candidates": {}}, "candidates are a list"),
        (offer(*[cand("lan", "10.0.0.1", 5000 + i) for i in range(5)]), "5 candidates; at most 4"),
        (offer({"kind": "lan", "ip": "10.0.0.1"}), "candidate 1: a candidate is"),
        (offer(cand("relay", "10.0.0.1", 5000)), "candidate 1: kind 'relay' is not one of lan, reflexive"),
        (offer(cand("lan", "10.0.0.300", 5000)), "candidate 1: '10.0.0.300' is not an IP address"),
        (offer(cand("lan", 167772161, 5000)), "candidate 1: ip must be an IPv4 or IPv6 address"),
        (offer(cand("lan", "10.0.0.1", 0)), "candidate 1: port must be an integer from 1 to 65535"),
        (offer(cand("lan", "10.0.0.1", True)), "candidate 1: port must be an integer"),
        (offer(cand("lan", "10.0.0.1", 5000), cand("lan", "10.0.0.1", 70000)), "candidate 2: port must be"),
    ],
)
def test_parse_refuses_with_one_line(value: Any, message: str) -> None:
    with pytest.raises(BadInput) as e:
        parse(value)
    assert message in e.value.message and "\n" not in e.value.message


def dialled(msg: dict[str, Any], our_public: str | None = "198.51.100.1", family: int = 4) -> list[tuple[str, int]]:
    return [c.address for c in plausible(parse(msg), our_public, family)[0]]


def test_what_is_dialled() -> None:
    # a peer behind another NAT: its public mapping only
    assert dialled(offer(cand("lan", "10.0.0.5", 40000), cand("reflexive", "203.0.113.7", 40001))) == [
        ("203.0.113.7", 40001)
    ]
    # behind the same NAT: its LAN address first, then the mapping
    assert dialled(offer(cand("reflexive", "198.51.100.1", 40001), cand("lan", "10.0.0.5", 40000))) == [
        ("10.0.0.5", 40000),
        ("198.51.100.1", 40001),
    ]
    # a host without NAT: its LAN address is its public one
    assert dialled(offer(cand("lan", "203.0.113.9", 40000), cand("reflexive", "203.0.113.9", 40000))) == [
        ("203.0.113.9", 40000)
    ]
    # not knowing our own public address: no LAN candidates of others
    assert dialled(offer(cand("lan", "10.0.0.5", 40000)), our_public=None) == []


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (cand("reflexive", "127.0.0.1", 7777), "scope"),
        (cand("reflexive", "169.254.1.1", 7777), "scope"),
        (cand("reflexive", "224.0.0.1", 7777), "scope"),
        (cand("reflexive", "0.0.0.0", 7777), "scope"),
        (cand("reflexive", "255.255.255.255", 7777), "scope"),
        (cand("reflexive", "240.0.0.1", 7777), "scope"),
        (cand("reflexive", "203.0.113.7", 22), "port"),
        (cand("lan", "192.168.1.1", 8080), "lan"),  # the victim's LAN, from a peer elsewhere
        (cand("reflexive", "2001:db8::1", 7777), "family"),
    ],
)
def test_what_is_never_dialled(candidate: dict[str, Any], reason: str) -> None:
    kept, dropped = plausible(parse(offer(candidate, cand("reflexive", "203.0.113.7", 40001))), "198.51.100.1", 4)
    assert [c.address for c in kept] == [("203.0.113.7", 40001)] and dropped == [reason]


def test_a_second_reflexive_candidate_is_invented() -> None:
    msg = offer(cand("reflexive", "203.0.113.7", 40001), cand("reflexive", "203.0.113.8", 40002))
    kept, dropped = plausible(parse(msg), "198.51.100.1", 4)
    assert len(kept) == 1 and dropped == ["reflexive"]


def test_path_kind() -> None:
    same = parse(offer(cand("reflexive", "198.51.100.1", 40001), cand("lan", "10.0.0.5", 40000)))
    assert path_kind(("10.0.0.5", 40000), same, "198.51.100.1") == "lan"
    assert path_kind(("198.51.100.1", 40001), same, "198.51.100.1") == "punched"
    other = parse(offer(cand("reflexive", "203.0.113.7", 40001)))
    assert path_kind(("203.0.113.7", 40001), other, "198.51.100.1") == "punched"


def test_rate_limit() -> None:
    now = [0.0]
    limit = RateLimit(per_peer=2, total=3, window=10.0, clock=lambda: now[0])
    assert limit.allow("a") and limit.allow("a") and not limit.allow("a")  # per peer
    assert limit.allow("b") and not limit.allow("c")  # all together
    now[0] = 10.0
    assert limit.allow("a") and limit.allow("c")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6),
    max_leaves=30,
)
ips = st.ip_addresses().map(str)
candidates = st.fixed_dictionaries(
    {"kind": st.sampled_from(["lan", "reflexive", "x"]), "ip": ips | st.text(max_size=20), "port": st.integers()}
)
offers = st.fixed_dictionaries(
    {
        "v": st.sampled_from([1, 1, 2]),
        "id": st.sampled_from([NONCE, "zz"]),
        "candidates": st.lists(candidates, max_size=6),
    }
)


@settings(max_examples=400, deadline=None)
@given(json_values | offers)
def test_fuzz_parse_says_what_is_wrong_or_gives_a_punch(value: Any) -> None:
    try:
        punch = parse(value)
    except BadInput as exc:
        assert exc.message and "\n" not in exc.message
        return
    assert len(punch.candidates) <= punchmsg.MAX_CANDIDATES


@settings(max_examples=400, deadline=None)
@given(offers, st.one_of(st.none(), ips), st.sampled_from([4, 6]))
def test_fuzz_nothing_implausible_is_dialled(value: Any, our_public: str | None, family: int) -> None:
    try:
        punch = parse(value)
    except BadInput:
        return
    kept, dropped = plausible(punch, our_public, family)
    assert len(kept) + len(dropped) <= len(punch.candidates)  # each dialled once at most, duplicates left out
    for c in kept:
        ip = ipaddress.ip_address(c.ip)
        assert ip.version == family and c.port >= punchmsg.MIN_PORT
        assert not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified or ip.is_reserved)
        if c.kind == "lan":
            assert c.ip == punch.public_ip or (punch.public_ip is not None and punch.public_ip == our_public)
    assert sum(1 for c in kept if c.kind == "reflexive") <= 1


def test_two_punch_ports_on_one_host_connect() -> None:
    """`PunchPort` and `Attempt` with real sockets: both sides connect from their port to the other's at once (on
    loopback, where one side's SYN meets the other's listener or SYN_SENT socket)."""
    import asyncio

    import uvloop

    async def main() -> None:
        a, b = PunchPort(socket.AF_INET), PunchPort(socket.AF_INET)
        try:
            ta, tb = a.attempt([("127.0.0.1", b.port)]), b.attempt([("127.0.0.1", a.port)])
            (sa, to_b), (sb, to_a) = await asyncio.gather(ta.next(), tb.next())
            # one TCP connection: each side's socket on its own punch port, to the other's
            assert sa.getsockname()[1] == a.port and sb.getsockname()[1] == b.port
            assert to_b == ("127.0.0.1", b.port) and to_a == ("127.0.0.1", a.port)
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(sa, b"ping")
            assert await asyncio.wait_for(loop.sock_recv(sb, 4), 5) == b"ping"
            sa.close()
            sb.close()
        finally:
            a.close()
            b.close()
            await asyncio.sleep(0)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def test_candidate_json() -> None:
    assert Candidate("lan", "10.0.0.1", 5000).to_json() == {"kind": "lan", "ip": "10.0.0.1", "port": 5000}
    assert Punch(NONCE, ()).public_ip is None


def test_tcp_info_readings_on_a_live_connection() -> None:
    """`rtt_ms` and `silent_for` read the kernel's TCP_INFO: on a fresh loopback connection whose peer just
    acknowledged, a small round-trip time and a short silence; no probes outstanding."""
    from ztm.agent.punch import rtt_ms, silent_for

    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    try:
        client.sendall(b"x")
        assert server.recv(1) == b"x"
        rtt = rtt_ms(client)
        silent = silent_for(client)
        assert rtt is not None and 0 <= rtt < 1000
        assert silent is not None and 0 <= silent < 5
        assert rtt_ms(None) is None and silent_for(None) is None
    finally:
        for s in (client, server, listener):
            s.close()


# ---- attested addresses and the birthday attempt ------------------------------------------------------------------

MALLORY = "203.0.113.7"
"""The peer's address as the hub saw it."""


def test_a_reflexive_candidate_only_at_the_attested_address() -> None:
    claim = offer(cand("reflexive", "198.18.0.43", 5558))  # someone else's address
    kept, dropped = plausible(parse(claim), "198.51.100.1", 4, MALLORY)
    assert kept == [] and dropped == ["attested"]
    true = offer(cand("reflexive", MALLORY, 40001))
    assert [c.address for c in plausible(parse(true), "198.51.100.1", 4, MALLORY)[0]] == [(MALLORY, 40001)]
    # no attestation (an older hub): the rules of before
    assert [c.address for c in plausible(parse(claim), "198.51.100.1", 4, None)[0]] == [("198.18.0.43", 5558)]


def test_a_lan_candidate_needs_the_attested_address_to_be_ours() -> None:
    """A member claiming to sit behind this endpoint's NAT (its reflexive candidate at our public address) does not
    get its LAN candidates dialled: the hub says where it really is."""
    msg = offer(cand("reflexive", "198.51.100.1", 40001), cand("lan", "10.0.0.5", 40000))
    kept, dropped = plausible(parse(msg), "198.51.100.1", 4, MALLORY)
    assert kept == [] and sorted(dropped) == ["attested", "lan"]
    kept, _ = plausible(parse(msg), "198.51.100.1", 4, "198.51.100.1")  # really behind the same NAT
    assert [c.address for c in kept] == [("10.0.0.5", 40000), ("198.51.100.1", 40001)]


@pytest.mark.parametrize(
    ("candidates", "attested", "reason"),
    [
        ([cand("reflexive", MALLORY, 40001)], MALLORY, None),
        ([cand("reflexive", MALLORY, 40001)], None, "unattested"),  # the hub did not say
        ([cand("reflexive", "198.18.0.43", 40001)], MALLORY, "unattested"),  # a claimed address
        ([cand("lan", MALLORY, 40001)], MALLORY, "unattested"),  # no mapping to aim at
        ([cand("reflexive", "198.51.100.1", 40001)], "198.51.100.1", "scope"),  # our own NAT
        ([cand("reflexive", "127.0.0.1", 40001)], "127.0.0.1", "scope"),
        ([cand("reflexive", "2001:db8::7", 40001)], "2001:db8::7", "scope"),  # another family
        ([cand("reflexive", MALLORY, 80)], MALLORY, "scope"),  # a privileged port as the mapping
    ],
)
def test_birthday_refusal(candidates: list[dict[str, Any]], attested: str | None, reason: str | None) -> None:
    assert punchmsg.birthday_refusal(parse(offer(*candidates)), attested, "198.51.100.1", 4) == reason


def test_birthday_field() -> None:
    msg = {**offer(cand("reflexive", MALLORY, 40001)), "birthday": 512}
    assert parse(msg).birthday == 512 and parse(msg).to_json() == msg
    assert "birthday" not in parse(offer()).to_json()
    for bad in (-1, punchmsg.MAX_BIRTHDAY + 1, True, "512", 1.5):
        with pytest.raises(BadInput) as e:
            parse({**offer(), "birthday": bad})
        assert "birthday is the number of sockets a side" in e.value.message


def test_spray_aims_only_at_the_attested_address() -> None:
    import random

    peer = parse({**offer(cand("lan", "10.0.0.5", 40000), cand("reflexive", MALLORY, 40001)), "birthday": 64})
    plan = punchmsg.spray(peer, 64, random.Random(7))
    targets = plan.targets()
    assert len(targets) == 128 and {remote[0] for _, remote in targets} == {MALLORY}
    assert [remote for from_port, remote in targets if not from_port] == [(MALLORY, 40001)] * 64
    ports = [remote[1] for from_port, remote in targets if from_port]
    assert len(set(ports)) == 64 and all(1024 <= p <= 65535 for p in ports)


def test_birthday_budget() -> None:
    now = [0.0]
    budget = punchmsg.Birthday(512, every=300, total=4, window=600, clock=lambda: now[0])
    assert punchmsg.Birthday(0).refusal("m/a") == "off"
    assert budget.take("m/a")
    assert budget.refusal("m/b") == "rate"  # one at a time (2 K descriptors)
    budget.done()
    assert not budget.take("m/a") and budget.refusal("m/a") == "rate"  # one per pair per 300 s
    for pair in ("m/b", "m/c", "m/d"):
        assert budget.take(pair)
        budget.done()
    assert budget.refusal("m/e") == "rate"  # 4 per 600 s in all
    now[0] = 300.0
    assert budget.refusal("m/a") == "rate"  # the global budget still holds
    now[0] = 600.0
    assert budget.take("m/a")


@settings(max_examples=400, deadline=None)
@given(offers, st.one_of(st.none(), ips), st.one_of(st.none(), ips), st.sampled_from([4, 6]))
def test_fuzz_a_burst_goes_only_to_the_attested_reflexive_address(
    value: Any, attested: str | None, our_public: str | None, family: int
) -> None:
    try:
        punch = parse({**value, "birthday": 16})
    except BadInput:
        return
    if punchmsg.birthday_refusal(punch, attested, our_public, family) is not None:
        return
    plan = punchmsg.spray(punch, 16)
    reflexive = punch.reflexive
    assert attested is not None and reflexive is not None and reflexive.ip == attested != our_public
    ip = ipaddress.ip_address(attested)
    assert ip.version == family and not (ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified)
    assert {remote[0] for _, remote in plan.targets()} == {attested}


@settings(max_examples=300, deadline=None)
@given(offers, st.one_of(st.none(), ips), st.sampled_from([4, 6]), ips)
def test_fuzz_with_an_attestation_reflexive_candidates_are_at_it(
    value: Any, our_public: str | None, family: int, attested: str
) -> None:
    try:
        punch = parse(value)
    except BadInput:
        return
    kept, _dropped = plausible(punch, our_public, family, attested)
    for c in kept:
        if c.kind == "reflexive":
            assert c.ip == attested
        if c.kind == "lan":
            assert c.ip == attested or attested == our_public


def test_normal_ip() -> None:
    assert punchmsg.normal_ip("::ffff:198.18.0.21") == "198.18.0.21"
    assert punchmsg.normal_ip("2001:DB8::1") == "2001:db8::1"
    assert punchmsg.normal_ip("nope") is None and punchmsg.normal_ip(None) is None and punchmsg.normal_ip(7) is None


def test_a_burst_connects_and_closes_what_it_opened() -> None:
    """`Attempt` with a `Spray`, real sockets on loopback: a listener on one of the guessed ports gets a connection
    from the punch port, the burst's connection is offered by `next`, and every other socket is closed with the
    attempt (no descriptor left behind)."""
    import asyncio
    import os

    import uvloop

    async def main() -> None:
        server = socket.create_server(("127.0.0.1", 0))
        server.setblocking(False)
        port = PunchPort(socket.AF_INET)
        fds = len(os.listdir("/proc/self/fd"))
        try:
            plan = punchmsg.Spray(("127.0.0.1", 1), "127.0.0.1", (server.getsockname()[1], 2, 3, 4), 4)
            attempt = port.attempt([], plan)
            sock, remote = await attempt.next()
            assert remote == ("127.0.0.1", server.getsockname()[1]) and sock.getsockname()[1] == port.port
            assert attempt.sprayed >= 2  # paced: the rest may not be out yet
            sock.close()
            attempt.close()
        finally:
            port.close()
            server.close()
            await asyncio.sleep(0.01)
        assert len(os.listdir("/proc/self/fd")) <= fds - 1  # the port's listener and every burst socket closed

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def test_fd_limit_is_raised_or_k_capped() -> None:
    import resource

    from ztm.agent.punch import FD_SPARE, raise_fd_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (300, hard))
        assert raise_fd_limit(0) == 0
        k = raise_fd_limit(512)
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert (k == 512 and now == hard) or k == (now - FD_SPARE) // 2  # raised to the hard limit, or K capped
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_burst_is_paced() -> None:
    """The 2 K SYNs of a burst go out in `BATCHES` batches over `SPREAD` seconds, not in one millisecond."""
    import asyncio
    import time

    import uvloop

    from ztm.agent.punch import BATCHES, SPREAD

    async def main() -> None:
        port = PunchPort(socket.AF_INET)
        try:
            plan = punchmsg.Spray(("127.0.0.1", 1), "127.0.0.1", tuple(range(2, 66)), 64)
            start = time.monotonic()
            attempt = port.attempt([], plan)
            await asyncio.sleep(0)
            first = attempt.sprayed
            while attempt.sprayed < 128 and time.monotonic() - start < 5:
                await asyncio.sleep(0.005)
            took = time.monotonic() - start
            assert 0 < first <= -(-128 // BATCHES), first  # one batch at a time
            assert attempt.sprayed == 128 and took >= SPREAD * 0.8, (attempt.sprayed, took)
        finally:
            port.close()
            await asyncio.sleep(0.01)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
