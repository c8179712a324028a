"""The punched path's transport (issue 15, item 2): TLS 1.3 over TCP (what TCP simultaneous open carries) against QUIC
(aioquic) on UDP, each against stunnel4's single hop and raw TCP, in one run with interleaved rounds.

Every path has the shape of a direct channel: an app connects over plain TCP to an entrance process, which carries
the connection to an exit process, which connects over plain TCP to the server. The orchestrator (this process) is
the app; the servers are `bench.tunnel`'s echo server and counting sink (uvloop, separate processes).

* raw: the app talks to the server directly (no entrance, no exit);
* stunnel4: `bench.tunnel.start_stunnel`, a stunnel client and server (TLS 1.3, ECDSA P-256, TCP_NODELAY);
* tls: `--role tls-entrance` and `--role tls-exit` of this script (uvloop): one TLS 1.3 connection per app connection
  with the settings of `ztm.agent.direct` (TLS 1.3 minimum, both sides present certificates of one CA and verify the
  other's, CERT_REQUIRED), TCP_NODELAY, asyncio flow control between the legs;
* quic: `--role quic-entrance` and `--role quic-exit` (aioquic, uvloop): one QUIC connection, made when the entrance
  starts (as a direct channel pool has its channel ready), one bidirectional stream per app connection; the same
  certificates, both verified (see "mutual TLS in aioquic" below); aioquic's defaults otherwise (congestion
  control, 1200-byte datagrams, 1 MiB flow-control windows). The entrance stops reading the app while more than
  `QUIC_HIGH` bytes of its stream are not yet acknowledged (aioquic buffers without limit otherwise).

Measured per round, for each path in an order that rotates every round: one connection to the counting sink carrying
`--size-mib` MiB (clock from connect to the sink's 1-byte answer; rate = bytes the sink counted / time; every
transfer must deliver all its bytes), then `--rtts` 1-byte ping-pongs on one connection to the echo server (after 500
warm-up). CPU: utime+stime from /proc of each process of the path before and after each transfer (CPU seconds per
GiB) and each ping-pong (µs per round trip). The tables give per path the median over the rounds, the spread, and the
median over the rounds of each round's ratio to stunnel4 in that round (`bench.baseline.RoundRatios`).

Mutual TLS in aioquic 1.7.2: a server asks for a client certificate only through the private, test-only flag
`tls.Context._request_client_certificate`, and never verifies the client's chain (only its CertificateVerify
signature). The exit sets the flag when aioquic creates the TLS context and checks the chain itself at
HandshakeCompleted (issuer, signature, validity against the bench CA); a stream of an unverified connection is never
served. qh3 2.1.0 has no client certificates on the server side at all, so it cannot carry a mutual-TLS channel and
is not measured.

`BENCH_UDP_BUFFER=BYTES` (environment) sets SO_RCVBUF/SO_SNDBUF of the QUIC sockets, a diagnostic: the kernel's
default (208 KiB) drops a few datagrams per 10,000 under load; 4 MiB removed the drops but not the slowness.

Run:  .venv/bin/pip install -e '.[bench]' && .venv/bin/python -m bench.p2p_transport [--rounds 5] [--keep]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib.util
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.baseline import RoundRatios
from bench.common import (
    HOST,
    Workspace,
    cpu_seconds,
    free_port,
    machine_facts,
    table,
    tree_facts,
    wait_until,
)
from bench.h2_transport import client_context, make_pki, server_context
from bench.tunnel import Child, _use_uvloop, pingpong, probe, sink_transfer, start_stunnel
from bench.tunnel import summary as timing_summary

if TYPE_CHECKING:
    from aioquic.asyncio.protocol import QuicConnectionProtocol
    from aioquic.quic import events
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

MiB = 1 << 20
GiB = 1 << 30
QUIC_HIGH = 4 * MiB
"""The QUIC entrance pauses reading its TCP leg while a stream has this many bytes not yet acknowledged..."""
QUIC_LOW = 1 * MiB
"""...and resumes below this."""
KINDS = ("tls", "quic", "qh3")
"""The entrance/exit pairs this script runs: TLS over TCP, aioquic, qh3 (server-authenticated only)."""
KEEPALIVE = 5.0
"""Seconds between the QUIC entrance's PINGs."""
INSTALL_HINT = "aioquic is not installed: run `.venv/bin/pip install -e '.[bench]'` (the bench extra pins it)"


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _serve_until_stopped(ready: dict[str, Any]) -> None:
    """Announce `ready` (a JSON line on stdout: `bench.tunnel.Child` waits for it), then serve until SIGTERM/SIGINT."""
    print(json.dumps(ready), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


# ----------------------------------------------------------------------------------------- TLS over TCP forwarder


class Pipe(asyncio.Protocol):
    """One leg of a forwarded connection; `peer` is the other leg (made by the accepting leg, which `dial`s it and
    holds what it reads until it is connected). Flow control: while this leg's transport cannot take more, the peer
    stops reading. EOF or loss on one leg closes the other once its buffer is written (TLS
    transports cannot half-close)."""

    def __init__(self, dial: Callable[[Pipe], Awaitable[None]] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: Pipe | None = None
        self.pending: list[bytes] = []
        self.dial = dial
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        _nodelay(transport)
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()
        if self.dial is not None:  # the accepting leg: dial the other one, hold the app until it is up
            self.peer = Pipe()
            self.peer.peer = self
            self.transport.pause_reading()  # uvloop starts reading after connection_made all the same
            self.task = asyncio.get_running_loop().create_task(self._dial(self.dial, self.peer))

    async def _dial(self, dial: Callable[[Pipe], Awaitable[None]], peer: Pipe) -> None:
        try:
            await dial(peer)
        except OSError as exc:
            print(f"dial failed: {exc}", file=sys.stderr, flush=True)
            if self.transport is not None:
                self.transport.close()
            return
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def send(self, data: bytes) -> None:
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        if self.peer is not None:
            self.peer.send(data)
            if self.peer.transport is None and self.transport is not None:
                self.transport.pause_reading()  # until the peer is connected (`_dial`)

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


def role_tls(side: str, port: int, pki: Path, target: int) -> int:
    """`entrance`: plain TCP on `port`, TLS to the exit at `target`. `exit`: TLS on `port`, plain TCP to `target`."""
    loop_name = _use_uvloop()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if side == "entrance":
            ctx = client_context(pki)

            async def dial(peer: Pipe) -> None:
                await loop.create_connection(lambda: peer, HOST, target, ssl=ctx, server_hostname=HOST)

            server = await loop.create_server(lambda: Pipe(dial), HOST, port)
        else:

            async def dial(peer: Pipe) -> None:
                await loop.create_connection(lambda: peer, HOST, target)

            server = await loop.create_server(lambda: Pipe(dial), HOST, port, ssl=server_context(pki))
        await _serve_until_stopped({"ready": True, "loop": loop_name})
        server.close()

    asyncio.run(main())
    return 0


# ------------------------------------------------------------------------------------------------ QUIC forwarder


@dataclass
class QuicLib:
    """The parts of aioquic (or of qh3, which keeps aioquic's API) the QUIC forwarder uses, typed as aioquic's."""

    name: str
    configuration: type[QuicConfiguration]
    connect: Callable[..., AbstractAsyncContextManager[QuicConnectionProtocol]]
    serve: Callable[..., Awaitable[Any]]
    handshake_completed: type[events.HandshakeCompleted]
    stream_data_received: type[events.StreamDataReceived]
    stream_reset: type[events.StreamReset]
    connection_terminated: type[events.ConnectionTerminated]


def quic_lib(name: str) -> QuicLib:
    """`aioquic` or `qh3`; SystemExit with the install hint if it is missing."""
    if importlib.util.find_spec(name) is None:
        raise SystemExit(INSTALL_HINT.replace("aioquic", name, 1))

    def sub(module: str) -> Any:
        return importlib.import_module(f"{name}.{module}")

    ev = sub("quic.events")
    return QuicLib(
        name,
        sub("quic.configuration").QuicConfiguration,
        sub("asyncio.client").connect,
        sub("asyncio.server").serve,
        ev.HandshakeCompleted,
        ev.StreamDataReceived,
        ev.StreamReset,
        ev.ConnectionTerminated,
    )


class StreamLeg(asyncio.Protocol):
    """The TCP leg of one QUIC stream: TCP data goes out on the stream, stream data is written to TCP. Reading stops
    while the stream holds `QUIC_HIGH` unacknowledged bytes (`QuicLink.resume_legs` resumes it)."""

    def __init__(self, link: QuicLink, stream_id: int) -> None:
        self.link = link
        self.stream_id = stream_id
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.pending_eof = False
        self.stream_ended = False  # the peer finished the stream (the TCP side is half-closed)
        self.paused = False
        self.ended = False  # the app's side ended (EOF or loss) and the stream was finished or reset
        self.dialing: asyncio.Task[None] | None = None  # the exit's TCP connect to the server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        _nodelay(transport)
        for data in self.pending:
            self.transport.write(data)
        self.pending.clear()
        if self.pending_eof:
            self.stream_ended = True
            self.transport.write_eof()

    def from_stream(self, data: bytes, end: bool) -> None:
        if self.transport is None:
            self.pending.append(data)
            self.pending_eof = self.pending_eof or end
            return
        if data:
            self.transport.write(data)
        if end:
            self.stream_ended = True
            self.transport.write_eof()  # half-close: the other way may still carry data
            if self.ended:
                self.transport.close()

    def data_received(self, data: bytes) -> None:
        quic = self.link.quic
        quic.send_stream_data(self.stream_id, data)
        self.link.transmit()
        if not self.paused and self.link.unacked(self.stream_id) > QUIC_HIGH and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._end(reset=False)
        return not self.stream_ended  # keep the TCP side open for the stream's data until the stream ends too

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(reset=exc is not None)
        self.link.legs.pop(self.stream_id, None)

    def _end(self, reset: bool) -> None:
        if self.ended:
            return
        self.ended = True
        with contextlib.suppress(Exception):  # the stream may be finished by the peer already
            if reset:
                self.link.quic.reset_stream(self.stream_id, 0)
            else:
                self.link.quic.send_stream_data(self.stream_id, b"", end_stream=True)
        self.link.transmit()


class QuicLink:
    """What both QUIC ends share: the connection, its TCP legs by stream id, flow control towards TCP."""

    def __init__(self, protocol: QuicConnectionProtocol) -> None:
        self.protocol = protocol
        self.quic: QuicConnection = protocol._quic
        self.legs: dict[int, StreamLeg] = {}

    def transmit(self) -> None:
        self.protocol.transmit()

    def unacked(self, stream_id: int) -> int:
        """Bytes of the stream's send buffer not yet acknowledged (aioquic keeps them in `sender._buffer`; qh3 has
        `get_send_buffer_size`, the bytes not yet sent)."""
        backlog = getattr(self.quic, "get_send_buffer_size", None)
        if backlog is not None:
            return int(backlog(stream_id))
        stream = self.quic._streams.get(stream_id)
        if stream is None:
            return 0
        return int(stream.sender._buffer_stop - stream.sender._buffer_start)

    def resume_legs(self) -> None:
        for leg in self.legs.values():
            if leg.paused and leg.transport is not None and self.unacked(leg.stream_id) < QUIC_LOW:
                leg.paused = False
                leg.transport.resume_reading()


def verify_client(pki: Path, quic: QuicConnection) -> str:
    """ "" if the client's certificate was issued by the bench CA and is valid now, else why not."""
    from cryptography import x509

    leaf = quic.tls._peer_certificate
    if leaf is None:
        return "the client presented no certificate"
    ca = x509.load_pem_x509_certificate((pki / "ca.pem").read_bytes())
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError) as exc:
        return f"not issued by the CA: {exc}"
    except Exception as exc:  # cryptography's InvalidSignature
        return f"bad signature: {type(exc).__name__}"
    now = datetime.datetime.now(datetime.UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        return "expired or not yet valid"
    return ""


def role_quic(side: str, port: int, pki: Path, target: int, lib_name: str = "aioquic") -> int:
    """`entrance`: plain TCP on `port`, one QUIC connection to the exit on UDP `target`, a stream per TCP connection.
    `exit`: QUIC on UDP `port` (client certificate required and verified), a TCP connection to `target` per stream.
    With qh3 the exit cannot ask for a client certificate: the client is not authenticated."""
    loop_name = _use_uvloop()
    udp_buffer = int(os.environ.get("BENCH_UDP_BUFFER", "0"))
    lib = quic_lib(lib_name)
    mutual = lib.name == "aioquic"

    if TYPE_CHECKING or mutual:  # mypy checks against aioquic; qh3 keeps its API
        from aioquic.asyncio.protocol import QuicConnectionProtocol as Base
    else:
        from qh3.asyncio.protocol import QuicConnectionProtocol as Base

    class Endpoint(Base):
        def __init__(self, quic: QuicConnection, stream_handler: Any = None) -> None:
            super().__init__(quic, stream_handler=stream_handler)
            self.link = QuicLink(self)
            # the library verified the server (CA, 127.0.0.1 SAN) for the client; qh3 cannot verify clients
            self.verified = side == "entrance" or not mutual
            if side == "exit" and mutual:
                initialize = quic._initialize

                def ask_for_certificate(peer_cid: bytes) -> None:
                    initialize(peer_cid)
                    quic.tls._request_client_certificate = True  # private: aioquic has no API for it

                vars(quic)["_initialize"] = ask_for_certificate

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            if udp_buffer and sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, udp_buffer)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, udp_buffer)

        def transmit(self) -> None:  # after every batch of datagrams received, timer and write
            super().transmit()
            self.link.resume_legs()

        def quic_event_received(self, event: events.QuicEvent) -> None:
            if isinstance(event, lib.connection_terminated):
                print(f"QUIC connection ended: {event.reason_phrase or event.error_code}", file=sys.stderr, flush=True)
                for gone in list(self.link.legs.values()):
                    if gone.transport is not None:
                        gone.ended = True
                        gone.transport.abort()
            elif isinstance(event, lib.handshake_completed) and side == "exit" and mutual:
                problem = verify_client(pki, self.link.quic)
                if problem:
                    print(f"refused a client: {problem}", file=sys.stderr, flush=True)
                    self.close(error_code=0x100, reason_phrase=problem)
                    return
                self.verified = True
            elif isinstance(event, lib.stream_data_received):
                leg = self.link.legs.get(event.stream_id)
                if leg is None and side == "exit" and self.verified:
                    leg = self.link.legs[event.stream_id] = StreamLeg(self.link, event.stream_id)
                    leg.dialing = asyncio.get_running_loop().create_task(self._dial(leg))
                if leg is not None:
                    leg.from_stream(event.data, event.end_stream)
            elif isinstance(event, lib.stream_reset):
                reset = self.link.legs.get(event.stream_id)
                if reset is not None and reset.transport is not None:
                    reset.ended = True
                    reset.transport.abort()

        async def _dial(self, leg: StreamLeg) -> None:
            try:
                await asyncio.get_running_loop().create_connection(lambda: leg, HOST, target)
            except OSError:
                leg.ended = True
                self.link.legs.pop(leg.stream_id, None)
                self.link.quic.reset_stream(leg.stream_id, 0)
                self.transmit()

    def configuration(is_client: bool) -> QuicConfiguration:
        config = lib.configuration(is_client=is_client, alpn_protocols=["ztm-bench"])
        role = "client" if is_client else "server"
        config.load_cert_chain(str(pki / f"{role}.pem"), str(pki / f"{role}.key"))
        config.load_verify_locations(str(pki / "ca.pem"))
        if is_client:
            config.server_name = HOST
        return config

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if side == "exit":
            server = await lib.serve(HOST, port, configuration=configuration(False), create_protocol=Endpoint)
            await _serve_until_stopped({"ready": True, "loop": loop_name})
            server.close()
            return
        async with lib.connect(HOST, target, configuration=configuration(True), create_protocol=Endpoint) as client:
            endpoint = cast(Endpoint, client)

            def accept() -> StreamLeg:
                stream_id = endpoint.link.quic.get_next_available_stream_id()
                leg = endpoint.link.legs[stream_id] = StreamLeg(endpoint.link, stream_id)
                return leg

            async def keepalive() -> None:  # aioquic closes a connection idle for 60 s; a NAT mapping needs it too
                while True:
                    await asyncio.sleep(KEEPALIVE)
                    await asyncio.wait_for(endpoint.ping(), KEEPALIVE)

            tcp = await loop.create_server(accept, HOST, port)
            pinger = loop.create_task(keepalive())
            await _serve_until_stopped({"ready": True, "loop": loop_name})
            pinger.cancel()
            tcp.close()

    asyncio.run(main())
    return 0


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class Route:
    name: str
    echo: int
    sink: int
    pids: dict[str, int]


