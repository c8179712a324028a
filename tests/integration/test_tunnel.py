"""The tunnel app end to end, through the `ztm tunnel` command line: real hub and agent processes on 127.0.0.1, real
TCP and UDP servers (an asyncio loop on a thread of this process, free ports), real client sockets.

Covered: byte-exact transfers both ways with half-close, UDP datagrams keeping their boundaries, hundreds of
concurrent connections, refusals by entrance and by user (closed at once at the entrance, logged at the exit), an exit
going down (prompt close, never a hang), configuration surviving agent restarts, round-robin over targets, failover
between exits, remote configuration with `ztm ep NAME tunnel ...` (the owner may, another user may not), and the app
in `ztm get app`. Every wait polls with a deadline (tests/support.py).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import gc
import hashlib
import itertools
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from support import (
    Agent,
    Hub,
    Proc,
    free_port,
    invite,
    join_all,
    one_line_error,
    restart_agent,
    start_hub_and_agents,
    wait_until,
)

MESH = "m"
REPLY = 1 << 20
"""Bytes the `check` server sends back after the client's upload ended."""


# ------------------------------------------------------------------------------------------------- test servers


class Servers:
    """TCP and UDP servers on 127.0.0.1 (free ports), all in one asyncio loop on a daemon thread of this process."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="tunnel-test-servers", daemon=True)
        self.thread.start()
        self._servers: list[asyncio.AbstractServer] = []
        self._transports: list[asyncio.BaseTransport] = []
        self._writers: set[asyncio.StreamWriter] = set()

    def _run(self, coro: Awaitable[Any]) -> Any:
        async def wrapped() -> Any:
            return await coro

        return asyncio.run_coroutine_threadsafe(wrapped(), self.loop).result(10)

    def _tcp(self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> int:
        async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.add(writer)
            try:
                await handler(reader, writer)
            finally:
                self._writers.discard(writer)

        async def start() -> int:
            server = await asyncio.start_server(tracked, "127.0.0.1", 0)
            self._servers.append(server)
            return int(server.sockets[0].getsockname()[1])

        return int(self._run(start()))

    def echo(self) -> int:
        """Echoes every byte; after the client's EOF, ends its own side (half-close travels both ways)."""
        return self._tcp(_echo)

    def check(self) -> int:
        """Reads until EOF, then answers sha256(upload) + `reply(sha256)` and ends: the answer leaves only after the
        client's half-close arrived, and travels back to a client whose sending side is already shut."""
        return self._tcp(_check)

    def who(self, name: str) -> int:
        """Sends its name and ends."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                writer.write(name.encode())
                await writer.drain()
            writer.close()

        return self._tcp(handler)

    def greeter(self) -> tuple[int, list[bytes]]:
        """Greets and ends its side at once, then reads the client's upload until EOF; the uploads land in the list."""
        uploads: list[bytes] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(b"hello, then EOF")
                writer.write_eof()
                uploads.append(await reader.read())
            except OSError:
                pass
            finally:
                writer.close()

        return self._tcp(handler), uploads

    def recorder(self) -> tuple[int, list[str]]:
        """Says "ready", then reads until the client's end, which it records: "eof" or "reset"."""
        ends: list[str] = []

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                writer.write(b"ready")
                while await reader.read(1 << 16):
                    pass
                ends.append("eof")
            except ConnectionResetError:
                ends.append("reset")
            finally:
                writer.close()

        return self._tcp(handler), ends

    def resetter(self) -> int:
        """Reads one chunk, then resets the connection (RST)."""

        async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1 << 16)
            rst(writer.get_extra_info("socket"))
            writer.transport.abort()

        return self._tcp(handler)

    def udp_echo(self, seen: list[tuple[bytes, Any]] | None = None) -> int:
        """Echoes every datagram to its sender; each one (with its source address) also lands in `seen`, if given."""

        class Echo(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport: Any = transport

            def datagram_received(self, data: bytes, addr: Any) -> None:
                if seen is not None:
                    seen.append((data, addr))
                self.transport.sendto(data, addr)

        async def start() -> int:
            transport, _ = await self.loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
            self._transports.append(transport)
            return int(transport.get_extra_info("sockname")[1])

        return int(self._run(start()))

    def close(self) -> None:
        async def stop() -> None:
            # Close every socket here, before the loop stops: a connection left to the garbage collector would
            # raise a ResourceWarning in whichever later test happens to be running (warnings are errors).
            for server in self._servers:
                server.close()
            for transport in self._transports:
                transport.close()
            for writer in list(self._writers):
                writer.transport.abort()
            current = asyncio.current_task()
            handlers = [t for t in asyncio.all_tasks() if t is not current]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)
            for server in self._servers:
                await server.wait_closed()
            await asyncio.sleep(0)

        # A connection accepted just as the servers shut down (an agent that was frozen, say, dialling its target
        # late) has a socket but no transport yet: cancelling its pending accept task drops that socket, and the
        # rest are only reachable from the closed loop. Both are finalized here, with their ResourceWarning
        # silenced, rather than in whichever later test the collector happens to run in.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            with contextlib.suppress(Exception):
                self._run(stop())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            if not self.thread.is_alive():
                self.loop.close()
                gc.collect()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
        writer.write_eof()
        await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def rst(sock: Any) -> None:
    """Make the next close of `sock` send an RST (SO_LINGER 0)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def reply(digest: bytes) -> bytes:
    return random.Random(digest).randbytes(REPLY)


async def _check(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        h = hashlib.sha256()
        while data := await reader.read(1 << 16):
            h.update(data)
        digest = h.digest()
        writer.write(digest + reply(digest))
        await writer.drain()
        writer.write_eof()
        await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


# ------------------------------------------------------------------------------------------------------ clients


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while data := sock.recv(1 << 16):
        chunks.append(data)
    return b"".join(chunks)


def echo_roundtrip(port: int, data: bytes, timeout: float = 15.0, host: str = "127.0.0.1") -> bytes:
    """Send `data` and half-close while reading concurrently; returns everything read until EOF."""
    with (
        socket.create_connection((host, port), timeout=timeout) as sock,
        concurrent.futures.ThreadPoolExecutor(1) as pool,
    ):
        sent = pool.submit(lambda: (sock.sendall(data), sock.shutdown(socket.SHUT_WR)))
        got = recv_all(sock)
        sent.result(timeout)
    return got


def closed_without_answer(port: int, data: bytes, timeout: float = 15.0) -> bool:
    """Whether a connection to the entrance at `port` that sends `data` is closed with nothing read back: an EOF, or
    a reset that arrives while sending or reading (a refused stream closes the accepted socket at once, so the send
    may meet a closed connection first: ENOTCONN, EPIPE, ECONNRESET)."""
    try:
        return echo_roundtrip(port, data, timeout) == b""
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.EPIPE, errno.ECONNRESET):
            return True
        raise  # refused at connect (nothing listens), a timeout: not what this asks


def upload_after_eof(port: int, uploads: list[bytes]) -> None:
    """A client of a greeter (`Servers.greeter`) on `port`: it reads the greeting to EOF, then uploads 1 MiB and
    ends its side; the upload must reach the greeter whole."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        assert recv_all(sock) == b"hello, then EOF"
        data = os.urandom(1 << 20)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: uploads, 10, "the upload sent after the server's EOF to arrive")
    assert uploads == [data]


