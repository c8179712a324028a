"""An endpoint that speaks `ztm.e2e` over plain TCP, for the end-to-end attack tests (one process per endpoint).

`python e2e_peer.py responder DIR NAME` listens on a free loopback port (prints `listening PORT`) and, per
connection, runs a full handshake or a RESUME, reads one message up to END, prints `stream N from USER: TEXT` and
answers `ack:TEXT`; a refusal prints `refused REASON: MESSAGE`. `python e2e_peer.py initiator DIR NAME PORT EP_ID
TEXT STREAMS` makes a session to EP_ID through PORT, sends TEXT on the handshake stream and on STREAMS more streams
(each a new connection with RESUME), and prints each answer. DIR holds `ca.pem`, `NAME.pem`, `NAME.key`.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from ztm import pki
from ztm.e2e import (
    END,
    HELLO,
    RESUME,
    Channel,
    Credentials,
    E2EError,
    FrameReader,
    Initiator,
    Responder,
    Session,
    SessionStore,
    error_frame,
    parse_resume,
    resume_frame,
    unknown_frame,
)


def load(directory: str, name: str) -> Credentials:
    d = Path(directory)
    ca = pki.cert_from_pem((d / "ca.pem").read_text())
    return Credentials(
        mesh_id=pki.cert_mesh_id(ca),
        ca_cert=ca,
        cert=pki.cert_from_pem((d / f"{name}.pem").read_text()),
        key=pki.key_from_pem((d / f"{name}.key").read_text()),
        revoked=lambda serial: False,
    )


class Conn:
    """Frames, then records, from one socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader()

    def frame(self) -> tuple[int, bytes]:
        while (got := self.reader.next()) is None:
            data = self.sock.recv(65536)
            if not data:
                raise E2EError("truncated", "the stream ended in the handshake")
            self.reader.feed(data)
        return got

    def message(self, chan: Channel) -> bytes:
        """The DATA records up to END."""
        out: list[bytes] = []
        records = chan.feed(self.reader.take_rest())
        while True:
            for inner, payload in records:
                if inner == END:
                    return b"".join(out)
                out.append(payload)
            data = self.sock.recv(65536)
            if not data:
                raise E2EError("truncated", "the stream ended without END")
            records = chan.feed(data)


def serve_one(sock: socket.socket, creds: Credentials, store: SessionStore) -> None:
    conn = Conn(sock)
    ftype, frame = conn.frame()
    session: Session | None
    if ftype == HELLO:
        resp = Responder(creds)
        sock.sendall(resp.on_hello(frame))
        session = resp.on_auth(conn.frame()[1])
        store.add(session)
        n = 0
    elif ftype == RESUME:
        sid, n = parse_resume(frame)
        session = store.resume(sid, n, time.monotonic(), datetime.now(UTC))
        if session is None:
            sock.sendall(unknown_frame())
            print(f"unknown session {sid.hex()}", flush=True)
            return
    else:
        raise E2EError("malformed", f"a stream must start with HELLO or RESUME, not frame type {ftype}")
    chan = session.channel(n)
    text = conn.message(chan)
    print(f"stream {n} from {session.peer.user}: {text.decode()}", flush=True)
    sock.sendall(chan.seal_data(b"ack:" + text) + chan.seal(END))


def responder(directory: str, name: str) -> None:
    creds = load(directory, name)
    store = SessionStore()
    srv = socket.create_server(("127.0.0.1", 0))
    print(f"listening {srv.getsockname()[1]}", flush=True)
    while True:
        sock, _ = srv.accept()
        sock.settimeout(10)
        try:
            serve_one(sock, creds, store)
        except E2EError as e:
            print(f"refused {e.reason}: {e.message}", flush=True)
            with contextlib.suppress(OSError):
                sock.sendall(error_frame(e.message))
        except OSError as e:
            print(f"socket error: {e}", flush=True)
        finally:
            sock.close()


def initiator(directory: str, name: str, port: int, ep_id: str, text: str, streams: int) -> None:
    creds = load(directory, name)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        conn = Conn(sock)
        ini = Initiator(creds, ep_id)
        sock.sendall(ini.hello())
        auth = ini.on_hello_r(conn.frame()[1])
        assert ini.session is not None
        session = ini.session
        chan = session.channel(0)
        sock.sendall(auth + chan.seal_data(text.encode()) + chan.seal(END))
        print(f"answer 0: {conn.message(chan).decode()}", flush=True)
    for _ in range(streams):
        n = session.next_stream()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            chan = session.channel(n)
            sock.sendall(resume_frame(session.id, n) + chan.seal_data(f"{text} #{n}".encode()) + chan.seal(END))
            print(f"answer {n}: {Conn(sock).message(chan).decode()}", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    try:
        if sys.argv[1] == "responder":
            responder(sys.argv[2], sys.argv[3])
        else:
            initiator(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6], int(sys.argv[7]))
    except E2EError as err:
        print(f"refused {err.reason}: {err.message}", flush=True)
        sys.exit(1)
