"""The files app's chunk protocol on an app stream (service `fetch`), as bytes: no I/O here.

The downloader sends requests, one JSON object per line; the source answers each in turn with a header line and,
for a chunk, exactly `size` bytes of data:

    -> {"path": "/shared/alice/big.iso", "hash": FILE_SHA256, "index": 3}\\n
    <- {"size": 1048576, "sha256": CHUNK_SHA256}\\n <1048576 bytes>
    <- {"error": "user 'eve' is blocked from /shared/alice/big.iso", "code": "forbidden"}\\n   (then END_STREAM)
    <- {"error": "this endpoint does not hold chunk 3 of /shared/alice/big.iso yet", "code": "not_held"}\\n

The last one comes from a partial holder (an endpoint still downloading the file) asked for a chunk it does not have
yet; unlike every other error it leaves the stream open for the next request.

The source decides from the caller's identity as the hub asserts it, never from anything in the request, and the
downloader trusts no header: it checks every chunk against the chunk hash the hub's index lists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ztm import filespec
from ztm.errors import BadInput, NotFound, ZtmError, from_json

SERVICE = "fetch"
MAX_LINE = 4096


class NotHeld(NotFound):
    """A partial holder does not have that chunk (yet): ask another source; the stream stays usable."""

    code = "not_held"


@dataclass(frozen=True)
class ChunkRequest:
    path: str
    hash: str
    index: int

    def encode(self) -> bytes:
        return json.dumps({"path": self.path, "hash": self.hash, "index": self.index}).encode() + b"\n"


def parse_request(line: bytes) -> ChunkRequest:
    """One request line (without its newline); BadInput for anything else."""
    if len(line) > MAX_LINE:
        raise BadInput(f"request line longer than {MAX_LINE} bytes")
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise BadInput("a chunk request must be one JSON object per line") from None
    if not isinstance(data, dict):
        raise BadInput("a chunk request must be a JSON object")
    index = data.get("index")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < filespec.MAX_CHUNKS:
        raise BadInput(f"index must be a chunk number from 0 to {filespec.MAX_CHUNKS - 1}")
    return ChunkRequest(filespec.check_path(data.get("path")), filespec.check_hash(data.get("hash")), index)


def ok_header(size: int, chunk_hash: str) -> bytes:
    return json.dumps({"size": size, "sha256": chunk_hash}).encode() + b"\n"


def error_header(exc: ZtmError) -> bytes:
    return json.dumps(exc.to_json()).encode() + b"\n"


def parse_header(line: bytes) -> int:
    """The size a source announces for the chunk that follows; the source's refusal as its `ZtmError`."""
    try:
        data = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        raise BadInput("the source answered with something that is not a JSON header") from None
    if not isinstance(data, dict):
        raise BadInput("the source answered with a header that is not a JSON object")
    if "error" in data:
        if data.get("code") == NotHeld.code and isinstance(data["error"], str):
            raise NotHeld(data["error"])
        raise from_json(400, data)
    size = data.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= filespec.CHUNK_SIZE:
        raise BadInput(f"the source announced a chunk of {size!r} bytes (at most 1 MiB)")
    return size


class LineBuffer:
    """Bytes in, lines and fixed-size blocks out (the reading side of both ends)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def __len__(self) -> int:
        return len(self._buf)

    def line(self) -> bytes | None:
        """The next complete line without its newline, or None; BadInput once a line exceeds `MAX_LINE`."""
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > MAX_LINE:
                raise BadInput(f"a line longer than {MAX_LINE} bytes")
            return None
        if end > MAX_LINE:
            raise BadInput(f"a line longer than {MAX_LINE} bytes")
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line

    def take(self, n: int) -> bytes | None:
        """Exactly `n` bytes, or None while fewer are buffered."""
        if len(self._buf) < n:
            return None
        block = bytes(self._buf[:n])
        del self._buf[:n]
        return block