def check_roundtrip(port: int, data: bytes, timeout: float = 15.0) -> bytes:
    """Upload `data`, half-close, then read the `check` server's answer until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def who(port: int, timeout: float = 5.0) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        return recv_all(sock).decode()


def who_or_none(port: int) -> str | None:
    """`who`, or None when the entrance closed the connection without an answer (no exit reachable)."""
    try:
        return who(port) or None
    except ConnectionError:
        return None


def closed_within(port: int, limit: float, payload: bytes = b"hello") -> float:
    """Connect to an entrance that must close the connection without answering; returns how long it took. A
    connection that stays open past `limit` + 3 s is a hang (socket timeout -> AssertionError)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=limit + 3.0) as sock:
        with contextlib.suppress(ConnectionError):
            sock.sendall(payload)
        try:
            data = recv_all(sock)
        except ConnectionError:
            data = b""
        except TimeoutError:
            raise AssertionError(f"the entrance on port {port} kept the connection open for {limit + 3.0}s") from None
    took = time.monotonic() - start
    assert data == b"", f"expected the connection to be closed without an answer, got {data[:100]!r}"
    assert took < limit, f"the entrance took {took:.2f}s to close the connection (limit {limit}s)"
    return took


# ------------------------------------------------------------------------------------------------------ helpers


