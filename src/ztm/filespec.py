"""The rules of the mesh file space, shared by hub and agents: paths, namespaces, per-file ACLs, file entries and
who may read or write what. Pure functions and frozen values; every bad input is a `BadInput` saying what is wrong.

Namespaces (the first path segments):
- `/users/USER/...`: USER's private files: only USER writes; only USER reads, plus the users a file's ACL names
  `readonly`.
- `/shared/USER/...`: USER's public files: only USER writes; every member reads, except users the ACL `block`s.
- any other top-level directory: root's: only root writes; every member reads, except blocked users.
Root may write and read everything (root holds the mesh CA and could become any user anyway). An ACL never
restricts a file's owner or root.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import math
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from ztm import validate
from ztm.errors import BadInput

ROOT = "root"
CHUNK_SIZE = 1 << 20
"""Files are hashed and moved in chunks of 1 MiB (the last one shorter)."""
MAX_CHUNKS = 1 << 16
"""At most 64 GiB per file: the chunk list (64 hex digits each) must fit one hub request."""
MAX_PATH = 1024
MAX_SEGMENT = 255
MAX_ACL_USERS = 64
NAMESPACES = ("users", "shared")
_HASH = re.compile(r"[0-9a-f]{64}")


def check_hash(value: object, what: str = "hash") -> str:
    if not isinstance(value, str) or not _HASH.fullmatch(value):
        raise BadInput(f"invalid {what} {str(value)[:80]!r}: expected 64 lowercase hex digits (SHA-256)")
    return value


def _segments(text: str, what: str) -> list[str]:
    if not text.startswith("/"):
        raise BadInput(f"invalid {what} {text[:80]!r}: must start with '/', e.g. /shared/alice/notes.txt")
    if len(text) > MAX_PATH:
        raise BadInput(f"invalid {what}: longer than {MAX_PATH} characters")
    parts = text[1:].split("/")
    for part in parts:
        if part in (".", ".."):
            raise BadInput(f"invalid {what} {text[:80]!r}: '.' and '..' are not allowed")
        if len(part.encode("utf-8", "surrogatepass")) > MAX_SEGMENT:
            raise BadInput(f"invalid {what}: a name is longer than {MAX_SEGMENT} bytes")
        for ch in part:
            if not ch.isprintable() or ch == "\\":
                raise BadInput(f"invalid {what} {text[:80]!r}: control characters and '\\' are not allowed")
    return parts


def check_path(value: object) -> str:
    """A file path: `/a/b/c`, absolute, no empty, `.` or `..` names, printable; `/users/U/` and `/shared/U/` need a
    valid user name U and a file below it."""
    if not isinstance(value, str) or not value:
        raise BadInput(f"invalid path {value!r}: expected a string such as /shared/alice/notes.txt")
    parts = _segments(value, "path")
    if any(not p for p in parts):
        raise BadInput(f"invalid path {value[:80]!r}: empty names ('//' or a trailing '/') are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(f"invalid path {value[:80]!r}: not valid Unicode") from None
    if parts[0] in NAMESPACES:
        if len(parts) < 3:
            raise BadInput(f"invalid path {value[:80]!r}: a file goes below /{parts[0]}/USER/")
        validate.user_name(parts[1])
    return value


def check_prefix(value: object) -> str:
    """A listing prefix: `/`, a directory (`/shared/alice/`) or a path; `//` and `..` refused."""
    if value is None or value == "":
        return "/"
    if not isinstance(value, str):
        raise BadInput(f"invalid prefix {value!r}: expected a string such as /shared/")
    parts = _segments(value, "prefix")
    if any(not p for p in parts[:-1]):
        raise BadInput(f"invalid prefix {value[:80]!r}: empty names ('//') are not allowed")
    return value


def under(path: str, prefix: str) -> bool:
    """`path` is the prefix itself, or inside it as a directory (`/a/b` is under `/a` and `/a/`, not under `/a/b2`)."""
    if prefix.endswith("/"):
        return path.startswith(prefix)
    return path == prefix or path.startswith(prefix + "/")


def owner(path: str) -> str:
    """Who may write `path`: USER for `/users/USER/...` and `/shared/USER/...`, else root."""
    parts = path.split("/", 3)
    if len(parts) >= 3 and parts[1] in NAMESPACES:
        return parts[2]
    return ROOT


def writers(path: str) -> str:
    """Who may write `path`, for messages: `root` or `'alice' (or root)`."""
    user = owner(path)
    return "root" if user == ROOT else f"{user!r} (or root)"


def private(path: str) -> bool:
    return path.startswith("/users/")


@dataclass(frozen=True)
class Acl:
    """Per-file exceptions: `readonly` users may read a private file; `block`ed users may not read at all."""

    readonly: tuple[str, ...] = ()
    block: tuple[str, ...] = ()

    @classmethod
    def parse(cls, value: object) -> Acl:
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise BadInput('acl must be an object: {"readonly": [USER, ...], "block": [USER, ...]}')
        unknown = set(value) - {"readonly", "block"}
        if unknown:
            raise BadInput(f"unknown acl field(s) {', '.join(sorted(map(str, unknown)))}: use readonly and block")
        readonly = _users(value.get("readonly"), "readonly")
        block = _users(value.get("block"), "block")
        both = set(readonly) & set(block)
        if both:
            raise BadInput(f"user(s) {', '.join(sorted(both))} both readonly and blocked: pick one")
        return cls(readonly, block)

    @classmethod
    def from_lists(cls, readonly: Iterable[str], block: Iterable[str]) -> Acl:
        return cls.parse({"readonly": list(readonly), "block": list(block)})

    def to_json(self) -> dict[str, list[str]]:
        return {"readonly": list(self.readonly), "block": list(self.block)}

    def check_for(self, path: str) -> Acl:
        """This ACL as it may stand on `path`: it cannot name the owner or root."""
        for user in (*self.readonly, *self.block):
            if user in (owner(path), ROOT):
                raise BadInput(f"an acl cannot restrict {user!r}: the owner of {path[:80]} and root always have access")
        return self


def _users(value: object, what: str) -> tuple[str, ...]:
    items = validate.list_of(value, str, f"acl {what}")
    if len(items) > MAX_ACL_USERS:
        raise BadInput(f"acl {what}: at most {MAX_ACL_USERS} users")
    return tuple(sorted({validate.user_name(u) for u in items}))


def parse_user_list(text: str) -> list[str]:
    """`bob,carol` (the CLI's --readonly / --block values) -> valid user names."""
    users = [u.strip() for u in text.split(",") if u.strip()]
    if not users:
        raise BadInput("empty user list: give user names separated by commas")
    return [validate.user_name(u) for u in users]


def may_write(user: str, path: str) -> bool:
    return user == ROOT or user == owner(path)


def may_read(user: str, path: str, acl: Acl) -> bool:
    if user == ROOT or user == owner(path):
        return True
    if user in acl.block:
        return False
    if private(path):
        return user in acl.readonly
    return True


def read_refusal(user: str, path: str, acl: Acl) -> str:
    """Why `user` may not read `path` (for a refusal message)."""
    if user in acl.block:
        return f"user {user!r} is blocked from {path}"
    return f"{path} is private to {owner(path)!r}"


@dataclass(frozen=True)
class FileEntry:
    """One file of the mesh: its content's identity (size, SHA-256, chunk hashes) and who published it."""

    path: str
    size: int
    time: float
    """Modification time the publisher gave (seconds since the epoch)."""
    hash: str
    chunks: tuple[str, ...]
    publisher: str = ""
    """User who published it (from the certificate at the hub)."""
    ep: str = ""
    """Endpoint id that published it."""
    acl: Acl = field(default_factory=Acl)
    published: float = 0.0

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> FileEntry:
        """The content fields of a publish request; the hub fills publisher, ep and published."""
        path = check_path(body.get("path"))
        size = body.get("size")
        if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_CHUNKS * CHUNK_SIZE:
            raise BadInput(f"size must be a whole number from 0 to {MAX_CHUNKS * CHUNK_SIZE}, got {size!r}")
        mtime = body.get("time", 0)
        if isinstance(mtime, bool) or not isinstance(mtime, int | float) or not 0 <= mtime < 1e11:
            raise BadInput(f"time must be seconds since 1970 (a number), got {mtime!r}")
        file_hash = check_hash(body.get("hash"), "file hash")
        raw = body.get("chunks")
        if not isinstance(raw, list):
            raise BadInput("chunks must be a list of SHA-256 hex digests, one per 1 MiB of the file")
        chunks = tuple(check_hash(c, "chunk hash") for c in raw)
        if len(chunks) != chunk_count(size):
            raise BadInput(f"a file of {size} bytes has {chunk_count(size)} chunks of 1 MiB, not {len(chunks)}")
        acl = Acl.parse(body.get("acl")).check_for(path)
        return cls(path, size, float(mtime), file_hash, chunks, acl=acl)

    def to_json(self, *, chunks: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "path": self.path,
            "size": self.size,
            "time": self.time,
            "hash": self.hash,
            "publisher": self.publisher,
            "ep": self.ep,
            "acl": self.acl.to_json(),
            "published": self.published,
        }
        if chunks:
            out["chunks"] = list(self.chunks)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FileEntry:
        """An entry as the hub (or this agent's own records) wrote it; checked like a publish request."""
        entry = cls.parse(data)
        publisher = data.get("publisher", "")
        ep = data.get("ep", "")
        published = data.get("published", 0.0)
        return cls(
            entry.path,
            entry.size,
            entry.time,
            entry.hash,
            entry.chunks,
            str(publisher) if isinstance(publisher, str) else "",
            str(ep) if isinstance(ep, str) else "",
            entry.acl,
            float(published) if isinstance(published, int | float) and not isinstance(published, bool) else 0.0,
        )

    def chunk_size(self, index: int) -> int:
        return min(CHUNK_SIZE, self.size - index * CHUNK_SIZE)


def chunk_count(size: int) -> int:
    return math.ceil(size / CHUNK_SIZE)


class Hasher:
    """Cuts a byte stream into 1 MiB chunks while hashing it: `feed()` yields each finished chunk, `finish()` the
    last one; `file_hash` and `chunks` describe the whole stream afterwards."""

    def __init__(self) -> None:
        self._file = hashlib.sha256()
        self._buf = bytearray()
        self.size = 0
        self.chunks: list[str] = []

    def feed(self, data: bytes | memoryview) -> Iterator[tuple[str, bytes]]:
        self._file.update(data)
        self.size += len(data)
        self._buf += data
        while len(self._buf) >= CHUNK_SIZE:
            chunk = bytes(self._buf[:CHUNK_SIZE])
            del self._buf[:CHUNK_SIZE]
            yield self._cut(chunk)

    def finish(self) -> Iterator[tuple[str, bytes]]:
        if self._buf:
            chunk = bytes(self._buf)
            self._buf.clear()
            yield self._cut(chunk)

    def _cut(self, chunk: bytes) -> tuple[str, bytes]:
        digest = hashlib.sha256(chunk).hexdigest()
        self.chunks.append(digest)
        return digest, chunk

    @property
    def file_hash(self) -> str:
        return self._file.hexdigest()


@dataclass(frozen=True)
class ChunkSet:
    """Which chunks of a file an endpoint holds (a partial copy), as a bitmap: bit `i` of the file's `count` chunks
    is bit `7 - i % 8` of byte `i // 8` (most significant first, like BitTorrent's bitfield); bits past the last
    chunk are 0. On the wire it is the bitmap in standard base64 with padding (`encode()`, `decode()`): at most
    8 KiB of bitmap (10 924 characters) for the largest file."""

    count: int
    bits: bytes

    @classmethod
    def of(cls, indices: Iterable[int], count: int) -> ChunkSet:
        if not 0 <= count <= MAX_CHUNKS:
            raise BadInput(f"a file has from 0 to {MAX_CHUNKS} chunks, not {count}")
        raw = bytearray((count + 7) // 8)
        for index in indices:
            if not 0 <= index < count:
                raise BadInput(f"chunk {index} is outside a file of {count} chunks")
            raw[index >> 3] |= 0x80 >> (index & 7)
        return cls(count, bytes(raw))

    @classmethod
    def decode(cls, value: object, count: int, what: str = "have") -> ChunkSet:
        """The set `value` encodes for a file of `count` chunks; BadInput saying what is wrong otherwise."""
        if not 0 <= count <= MAX_CHUNKS:
            raise BadInput(f"a file has from 0 to {MAX_CHUNKS} chunks, not {count}")
        nbytes = (count + 7) // 8
        chars = 4 * math.ceil(nbytes / 3)
        if not isinstance(value, str):
            raise BadInput(f"{what} must be a base64 string (a bitmap of the chunks held), got {type(value).__name__}")
        if len(value) != chars:
            got = len(value) if len(value) <= MAX_HAVE_CHARS else f"more than {MAX_HAVE_CHARS}"
            raise BadInput(f"{what} must be {chars} base64 characters (a bitmap of {count} chunks), got {got}")
        try:
            raw = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise BadInput(f"{what} is not valid base64 (A-Z, a-z, 0-9, '+', '/', '=' padding)") from None
        if len(raw) != nbytes or base64.b64encode(raw).decode("ascii") != value:
            raise BadInput(f"{what} is not the canonical base64 of a {nbytes}-byte bitmap")
        spare = nbytes * 8 - count
        if spare and raw[-1] & ((1 << spare) - 1):
            raise BadInput(f"{what} sets bits past the last of the file's {count} chunks")
        return cls(count, raw)

    def encode(self) -> str:
        return base64.b64encode(self.bits).decode("ascii")

    def __contains__(self, index: object) -> bool:
        if not isinstance(index, int) or not 0 <= index < self.count:
            return False
        return bool(self.bits[index >> 3] & (0x80 >> (index & 7)))

    def held(self) -> int:
        """How many chunks the set holds."""
        return sum(bin(b).count("1") for b in self.bits)

    def indices(self) -> Iterator[int]:
        for index in range(self.count):
            if index in self:
                yield index


MAX_HAVE_CHARS = 4 * math.ceil(MAX_CHUNKS // 8 / 3)
"""The longest encoded `ChunkSet`."""


def describe(data: bytes, path: str, mtime: float | None = None) -> FileEntry:
    """The entry of in-memory content (tests and small writes)."""
    hasher = Hasher()
    list(hasher.feed(data))
    list(hasher.finish())
    return FileEntry(path, len(data), time.time() if mtime is None else mtime, hasher.file_hash, tuple(hasher.chunks))
