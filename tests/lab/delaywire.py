"""A user-space Ethernet cable with delay and loss: the lab's stand-in for `tc qdisc ... netem` on kernels built
without sch_netem (`Lab.delay_link` in tests/lab/netlab.py splices it into a host's uplink).

    python tests/lab/delaywire.py --delay-ms 100 --loss 0.05 TAP_A TAP_B

It owns two TAP devices and nothing else. It creates them in the network namespace it runs in (TUNSETIFF with
IFF_TAP|IFF_NO_PI on /dev/net/tun, not persistent: they vanish when it exits), prints `ready TAP_A TAP_B` once both
are open, then forwards every Ethernet frame read from one to the other `--delay-ms` later by the monotonic clock, in
order, dropping each with probability `--loss` (each direction on its own, like netem on both ends of a cable). The
caller may move the taps into other namespaces and rename them: the open file descriptors keep working.

Each direction queues at most `--limit` frames (netem's default limit, 1000); a frame arriving at a full queue is
dropped, as is one whose write fails (the far tap is down). On SIGTERM or SIGINT it prints
`stats {"a_to_b": {...}, "b_to_a": {...}}` (frames passed, lost at random, overflowed, failed) and exits 0.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import random
import select
import signal
import struct
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType

TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFNAMSIZ = 16
FRAME_MAX = 65536
BATCH = 256
"""Frames read from one tap per wakeup before the other direction gets its turn."""


class Stopped(Exception):
    """SIGTERM or SIGINT arrived."""


def open_tap(name: str) -> int:
    """Create TAP device `name` in this network namespace; return its non-blocking fd (the device lives as long)."""
    raw = name.encode()
    if not 0 < len(raw) < IFNAMSIZ:
        raise ValueError(f"bad interface name {name!r}")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack(f"{IFNAMSIZ}sH22x", raw, IFF_TAP | IFF_NO_PI))  # struct ifreq
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class Direction:
    """Frames read from `src`, written to `dst` `delay` seconds later unless dropped."""

    src: int
    dst: int
    delay: float
    loss: float
    limit: int
    rng: random.Random
    queue: deque[tuple[float, bytes]] = field(default_factory=deque)
    passed: int = 0
    lost: int = 0
    """Dropped at random (the loss fraction)."""
    overflow: int = 0
    """Dropped because `limit` frames were already waiting."""
    failed: int = 0
    """Dropped because writing to `dst` failed (EIO while that tap is down)."""

    def receive(self, now: float) -> None:
        for _ in range(BATCH):
            try:
                frame = os.read(self.src, FRAME_MAX)
            except BlockingIOError:
                return
            if self.loss and self.rng.random() < self.loss:
                self.lost += 1
            elif len(self.queue) >= self.limit:
                self.overflow += 1
            else:
                self.queue.append((now + self.delay, frame))

    def send_due(self, now: float) -> None:
        while self.queue and self.queue[0][0] <= now:
            frame = self.queue.popleft()[1]
            try:
                os.write(self.dst, frame)
            except OSError:
                self.failed += 1
            else:
                self.passed += 1

    def next_due(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def counters(self) -> dict[str, int]:
        return {"passed": self.passed, "lost": self.lost, "overflow": self.overflow, "failed": self.failed}


def forward(ab: Direction, ba: Direction) -> None:
    """Move frames both ways until a signal handler raises `Stopped`."""
    by_src = {ab.src: ab, ba.src: ba}
    while True:
        now = time.monotonic()
        ab.send_due(now)
        ba.send_due(now)
        due = [t for t in (ab.next_due(), ba.next_due()) if t is not None]
        timeout = max(0.0, min(due) - time.monotonic()) if due else None
        readable, _, _ = select.select(list(by_src), [], [], timeout)
        now = time.monotonic()
        for fd in readable:
            by_src[fd].receive(now)


def _stop(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise Stopped


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("tap_a")
    parser.add_argument("tap_b")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="added to each frame, each direction")
    parser.add_argument("--loss", type=float, default=0.0, help="fraction of frames dropped, each direction")
    parser.add_argument("--limit", type=int, default=1000, help="frames queued per direction at most")
    parser.add_argument("--seed", type=int, help="for the random drops")
    args = parser.parse_args(argv)
    if args.delay_ms < 0 or not 0 <= args.loss <= 1 or args.limit < 1:
        parser.error("need --delay-ms >= 0, 0 <= --loss <= 1, --limit >= 1")
    rng = random.Random(args.seed)
    fds: list[int] = []
    try:
        for name in (args.tap_a, args.tap_b):
            fds.append(open_tap(name))
        a, b = fds
        ab = Direction(a, b, args.delay_ms / 1000, args.loss, args.limit, rng)
        ba = Direction(b, a, args.delay_ms / 1000, args.loss, args.limit, rng)
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        try:
            print(f"ready {args.tap_a} {args.tap_b}", flush=True)
            forward(ab, ba)
        except Stopped:
            pass
        print("stats " + json.dumps({"a_to_b": ab.counters(), "b_to_a": ba.counters()}), flush=True)
    finally:
        for fd in fds:
            os.close(fd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
