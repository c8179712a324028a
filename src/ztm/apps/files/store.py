"""`ChunkStore`: content-addressed chunk files on disk (`DIR/chunks/HH/SHA256`), blocking I/O (callers run it in a
thread). A chunk is written to a temporary file and renamed, so a file named by a hash is complete; it is checked
against its name again on every read, and a chunk that no longer matches (disk damage, tampering) is deleted and
reported as `Corrupt`, never served."""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterable
from pathlib import Path

from ztm.errors import Unavailable
from ztm.filespec import check_hash


class Corrupt(Unavailable):
    """A stored chunk does not match its hash (it was deleted)."""

    code = "corrupt"


class ChunkStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.chunks = root / "chunks"

    def path(self, chunk_hash: str) -> Path:
        check_hash(chunk_hash, "chunk hash")
        return self.chunks / chunk_hash[:2] / chunk_hash

    def has(self, chunk_hash: str) -> bool:
        return self.path(chunk_hash).is_file()

    def put(self, chunk_hash: str, data: bytes) -> None:
        """Store `data` under its hash; ValueError if the hash does not match (the caller verifies first)."""
        if hashlib.sha256(data).hexdigest() != chunk_hash:
            raise ValueError("chunk data does not match its hash")
        target = self.path(chunk_hash)
        if target.is_file():
            return
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = target.with_name(f".{chunk_hash}.{os.getpid()}.{id(data)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            tmp.replace(target)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise

    def read(self, chunk_hash: str) -> bytes:
        """The chunk's bytes, verified; `Corrupt` (and the file removed) if they no longer match."""
        target = self.path(chunk_hash)
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            raise Corrupt(f"chunk {chunk_hash[:12]} is missing from the local store") from None
        if hashlib.sha256(data).hexdigest() != chunk_hash:
            with contextlib.suppress(OSError):
                target.unlink()
            raise Corrupt(f"chunk {chunk_hash[:12]} in the local store is damaged (removed)")
        return data

    def gc(self, keep: Iterable[str]) -> int:
        """Delete every chunk not in `keep` (and stale temporary files); returns how many went."""
        wanted = set(keep)
        removed = 0
        if not self.chunks.is_dir():
            return 0
        for sub in self.chunks.iterdir():
            if not sub.is_dir():
                continue
            for item in sub.iterdir():
                if item.name.startswith("."):  # a chunk being written; left over by a crash after an hour
                    with contextlib.suppress(OSError):
                        if time.time() - item.stat().st_mtime > 3600:
                            item.unlink()
                    continue
                if item.name not in wanted:
                    with contextlib.suppress(OSError):
                        item.unlink()
                        removed += 1
        return removed
