"""A direct channel ends when the peer's certificate does (issue 12, item 2: a certificate's lifetime bounds access,
on direct channels as on the hub). Real TLS on 127.0.0.1 with the stand-in sessions of test_direct.py."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path
from typing import Any

from test_direct import Ca, endpoint, run, serve

from ztm import pki


def _shorten(session: Any, seconds: float) -> float:
    """Give `session` an endpoint certificate (same key, id and user) that ends in `seconds`; returns its end."""
    d = session.files.dir
    old = pki.cert_from_pem((d / "ep.crt").read_text())
    ident = pki.identity_of(old)
    assert ident.ep_id is not None and ident.user is not None
    ca = session.ca
    cert = pki.issue_endpoint_cert(
        ca.key, ca.cert, user=ident.user, ep_id=ident.ep_id, public_key=pki.cert_public_key(old),
        now=dt.datetime.now(dt.UTC), ttl=dt.timedelta(seconds=seconds),
    )  # fmt: skip
    pem = pki.cert_to_pem(cert)
    (d / "ep.crt").write_text(pem)
    session.record.ep_cert = pem
    return cert.not_valid_after_utc.timestamp()


def test_a_direct_channel_is_closed_when_the_peers_certificate_expires(tmp_path: Path) -> None:
    async def main() -> None:
        mesh = Ca(pki.new_mesh_id())
        exit_, alice = endpoint(tmp_path, "exit", mesh), endpoint(tmp_path, "alice", mesh)
        alice.ca = mesh
        end = _shorten(alice, 3)
        for s in (exit_, alice):
            await s.direct.refresh_crl()
        exit_.peers[alice.record.ep_id] = {"name": "alice-laptop", "user": "alice"}
        server, address = await serve(exit_)
        try:
            live = await alice.direct.open(exit_.record.ep_id, address, "echo", "svc")
            assert len(exit_.direct.live) == 1, "the exit did not take alice's channel in while her cert was valid"
            await asyncio.wait_for(live.wait_closed(), end - time.time() + 2)
            assert time.time() >= end - 0.5, "the channel closed before alice's certificate expired"
            assert not exit_.direct.live
        finally:
            for s in (exit_, alice):
                s.direct.close()
            server.close()

    run(main())
