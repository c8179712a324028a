"""ztm.aio: backoff schedule bounds, the malloc tuning call and the open-files limit."""

from __future__ import annotations

import resource
import subprocess
import sys

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


def test_raise_open_files_lifts_a_low_soft_limit_to_the_hard_one() -> None:
    # In a child process: the test's own limits stay as they are.
    code = (
        "import resource; from ztm import aio\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "got = aio.raise_open_files(want=4096)\n"
        "print(got, resource.getrlimit(resource.RLIMIT_NOFILE)[0], hard)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    got, soft, hard = (int(x) for x in out)
    assert got == soft == min(4096, hard) or (hard == resource.RLIM_INFINITY and got == soft == 4096)
