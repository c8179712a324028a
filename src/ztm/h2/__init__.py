"""`ztm.h2`: the asyncio HTTP/2-over-TLS transport between agents and hubs, on our own sans-IO HTTP/2 codec.

An agent keeps one long-lived connection to its hub (TLS 1.3, client certificate, ALPN h2) and multiplexes on it
JSON calls (`Connection.request`), a server-to-client event stream, and bidirectional byte streams (CONNECT
tunnels). `serve()` is the server, `connect()` the client; both hand out `Connection` and `Stream` objects.
Flow control is end-to-end back-pressure: received bytes are credited to the peer only when the reader took them.

Layers: `frames` (wire layout), `fields` (header rules), `events` and `codec` (the sans-IO protocol engine: bytes in,
events out, for the HTTP/2 subset we use) under `connection` and `stream` (asyncio I/O, flow control end to end).
See `ztm.h2.codec` for what it enforces and `ztm.h2.connection` for the copy-free hot path.
"""

from ztm.h2.client import connect
from ztm.h2.connection import Connection
from ztm.h2.errors import ConnectionClosed, H2Error, NoAnswer, StreamReset, error_name
from ztm.h2.server import Handler, serve
from ztm.h2.settings import H2Settings
from ztm.h2.stream import Stream, StreamSink

__all__ = [
    "Connection",
    "ConnectionClosed",
    "H2Error",
    "H2Settings",
    "Handler",
    "NoAnswer",
    "Stream",
    "StreamReset",
    "StreamSink",
    "connect",
    "error_name",
    "serve",
]
