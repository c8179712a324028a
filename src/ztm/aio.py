"""asyncio helpers: tasks that are kept referenced and whose failures are logged, and a backoff schedule."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger("ztm")

_TASKS: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
    """Start a task that is referenced until it ends; an exception it raises is logged, never lost."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _TASKS.add(task)
    task.add_done_callback(_done)
    return task


def _done(task: asyncio.Task[Any]) -> None:
    _TASKS.discard(task)
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        log.error("task %s failed: %s: %s", task.get_name(), type(exc).__name__, exc, exc_info=exc)


class Backoff:
    """Capped exponential backoff with full jitter: 0.1 s, 0.2 s, ... up to `cap` seconds."""

    def __init__(self, base: float = 0.1, cap: float = 5.0) -> None:
        self.base = base
        self.cap = cap
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.cap, self.base * (2**self.attempt))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


def install_uvloop() -> None:
    """Use uvloop when present: less memory per connection and faster I/O than the default loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency, but keep running without it
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tune_malloc(threshold: int = 32 << 20) -> bool:
    """Stop glibc from trimming and regrowing the heap around every 1 MiB network buffer.

    Measured in bench/RESULTS.md ("HTTP/2 transport"): with the default dynamic thresholds a receiver took 200-350k
    page faults per 2 GiB; fixing both thresholds at 32 MiB nearly removed them and cut receive CPU by about a
    quarter. At most `threshold` bytes of freed heap stay mapped. Returns False where glibc is not there.
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, threshold))


def raise_open_files(want: int = 1 << 20) -> int:
    """Raise the soft open-files limit towards the hard one (at most `want`); returns the soft limit now in force.

    Every relayed client connection, exit-side target connection and agent session holds a socket, and a process
    started from a login shell usually gets a soft limit of 1,024 under a much higher hard one.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(hard, max(want, soft))
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
