"""TCP hole punching for direct channels (the I/O half; the messages and rules are `ztm.agent.punchmsg`).

One punch makes one TCP connection between two endpoints that cannot dial each other's listener, typically both
behind NAT routers. Each side takes a fresh local port (`PunchPort`): a listener on it, and, from it, a mutual-TLS
connection to its hub asking `GET /api/reflect` which address and port the hub sees (the NAT's mapping of that
port; kept open while the punch runs, so the mapping stays). Candidates (the reflexive address, the LAN address) are
exchanged through the hub in an end-to-end call, then both sides `connect()` from the port to each plausible
candidate of the other at the same time (`Attempt`), retrying refused tries, for `WINDOW` seconds: the first SYN
each side sends opens its own router's mapping for the other's packets, and the connection comes up as a TCP
simultaneous open (or through the listener, when one side needs no mapping). Linux supports both. The TCP
connection then carries a direct channel exactly like a dialled one (mutual TLS with the endpoint certificates,
`ztm.agent.direct`), and holds its NAT mappings open with TCP keepalives (`keep_alive`).

Sockets sharing the port set SO_REUSEADDR and SO_REUSEPORT (the listener, the reflect connection and every try).

A birthday attempt (`punchmsg.Spray`) adds a burst to the same `Attempt`: sockets from fresh ports to the peer's
mapping and sockets from the port to random ports of the peer's address, opened over `SPREAD` seconds (not all in
one millisecond), each connecting without retries (the kernel retransmits its SYN); those that connect are offered
like the others, and every one is closed with the attempt. `raise_fd_limit` makes room for them at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import resource
import socket
import ssl
import time

from ztm import h2
from ztm.agent.link import request
from ztm.agent.punchmsg import Spray
from ztm.agent.tls import check_hub
from ztm.errors import ZtmError

WINDOW = 3.0
"""Seconds both sides keep trying to connect (a punch that has not connected by then failed)."""
RETRY = 0.1
"""Seconds before a refused try is repeated (a router or host answered RST: the other side is not ready yet)."""
REFLECT_TIMEOUT = 2.0
SPREAD = 0.15
"""Seconds over which a birthday burst opens its sockets (its SYNs are paced, not sent in one millisecond)."""
BATCHES = 30
FD_SPARE = 256
"""Descriptors kept free for everything else while a birthday burst holds its 2 K sockets."""


def raise_fd_limit(k: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit if a birthday burst of `k` sockets a side (2 k
    descriptors, plus `FD_SPARE`) needs it; the `k` that fits (smaller than asked if the hard limit is too low)."""
    if k <= 0:
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2 * k + FD_SPARE
    if soft != resource.RLIM_INFINITY and soft < need:
        target = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY or soft >= need:
        return k
    return max(0, (soft - FD_SPARE) // 2)


class PunchError(Exception):
    """A punch step failed; `reason` is the metric label (`ztm_agent_direct_punch_failures_REASON_total`)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def port_socket(family: int, port: int) -> socket.socket:
    """A non-blocking TCP socket bound to `port` (0: a fresh one), shareable with the punch port's other sockets."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setblocking(False)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    except BaseException:
        sock.close()
        raise
    return sock


def keep_alive(sock: socket.socket, idle: float) -> None:
    """TCP keepalives every `idle` seconds on an idle connection (they hold NAT mappings open, and re-create them
    after a router lost them: packets of the far side are dropped until this side sends one), a dead path noticed
    after three unanswered probes 5 s apart, and unacknowledged data given up after 30 s."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(idle)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 5)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 30_000)


def _tcp_info(sock: socket.socket | None) -> bytes | None:
    """The kernel's `struct tcp_info` of a TCP socket (the fields up to `tcpi_rtt`), or None."""
    if sock is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    except (OSError, AttributeError):
        return None
    return info if len(info) >= 72 else None


def rtt_ms(sock: socket.socket | None) -> float | None:
    """The kernel's smoothed round-trip time of a TCP connection (TCP_INFO), in milliseconds."""
    info = _tcp_info(sock)
    return None if info is None else round(int.from_bytes(info[68:72], "little") / 1000, 3)  # tcpi_rtt, us


def silent_for(sock: socket.socket | None) -> float | None:
    """Seconds since the peer last acknowledged anything on a TCP connection (TCP_INFO `tcpi_last_ack_recv`), or
    None if the kernel does not say; with keepalives every K seconds, an idle channel whose peer is alive is never
    silent much longer than K, and one unanswered probe already shows (`tcpi_probes`)."""
    info = _tcp_info(sock)
    if info is None:
        return None
    if info[3] > 0:  # tcpi_probes: keepalive probes sent and not answered
        return float("inf")
    return int.from_bytes(info[56:60], "little") / 1000


class PunchPort:
    """A fresh local port for one punch: its listener, and its reflect connection to the hub."""

    def __init__(self, family: int) -> None:
        self.family = family
        self.listener = port_socket(family, 0)
        self.port: int = self.listener.getsockname()[1]
        self.listener.listen(8)
        self._reflect: h2.Connection | None = None
        self._attempts: list[Attempt] = []

    async def reflect(self, hub: tuple[str, int], context: ssl.SSLContext, mesh_id: str) -> tuple[str, int]:
        """The address and port the hub sees this port come from (its NAT mapping); the connection stays open
        until `close`, so the mapping does too. PunchError("reflect") if the hub cannot be asked."""
        sock = port_socket(self.family, self.port)
        label = f"{hub[0]}:{hub[1]}"
        try:
            conn = await h2.connect(hub[0], hub[1], context, sock=sock, timeout=REFLECT_TIMEOUT, keepalive=None)
        except (h2.H2Error, OSError) as exc:
            sock.close()
            raise PunchError("reflect", f"cannot ask the hub for this endpoint's mapping: {exc}") from None
        self._reflect = conn
        try:
            check_hub(conn, mesh_id, label)
            answer = await request(conn, "GET", "/api/reflect", timeout=REFLECT_TIMEOUT)
            return str(answer["ip"]), int(answer["port"])
        except (ZtmError, h2.H2Error, OSError, KeyError, TypeError, ValueError) as exc:
            raise PunchError("reflect", f"the hub did not say this endpoint's mapping: {exc}") from None

    def attempt(self, remotes: list[tuple[str, int]], spray: Spray | None = None) -> Attempt:
        attempt = Attempt(self, remotes, spray)
        self._attempts.append(attempt)
        return attempt

    def close(self) -> None:
        for attempt in self._attempts:
            attempt.close()
        # after the attempts' tasks saw their cancellation (they may still wait on the listener)
        asyncio.get_running_loop().call_soon(self.listener.close)
        if self._reflect is not None:
            self._reflect.close()
            self._reflect = None


class Attempt:
    """Connect from the punch port to each of `remotes` until `WINDOW` ends, and accept on the listener (and, for a
    birthday attempt, send the `spray` burst): every TCP connection that comes up is offered by `next` (the caller
    keeps the ones it wants; `close` closes the rest)."""

    def __init__(self, port: PunchPort, remotes: list[tuple[str, int]], spray: Spray | None = None) -> None:
        self._port = port
        self.deadline = time.monotonic() + WINDOW
        self._ready: asyncio.Queue[tuple[socket.socket, tuple[str, int]]] = asyncio.Queue()
        self._taken: set[socket.socket] = set()
        self.tries = 0
        self.sprayed = 0
        """Sockets of the birthday burst opened (each sent its SYN)."""
        self._burst: dict[int, tuple[socket.socket, tuple[str, int]]] = {}
        self._closed = False
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._dial(remote)) for remote in remotes]
        self._tasks.append(loop.create_task(self._accept()))
        if spray is not None:
            self._tasks.append(loop.create_task(self._spray(spray)))

    async def next(self) -> tuple[socket.socket, tuple[str, int]]:
        """The next connection that came up, and the remote address it goes to; TimeoutError after the window."""
        left = self.deadline - time.monotonic()
        if left <= 0 and self._ready.empty():
            raise TimeoutError
        sock, remote = await asyncio.wait_for(self._ready.get(), max(left, 0.001))
        self._taken.add(sock)
        return sock, remote

    async def _dial(self, remote: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        while time.monotonic() < self.deadline:
            try:
                sock = port_socket(self._port.family, self._port.port)
            except OSError:
                return
            self.tries += 1
            handed = False
            try:
                await asyncio.wait_for(loop.sock_connect(sock, remote), self.deadline - time.monotonic())
                if not self._closed:
                    self._ready.put_nowait((sock, remote))
                    handed = True
                return
            except (OSError, TimeoutError):
                pass
            finally:
                if not handed:
                    sock.close()
            await asyncio.sleep(RETRY)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(self._port.listener)
            except OSError:
                return
            if self._closed:
                sock.close()
                return
            sock.setblocking(False)
            self._ready.put_nowait((sock, (str(address[0]), int(address[1]))))

    async def _spray(self, spray: Spray) -> None:
        """Open the burst's sockets, `BATCHES` batches over `SPREAD` seconds; each connects on its own (the kernel
        retransmits its SYN), and is closed at `close` unless it connected and was taken."""
        loop = asyncio.get_running_loop()
        targets = spray.targets()
        per = -(-len(targets) // BATCHES)
        for start in range(0, len(targets), per):
            for from_port, remote in targets[start : start + per]:
                if self._closed or time.monotonic() >= self.deadline:
                    return
                try:
                    sock = self._burst_socket(from_port)
                except OSError:
                    return  # out of descriptors or ports: what is out already stays out
                err = sock.connect_ex(remote)
                if err not in (0, errno.EINPROGRESS):
                    sock.close()
                    continue
                fd = sock.fileno()
                self._burst[fd] = (sock, remote)
                self.sprayed += 1
                loop.add_writer(fd, self._burst_done, fd)
            await asyncio.sleep(SPREAD / BATCHES)

    def _burst_socket(self, from_port: bool) -> socket.socket:
        if from_port:
            return port_socket(self._port.family, self._port.port)
        sock = socket.socket(self._port.family, socket.SOCK_STREAM)  # a fresh port: `connect` picks one
        sock.setblocking(False)
        return sock

    def _burst_done(self, fd: int) -> None:
        """A burst socket's connect finished: offered if it connected, else closed."""
        asyncio.get_running_loop().remove_writer(fd)
        sock, remote = self._burst.pop(fd)
        if self._closed or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) != 0:
            sock.close()
            return
        self._ready.put_nowait((sock, remote))

    def close(self) -> None:
        """Stop trying; close every connection nobody took."""
        self._closed = True
        loop = asyncio.get_running_loop()
        for fd, (sock, _remote) in self._burst.items():
            loop.remove_writer(fd)
            sock.close()
        self._burst.clear()
        for task in self._tasks:
            task.cancel()  # a try in progress closes its socket as it ends
        while not self._ready.empty():
            sock, _remote = self._ready.get_nowait()
            if sock not in self._taken:
                sock.close()
