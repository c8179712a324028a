"""Benchmark of the `ztm.h2` transport: one HTTP/2-over-TLS 1.3 hop over loopback, server and client in two processes.

    .venv/bin/python bench/h2_transport.py                      # this tree vs the h2-library version (commit 40e2a98)
    .venv/bin/python bench/h2_transport.py --compare ""         # this tree only
    .venv/bin/python bench/h2_transport.py --size-mib 256 --repeat 1 --loop asyncio

Measured, each `--repeat` times per implementation (implementations alternate, the median is printed):

* single stream: the client uploads `--size-mib` MiB on one stream, the server reads and discards it;
* `--streams` streams: the same amount split over that many concurrent streams;
* CPU-s/GB: user+system CPU of both processes per GB (10^9 bytes) moved;
* request latency: sequential small `Connection.request()` calls (POST 1 byte, answer 1 byte), p50/p99, and the
  CPU time of both processes per request (less sensitive than wall time to other load on the machine);
* stream RTT: 1 byte written and echoed back on an open CONNECT stream, p50/p99 and CPU per round trip.

For scale, the same measurements are made on a plain TLS connection without HTTP/2 (unless `--no-baseline`): a
sink that counts bytes and an echo server, `asyncio.BufferedProtocol` with 1 MiB reads. It is the floor for this
machine at this moment (the machine may be shared: compare the columns of one run, not separate runs).

`--compare REV` materializes `src/ztm/h2` of git revision REV (read-only `git show`) as a separate package in a
temporary directory, so the old and the new transport run side by side on the same machine state. Everything
listens on and connects to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20
LEGACY_REV = "40e2a98"  # the last ztm.h2 built on the h2 library


# ---------------------------------------------------------------------------------------------- implementations


def materialize(rev: str, into: Path) -> str:
    """Write `src/ztm/h2` of git revision `rev` into `into` as package `ztm_h2_<rev>`; return the package name."""
    name = "ztm_h2_" + "".join(c for c in rev if c.isalnum())
    target = into / name
    target.mkdir(parents=True, exist_ok=True)
    listing = subprocess.run(
        ["git", "-C", str(REPO), "ls-tree", "--name-only", f"{rev}:src/ztm/h2"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    for file in listing:
        if not file.endswith(".py"):
            continue
        text = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:src/ztm/h2/{file}"], check=True, capture_output=True, text=True
        ).stdout
        text = text.replace("from ztm.h2 import", f"from {name} import").replace("ztm.h2.", f"{name}.")
        (target / file).write_text(text)
    return name


# ---------------------------------------------------------------------------------------------- PKI


def make_pki(directory: Path) -> None:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (ECDSA P-256)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def cert(cn: str, key: Any, issuer: Any, issuer_key: Any, ca: bool, san: list[Any]) -> Any:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        return builder.sign(issuer_key, hashes.SHA256())

    import ipaddress

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    ca = cert("bench CA", ca_key, ca_name, ca_key, True, [])
    pem = serialization.Encoding.PEM
    (directory / "ca.pem").write_bytes(ca.public_bytes(pem))
    for role, san in (
        ("server", [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
        ("client", [x509.UniformResourceIdentifier("ztm://bench/user/bench")]),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        (directory / f"{role}.pem").write_bytes(cert(role, key, ca_name, ca_key, False, san).public_bytes(pem))
        (directory / f"{role}.key").write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )


def server_context(pki: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(pki / "server.pem", pki / "server.key")
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(pki / "ca.pem")
    return ctx


def client_context(pki: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(pki / "ca.pem")
    ctx.load_cert_chain(pki / "client.pem", pki / "client.key")
    return ctx


# ---------------------------------------------------------------------------------------------- the two processes


def run_loop(coro: Any, loop: str) -> Any:
    if loop == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


async def server_main(h2: Any, pki: Path) -> None:
    async def handler(stream: Any, conn: Any) -> None:
        if stream.method == "CONNECT":  # echo
            await stream.respond(200)
            while chunk := await stream.read():
                await stream.write(chunk)
            await stream.end()
        elif stream.path == "/sink":
            total = 0
            while chunk := await stream.read():
                total += len(chunk)
            await stream.respond(200)
            await stream.write(str(total).encode(), end_stream=True)
        elif stream.path == "/cpu":
            await stream.respond(200)
            await stream.write(repr(time.process_time()).encode(), end_stream=True)
        else:
            body = await stream.read_all()
            await stream.respond(200)
            await stream.write(body, end_stream=True)

    server = await h2.serve(handler, "127.0.0.1", 0, lambda: server_context(pki))
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes stdin
    server.close()


class RawServer(asyncio.BufferedProtocol):
    """Plain TLS: after b"S" and an 8-byte size, count that many bytes and answer with the CPU time they took;
    after b"E", echo everything."""

    def __init__(self) -> None:
        self.buffer = memoryview(bytearray(MiB))
        self.head = b""
        self.mode = b""
        self.left = 0
        self.cpu = 0.0
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer

    def buffer_updated(self, nbytes: int) -> None:
        data = self.buffer[:nbytes]
        if self.mode == b"E":
            self.transport.write(bytes(data))
            return
        if not self.mode:
            need = 9 - len(self.head)
            self.head += bytes(data[:need])
            data = data[need:]
            if self.head[:1] == b"E":
                self.mode = b"E"
                rest = self.head[1:] + bytes(data)
                if rest:
                    self.transport.write(rest)
                return
            if len(self.head) < 9:
                return
            self.mode = b"S"
            self.left = int.from_bytes(self.head[1:], "big")
            self.cpu = time.process_time()
        self.left -= len(data)
        if self.left <= 0 and self.mode == b"S":
            self.mode = b"done"
            self.transport.write(repr(time.process_time() - self.cpu).encode())


async def raw_server_main(pki: Path) -> None:
    server = await asyncio.get_running_loop().create_server(RawServer, "127.0.0.1", 0, ssl=server_context(pki))
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    server.close()


async def raw_client_main(pki: Path, port: int, size: int, requests: int) -> dict[str, float]:
    block = memoryview(os.urandom(16 * MiB))
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(pki))
    writer.write(b"S" + size.to_bytes(8, "big"))
    cpu0, t0 = time.process_time(), time.perf_counter()
    left = size
    while left:
        k = min(left, len(block))
        writer.write(block[:k])
        await writer.drain()
        left -= k
    server_cpu = float(await reader.read(100))
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0 + server_cpu
    writer.close()
    result = {"single_mbs": size / wall / 1e6, "single_cpu_gb": cpu / (size / 1e9)}
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(pki))
    writer.write(b"E")
    times = []
    for i in range(requests + 200):
        t0 = time.perf_counter()
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        if i >= 200:
            times.append(time.perf_counter() - t0)
    writer.close()
    result["rtt_p50_us"] = percentile(times, 0.5) * 1e6
    result["rtt_p99_us"] = percentile(times, 0.99) * 1e6
    return result


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def client_main(h2: Any, pki: Path, port: int, size: int, streams: int, requests: int) -> dict[str, float]:
    conn = await h2.connect("127.0.0.1", port, client_context(pki), keepalive=None)
    block = os.urandom(16 * MiB)

    async def server_cpu() -> float:
        return float((await conn.request("GET", "/cpu"))[2])

    async def upload(n: int) -> None:
        stream = await conn.open_stream("POST", "/sink")
        view = memoryview(block)
        left = n
        while left:
            k = min(left, len(block))
            await stream.write(view[:k], end_stream=k == left)
            left -= k
        await stream.response()
        assert int(await stream.read_all()) == n

    async def measured(coro_factory: Any) -> tuple[float, float]:
        cpu0, scpu0, t0 = time.process_time(), await server_cpu(), time.perf_counter()
        await coro_factory()
        t1 = time.perf_counter()
        cpu1, scpu1 = time.process_time(), await server_cpu()
        return t1 - t0, (cpu1 - cpu0) + (scpu1 - scpu0)

    result: dict[str, float] = {}
    await upload(64 * MiB)  # warm-up
    wall, cpu = await measured(lambda: upload(size))
    result["single_mbs"] = size / wall / 1e6
    result["single_cpu_gb"] = cpu / (size / 1e9)
    per = size // streams
    wall, cpu = await measured(lambda: asyncio.gather(*(upload(per) for _ in range(streams))))
    result["multi_mbs"] = per * streams / wall / 1e6
    result["multi_cpu_gb"] = cpu / (per * streams / 1e9)

    for _ in range(200):  # warm-up
        await conn.request("POST", "/echo", body=b"x")
    times = []
    cpu0, scpu0 = time.process_time(), await server_cpu()
    for _ in range(requests):
        t0 = time.perf_counter()
        _, _, body = await conn.request("POST", "/echo", body=b"x")
        times.append(time.perf_counter() - t0)
        assert body == b"x"
    cpu1, scpu1 = time.process_time(), await server_cpu()
    result["req_p50_us"] = percentile(times, 0.5) * 1e6
    result["req_p99_us"] = percentile(times, 0.99) * 1e6
    result["req_cpu_us"] = ((cpu1 - cpu0) + (scpu1 - scpu0)) / requests * 1e6

    tunnel = await conn.open_stream("CONNECT", "echo:1")
    await tunnel.response()
    times = []
    for i in range(requests + 200):
        if i == 200:
            cpu0, scpu0 = time.process_time(), await server_cpu()
        t0 = time.perf_counter()
        await tunnel.write(b"x")
        assert await tunnel.read() == b"x"
        if i >= 200:
            times.append(time.perf_counter() - t0)
    cpu1, scpu1 = time.process_time(), await server_cpu()
    await tunnel.end()
    result["rtt_p50_us"] = percentile(times, 0.5) * 1e6
    result["rtt_p99_us"] = percentile(times, 0.99) * 1e6
    result["rtt_cpu_us"] = ((cpu1 - cpu0) + (scpu1 - scpu0)) / requests * 1e6
    conn.close()
    await conn.wait_closed()
    return result


def child(args: argparse.Namespace) -> None:
    pki = Path(args.pki)
    if args.impl == "raw":
        if args.role == "server":
            run_loop(raw_server_main(pki), args.loop)
        else:
            result = run_loop(raw_client_main(pki, args.port, args.size_mib * MiB, args.requests), args.loop)
            print(json.dumps(result), flush=True)
        return
    sys.path.insert(0, args.path)
    h2 = importlib.import_module(args.impl)
    if args.role == "server":
        run_loop(server_main(h2, pki), args.loop)
    else:
        result = run_loop(client_main(h2, pki, args.port, args.size_mib * MiB, args.streams, args.requests), args.loop)
        print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------- orchestration


def one_run(impl: str, path: str, pki: Path, args: argparse.Namespace) -> dict[str, float]:
    me = [sys.executable, __file__, "--impl", impl, "--path", path, "--pki", str(pki), "--loop", args.loop]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    server = subprocess.Popen([*me, "--role", "server"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        out = subprocess.run(
            [
                *me,
                "--role",
                "client",
                "--port",
                str(port),
                "--size-mib",
                str(args.size_mib),
                "--streams",
                str(args.streams),
                "--requests",
                str(args.requests),
            ],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        ).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))
    finally:
        assert server.stdin is not None
        server.stdin.close()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


ROWS = [
    ("single_mbs", "single stream MB/s", "{:,.0f}"),
    ("single_cpu_gb", "single stream CPU-s/GB (both processes)", "{:.2f}"),
    ("multi_mbs", "{streams} streams MB/s (aggregate)", "{:,.0f}"),
    ("multi_cpu_gb", "{streams} streams CPU-s/GB", "{:.2f}"),
    ("req_p50_us", "request/response p50 us", "{:,.0f}"),
    ("req_p99_us", "request/response p99 us", "{:,.0f}"),
    ("rtt_p50_us", "1-byte stream RTT p50 us", "{:,.0f}"),
    ("rtt_p99_us", "1-byte stream RTT p99 us", "{:,.0f}"),
    ("req_cpu_us", "request/response CPU us (both processes)", "{:,.0f}"),
    ("rtt_cpu_us", "1-byte stream RTT CPU us (both processes)", "{:,.0f}"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", default=LEGACY_REV, help="git revision to compare with ('' for none)")
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-baseline", dest="baseline", action="store_false", help="skip the plain TLS column")
    parser.add_argument("--role", choices=["server", "client"], help=argparse.SUPPRESS)
    parser.add_argument("--impl", default="ztm.h2", help=argparse.SUPPRESS)
    parser.add_argument("--path", default="", help=argparse.SUPPRESS)
    parser.add_argument("--pki", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        child(args)
        return

    with tempfile.TemporaryDirectory(prefix="ztm-bench-h2-") as tmp:
        pki = Path(tmp)
        make_pki(pki)
        impls = [("this tree", "ztm.h2", "")]
        if args.compare:
            impls.insert(
                0, (f"h2 library ({args.compare})", materialize(args.compare, pki / "legacy"), str(pki / "legacy"))
            )
        if args.baseline:
            impls.insert(0, ("plain TLS, no HTTP/2", "raw", ""))
        results: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in impls}
        for i in range(args.repeat):
            for label, impl, path in impls:
                r = one_run(impl, path, pki, args)
                results[label].append(r)
                print(f"run {i + 1} {label}: " + ", ".join(f"{k}={v:.1f}" for k, v in r.items()), file=sys.stderr)

    labels = [label for label, _, _ in impls]
    print(f"\n1 TLS 1.3 hop over loopback, {args.loop}, {args.size_mib} MiB per transfer, median of {args.repeat}\n")
    print("| measure | " + " | ".join(labels) + " |")
    print("| --- |" + " --- |" * len(labels))
    for key, title, fmt in ROWS:
        cells = [
            fmt.format(statistics.median(r[key] for r in results[label])) if key in results[label][0] else "-"
            for label in labels
        ]
        print(f"| {title.format(streams=args.streams)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
