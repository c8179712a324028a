"""ztm.aio: backoff schedule bounds and the malloc tuning call."""

from __future__ import annotations

from ztm.aio import Backoff, tune_malloc


def test_backoff_grows_with_jitter_and_stays_capped() -> None:
    backoff = Backoff(base=0.1, cap=2.0)
    delays = [backoff.next() for _ in range(12)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(0 < d <= 2.0 for d in delays)
    assert max(delays[6:]) > 0.9  # reached the cap region
    backoff.reset()
    assert backoff.next() <= 0.1


def test_tune_malloc_applies_on_glibc() -> None:
    assert tune_malloc() is True
