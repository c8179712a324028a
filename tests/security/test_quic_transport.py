"""The QUIC exit of bench/p2p_transport.py (issue 15, item 2): aioquic 1.7.2 neither asks a client for a
certificate (a private, test-only flag) nor verifies the chain it gets, so a QUIC punched path built on it would
serve anyone. These tests start the bench's real `--role quic-exit` process in front of an echo server and connect
with aioquic clients: one with a certificate of the bench CA (served: the positive control), one with a certificate
of another CA, one without a certificate (both refused, nothing reaches the echo server). Skipped without aioquic
(`pip install -e '.[bench]'`).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("aioquic")

from aioquic.asyncio.client import connect
from aioquic.quic.configuration import QuicConfiguration
from bench.h2_transport import make_pki

from reliability.traffic import EchoServer
from support import Proc, base_env, free_port, stop_all, wait_until

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Exit:
    port: int
    pki: Path
    rogue: Path
    proc: Proc

    def log(self) -> str:
        return self.proc.log_path.read_text(errors="replace")


@pytest.fixture
def quic_exit(tmp_path: Path) -> Iterator[Exit]:
    pki, rogue = tmp_path / "pki", tmp_path / "rogue"
    pki.mkdir()
    rogue.mkdir()
    make_pki(pki)
    make_pki(rogue)  # another CA: its client certificate must not open a channel
    env = base_env()
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "src")])
    port = free_port()
    with EchoServer() as echo:
        argv = [sys.executable, "-m", "bench.p2p_transport", "--role", "quic-exit", "--port", str(port)]
        proc = Proc([*argv, "--target", str(echo.port), "--pki", str(pki)], env=env, cwd=REPO, name="quic-exit")
        try:
            wait_until(lambda: '"ready"' in proc.log_path.read_text(), 30, "the QUIC exit to listen")
            yield Exit(port, pki, rogue, proc)
        finally:
            stop_all([proc])


async def _echo_through(exit_: Exit, cert: tuple[Path, Path] | None) -> bytes:
    """Connect (trusting the real CA), send b"hello" on one stream and return what comes back before the stream or
    the connection ends (b"" when the exit refuses the client)."""
    config = QuicConfiguration(is_client=True, alpn_protocols=["ztm-bench"], server_name="127.0.0.1")
    config.load_verify_locations(str(exit_.pki / "ca.pem"))
    if cert is not None:
        config.load_cert_chain(str(cert[0]), str(cert[1]))
    async with connect("127.0.0.1", exit_.port, configuration=config) as client:
        reader, writer = await client.create_stream()
        writer.write(b"hello")
        writer.write_eof()
        return await asyncio.wait_for(reader.read(), 20)


def test_client_of_the_ca_is_served(quic_exit: Exit) -> None:
    got = asyncio.run(_echo_through(quic_exit, (quic_exit.pki / "client.pem", quic_exit.pki / "client.key")))
    assert got == b"hello"
    assert "refused" not in quic_exit.log()


def test_client_of_another_ca_is_refused(quic_exit: Exit) -> None:
    got = asyncio.run(_echo_through(quic_exit, (quic_exit.rogue / "client.pem", quic_exit.rogue / "client.key")))
    assert got == b"", "a client certificate of another CA opened a stream through the QUIC exit"
    wait_until(lambda: "refused a client: bad signature" in quic_exit.log(), 10, "the exit to log the refusal")


def test_client_without_certificate_is_refused(quic_exit: Exit) -> None:
    got = asyncio.run(_echo_through(quic_exit, None))
    assert got == b"", "a client without a certificate opened a stream through the QUIC exit"
    wait_until(lambda: "refused a client: the client presented no certificate" in quic_exit.log(), 10, "the refusal")
