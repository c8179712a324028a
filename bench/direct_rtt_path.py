"""One 1-byte round trip through a tunnel on a direct channel, in one process with the real classes (issue 15's RTT
target): a stable A/B where the lab's round-trip times are noisy.

The path: a client socket -> the entrance's splice (the tunnel app's `counted_splice`) -> `E2EStream` seals ->
`DirectOuter` -> mutual TLS 1.3 on loopback (uvloop's TLS transport, as the agents use) -> `DirectConn` at the exit
-> `E2EStream` opens -> the exit's splice -> an echo server, and back. Everything runs in one uvloop event loop, on
real sockets: the counts include the event loop's own turns, uvloop's TLS and the kernel's work as seen from user
space, plus the client's and the echo server's (the same in A and B). Not counted: the opening (OPEN/OK), done once.

Prints wall time and CPU per round trip (`--floor`: the same through a bare uvloop TLS forwarder, as
`bench.forward_floor`'s `tls`; `--opcodes`: bytecodes per round trip by function). Instructions per round trip
(callgrind, two sizes, the difference per round trip: start-up cancels out), this tree against REV's `src` in
interleaved rounds (REV's `src` from `git archive`, the model from this tree):

    .venv/bin/python -m bench.direct_rtt_path --callgrind --baseline-rev f776313 --rounds 3 --rtts 10000
    .venv/bin/python -m bench.direct_rtt_path --baseline-rev f776313 --rounds 7       # wall and CPU, interleaved
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baseline import baseline_commit, export_revision

REPO = Path(__file__).resolve().parents[1]


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _Client(asyncio.Protocol):
    """Sends one byte, waits for it back, `rtts` times; `done` resolves with the wall time per round trip."""

    def __init__(self, rtts: int) -> None:
        self.left = rtts
        self.rtts = rtts
        self.done: asyncio.Future[tuple[float, float]] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def start(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.transport.write(b"x")

    def data_received(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left > 0:
            self.transport.write(b"x")
        elif not self.done.done():
            wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
            self.done.set_result((wall / self.rtts, cpu / self.rtts))


class _Fwd(asyncio.Protocol):
    """`--floor`: one side of a bare forwarder (what it reads goes to `peer`'s transport), as `bench.forward_floor`'s
    `tls` (nothing sealed end to end, no streams, no splice)."""

    def __init__(self, peer: _Fwd | None = None) -> None:
        self.peer = peer
        if peer is not None:
            peer.peer = self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.transport.write(data)


async def floor(rtts: int) -> tuple[float, float]:
    """The same round trips through a bare TLS forwarder on the same sockets (uvloop's TLS, one hop)."""
    from bench.h2_transport import client_context, make_pki, server_context

    loop = asyncio.get_running_loop()
    pki = Path(tempfile.mkdtemp(prefix="ztm-rtt-"))
    make_pki(pki)
    echo = await loop.create_server(_Echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    exit_tls = _Fwd()
    _e, _exit_local = await loop.create_connection(lambda: _Fwd(exit_tls), "127.0.0.1", echo_port)
    tls = await loop.create_server(lambda: exit_tls, "127.0.0.1", 0, ssl=server_context(pki))
    _t, entrance_tls = await loop.create_connection(
        _Fwd, "127.0.0.1", tls.sockets[0].getsockname()[1], ssl=client_context(pki)
    )
    entrance = await loop.create_server(lambda: _Fwd(entrance_tls), "127.0.0.1", 0)
    return await _pingpong(rtts, entrance)


async def _pingpong(rtts: int, entrance: asyncio.Server) -> tuple[float, float]:
    """`rtts` round trips of one client connection to `entrance`, after 200 to warm up on the same connection."""
    loop = asyncio.get_running_loop()
    warm = 200
    _ct, client = await loop.create_connection(lambda: _Client(warm), "127.0.0.1",
                                               entrance.sockets[0].getsockname()[1])  # fmt: skip
    client.start()
    await client.done
    client.done = loop.create_future()
    client.left = client.rtts = rtts
    if OPCODES is not None:
        sys.settrace(_trace)
    client.start()
    result = await asyncio.wait_for(client.done, 600)
    sys.settrace(None)
    client.transport.abort()
    return result


OPCODES: collections.Counter[str] | None = None
"""`--opcodes`: bytecodes run per function during the measured round trips."""


def _trace(frame: Any, event: str, arg: Any) -> Any:
    frame.f_trace_opcodes = True
    if event == "opcode" and OPCODES is not None:
        code = frame.f_code
        OPCODES[f"{code.co_filename.rpartition('/')[2]}:{code.co_name}"] += 1
    return _trace


async def model(rtts: int) -> tuple[float, float]:
    """One client connection through ztm's layers: `rtts` round trips after 200 to warm up (the same connection)."""
    from bench.h2_transport import client_context, make_pki, server_context
    from ztm.agent.direct_outer import DirectConn, DirectOuter
    from ztm.agent.e2estream import E2EStream
    from ztm.agent.mesh import Traffic
    from ztm.apps.tunnel.app import counted_splice
    from ztm.e2e.record import Channel

    loop = asyncio.get_running_loop()
    pki = Path(tempfile.mkdtemp(prefix="ztm-rtt-"))
    make_pki(pki)
    k1, k2 = os.urandom(32), os.urandom(32)
    echo = await loop.create_server(_Echo, "127.0.0.1", 0)
    echo_port = echo.sockets[0].getsockname()[1]
    accepted: asyncio.Future[DirectConn] = loop.create_future()

    def server_conn() -> DirectConn:
        conn = DirectConn(server=True)

        def made(c: DirectConn) -> None:
            if not accepted.done():
                accepted.set_result(c)

        conn.on_made = made
        return conn

    server_ctx, client_ctx = server_context(pki), client_context(pki)
    try:  # the direct channels' contexts (`MeshDirect._ensure_contexts`) where the tree has it
        from ztm.tlsobject import fast_tls

        fast_tls(server_ctx), fast_tls(client_ctx)
    except ImportError:
        pass
    tls = await loop.create_server(server_conn, "127.0.0.1", 0, ssl=server_ctx)
    _t, entrance_conn = await loop.create_connection(
        lambda: DirectConn(server=False), "127.0.0.1", tls.sockets[0].getsockname()[1], ssl=client_ctx
    )
    exit_conn = await accepted

    def stream(conn: DirectConn, send: bytes, recv: bytes) -> E2EStream:
        s = E2EStream(DirectOuter(conn), Channel(send, recv), None, suite="x", session_id=b"", on_failure=print)  # type: ignore[arg-type]
        s.path = "direct"
        s.start(b"")
        return s

    entrance_stream, exit_stream = stream(entrance_conn, k1, k2), stream(exit_conn, k2, k1)
    counters: collections.Counter[str] = collections.Counter()

    def splice(r: asyncio.StreamReader, w: asyncio.StreamWriter, s: E2EStream, key: str) -> Awaitable[None]:
        return counted_splice(r, w, s, counters, key, Traffic(key))  # the tunnel app's data path, counted

    reader, writer = await asyncio.open_connection("127.0.0.1", echo_port)
    exit_task = asyncio.ensure_future(splice(reader, writer, exit_stream, "out"))
    entered: asyncio.Future[None] = loop.create_future()

    async def on_client(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        entered.set_result(None)
        await splice(r, w, entrance_stream, "in")

    entrance = await asyncio.start_server(on_client, "127.0.0.1", 0)
    result = await _pingpong(rtts, entrance)  # the abort at its end resets the stream: both splices end
    assert entered.done() and counters["in:received"] >= rtts, counters
    await asyncio.wait_for(exit_task, 10)
    return result


def run(rtts: int, bare: bool = False) -> tuple[float, float]:
    """(wall seconds, CPU seconds) per round trip over `rtts` round trips, in a fresh uvloop."""
    import uvloop

    return uvloop.run(floor(rtts) if bare else model(rtts))


def instructions(src: Path, small: int, large: int, bare: bool = False) -> float:
    """User-space instructions per round trip of the tree at `src` (callgrind at two sizes, the difference)."""
    counts = []
    for n in (small, large):
        out = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
             "bench.direct_rtt_path", "--rtts", str(n), *(["--floor"] if bare else [])],
            env={**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{REPO}"}, cwd=REPO, capture_output=True, text=True,
            check=True, timeout=3600,
        )  # fmt: skip
        found = re.search(r"Collected : ([0-9]+)", out.stderr)
        if found is None:
            raise SystemExit(f"no instruction count in callgrind's output:\n{out.stderr[-2000:]}")
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / (large - small)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rtts", type=int, default=5000, help="round trips to measure (default %(default)s)")
    parser.add_argument("--callgrind", action="store_true", help="instructions per round trip (valgrind)")
    parser.add_argument("--baseline-rev", metavar="REV", help="also measure REV's code, rounds interleaved")
    parser.add_argument("--rounds", type=int, default=5, help="rounds per tree with --baseline-rev or --callgrind")
    parser.add_argument("--floor", action="store_true", help="a bare TLS forwarder instead of ztm's layers")
    parser.add_argument("--opcodes", action="store_true", help="count bytecodes per function (slow; Python only)")
    args = parser.parse_args(argv)
    if args.opcodes:
        global OPCODES
        OPCODES = collections.Counter()
        run(args.rtts, args.floor)
        print(f"bytecodes per round trip: {sum(OPCODES.values()) / args.rtts:.0f}")
        for name, n in OPCODES.most_common(30):
            print(f"{n / args.rtts:8.1f}  {name}")
        return 0
    trees = {"this tree": REPO / "src"}
    if args.baseline_rev:
        commit = baseline_commit(parser, REPO, args.baseline_rev)
        trees[f"@{args.baseline_rev}"] = export_revision(REPO, commit, Path(tempfile.mkdtemp(prefix="ztm-base-")))
    if not args.callgrind and not args.baseline_rev:
        wall, cpu = run(args.rtts, args.floor)
        print(f"{args.rtts} round trips: {1e6 * wall:.1f} us wall, {1e6 * cpu:.1f} us CPU per round trip")
        return 0
    if args.floor:
        trees = {"floor": REPO / "src"}
    results: dict[str, list[tuple[float, ...]]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name in trees if r % 2 == 0 else reversed(trees):
            src = trees[name]
            if args.callgrind:
                figure: tuple[float, ...] = (instructions(src, 300, 300 + args.rtts // 5, args.floor),)
                print(f"round {r + 1} {name}: {figure[0] / 1000:.1f}k instructions per round trip", flush=True)
            else:
                out = subprocess.run([sys.executable, "-m", "bench.direct_rtt_path", "--rtts", str(args.rtts),
                                      *(["--floor"] if args.floor else [])],
                                     env={**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{REPO}"}, cwd=REPO,
                                     capture_output=True, text=True, check=True, timeout=600)  # fmt: skip
                found = re.search(r"([0-9.]+) us wall, ([0-9.]+) us CPU", out.stdout)
                assert found is not None, out.stdout
                figure = (float(found.group(1)), float(found.group(2)))
                print(f"round {r + 1} {name}: {figure[0]:.1f} us wall, {figure[1]:.1f} us CPU per round trip",
                      flush=True)  # fmt: skip
            results[name].append(figure)
    names = list(trees)
    for i, what in enumerate(["instructions" if args.callgrind else "wall us", "CPU us"][: len(results[names[0]][0])]):
        for name in names:
            values = [f[i] for f in results[name]]
            print(f"{name}: {what} per round trip median {statistics.median(values):.1f} "
                  f"({min(values):.1f}-{max(values):.1f})")  # fmt: skip
        if len(names) == 2:
            ratios = [a[i] / b[i] for a, b in zip(results[names[0]], results[names[1]], strict=True)]
            print(f"  x baseline: {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