def ok_line(cp: subprocess.CompletedProcess[str]) -> str:
    assert cp.returncode == 0, cp.stderr
    assert "Traceback" not in cp.stdout + cp.stderr
    return cp.stdout


def listed(agent: Agent, kind: str) -> dict[str, dict[str, Any]]:
    """`ztm tunnel get inbound|outbound -o json` by tunnel name."""
    items = agent.cli_json("tunnel", "get", kind)
    assert isinstance(items, list), items
    return {str(i["tunnel"]): i for i in items}


def described(agent: Agent, kind: str, name: str) -> dict[str, Any]:
    """The API's view of one entrance or exit (cheaper than a CLI call inside polling loops)."""
    proto, _, short = name.partition("/")
    status, view = agent.api("GET", f"/api/meshes/{MESH}/apps/tunnel/{kind}/{proto}/{short}")
    assert status == 200, (status, view)
    assert isinstance(view, dict)
    return view


def agent_log(agent: Agent) -> str:
    status, body = agent.api("GET", "/api/log?lines=2000")
    assert status == 200, body
    return "\n".join(body["lines"])


def open_outbound(agent: Agent, name: str, *targets: int | str, extra: tuple[str, ...] = ()) -> None:
    addresses = [t if isinstance(t, str) else f"127.0.0.1:{t}" for t in targets]
    ok_line(agent.cli("tunnel", "open", "outbound", name, "--targets", *addresses, *extra))


def open_inbound(agent: Agent, name: str, *extra: str) -> int:
    port = free_port()
    ok_line(agent.cli("tunnel", "open", "inbound", name, "--listen", str(port), *extra))
    return port


def start_mesh(tmp: Path, *names: str) -> tuple[Hub, dict[str, Agent]]:
    """A hub and one agent per name, each joined to MESH as that name with the root permit."""
    hub, agents = start_hub_and_agents(tmp, names)
    join_all(MESH, [(agent, name) for name, agent in agents.items()], hub.permit)
    return hub, agents


# ------------------------------------------------------------------------------------------------ shared world


@dataclass
class World:
    hub: Hub
    home: Agent
    """root's entrance endpoint."""
    office: Agent
    """root's exit endpoint."""
    bob_laptop: Agent
    """endpoint of user bob."""
    bob_server: Agent
    """another endpoint of user bob."""
    servers: Servers
    echo: int
    check: int


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("tunnel")
    procs: list[Proc] = []
    servers = Servers()
    try:
        hub, agents = start_hub_and_agents(tmp, ("home", "office", "bob-laptop", "bob-server"))
        procs += [hub.proc, *(agent.proc for agent in agents.values())]
        home, office = agents["home"], agents["office"]
        join_all(MESH, [(home, "home"), (office, "office")], hub.permit)
        for name in ("bob-laptop", "bob-server"):
            permit = invite(home, agents[name], "bob", tmp / f"{name}.json")
            agents[name].join(MESH, name, permit)
        yield World(
            hub, home, office, agents["bob-laptop"], agents["bob-server"], servers, servers.echo(), servers.check()
        )
    finally:
        servers.close()
        for proc in reversed(procs):
            proc.stop()


# -------------------------------------------------------------------------------------------------------- tests


