"""End-to-end encryption and authentication of relayed app streams, between the two endpoints (sans-IO).

The hub relays opaque bytes: each app stream is protected by keys only the two endpoints hold. A signed
Diffie-Hellman handshake (SIGMA-I; `handshake`) makes a `Session` per pair of endpoints; each stream on it gets its
own keys (`Session.channel`) and a `Channel` of AES-GCM records (`record`); an endpoint keeps its sessions in a
`SessionStore` (`store`); frames are in `frames`; every refusal is an `E2EError` (`errors`). The protocol is
PROTOCOL.md section 11.

How an agent drives it, per outer stream. Initiator: `store.for_peer(ep)` gives a usable session -> send
`resume_frame(s.id, n := s.next_stream())` and records of `s.channel(n)`; else `Initiator(creds, ep)`: send
`hello()`, read HELLO_R with a `FrameReader`, send `on_hello_r(frame)` (AUTH) and records of
`session.channel(0)`, `store.add(session)`. Responder: the first frame is HELLO (`Responder(creds)`: answer
`on_hello`, then `on_auth` gives the session, stream 0) or RESUME (`store.resume(...)`: the session with the stream
admitted, or None: answer `unknown_frame()`). Then `channel.feed(reader.take_rest())` and `feed` every later chunk.
On `E2EError` before keys exist, send `error_frame(e.message)`; after, just end the stream.
"""

from ztm.e2e.errors import REASONS, E2EError
from ztm.e2e.frames import (
    AUTH,
    ERROR,
    HELLO,
    HELLO_R,
    MAX_HANDSHAKE_BODY,
    MAX_PAYLOAD,
    RECORD,
    RESUME,
    UNKNOWN,
    FrameReader,
    encode,
    error_frame,
    parse_error,
    parse_resume,
    resume_frame,
    unknown_frame,
)
from ztm.e2e.handshake import Credentials, Initiator, Peer, Responder, check_peer_cert
from ztm.e2e.record import DATA, END, KEY_UPDATE, KEY_UPDATE_AFTER, OK, OPEN, OVERHEAD, REFUSE, Channel
from ztm.e2e.session import MAX_STREAMS, REPLAY_WINDOW, SESSION_MAX_AGE, SUITE, Session
from ztm.e2e.store import MAX_PER_PEER, MAX_SESSIONS, SessionStore

__all__ = [
    "AUTH",
    "DATA",
    "END",
    "ERROR",
    "HELLO",
    "HELLO_R",
    "KEY_UPDATE",
    "KEY_UPDATE_AFTER",
    "MAX_HANDSHAKE_BODY",
    "MAX_PAYLOAD",
    "MAX_PER_PEER",
    "MAX_SESSIONS",
    "MAX_STREAMS",
    "OK",
    "OPEN",
    "OVERHEAD",
    "REASONS",
    "RECORD",
    "REFUSE",
    "REPLAY_WINDOW",
    "RESUME",
    "SESSION_MAX_AGE",
    "SUITE",
    "UNKNOWN",
    "Channel",
    "Credentials",
    "E2EError",
    "FrameReader",
    "Initiator",
    "Peer",
    "Responder",
    "Session",
    "SessionStore",
    "check_peer_cert",
    "encode",
    "error_frame",
    "parse_error",
    "parse_resume",
    "resume_frame",
    "unknown_frame",
]
