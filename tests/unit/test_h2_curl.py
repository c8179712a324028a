"""Interoperability: an independent HTTP/2 client (curl with nghttp2) against the ztm.h2 server."""

from __future__ import annotations

import asyncio
import hashlib
import shutil

import pytest
from h2_certs import h2_server, pki, run

from ztm.h2 import Connection, Stream

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]


async def handler(stream: Stream, conn: Connection) -> None:
    body = await stream.read_all(limit=64 << 20)
    if stream.path == "/x":
        await stream.respond(200, [("content-type", "text/plain")])
        await stream.write(b"hello from ztm.h2\n", end_stream=True)
    elif stream.path == "/sha":
        await stream.respond(200)
        await stream.write(hashlib.sha256(body).hexdigest().encode(), end_stream=True)
    elif stream.path == "/big":
        await stream.respond(200)
        await stream.write(b"0123456789abcdef" * (1 << 20), end_stream=True)  # 16 MiB
    else:
        await stream.respond(404, end_stream=True)


async def curl(port: int, *args: str, cert: bool = True) -> tuple[int, bytes, bytes]:
    p = pki()
    argv = ["curl", "--silent", "--show-error", "--http2", "--cacert", str(p.ca), "--max-time", "20"]
    if cert:
        argv += ["--cert", str(p.client_cert), "--key", str(p.client_key)]
    proc = await asyncio.create_subprocess_exec(
        *argv, *args, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out, err


def test_curl_get_post_and_big_download() -> None:
    async def main() -> None:
        async with h2_server(handler) as srv:
            url = f"https://127.0.0.1:{srv.port}"
            code, out, err = await curl(srv.port, "--write-out", "|%{http_version}|%{http_code}", f"{url}/x")
            assert code == 0, err
            assert out == b"hello from ztm.h2\n|2|200"

            data = bytes(range(256)) * 4096  # 1 MiB upload
            path = pki().directory / "upload.bin"
            path.write_bytes(data)
            code, out, err = await curl(srv.port, "--data-binary", f"@{path}", f"{url}/sha")
            assert code == 0, err
            assert out == hashlib.sha256(data).hexdigest().encode()

            code, out, err = await curl(srv.port, f"{url}/big")
            assert code == 0, err
            assert out == b"0123456789abcdef" * (1 << 20)

            code, out, err = await curl(srv.port, "--write-out", "%{http_code}", f"{url}/nothing")
            assert (code, out) == (0, b"404")

    run(main())


def test_curl_without_client_certificate_is_refused() -> None:
    async def main() -> None:
        async with h2_server(handler) as srv:
            code, out, _ = await curl(srv.port, f"https://127.0.0.1:{srv.port}/x", cert=False)
            assert code != 0 and out == b""
            assert srv.connections == []

    run(main())