def test_tcp_is_byte_exact_both_ways_with_half_close(world: World) -> None:
    office, home = world.office, world.home
    open_outbound(office, "tcp/echo", world.echo)
    open_outbound(office, "tcp/check", world.check)
    echo_port = open_inbound(home, "tcp/echo")
    check_port = open_inbound(home, "tcp/check")

    # Echo: 4 MiB of random bytes up while they come back; the client's EOF reaches the server, whose EOF comes back.
    data = os.urandom(4 << 20)
    assert echo_roundtrip(echo_port, data) == data

    # Upload, half-close, then the answer arrives on the half-closed connection: both EOFs travel end to end.
    data = os.urandom(3 << 20)
    got = check_roundtrip(check_port, data)
    digest = hashlib.sha256(data).digest()
    assert got[:32] == digest, "the server did not receive the upload byte-exact"
    assert got[32:] == reply(digest), "the client did not receive the answer byte-exact"

    # The server ends its side first: the client reads to EOF, and its upload still goes through afterwards.
    greeter, uploads = world.servers.greeter()
    open_outbound(office, "tcp/greet", greeter)
    upload_after_eof(open_inbound(home, "tcp/greet"), uploads)

    # Several listen addresses feed one entrance, IPv6 loopback among them (where this host has it).
    open_outbound(office, "tcp/echo-multi", world.echo)
    v4, other = free_port(), free_port()
    v6 = free_port("::1") if socket.has_ipv6 and ipv6_loopback() else None
    listen = [str(v4), f"[::1]:{v6}" if v6 else str(other)]
    ok_line(home.cli("tunnel", "open", "inbound", "tcp/echo-multi", "--listen", *listen))
    assert echo_roundtrip(v4, b"over IPv4") == b"over IPv4"
    if v6:
        assert echo_roundtrip(v6, b"over IPv6", host="::1") == b"over IPv6"
    else:
        assert echo_roundtrip(other, b"second address") == b"second address"

    # Empty transfers and a one-byte transfer close cleanly too.
    assert echo_roundtrip(echo_port, b"") == b""
    assert echo_roundtrip(echo_port, b"x") == b"x"

    # What the command line shows about it.
    tunnels = {t["tunnel"]: t for t in home.cli_json("tunnel", "get", "tunnel")}
    assert [p["name"] for p in tunnels["tcp/echo"]["inbound"]] == ["home"]
    assert [p["name"] for p in tunnels["tcp/echo"]["outbound"]] == ["office"]
    table = ok_line(home.cli("tunnel", "get", "tunnel"))
    assert "tcp/echo" in table and "home" in table and "office" in table
    inbound = listed(home, "inbound")["tcp/echo"]
    assert inbound["listening"] is True and inbound["listen"] == [f"127.0.0.1:{echo_port}"]
    assert inbound["streams"] >= 3 and inbound["bytes_sent"] >= 4 << 20 and inbound["bytes_received"] >= 4 << 20
    text = ok_line(home.cli("tunnel", "describe", "inbound", "tcp/echo"))
    assert "listening:" in text and "bytes_sent:" in text and "MiB" in text
    outbound = office.cli_json("tunnel", "describe", "outbound", "tcp/check")
    assert outbound["targets"] == [f"127.0.0.1:{world.check}"] and outbound["streams"] == 1
    stats = {s["ep_name"]: s for s in home.cli_json("stats", "ep")}
    assert stats["office"]["bytes_sent"] >= 7 << 20 and stats["office"]["bytes_received"] >= 5 << 20
    status, metrics = home.api("GET", "/api/metrics")
    assert status == 200 and f'ztm_agent_app_streams{{mesh="{MESH}",app="tunnel",name="tcp/echo"}} 3' in metrics
    # Every relayed stream is sealed end to end, and it shows: the describe fields, stats, both ends' metrics.
    assert inbound["e2e"] == inbound["streams"] and "end to end" in inbound["encryption"], inbound
    assert stats["office"]["encryption"].startswith("e2e X25519"), stats["office"]
    status, exit_metrics = office.api("GET", "/api/metrics")
    # the exit began each opening from the first flight the hub put in the stream event (no extra round trip)
    first = re.search(rf'ztm_agent_e2e_first_in_event_total{{mesh="{MESH}"}} (\d+)', exit_metrics)
    assert status == 200 and first is not None and int(first.group(1)) >= 1, exit_metrics
    apps = home.cli_json("get", "app")
    assert ("tunnel", True, MESH) in [(a["name"], a["running"], a["mesh"]) for a in apps]  # among other built-ins
    assert "tunnel" in ok_line(home.cli("get", "app"))


