"""`ztm.agent.link.race`: a tier's hub addresses dialled happy-eyeballs style (the dial itself replaced by a stand-in
with a chosen delay and outcome; the real dial is in tests/integration/test_hub_list.py and the cluster tests)."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

import pytest

from ztm import h2
from ztm.addr import Address
from ztm.agent import link
from ztm.agent.hubpick import Candidate
from ztm.errors import CertificateError, Unavailable


class FakeConn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


def candidate(port: int) -> Candidate:
    return Candidate(Address("127.0.0.1", port), f"hub{port}", 1)


def run(
    monkeypatch: pytest.MonkeyPatch, plan: dict[int, tuple[float, str]], stagger: float = 0.05
) -> tuple[Any, dict[int, float], list[FakeConn], dict[int, str]]:
    """Race candidates on ports `plan` (in order): each completes after its delay with "ok", "refused" or "not-hub".
    Returns (result or the exception, start time of each dial, every connection made, how each dial ended)."""
    started: dict[int, float] = {}
    made: list[FakeConn] = []
    ended: dict[int, str] = {}
    t0 = time.monotonic()

    async def attempt(c: Candidate, mesh_id: str, context: ssl.SSLContext) -> tuple[Any, str, Candidate, float]:
        port = c.address.port
        started[port] = time.monotonic() - t0
        delay, outcome = plan[port]
        try:
            await asyncio.sleep(delay)
        except asyncio.CancelledError:
            ended[port] = "cancelled"
            raise
        ended[port] = outcome
        if outcome == "refused":
            raise h2.H2Error(f"connection refused by 127.0.0.1:{port}")
        if outcome == "not-hub":
            raise CertificateError(f"127.0.0.1:{port} is not a hub of this mesh")
        conn = FakeConn(str(port))
        made.append(conn)
        return conn, f"hub{port}", c, delay

    monkeypatch.setattr(link, "_attempt", attempt)

    async def main() -> Any:
        try:
            return await link.race(
                [candidate(p) for p in plan], "mesh", ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT), stagger=stagger
            )
        except Unavailable as exc:
            return exc

    return asyncio.run(main()), started, made, ended


def test_a_slow_first_address_does_not_hold_up_a_fast_second(monkeypatch: pytest.MonkeyPatch) -> None:
    result, started, made, ended = run(monkeypatch, {1: (5.0, "ok"), 2: (0.01, "ok")})
    conn, hub_id, chosen, _rtt = result
    assert hub_id == "hub2" and chosen.address.port == 2 and conn.name == "2"
    assert 0.04 <= started[2] < 0.5, started
    assert ended[1] == "cancelled", "the slower dial is cancelled once one completed"
    assert [c.name for c in made] == ["2"]


def test_a_failed_dial_starts_the_next_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    result, started, _made, _ended = run(monkeypatch, {1: (0.0, "refused"), 2: (0.0, "not-hub"), 3: (0.0, "ok")}, 1.0)
    assert result[1] == "hub3"
    assert started[3] < 0.5, f"no stagger wait after failures: {started}"


def test_two_that_complete_together_keep_one_and_close_the_other(monkeypatch: pytest.MonkeyPatch) -> None:
    result, _started, made, _ended = run(monkeypatch, {1: (0.1, "ok"), 2: (0.05, "ok")}, stagger=0.05)
    kept = result[0]
    assert len(made) in (1, 2) and not kept.closed
    assert all(c.closed for c in made if c is not kept)


def test_all_failing_is_one_unavailable_naming_each(monkeypatch: pytest.MonkeyPatch) -> None:
    result, _started, made, _ended = run(monkeypatch, {1: (0.0, "refused"), 2: (0.01, "not-hub")})
    assert isinstance(result, Unavailable) and not made
    assert result.message == (
        "cannot reach a hub of this mesh: 127.0.0.1:1: connection refused by 127.0.0.1:1; "
        "127.0.0.1:2 is not a hub of this mesh"
    )
