"""The `ip` stream's framing and the per-peer send queue, sans-IO (PROTOCOL.md, "The net app's ip streams").

Each packet travels as one frame: `u32 length` (big-endian: the bytes that follow) | the 10-byte virtio-net header
(`ztm.net.packet.VNET_HDR_LEN`, as the TUN gave it: GSO type and size, checksum offsets) | the IP packet (up to
65535 bytes: with TSO one read carries up to 64 KiB of TCP segments). Frames are written back to back, many per
stream write (`SendQueue.take`), and read back from whatever chunks the stream delivers (`Deframer.feed`).
"""

from __future__ import annotations

import struct
from collections import deque

VNET_LEN = 10
"""The virtio-net header's size (`ztm.net.packet.VNET_HDR_LEN`), repeated here so framing needs no other module."""
LENGTH = struct.Struct("!I")
MIN_FRAME = VNET_LEN + 20
"""The shortest frame body: a vnet header and an IPv4 header."""
MAX_FRAME = VNET_LEN + 65535
"""The longest frame body: a vnet header and the largest IP packet (IPv4 total length; IPv6 jumbograms never)."""
BATCH_BYTES = 256 * 1024
"""At most this many bytes of frames go into one stream write."""
QUEUE_BYTES = 4 * 1024 * 1024
"""A peer's send queue holds at most this many bytes of frames; past it, packets are dropped (and counted): the TUN
reader never waits for a slow peer, TCP backs off as it would on a full router queue."""


class FrameError(ValueError):
    """A frame whose length is impossible: the stream is broken (the peer's agent is faulty or hostile)."""


def frame(packet: bytes | memoryview) -> bytes:
    """One frame: the length, then `packet` (vnet header and IP packet)."""
    return LENGTH.pack(len(packet)) + packet


class Deframer:
    """Frames out of a stream's chunks, however they were cut."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held of a frame not complete yet."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | memoryview]:
        """The frames `data` completes (each the vnet header and the IP packet; a view into `data` when `data` is
        exactly one frame, the common case); FrameError on an impossible length (after which the deframer is of no
        further use)."""
        if not self._buf and len(data) >= 4:
            n = len(data) - 4
            if LENGTH.unpack_from(data)[0] == n and MIN_FRAME <= n <= MAX_FRAME:
                return [memoryview(data)[4:]]
        if self._buf:
            self._buf += data
            buf: bytes | bytearray = self._buf
        else:
            buf = data
        out: list[bytes | memoryview] = []
        offset, total = 0, len(buf)
        while total - offset >= 4:
            (n,) = LENGTH.unpack_from(buf, offset)
            if n < MIN_FRAME or n > MAX_FRAME:
                raise FrameError(f"a frame of {n} bytes (allowed: {MIN_FRAME} to {MAX_FRAME})")
            end = offset + 4 + n
            if end > total:
                break
            out.append(bytes(buf[offset + 4 : end]))
            offset = end
        if buf is self._buf:
            del self._buf[:offset]
        elif offset < total:
            self._buf += buf[offset:]
        return out


class SendQueue:
    """Frames waiting for a peer's stream, bounded in bytes: `put` refuses (the caller counts a drop) rather than
    grow, `take` joins up to `BATCH_BYTES` of them into one write."""

    __slots__ = ("_frames", "limit", "queued")

    def __init__(self, limit: int = QUEUE_BYTES) -> None:
        self._frames: deque[bytes] = deque()
        self.limit = limit
        self.queued = 0

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, packet: bytes | memoryview) -> bool:
        """Queue `packet` (vnet header and IP packet) as a frame; False (nothing queued) when the queue is full."""
        size = len(packet) + 4
        if self.queued + size > self.limit:
            return False
        self._frames.append(frame(packet))
        self.queued += size
        return True

    def push_front(self, rest: bytes) -> None:
        """Put back what a write did not take (the tail of `take`'s bytes): it goes first, whatever the limit."""
        self._frames.appendleft(rest)
        self.queued += len(rest)

    def take(self, limit: int = BATCH_BYTES) -> bytes:
        """Whole frames from the front, at least one and up to `limit` bytes in all (b"" when empty)."""
        frames = self._frames
        if not frames:
            return b""
        parts = [frames.popleft()]
        size = len(parts[0])
        while frames and size + len(frames[0]) <= limit:
            part = frames.popleft()
            parts.append(part)
            size += len(part)
        self.queued -= size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def clear(self) -> int:
        """Drop everything queued; the number of frames dropped."""
        n = len(self._frames)
        self._frames.clear()
        self.queued = 0
        return n