def start_paths(ws: Workspace, pki: Path, kinds: list[str]) -> tuple[list[Route], Child, int]:
    """Echo server, counting sink, and every path in front of them; returns the paths, the sink and the echo
    server's pid."""
    echo_port, sink_port = free_port(), free_port()
    echo = Child(ws, "echo", ["--role", "echo", "--port", str(echo_port)])
    sink = Child(ws, "sink", ["--role", "sink", "--port", str(sink_port)])
    paths = [Route("raw", echo_port, sink_port, {})]
    st = start_stunnel(ws, {"echo": echo_port, "sink": sink_port})
    paths.append(Route("stunnel4", st.ports["echo"], st.ports["sink"], {"stunnel-client": st.client.pid}))
    paths[-1].pids["stunnel-server"] = st.server.pid
    for kind in kinds:
        ports: dict[str, int] = {}
        pids: dict[str, int] = {}
        for server, server_port in (("echo", echo_port), ("sink", sink_port)):
            exit_port, entrance_port = free_port(), free_port()
            args = ["--pki", str(pki)]
            exit_ = Child(
                ws,
                f"{kind}-exit-{server}",
                [*args, "--role", f"{kind}-exit", "--port", str(exit_port), "--target", str(server_port)],
                module="bench.p2p_transport",
            )
            entrance = Child(ws, f"{kind}-entrance-{server}", [*args, "--role", f"{kind}-entrance", "--port",
                                                                str(entrance_port), "--target", str(exit_port)],
                             module="bench.p2p_transport")  # fmt: skip
            ports[server] = entrance_port
            # one entrance/exit pair per server, like stunnel's sections in one process: CPU is summed per side
            pids[f"{kind}-entrance/{server}"] = entrance.proc.pid
            pids[f"{kind}-exit/{server}"] = exit_.proc.pid
        paths.append(Route(kind, ports["echo"], ports["sink"], pids))
    for path in paths:
        wait_until(lambda p=path: probe(p.echo), 30, f"an echo through the {path.name} path")  # type: ignore[misc]
    return paths, sink, echo.proc.pid


