"""`Channel.seal_batch` (records sealed in place into one buffer) and `feed` of records split across reads: the
same bytes and the same records as the one-record-at-a-time way, key updates included (the punched path's bulk
transfer, issue 15)."""

from __future__ import annotations

import os

import pytest

from ztm.e2e.errors import E2EError
from ztm.e2e.record import DATA, END, OVERHEAD, Channel

DATA_BYTES = os.urandom(300_000)


def pair(key_update_after: int = 2**24) -> tuple[Channel, Channel]:
    a, b = os.urandom(32), os.urandom(32)
    return Channel(a, b, key_update_after=key_update_after), Channel(b, a, key_update_after=key_update_after)


@pytest.mark.parametrize("n", [0, 1, 4096, 4097, 65_515, 65_516, 262_144, 300_000])
@pytest.mark.parametrize("step", [1000, 65_515, 65_536])
def test_seal_batch_is_the_same_bytes_as_seal_per_record(n: int, step: int) -> None:
    key = os.urandom(32)
    one, batch = Channel(key, key), Channel(key, key)
    view = memoryview(DATA_BYTES)[:n]
    expected = b"".join(one.seal(DATA, view[i : i + step]) for i in range(0, max(n, 1), step)) if n else one.seal(DATA)
    got = batch.seal_batch(view, step)
    assert bytes(got) == expected
    assert batch.records_sent == one.records_sent
    assert len(got) == n + one.records_sent * OVERHEAD


def test_seal_batch_output_is_read_only() -> None:
    sender, _ = pair()
    out = sender.seal_batch(DATA_BYTES, 65_515)
    assert isinstance(out, memoryview) and out.readonly


def test_a_key_update_inside_a_batch_opens() -> None:
    sender, receiver = pair(key_update_after=3)
    stream = b"".join(bytes(sender.seal_batch(DATA_BYTES, 30_000)) for _ in range(3))
    records = receiver.feed(stream)
    assert b"".join(payload for inner, payload in records if inner == DATA) == DATA_BYTES * 3


@pytest.mark.parametrize("chunk", [1, 3, 4, 5, 1000, 65_536, 65_537, 262_144])
def test_records_split_across_reads_open_in_order(chunk: int) -> None:
    sender, receiver = pair()
    stream = bytes(sender.seal_batch(DATA_BYTES, 65_515)) + sender.seal(END)
    got: list[tuple[int, bytes]] = []
    for i in range(0, len(stream), chunk):
        got.extend(receiver.feed(stream[i : i + chunk]))
    assert b"".join(bytes(p) for inner, p in got if inner == DATA) == DATA_BYTES
    assert got[-1] == (END, b"")


def test_a_tampered_record_completed_by_the_next_read_fails() -> None:
    sender, receiver = pair()
    stream = bytearray(sender.seal_batch(DATA_BYTES, 65_515))
    stream[70_000] ^= 1  # inside the second record
    receiver.feed(bytes(stream[:66_000]))  # the first record opens, the second is buffered
    with pytest.raises(E2EError) as err:
        receiver.feed(bytes(stream[66_000:]))
    assert err.value.reason == "integrity"
    with pytest.raises(E2EError):  # and the channel stays failed
        receiver.feed(b"")
