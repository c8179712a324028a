"""A hub client for tests that speak the wire protocol directly: a real agent's certificate files (from its data
directory, after a normal join) and `ztm.h2` on an event loop in a background thread, so synchronous tests (and
hypothesis) can make raw HTTP/2 calls: any method, path, headers and body bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from support import split_hostport
from ztm import h2
from ztm.agent.tls import MeshFiles

T = TypeVar("T")


class HubClient:
    """One HTTP/2 connection to the hub with the certificate files in `mesh_dir` (ca.pem, ep.crt, ep.key, ...)."""

    def __init__(self, address: str, mesh_dir: Path, *, user_cert: bool = False) -> None:
        self.address = address
        self.files = MeshFiles(mesh_dir)
        self._user_cert = user_cert
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="hub-client", daemon=True)
        self._thread.start()
        self.conn: h2.Connection = self.run(self._connect())

    async def _connect(self) -> h2.Connection:
        host, port = split_hostport(self.address)
        ctx = self.files.user_context() if self._user_cert else self.files.ep_context()
        return await h2.connect(host, port, ctx, timeout=10.0, keepalive=None)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = self.run(self._connect())

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Sequence[tuple[str, str]] = (),
        timeout: float = 30.0,
    ) -> tuple[int, Any]:  # fmt: skip
        """One request; returns (status, parsed JSON or raw bytes or None)."""

        async def call() -> tuple[int, bytes]:
            status, _headers, raw = await self.conn.request(method, path, body=body, headers=list(headers),
                                                            timeout=timeout)  # fmt: skip
            return status, raw

        status, raw = self.run(call(), timeout + 5)
        if not raw:
            return status, None
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw

    def json(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        return self.request(method, path, data, [("content-type", "application/json")] if data else [])

    def close(self) -> None:
        async def shut() -> None:
            self.conn.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.conn.wait_closed(), 5)
            await asyncio.sleep(0)  # let the transport's close callbacks run

        with contextlib.suppress(Exception):
            self.run(shut(), 10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self.loop.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
