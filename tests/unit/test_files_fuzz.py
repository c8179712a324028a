"""Fuzzing the files app's parsers: paths, prefixes, ACLs, file entries, the chunk protocol's request and header
lines, and the line buffer. Whatever they get, they return a value that keeps their promises or raise `BadInput`
(or, for a source's refusal, the `ZtmError` it names); never anything else."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ztm import filespec
from ztm.apps.files import wire
from ztm.errors import BadInput, ZtmError
from ztm.filespec import Acl, FileEntry

FUZZ = settings(max_examples=300, deadline=None)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
segments = st.sampled_from(["users", "shared", "alice", "bob", ".", "..", "", "a b", "x\n", "é", "\\", "A"])
path_like = st.lists(segments | st.text(max_size=8), max_size=6).map(lambda parts: "/" + "/".join(parts))
hashes = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@FUZZ
@given(st.one_of(path_like, st.text(max_size=40), json_values))
def test_paths(value: Any) -> None:
    try:
        path = filespec.check_path(value)
    except BadInput as exc:
        assert exc.message and "\n" not in exc.message
        return
    parts = path.split("/")
    assert path.startswith("/") and parts[0] == "" and all(parts[1:])
    assert ".." not in parts and "." not in parts and "\\" not in path
    assert all(ch.isprintable() for ch in path)
    if parts[1] in filespec.NAMESPACES:
        assert len(parts) >= 4 and filespec.owner(path) == parts[2]
    assert filespec.under(path, "/") and filespec.under(path, path)


@FUZZ
@given(st.one_of(path_like, st.text(max_size=40), json_values))
def test_prefixes(value: Any) -> None:
    try:
        prefix = filespec.check_prefix(value)
    except BadInput:
        return
    assert prefix.startswith("/") and "//" not in prefix and "/../" not in prefix + "/"


@FUZZ
@given(json_values | st.fixed_dictionaries({}, optional={"readonly": json_values, "block": json_values}))
def test_acls(value: Any) -> None:
    try:
        acl = Acl.parse(value)
    except BadInput:
        return
    assert not set(acl.readonly) & set(acl.block)
    assert Acl.parse(acl.to_json()) == acl


@FUZZ
@given(
    st.fixed_dictionaries(
        {},
        optional={
            "path": path_like | json_values,
            "size": st.integers(-5, 5 << 20) | json_values,
            "time": st.floats() | json_values,
            "hash": hashes | json_values,
            "chunks": st.lists(hashes, max_size=6) | json_values,
            "acl": json_values,
        },
    )
)
def test_entries(body: dict[str, Any]) -> None:
    try:
        entry = FileEntry.parse(body)
    except BadInput:
        return
    assert len(entry.chunks) == filespec.chunk_count(entry.size)
    assert FileEntry.parse(entry.to_json()) == entry


@FUZZ
@given(
    st.binary(max_size=200)
    | st.builds(
        lambda path, h, i: json.dumps({"path": path, "hash": h, "index": i}).encode(),
        path_like | json_values,
        hashes | json_values,
        st.integers(-3, 1 << 17) | json_values,
    )
)
def test_chunk_requests(line: bytes) -> None:
    try:
        request = wire.parse_request(line)
    except BadInput:
        return
    assert 0 <= request.index < filespec.MAX_CHUNKS
    assert wire.parse_request(request.encode().rstrip(b"\n")) == request


@FUZZ
@given(st.binary(max_size=100) | json_values.map(lambda v: json.dumps(v).encode()))
def test_chunk_headers(line: bytes) -> None:
    try:
        size = wire.parse_header(line)
    except ZtmError as exc:
        assert exc.message
        return
    assert 0 <= size <= filespec.CHUNK_SIZE


@FUZZ
@given(st.lists(st.binary(max_size=30), max_size=10))
def test_line_buffer_is_independent_of_how_bytes_arrive(pieces: list[bytes]) -> None:
    whole = b"".join(pieces)
    buf = wire.LineBuffer()
    got = []
    for piece in pieces:
        buf.feed(piece)
        while (line := buf.line()) is not None:
            got.append(line)
    expected = whole.split(b"\n")[:-1]
    assert got == expected
    assert buf.take(len(buf)) == whole.rsplit(b"\n", 1)[-1]
