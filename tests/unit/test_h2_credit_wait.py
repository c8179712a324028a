"""ztm.h2 makes a stream that waits for flow-control credit visible (issue 18): per-stream and per-connection wait
times that include the wait in progress, a count of the streams waiting now, and a warning from the keepalive when
a stream has waited `credit_warn` seconds although the peer answers PINGs (then an info line when credit comes)."""

from __future__ import annotations

import asyncio
import logging
import os

import pytest
from h2_certs import h2_client, h2_server, poll, run

from ztm.h2 import Connection, H2Settings, Stream

pytestmark = pytest.mark.timeout(60)

MiB = 1 << 20


def test_a_stream_waiting_for_credit_is_counted_and_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    settings = H2Settings(stream_window=MiB, connection_window=4 * MiB)
    gate = asyncio.Event()
    data = os.urandom(3 * MiB)

    async def handler(stream: Stream, conn: Connection) -> None:
        await stream.respond(200)
        if stream.path == "/held":
            await gate.wait()  # reads nothing until the gate opens: the client's writer waits for credit
        total = 0
        while chunk := await stream.read():
            total += len(chunk)
        await stream.write(str(total).encode(), end_stream=True)

    async def main() -> None:
        async with (
            h2_server(handler, settings=settings) as srv,
            h2_client(srv.port, keepalive=0.1, keepalive_timeout=5.0) as conn,
        ):
            conn.credit_warn = 0.5
            held = await conn.open_stream("PUT", "/held")
            held.label = "tunnel tcp/held"
            writer = asyncio.create_task(held.write(data, end_stream=True))
            await poll(lambda: held.credit_waiting > 0)
            assert conn.waiting_for_credit == 1
            first = held.credit_wait
            await poll(lambda: held.credit_wait > first + 0.1)  # a wait in progress keeps growing
            assert conn.credit_wait >= held.credit_wait - 0.01

            free = await conn.open_stream("PUT", "/free")  # a stream that gets its credit is not reported
            await free.write(b"x" * 1000, end_stream=True)
            await free.response()
            assert await free.read_all() == b"1000"
            assert free.credit_wait == 0.0

            def warned() -> list[str]:
                return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

            await poll(lambda: warned(), timeout=10)
            (message,) = warned()  # once per wait, however many keepalive rounds pass
            assert f"stream {held.id} (tunnel tcp/held)" in message and "waited" in message, message
            assert "flow-control credit" in message and "PINGs" in message, message
            assert held.credit_wait >= 0.5

            gate.set()
            await asyncio.wait_for(writer, 10)
            await held.response()
            assert await held.read_all() == str(len(data)).encode()
            assert held.credit_waiting == 0.0 and conn.waiting_for_credit == 0
            waited = held.credit_wait
            assert waited >= 0.5 and conn.credit_wait >= waited
            await asyncio.sleep(0)
            assert held.credit_wait == waited  # finished waits no longer grow
            infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
            assert any(f"stream {held.id} (tunnel tcp/held)" in m and "got flow-control credit" in m for m in infos)
            assert len(warned()) == 1

    with caplog.at_level(logging.INFO, logger="ztm.h2"):
        run(main())