def side_cpu(path: Route) -> dict[str, float]:
    """CPU seconds so far of the path's entrance and exit (each summed over its processes)."""
    out: dict[str, float] = {"entrance": 0.0, "exit": 0.0}
    for name, pid in path.pids.items():
        side = "entrance" if "client" in name or "entrance" in name else "exit"
        out[side] += cpu_seconds(pid)
    return out


@dataclass
class Results:
    mbs: dict[str, list[float]]
    p50: dict[str, list[float]]
    p99: dict[str, list[float]]
    cpu_gib: dict[str, dict[str, list[float]]]
    cpu_rtt: dict[str, dict[str, list[float]]]


def measure(paths: list[Route], sink: Child, server_pid: int, args: argparse.Namespace) -> Results:
    nbytes = args.size_mib * MiB
    names = [p.name for p in paths]
    res = Results(
        {n: [] for n in names},
        {n: [] for n in names},
        {n: [] for n in names},
        {n: {k: [] for k in ("app", "entrance", "exit", "server")} for n in names},
        {n: {k: [] for k in ("app", "entrance", "exit", "server")} for n in names},
    )
    sink_pid = sink.proc.pid
    for rnd in range(args.rounds):
        order = paths[rnd % len(paths) :] + paths[: rnd % len(paths)]
        for path in order:
            before, app0, srv0 = side_cpu(path), time.process_time(), cpu_seconds(sink_pid)
            seconds, problem = sink_transfer(path.sink, nbytes)
            after, app1, srv1 = side_cpu(path), time.process_time(), cpu_seconds(sink_pid)
            finished = sink.ask(30.0, cmd="take")["done"]
            got = max((int(d["delivered"]) for d in finished), default=0)
            if got != nbytes or problem:
                raise RuntimeError(f"{path.name} round {rnd + 1}: {got:,} of {nbytes:,} bytes delivered {problem}")
            res.mbs[path.name].append(got / seconds / 1e6)
            gib = got / GiB
            used = {"app": app1 - app0, "server": srv1 - srv0, **{k: after[k] - before[k] for k in after}}
            for k, v in used.items():
                res.cpu_gib[path.name][k].append(v / gib)
            print(f"round {rnd + 1} {path.name}: {got / seconds / 1e6:.0f} MB/s", file=sys.stderr, flush=True)
        for path in order:
            before, app0, srv0 = side_cpu(path), time.process_time(), cpu_seconds(server_pid)
            times = pingpong(path.echo, args.rtts, 500)
            after, app1, srv1 = side_cpu(path), time.process_time(), cpu_seconds(server_pid)
            s = timing_summary(times)
            res.p50[path.name].append(s["p50"])
            res.p99[path.name].append(s["p99"])
            n = args.rtts + 500
            used = {"app": app1 - app0, "server": srv1 - srv0, **{k: after[k] - before[k] for k in after}}
            for k, v in used.items():
                res.cpu_rtt[path.name][k].append(v / n * 1e6)
            print(
                f"round {rnd + 1} {path.name}: RTT p50 {s['p50'] * 1e6:.0f} us p99 {s['p99'] * 1e6:.0f} us",
                file=sys.stderr,
                flush=True,
            )
    return res


