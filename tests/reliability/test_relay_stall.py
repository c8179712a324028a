"""Issue 18: a relayed stream must never stall for good after other streams were reset with data in flight, and a
stream that does wait for credit is visible (`ztm tunnel describe`, `/api/metrics`, a warning in the agent's log).

Real hub and agent processes on 127.0.0.1, a relayed TCP tunnel (entrance -> hub -> exit -> a local server), and
the pattern that stalled a 1 GiB transfer after iperf3 runs: first many connections whose server resets them
(SO_LINGER 0) while the client is still sending, so each of them ends with DATA in flight towards the exit and towards
the hub; then one long bulk transfer on the same tunnel, to a counting sink (reads an 8-byte length and that many
bytes, answers one byte) that counts what was *delivered*. The bulk transfer must finish byte-exact; if the delivered
count stops moving, the test fails at once, naming where it stopped (it stopped at one stream window, 16 MiB, before
the fix: the codec counted each DATA frame on a reset stream twice against the connection's in-flight bytes, and
`acknowledge()` capped later credit by that under-count, so the new stream's WINDOW_UPDATEs were swallowed).

Visibility: a target that accepts and reads nothing holds a transfer back (legitimately), so the entrance's stream
waits for credit; the entrance reports it while it lasts, warns once the wait passes `--credit-warn` (WARN seconds
here; 30 by default) with the hub alive, and counts the finished wait once the target reads again.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import Abort, Agent, free_port, join_all, start_hub_and_agents, wait_until
from ztm.config import AgentConfig
from ztm.h2.connection import CREDIT_WARN

pytestmark = pytest.mark.slow

MESH = "m"
RESETS = 24
"""Connections reset by the server while the client still sends (each leaves up to a stream window in flight)."""
RESET_AFTER = 2 << 20
"""Bytes the server reads on each of them before it resets the connection."""
BULK = 64 << 20
"""The long transfer afterwards: four stream windows (16 MiB each), so it needs credit back three times at least."""
WARN = 3.0
"""The entrance's `--credit-warn` (seconds): the warning is what is tested, not the default's length."""
STALL = 20.0
"""Seconds without a delivered byte that count as a stall (the whole transfer takes a few seconds when it works)."""


class Target:
    """The exit's target on one port: `mode` "reset" resets each connection after RESET_AFTER bytes; "count" is the
    counting sink (delivered bytes and their sha256 in `delivered` / `digest`); "hold" reads nothing until
    `release` is set, then counts like "count"."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = int(self.sock.getsockname()[1])
        self.mode = "reset"
        self.resets = 0
        self.delivered = 0
        self.digest = ""
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, name="stall-target", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            handler = {"reset": self._reset, "count": self._count, "hold": self._hold}[self.mode]
            threading.Thread(target=handler, args=(conn,), daemon=True).start()

    def _reset(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(60)
            got = 0
            while got < RESET_AFTER and (data := conn.recv(1 << 16)):
                got += len(data)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self._lock:
            self.resets += 1

    def _hold(self, conn: socket.socket) -> None:
        self.release.wait(300)
        self._count(conn)

    def _count(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            conn.settimeout(120)
            head = b""
            while len(head) < 8 and (data := conn.recv(8 - len(head))):
                head += data
            (size,) = struct.unpack("!Q", head)
            sha = hashlib.sha256()
            buf = bytearray(1 << 20)
            while self.delivered < size:
                n = conn.recv_into(buf, min(len(buf), size - self.delivered))
                if not n:
                    break
                sha.update(memoryview(buf)[:n])
                self.delivered += n
            self.digest = sha.hexdigest()
            conn.sendall(b"k")

    def close(self) -> None:
        self.release.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self._thread.join(5)


@pytest.fixture
def tunnel(tmp_path: Path) -> Iterator[tuple[Agent, Agent, Target, int]]:
    extra = {"entrance": ("--credit-warn", f"{WARN:g}")}
    hub, agents = start_hub_and_agents(tmp_path, ("exit", "entrance"), agent_extra=extra)
    exit_, entrance = agents["exit"], agents["entrance"]
    join_all(MESH, [(exit_, "exit"), (entrance, "entrance")], hub.permit)
    target = Target()
    try:
        port = free_port()
        exit_.cli("tunnel", "open", "outbound", "tcp/sink", "--targets", f"127.0.0.1:{target.port}")
        entrance.cli("tunnel", "open", "inbound", "tcp/sink", "--listen", str(port))
        yield entrance, exit_, target, port
    finally:
        target.close()


def _blast(port: int) -> None:
    """Send until the far end resets the connection (through the tunnel)."""
    chunk = b"\x5a" * (1 << 20)
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s, contextlib.suppress(OSError):
        for _ in range(64):
            s.sendall(chunk)


def pattern(size: int) -> bytes:
    block = hashlib.sha256(b"ztm stall").digest() * 32768  # 1 MiB, not all one byte
    return (block * (size // len(block) + 1))[:size]


def test_a_long_relayed_stream_after_resets_with_data_in_flight_never_stalls(
    tunnel: tuple[Agent, Agent, Target, int],
) -> None:
    _entrance, _exit, target, port = tunnel
    # 1. many connections reset by the server with data in flight (a few at a time, like iperf3 -P)
    for start in range(0, RESETS, 8):
        threads = [threading.Thread(target=_blast, args=(port,), daemon=True) for _ in range(start, start + 8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
            assert not t.is_alive(), "a connection to the resetting server did not end within 90s"
    wait_until(lambda: target.resets >= RESETS, 30, f"{RESETS} resets at the target")

    # 2. the counting sink on the same port, and one long transfer through the same tunnel
    target.mode = "count"
    data = pattern(BULK)
    answer: list[bytes] = []

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=STALL * 3) as s, contextlib.suppress(OSError):
            s.sendall(struct.pack("!Q", BULK))
            s.sendall(data)
            answer.append(s.recv(1))

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    last = [0, time.monotonic()]

    def finished() -> bool:
        delivered = target.delivered
        if delivered != last[0]:
            last[:] = [delivered, time.monotonic()]
        elif time.monotonic() - last[1] > STALL:
            raise Abort(f"stalled: {delivered:,} of {BULK:,} bytes delivered, none for {STALL:g}s")
        return bool(answer)

    wait_until(finished, 300, "the bulk transfer through the relay", interval=0.1)
    assert answer == [b"k"]
    assert target.delivered == BULK
    assert target.digest == hashlib.sha256(data).hexdigest(), "the delivered bytes differ from the sent ones"
    sender.join(10)


def _waits(agent: Agent) -> dict[str, int]:
    view = agent.cli_json("tunnel", "describe", "inbound", "tcp/sink")
    return {"ms": int(view["credit_wait_ms"]), "waiting": int(view["waiting_for_credit"])}


def _metric(agent: Agent, name: str) -> float:
    status, text = agent.api("GET", "/api/metrics")
    assert status == 200, text
    for line in str(text).splitlines():
        if line.startswith(f'{name}{{mesh="{MESH}"}} '):
            return float(line.rpartition(" ")[2])
    raise AssertionError(f"{name} missing from /api/metrics")


def _log(agent: Agent) -> str:
    status, body = agent.api("GET", "/api/log?lines=2000")
    assert status == 200, body
    return "\n".join(body["lines"])


def test_a_stream_waiting_for_credit_shows_in_describe_metrics_and_the_log(
    tunnel: tuple[Agent, Agent, Target, int],
) -> None:
    entrance, _exit, target, port = tunnel
    assert _waits(entrance) == {"ms": 0, "waiting": 0}
    target.mode = "hold"
    size = 96 << 20  # more than the windows (entrance -> hub, hub -> exit) and the socket buffers on the way
    data = pattern(size)
    answer: list[bytes] = []

    def send() -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=300) as s, contextlib.suppress(OSError):
            s.sendall(struct.pack("!Q", size))
            s.sendall(data)
            answer.append(s.recv(1))

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    first = wait_until(lambda: (w := _waits(entrance))["waiting"] == 1 and w, 60, "the entrance's stream waiting")
    wait_until(lambda: _waits(entrance)["ms"] > first["ms"] + 500, 30, "the wait in progress to grow in describe")
    assert _metric(entrance, "ztm_agent_hub_streams_waiting_for_credit") == 1
    wait_until(lambda: _metric(entrance, "ztm_agent_hub_credit_wait_seconds_total") > 1, 30, "the metric to grow")
    # the hub answers PINGs all along, so after WARN seconds (plus one keepalive round, 2 s) the agent warns
    warning = "tcp/sink) with"
    wait_until(lambda: warning in _log(entrance), WARN + 20, "the agent's warning about the waiting stream")
    line = next(x for x in _log(entrance).splitlines() if warning in x)
    assert "WARNING" in line and "waited" in line and "flow-control credit" in line, line

    target.release.set()
    wait_until(lambda: answer, 120, "the held transfer to finish once the target reads")
    assert answer == [b"k"] and target.delivered == size
    assert target.digest == hashlib.sha256(data).hexdigest()
    done = wait_until(lambda: (w := _waits(entrance))["waiting"] == 0 and w, 30, "no stream waiting any more")
    assert done["ms"] >= WARN * 1000  # the finished wait stays counted
    assert _metric(entrance, "ztm_agent_hub_streams_waiting_for_credit") == 0
    wait_until(lambda: "got flow-control credit" in _log(entrance), 30, "the agent's note that credit came")
    sender.join(10)


def test_the_credit_warning_defaults_to_the_connections_threshold() -> None:
    assert AgentConfig(data=Path("d")).credit_warn == CREDIT_WARN