def test_resets_travel_both_ways(world: World) -> None:
    """A reset is not a clean end: it reaches the other side as a reset, and both sides forget the connection."""
    recorder, ends = world.servers.recorder()
    open_outbound(world.office, "tcp/rst-client", recorder)
    open_outbound(world.office, "tcp/rst-target", world.servers.resetter())
    client_port = open_inbound(world.home, "tcp/rst-client")
    target_port = open_inbound(world.home, "tcp/rst-target")

    with socket.create_connection(("127.0.0.1", client_port), timeout=10) as sock:  # the client resets
        assert sock.recv(5) == b"ready"
        rst(sock)
    wait_until(lambda: ends, 5, "the target to see the client's end")
    with socket.create_connection(("127.0.0.1", client_port), timeout=10) as sock:  # the client ends cleanly
        assert sock.recv(5) == b"ready"
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""
    wait_until(lambda: len(ends) == 2, 5, "the target to see the client's second end")
    assert ends == ["reset", "eof"]

    with socket.create_connection(("127.0.0.1", target_port), timeout=10) as sock:  # the target resets
        sock.sendall(b"anything")
        with pytest.raises(ConnectionResetError):
            recv_all(sock)

    def forgotten() -> bool:
        return all(
            described(agent, kind, name)["active"] == 0
            for agent, kind in ((world.home, "inbound"), (world.office, "outbound"))
            for name in ("tcp/rst-client", "tcp/rst-target")
        )

    wait_until(forgotten, 5, "both sides to forget the reset connections")


def test_udp_datagrams_keep_their_boundaries(world: World) -> None:
    open_outbound(world.office, "udp/echo", world.servers.udp_echo())
    port = open_inbound(world.home, "udp/echo")
    rng = random.Random(7)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for sock in clients:
            sock.settimeout(5.0)
        for size in (1, 2, 100, 1400, 8000, 30000, 65000, 0):
            for i, sock in enumerate(clients):
                datagram = bytes([i]) * 2 + rng.randbytes(size)
                sock.sendto(datagram, ("127.0.0.1", port))
                got, _ = sock.recvfrom(1 << 17)
                assert got == datagram, f"client {i}: a {len(datagram)}-byte datagram came back as {len(got)} bytes"
        # A burst: every datagram comes back whole (loopback keeps them all; the order may differ).
        burst = [rng.randbytes(rng.randrange(1, 2000)) for _ in range(50)]
        for datagram in burst:
            clients[0].sendto(datagram, ("127.0.0.1", port))
        back = [clients[0].recvfrom(1 << 17)[0] for _ in burst]
        assert sorted(back) == sorted(burst)
    finally:
        for sock in clients:
            sock.close()
    assert listed(world.home, "inbound")["udp/echo"]["streams"] == 2  # one stream per client address


def test_hundreds_of_concurrent_connections(world: World) -> None:
    open_outbound(world.office, "tcp/many", world.echo)
    port = open_inbound(world.home, "tcp/many")
    count = 300
    peak: list[int] = []

    async def main() -> None:
        all_open = asyncio.Event()
        counted = asyncio.Event()
        opened = 0

        async def one(i: int) -> None:
            nonlocal opened
            first = os.urandom(1000)
            rest = os.urandom(20000 + i)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(first)
                assert await reader.readexactly(len(first)) == first
                opened += 1
                if opened == count:
                    all_open.set()
                await all_open.wait()  # every connection is open end to end at the same time
                await counted.wait()  # ... and stays open until the entrance has been asked how many it holds
                writer.write(rest)
                writer.write_eof()
                assert await reader.read() == rest
            finally:
                writer.close()

        async def watch() -> None:
            await all_open.wait()
            try:
                view = await asyncio.to_thread(described, world.home, "inbound", "tcp/many")
                peak.append(view["active"])
            finally:
                counted.set()

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count)), watch()), 45)

    asyncio.run(main())
    assert peak == [count], f"{peak} streams active while all {count} connections were open"
    wait_until(lambda: described(world.home, "inbound", "tcp/many")["active"] == 0, 10, "the streams to end")
    assert described(world.home, "inbound", "tcp/many")["streams"] == count


