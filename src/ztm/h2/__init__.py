"""`ztm.h2`: the asyncio HTTP/2-over-TLS transport between agents and hubs, built on the `h2` library.

An agent keeps one long-lived connection to its hub (TLS 1.3, client certificate, ALPN h2) and multiplexes on it
JSON calls (`Connection.request`), a server-to-client event stream, and bidirectional byte streams (CONNECT
tunnels). `serve()` is the server, `connect()` the client; both hand out `Connection` and `Stream` objects.
Flow control is end-to-end back-pressure: received bytes are credited to the peer only when the reader took them.

See `ztm.h2.connection` for what we do about h2's per-frame costs (its eager `repr(frame)` in particular).
"""

from ztm.h2.client import connect
from ztm.h2.connection import Connection
from ztm.h2.errors import ConnectionClosed, H2Error, StreamReset, error_name
from ztm.h2.server import Handler, serve
from ztm.h2.settings import H2Settings
from ztm.h2.stream import Stream

__all__ = [
    "Connection",
    "ConnectionClosed",
    "H2Error",
    "H2Settings",
    "Handler",
    "Stream",
    "StreamReset",
    "connect",
    "error_name",
    "serve",
]
