"""The birthday approach to a symmetric NAT, with plain sockets: how often, and how fast, K SYNs each way find a match.

Not a test (it is probabilistic): a probe to run by hand, as root, that prints one line per trial and a summary.

    python tests/lab/birthday_probe.py [--trials 10] [--k 64 256] [--window 3]

It builds its own lab: `home` behind an `eim` router, `sym` behind a `symmetric` one (masquerade
random,fully-random). Per trial, both routers first forget everything (`Lab.reboot_router`), then at once:

* the symmetric side opens K sockets from K local ports towards the eim side's mapped address (its router's address
  and port P: an eim router keeps P); its router gives each a random external port;
* the eim side opens K sockets, all bound to its one port P (SO_REUSEPORT), towards K random ports of the symmetric
  side's router address.

A SYN gets through when it lands on a port the other router has a mapping for towards exactly its source: the eim
side aimed at one of the ports the symmetric router picked, and then the two sockets meet in a simultaneous open.
The kernel retransmits unanswered SYNs (1 s, 3 s), so a trial is decided within `--window` seconds. With about
64,500 ports to pick from, K x K / 64,500 pairs match on average: success about 1 - exp(-K^2/64500).
"""

from __future__ import annotations

import argparse
import math
import random
import select
import socket
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `support` and `lab` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import support
from lab import netlab
from lab.netlab import Lab

SITES = {"home": "eim", "sym": "symmetric"}


def _socket(lab: Lab, host: str, port: int) -> socket.socket:
    sock = support.netns_socket(lab.ns(host))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("0.0.0.0", port))
    sock.setblocking(False)
    return sock


def trial(lab: Lab, k: int, p: int, sym_ports: range, window: float) -> tuple[bool, float, str]:
    """One attempt with K sockets a side; (success, seconds to the first connection, which pair met)."""
    for router in lab.routers:
        lab.reboot_router(router)
    eim_addr, sym_addr = lab.addr("home-rtr"), lab.addr("sym-rtr")
    sym_socks = [_socket(lab, "sym", port) for port in sym_ports[:k]]
    eim_socks = [_socket(lab, "home", p) for _ in range(k)]
    targets = random.sample(range(1024, 65536), k)
    start = time.monotonic()
    try:
        for s_sock, e_sock, port in zip(sym_socks, eim_socks, targets, strict=True):
            s_sock.connect_ex((eim_addr, p))
            e_sock.connect_ex((sym_addr, port))
        pending = {s.fileno(): s for s in (*sym_socks, *eim_socks)}
        poll = select.poll()
        for fd in pending:
            poll.register(fd, select.POLLOUT)
        deadline = start + window
        while pending and (left := deadline - time.monotonic()) > 0:
            for fd, _ in poll.poll(max(1, int(left * 1000))):
                sock = pending.pop(fd)
                poll.unregister(fd)
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    try:
                        peer = "{}:{}".format(*sock.getpeername())
                    except OSError:
                        continue
                    side = "sym" if sock in sym_socks else "eim"
                    return True, time.monotonic() - start, f"{side} {sock.getsockname()[1]} <-> {peer}"
        return False, time.monotonic() - start, ""
    finally:
        for sock in (*sym_socks, *eim_socks):
            sock.close()


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--k", type=int, nargs="+", default=[64, 256], help="sockets a side (at most 1000)")
    ap.add_argument("--window", type=float, default=3.0)
    args = ap.parse_args(argv)
    reason = netlab.unavailable_reason()
    if reason:
        print(f"birthday_probe: {reason}", file=sys.stderr)
        return 2
    with Lab(sites=SITES) as lab:
        n = 0
        for k in args.k:
            wins, times = 0, []
            for t in range(args.trials):
                n += 1
                sym_ports = range(10000 + 1000 * (n % 50), 11000 + 1000 * (n % 50))  # fresh local ports each trial
                ok, secs, how = trial(lab, k, 40000 + n, sym_ports, args.window)
                wins += ok
                if ok:
                    times.append(secs)
                print(f"K={k} trial {t + 1}: {'direct' if ok else 'none'} after {secs:.2f}s {how}", flush=True)
            expect = 1 - math.exp(-k * k / 64512)
            median = sorted(times)[len(times) // 2] if times else float("nan")
            print(f"K={k}: {wins}/{args.trials} direct (expected about {expect:.0%}); median time to connect "
                  f"{median:.2f}s; a failed trial takes {args.window:.1f}s", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
