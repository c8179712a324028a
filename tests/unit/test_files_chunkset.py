"""`ChunkSet`, the bitmap partial holders announce (`filespec`), and the hub's checks of partial announcements
(`FileIndex.announce`): round trips, every malformed encoding refused with a `BadInput` saying what is wrong, and a
fuzz over arbitrary input that never gets anything else."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztm import filespec
from ztm.apps.files import wire
from ztm.errors import BadInput
from ztm.filespec import MAX_CHUNKS, MAX_HAVE_CHARS, ChunkSet

FUZZ = settings(max_examples=400, deadline=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def test_layout_is_most_significant_bit_first() -> None:
    have = ChunkSet.of([0, 3, 9], 10)
    assert have.bits == bytes([0b1001_0000, 0b0100_0000])
    assert have.encode() == base64.b64encode(have.bits).decode()
    assert list(have.indices()) == [0, 3, 9] and have.held() == 3
    assert 9 in have and 1 not in have and 10 not in have and -1 not in have and "0" not in have
    assert ChunkSet.decode(have.encode(), 10) == have


def test_largest_file() -> None:
    full = ChunkSet.of(range(MAX_CHUNKS), MAX_CHUNKS)
    assert len(full.encode()) == MAX_HAVE_CHARS == 10924 and full.held() == MAX_CHUNKS
    assert ChunkSet.decode(full.encode(), MAX_CHUNKS) == full


@pytest.mark.parametrize(
    ("value", "count", "words"),
    [
        (None, 8, "must be a base64 string"),
        (255, 8, "must be a base64 string"),
        ("", 8, "must be 4 base64 characters"),
        ("AAAAAA==", 8, "must be 4 base64 characters"),
        ("A" * 20_000, 8, "got more than 10924"),
        ("AA!=", 8, "not valid base64"),
        ("AA==\n", 8, "must be 4"),
        ("AB==", 8, "not the canonical base64"),  # spare bits of the last base64 digit set
        ("AAA=", 8, "not the canonical base64"),  # two bytes for a one-byte bitmap
        ("Aw==", 7, "past the last"),  # bit 7 of a 7-chunk file
        ("AQ==", 7, "past the last"),
    ],
)
def test_malformed_bitmaps_are_refused(value: object, count: int, words: str) -> None:
    with pytest.raises(BadInput, match=words):
        ChunkSet.decode(value, count)


def test_out_of_range() -> None:
    with pytest.raises(BadInput, match="outside"):
        ChunkSet.of([8], 8)
    with pytest.raises(BadInput, match="from 0 to"):
        ChunkSet.decode("", MAX_CHUNKS + 1)


@FUZZ
@given(st.integers(0, 300), st.data())
def test_round_trip(count: int, data: st.DataObject) -> None:
    indices = data.draw(st.sets(st.integers(0, count - 1)) if count else st.just(set()))
    have = ChunkSet.of(indices, count)
    assert set(have.indices()) == indices and have.held() == len(indices)
    assert ChunkSet.decode(have.encode(), count) == have


@FUZZ
@given(
    st.one_of(
        st.text(max_size=60),
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", max_size=60),
        st.binary(max_size=40).map(lambda b: base64.b64encode(b).decode()),
        json_values,
    ),
    st.integers(0, 300),
)
def test_decode_fuzz(value: Any, count: int) -> None:
    try:
        have = ChunkSet.decode(value, count)
    except BadInput as exc:
        assert exc.message and "\n" not in exc.message
        return
    assert have.encode() == value and len(have.bits) == (count + 7) // 8
    assert all(0 <= i < count for i in have.indices())


@FUZZ
@given(st.binary(max_size=100) | json_values.map(lambda v: json.dumps(v).encode()))
def test_not_held_headers(line: bytes) -> None:
    try:
        wire.parse_header(line)
    except wire.NotHeld as exc:
        assert exc.code == "not_held" and exc.message
    except filespec.BadInput:
        pass
    except Exception as exc:  # any other refusal is the ZtmError the source named
        assert getattr(exc, "message", None) is not None, exc


# ---- the hub's checks


class _Ep:
    def __init__(self, ep_id: str, user: str) -> None:
        self.id, self.name, self.user = ep_id, ep_id, user


class _NoPolicy:
    def check_write(self, caller: Any, path: str, what: str) -> None:
        pass  # no mesh policy set


class _Audit:
    async def record(self, *args: Any, **kwargs: Any) -> None:
        pass


class _State:
    policy = _NoPolicy()
    audit = _Audit()

    def __init__(self) -> None:
        import collections

        self.endpoints = {"e1": _Ep("e1", "root"), "e2": _Ep("e2", "root"), "e3": _Ep("e3", "bob")}
        self.sessions = {"e1": object(), "e2": object(), "e3": object()}
        self.counters: collections.Counter[str] = collections.Counter()

    def require_ep(self, peer: Any) -> Any:
        return self.endpoints[peer.ep]

    def is_online(self, ep_id: str) -> bool:
        return ep_id in self.sessions

    async def publish(self, kind: str, payload: dict[str, Any]) -> None:
        pass  # no other hub


class _Store:
    shared = False

    async def save_file(self, path: str, text: str) -> None:
        pass

    async def delete_file(self, path: str) -> None:
        pass


class _Peer:
    def __init__(self, ep: str, user: str) -> None:
        self.ep, self.user = ep, user


def _index() -> tuple[Any, dict[str, Any]]:
    from ztm.hub.files import FileIndex

    index = FileIndex(_State(), _Store(), [])  # type: ignore[arg-type]
    entry = filespec.describe(bytes(3 * filespec.CHUNK_SIZE + 1), "/users/root/a.bin", 1.0)
    asyncio.run(index.publish(_Peer("e1", "root"), entry.to_json()))  # type: ignore[arg-type]
    return _Sync(index), entry.to_json()


class _Sync:
    """The index with its async writing methods run to completion (nothing in them waits: the store is a stub)."""

    def __init__(self, index: Any) -> None:
        self.index = index

    def announce(self, peer: Any, body: Any) -> Any:
        return asyncio.run(self.index.announce(peer, body))

    def get(self, peer: Any, path: str) -> Any:
        return self.index.get(peer, path)


def test_hub_lists_partial_holders_and_refuses_malformed_bitmaps() -> None:
    index, entry = _index()
    path, file_hash = entry["path"], entry["hash"]
    peer = _Peer("e2", "root")
    have = ChunkSet.of([1, 3], 4).encode()
    answer = index.announce(peer, {"partial": [{"path": path, "hash": file_hash, "have": have}]})
    assert answer == {"accepted": [], "stale": [], "partial_accepted": [path], "partial_stale": []}
    view = index.get(peer, path)
    assert [s["ep"] for s in view["sources"]] == ["e1"]
    assert view["partial"] == [{"ep": "e2", "name": "e2", "user": "root", "online": True, "have": have, "held": 2}]
    for bad, words in (("AAAAAA==", "have of /users/root/a.bin must be 4 base64"), ("/w==", "past the last"),
                       (7, "must be a base64 string"), ("A" * 20_000, "got more than")):  # fmt: skip
        with pytest.raises(BadInput, match=words):
            index.announce(peer, {"partial": [{"path": path, "hash": file_hash, "have": bad}]})
    with pytest.raises(BadInput, match="partial must be a list"):
        index.announce(peer, {"partial": {"path": path}})
    with pytest.raises(BadInput, match="at most 256 partial"):
        index.announce(peer, {"partial": [{"path": path, "hash": file_hash, "have": have}] * 257})
    # Old content, or a file the caller may not read, is stale (whatever the bitmap); a full hold replaces it.
    other = "0" * 64
    items = [{"path": path, "hash": file_hash, "have": have}, {"path": "/shared/x/y", "hash": other, "have": "x"}]
    answer = index.announce(_Peer("e3", "bob"), {"partial": items})
    assert answer["partial_stale"] == [path, "/shared/x/y"] and answer["partial_accepted"] == []
    index.announce(peer, {"hold": [{"path": path, "hash": file_hash}]})
    assert index.get(peer, path)["partial"] == []
    # Without `partial` in the request, the answer is what it always was.
    assert index.announce(peer, {"hold": []}) == {"accepted": [], "stale": []}