def _spread(values: list[float], fmt: str) -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _ratios(values: dict[str, list[float]], name: str) -> RoundRatios:
    rr = RoundRatios()
    for cur, base in zip(values[name], values["stunnel4"], strict=True):
        rr.add(cur, base)
    return rr


def report(res: Results, names: list[str], args: argparse.Namespace) -> str:
    rows = []
    for n in names:
        rows.append(
            [
                n,
                _spread(res.mbs[n], "{:.0f}"),
                _ratios(res.mbs, n).text(),
                _spread([v * 1e6 for v in res.p50[n]], "{:.0f}"),
                _ratios(res.p50, n).text(),
                _spread([v * 1e6 for v in res.p99[n]], "{:.0f}"),
                _ratios(res.p99, n).text(),
            ]
        )
    out = [
        f"\n### One stream, {args.size_mib} MiB to the counting sink, and 1-byte ping-pong ({args.rtts:,} round "
        f"trips), {args.rounds} interleaved rounds\n",
        "Per path: median over the rounds (min-max); `x stunnel4`: median of each round's ratio to stunnel4 in that "
        "round (min-max)\n",
        table(
            [
                "path",
                "MB/s delivered",
                "MB/s x stunnel4",
                "RTT p50 us",
                "p50 x stunnel4",
                "RTT p99 us",
                "p99 x stunnel4",
            ],
            rows,
        ),
    ]
    for title, cpu, fmt in (
        ("CPU seconds per GiB delivered (median over the rounds)", res.cpu_gib, "{:.2f}"),
        ("CPU us per round trip (median over the rounds)", res.cpu_rtt, "{:.1f}"),
    ):
        crow = []
        for n in names:
            med = {k: statistics.median(v) for k, v in cpu[n].items()}
            path_sum = med["entrance"] + med["exit"]
            crow.append(
                [
                    n,
                    *(fmt.format(med[k]) for k in ("app", "entrance", "exit", "server")),
                    fmt.format(path_sum) if n != "raw" else "-",
                ]
            )
        base = statistics.median(cpu["stunnel4"]["entrance"]) + statistics.median(cpu["stunnel4"]["exit"])
        for row, n in zip(crow, names, strict=True):
            s = statistics.median(cpu[n]["entrance"]) + statistics.median(cpu[n]["exit"])
            row.append(f"{s / base:.2f}" if n != "raw" and base > 0 else "-")
        out += [
            f"\n{title}; app = this process (the client), server = sink or echo server\n",
            table(["path", "app", "entrance", "exit", "server", "entrance+exit", "x stunnel4"], crow),
        ]
    tput = {n: _ratios(res.mbs, n).median for n in names}
    rtt = {n: _ratios(res.p50, n).median for n in names}
    out.append(
        "\nTargets on a punched path: one-stream throughput >= 1.0 x stunnel4, 1-byte RTT p50 <= 1.3 x stunnel4\n"
    )
    verdict = []
    for n in names[2:]:
        ok_t, ok_r = tput[n] >= 1.0, rtt[n] <= 1.3
        verdict.append(
            [
                n,
                f"{tput[n]:.2f} {'PASS' if ok_t else 'FAIL'}",
                f"{rtt[n]:.2f} {'PASS' if ok_r else 'FAIL'}",
                "meets both" if ok_t and ok_r else "misses",
            ]
        )
    out.append(table(["path", "throughput x stunnel4", "RTT p50 x stunnel4", "verdict"], verdict))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5; use >= 5 for figures)")
    parser.add_argument("--size-mib", type=int, default=256, help="MiB per bulk transfer (default 256)")
    parser.add_argument("--rtts", type=int, default=5000, help="1-byte round trips per path and round (default 5000)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) at the end")
    parser.add_argument(
        "--no-qh3", dest="qh3", action="store_false", help="leave qh3 out (it is measured when installed)"
    )
    parser.add_argument(
        "--role", choices=[f"{k}-{s}" for k in KINDS for s in ("entrance", "exit")], help=argparse.SUPPRESS
    )
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--target", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--pki", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        kind, side = args.role.split("-")
        if kind == "tls":
            return role_tls(side, args.port, Path(args.pki), args.target)
        return role_quic(side, args.port, Path(args.pki), args.target, "aioquic" if kind == "quic" else "qh3")
    if args.rounds < 1 or args.size_mib < 1 or args.rtts < 1:
        parser.error("--rounds, --size-mib and --rtts must be at least 1")
    if importlib.util.find_spec("aioquic") is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    kinds = ["tls", "quic"] + (["qh3"] if args.qh3 and importlib.util.find_spec("qh3") is not None else [])
    for tool, package in (("stunnel4", "stunnel4"), ("openssl", "openssl")):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed (apt-get install {package})")
    print(machine_facts())
    print(tree_facts())
    with Workspace("p2p-transport", keep=args.keep) as ws:
        pki = ws.dir / "pki"
        pki.mkdir()
        make_pki(pki)
        paths, sink, echo_pid = start_paths(ws, pki, kinds)
        res = measure(paths, sink, echo_pid, args)
        print(report(res, [p.name for p in paths], args))
    print(f"load average at end: {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
