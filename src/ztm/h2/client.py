"""The HTTP/2-over-TLS client: `connect(host, port, ssl_context)`.

`connect` opens TCP, runs TLS with ALPN `h2` and then waits for the server's first SETTINGS frame before returning:
with TLS 1.3 a server rejects a client certificate only after the client considers the handshake done, so waiting
for the server's preface is what turns "certificate refused" (or `on_connect` refusing us) into an error here rather
than on the first request. Every failure is an `H2Error` with a one-line message (refused, timeout, DNS, TLS reason,
no HTTP/2). A keepalive task sends a PING every `keepalive` seconds and closes the connection when no ACK arrives
within `keepalive_timeout`, which fails every open stream with `ConnectionClosed`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl

from ztm.h2.connection import Connection
from ztm.h2.errors import H2Error, tls_error_message
from ztm.h2.settings import H2Settings


def _label(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def connect(
    host: str,
    port: int,
    ssl_context: ssl.SSLContext,
    *,
    server_hostname: str | None = None,
    timeout: float = 10.0,
    settings: H2Settings = H2Settings(),  # noqa: B008 (frozen dataclass)
    keepalive: float | None = 15.0,
    keepalive_timeout: float = 10.0,
    sock: socket.socket | None = None,
) -> Connection:
    """Connect to an HTTP/2-over-TLS server; `timeout` covers TCP, TLS and the server's HTTP/2 preface.

    ALPN `h2` is set on `ssl_context`. Raises `H2Error` with a one-line message on any failure. With `sock` (a
    non-blocking socket, bound or not), TCP connects from it to host:port first (a punch needs its own local port).
    """
    loop = asyncio.get_running_loop()
    label = _label(host, port)
    ssl_context.set_alpn_protocols(["h2"])
    conn = Connection(is_client=True, settings=settings, label=label)
    try:
        async with asyncio.timeout(timeout):
            if sock is None:
                await loop.create_connection(lambda: conn, host, port, ssl=ssl_context, server_hostname=server_hostname)
            else:
                await loop.sock_connect(sock, (host, port))
                name = server_hostname if server_hostname is not None else host  # uvloop needs one with `sock`
                await loop.create_connection(lambda: conn, sock=sock, ssl=ssl_context, server_hostname=name)
            await conn._wait_ready()
    except TimeoutError:
        conn._close("timed out while connecting", goaway=False, abort=True)
        raise H2Error(f"no answer from {label} within {timeout:g}s") from None
    except H2Error:
        conn._close("failed to connect", goaway=False, abort=True)
        raise
    except ConnectionRefusedError:
        raise H2Error(f"connection refused by {label}") from None
    except socket.gaierror as exc:
        raise H2Error(f"cannot resolve {host}: {exc.strerror or exc}") from None
    except ssl.SSLError as exc:
        raise H2Error(tls_error_message(label, exc)) from None
    except OSError as exc:
        raise H2Error(f"cannot connect to {label}: {exc.strerror or exc or type(exc).__name__}") from exc
    if keepalive:
        conn._start_keepalive(keepalive, keepalive_timeout)
    return conn
