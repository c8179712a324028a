"""`DirectOuter`: an `E2EStream` over a direct channel's TLS connection, on a recording transport.

The connection carries one stream at a time: the peer's END record ends the stream's bytes, and what follows it in
the same read (the next stream's first flight) is kept for the next stream, but only once both END records went
through; anything after the peer's END while our side is still open fails the stream. A reset aborts the
connection; a finished stream's late reset does not touch it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from typing import Any

import pytest

from ztm import h2
from ztm.agent.direct_outer import DirectConn, DirectOuter
from ztm.agent.e2estream import MIN_RECORD_PAYLOAD, E2EStream, E2EStreamError
from ztm.e2e import Peer
from ztm.e2e.record import DATA, END, Channel


class Transport:
    """What `DirectConn` uses of a TLS transport, recording writes and aborts."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.aborted = False
        self.closing = False
        self.reading = True

    def write(self, data: bytes) -> None:
        self.written += data

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def abort(self) -> None:
        self.aborted = self.closing = True

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str) -> Any:
        return None


def pair() -> tuple[Transport, DirectConn, E2EStream, Channel, list[DirectConn]]:
    """A server-side connection with one stream on it, the peer's channel, and the connections released."""
    transport = Transport()
    conn = DirectConn(server=True)
    conn.connection_made(transport)  # type: ignore[arg-type]
    released: list[DirectConn] = []
    conn.on_release = released.append
    k1, k2 = os.urandom(32), os.urandom(32)
    peer = Peer("ep", "bob", 1, dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    failures: list[E2EStreamError] = []
    stream = E2EStream(
        DirectOuter(conn), Channel(k1, k2), peer, suite="s", session_id=b"0" * 16, on_failure=failures.append
    )
    stream.start(b"")
    return transport, conn, stream, Channel(k2, k1), released


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_the_next_streams_first_flight_after_both_ends_is_kept_for_it() -> None:
    async def main() -> None:
        transport, conn, stream, peer, released = pair()
        stream.end_nowait()  # our END first
        assert not released
        following = b"\x04\x00\x00\x18" + b"R" * 24  # a RESUME of the next stream, in the same read
        conn.data_received(peer.seal(DATA, b"hi") + peer.seal(END) + following)
        assert await stream.read() == b"hi" and await stream.read() == b""
        assert released == [conn] and conn.outer is None
        assert bytes(conn.idle) == following
        assert not transport.aborted
        stream.reset()  # an app's late reset (udp_flow, a splice's cleanup) leaves the reused connection alone
        assert not transport.aborted

    run(main())


def test_ends_in_either_order_and_records_split_across_reads() -> None:
    async def main() -> None:
        transport, conn, stream, peer, released = pair()
        conn.data_received(peer.seal(END))  # the peer's END first: nothing released until ours went out
        assert not released
        stream.end_nowait()
        assert released == [conn] and await stream.read() == b""

        transport, conn, stream, peer, released = pair()
        stream.end_nowait()
        wire = peer.seal(DATA, b"x" * 5000) + peer.seal(END) + b"\x01\x00\x00\x02hi"
        for i in range(0, len(wire), 7):  # every record and header split across reads
            conn.data_received(wire[i : i + 7])
        assert await stream.read() == b"x" * 5000 and await stream.read() == b""
        assert released == [conn] and bytes(conn.idle) == b"\x01\x00\x00\x02hi"
        assert not transport.aborted

    run(main())


def test_bytes_after_the_peers_end_while_ours_is_open_fail_the_stream() -> None:
    async def main() -> None:
        transport, conn, stream, peer, released = pair()
        conn.data_received(peer.seal(END) + peer.seal(DATA, b"more"))
        with pytest.raises(h2.H2Error):
            await stream.read()
        assert transport.aborted and not released

    run(main())


def test_write_nowait_seals_small_and_large_writes_alike() -> None:
    """A write of up to `MIN_RECORD_PAYLOAD` bytes (a ping) is one record without the sizing; larger ones are cut
    into records of `_record_size`: the peer opens both to the same bytes, in order."""

    async def main() -> None:
        transport, _conn, stream, peer, _released = pair()
        small, edge, large = b"p" * 84, b"e" * MIN_RECORD_PAYLOAD, os.urandom(200_000)
        for data in (small, edge, large, b""):
            assert stream.write_nowait(data) == len(data)
        records = peer.feed(bytes(transport.written))
        assert [len(p) for _, p in records[:2]] == [len(small), len(edge)]  # one record each
        assert len(records) > 3  # the large write went out in several records
        assert all(inner == DATA for inner, _ in records)
        assert b"".join(p for _, p in records) == small + edge + large
        assert stream.bytes_sent == len(small) + len(edge) + len(large)

    run(main())
