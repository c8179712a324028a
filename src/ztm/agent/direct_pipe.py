"""The data path of a direct channel: a local TCP socket spliced to one TLS connection to a peer endpoint.

After the one-line greeting (`ztm.agent.direct`), a direct channel carries one tunnelled connection at a time in
frames: a 4-byte big-endian length, then that many bytes; length 0 is the end of that direction (half-close, which a
TLS transport in asyncio cannot signal otherwise). A reset is the TLS connection aborted without the end frame: the
other side then resets its local socket (RST). Once both end frames went through, the TLS connection is clean and is
handed back (`recycle`) for the next tunnelled connection: no handshake per connection. Nothing else is framed, so a
message costs one header and one `write` per hop, and no task runs per message: both transports get protocols of one
`DirectSplice`.

Back-pressure is the transports' own: while the TLS transport's write buffer is over its limit the local socket's
reading is paused, and the other way round, so a splice holds at most the two transports' buffers and one read.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from typing import cast

HEADER = struct.Struct("!I")
END = HEADER.pack(0)
MAX_FRAME = 16 << 20
"""A peer that announces a larger frame is broken or hostile: the channel is reset."""


async def splice_direct(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    tls: asyncio.Transport,
    rest: bytes,
    count: Callable[[int, int], None],
    recycle: Callable[[asyncio.Transport, bytes], None] | None = None,
) -> None:
    """Copy socket <-> framed TLS until both directions ended (clean close) or either failed (both reset).

    `tls` is the channel's transport right after the greeting (its reading paused), `rest` what it already
    received after the greeting line. The socket's transport is taken over from the StreamReader/StreamWriter.
    `recycle(tls, rest)` takes the TLS connection after a clean end both ways (else it is closed).
    """
    local = cast(asyncio.Transport, writer.transport)
    splice = DirectSplice(local, tls, count, recycle)
    buffered = bytes(getattr(reader, "_buffer", b""))
    failed = reader.exception() is not None
    eof = reader.at_eof() or getattr(reader, "_eof", False)
    local_closing = local.is_closing()
    local.set_protocol(splice.local_side)
    tls.set_protocol(splice.remote_side)
    if failed or (local_closing and not eof) or tls.is_closing():
        splice.fail()
    else:
        if buffered:
            splice.local_side.data_received(buffered)
        if eof:
            splice.local_side.eof_received()
        else:
            local.resume_reading()
        if rest:
            splice.remote_side.data_received(rest)
        tls.resume_reading()
    try:
        await splice.closed
    except BaseException:
        splice.fail()
        raise


class DirectSplice:
    """The state of one spliced pair; `local_side` and `remote_side` are the two transports' protocols."""

    def __init__(
        self,
        local: asyncio.Transport,
        tls: asyncio.Transport,
        count: Callable[[int, int], None],
        recycle: Callable[[asyncio.Transport, bytes], None] | None = None,
    ) -> None:
        self.local = local
        self.tls = tls
        self.count = count
        self.recycle = recycle
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.up_done = False
        """The local socket's EOF went out as the end frame."""
        self.down_done = False
        """The peer's end frame arrived and the local socket's write side is shut."""
        self.failed = False
        self.recycled = False
        """The TLS connection went back to its owner: this splice no longer touches it."""
        self.local_side = _LocalSide(self)
        self.remote_side = _RemoteSide(self)

    def maybe_close(self, rest: bytes = b"") -> None:
        """After both end frames: close the local socket; the TLS connection is recycled (with the bytes that
        followed the end frame: the next greeting or answer) or closed."""
        if self.up_done and self.down_done:
            self.local.close()
            if self.recycle is not None and not self.tls.is_closing():
                self.recycled = True
                self.recycle(self.tls, rest)
            else:
                self.tls.close()

    def finish(self) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def fail(self) -> None:
        """Reset both sides (idempotent): RST to the local socket, the TLS connection aborted without an end frame."""
        if self.failed:
            return
        self.failed = True
        reset_transport(self.local)
        self.tls.abort()
        self.finish()


class _LocalSide(asyncio.Protocol):
    """The local socket's protocol: what it reads goes out framed."""

    def __init__(self, splice: DirectSplice) -> None:
        self.splice = splice
        self.tls = splice.tls
        self.count = splice.count

    def data_received(self, data: bytes) -> None:
        if self.splice.up_done:
            return
        self.tls.write(HEADER.pack(len(data)) + data)
        self.count(len(data), 0)

    def eof_received(self) -> bool:
        splice = self.splice
        if not (splice.failed or splice.up_done):
            splice.up_done = True
            self.tls.write(END)
            splice.maybe_close()
        return True  # keep the write side open: half-close

    def pause_writing(self) -> None:
        if not self.splice.recycled:
            with contextlib.suppress(RuntimeError):
                self.tls.pause_reading()

    def resume_writing(self) -> None:
        if not self.splice.recycled:
            with contextlib.suppress(RuntimeError):
                self.tls.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        splice = self.splice
        if not (splice.up_done and splice.down_done):
            splice.fail()
        splice.finish()


class _RemoteSide(asyncio.Protocol):
    """The TLS connection's protocol: frames are unpacked into the local socket."""

    def __init__(self, splice: DirectSplice) -> None:
        self.splice = splice
        self.local = splice.local
        self.count = splice.count
        self.need = 0
        """Payload bytes still to come of the current frame."""
        self.header = b""
        """Part of a header split across reads."""

    def data_received(self, data: bytes) -> None:
        splice = self.splice
        if splice.failed:
            return
        if splice.down_done:  # nothing may follow the peer's end frame while our side is still open
            splice.fail()
            return
        if not self.need and not self.header and len(data) > 4:  # the common case: exactly one whole frame
            (size,) = HEADER.unpack_from(data)
            if size == len(data) - 4:
                self.local.write(data[4:])
                self.count(0, size)
                return
        pos, total = 0, len(data)
        while pos < total:
            if self.need:
                take = min(self.need, total - pos)
                self.local.write(data[pos : pos + take])
                self.count(0, take)
                self.need -= take
                pos += take
                continue
            missing = 4 - len(self.header)
            self.header += data[pos : pos + missing]
            pos += missing
            if len(self.header) < 4:
                return
            (size,) = HEADER.unpack(self.header)
            self.header = b""
            if size == 0:
                self._end(data[pos:])
                return
            if size > MAX_FRAME or splice.down_done:
                splice.fail()
                return
            self.need = size

    def _end(self, rest: bytes) -> None:
        """The peer's end frame; `rest` followed it, which only a recycled connection may carry (once both
        directions ended)."""
        splice = self.splice
        if splice.down_done or (rest and not splice.up_done):
            splice.fail()
            return
        local = self.local
        if local.can_write_eof():
            try:
                local.write_eof()
            except OSError:
                splice.fail()
                return
        splice.down_done = True
        splice.maybe_close(rest)

    def eof_received(self) -> bool:
        return False

    def pause_writing(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.local.pause_reading()

    def resume_writing(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.local.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        splice = self.splice
        if not (splice.up_done and splice.down_done):
            splice.fail()


def reset_transport(transport: asyncio.WriteTransport) -> None:
    """Close at once with an RST (SO_LINGER 0): the peer sees "connection reset", not the end of the data."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
