"""One sender per peer: the packets the TUN gave for that peer, queued (bounded: a full queue drops, the TUN reader
never waits) and written in batches to one `ip` stream opened lazily, direct first (`open_stream_direct_first`).
A stream that went through the hub is replaced by one over a direct channel once one is pooled (checked every
`UPGRADE_EVERY` seconds, between two writes); a stream that fails is opened again at the next packet, after
`RETRY_AFTER` seconds when opening failed (packets meanwhile are dropped and counted)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ztm import h2
from ztm.agent.e2estream import E2EStream
from ztm.aio import spawn
from ztm.apps import paths
from ztm.apps.net.frames import SendQueue, frame
from ztm.errors import ZtmError

if TYPE_CHECKING:
    from ztm.apps.net.app import NetApp

log = logging.getLogger("ztm.agent.net")

UPGRADE_EVERY = 1.0
RETRY_AFTER = 1.0
SERVICE = "ip"


class PeerSender:
    """Packets for one peer (`put`), carried by one stream at a time."""

    def __init__(self, app: NetApp, ep_id: str, name: str) -> None:
        self.app = app
        self.ep_id = ep_id
        self.name = name
        self.queue = SendQueue()
        self.stream: E2EStream | None = None
        self.path: str | None = None
        """The current stream's path ("relay", "direct", "lan", "punched"), None when there is none."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._next_open = 0.0
        self._upgrade_due = False
        self._timer: asyncio.TimerHandle | None = None
        self._busy = False
        """The writer task is opening a stream or waiting in a write: `kick` leaves the queue to it."""

    def put(self, packet: bytes) -> bool:
        """Queue one packet from the TUN (vnet header and IP packet); False when dropped (counted). `kick` sends."""
        counters = self.app.counters
        if self.stream is None and time.monotonic() < self._next_open:
            counters["unreachable:dropped"] += 1
            return False
        if not self.queue.put(packet):
            counters["queue-full:dropped"] += 1
            return False
        return True

    def send_now(self, packet: bytes) -> bool:
        """Write one packet's frame at once, without the queue, when nothing is queued and the stream is up and
        idle (a lone packet: a ping, a keystroke); False (nothing done) when the caller must `put` and `kick`."""
        stream = self.stream
        if self._busy or stream is None or self.queue or self._upgrade_due or stream.closed:
            return False
        data = frame(packet)
        try:
            sent = stream.write_nowait(data)
        except h2.H2Error:
            return False  # `put` and `kick` meet the error again, and the writer task handles it
        if sent < len(data):  # the windows took part of it: the rest goes first, as `kick` does
            self.queue.push_front(data[sent:])
            self.kick()
        return True

    def kick(self) -> None:
        """Send what was queued: at once, in one write, when the stream is up, idle and its windows take it (no task
        switch: the latency of a ping); else (or the rest) by the writer task."""
        stream = self.stream
        if not self._busy and stream is not None and not stream.closed and not self._upgrade_due:
            data = self.queue.take()
            try:
                sent = stream.write_nowait(data)
            except h2.H2Error:
                sent = 0
            if sent < len(data):
                self.queue.push_front(data[sent:])
            if not self.queue:
                return
        if self._task is None:
            self._task = spawn(self._run(), name=f"net-send-{self.ep_id}")
        self._wake.set()

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._busy = True
                try:
                    await self._drain()
                finally:
                    self._busy = False
        except asyncio.CancelledError:
            self._drop_stream()
            raise

    async def _drain(self) -> None:
        if self._upgrade_due:
            self._upgrade_due = False
            if self.stream is not None and self.stream.path == "relay":
                await self._upgrade()
        while self.queue:
            stream = await self._stream()
            if stream is None:
                self.app.counters["unreachable:dropped"] += self.queue.clear()
                return
            data = self.queue.take()
            try:
                await stream.write(data)
            except (h2.H2Error, ZtmError, OSError) as exc:
                log.info("mesh %s: the ip stream to %s ended: %s", self.app.ctx.mesh, self.name, exc)
                self._drop_stream()
                self.app.counters["stream-lost:dropped"] += 1

    async def _stream(self) -> E2EStream | None:
        """The stream to use now: the current one, a direct one replacing a relayed one when a channel is pooled,
        or a new one; None when none can be opened (the peer is away, or refuses)."""
        stream = self.stream
        now = time.monotonic()
        if stream is not None and not stream.closed:
            return stream
        self._drop_stream()
        if now < self._next_open:
            return None
        address = await self.app.direct_address(self.ep_id)
        try:
            stream = await self.app.ctx.open_stream_direct_first(self.ep_id, SERVICE, address, self._fell_back)
        except (ZtmError, h2.H2Error, TimeoutError) as exc:
            self._next_open = time.monotonic() + RETRY_AFTER
            message = exc.message if isinstance(exc, ZtmError) else str(exc)
            log.info("mesh %s: no ip stream to %s: %s", self.app.ctx.mesh, self.name, message)
            return None
        self._use(stream)
        return stream

    def _fell_back(self, _why: str) -> None:
        self.app.counters[f"{self.name}:fallbacks"] += 1

    async def _upgrade(self) -> None:
        """On the relay: move to a direct channel if one is pooled, else get one ready in the background."""
        direct = self.app.ctx.session.direct
        address = await self.app.direct_address(self.ep_id)
        if not direct.pooled(self.ep_id):
            direct.prepare(self.ep_id, address)
            return
        try:
            stream = await direct.open(self.ep_id, address, self.app.name, SERVICE)
        except Exception as exc:  # DirectUnreachable, a refusal: stay on the relay
            log.info("mesh %s: ip stream to %s stays on the relay: %s", self.app.ctx.mesh, self.name, exc)
            return
        old = self.stream
        self._use(stream)
        if old is not None:
            with contextlib.suppress(h2.H2Error):
                await old.end()
        log.info("mesh %s: ip stream to %s moved to the %s path", self.app.ctx.mesh, self.name, stream.path)

    def _use(self, stream: E2EStream) -> None:
        self.stream = stream
        self.path = stream.path
        paths.count(self.app.counters, self.name, stream.path)
        stream.set_sink(_Ignore(lambda: self._ended(stream)))
        self._arm()

    def _arm(self) -> None:
        """While the stream goes through the hub: every `UPGRADE_EVERY` seconds, the writer looks for a direct
        channel (between two writes, so that frames never straddle two streams)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.stream is not None and self.stream.path == "relay":
            self._timer = asyncio.get_running_loop().call_later(UPGRADE_EVERY, self._due)

    def _due(self) -> None:
        self._timer = None
        if self.stream is None or self.stream.path != "relay":
            return
        self._upgrade_due = True
        if self._task is None:
            self._task = spawn(self._run(), name=f"net-send-{self.ep_id}")
        self._wake.set()
        self._arm()

    def _ended(self, stream: E2EStream) -> None:
        if self.stream is stream:
            self._drop_stream()

    def _drop_stream(self) -> None:
        stream, self.stream, self.path = self.stream, None, None
        if stream is not None and not stream.closed:
            stream.reset()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        self._drop_stream()
        self.queue.clear()


class _Ignore:
    """The sender's stream carries nothing back: its end or failure only tells the sender to open another."""

    def __init__(self, ended: Callable[[], None]) -> None:
        self._ended = ended

    def stream_data(self, data: bytes) -> None:
        pass

    def stream_end(self) -> None:
        self._ended()

    def stream_error(self, exc: h2.H2Error) -> None:
        self._ended()
