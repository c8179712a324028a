"""The tunnel data plane: throughput, latency, connection setup, memory and recovery, against stunnel4 and raw TCP.

Setup, all real processes on 127.0.0.1 with temporary data directories: a hub and two agents (`ep1`, the entrance,
and `ep2`, the exit) started as `python -m ztm run hub|agent`, both joined with the root permit. On ep2
`ztm tunnel open outbound tcp/bench --targets 127.0.0.1:IPERF` and `tcp/echo --targets 127.0.0.1:ECHO`; on ep1
`ztm tunnel open inbound tcp/bench --listen 127.0.0.1:P1` and `tcp/echo --listen 127.0.0.1:P2` (through the CLI).
The ztm path is therefore client -> ep1 -> hub -> ep2 -> server: three hops, two TLS connections.

The direct path (`ztm-direct`): a third agent, `ep3`, started with `--direct 127.0.0.1:PORT`, offers the same
targets as `tcp/bench-d` and `tcp/echo-d`, and ep1 opens inbounds for them: client -> ep1 -> ep3 -> server, two
processes and one TLS connection (a direct channel, `ztm.agent.direct`), as stunnel4's one hop. Latency,
connection set-up and throughput measure it next to the relayed path; memory, idle connections and recovery
measure the relayed path only.

Baselines in the same run, against the same servers:

* raw: the client talks to the server directly;
* stunnel4, one hop: a stunnel client (plain TCP in, TLS 1.3 out, verifying the server's certificate) and a stunnel
  server (TLS in, plain TCP out to the server), ECDSA P-256 certificate made with `openssl`, TCP_NODELAY on every
  socket, both with `foreground = yes`.

Servers: `iperf3 -s`, an echo server (a process of this script: uvloop, a `Protocol` that writes back what it
reads, closes on EOF, backlog 4096, open-files limit raised) and a counting sink (a process of this script too: reads
an 8-byte length and that many bytes, counts them, answers one byte), each behind its own tunnel and stunnel section.

Measurements, in this order (the targets come from the issue; each is printed with its baseline, the ratio and
PASS/FAIL):

3. 1-byte ping-pong on one connection, 5,000 round trips per path in `--rounds` interleaved rounds (default 5, 500
   warm-up each): p50 <= 1.5 x and p99 <= 3 x stunnel4; CPU µs per round trip of each process of each path. The
   issue-18 targets use the median over the rounds of each round's ratio to stunnel4 in that round: relayed p50 <=
   1.7 x, p99 <= 2 x; direct p50 <= 1.05 x; CPU per round trip (all processes of the path) relayed <= 1.8 x
   stunnel4's two, direct <= 1.05 x;
4. new connection + first 1-byte round trip (connect, send, receive; the close is not timed), 300 sequential
   cycles per path after 20 warm-up, in `--rounds` interleaved rounds: p50 <= 2 ms; CPU µs per cycle;
1. one TCP stream, `iperf3 -n 1G`, `--reps` runs per path (default 5, interleaved raw/stunnel4/ztm; median, the
   receiver's rate): ztm >= 0.6 x stunnel4; CPU seconds of every process per GiB;
2. 16 streams, `iperf3 -P 16 -n 1G` (1 GiB in all), the same way: ztm >= 0.6 x stunnel4;
2s. delivered: right after the iperf3 runs (which end many streams by reset with data in flight), 1 GiB on one
   connection to the counting sink, `--reps` runs per path interleaved; the clock stops when the sink's answer
   (sent after the last byte arrived) is back, and the rate counts bytes the sink received. Every transfer must
   deliver all its bytes (issue 18: one stalled at 16 MiB); CPU seconds per GiB of each process;
5. memory: VmRSS of ep1, hub and ep2 once >= 4 GiB went through the tunnel (topped up with `-P 4` if needed):
   <= 150 MB each (VmHWM, the peak, shown too). Then hub, ep1 and ep2 are restarted (SIGTERM, same data) so that
   the idle test starts from fresh processes: a client process (open-files limit raised to the hard limit) opens
   10,000 tunnelled connections in batches of 50, each checked with a 1-byte echo, and holds them idle; RSS delta
   per connection of each process at 1/4, 1/2 and all of them: <= 30 KB (30,000 bytes). Then all are checked
   again, closed, opened a second time and closed again (retention or leak?);
6. recovery: SIGKILL the exit agent and start it again on the same data directory and port, time until a new
   tunnelled connection + echo succeeds (probes every 5 ms); the same for the hub, from the hub listening again.
   The hub's log tells when each agent came back online. No target; ZTM's figures, with their source, are in
   bench/RESULTS.md ("Reference figures").

`--quick` scales everything down (256 MiB transfers, 1 run, 1,000 round trips, 100 connect cycles, 1,000 idle
connections, 1 GiB before the RSS check, 1 restart each). `--py-spy` (needs `pip install py-spy` in the venv)
profiles ep1, hub and ep2 during one extra 1 GiB stream, a ping-pong and 1,000 connect cycles before the
recovery part. `--skip` leaves parts out.

Same-run baseline, `--baseline-rev REV` (issue 13: the end-to-end layer's cost against the code without it): REV's
`src/` is exported with `git archive` into the temporary directory (the repository is only read: no worktree, no
checkout) and a second hub and agents `hub@base`, `ep1@base`, `ep2@base`, `ep3@base` run it with the same venv
(`PYTHONPATH=<export>/src`; checked before the run: `ztm` must import from the export), with the same tunnels to
the same servers. The paths `ztm@base` and `ztm-direct@base` join every interleaved part (ping-pong, connect cycles,
iperf3, counting sink): in each round or run, each current path and its baseline run back to back, A then B in even
rounds and B then A in odd ones. Next to the ratios to stunnel4, each table then has the ratio current/baseline:
the median over the rounds of each round's ratio and their spread (min-max); the hub's CPU seconds per relayed GiB
(utime+stime from /proc/PID/stat before and after each transfer) is printed for both hubs, and a closing table lists
every comparison. Targets `13-rtt` (relayed 1-byte RTT p50 <= 1.15 x baseline) and `13-hub-cpu`/`13-hub-cpu-16`
(hub CPU per relayed GiB must not rise: FAIL when the median ratio is over 1.05)
join the table. Use >= 5 rounds and runs (the defaults) for figures to keep. Memory, idle connections, recovery and
profiles measure the current code only.

Run:  .venv/bin/python -m bench.tunnel [--quick] [--py-spy] [--keep] [--baseline-rev REV]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import re
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baseline import (
    BASE,
    BaselineError,
    RoundRatios,
    base_of,
    baseline_commit,
    check_imports_from,
    export_revision,
    is_base,
    round_order,
)
from bench.common import (
    HOST,
    PYTHON,
    REPO,
    SRC,
    Agent,
    Hub,
    Proc,
    Spy,
    Workspace,
    bench_env,
    cpu_seconds,
    fd_limit,
    free_port,
    machine_facts,
    open_fds,
    percentile,
    py_spy,
    raise_nofile,
    rss_kib,
    src_digest,
    table,
    tcp_accepts,
    tree_facts,
    wait_until,
)

MESH = "bench"
_PATH_PROCS = {
    "raw": (),
    "stunnel4": ("stunnel-client", "stunnel-server"),
    "ztm": ("ep1", "hub", "ep2"),
    "ztm-direct": ("ep1", "ep3"),
}
"""The processes each path goes through (besides client and server): their CPU is the path's. With `--baseline-rev`,
`ztm@base` and `ztm-direct@base` go through the baseline's `ep1@base`, `hub@base`, `ep2@base` and `ep3@base`."""
_ZTM_PROCS = ("ep1", "hub", "ep2", "ep3")
_ONLINE = re.compile(r"^(\S+ \S+) INFO ztm\.hub: endpoint (\S+) \(.*\) is online")
GiB = 1 << 30
MiB = 1 << 20

# ------------------------------------------------------------------------------------------ helper processes


def _set_nofile_max() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _use_uvloop() -> str:
    try:
        import uvloop
    except ImportError:
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def role_echo(port: int, bind: str = HOST) -> int:
    """An echo server on `bind`: writes back whatever it reads, closes its side on EOF."""
    loop_name = _use_uvloop()
    nofile = _set_nofile_max()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

        def eof_received(self) -> bool:
            return False  # close

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, bind, port, backlog=4096)
        print(json.dumps({"ready": True, "loop": loop_name, "nofile": nofile}), flush=True)
        async with server:
            await server.serve_forever()

    asyncio.run(main())
    return 0


def role_sink(port: int, bind: str = HOST) -> int:
    """The counting sink on `bind`: per connection, an 8-byte big-endian length, then that many bytes (counted, not
    kept), then a 1-byte answer. Command `take` (stdin) answers with the connections finished since the last `take`."""
    _use_uvloop()
    done: list[dict[str, int]] = []

    class Sink(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport: asyncio.Transport = transport  # type: ignore[assignment]
            self.head = b""
            self.size = -1
            self.count = 0
            self.answered = False

        def data_received(self, data: bytes) -> None:
            if self.size < 0:
                self.head += data
                if len(self.head) < 8:
                    return
                self.size = int.from_bytes(self.head[:8], "big")
                data = self.head[8:]
            self.count += len(data)
            if self.count >= self.size and not self.answered:
                self.answered = True
                done.append({"expected": self.size, "delivered": self.count})  # before the answer leaves
                self.transport.write(b"k")

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.answered and self.size >= 0:
                done.append({"expected": self.size, "delivered": self.count})

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Sink, bind, port, backlog=256)
        print(json.dumps({"ready": True}), flush=True)
        async with server:
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                if json.loads(line).get("cmd") == "take":
                    print(json.dumps({"done": done[:]}), flush=True)
                    done.clear()

    asyncio.run(main())
    return 0


