"""UDP by name without TUN (issue 17 item 6): a datagram's round trip through a UDP port flow (`ztm tunnel open
inbound udp/NAME --target db:PORT`, service `port/udp/PORT`) against the same through a UDP tunnel to an exit on the
same endpoint (`outbound udp/NAME --targets 127.0.0.1:PORT`), in the same run.

Real hub and two agents on 127.0.0.1 (`db` runs `--expose-ports` and a UDP echo server), relayed through the hub
(no direct listener): both paths carry the same framed datagrams on one end-to-end stream per client, so the figures
should match; what differs is only who opens the stream. Each round sends `--datagrams` datagrams of `--size` bytes
one at a time on each path (the order of the two paths alternates between rounds) and records each round trip.
Prints the median of the rounds' p50 and p99 (ms) with their spread, and of each round's ratio port flow / tunnel.

Run:  .venv/bin/python -m bench.udp_names [--rounds 5] [--datagrams 500] [--size 100]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import support  # tests/support.py: hub and agent processes
from bench.common import figures_table, machine_facts, percentile, tree_facts

MESH = "m"


def udp_echo() -> tuple[socket.socket, int]:
    """A UDP echo server on 127.0.0.1 in a daemon thread: (its socket, its port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                data, addr = sock.recvfrom(1 << 16)
                sock.sendto(data, addr)
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    return sock, int(sock.getsockname()[1])


def round_trips(port: int, count: int, size: int) -> list[float]:
    """Seconds per round trip of `count` datagrams of `size` bytes sent one at a time to 127.0.0.1:`port`."""
    payload = b"x" * size
    times = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5.0)
        sock.sendto(payload, ("127.0.0.1", port))  # the flow's first datagram opens its stream: not counted
        sock.recvfrom(1 << 16)
        for _ in range(count):
            start = time.perf_counter()
            sock.sendto(payload, ("127.0.0.1", port))
            got, _ = sock.recvfrom(1 << 16)
            times.append(time.perf_counter() - start)
            assert got == payload
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--datagrams", type=int, default=500)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    print(machine_facts())
    print(tree_facts())
    echo, echo_port = udp_echo()
    with tempfile.TemporaryDirectory(prefix="ztm-bench-udp-names-") as tmp:
        hub, agents = support.start_hub_and_agents(Path(tmp), ("client", "db"), agent_extra={"db": ["--expose-ports"]})
        try:
            client, db = agents["client"], agents["db"]
            client.join(MESH, "client", hub.permit)
            db.join(MESH, "db", hub.permit)
            db.cli("tunnel", "open", "outbound", "udp/exit", "--targets", f"127.0.0.1:{echo_port}")
            paths = {"tunnel to an exit": support.free_port(), "port flow (--target)": support.free_port()}
            client.cli("tunnel", "open", "inbound", "udp/exit", "--listen", str(paths["tunnel to an exit"]))
            flow = paths["port flow (--target)"]
            client.cli("tunnel", "open", "inbound", "udp/flow", "--listen", str(flow), "--target", f"db:{echo_port}")
            support.wait_until(lambda: round_trips(flow, 1, 1) and round_trips(paths["tunnel to an exit"], 1, 1), 30,
                               "both paths to carry a datagram")  # fmt: skip
            runs: list[dict[str, float]] = []
            for i in range(max(1, args.rounds)):
                order = list(paths) if i % 2 == 0 else list(reversed(paths))
                figures: dict[str, float] = {}
                for name in order:
                    times = round_trips(paths[name], args.datagrams, args.size)
                    figures[f"{name} p50 (ms)"] = percentile(times, 50) * 1e3
                    figures[f"{name} p99 (ms)"] = percentile(times, 99) * 1e3
                figures["ratio p50 flow / tunnel"] = (
                    figures["port flow (--target) p50 (ms)"] / figures["tunnel to an exit p50 (ms)"]
                )
                runs.append(dict(sorted(figures.items())))
        finally:
            support.stop_all([hub.proc, *(a.proc for a in agents.values())])
            echo.close()
    print(f"\n{args.rounds} rounds of {args.datagrams} datagrams of {args.size} bytes, relayed through the hub\n")
    print(figures_table(runs, 3))


if __name__ == "__main__":
    main()
