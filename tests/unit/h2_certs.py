"""Test helpers for `ztm.h2`: a throwaway PKI made with `cryptography`, TLS contexts, and a small async harness.

`pki()` (cached for the session) writes to a temporary directory: a mesh CA (ECDSA P-256), a server certificate for
127.0.0.1/localhost, a client certificate, and a second CA with its own client certificate (to be rejected).
`run(coro, loop=...)` runs a coroutine on a fresh asyncio or uvloop event loop. `h2_server()` runs `ztm.h2.serve` on
a free loopback port and, on exit, closes every connection it accepted; `h2_client()` does the same for `connect`.
"""

from __future__ import annotations

import asyncio
import atexit
import datetime
import functools
import ipaddress
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ztm.h2 import Connection, H2Settings, Stream, connect, serve

T = TypeVar("T")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, cn: str, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    if server:
        san: list[x509.GeneralName] = [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        usage = ExtendedKeyUsageOID.SERVER_AUTH
    else:
        san = [x509.UniformResourceIdentifier(f"ztm://test/user/{cn}")]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


@dataclass
class Pki:
    directory: Path
    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path
    other_client_key: Path
    client_der: bytes
    server_contexts_made: list[int] = field(default_factory=lambda: [0])

    def server_context(self, *, client_ca: Path | None = None, alpn: bool = True) -> ssl.SSLContext:
        """TLS 1.3 server context requiring a client certificate of `client_ca` (the mesh CA by default)."""
        self.server_contexts_made[0] += 1
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.server_cert, self.server_key)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(client_ca or self.ca)
        if alpn:
            ctx.set_alpn_protocols(["h2"])
        return ctx

    def client_context(self, cert: str = "good") -> ssl.SSLContext:
        """TLS 1.3 client context trusting the mesh CA, with the good client cert, the other CA's, or none."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_verify_locations(self.ca)
        if cert == "good":
            ctx.load_cert_chain(self.client_cert, self.client_key)
        elif cert == "other":
            ctx.load_cert_chain(self.other_client_cert, self.other_client_key)
        return ctx


@functools.cache
def pki() -> Pki:
    directory = Path(tempfile.mkdtemp(prefix="ztm-h2-test-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    ca_key, ca_cert = _ca("ztm test CA")
    other_key, other_cert = _ca("other CA")
    server_key, server_cert = _leaf(ca_key, ca_cert, "hub", server=True)
    client_key, client_cert = _leaf(ca_key, ca_cert, "alice", server=False)
    oc_key, oc_cert = _leaf(other_key, other_cert, "mallory", server=False)

    def write(name: str, data: bytes) -> Path:
        path = directory / name
        path.write_bytes(data)
        return path

    pem = serialization.Encoding.PEM
    return Pki(
        directory=directory,
        ca=write("ca.pem", ca_cert.public_bytes(pem)),
        other_ca=write("other-ca.pem", other_cert.public_bytes(pem)),
        server_cert=write("server.pem", server_cert.public_bytes(pem)),
        server_key=write("server.key", _key_pem(server_key)),
        client_cert=write("client.pem", client_cert.public_bytes(pem)),
        client_key=write("client.key", _key_pem(client_key)),
        other_client_cert=write("other-client.pem", oc_cert.public_bytes(pem)),
        other_client_key=write("other-client.key", _key_pem(oc_key)),
        client_der=client_cert.public_bytes(serialization.Encoding.DER),
    )


def run(coro: Coroutine[Any, Any, T], loop: str = "asyncio") -> T:
    """Run `coro` on a new event loop: the default asyncio loop or uvloop."""
    if loop == "uvloop":
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coro)
    return asyncio.run(coro)


LOOPS = ["asyncio", "uvloop"]


@dataclass
class ServerInfo:
    port: int
    server: asyncio.Server
    connections: list[Connection]


@asynccontextmanager
async def h2_server(
    handler: Callable[[Stream, Connection], Awaitable[None]],
    *,
    on_connect: Callable[[Connection], Awaitable[bool]] | None = None,
    ssl_context: Callable[[], ssl.SSLContext] | None = None,
    settings: H2Settings | None = None,
    handshake_timeout: float = 5.0,
) -> AsyncIterator[ServerInfo]:
    """`serve` on 127.0.0.1:<free port>; every accepted connection is closed when the block exits."""
    connections: list[Connection] = []

    async def track(conn: Connection) -> bool:
        connections.append(conn)
        return True if on_connect is None else await on_connect(conn)

    server = await serve(
        handler,
        "127.0.0.1",
        0,
        ssl_context or pki().server_context,
        on_connect=track,
        settings=settings or H2Settings(),
        handshake_timeout=handshake_timeout,
    )
    info = ServerInfo(server.sockets[0].getsockname()[1], server, connections)
    try:
        yield info
    finally:
        server.close()
        for conn in connections:
            conn.close()
        for conn in connections:
            await asyncio.wait_for(conn.wait_closed(), 10)
        await server.wait_closed()


@asynccontextmanager
async def h2_client(port: int, *, cert: str = "good", **kwargs: Any) -> AsyncIterator[Connection]:
    """`connect` to 127.0.0.1:port with a client certificate; closed (and waited for) on exit."""
    conn = await connect("127.0.0.1", port, pki().client_context(cert), **kwargs)
    try:
        yield conn
    finally:
        conn.close()
        await asyncio.wait_for(conn.wait_closed(), 10)


async def poll(predicate: object, timeout: float = 5.0) -> None:
    """Wait (bounded) until predicate() is true."""
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)
