"""Traffic for the fault tests: an echo server, byte-exact round trips through a tunnel entrance, and a background
load that keeps making round trips while a fault happens and sorts each into complete, cut short, or corrupt.

A transfer that completes must be byte-exact: `Traffic.corrupt` counts answers that are as long as the upload but
differ, or that are not a prefix of it. A fault may cut a transfer short (the connection dies): that is `cut`, allowed.
Sockets can live in a lab namespace (`netns`); everything else is loopback.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from support import netns_socket, tcp_connect, wait_until

Record = Callable[[str, float, str], None]
"""The `figures` fixture: `figures(name, value, unit)` records one measurement."""


class EchoServer:
    """A threaded TCP echo server on `host:port` (optionally inside `netns`): sends back what it reads, then
    half-closes when the client did."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, netns: str | None = None) -> None:
        self.sock = netns_socket(netns)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(256)
        self.port = int(self.sock.getsockname()[1])
        self._stop = False
        self._thread = threading.Thread(target=self._accept, name="echo-server", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(60)
            while data := conn.recv(1 << 16):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def roundtrip(
    port: int, data: bytes, *, host: str = "127.0.0.1", netns: str | None = None, timeout: float = 10.0
) -> bytes:
    """Send `data` to `host:port` and half-close while reading concurrently; returns what came back until EOF."""
    with tcp_connect(host, port, netns=netns, timeout=timeout) as sock:
        problem: list[BaseException] = []

        def send() -> None:
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError as exc:
                problem.append(exc)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
        sender.join(timeout)
    return b"".join(chunks)


def echoes(port: int, size: int = 64 << 10, *, host: str = "127.0.0.1", netns: str | None = None) -> bool:
    """One byte-exact round trip of `size` random bytes works (False on any error or mismatch)."""
    data = os.urandom(size)
    try:
        return roundtrip(port, data, host=host, netns=netns, timeout=5.0) == data
    except OSError:
        return False


@dataclass
class Traffic:
    """Round trips through `port` one after the other on a thread until `stop()`."""

    port: int
    size: int = 256 << 10
    host: str = "127.0.0.1"
    netns: str | None = None
    complete: int = 0
    cut: int = 0
    failed: int = 0
    corrupt: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            data = os.urandom(self.size)
            try:
                got = roundtrip(self.port, data, host=self.host, netns=self.netns, timeout=5.0)
            except OSError:
                self.failed += 1
                self._stop.wait(0.05)  # the fault is on: do not spin on refused connections
                continue
            if got == data:
                self.complete += 1
            elif data.startswith(got):
                self.cut += 1
            else:
                diff = next((i for i, (a, b) in enumerate(zip(got, data, strict=False)) if a != b), len(data))
                self.corrupt.append(f"{len(got)} bytes back for {len(data)}, first difference at byte {diff}")

    def stop(self) -> Traffic:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)
        return self

    def __str__(self) -> str:
        return f"{self.complete} complete, {self.cut} cut short, {self.failed} failed, {len(self.corrupt)} corrupt"


DOCUMENTED_FACTOR = 5.0
"""How far above the figure RELIABILITY.md documents a measured recovery may be (`assert_documented`): room for a
loaded machine, while a regression by an order of magnitude fails."""


def assert_documented(measured: float, documented: float, what: str, factor: float = DOCUMENTED_FACTOR) -> None:
    """`measured` seconds must be at most `factor` times the `documented` figure (RELIABILITY.md's): the tests wait
    generously (for slow machines) but hold the documented order of magnitude."""
    limit = factor * documented
    assert measured <= limit, (
        f"{what} took {measured:.2f} s: over {factor:g}x the {documented:g} s RELIABILITY.md documents "
        f"({limit:.2f} s); a regression, or a machine far busier than the one that measured it"
    )


def time_until(predicate: Callable[[], object], timeout: float, what: str, since: float | None = None) -> float:
    """Poll `predicate` (as `support.wait_until`) and return the seconds from `since` (default: now) until it held."""
    start = time.monotonic() if since is None else since
    wait_until(predicate, timeout, what, interval=0.05)
    return time.monotonic() - start
