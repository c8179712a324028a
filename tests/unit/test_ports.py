"""The tests' port picker (tests/ports.py): below the ephemeral range, per worker, never the same port twice."""

from __future__ import annotations

import socket

import pytest

import ports


def test_ports_are_unique_free_and_below_the_ephemeral_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    monkeypatch.setattr(ports, "_given", set())
    monkeypatch.setattr(ports, "_next", None)
    low = ports._ephemeral_low()
    width = (low - ports.LOWEST) // 2
    picked = [ports.free_port() for _ in range(200)]
    assert len(set(picked)) == 200
    assert all(ports.LOWEST + width <= p < ports.LOWEST + 2 * width for p in picked)  # worker gw1's half
    with socket.socket() as s:
        s.bind(("127.0.0.1", picked[-1]))  # and free


def test_a_taken_port_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ports, "_given", set())
    monkeypatch.setattr(ports, "_next", None)
    first = ports._slice()[0]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", first + 1))
        monkeypatch.setattr(ports, "_next", 0)
        assert ports.free_port() == first
        assert ports.free_port() == first + 2
