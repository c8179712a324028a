"""One ping's user-space work at each agent of network mode, in one process with the real classes (issue 17's ping
target): a stable A/B where the lab's RTTs are noisy.

`home`: the echo request is read from the TUN after a silence, sealed and written to the direct channel; the reply's
record arrives and is written to the TUN. `workplace`: the request's record arrives and is written to the TUN, and
the reply the kernel made is read and sent: by the receive callback itself where the code does that, else by the
loop's TUN callback (called here, as the loop would). The TUN is a SOCK_SEQPACKET pair (one packet per read, EAGAIN
when empty); the channel's TLS transport a recorder (TLS, the kernel and the event loop's own work are not counted).

Prints CPU per ping (process time) and with `--opcodes` the bytecodes per ping by function. For instruction counts,
run it under callgrind at two sizes and take the difference per ping (start-up cancels out):

    PYTHONPATH=src valgrind --tool=callgrind .venv/bin/python -m bench.net_ping_path --pings 500 --role home
    PYTHONPATH=src valgrind --tool=callgrind .venv/bin/python -m bench.net_ping_path --pings 1500 --role home

and the same with `PYTHONPATH=<git archive of REV>/src` for the baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import socket
import sys
import time
import types
from typing import Any

from ztm.agent.direct_outer import DirectConn, DirectOuter
from ztm.agent.e2estream import E2EStream
from ztm.apps.net import app as app_mod
from ztm.apps.net import tun as tun_mod
from ztm.apps.net.frames import frame
from ztm.apps.net.sender import PeerSender
from ztm.e2e.record import DATA, Channel

ME, PEER = bytes([100, 64, 0, 2]), bytes([100, 64, 0, 3])


def echo(src: bytes, dst: bytes, kind: int) -> bytes:
    """A vnet header and an 84-byte ICMP echo (checksums are not checked on this path)."""
    header = bytes.fromhex("450000540001400040010000") + src + dst
    return bytes(10) + header + bytes([kind, 0, 0, 0, 0, 1, 0, 1]) + bytes(56)


class Recorder:
    """What `DirectConn` uses of a TLS transport; counts writes."""

    def __init__(self) -> None:
        self.writes = 0

    def write(self, data: bytes) -> None:
        self.writes += 1

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...

    def is_closing(self) -> bool:
        return False

    def set_write_buffer_limits(self, high: int) -> None: ...

    def abort(self) -> None: ...

    def get_extra_info(self, name: str) -> Any:
        return None


class Gate:
    policy = None
    version = 0

    def allow_ip(self, caller: object, detail: str) -> str | None:
        return None


async def model(pings: int, role: str, opcodes: bool) -> None:
    k1, k2 = os.urandom(16), os.urandom(16)
    peers = {"B": {"name": "b", "mesh_ip": "100.64.0.3", "online": True}}
    net = types.SimpleNamespace(accept_routes=False, tun=True)
    session = types.SimpleNamespace(me={"mesh_ip": "100.64.0.2"}, peers=peers, gate=Gate(), net=net,
                                    mesh_ranges=["100.64.0.0/10"])  # fmt: skip
    app = app_mod.NetApp(types.SimpleNamespace(session=session, mesh="m"))
    app.running = True
    app._update_table()
    tun_side, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    tun_side.setblocking(False)
    app.device = tun_mod.TunDevice(tun_side.fileno(), "t0", 0)
    out_conn, out = DirectConn(server=False), Recorder()
    out_conn.connection_made(out)  # type: ignore[arg-type]
    stream = E2EStream(DirectOuter(out_conn), Channel(k1, k2), None, suite="x", session_id=b"",  # type: ignore[arg-type]
                       on_failure=lambda e: None)  # fmt: skip
    stream.path = "punched"
    sender = PeerSender(app, "B", "b")
    sender._use(stream)
    app.senders["B"] = sender
    in_conn = DirectConn(server=True)
    in_conn.connection_made(Recorder())  # type: ignore[arg-type]
    incoming = E2EStream(DirectOuter(in_conn), Channel(k2, k1), None, suite="x", session_id=b"",  # type: ignore[arg-type]
                         on_failure=lambda e: None)  # fmt: skip
    app._callers["B"] = types.SimpleNamespace(ep_id="B", name="b")  # type: ignore[assignment]
    incoming.start(b"")
    incoming.set_sink(app_mod._Receiver(app, "B", incoming))
    peer = Channel(k1, k2)
    records = [peer.seal(DATA, frame(echo(PEER, ME, 0))) for _ in range(pings)]
    request = echo(ME, PEER, 8)
    reads_back = hasattr(tun_mod, "read_limit")  # the code reads the TUN after a delivery itself
    counts: collections.Counter[str] = collections.Counter()

    def trace(frame_: Any, event: str, arg: Any) -> Any:
        frame_.f_trace_opcodes = True
        if event == "opcode":
            code = frame_.f_code
            counts[f"{code.co_filename.rpartition('/src/')[2]}:{code.co_name}"] += 1
        return trace

    if opcodes:
        sys.settrace(trace)
    started = time.process_time()
    for record in records:
        app._last_read = -1.0  # a silence before each ping (the bench pings every 10 ms)
        if role == "home":
            kernel.send(request)  # ping writes its request
            app._readable()  # the loop's TUN callback
            in_conn.data_received(record)  # the reply's record
            kernel.recv(70000)  # ping reads the reply
        else:
            kernel.send(request)  # the reply the kernel makes (queued first: the same reads follow)
            in_conn.data_received(record)  # the request's record, written to the TUN
            kernel.recv(70000)
            if not reads_back:
                app._readable()  # the loop's next turn
    used = time.process_time() - started
    sys.settrace(None)
    assert out.writes == pings and app.counters["ip:packets_in"] == pings, (out.writes, app.counters)
    print(f"{role}: {1e6 * used / pings:.2f} us CPU per ping" + (" (traced)" if opcodes else ""))
    if opcodes:
        print(f"bytecodes per ping: {sum(counts.values()) / pings:.0f}")
        for name, n in counts.most_common(25):
            print(f"{n / pings:8.1f}  {name}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pings", type=int, default=20000, help="pings to model (default %(default)s)")
    parser.add_argument("--role", choices=("home", "workplace"), default="workplace")
    parser.add_argument("--opcodes", action="store_true", help="count bytecodes per function (slow)")
    args = parser.parse_args(argv)
    asyncio.run(model(args.pings, args.role, args.opcodes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