def sink_transfer(
    port: int, nbytes: int, timeout: float = 60.0, connect: Callable[[], socket.socket] | None = None
) -> tuple[float, str]:
    """Send an 8-byte length and `nbytes` to a counting sink; seconds until its answer ("" or what went wrong: a
    transfer that makes no progress for `timeout` seconds is a stall). `connect` makes the connection instead of
    `HOST:port` (e.g. a socket in another network namespace, bench/p2p.py); the clock starts before it."""
    block = bytes(range(256)) * (16 * 1024)  # 4 MiB
    start = time.perf_counter()
    try:
        with connect() if connect else socket.create_connection((HOST, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(nbytes.to_bytes(8, "big"))
            left = nbytes
            while left:
                n = min(left, len(block))
                sock.sendall(block if n == len(block) else block[:n])
                left -= n
            got = sock.recv(1)
            end = time.perf_counter()
    except TimeoutError:
        return time.perf_counter() - start, f"stalled (nothing moved for {timeout:g}s)"
    except OSError as exc:
        return time.perf_counter() - start, f"{type(exc).__name__}: {exc}"
    return end - start, "" if got == b"k" else f"answer {got!r}"


def role_hold(port: int, batch: int) -> int:
    """A client that opens and holds many connections; commands (JSON lines) on stdin, answers on stdout."""
    _use_uvloop()
    nofile = _set_nofile_max()
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    errors: Counter[str] = Counter()

    async def one() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 15.0)
        try:
            writer.write(b"x")
            if await asyncio.wait_for(reader.readexactly(1), 15.0) != b"x":
                raise ValueError("wrong echo")
        except BaseException:
            writer.transport.abort()
            raise
        return reader, writer

    async def echo_all() -> int:
        async def check(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
            reader, writer = conn
            try:
                writer.write(b"y")
                return await asyncio.wait_for(reader.readexactly(1), 15.0) == b"y"
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                return False

        ok = 0
        for i in range(0, len(conns), batch):
            ok += sum(await asyncio.gather(*(check(c) for c in conns[i : i + batch])))
        return ok

    async def main() -> None:
        loop = asyncio.get_running_loop()
        print(json.dumps({"ready": True, "nofile": nofile}), flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            cmd = json.loads(line)
            start = time.perf_counter()
            failed = 0
            if cmd["cmd"] == "open":
                while len(conns) < cmd["n"] and failed < max(50, cmd["n"] // 100):
                    k = min(batch, cmd["n"] - len(conns))
                    for res in await asyncio.gather(*(one() for _ in range(k)), return_exceptions=True):
                        if isinstance(res, BaseException):
                            failed += 1
                            errors[f"{type(res).__name__}: {res}"[:120]] += 1
                        else:
                            conns.append(res)
                answer = {"open": len(conns), "failed": failed, "errors": dict(errors)}
            elif cmd["cmd"] == "check":
                answer = {"alive": await echo_all(), "of": len(conns)}
            elif cmd["cmd"] == "close":
                for _reader, writer in conns:
                    writer.close()
                conns.clear()
                await asyncio.sleep(0.1)
                answer = {"closed": True}
            else:
                answer = {"error": f"unknown command {cmd!r}"}
            answer["seconds"] = time.perf_counter() - start
            print(json.dumps(answer), flush=True)

    asyncio.run(main())
    return 0


class Child:
    """A helper process of this script (`--role ...`), talking JSON lines over pipes."""

    def __init__(
        self, ws: Workspace, name: str, args: list[str], module: str = "bench.tunnel", prefix: Sequence[str] = ()
    ) -> None:
        """`module`: the bench script whose `--role` this child runs; `prefix` goes before the command, e.g. `ip netns
        exec NS` to run the helper in a network namespace."""
        directory = ws.dir / name
        directory.mkdir()
        env = bench_env(directory)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env["PYTHONPATH"]])
        argv = [*prefix, PYTHON, "-m", module, *args]
        self.proc = Proc(argv, log_path=directory / "stderr", env=env, cwd=directory, pipes=True)
        ws.procs.append(self.proc)
        assert self.proc.popen.stdin is not None and self.proc.popen.stdout is not None
        self.stdin: IO[bytes] = self.proc.popen.stdin
        self.stdout: IO[bytes] = self.proc.popen.stdout
        self.hello = self.receive(30.0)

    def send(self, **cmd: Any) -> None:
        self.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.stdin.flush()

    def receive(self, timeout: float) -> dict[str, Any]:
        ready, _, _ = select.select([self.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError(f"{self.proc.argv[3:]} did not answer within {timeout:g}s; stderr:\n{self.proc.tail()}")
        line = self.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.proc.argv[3:]} ended; stderr:\n{self.proc.tail()}")
        return dict(json.loads(line))

    def ask(self, timeout: float, **cmd: Any) -> dict[str, Any]:
        self.send(**cmd)
        return self.receive(timeout)


# ------------------------------------------------------------------------------------------------ clients


IPERF_BUSY = ("the server is busy running a test", "control socket has closed unexpectedly", "Connection refused")
"""What iperf3's client says when `iperf3 -s` has not finished the previous test yet (it serves one test at a time,
and re-creates its listening socket between tests): the previous client's last message may still be on its way
through a tunnel. `iperf` then tries again."""


def iperf(
    port: int, nbytes: int, parallel: int = 1, timeout: float = 240.0, busy_for: float = 15.0
) -> dict[str, float]:
    argv = ["iperf3", "-c", HOST, "-p", str(port), "-n", str(nbytes), "-J"]
    if parallel > 1:
        argv += ["-P", str(parallel)]
    first = time.monotonic()
    while True:
        attempt = time.monotonic()
        cp = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
        try:
            data = json.loads(cp.stdout)
        except ValueError:
            raise RuntimeError(f"iperf3 failed ({cp.returncode}): {cp.stdout[-500:]}{cp.stderr[-500:]}") from None
        error = str(data.get("error", ""))
        if error and any(b in error for b in IPERF_BUSY) and time.monotonic() - first < busy_for:
            time.sleep(0.05)  # a benchmark's retry pause, not a test waiting for state
            continue
        if error or cp.returncode != 0:
            raise RuntimeError(f"iperf3 failed ({cp.returncode}): {error}")
        break
    received = data["end"]["sum_received"]
    return {
        "bytes": float(received["bytes"]),
        "seconds": float(received["seconds"]),
        "MBps": float(received["bits_per_second"]) / 8e6,
        "busy_wait_s": attempt - first,
    }


def _nodelay(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def summary(samples: list[float]) -> dict[str, float]:
    """min, p50, p90, p99, max and count of a list of timings."""
    return {
        "p50": percentile(samples, 50),
        "p90": percentile(samples, 90),
        "p99": percentile(samples, 99),
        "min": min(samples),
        "max": max(samples),
        "n": len(samples),
    }


def pingpong(port: int, count: int, warmup: int, connect: Callable[[], socket.socket] | None = None) -> list[float]:
    """1-byte request/response on one connection; seconds per round trip (warm-up dropped). `connect` makes the
    connection instead of `HOST:port` (see `sink_transfer`)."""
    out: list[float] = []
    clock = time.perf_counter
    with connect() if connect else socket.create_connection((HOST, port), timeout=10.0) as sock:
        _nodelay(sock)
        send, recv = sock.send, sock.recv
        for i in range(warmup + count):
            start = clock()
            send(b"x")
            got = recv(1)
            end = clock()
            if got != b"x":
                raise RuntimeError(f"ping-pong on port {port}: got {got!r} after {i} round trips")
            if i >= warmup:
                out.append(end - start)
    return out


def connect_cycle(port: int, timeout: float = 5.0, connect: Callable[[], socket.socket] | None = None) -> float:
    """connect + send 1 byte + receive it; seconds (the close that follows is not counted). `connect` makes the
    connection instead of `HOST:port` (see `sink_transfer`)."""
    start = time.perf_counter()
    sock = connect() if connect else socket.create_connection((HOST, port), timeout=timeout)
    try:
        _nodelay(sock)
        sock.sendall(b"x")
        got = sock.recv(1)
        end = time.perf_counter()
        if got != b"x":
            raise ConnectionError(f"got {got!r}")
    finally:
        sock.close()
    return end - start


def probe(port: int) -> bool:
    try:
        connect_cycle(port, timeout=2.0)
    except OSError:
        return False
    return True


@dataclass
class Stunnel:
    """stunnel4's one hop: `client` (plain TCP in on `ports[NAME]`, TLS 1.3 out) and `server` (TLS in, TCP out)."""

    server: Proc
    client: Proc
    ports: dict[str, int]


def start_stunnel(ws: Workspace, targets: dict[str, int]) -> Stunnel:
    """A stunnel4 client and server, one section per `targets` entry (name -> port of the server behind it): ECDSA
    P-256 certificate made with `openssl`, TLS 1.3, the client verifying the server, TCP_NODELAY on every socket. Both
    are `ws` processes; returns once every port listens and (with an "echo" section) an echo crosses."""
    d = ws.dir / "stunnel"
    d.mkdir()
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=bench",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    common = "foreground = yes\npid =\nsyslog = no\ndebug = warning\n"
    sock_opts = "socket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\nsslVersionMin = TLSv1.3\n"
    server = common
    client = common + "client = yes\n"
    ports: dict[str, int] = {}
    listening: list[int] = []
    for name, target in targets.items():
        srv, cli = free_port(), free_port()
        ports[name] = cli
        listening += [srv, cli]
        server += f"[{name}]\naccept = {HOST}:{srv}\nconnect = {HOST}:{target}\ncert = {cert}\nkey = {key}\n{sock_opts}"
        client += f"[{name}]\naccept = {HOST}:{cli}\nconnect = {HOST}:{srv}\nverifyPeer = yes\nCAfile = {cert}\n"
        client += sock_opts
    (d / "server.conf").write_text(server)
    (d / "client.conf").write_text(client)
    env = bench_env(d)
    st_server = Proc(["stunnel4", str(d / "server.conf")], log_path=d / "server.out", env=env, cwd=d)
    ws.procs.append(st_server)
    st_client = Proc(["stunnel4", str(d / "client.conf")], log_path=d / "client.out", env=env, cwd=d)
    ws.procs.append(st_client)
    for port in listening:
        wait_until(lambda p=port: tcp_accepts(p), 10, f"stunnel4 to listen on {port}")  # type: ignore[misc]
    if "echo" in ports:
        wait_until(lambda: probe(ports["echo"]), 10, "an echo through stunnel4")
    return Stunnel(st_server, st_client, ports)


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class Target:
    number: str
    what: str
    value: str
    baseline: str
    ratio: str
    limit: str
    ok: bool | None


@dataclass
class Stack:
    """One revision's hub and agents and the entrance's tunnel ports: relayed ep1 -> hub -> ep2 (`bench`, `echo`,
    `sink`) and direct ep1 -> ep3 (`*_d`)."""

    hub: Hub
    ep1: Agent
    ep2: Agent
    ep3: Agent
    bench: int
    echo: int
    sink: int
    bench_d: int
    echo_d: int
    sink_d: int

    def pids(self, suffix: str = "") -> dict[str, int]:
        return {f"{n}{suffix}": getattr(self, n).proc.pid for n in _ZTM_PROCS}


@dataclass
class Run:
    args: argparse.Namespace
    ws: Workspace
    hub: Hub = field(init=False)
    ep1: Agent = field(init=False)
    ep2: Agent = field(init=False)
    targets: list[Target] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)
    ztm_bytes: float = 0.0
    base_src: Path | None = None
    """`--baseline-rev`: the exported revision's `src/`; its processes are `*@base` and its paths `ztm*@base`."""
    base_pids: dict[str, int] = field(default_factory=dict)
    versus: list[list[object]] = field(default_factory=list)
    """Rows of the closing current/baseline table: measure, path, current, baseline, ratio over the rounds."""
    path_procs: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(_PATH_PROCS))
    rtt_vs_base: dict[str, dict[str, RoundRatios]] = field(default_factory=dict)
    """Per current path with a baseline: `p50`, `p99`, `cpu` of the ping-pong, current/baseline by round."""
    hub_vs_base: dict[str, tuple[float, float, RoundRatios]] = field(default_factory=dict)
    """Per transfer kind: the hub's CPU-s per relayed GiB, current and baseline (medians), and the runs' ratios."""

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.sections.append(text)

    def progress(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)

    # setup ------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        ws = self.ws
        self.iperf_port, self.echo_port = free_port(), free_port()
        iperf_dir = ws.dir / "iperf3"
        iperf_dir.mkdir()
        self.iperf_srv = Proc(
            ["iperf3", "-s", "-B", HOST, "-p", str(self.iperf_port)],
            log_path=iperf_dir / "server.out",
            env=bench_env(iperf_dir),
            cwd=iperf_dir,
        )
        ws.procs.append(self.iperf_srv)
        self.echo = Child(ws, "echo", ["--role", "echo", "--port", str(self.echo_port)])
        self.sink_port = free_port()
        self.sink = Child(ws, "sink", ["--role", "sink", "--port", str(self.sink_port)])
        wait_until(lambda: tcp_accepts(self.iperf_port), 10, "iperf3 -s to listen")
        self.progress(f"iperf3 server :{self.iperf_port}, echo server :{self.echo_port} ({self.echo.hello})")

        self.stunnel_setup()

        cur = self.start_stack("", SRC)
        if self.args.policy_rules:
            self.set_policy(cur, self.args.policy_rules)
        self.hub, self.ep1, self.ep2, self.ep3 = cur.hub, cur.ep1, cur.ep2, cur.ep3
        self.bench_port, self.echo_in_port, self.sink_in_port = cur.bench, cur.echo, cur.sink
        self.bench_d_port, self.echo_d_port, self.sink_d_port = cur.bench_d, cur.echo_d, cur.sink_d
        self.pids = cur.pids()
        for name, pid in self.pids.items():
            self.progress(f"{name} pid {pid}, open-files limit {fd_limit(pid)}, RSS {rss_kib(pid) / 1024:.1f} MiB")
        self.paths = {
            "raw": (self.iperf_port, self.echo_port),
            "stunnel4": (self.st_iperf, self.st_echo),
            "ztm": (self.bench_port, self.echo_in_port),
            "ztm-direct": (self.bench_d_port, self.echo_d_port),
        }
        self.sink_ports = {
            "raw": self.sink_port,
            "stunnel4": self.st_sink,
            "ztm": self.sink_in_port,
            "ztm-direct": self.sink_d_port,
        }
        if self.base_src is not None:
            base = self.start_stack(BASE, self.base_src)
            self.base_pids = base.pids(BASE)
            self.progress(f"baseline processes: {self.base_pids}")
            # each baseline path right after its current one: round_order() alternates A, B and B, A
            self.paths = {
                "raw": self.paths["raw"],
                "stunnel4": self.paths["stunnel4"],
                "ztm": self.paths["ztm"],
                base_of("ztm"): (base.bench, base.echo),
                "ztm-direct": self.paths["ztm-direct"],
                base_of("ztm-direct"): (base.bench_d, base.echo_d),
            }
            self.sink_ports = {
                "raw": self.sink_ports["raw"],
                "stunnel4": self.sink_ports["stunnel4"],
                "ztm": self.sink_ports["ztm"],
                base_of("ztm"): base.sink,
                "ztm-direct": self.sink_ports["ztm-direct"],
                base_of("ztm-direct"): base.sink_d,
            }
            for path in ("ztm", "ztm-direct"):
                self.path_procs[base_of(path)] = tuple(base_of(n) for n in _PATH_PROCS[path])

    def start_stack(self, suffix: str, src: Path) -> Stack:
        """Start a hub and agents ep1, ep2, ep3 (directories named with `suffix`) running the code under `src`, join
        them and open the tunnels to this run's servers; wait until a relayed and a direct round trip work."""
        ws = self.ws
        hub = ws.start_hub(name=f"hub{suffix}", src=src)
        ep1 = ws.start_agent(f"ep1{suffix}", src=src)
        ep2 = ws.start_agent(f"ep2{suffix}", src=src)
        ep3 = ws.start_agent(f"ep3{suffix}", extra=["--direct", f"{HOST}:{free_port()}"], src=src)
        for role, ep in (("ep1", ep1), ("ep2", ep2), ("ep3", ep3)):
            ep.cli("join", MESH, "--as", role, "--permit", str(hub.permit))
        bench, echo, sink = free_port(), free_port(), free_port()
        bench_d, echo_d, sink_d = free_port(), free_port(), free_port()
        ep2.cli("tunnel", "open", "outbound", "tcp/bench", "--targets", f"{HOST}:{self.iperf_port}")
        ep2.cli("tunnel", "open", "outbound", "tcp/echo", "--targets", f"{HOST}:{self.echo_port}")
        ep1.cli("tunnel", "open", "inbound", "tcp/bench", "--listen", f"{HOST}:{bench}")
        ep1.cli("tunnel", "open", "inbound", "tcp/echo", "--listen", f"{HOST}:{echo}")
        wait_until(lambda: probe(echo), 30, f"the echo tunnel{suffix} to carry a round trip")
        ep2.cli("tunnel", "open", "outbound", "tcp/sink", "--targets", f"{HOST}:{self.sink_port}")
        ep1.cli("tunnel", "open", "inbound", "tcp/sink", "--listen", f"{HOST}:{sink}")
        ep3.cli("tunnel", "open", "outbound", "tcp/sink-d", "--targets", f"{HOST}:{self.sink_port}")
        ep1.cli("tunnel", "open", "inbound", "tcp/sink-d", "--listen", f"{HOST}:{sink_d}")
        ep3.cli("tunnel", "open", "outbound", "tcp/bench-d", "--targets", f"{HOST}:{self.iperf_port}")
        ep3.cli("tunnel", "open", "outbound", "tcp/echo-d", "--targets", f"{HOST}:{self.echo_port}")
        ep1.cli("tunnel", "open", "inbound", "tcp/bench-d", "--listen", f"{HOST}:{bench_d}")
        ep1.cli("tunnel", "open", "inbound", "tcp/echo-d", "--listen", f"{HOST}:{echo_d}")
        wait_until(lambda: probe(echo_d) and self.direct_count(ep1) > 0, 30, f"a direct round trip{suffix}")
        return Stack(hub, ep1, ep2, ep3, bench, echo, sink, bench_d, echo_d, sink_d)

    def set_policy(self, stack: Stack, rules: int) -> None:
        """Set a mesh policy of `rules` rules on `stack`'s hub (issue 16's "a decision on the hot path" measure):
        `rules - 1` rules any caller matches (`src` `*`) for tunnels of other names, each a candidate the exit's
        decision must look at, then the one that allows the bench's tunnels; wait until ep2 and ep3 enforce it."""
        others = [
            {"action": "accept", "src": ["*"], "dst": [f"*:tunnel/tcp/other-{i}", f"ep9-{i}:terminal"]}
            for i in range(rules - 1)
        ]
        allow = {"action": "accept", "src": ["root"], "dst": ["*:tunnel/tcp/*"]}
        path = self.ws.dir / "policy.json"
        path.write_text(json.dumps({"acls": [*others, allow]}, indent=1))
        stack.ep1.cli("policy", "set", str(path), "--note", f"bench: {rules} rules")

        def enforced() -> bool:
            for ep in (stack.ep2, stack.ep3):
                status, view = ep.api("GET", f"/api/meshes/{MESH}/policy/local")
                if status != 200 or not isinstance(view, dict) or not view.get("version"):
                    return False
            return True

        wait_until(enforced, 30, "the exits to hold the policy")
        self.progress(f"policy of {rules} rules ({path.stat().st_size} bytes) set on the current hub")

    def direct_count(self, ep1: Agent | None = None) -> int:
        """Connections ep1 sent over direct channels (`ztm tunnel describe`'s `direct`)."""
        status, view = (ep1 or self.ep1).api("GET", f"/api/meshes/{MESH}/apps/tunnel/inbound/tcp/echo-d")
        return int(view.get("direct", 0)) if status == 200 and isinstance(view, dict) else 0

    def stunnel_setup(self) -> None:
        st = start_stunnel(self.ws, {"iperf": self.iperf_port, "echo": self.echo_port, "sink": self.sink_port})
        self.st_server, self.st_client = st.server, st.client
        self.st_iperf, self.st_echo, self.st_sink = st.ports["iperf"], st.ports["echo"], st.ports["sink"]

    # helpers ----------------------------------------------------------------------------------------------

    def rss(self) -> dict[str, int]:
        return {name: rss_kib(pid) for name, pid in self.pids.items()}

    def hwm(self) -> dict[str, int]:
        out = {}
        for name, pid in self.pids.items():
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[name] = int(line.split()[1])
        return out

    def cpu(self) -> dict[str, float]:
        pids = {
            **self.pids,
            **self.base_pids,
            "stunnel-client": self.st_client.pid,
            "stunnel-server": self.st_server.pid,
            "iperf3-server": self.iperf_srv.pid,
        }
        out = {name: cpu_seconds(pid) for name, pid in pids.items()}
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        out["iperf3-client"] = usage.ru_utime + usage.ru_stime
        return out

    def add_target(self, *args: Any) -> None:
        self.targets.append(Target(*args))

    def col(self, path: str, name: str) -> str:
        """The process shown in column `name` of a path's row: the baseline's own for a baseline path."""
        return base_of(name) if is_base(path) and name in _ZTM_PROCS else name

    def compared(self) -> list[str]:
        """The current paths that have a baseline path in this run."""
        return [p for p in self.paths if base_of(p) in self.paths]

    def against_base(
        self, measure: str, path: str, current: str, baseline: str, ratios: RoundRatios, unit: str = ""
    ) -> str:
        """Note one current/baseline comparison for the closing table; returns the ratio's text for a table cell."""
        self.versus.append([measure, path, f"{current}{unit}", f"{baseline}{unit}", ratios.text()])
        return ratios.text()

    def hub_cpu_table(self, title: str, cpu_gib: dict[str, list[float]]) -> str:
        """The hub's CPU-s per relayed GiB (utime+stime before/after each transfer) of the current and the baseline
        relayed path: each run's figure, and the median and spread of the runs' ratios (each pair back to back)."""
        rows = []
        for path in self.compared():
            if "hub" not in self.path_procs[path]:
                continue
            b = base_of(path)
            rr = RoundRatios()
            for c, d in zip(cpu_gib[path], cpu_gib[b], strict=True):
                rr.add(c, d)
            cur, base = statistics.median(cpu_gib[path]), statistics.median(cpu_gib[b])
            ratio = self.against_base(f"{title}: hub CPU-s per GiB", path, f"{cur:.2f}", f"{base:.2f}", rr)
            if path == "ztm":
                self.hub_vs_base[title] = (cur, base, rr)
            for p in (path, b):
                runs = " ".join(f"{v:.2f}" for v in cpu_gib[p])
                rows.append([p, f"{statistics.median(cpu_gib[p]):.2f}", runs, ratio if p == path else ""])
        return (
            f"\nHub CPU seconds per relayed GiB, {title} (utime+stime from /proc/PID/stat before and after each run)"
            "\n\n" + table(["path", "median CPU-s/GiB", "runs", "x baseline (median of runs' ratios, spread)"], rows)
        )

    # 1 and 2: throughput ----------------------------------------------------------------------------------

    def throughput(self, parallel: int, nbytes: int) -> dict[str, float]:
        reps = self.args.reps
        results: dict[str, list[float]] = {p: [] for p in self.paths}
        cpu_used: dict[str, dict[str, float]] = {p: defaultdict(float) for p in self.paths}
        hub_gib: dict[str, list[float]] = {p: [] for p in self.paths}
        moved: dict[str, float] = defaultdict(float)
        for rep in range(reps):
            for path in round_order(list(self.paths), rep):
                port = self.paths[path][0]
                before = self.cpu()
                r = iperf(port, nbytes, parallel)
                after = self.cpu()
                for k in after:
                    cpu_used[path][k] += after[k] - before[k]
                hub = self.col(path, "hub")
                hub_gib[path].append((after[hub] - before[hub]) / (max(r["bytes"], 1.0) / GiB))
                results[path].append(r["MBps"])
                moved[path] += r["bytes"]
                if path == "ztm":
                    self.ztm_bytes += r["bytes"]
                busy = f" (iperf3 -s busy before: {r['busy_wait_s']:.2f}s)" if r["busy_wait_s"] >= 0.01 else ""
                took = f"{r['MBps']:.0f} MB/s in {r['seconds']:.2f}s{busy}"
                self.progress(f"-P {parallel} rep {rep + 1}/{reps} {path}: {took}")
        med = {p: statistics.median(v) for p, v in results.items()}
        label = "1 stream" if parallel == 1 else f"{parallel} streams"
        rows = [
            [p, f"{med[p]:.0f}", " ".join(f"{v:.0f}" for v in results[p]), f"{med[p] / med['stunnel4']:.2f}"]
            for p in self.paths
        ]
        headers = ["path", "median MB/s", "runs MB/s", "x stunnel4"]
        if self.base_pids:
            headers.append("x baseline (median of runs' ratios, spread)")
            for cells, p in zip(rows, self.paths, strict=True):
                cells.append(self.rate_vs_base(f"{label}, MB/s", p, results) if base_of(p) in self.paths else "")
        self.say(
            f"\n### Throughput, {label}, {nbytes / MiB:.0f} MiB per run, {reps} run(s) per path (MB/s = 10^6 B/s)\n\n"
            + table(headers, rows)
        )
        names = ["ep1", "hub", "ep2", "ep3", "stunnel-client", "stunnel-server", "iperf3-client", "iperf3-server"]
        cpu_rows = []
        for p in self.paths:
            gib = moved[p] / GiB
            row: list[object] = [p]
            for n in names:
                used = cpu_used[p][self.col(p, n)]
                row.append(f"{used:.2f} ({used / gib:.2f})" if used >= 0.005 else "-")
            cpu_rows.append(row)
        self.say(
            f"\nCPU seconds during those runs, in all {' / '.join(f'{p} {moved[p] / GiB:.2f}' for p in self.paths)}"
            " GiB; in brackets: CPU-s per GiB"
            + ("; the rows `@base` show the baseline's processes" if self.base_pids else "")
            + "\n\n"
            + table(["path", *names], cpu_rows)
        )
        if self.base_pids:
            self.say(self.hub_cpu_table(f"iperf3 {label}", hub_gib))
        return med

    def rate_vs_base(self, measure: str, path: str, runs: dict[str, list[float]]) -> str:
        """Ratio current/baseline of a rate, run by run (run i of both measured back to back), for a table cell."""
        b = base_of(path)
        rr = RoundRatios()
        for c, d in zip(runs[path], runs[b], strict=True):
            rr.add(c, d)
        cur, base = statistics.median(runs[path]), statistics.median(runs[b])
        return self.against_base(measure, path, f"{cur:.0f}", f"{base:.0f}", rr)

    # 2s: delivered to the counting sink ---------------------------------------------------------------------

    def delivered(self, nbytes: int) -> tuple[dict[str, float], list[str]]:
        """`nbytes` on one connection to the counting sink, `--reps` interleaved runs per path; median MB/s of bytes
        the sink received, and the transfers that did not deliver everything."""
        reps = self.args.reps
        results: dict[str, list[float]] = {p: [] for p in self.sink_ports}
        cpu_used: dict[str, dict[str, float]] = {p: defaultdict(float) for p in self.sink_ports}
        hub_gib: dict[str, list[float]] = {p: [] for p in self.sink_ports}
        moved: dict[str, float] = defaultdict(float)
        problems: list[str] = []
        for rep in range(reps):
            for path in round_order(list(self.sink_ports), rep):
                port = self.sink_ports[path]
                before = self.cpu()
                seconds, problem = sink_transfer(port, nbytes)
                after = self.cpu()
                for k in after:
                    cpu_used[path][k] += after[k] - before[k]
                finished = self.sink.ask(30.0, cmd="take")["done"]
                got = max((int(d["delivered"]) for d in finished), default=0)
                if got != nbytes or problem:
                    problems.append(f"{path} run {rep + 1}: {got:,} of {nbytes:,} bytes delivered {problem}".strip())
                hub = self.col(path, "hub")
                hub_gib[path].append((after[hub] - before[hub]) / (max(got, 1) / GiB))
                results[path].append(got / seconds / 1e6)
                moved[path] += got
                self.progress(f"sink rep {rep + 1}/{reps} {path}: {got / seconds / 1e6:.0f} MB/s delivered {problem}")
        med = {p: statistics.median(v) for p, v in results.items()}
        rows = [
            [p, f"{med[p]:.0f}", " ".join(f"{v:.0f}" for v in results[p]), f"{med[p] / (med['stunnel4'] or 1):.2f}"]
            for p in self.sink_ports
        ]
        headers = ["path", "median MB/s", "runs MB/s", "x stunnel4"]
        if self.base_pids:
            headers.append("x baseline (median of runs' ratios, spread)")
            for row, p in zip(rows, self.sink_ports, strict=True):
                row.append(self.rate_vs_base("delivered, MB/s", p, results) if base_of(p) in self.sink_ports else "")
        names = ["ep1", "hub", "ep2", "ep3", "stunnel-client", "stunnel-server"]
        cpu_rows = []
        for p in self.sink_ports:
            gib = max(moved[p], 1.0) / GiB
            used = {n: cpu_used[p][self.col(p, n)] for n in names}
            cpu_rows.append([p, *(f"{used[n] / gib:.2f}" if used[n] >= 0.005 else "-" for n in names)])
        verdict = "not delivered in full: " + "; ".join(problems) if problems else "every transfer delivered all bytes"
        self.say(
            f"\n### Delivered to a counting sink, one connection, {nbytes / MiB:.0f} MiB per run, {reps} run(s) per"
            " path (MB/s of bytes received, clock stopped by the sink's answer)\n\n"
            + table(headers, rows)
            + "\n\nCPU seconds per GiB delivered\n\n"
            + table(["path", *names], cpu_rows)
            + f"\n\n{verdict}"
        )
        if self.base_pids:
            self.say(self.hub_cpu_table("counting sink", hub_gib))
        return med, problems

    # 3: ping-pong -----------------------------------------------------------------------------------------

    def latency(self) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
        """Ping-pong statistics per path, and per path the median over the rounds of each round's ratio to
        stunnel4 in that round (`p50`, `p99`, `cpu`: CPU per round trip of all the path's processes)."""
        n, warm = self.args.rtts, max(100, self.args.rtts // 10)
        out: dict[str, list[float]] = {p: [] for p in self.paths}
        cpu_used: dict[str, dict[str, float]] = {p: defaultdict(float) for p in self.paths}
        rounds = self.args.rounds
        per_round: dict[str, dict[str, list[float]]] = {p: defaultdict(list) for p in self.paths}
        vs_base: dict[str, dict[str, RoundRatios]] = {p: defaultdict(RoundRatios) for p in self.compared()}
        for r in range(rounds):  # interleaved rounds, so drift on the machine touches every path alike
            this: dict[str, tuple[float, float, float]] = {}
            for path in round_order(list(self.paths), r):
                port = self.paths[path][1]
                before = self.cpu()
                samples = pingpong(port, n // rounds, warm)
                after = self.cpu()
                out[path] += samples
                for k in after:
                    cpu_used[path][k] += after[k] - before[k]
                cpu = sum(after[k] - before[k] for k in self.path_procs[path]) / (len(samples) + warm)
                this[path] = (percentile(samples, 50), percentile(samples, 99), cpu)
            for path, (p50, p99, cpu) in this.items():
                base = this["stunnel4"]
                per_round[path]["p50"].append(p50 / base[0])
                per_round[path]["p99"].append(p99 / base[1])
                per_round[path]["cpu"].append(cpu / base[2] if base[2] > 0 else float("nan"))
            for path, by in vs_base.items():
                for i, key in enumerate(("p50", "p99", "cpu")):
                    by[key].add(this[path][i], this[base_of(path)][i])
            self.progress(f"ping-pong round {r + 1}/{rounds} done")
        stats = {p: summary(v) for p, v in out.items()}
        ratios = {p: {k: statistics.median(v) for k, v in m.items()} for p, m in per_round.items()}
        self.rtt_vs_base = vs_base
        ratio_rows: list[list[object]] = [
            [
                p,
                f"{r['p50']:.2f}",
                f"{r['p99']:.2f}",
                f"{r['cpu']:.2f}",
                " ".join(f"{x:.2f}" for x in per_round[p]["p50"]),
            ]
            for p, r in ratios.items()
        ]
        ratio_headers = [
            "path",
            "p50 x stunnel4",
            "p99 x stunnel4",
            "CPU per round trip x stunnel4",
            "rounds p50 ratios",
        ]
        if vs_base:
            ratio_headers += ["p50 x baseline", "p99 x baseline", "CPU per round trip x baseline"]
            for row, p in zip(ratio_rows, ratios, strict=True):
                if p not in vs_base:
                    row += ["", "", ""]
                    continue
                b = base_of(p)
                cpu_cur = sum(cpu_used[p][k] for k in self.path_procs[p]) / (len(out[p]) + rounds * warm) * 1e6
                cpu_base = sum(cpu_used[b][k] for k in self.path_procs[b]) / (len(out[b]) + rounds * warm) * 1e6
                row += [
                    self.against_base(
                        "1-byte RTT p50", p, f"{stats[p]['p50'] * 1e6:.0f}", f"{stats[b]['p50'] * 1e6:.0f}",
                        vs_base[p]["p50"], " µs",
                    ),
                    self.against_base(
                        "1-byte RTT p99", p, f"{stats[p]['p99'] * 1e6:.0f}", f"{stats[b]['p99'] * 1e6:.0f}",
                        vs_base[p]["p99"], " µs",
                    ),
                    self.against_base(
                        "CPU per round trip, path's processes", p, f"{cpu_cur:.0f}", f"{cpu_base:.0f}",
                        vs_base[p]["cpu"], " µs",
                    ),
                ]  # fmt: skip
        rows = [
            [
                p,
                s["n"],
                *(f"{s[k] * 1e6:.0f}" for k in ("min", "p50", "p90", "p99", "max")),
                f"{s['p50'] / stats['stunnel4']['p50']:.2f}",
                f"{s['p99'] / stats['stunnel4']['p99']:.2f}",
            ]
            for p, s in stats.items()
        ]
        self.say(
            f"\n### 1-byte ping-pong on one connection ({rounds} interleaved rounds, {warm} warm-up each; µs)\n\n"
            + table(["path", "n", "min", "p50", "p90", "p99", "max", "p50 x stunnel4", "p99 x stunnel4"], rows)
            + "\n\n"
            + self.cpu_table(cpu_used, {p: len(v) + rounds * warm for p, v in out.items()}, "round trip")
            + "\n\nMedian over the rounds of each round's ratio to stunnel4 in that round (CPU: the path's processes)"
            + ("; x baseline: the median of each round's ratio current/baseline (min-max)" if vs_base else "")
            + "\n\n"
            + table(ratio_headers, ratio_rows)
        )
        return stats, ratios

    def cpu_table(self, used: dict[str, dict[str, float]], counts: dict[str, int], unit: str) -> str:
        names = ["ep1", "hub", "ep2", "ep3", "stunnel-client", "stunnel-server"]
        rows = []
        base = sum(used["stunnel4"][k] for k in self.path_procs["stunnel4"]) / counts["stunnel4"] * 1e6
        totals = {p: sum(c[k] for k in self.path_procs[p]) / counts[p] * 1e6 for p, c in used.items()}
        for p, c in used.items():
            per = {k: c[self.col(p, k)] / counts[p] * 1e6 for k in names}
            total = totals[p]
            ratio = f"{total / base:.2f}" if base > 0 else "-"
            row: list[object] = [p, *(f"{per[k]:.0f}" if per[k] >= 0.5 else "-" for k in names), f"{total:.0f}", ratio]
            if self.base_pids:
                b = base_of(p)
                row.append(f"{total / totals[b]:.2f}" if b in totals and totals[b] > 0 else "")
            rows.append(row)
        headers = ["path", *names, "sum", "sum x stunnel4"] + (["sum x baseline"] if self.base_pids else [])
        return (
            f"CPU µs per {unit} (utime+stime; warm-up included; sum: the path's own processes"
            + ("; rows `@base`: the baseline's processes" if self.base_pids else "")
            + ")\n\n"
            + table(headers, rows)
        )

    # 4: connection setup ----------------------------------------------------------------------------------

    def connects(self) -> dict[str, dict[str, float]]:
        """`--cycles` connect cycles per path after 20 warm-up, in `--rounds` interleaved rounds."""
        n, warm, rounds = self.args.cycles, 20, self.args.rounds
        out: dict[str, list[float]] = {p: [] for p in self.paths}
        failures: Counter[str] = Counter()
        cpu_used: dict[str, dict[str, float]] = {p: defaultdict(float) for p in self.paths}
        vs_base: dict[str, RoundRatios] = {p: RoundRatios() for p in self.compared()}
        for r in range(rounds):
            this: dict[str, float] = {}
            for path in round_order(list(self.paths), r):
                port = self.paths[path][1]
                first = warm if r == 0 else 0
                count = n // rounds + (1 if r < n % rounds else 0)
                samples: list[float] = []
                before = self.cpu()
                for i in range(first + count):
                    try:
                        t = connect_cycle(port)
                    except OSError as exc:
                        failures[f"{path}: {type(exc).__name__}"] += 1
                        continue
                    if i >= first:
                        samples.append(t)
                time.sleep(0.2)  # let the last close finish everywhere
                after = self.cpu()
                for k in after:
                    cpu_used[path][k] += after[k] - before[k]
                out[path] += samples
                this[path] = percentile(samples, 50)
            for path, rr in vs_base.items():
                rr.add(this[path], this[base_of(path)])
            self.progress(f"connect cycles round {r + 1}/{rounds} done")
        stats = {p: summary(v) for p, v in out.items()}
        rows: list[list[object]] = [
            [p, s["n"], *(f"{s[k] * 1e3:.2f}" for k in ("min", "p50", "p90", "p99", "max"))] for p, s in stats.items()
        ]
        headers = ["path", "n", "min", "p50", "p90", "p99", "max"]
        if vs_base:
            headers.append("p50 x baseline (median of rounds' ratios, spread)")
            for row, p in zip(rows, stats, strict=True):
                b = base_of(p)
                row.append(
                    self.against_base(
                        "new connection + first RTT p50", p, f"{stats[p]['p50'] * 1e3:.2f}",
                        f"{stats[b]['p50'] * 1e3:.2f}", vs_base[p], " ms",
                    )
                    if p in vs_base
                    else ""
                )  # fmt: skip
        self.say(
            f"\n### New connection + first 1-byte round trip ({n} sequential cycles per path after {warm} warm-up, in"
            f" {rounds} interleaved rounds; ms)\n\n"
            + table(headers, rows)
            + (f"\n\nfailed cycles: {dict(failures)}" if failures else "")
            + "\n\n"
            + self.cpu_table(cpu_used, {p: n + warm for p in self.paths}, "cycle (close included)")
        )
        return stats

    # 5b: idle connections ---------------------------------------------------------------------------------

    def idle(self) -> dict[str, float]:
        """Open `--conns` idle connections in steps, measure, check, close; then a second round (leak or reuse?)."""
        return self._idle(self.echo_in_port, ("ep1", "hub", "ep2"), "tunnelled connections")

    def idle_direct(self) -> dict[str, float]:
        """The same over direct channels (ep1 -> ep3), after restarting ep1 and ep3 (fresh processes)."""
        for agent in (self.ep1, self.ep3):
            old = agent.proc
            old.stop()
            self.ws.procs.remove(old)
            cwd = old.log_path.parent
            agent.proc = Proc(
                old.argv, log_path=cwd / f"{old.log_path.stem}.idle-direct.out", env=bench_env(cwd / "home"), cwd=cwd
            )
            self.ws.procs.append(agent.proc)
        self.pids["ep1"], self.pids["ep3"] = self.ep1.proc.pid, self.ep3.proc.pid

        def direct_again() -> bool:
            # a fresh ep1 counts from 0: one probe carried directly means ep3 announced itself and ep1 has the CRL
            self.ep1.token = (self.ep1.data / "agent.token").read_text().strip()  # the agent makes one at each start
            return probe(self.echo_d_port) and self.direct_count_safe() > 0

        wait_until(direct_again, 60, "a direct round trip")
        time.sleep(1.0)
        return self._idle(self.echo_d_port, ("ep1", "hub", "ep3"), "connections over direct channels")

    def direct_count_safe(self) -> int:
        try:
            return self.direct_count()
        except OSError:
            return -1

    def _idle(self, port: int, names: tuple[str, str, str], what: str) -> dict[str, float]:
        target = self.args.conns
        # one directory per exit: idle (ep2) and idle-direct (ep3) each start a holder
        holder = Child(self.ws, f"holder-{names[-1]}", ["--role", "hold", "--port", str(port), "--batch", "50"])
        echo_pid = self.echo.proc.pid
        self.progress(f"holder nofile {holder.hello['nofile']}; opening {target} idle connections")
        time.sleep(1.0)
        base = self.rss()
        echo0 = rss_kib(echo_pid)
        fds0 = {n: open_fds(p) for n, p in self.pids.items()}

        def row(label: str, seconds: str, count: int) -> tuple[list[object], dict[str, float]]:
            now = self.rss()
            fds = {n: open_fds(p) - fds0[n] for n, p in self.pids.items()}
            per = {n: (now[n] - base[n]) * 1024 / count for n in names} if count else {}
            cells: list[object] = [label, seconds, "/".join(str(fds[n]) for n in names)]
            cells += [f"{now[n] / 1024:.1f}" for n in names]
            cells += [f"{per[n] / 1000:.1f}" if count else "-" for n in names]
            return cells, per

        rows = [row("0 (before)", "-", 0)[0]]
        levels = sorted({max(1, target // 4), max(1, target // 2), target})
        reached = 0
        answer: dict[str, Any] = {}
        result: dict[str, float] = {}
        notes = []
        for rnd in (1, 2):
            start = time.perf_counter()
            for level in levels if rnd == 1 else [target]:
                answer = holder.ask(900.0, cmd="open", n=level)
                reached = int(answer["open"])
                time.sleep(2.0)  # let the loops settle
                cells, per = row(f"{reached}" + (" (round 2)" if rnd == 2 else ""), f"{answer['seconds']:.1f}", reached)
                rows.append(cells)
                if rnd == 1:
                    result = {**per, "reached": reached}
                self.progress(f"round {rnd}: {reached} idle connections open ({answer['failed']} failed)")
                if reached < level:
                    break
            notes.append(
                f"round {rnd}: reached {reached} of {target} in {time.perf_counter() - start:.1f}s; "
                f"failures: {answer.get('errors') or 'none'}"
            )
            if rnd == 1:
                echo_rss = rss_kib(echo_pid)
                check = holder.ask(300.0, cmd="check")
                notes.append(f"still answering an echo after the measurements: {check['alive']} of {check['of']}")
                notes.append(
                    f"echo server (uvloop) RSS {echo0 / 1024:.1f} -> {echo_rss / 1024:.1f} MiB "
                    f"({(echo_rss - echo0) * 1024 / max(1, reached) / 1000:.1f} KB/conn, for comparison)"
                )
            t_close = time.perf_counter()
            holder.ask(120.0, cmd="close")

            def released() -> bool:
                return all(open_fds(p) <= fds0[n] for n, p in self.pids.items())

            wait_until(released, 120, "ep1 and ep2 to close their sockets", interval=0.05)
            gone = time.perf_counter() - t_close
            time.sleep(2.0)
            rows.append(row(f"all closed (round {rnd}), +2 s", f"{gone:.1f}", 0)[0])
        holder.proc.stop()
        self.ws.procs.remove(holder.proc)
        self.say(
            f"\n### {target} idle {what} (batches of 50, each checked with a 1-byte echo)\n\n"
            "KB = 1000 bytes; per connection = (RSS now - RSS before) / connections open; fresh processes.\n\n"
            + table(
                [
                    "connections",
                    "open s / all fds closed s",
                    f"extra fds {'/'.join(names)}",
                    *(f"{n} RSS MiB" for n in names),
                    *(f"{n} KB/conn" for n in names),
                ],
                rows,
            )
            + "\n\n"
            + "\n".join(f"* {n}" for n in notes)
        )
        return result

    def restart_all(self) -> None:
        """Stop ep1, ep2 and the hub (SIGTERM) and start them again on the same data and ports: fresh processes."""
        for old in (self.ep1.proc, self.ep2.proc, self.hub.proc):
            old.stop()
            self.ws.procs.remove(old)

        def again(old: Proc) -> Proc:
            cwd = old.log_path.parent
            new = Proc(old.argv, log_path=cwd / f"{old.log_path.stem}.fresh.out", env=bench_env(cwd / "home"), cwd=cwd)
            self.ws.procs.append(new)
            return new

        self.hub.proc = again(self.hub.proc)
        wait_until(lambda: tcp_accepts(self.hub.port), 30, "the hub to listen again")
        self.ep1.proc, self.ep2.proc = again(self.ep1.proc), again(self.ep2.proc)
        self._wait_tunnel(time.perf_counter())
        self.pids = {
            "ep1": self.ep1.proc.pid,
            "hub": self.hub.proc.pid,
            "ep2": self.ep2.proc.pid,
            "ep3": self.ep3.proc.pid,
        }
        time.sleep(1.0)

    # 6: recovery ------------------------------------------------------------------------------------------

    def _respawn(self, old: Proc, tag: str) -> Proc:
        """SIGKILL `old` (its whole group), reap it, and start the same command again in the same place."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(old.pid, signal.SIGKILL)
        old.popen.wait(10)
        self.ws.procs.remove(old)  # reaped: never signal its (reusable) pid again
        cwd = old.log_path.parent
        env = dict(bench_env(cwd / "home"))
        new = Proc(old.argv, log_path=cwd / f"{old.log_path.stem}.{tag}.out", env=env, cwd=cwd)
        self.ws.procs.append(new)
        return new

    def _wait_tunnel(self, since: float, deadline_s: float = 60.0) -> tuple[float, int]:
        """Probe until a tunnelled round trip succeeds; notes failed probes that took long (> 50 ms)."""
        attempts = 0
        deadline = time.perf_counter() + deadline_s
        slow: Counter[str] = Counter()
        while True:
            attempts += 1
            start = time.perf_counter()
            try:
                connect_cycle(self.echo_in_port, timeout=2.0)
            except OSError as exc:
                took = time.perf_counter() - start
                if took > 0.05:
                    slow[f"{type(exc).__name__} after {took * 1e3:.0f} ms (at +{(start - since) * 1e3:.0f} ms)"] += 1
            else:
                if slow:
                    self.progress(f"slow failed probes: {dict(slow)}")
                return time.perf_counter(), attempts
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no tunnelled round trip within {deadline_s:g}s")
            time.sleep(0.005)

    def online_at_hub(self, since_wall: float) -> dict[str, float]:
        """Wall-clock times (from the hub's log) at which ep1 / ep2 came online at or after `since_wall`."""
        out: dict[str, float] = {}
        log = self.hub.data / "hub.log"
        if not log.exists():
            return out
        for line in log.read_text(errors="replace").splitlines():
            m = _ONLINE.match(line)
            if m is None:
                continue
            when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if when >= since_wall - 0.002 and m.group(2) not in out:
                out[m.group(2)] = when
        return out

    def recovery(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"exit": [], "hub": []}
        rows = []
        for which in ("exit", "hub"):
            for i in range(self.args.restarts):
                t_kill = time.perf_counter()
                if which == "exit":
                    self.ep2.proc = self._respawn(self.ep2.proc, f"restart{i + 1}")
                    port = self.ep2.port
                else:
                    self.hub.proc = self._respawn(self.hub.proc, f"restart{i + 1}")
                    port = self.hub.port
                t_spawn, wall_spawn = time.perf_counter(), time.time()
                wait_until(lambda: tcp_accepts(port), 30, f"{which} to listen", interval=0.002)  # noqa: B023
                t_up = time.perf_counter()
                t_ok, attempts = self._wait_tunnel(t_spawn)
                self.pids["ep2" if which == "exit" else "hub"] = (self.ep2 if which == "exit" else self.hub).proc.pid
                online = self.online_at_hub(wall_spawn)
                headline = t_ok - (t_spawn if which == "exit" else t_up)
                out[which].append(headline)

                rows.append(
                    [
                        "exit agent (ep2)" if which == "exit" else "hub",
                        i + 1,
                        f"{(t_spawn - t_kill) * 1e3:.0f}",
                        f"{(t_up - t_spawn) * 1e3:.0f}",
                        _since(online, "ep1", wall_spawn) if which == "hub" else "(stayed)",
                        _since(online, "ep2", wall_spawn),
                        f"{(t_ok - t_spawn) * 1e3:.0f}",
                        f"**{headline * 1e3:.0f}**",
                        attempts,
                    ]
                )
                self.progress(f"{which} restart {i + 1}: {rows[-1]}")
                time.sleep(1.5)
        self.say(
            "\n### Recovery after SIGKILL + restart on the same data directory and port (ms from the new process's "
            "start)\n\n"
            + table(
                [
                    "restarted",
                    "#",
                    "kill -> new process",
                    "agent API / hub listening",
                    "ep1 online at hub",
                    "ep2 online at hub",
                    "tunnel OK",
                    "headline",
                    "probes",
                ],
                rows,
            )
            + "\n\nheadline: exit restart = new process start -> first tunnelled round trip; hub restart = hub"
            " listening -> first tunnelled round trip. A probe is connect + 1-byte echo through the tunnel (2 s"
            " timeout), repeated every 5 ms; the 'online at hub' times come from the hub's log (ms resolution)."
        )
        return out

    # profiling --------------------------------------------------------------------------------------------

    def profile(self) -> None:
        for label, action in (
            ("1 GiB single stream", lambda: iperf(self.bench_port, GiB)),
            ("ping-pong 5000", lambda: pingpong(self.echo_in_port, 5000, 200)),
            ("connect cycles 1000", lambda: [connect_cycle(self.echo_in_port) for _ in range(1000)]),
        ):
            spies = {n: Spy(p, self.ws.dir / f"spy-{n}-{label.split()[0]}.txt") for n, p in self.pids.items()}
            time.sleep(0.5)
            action()
            for spy in spies.values():
                spy.stop()
            for name, spy in spies.items():
                self.say(f"\n#### py-spy, {name}, during {label}\n\n" + spy.summary(top=18))


def _since(online: dict[str, float], ep: str, start: float) -> str:
    return f"{(online[ep] - start) * 1e3:.0f}" if ep in online else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a fast smoke run with everything scaled down")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    parser.add_argument("--py-spy", action="store_true", help="profile ep1, hub and ep2 before the recovery part")
    parser.add_argument("--reps", type=int, help="iperf3 runs per path and stream count (default 5; quick 1)")
    parser.add_argument("--conns", type=int, help="idle connections (default 10000; quick 1000)")
    parser.add_argument("--rtts", type=int, help="ping-pong round trips per path (default 5000; quick 1000)")
    parser.add_argument("--cycles", type=int, help="connect cycles per path (default 300; quick 100)")
    parser.add_argument("--rounds", type=int, help="interleaved ping-pong rounds (default 5)")
    parser.add_argument("--restarts", type=int, help="restarts of the exit and of the hub (default 3; quick 1)")
    parser.add_argument(
        "--skip", default="", help="comma list of parts to skip: idle,idle-direct,bulk,sink,latency,connect,recovery"
    )
    parser.add_argument(
        "--policy-rules",
        type=int,
        default=0,
        metavar="N",
        help="set a mesh policy of N rules on the current hub (with --baseline-rev REV from before the policy: the "
        "cost of a decision on the hot path)",
    )
    parser.add_argument(
        "--baseline-rev",
        metavar="REV",
        help="also run REV's hub and agents (git archive of its src/, same venv) beside the current ones, interleaved,"
        " and print current/baseline ratios (median of the rounds' ratios and their spread)",
    )
    parser.add_argument("--role", choices=["echo", "hold", "sink"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=50, help=argparse.SUPPRESS)
    parser.add_argument("--bind", default=HOST, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "echo":
        return role_echo(args.port, args.bind)
    if args.role == "hold":
        return role_hold(args.port, args.batch)
    if args.role == "sink":
        return role_sink(args.port, args.bind)

    q = args.quick
    args.reps = args.reps or (1 if q else 5)
    args.conns = args.conns or (1000 if q else 10000)
    args.rtts = args.rtts or (1000 if q else 5000)
    args.cycles = args.cycles or (100 if q else 300)
    args.rounds = max(1, args.rounds or 5)
    args.restarts = args.restarts or (1 if q else 3)
    bulk = 256 * MiB if q else GiB
    rss_after = GiB if q else 4 * GiB
    skip = set(filter(None, args.skip.split(",")))
    if args.py_spy and py_spy() is None:
        parser.error("--py-spy needs py-spy (pip install py-spy into the venv)")
    for tool in ("iperf3", "stunnel4", "openssl"):
        if subprocess.run(["which", tool], capture_output=True, check=False).returncode != 0:
            parser.error(f"{tool} is not installed")
    base_commit = baseline_commit(parser, REPO, args.baseline_rev)
    raise_nofile(65536)

    print(machine_facts())
    print(tree_facts())
    load_start = Path("/proc/loadavg").read_text().split()[:3]
    started = time.perf_counter()
    with Workspace("tunnel", keep=args.keep) as ws:
        run = Run(args, ws)
        if base_commit:
            try:
                run.base_src = export_revision(REPO, base_commit, ws.dir / "baseline")
                check_imports_from(PYTHON, run.base_src, bench_env(ws.dir, src=run.base_src))
            except BaselineError as exc:
                parser.error(str(exc))
            print(
                f"baseline: --baseline-rev {args.baseline_rev} = {base_commit[:12]}, src/ztm sha256: "
                f"{src_digest(run.base_src)} (exported to {run.base_src}); paths `@base` run it"
            )
        run.setup()
        base_rss = run.rss()
        run.say(
            "\nidle RSS before any traffic: "
            + ", ".join(f"{n} {v / 1024:.1f} MiB" for n, v in base_rss.items())
            + f"; open-files limits: ep1 {fd_limit(run.pids['ep1'])}, hub {fd_limit(run.pids['hub'])}, "
            f"ep2 {fd_limit(run.pids['ep2'])}"
        )
        if "latency" not in skip:
            lat, ratios = run.latency()
            z, s = lat["ztm"], lat["stunnel4"]
            run.add_target(
                "3a",
                "1-byte RTT p50 (µs)",
                f"{z['p50'] * 1e6:.0f}",
                f"{s['p50'] * 1e6:.0f}",
                f"{z['p50'] / s['p50']:.2f}",
                "<= 1.5",
                z["p50"] <= 1.5 * s["p50"],
            )
            run.add_target(
                "3b",
                "1-byte RTT p99 (µs)",
                f"{z['p99'] * 1e6:.0f}",
                f"{s['p99'] * 1e6:.0f}",
                f"{z['p99'] / s['p99']:.2f}",
                "<= 3",
                z["p99"] <= 3 * s["p99"],
            )
            d = lat["ztm-direct"]
            for key, what, limit in (("p50", "3a-direct", 1.5), ("p99", "3b-direct", 3.0)):
                run.add_target(
                    what,
                    f"1-byte RTT {key}, direct (µs)",
                    f"{d[key] * 1e6:.0f}",
                    f"{s[key] * 1e6:.0f}",
                    f"{d[key] / s[key]:.2f}",
                    f"<= {limit:g}",
                    d[key] <= limit * s[key],
                )
            for path, key, what, limit in (
                ("ztm", "p50", "1-byte RTT p50", 1.7),
                ("ztm", "p99", "1-byte RTT p99", 2.0),
                ("ztm-direct", "p50", "1-byte RTT p50, direct", 1.05),
                ("ztm", "cpu", "CPU per round trip", 1.8),
                ("ztm-direct", "cpu", "CPU per round trip, direct", 1.05),
            ):
                value = ratios[path][key]
                run.add_target(
                    f"18-{key}" + ("-direct" if path == "ztm-direct" else ""),
                    f"{what} x stunnel4 (median of {args.rounds} rounds' ratios)",
                    f"{value:.2f}",
                    "1",
                    f"{value:.2f}",
                    f"<= {limit:g}",
                    value <= limit,
                )
            if "ztm" in run.rtt_vs_base:
                rr = run.rtt_vs_base["ztm"]["p50"]
                run.add_target(
                    "13-rtt",
                    f"1-byte RTT p50 x baseline {base_commit[:7]} (µs; median of {args.rounds} rounds' ratios)",
                    f"{z['p50'] * 1e6:.0f}",
                    f"@base {lat[base_of('ztm')]['p50'] * 1e6:.0f}",
                    rr.text(),
                    "<= 1.15",
                    rr.median <= 1.15,
                )
        if "connect" not in skip:
            con = run.connects()
            z, s = con["ztm"], con["stunnel4"]
            run.add_target(
                "4",
                "new connection + first RTT p50 (ms)",
                f"{z['p50'] * 1e3:.2f}",
                f"{s['p50'] * 1e3:.2f}",
                f"{z['p50'] / s['p50']:.2f}",
                "<= 2 ms",
                z["p50"] <= 0.002,
            )
            d = con["ztm-direct"]
            run.add_target(
                "4-direct",
                "new connection + first RTT p50, direct (ms)",
                f"{d['p50'] * 1e3:.2f}",
                f"{s['p50'] * 1e3:.2f}",
                f"{d['p50'] / s['p50']:.2f}",
                "<= 2 ms",
                d["p50"] <= 0.002,
            )
        if "bulk" not in skip:
            one = run.throughput(1, bulk)
            run.add_target(
                "1",
                f"1 stream, {bulk / MiB:.0f} MiB (MB/s)",
                f"{one['ztm']:.0f}",
                f"{one['stunnel4']:.0f}",
                f"{one['ztm'] / one['stunnel4']:.2f}",
                ">= 0.6",
                one["ztm"] >= 0.6 * one["stunnel4"],
            )
            run.add_target(
                "1-direct",
                f"1 stream, {bulk / MiB:.0f} MiB, direct (MB/s)",
                f"{one['ztm-direct']:.0f}",
                f"{one['stunnel4']:.0f}",
                f"{one['ztm-direct'] / one['stunnel4']:.2f}",
                ">= 0.6",
                one["ztm-direct"] >= 0.6 * one["stunnel4"],
            )
            many = run.throughput(16, bulk)
            run.add_target(
                "2",
                "16 streams aggregate (MB/s)",
                f"{many['ztm']:.0f}",
                f"{many['stunnel4']:.0f}",
                f"{many['ztm'] / many['stunnel4']:.2f}",
                ">= 0.6",
                many["ztm"] >= 0.6 * many["stunnel4"],
            )
            run.add_target(
                "2-direct",
                "16 streams aggregate, direct (MB/s)",
                f"{many['ztm-direct']:.0f}",
                f"{many['stunnel4']:.0f}",
                f"{many['ztm-direct'] / many['stunnel4']:.2f}",
                ">= 0.6",
                many["ztm-direct"] >= 0.6 * many["stunnel4"],
            )
            for title, (cur, base, rr) in run.hub_vs_base.items():
                run.add_target(
                    "13-hub-cpu" + ("-16" if "16" in title else ""),
                    f"hub CPU-s per relayed GiB x baseline {base_commit[:7]}, {title} (median of {args.reps} runs)",
                    f"{cur:.2f}",
                    f"@base {base:.2f}",
                    rr.text(),
                    "<= 1.05 (must not rise)",
                    not rr.rose(),
                )
        if "sink" not in skip:
            got, problems = run.delivered(bulk)
            run.add_target(
                "18-stall",
                f"counting sink, {bulk / MiB:.0f} MiB x {args.reps} per path: transfers not delivered in full",
                str(len(problems)),
                "-",
                "-",
                "0",
                not problems,
            )
            run.add_target(
                "18-sink",
                f"delivered to the counting sink, 1 conn, {bulk / MiB:.0f} MiB (MB/s)",
                f"{got['ztm']:.0f}",
                f"{got['stunnel4']:.0f}",
                f"{got['ztm'] / (got['stunnel4'] or 1):.2f}",
                "(no target)",
                None,
            )
            while run.ztm_bytes < rss_after:
                chunk = max(64 * MiB, min(GiB, rss_after - run.ztm_bytes))
                run.ztm_bytes += iperf(run.bench_port, int(chunk), 4)["bytes"]
                run.progress(f"topping up: {run.ztm_bytes / GiB:.2f} GiB through the tunnel")
            time.sleep(1.0)
            rss, hwm = run.rss(), run.hwm()
            run.say(
                f"\n### Memory after {run.ztm_bytes / GiB:.2f} GiB through the tunnel\n\n"
                + table(
                    ["process", "RSS before traffic MiB", "VmRSS MiB", "VmHWM (peak) MiB"],
                    [[n, f"{base_rss[n] / 1024:.1f}", f"{rss[n] / 1024:.1f}", f"{hwm[n] / 1024:.1f}"] for n in rss],
                )
            )
            for n in ("ep1", "hub", "ep2", "ep3"):
                mb = rss[n] * 1024 / 1e6
                run.add_target(
                    f"5a-{n}",
                    f"RSS after {run.ztm_bytes / GiB:.1f} GiB, {n} (MB)",
                    f"{mb:.1f}",
                    "-",
                    "-",
                    "<= 150 MB",
                    mb <= 150,
                )
        if "idle" not in skip:
            run.progress("restarting hub, ep1 and ep2 (SIGTERM, same data): fresh processes for the idle test")
            run.restart_all()
            per = run.idle()
            for n in ("ep1", "hub", "ep2"):
                run.add_target(
                    f"5b-{n}",
                    f"RSS per idle connection, {n} (KB, {per['reached']:.0f} conns)",
                    f"{per[n] / 1000:.1f}",
                    "-",
                    "-",
                    "<= 30 KB",
                    per[n] <= 30000,
                )
        if "idle-direct" not in skip:
            per = run.idle_direct()
            for n in ("ep1", "ep3"):
                run.add_target(
                    f"5b-direct-{n}",
                    f"RSS per idle direct connection, {n} (KB, {per['reached']:.0f} conns)",
                    f"{per[n] / 1000:.1f}",
                    "-",
                    "-",
                    "<= 30 KB",
                    per[n] <= 30000,
                )
        if args.py_spy:
            run.profile()
        if "recovery" not in skip:
            rec = run.recovery()
            e, h = statistics.median(rec["exit"]), statistics.median(rec["hub"])
            run.add_target(
                "6a",
                "exit restart: start -> tunnel OK (ms, median)",
                f"{e * 1e3:.0f}",
                "-",
                "-",
                "(no target; ZTM: bench/RESULTS.md)",
                None,
            )
            run.add_target(
                "6b",
                "hub restart: listening -> tunnel OK (ms, median)",
                f"{h * 1e3:.0f}",
                "-",
                "-",
                "(no target; ZTM: bench/RESULTS.md)",
                None,
            )
    elapsed = time.perf_counter() - started
    load_end = Path("/proc/loadavg").read_text().split()[:3]

    print("\n## Targets\n")
    print(
        table(
            [
                "#",
                "measure",
                "ztm",
                "stunnel4 1 hop" + (" / @base" if base_commit else ""),
                "ratio",
                "target",
                "result",
            ],
            [
                [
                    t.number,
                    t.what,
                    t.value,
                    t.baseline,
                    t.ratio,
                    t.limit,
                    "-" if t.ok is None else ("PASS" if t.ok else "**FAIL**"),
                ]
                for t in run.targets
            ],
        )
    )
    if run.versus:
        print(
            f"\n## Current / baseline {base_commit[:12]} (same run, interleaved A, B then B, A)\n\n"
            "ratio: the median over the rounds (runs) of each round's current/baseline ratio, then min-max of those"
            " ratios and their count\n"
        )
        print(table(["measure", "path", "current", f"@base {base_commit[:7]}", "x baseline"], run.versus))
    print(f"\nrun took {elapsed:.0f}s; load average at start {' '.join(load_start)}, at end {' '.join(load_end)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
