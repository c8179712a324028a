"""The direct channel's framing (`ztm.agent.direct_pipe`) and answer parsing, fuzzed with hypothesis.

Whatever sizes the frames have and however TCP splits the bytes, the local socket receives exactly the payloads and
one half-close; bytes after the end frame go to `recycle` when both directions ended, and reset the pair before
that; an oversized or garbled frame resets both sides; an answer line never raises.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ztm.agent.direct import _parse_answer
from ztm.agent.direct_pipe import END, HEADER, MAX_FRAME, DirectSplice
from ztm.errors import ZtmError

LOOP = asyncio.new_event_loop()


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.eof = False
        self.closed = False
        self.aborted = False

    def write(self, data: bytes) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def get_extra_info(self, name: str) -> Any:
        return None

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def make(recycled: list[bytes]) -> tuple[DirectSplice, FakeTransport, FakeTransport]:
    async def build() -> tuple[DirectSplice, FakeTransport, FakeTransport]:
        local, tls = FakeTransport(), FakeTransport()
        splice = DirectSplice(local, tls, lambda _s, _r: None, lambda _t, rest: recycled.append(rest))  # type: ignore[arg-type]
        return splice, local, tls

    return LOOP.run_until_complete(build())


def cut(data: bytes, points: list[int]) -> list[bytes]:
    marks = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(marks) if b > a]


payloads = st.lists(st.binary(min_size=1, max_size=300), max_size=8)


@settings(max_examples=300, deadline=None)
@given(payloads, st.lists(st.integers(0, 10_000), max_size=12), st.binary(max_size=40), st.booleans())
def test_frames_arrive_exactly_however_split(
    chunks: list[bytes], points: list[int], after: bytes, up_done: bool
) -> None:
    recycled: list[bytes] = []
    splice, local, tls = make(recycled)
    splice.up_done = up_done  # our own end already went out (or not)
    wire = b"".join(HEADER.pack(len(c)) + c for c in chunks) + END + after
    for piece in cut(wire, points):
        if splice.recycled:  # the connection has a new protocol now: the bytes go there
            recycled.append(piece)
        else:
            splice.remote_side.data_received(piece)
    assert bytes(local.written) == b"".join(chunks)
    if after and not up_done:  # the peer spoke after its end while ours was still open: a protocol error
        assert splice.failed and local.aborted and tls.aborted
        return
    assert local.eof and splice.down_done and not splice.failed
    if up_done:  # both ended: the connection is recycled with what followed (the next greeting or answer)
        assert local.closed and b"".join(recycled) == after and not tls.closed
    else:
        assert not local.closed and recycled == []


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_garbage_or_oversized_frames_reset_both_sides(prefix: bytes) -> None:
    splice, local, tls = make([])
    splice.remote_side.data_received(HEADER.pack(MAX_FRAME + 1) + prefix)
    assert splice.failed and local.aborted and tls.aborted


def test_local_data_goes_out_framed_and_eof_as_the_end_frame() -> None:
    splice, _local, tls = make([])
    splice.local_side.data_received(b"hello")
    splice.local_side.eof_received()
    assert bytes(tls.written) == HEADER.pack(5) + b"hello" + END and splice.up_done


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_answer_lines_never_raise(line: bytes) -> None:
    answer = _parse_answer(line)
    assert answer is None or isinstance(answer, ZtmError)


def test_answers() -> None:
    assert _parse_answer(b'{"ok":true}') is None
    refused = _parse_answer(b'{"error": "user \'bob\' is not allowed to use tcp/x", "code": "forbidden"}')
    assert isinstance(refused, ZtmError) and refused.code == "forbidden" and "bob" in refused.message
