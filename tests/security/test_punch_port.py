"""Who may take a punched connection: only the peer the punch was for, proven by its certificate (real TLS).

While a punch runs, its port listens, and on a host without NAT anyone may connect to it. The channel is used only
after the TLS handshake proves the peer is the endpoint that asked for the punch: another member with a valid
certificate of the mesh (carol), racing to the port, is refused and counted; alice, the caller, gets the channel.
The sessions are stand-ins (tests/unit/test_direct.py); the TLS, the CRL and the checks are the product's.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from typing import Any

from e2eclient import direct_context
from unit.test_direct import Ca, endpoint, run
from ztm import pki


async def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """Two ends of one TCP connection on loopback (the punched connection, as each side holds it)."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.socket()
    client.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(client, listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    server.setblocking(False)
    return server, client


async def handshake_as(folder: Path, sock: socket.socket) -> None:
    """The TLS client side of a punched connection, with the certificate in `folder` (an entrance)."""
    loop = asyncio.get_running_loop()
    context: ssl.SSLContext = direct_context(folder)
    try:
        transport, _ = await loop.create_connection(asyncio.Protocol, sock=sock, ssl=context,
                                                    server_hostname="x.ztm")  # fmt: skip
    except (OSError, ssl.SSLError):
        return
    await asyncio.sleep(0.2)
    transport.close()


def test_only_the_caller_takes_the_punched_connection(tmp_path: Path) -> None:
    async def main() -> None:
        mesh = Ca(pki.new_mesh_id())
        exit_ = endpoint(tmp_path, "exit", mesh)
        alice = endpoint(tmp_path, "alice", mesh)
        carol = endpoint(tmp_path, "carol", mesh)
        for s in (exit_, alice, carol):
            await s.direct.refresh_crl()
        direct: Any = exit_.direct
        done = asyncio.Event()
        # carol, a member, reaches the port first
        ours, theirs = await tcp_pair()
        await asyncio.gather(
            direct._tls_server(ours, alice.record.ep_id, "punched", done),
            handshake_as(carol.files.dir, theirs),
        )
        assert not done.is_set() and direct.counters["punch_wrong_peer"] == 1
        assert not direct._waiting, "carol's connection was kept"
        # alice, who asked for the punch
        ours, theirs = await tcp_pair()
        await asyncio.gather(
            direct._tls_server(ours, alice.record.ep_id, "punched", done),
            handshake_as(alice.files.dir, theirs),
        )
        assert done.is_set() and direct.counters["punch_accepted"] == 1
        direct.close()

    run(main())
