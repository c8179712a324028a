"""The floor of a Python forwarder: how close to stunnel4 can any one-hop data path written on uvloop get?

Issue 18 asks for a direct path within 1.05x stunnel4's 1-byte round trip. Before redesigning the direct channel,
this measures two forwarders far simpler than ztm's (no HTTP/2, no streams, no certificates checked per request),
each an entrance process (plain TCP in) and an exit process (out to the echo server), one connection per client
connection, TCP_NODELAY everywhere, against stunnel4 in the same run:

* `tls`: TLS 1.3 between the two (uvloop's `create_connection(ssl=...)`, a `Protocol` whose `data_received`
  writes to the other side): what "one TLS connection per tunnelled connection, no HTTP/2" would cost;
* `aead`: AES-256-GCM records over plain TCP (`cryptography`'s AESGCM, a 3-byte length and a counter nonce, one
  record per read): what "our own encryption, no TLS" would cost (the WireGuard model).

Neither authenticates anybody (a fixed key, a self-signed certificate): they are floors, not designs. Each round
measures every path back to back (order alternating) with `--rtts` 1-byte round trips; prints per round the p50,
CPU µs per round trip of the path's two processes (utime + stime), and connect + first round trip p50, then the
median and the min-max of each round's ratio to stunnel4.

Run:  .venv/bin/python -m bench.forward_floor [--rounds 5] [--rtts 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import ssl
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

if not __package__:  # run as a file (python bench/NAME.py): make the `bench` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import CLK_TCK, HOST, Proc, Workspace, bench_env, free_port, machine_facts, tcp_accepts, wait_until
from bench.tunnel import connect_cycle, pingpong, start_stunnel

Transform = Callable[[bytes], bytes]


def _sealer(aead: object) -> Transform:
    counter = 0

    def seal(data: bytes) -> bytes:
        nonlocal counter
        counter += 1
        sealed: bytes = aead.encrypt(counter.to_bytes(12, "big"), data, None)  # type: ignore[attr-defined]
        return len(sealed).to_bytes(3, "big") + sealed

    return seal


def _opener(aead: object) -> Transform:
    counter = 0
    buf = b""

    def open_(data: bytes) -> bytes:
        nonlocal counter, buf
        buf += data
        out = []
        while len(buf) >= 3:
            size = int.from_bytes(buf[:3], "big")
            if len(buf) < 3 + size:
                break
            counter += 1
            out.append(aead.decrypt(counter.to_bytes(12, "big"), buf[3 : 3 + size], None))  # type: ignore[attr-defined]
            buf = buf[3 + size :]
        return b"".join(out)

    return open_


class _Half(asyncio.Protocol):
    """One side of a forwarded connection: what it reads goes (transformed) to its peer's transport."""

    def __init__(self, transform: Transform | None = None) -> None:
        self.peer: _Half | None = None
        self.transport: asyncio.Transport | None = None
        self.transform = transform
        self.waiting: list[bytes] = []
        self.dialling: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        if self.transform is not None:
            data = self.transform(data)
        peer = self.peer
        assert peer is not None
        if peer.transport is None:
            peer.waiting.append(data)
        else:
            peer.transport.write(data)

    def connected(self) -> None:
        assert self.transport is not None
        for data in self.waiting:
            self.transport.write(data)
        self.waiting.clear()

    def eof_received(self) -> bool:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


def role(kind: str, side: str, listen: int, target: int, cert: str, key: str) -> None:
    """Run one forwarder process: `side` entrance (plain in) or exit (plain out), `kind` tls or aead."""
    import uvloop
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(b"k" * 32)
    server_ctx = client_ctx = None
    if kind == "tls":
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
        server_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client_ctx.load_verify_locations(cert)
        client_ctx.check_hostname = False

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def accepted() -> _Half:
            inner, outer = _Half(), _Half()
            inner.peer, outer.peer = outer, inner
            if kind == "aead":  # the sealed side: the entrance's outer half and the exit's inner half
                sealed, plain = (outer, inner) if side == "entrance" else (inner, outer)
                plain.transform, sealed.transform = _sealer(aead), _opener(aead)

            async def dial() -> None:
                tls = client_ctx if side == "entrance" else None
                await loop.create_connection(lambda: outer, HOST, target, ssl=tls)
                outer.connected()

            inner.dialling = loop.create_task(dial())  # a reference, so the task is not collected mid-way
            return inner

        tls = server_ctx if side == "exit" else None
        server = await loop.create_server(accepted, HOST, listen, ssl=tls)
        print("ready", flush=True)
        await server.serve_forever()

    uvloop.run(main())