def test_exits_refuse_other_entrances_and_users(world: World) -> None:
    office = world.office
    open_outbound(office, "tcp/only-home", world.echo, extra=("--entrances", "home"))
    open_outbound(office, "tcp/only-root", world.echo, extra=("--users", "root"))
    home_ports = {name: open_inbound(world.home, name) for name in ("tcp/only-home", "tcp/only-root")}
    bob_ports = {name: open_inbound(world.bob_laptop, name) for name in ("tcp/only-home", "tcp/only-root")}

    for name, port in home_ports.items():  # the allowed entrance and user get through
        assert echo_roundtrip(port, b"allowed " + name.encode()) == b"allowed " + name.encode()
    for port in bob_ports.values():  # bob's endpoint, of another user, is closed at once
        closed_within(port, 2.0)

    def logged() -> bool:
        log = agent_log(office)
        return (
            "refused tcp/only-home from bob-laptop (user bob): endpoint 'bob-laptop' is not an allowed entrance" in log
            and "refused tcp/only-root from bob-laptop (user bob): user 'bob' is not allowed" in log
        )

    wait_until(logged, 5, "the exit to log both refusals")
    for name in home_ports:
        assert described(office, "outbound", name)["refused"] == 1
        assert described(world.bob_laptop, "inbound", name)["refused"] == 1
    only_home = listed(office, "outbound")["tcp/only-home"]  # stored as the id "home" named when configured
    assert [only_home["names"][ep] for ep in only_home["entrances"]] == ["home"]


