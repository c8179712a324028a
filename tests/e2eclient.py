"""End-to-end streams opened from a test, as a given agent's endpoint (for hostile-agent tests).

A hostile member holds its own endpoint certificate and key (the files in its agent's data directory) and may send
anything through the hub; since every app stream is sealed end to end (PROTOCOL.md section 11), it must first
complete the handshake with the target like a real agent does. `open_e2e` does that with the agent's own code
(`ztm.agent.e2e.MeshE2E`) on a raw hub connection, so a test can then send whatever bytes it likes inside;
`open_direct` does the same over a direct channel (mutual TLS straight to the target's `--direct` address).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Sequence
from pathlib import Path

from ztm import h2, pki
from ztm.agent.direct_outer import DirectConn, DirectOuter
from ztm.agent.e2e import MeshE2E
from ztm.agent.e2estream import E2EStream
from ztm.agent.early import EarlyData
from ztm.agent.punchmsg import SEEN_HEADER
from ztm.agent.tls import MeshFiles
from ztm.errors import from_json
from ztm.version import E2E_VERSION


def layer_of(files: MeshFiles, name: str = "test") -> MeshE2E:
    """The end-to-end layer of the endpoint whose files are `files` (its CA, certificate and key; no CRL)."""
    ca = pki.cert_from_pem((files.dir / "ca.pem").read_text())
    key = pki.key_from_pem((files.dir / "ep.key").read_text())
    pem = (files.dir / "ep.crt").read_text()
    layer = MeshE2E(name, pki.cert_mesh_id(ca), ca, key, lambda: pem)
    layer.revoke(frozenset())
    return layer


async def open_e2e(
    conn: h2.Connection,
    layer: MeshE2E,
    target_id: str,
    app: str,
    service: str,
    extra: Sequence[tuple[str, str]] = (),
) -> E2EStream:
    """An end-to-end stream to `app`/`service` on endpoint `target_id` through the hub behind `conn` (with `extra`
    headers on its CONNECT); its `hub_seen` is the hub's `ztm-seen` answer header, if any."""
    headers = [("ztm-app", app), ("ztm-service", service), ("ztm-e2e", E2E_VERSION), *extra]
    outer = await conn.open_stream("CONNECT", target_id, headers)
    seen: list[str | None] = []

    async def answered() -> None:
        status, answer = await asyncio.wait_for(outer.response(), 10)
        if status != 200:
            raise from_json(status, json.loads(await outer.read_all() or b"null"))
        seen.append(dict(answer).get(SEEN_HEADER))

    stream = await layer.open(outer, target_id, app, service, answered)
    stream.hub_seen = seen[0] if seen else None
    return stream


def direct_context(folder: Path) -> ssl.SSLContext:
    """A TLS client context with the endpoint certificate in `folder` (a hostile client: it trusts any server)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.load_cert_chain(folder / "ep.crt", folder / "ep.key")
    return context


async def dial_direct(folder: Path, address: str) -> DirectConn:
    """A TLS connection to the direct listener at `address`, as the endpoint whose files are in `folder`."""
    mesh_id = pki.cert_mesh_id(pki.cert_from_pem((folder / "ca.pem").read_text()))
    host, port = address.rsplit(":", 1)
    _transport, conn = await asyncio.wait_for(
        asyncio.get_running_loop().create_connection(
            lambda: DirectConn(server=False),
            host,
            int(port),
            ssl=direct_context(folder),
            server_hostname=f"{mesh_id}.ztm",
        ),
        10,
    )
    return conn


async def open_direct(
    conn: DirectConn, layer: MeshE2E, target_id: str, app: str, service: str, early: EarlyData | None = None
) -> E2EStream:
    """An end-to-end stream to `app`/`service` on endpoint `target_id` over the direct channel `conn` (with `early`
    data sent after the OPEN, as the tunnel app sends it)."""

    async def answered() -> None:
        return None

    return await layer.open(DirectOuter(conn), target_id, app, service, answered, early)
