"""The net app's `ip` stream framing and send queue (`ztm.apps.net.frames`, sans-IO)."""

from __future__ import annotations

import os

import pytest

from ztm.apps.net.frames import BATCH_BYTES, MAX_FRAME, MIN_FRAME, Deframer, FrameError, SendQueue, frame


def packet(size: int) -> bytes:
    return os.urandom(size)


def test_frames_come_back_whole_however_the_stream_cuts_them() -> None:
    packets = [packet(n) for n in (MIN_FRAME, 100, 1500, 9000, MAX_FRAME)]
    wire = b"".join(frame(p) for p in packets)
    for cut in (1, 3, 4, 5, 7, 1000, 65536, len(wire)):
        deframer = Deframer()
        got: list[bytes] = []
        for i in range(0, len(wire), cut):
            got += deframer.feed(wire[i : i + cut])
        assert got == packets, cut
        assert deframer.pending == 0


def test_a_partial_frame_waits_for_the_rest() -> None:
    deframer = Deframer()
    whole = frame(packet(200))
    assert deframer.feed(whole[:150]) == []
    assert deframer.pending == 150
    assert deframer.feed(whole[150:] + whole[:2]) == [whole[4:]]
    assert deframer.pending == 2


@pytest.mark.parametrize("length", [0, 1, MIN_FRAME - 1, MAX_FRAME + 1, 0xFFFFFFFF])
def test_an_impossible_length_breaks_the_stream(length: int) -> None:
    with pytest.raises(FrameError, match="a frame of"):
        Deframer().feed(length.to_bytes(4, "big") + b"\0" * 64)


def test_the_queue_batches_whole_frames_up_to_the_limit() -> None:
    queue = SendQueue()
    packets = [packet(60000) for _ in range(10)]
    for p in packets:
        assert queue.put(p)
    batches = []
    while queue:
        batches.append(queue.take())
    assert all(len(b) <= BATCH_BYTES for b in batches)
    assert len(batches) == 3  # 4 + 4 + 2 frames of 60004 bytes
    deframer = Deframer()
    assert [f for b in batches for f in deframer.feed(b)] == packets
    assert queue.queued == 0
    assert queue.take() == b""


def test_a_frame_larger_than_a_batch_still_goes_alone() -> None:
    queue = SendQueue()
    queue.put(packet(1000))
    assert len(queue.take(limit=10)) == 1004


def test_a_full_queue_refuses_and_keeps_what_it_holds() -> None:
    queue = SendQueue(limit=3 * 1004)
    assert all(queue.put(packet(1000)) for _ in range(3))
    assert not queue.put(packet(1000))
    assert len(queue) == 3 and queue.queued == 3 * 1004
    assert queue.clear() == 3
    assert queue.put(packet(1000))


def test_a_chunk_of_exactly_one_frame_comes_back_as_a_view_without_a_copy() -> None:
    whole = frame(packet(1500))
    got = Deframer().feed(whole)
    assert got == [whole[4:]]
    assert isinstance(got[0], memoryview) and got[0].obj is whole  # the common case: no copy of the packet


@pytest.mark.parametrize("length", [MIN_FRAME - 1, MAX_FRAME + 1])
def test_a_single_chunk_with_an_impossible_length_still_breaks_the_stream(length: int) -> None:
    """The one-frame shortcut takes a chunk only when its length fits a frame: the check stays the same."""
    with pytest.raises(FrameError, match="a frame of"):
        Deframer().feed(length.to_bytes(4, "big") + b"\0" * length)


def test_the_shortcut_is_not_taken_while_part_of_a_frame_is_held() -> None:
    first, second = frame(packet(100)), frame(packet(200))
    deframer = Deframer()
    assert deframer.feed(first[:50]) == []
    assert deframer.feed(first[50:] + second) == [first[4:], second[4:]]
    assert deframer.feed(first) == [first[4:]]