@contextlib.contextmanager
def blackhole() -> Iterator[int]:
    """A loopback port where connecting hangs: a listener with a full accept queue (Linux drops further SYNs)."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = int(listener.getsockname()[1])
        filler.connect(("127.0.0.1", port))  # takes the one place of the accept queue, never accepted
        yield port


def test_round_robin_over_targets_and_failover_to_a_live_one(world: World) -> None:
    a, b = world.servers.who("target-a"), world.servers.who("target-b")
    dead = free_port()  # nothing listens there: connection refused
    open_outbound(world.office, "tcp/rr", a, b)
    open_outbound(world.office, "tcp/rr-dead", dead, a)
    rr = open_inbound(world.home, "tcp/rr")
    rr_dead = open_inbound(world.home, "tcp/rr-dead")
    seen = [who(rr) for _ in range(6)]
    assert sorted(seen) == ["target-a"] * 3 + ["target-b"] * 3
    assert all(x != y for x, y in itertools.pairwise(seen)), f"not round-robin: {seen}"
    assert [who(rr_dead) for _ in range(4)] == ["target-a"] * 4

    # A target that never answers (a firewall dropping SYNs) leaves time to try the next one before the hub gives
    # up on the exit (5 s): the first connection starts with the black hole and still reaches target-a.
    with blackhole() as hole:
        open_outbound(world.office, "tcp/rr-hole", hole, a)
        rr_hole = open_inbound(world.home, "tcp/rr-hole")
        start = time.monotonic()
        assert who(rr_hole, timeout=10) == "target-a"
        assert time.monotonic() - start < 4.5
        assert who(rr_hole) == "target-a"


def test_remote_configuration_by_the_owner_only(world: World) -> None:
    laptop, server, office = world.bob_laptop, world.bob_server, world.office
    # bob configures his other endpoint from his laptop: it is stored and used there.
    out = ok_line(laptop.cli("ep", "bob-server", "tunnel", "open", "outbound", "tcp/bob-web", "--targets",
                             f"127.0.0.1:{world.echo}"))  # fmt: skip
    assert "outbound tcp/bob-web on bob-server" in out
    assert listed(server, "outbound")["tcp/bob-web"]["targets"] == [f"127.0.0.1:{world.echo}"]
    remote_port = free_port()
    ok_line(laptop.cli("ep", "bob-server", "tunnel", "open", "inbound", "udp/bob-in", "--listen", str(remote_port)))
    assert listed(server, "inbound")["udp/bob-in"]["listen"] == [f"127.0.0.1:{remote_port}"]
    port = open_inbound(laptop, "tcp/bob-web")
    assert echo_roundtrip(port, b"through bob-server") == b"through bob-server"
    remote = laptop.cli_json("ep", "bob-server", "tunnel", "describe", "outbound", "tcp/bob-web")
    assert remote["streams"] == 1 and remote["kind"] == "outbound"
    assert "tcp/bob-web" in ok_line(laptop.cli("ep", "bob-server", "tunnel", "get", "outbound"))
    assert "udp/bob-in" in ok_line(laptop.cli("ep", "bob-server", "tunnel", "get", "inbound"))
    # root may look at (and configure) bob's endpoint only once bob allows it there.
    error = one_line_error(world.home.cli("ep", "bob-server", "tunnel", "get", "outbound", check=False))
    assert "ztm root-admin on" in error, error
    server.cli("root-admin", "on")
    assert "tcp/bob-web" in ok_line(world.home.cli("ep", "bob-server", "tunnel", "get", "outbound"))
    server.cli("root-admin", "off")
    ok_line(laptop.cli("ep", "bob-server", "tunnel", "close", "outbound", "tcp/bob-web"))
    ok_line(laptop.cli("ep", "bob-server", "tunnel", "close", "inbound", "udp/bob-in"))
    assert listed(server, "outbound") == {} and listed(server, "inbound") == {}

    # bob may not configure root's endpoint, nor look at it: refused with one line, nothing changes there.
    before = listed(office, "outbound")
    for argv in (
        ("open", "outbound", "tcp/evil", "--targets", "127.0.0.1:22"),
        ("open", "inbound", "tcp/evil", "--listen", "0.0.0.0:2222"),
        ("close", "outbound", "tcp/echo"),
        ("get", "outbound"),
    ):
        error = one_line_error(laptop.cli("ep", "office", "tunnel", *argv, check=False))
        assert "owner" in error and "root" in error, error
    assert listed(office, "outbound") == before
    assert listed(office, "inbound") == {}
    error = one_line_error(laptop.cli("ep", "nobody", "tunnel", "get", "outbound", check=False))
    assert "nobody" in error


def test_help(world: World) -> None:
    for argv in (("tunnel", "help"), ("help", "tunnel")):
        out = ok_line(world.home.cli(*argv))
        assert "open outbound tcp/NAME --targets" in out and "open inbound tcp/NAME --listen" in out, out
        assert "ztm tunnel open inbound tcp/web --listen 18080" in out


# ---------------------------------------------------------------------------------- worlds of their own (faults)


def test_configuration_survives_restarts_of_both_sides(tmp_path: Path) -> None:
    servers = Servers()
    try:
        echo = servers.echo()
        _hub, agents = start_mesh(tmp_path, "entrance", "exit")
        entrance, exit_ = agents["entrance"], agents["exit"]
        open_outbound(exit_, "tcp/keep", echo, extra=("--entrances", "entrance"))
        port = open_inbound(entrance, "tcp/keep", "--exits", "exit")
        open_outbound(exit_, "udp/keep", servers.udp_echo())
        taken = open_inbound(entrance, "tcp/taken")
        assert echo_roundtrip(port, b"before") == b"before"
        before = (listed(entrance, "inbound"), listed(exit_, "outbound"))

        restart_agent(exit_)
        entrance.proc.stop()
        squatter = socket.socket()  # while the entrance is down, someone else takes one of its ports
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        try:
            restart_agent(entrance)
            wait_until(lambda: "tunnel inbound/tcp/taken not restored" in agent_log(entrance), 10,
                       "the entrance to log that tcp/taken cannot listen")  # fmt: skip
        finally:
            squatter.close()

        def works() -> bool:
            return echo_roundtrip(port, b"after", timeout=5) == b"after"

        wait_until(works, 20, "a transfer through the restored tunnel")
        after = (listed(entrance, "inbound"), listed(exit_, "outbound"))
        config = ("tunnel", "listen", "exits", "targets", "entrances", "users")
        for old, new in zip(before, after, strict=True):
            assert {k: {f: v.get(f) for f in config} for k, v in old.items()} == {
                k: {f: v.get(f) for f in config} for k, v in new.items()
            }
        assert after[0]["tcp/keep"]["listening"] is True
        # The entrance that could not listen again is still listed, as not listening, and says why in the log.
        assert after[0]["tcp/taken"]["listening"] is False
        assert "not listening" in ok_line(entrance.cli("tunnel", "get", "inbound"))
        ok_line(entrance.cli("tunnel", "open", "inbound", "tcp/taken", "--listen", str(taken)))
        assert listed(entrance, "inbound")["tcp/taken"]["listening"] is True
    finally:
        servers.close()


def test_exit_down_closes_entrance_connections_promptly(tmp_path: Path) -> None:
    servers = Servers()
    try:
        echo = servers.echo()
        _hub, agents = start_mesh(tmp_path, "entrance", "exit")
        entrance, exit_ = agents["entrance"], agents["exit"]
        open_outbound(exit_, "tcp/down", echo)
        port = open_inbound(entrance, "tcp/down")
        live = socket.create_connection(("127.0.0.1", port), timeout=10)
        try:
            live.sendall(b"ping")
            assert live.recv(10) == b"ping"
            exit_.proc.kill9()
            start = time.monotonic()
            try:
                rest = recv_all(live)
            except ConnectionError:
                rest = b""
            except TimeoutError:
                raise AssertionError("a connection through the dead exit stayed open for 10 s") from None
            assert rest == b"" and time.monotonic() - start < 3.0, time.monotonic() - start
        finally:
            live.close()
        for _ in range(3):  # new connections: closed at once, never left hanging
            closed_within(port, 2.0)
        assert described(entrance, "inbound", "tcp/down")["refused"] >= 3
    finally:
        servers.close()


def test_failover_between_exits(tmp_path: Path) -> None:
    servers = Servers()
    try:
        _hub, agents = start_mesh(tmp_path, "entrance", "exit-1", "exit-2", "exit-3")
        entrance = agents["entrance"]
        for name in ("exit-1", "exit-2"):
            for tunnel in ("tcp/fo", "tcp/fo-ordered"):
                open_outbound(agents[name], tunnel, servers.who(name))
        for name in ("exit-2", "exit-3"):
            open_outbound(agents[name], "tcp/frozen", servers.who(name))
        roundrobin = open_inbound(entrance, "tcp/fo")
        ordered = open_inbound(entrance, "tcp/fo-ordered", "--exits", "exit-1", "exit-2")
        frozen = open_inbound(entrance, "tcp/frozen")
        assert sorted(who(roundrobin) for _ in range(4)) == ["exit-1", "exit-1", "exit-2", "exit-2"]
        assert [who(ordered) for _ in range(4)] == ["exit-1"] * 4, "--exits is an order of preference"

        # An exit agent stops: new connections go to the other exit at once.
        agents["exit-1"].proc.stop()
        for port in (roundrobin, ordered):
            start = time.monotonic()
            first = wait_until(lambda p=port: who_or_none(p), 2.0, "a new connection to succeed via exit-2")
            assert first == "exit-2" and time.monotonic() - start < 2.0
            assert [who(port) for _ in range(6)] == ["exit-2"] * 6

        # An exit freezes (still online at the hub): one connection waits for the hub to give up on it (5 s), the
        # following ones go to the other exit first.
        pid = agents["exit-3"].proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            assert [who(frozen, timeout=15) for _ in range(2)] == ["exit-2"] * 2
            start = time.monotonic()
            assert [who(frozen) for _ in range(6)] == ["exit-2"] * 6
            assert time.monotonic() - start < 2.0, "connections kept waiting for the frozen exit"
        finally:
            os.kill(pid, signal.SIGCONT)
    finally:
        servers.close()


def test_describe_and_close_errors(world: World) -> None:
    error = one_line_error(world.home.cli("tunnel", "describe", "inbound", "tcp/nothing", check=False))
    assert "no inbound tcp/nothing" in error
    error = one_line_error(world.home.cli("tunnel", "close", "outbound", "tcp/nothing", check=False))
    assert "no outbound tcp/nothing" in error
    port = open_inbound(world.home, "tcp/closing")
    ok_line(world.home.cli("tunnel", "close", "inbound", "tcp/closing"))
    assert "tcp/closing" not in listed(world.home, "inbound")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    busy = socket.socket()
    try:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        error = one_line_error(
            world.home.cli("tunnel", "open", "inbound", "tcp/busy", "--listen", str(taken), check=False)
        )
        assert "cannot listen" in error, error
    finally:
        busy.close()
    assert "tcp/busy" not in listed(world.home, "inbound")
    raw = json.dumps(world.home.cli_json("tunnel", "get", "outbound"))
    assert "tcp/nothing" not in raw