def _cpu(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--rtts", type=int, default=3000)
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--role", nargs=6, metavar=("KIND", "SIDE", "LISTEN", "TARGET", "CERT", "KEY"))
    args = ap.parse_args(argv)
    if args.role:
        kind, side, listen, target, cert, key = args.role
        role(kind, side, int(listen), int(target), cert, key)
        return 0
    print(machine_facts())
    with Workspace("floor") as ws:
        echo = free_port()
        env = bench_env(ws.dir)
        code = f"from bench.tunnel import role_echo; role_echo({echo})"
        root = str(Path(__file__).resolve().parents[1])
        ws.procs.append(Proc([sys.executable, "-c", code], log_path=ws.dir / "echo.out", env=env, cwd=Path(root)))
        wait_until(lambda: tcp_accepts(echo), 10, "the echo server")
        st = start_stunnel(ws, {"echo": echo})
        cert, key = str(ws.dir / "stunnel" / "cert.pem"), str(ws.dir / "stunnel" / "key.pem")
        paths: dict[str, tuple[int, list[int]]] = {"stunnel4": (st.ports["echo"], [st.client.pid, st.server.pid])}
        for kind in ("tls", "aead"):
            exit_port, entrance_port = free_port(), free_port()
            pids = []
            for side, listen, target in (("exit", exit_port, echo), ("entrance", entrance_port, exit_port)):
                argv_ = [sys.executable, "-m", "bench.forward_floor", "--role", kind, side, str(listen), str(target)]
                proc = Proc([*argv_, cert, key], log_path=ws.dir / f"{kind}-{side}.out", env=env, cwd=Path(root))
                ws.procs.append(proc)
                pids.append(proc.pid)
                wait_until(lambda p=listen: tcp_accepts(p), 10, f"{kind} {side}")  # type: ignore[misc]
            paths[kind] = (entrance_port, pids)
        p50: dict[str, list[float]] = {k: [] for k in paths}
        cpu: dict[str, list[float]] = {k: [] for k in paths}
        conn: dict[str, list[float]] = {k: [] for k in paths}
        for r in range(args.rounds):
            for name in list(paths) if r % 2 == 0 else list(reversed(paths)):
                port, pids = paths[name]
                before = sum(_cpu(p) for p in pids)
                samples = pingpong(port, args.rtts, 200)
                used = sum(_cpu(p) for p in pids) - before
                p50[name].append(statistics.median(samples) * 1e6)
                cpu[name].append(used / (args.rtts + 200) * 1e6)
                conn[name].append(statistics.median(connect_cycle(port) for _ in range(args.cycles)) * 1e3)
        print(f"\n{args.rounds} interleaved rounds of {args.rtts} 1-byte round trips and {args.cycles} connect cycles")
        print("| path | RTT p50 µs (rounds) | CPU µs per RT | connect + 1st RTT ms | p50 x stunnel4 | CPU x stunnel4 |")
        print("| --- | --- | --- | --- | --- | --- |")
        for name in paths:
            ratios = [a / b for a, b in zip(p50[name], p50["stunnel4"], strict=True)]
            cpu_ratios = [a / b for a, b in zip(cpu[name], cpu["stunnel4"], strict=True)]
            print(
                f"| {name} | {statistics.median(p50[name]):.0f} ({min(p50[name]):.0f}-{max(p50[name]):.0f}) "
                f"| {statistics.median(cpu[name]):.0f} | {statistics.median(conn[name]):.2f} "
                f"| {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) "
                f"| {statistics.median(cpu_ratios):.2f} ({min(cpu_ratios):.2f}-{max(cpu_ratios):.2f}) |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
