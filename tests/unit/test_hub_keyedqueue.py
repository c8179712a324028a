"""`ztm.hub.keyedqueue`: each key once, the latest state, never two workers on one key, a bounded number at once."""

from __future__ import annotations

import asyncio
import random

from ztm.hub.keyedqueue import KeyedQueue


def test_a_key_asked_for_twice_while_waiting_is_taken_once() -> None:
    q = KeyedQueue()
    for key in ("a", "b", "a", "a"):
        q.put(key)
    assert len(q) == 2
    assert q.take() == "a" and q.take() == "b" and q.take() is None


def test_a_busy_key_is_not_taken_again_until_done() -> None:
    q = KeyedQueue()
    q.put("a")
    assert q.take() == "a"
    q.put("a")  # changed again while written
    assert q.take() is None
    q.done("a")
    assert q.take() == "a"


def test_workers_write_the_latest_state_with_bounded_concurrency() -> None:
    """1,000 changes of 100 keys at once (a crowd of sessions), 2 workers: at most 2 writes at once, never two of one
    key, each key's last write is its latest state, and far fewer writes than changes."""

    async def main() -> None:
        q = KeyedQueue()
        state: dict[str, int] = {}
        written: dict[str, int] = {}
        busy: set[str] = set()
        most = [0]
        writes = [0]

        async def write(key: str) -> None:
            assert key not in busy, f"two workers on {key}"
            busy.add(key)
            most[0] = max(most[0], len(busy))
            value = state[key]  # read the current state, then the slow store call
            await asyncio.sleep(random.random() / 1000)
            written[key] = value
            writes[0] += 1
            busy.discard(key)

        workers = [asyncio.ensure_future(q.run(write)) for _ in range(2)]
        for i in range(1000):
            key = f"ep{random.randrange(100)}"
            state[key] = i
            q.put(key)
            if i % 50 == 0:
                await asyncio.sleep(0)
        async with asyncio.timeout(10):  # a deadline for the workers to drain the queue
            while len(q) or busy:
                await asyncio.sleep(0.001)
        for w in workers:
            w.cancel()
        assert written == state
        assert most[0] <= 2
        assert writes[0] < 1000

    asyncio.run(main())


def test_a_failing_key_does_not_stop_the_worker() -> None:
    async def main() -> None:
        q = KeyedQueue()
        done: list[str] = []

        async def work(key: str) -> None:
            if key == "bad":
                raise RuntimeError("boom")
            done.append(key)

        worker = asyncio.ensure_future(q.run(work))
        q.put("bad")
        q.put("good")
        async with asyncio.timeout(10):
            while "good" not in done:
                await asyncio.sleep(0.001)
        worker.cancel()

    asyncio.run(main())
