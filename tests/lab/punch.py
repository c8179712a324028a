"""TCP simultaneous open with plain sockets, run inside a lab host (`Lab.popen`): the raw-socket proof of what each
NAT kind allows, without ztm.

    punch.py --port P --peer IP:PORT --name NAME [--listen] [--go FILE] [--duration 3] [--interval 0.05]

Binds local port P (SO_REUSEADDR + SO_REUSEPORT) and, with `--listen`, also listens on it (a second socket sharing
the port), prints `ready`, and once the file `--go` exists (so that two sides started by one test begin together
whatever their start-up took) it `connect()`s
from P to the peer's candidate `IP:PORT` again and again: an attempt that is refused, unreachable or not answered
within `--attempt-timeout` is closed and the next one starts `--interval` later, until `--duration` seconds have
passed. The first connection that completes (by connect, or by the listener's accept) carries one line each way:
`hello from NAME TOKEN`. Prints one line and exits 0 on success, 1 on failure:

    ok via=connect|accept local=IP:PORT remote=IP:PORT after=SECONDS attempts=N line=<the peer's line>
    fail attempts=N refused=N timeouts=N unreachable=N
"""

from __future__ import annotations

import argparse
import errno
import secrets
import selectors
import socket
import sys
import time
from pathlib import Path


def bound_socket(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("0.0.0.0", port))
    s.setblocking(False)
    return s


def hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected IP:PORT, got {text!r}")
    return host, int(port)


class Conn:
    """An established connection: our line is sent at once, then we read the peer's line up to its EOF."""

    def __init__(self, sock: socket.socket, via: str, hello: bytes) -> None:
        self.sock, self.via, self.data, self.done = sock, via, b"", False
        self.local, self.remote = "{}:{}".format(*sock.getsockname()), "?"
        try:
            self.remote = "{}:{}".format(*sock.getpeername())  # fails if a reset came already
            sock.settimeout(2.0)
            sock.sendall(hello)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.done = True
        sock.setblocking(False)

    def read(self) -> bool:
        """Read what is there; True at EOF (or error)."""
        if not self.done:
            try:
                chunk = self.sock.recv(4096)
            except BlockingIOError:
                return False
            except OSError:
                chunk = b""
            self.data += chunk
            self.done = not chunk
        return self.done

    @property
    def ok(self) -> bool:
        return self.done and self.data.endswith(b"\n")


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--peer", type=hostport, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--listen", action="store_true")
    ap.add_argument("--go", type=Path, help="wait for this file to exist before the first attempt")
    ap.add_argument("--duration", type=float, default=3.0)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--attempt-timeout", type=float, default=0.25)
    args = ap.parse_args(argv)
    hello = f"hello from {args.name} {secrets.token_hex(4)}\n".encode()

    sel = selectors.DefaultSelector()
    listener = None
    if args.listen:
        listener = bound_socket(args.port)
        listener.listen(16)
        sel.register(listener, selectors.EVENT_READ, "listener")
    print(f"ready port={args.port} listen={args.listen}", flush=True)
    waited_until = time.monotonic() + 120
    while args.go is not None and not args.go.exists():
        if time.monotonic() > waited_until:
            print(f"fail: {args.go} did not appear in 120 s", flush=True)
            return 1
        time.sleep(0.002)

    start = time.monotonic()
    deadline = start + args.duration
    attempt: socket.socket | None = None
    attempt_end = next_attempt = start
    counts = {"attempts": 0, "refused": 0, "timeouts": 0, "unreachable": 0}
    conns: list[Conn] = []
    winner: Conn | None = None
    winner_at = 0.0

    def end_attempt() -> None:
        nonlocal attempt, next_attempt
        assert attempt is not None
        sel.unregister(attempt)
        attempt.close()
        attempt = None
        next_attempt = time.monotonic() + args.interval

    while winner is None and time.monotonic() < deadline:
        now = time.monotonic()
        if attempt is None and all(c.done for c in conns) and now >= next_attempt:
            attempt = bound_socket(args.port)
            counts["attempts"] += 1
            attempt.connect_ex(args.peer)
            attempt_end = now + args.attempt_timeout
            sel.register(attempt, selectors.EVENT_WRITE, "attempt")
        wake = min(deadline, attempt_end if attempt else next_attempt)
        for key, _ in sel.select(max(0.0, min(wake - time.monotonic(), 0.05))):
            if key.data == "listener":
                assert listener is not None
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    continue
                conns.append(Conn(sock, "accept", hello))
                if not conns[-1].done:
                    sel.register(sock, selectors.EVENT_READ, conns[-1])
            elif key.data == "attempt":
                assert attempt is not None
                err = attempt.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == 0:
                    sock = attempt
                    sel.unregister(sock)
                    attempt = None
                    conns.append(Conn(sock, "connect", hello))
                    if not conns[-1].done:
                        sel.register(sock, selectors.EVENT_READ, conns[-1])
                else:
                    kind = {errno.ECONNREFUSED: "refused", errno.ETIMEDOUT: "timeouts"}.get(err, "unreachable")
                    counts[kind] += 1
                    end_attempt()
            else:
                conn: Conn = key.data
                if conn.read():
                    sel.unregister(conn.sock)
                    if conn.ok and winner is None:
                        winner, winner_at = conn, time.monotonic()
        if attempt is not None and time.monotonic() >= attempt_end:
            counts["timeouts"] += 1
            end_attempt()

    if winner is None:
        print("fail " + " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
        return 1
    line = winner.data.decode(errors="replace").strip()
    print(
        f"ok via={winner.via} local={winner.local} remote={winner.remote} after={winner_at - start:.3f} "
        f"attempts={counts['attempts']} line={line}",
        flush=True,
    )
    # Let the peer finish reading the other connections it may have (both sides' attempts can complete).
    grace = time.monotonic() + 1.0
    for conn in conns:
        while time.monotonic() < grace and not conn.read():
            time.sleep(0.01)
        conn.sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
