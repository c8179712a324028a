"""The mesh file space's rules (`ztm.filespec`), the chunk protocol's messages (`ztm.apps.files.wire`), the chunk
store, the mirror's decisions and the CLI's value parsers: examples, including every refusal a user can meet."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from ztm import filespec
from ztm.apps.cloud.sync import Action, Side, decide
from ztm.apps.files import wire
from ztm.apps.files.store import ChunkStore, Corrupt
from ztm.cli.files import rate_type, users_type
from ztm.cli.progress import Bar
from ztm.errors import BadInput, Forbidden, NotFound
from ztm.filespec import CHUNK_SIZE, Acl, FileEntry, Hasher

MiB = CHUNK_SIZE


@pytest.mark.parametrize(
    "path",
    [
        "/shared/alice/a.txt",
        "/users/bob/deep/er/file with spaces.tar.gz",
        "/shared/alice/ünïcødé/文件.txt",
        "/apps/thing/manifest.json",
        "/x",
    ],
)
def test_good_paths(path: str) -> None:
    assert filespec.check_path(path) == path


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("shared/alice/a", "must start with '/'"),
        ("", "expected a string"),
        ("/shared/alice/", "empty names"),
        ("/shared//alice/a", "empty names"),
        ("/shared/alice/../bob/a", "'.' and '..'"),
        ("/shared/alice/./a", "'.' and '..'"),
        ("/shared/alice/a\nb", "control characters"),
        ("/shared/alice/a\\b", "control characters"),
        ("/shared/alice", "a file goes below /shared/USER/"),
        ("/users/Bob/a", "invalid user name"),
        ("/" + "a" * 1100, "longer than 1024"),
        ("/shared/alice/" + "x" * 256, "longer than 255 bytes"),
    ],
)
def test_bad_paths(path: str, why: str) -> None:
    with pytest.raises(BadInput, match=None) as info:
        filespec.check_path(path)
    assert why in info.value.message


def test_bad_path_types() -> None:
    for value in (None, 5, ["/a"], b"/a"):
        with pytest.raises(BadInput):
            filespec.check_path(value)


def test_prefixes_and_under() -> None:
    assert filespec.check_prefix(None) == "/" and filespec.check_prefix("") == "/"
    assert filespec.check_prefix("/shared/") == "/shared/"
    with pytest.raises(BadInput):
        filespec.check_prefix("/shared//x")
    with pytest.raises(BadInput):
        filespec.check_prefix("shared")
    assert filespec.under("/a/b", "/") and filespec.under("/a/b", "/a") and filespec.under("/a/b", "/a/")
    assert filespec.under("/a/b", "/a/b") and not filespec.under("/a/b2", "/a/b") and not filespec.under("/ab", "/a")


def test_who_may_write() -> None:
    assert filespec.owner("/users/bob/x") == "bob" and filespec.owner("/shared/carol/x") == "carol"
    assert filespec.owner("/apps/x") == "root"
    assert filespec.may_write("bob", "/users/bob/x") and filespec.may_write("bob", "/shared/bob/a/b")
    assert not filespec.may_write("bob", "/users/alice/x") and not filespec.may_write("bob", "/shared/alice/x")
    assert not filespec.may_write("bob", "/apps/x") and filespec.may_write("root", "/users/bob/x")
    assert filespec.writers("/apps/x") == "root" and filespec.writers("/users/bob/x") == "'bob' (or root)"


def test_who_may_read() -> None:
    none, lend, block = Acl(), Acl(readonly=("carol",)), Acl(block=("carol",))
    read = filespec.may_read
    assert read("bob", "/users/bob/x", none) and read("root", "/users/bob/x", block)
    assert not read("carol", "/users/bob/x", none) and read("carol", "/users/bob/x", lend)
    assert read("carol", "/shared/bob/x", none) and not read("carol", "/shared/bob/x", block)
    assert read("carol", "/apps/x", none) and not read("carol", "/apps/x", block)
    assert "private to 'bob'" in filespec.read_refusal("carol", "/users/bob/x", none)
    assert "'carol' is blocked" in filespec.read_refusal("carol", "/shared/bob/x", block)


def test_acls() -> None:
    acl = Acl.parse({"readonly": ["dave", "carol", "carol"], "block": []})
    assert acl == Acl(("carol", "dave"), ()) and acl.to_json() == {"readonly": ["carol", "dave"], "block": []}
    assert Acl.parse(None) == Acl() and Acl.from_lists([], ["eve"]) == Acl((), ("eve",))
    for bad, why in [
        ("bob", "must be an object"),
        ({"readonly": "bob"}, "list of strings"),
        ({"readonly": ["Bob"]}, "invalid user name"),
        ({"write": ["bob"]}, "unknown acl field"),
        ({"readonly": ["bob"], "block": ["bob"]}, "both readonly and blocked"),
        ({"block": [f"u{i}" for i in range(65)]}, "at most 64"),
    ]:
        with pytest.raises(BadInput) as info:
            Acl.parse(bad)
        assert why in info.value.message
    with pytest.raises(BadInput, match="cannot restrict 'bob'"):
        Acl(block=("bob",)).check_for("/users/bob/x")
    with pytest.raises(BadInput, match="cannot restrict 'root'"):
        Acl(block=("root",)).check_for("/shared/bob/x")


@pytest.mark.parametrize("size", [0, 1, MiB - 1, MiB, MiB + 1, 3 * MiB + MiB // 2])
def test_hasher_cuts_1_mib_chunks(size: int) -> None:
    data = os.urandom(size)
    hasher = Hasher()
    pieces = []
    for start in range(0, size, 300_001):  # blocks that do not line up with chunks
        pieces += list(hasher.feed(data[start : start + 300_001]))
    pieces += list(hasher.finish())
    expected = [data[i : i + MiB] for i in range(0, size, MiB)]
    assert [chunk for _h, chunk in pieces] == expected
    assert hasher.chunks == [hashlib.sha256(c).hexdigest() for c in expected]
    assert hasher.file_hash == hashlib.sha256(data).hexdigest() and hasher.size == size
    entry = filespec.describe(data, "/shared/a/x", 5.0)
    assert entry.chunks == tuple(hasher.chunks) and filespec.chunk_count(size) == len(expected)
    if size:
        assert entry.chunk_size(len(expected) - 1) == len(expected[-1])


def test_entries() -> None:
    entry = filespec.describe(b"x" * (MiB + 3), "/shared/alice/x", 1.5)
    body = entry.to_json()
    assert FileEntry.parse(body) == entry and FileEntry.from_json({**body, "publisher": "alice"}).publisher == "alice"
    assert "chunks" not in entry.to_json(chunks=False)
    for change, why in [
        ({"size": -1}, "size must be"),
        ({"size": True}, "size must be"),
        ({"size": 5}, "has 1 chunks"),
        ({"chunks": body["chunks"][:1]}, "not 1"),
        ({"chunks": "abc"}, "chunks must be a list"),
        ({"chunks": ["ABC"]}, "chunk hash"),
        ({"hash": "0" * 63}, "file hash"),
        ({"time": "now"}, "time must be"),
        ({"path": "/users/x"}, "a file goes below"),
        ({"acl": {"block": ["alice"]}}, "cannot restrict 'alice'"),
    ]:
        with pytest.raises(BadInput) as info:
            FileEntry.parse({**body, **change})
        assert why in info.value.message


def test_wire_messages() -> None:
    request = wire.ChunkRequest("/shared/a/x", "a" * 64, 3)
    assert wire.parse_request(request.encode().rstrip(b"\n")) == request
    for bad in (b"nope", b"[]", b'{"path": "/shared/a/x", "hash": "' + b"a" * 64 + b'", "index": -1}',
                b'{"path": "rel", "hash": "' + b"a" * 64 + b'", "index": 0}', b"{" * 5000):  # fmt: skip
        with pytest.raises(BadInput):
            wire.parse_request(bad)
    assert wire.parse_header(wire.ok_header(1234, "b" * 64).rstrip(b"\n")) == 1234
    with pytest.raises(Forbidden, match="blocked"):
        wire.parse_header(wire.error_header(Forbidden("user 'eve' is blocked")).rstrip(b"\n"))
    with pytest.raises(NotFound):
        wire.parse_header(json.dumps({"error": "gone", "code": "not_found"}).encode())
    for bad in (b"", b"[1]", b'{"size": 2000000}', b'{"size": "1"}'):
        with pytest.raises(BadInput):
            wire.parse_header(bad)


def test_line_buffer() -> None:
    buf = wire.LineBuffer()
    buf.feed(b'{"a": 1}\nxyz')
    assert buf.line() == b'{"a": 1}' and buf.line() is None and buf.take(4) is None and buf.take(3) == b"xyz"
    buf.feed(b"x" * (wire.MAX_LINE + 1))
    with pytest.raises(BadInput):
        buf.line()


def test_chunk_store(tmp_path: Path) -> None:
    store = ChunkStore(tmp_path)
    data = os.urandom(1000)
    digest = hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError):
        store.put(digest, data + b"!")
    store.put(digest, data)
    store.put(digest, data)  # idempotent
    assert store.has(digest) and store.read(digest) == data
    assert oct(store.path(digest).stat().st_mode & 0o777) == "0o600"
    store.path(digest).write_bytes(b"tampered")
    with pytest.raises(Corrupt, match="damaged"):
        store.read(digest)
    assert not store.has(digest), "a damaged chunk is removed, never served again"
    with pytest.raises(Corrupt, match="missing"):
        store.read(digest)
    other = os.urandom(10)
    store.put(digest, data)
    store.put(hashlib.sha256(other).hexdigest(), other)
    assert store.gc([digest]) == 1 and store.has(digest)
    with pytest.raises(BadInput):
        store.path("../../etc/passwd")


def test_mirror_decisions() -> None:
    old, new = Side("o" * 64, 100.0), Side("n" * 64, 200.0)
    both = {"upload": True, "download": True}
    assert decide(None, None, None, **both) is Action.NOTHING
    assert decide(old, old, None, **both) is Action.NOTHING
    assert decide(old, None, None, **both) is Action.UPLOAD
    assert decide(None, old, None, **both) is Action.DOWNLOAD
    assert decide(None, old, old.hash, **both) is Action.DOWNLOAD, "a local deletion is not mirrored"
    assert decide(new, old, old.hash, **both) is Action.UPLOAD
    assert decide(old, new, old.hash, **both) is Action.DOWNLOAD
    assert decide(Side("a" * 64, 300.0), new, old.hash, **both) is Action.UPLOAD, "both changed: newer wins"
    assert decide(Side("a" * 64, 50.0), new, None, **both) is Action.DOWNLOAD
    assert decide(new, old, old.hash, upload=False, download=True) is Action.NOTHING
    assert decide(old, new, old.hash, upload=True, download=False) is Action.NOTHING


def test_cli_value_parsers() -> None:
    assert rate_type("2M") == 2 * MiB and rate_type("512k") == 512 * 1024 and rate_type("4096") == 4096
    assert rate_type("1.5MiB/s") == int(1.5 * MiB)
    assert users_type("bob, carol") == ["bob", "carol"]
    for bad in ("fast", "10", "-1M", "2T"):
        with pytest.raises(argparse.ArgumentTypeError):
            rate_type(bad)
    for bad in ("", "Bob", "a,,B"):
        with pytest.raises(argparse.ArgumentTypeError):
            users_type(bad)


class _Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_bar_only_on_a_terminal() -> None:
    piped = _Stream(tty=False)
    bar = Bar("download /shared/a/x", 4 * MiB, piped)
    bar.update(MiB)
    bar.close()
    assert piped.getvalue() == "", "nothing is drawn when stderr is not a terminal"

    tty = _Stream(tty=True)
    bar = Bar("download /shared/a/x\x1b[2J", 4 * MiB, tty)
    bar.update(2 * MiB)
    text = tty.getvalue()
    assert text.startswith("\r") and " 50%" in text and "2.0 MiB / 4.0 MiB" in text and "\x1b[2J" not in text
    assert "[" + "#" * 12 + "-" * 12 + "]" in text
    bar.close()
    assert tty.getvalue().endswith("\r\x1b[K")
