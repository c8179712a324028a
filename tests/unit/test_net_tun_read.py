"""How many packets the net app reads from the TUN per readiness (`ztm.apps.net.tun.read_limit`, sans-IO)."""

from __future__ import annotations

from ztm.apps.net.tun import IDLE_GAP, READ_BATCH, read_limit


def test_a_packet_after_a_silence_is_read_alone() -> None:
    assert read_limit(100.0, 100.0 - 2 * IDLE_GAP) == 1
    assert read_limit(100.0, 0.0) == 1  # the first read of all


def test_packets_that_keep_coming_are_read_in_batches() -> None:
    assert read_limit(100.0, 100.0 - IDLE_GAP / 2) == READ_BATCH
    assert read_limit(100.0, 100.0) == READ_BATCH
