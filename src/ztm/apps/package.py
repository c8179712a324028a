"""App packages: a directory app as one deterministic `.tar.gz`, its SHA-256, and safe unpacking.

`pack` gives the same bytes for the same files wherever and whenever it runs: entries sorted by path, mtimes, owners
and modes fixed (0644, or 0755 for executables and directories), gzip without a timestamp. `__pycache__`, `*.pyc`
and dot-files are left out (an installed app keeps its origin in `.ztm-origin.json`). `unpack` decompresses in
pieces with a cap (a gzip bomb is refused after `MAX_TAR` bytes, never held whole), accepts only regular files and
directories (no sparse members, links or devices) with plain relative paths, checks their count and summed sizes
before it writes anything, and writes into an empty directory the caller then renames into place, so a bad package
leaves nothing behind.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO

from ztm.apps.manifest import MANIFEST, Manifest
from ztm.errors import BadInput

MAX_PACKAGE = 16 << 20
"""Bytes of a packed app (compressed)."""
MAX_UNPACKED = 64 << 20
"""Bytes of all files of an app together."""
MAX_ENTRIES = 2000
MAX_TAR = MAX_UNPACKED + (MAX_ENTRIES << 10)
"""Bytes of the tar inside the gzip: the files plus headers and padding (a few blocks per entry)."""
CHUNK = 1 << 16
SPOOL = 1 << 20
"""Bytes of decompressed tar kept in memory; beyond, in a temporary file."""
FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _skipped(part: str) -> bool:
    return part.startswith(".") or part == "__pycache__" or part.endswith(".pyc")


def _files(root: Path) -> list[tuple[str, Path]]:
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
        base = Path(dirpath)
        for name in sorted([*dirnames, *(f for f in filenames if not _skipped(f))]):
            path = base / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                raise BadInput(f"{root}: {rel} is a symbolic link; an app package holds only files and directories")
            found.append((rel, path))
    return sorted(found)


def pack(root: Path) -> bytes:
    """The app directory `root` as deterministic `.tar.gz` bytes; `BadInput` if it is no app or too large."""
    Manifest.parse((root / MANIFEST).read_bytes(), str(root / MANIFEST))
    raw = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel, path in _files(root):
            info = tarfile.TarInfo(rel)
            info.mtime = FIXED_MTIME
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            mode = path.stat().st_mode
            if stat.S_ISDIR(mode):
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            elif stat.S_ISREG(mode):
                data = path.read_bytes()
                total += len(data)
                if total > MAX_UNPACKED:
                    raise BadInput(f"{root}: more than {MAX_UNPACKED >> 20} MiB of files; an app must be smaller")
                info.size = len(data)
                info.mode = 0o755 if mode & 0o111 else 0o644
                tar.addfile(info, io.BytesIO(data))
            else:
                raise BadInput(f"{root}: {rel} is not a regular file or directory")
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0, compresslevel=9, filename="") as gz:
        gz.write(raw.getvalue())
    data = packed.getvalue()
    if len(data) > MAX_PACKAGE:
        raise BadInput(f"{root}: the package is {len(data)} bytes, more than the {MAX_PACKAGE >> 20} MiB allowed")
    return data


def _member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if (
        not name
        or path.is_absolute()
        or any(part in ("", ".", "..") for part in name.split("/"))
        or "\\" in name
        or not name.isprintable()
    ):
        raise BadInput(f"app package: refused entry {name[:80]!r}: only plain relative paths are allowed")
    return path


def _gunzip(data: bytes, out: IO[bytes]) -> None:
    """Decompress the gzip `data` into `out` piece by piece, refusing it as soon as it exceeds `MAX_TAR`."""
    if data[:2] != b"\x1f\x8b":
        raise BadInput("app package: not a gzip file; an app package is a .tar.gz made by 'ztm publish app'")
    inflater = zlib.decompressobj(wbits=31)
    pending, total = data, 0
    try:
        while not inflater.eof:
            piece = inflater.decompress(pending, CHUNK)
            pending = inflater.unconsumed_tail
            total += len(piece)
            if total > MAX_TAR:
                raise BadInput(
                    f"app package: more than {MAX_TAR >> 20} MiB unpacked (a compression bomb?); refused before "
                    "anything was written"
                )
            out.write(piece)
            if not piece and not pending:
                raise BadInput("app package: the gzip data ends early (truncated)")
    except zlib.error as exc:
        raise BadInput(f"app package: not a gzip file ({exc})") from None
    if inflater.unused_data:
        raise BadInput("app package: data after the end of the gzip stream")


def _members(tar: tarfile.TarFile) -> list[tuple[tarfile.TarInfo, PurePosixPath]]:
    """Every entry with its path, checked before anything is written: at most `MAX_ENTRIES`, plain relative paths,
    only regular files and directories (no GNU or PAX sparse files, links, devices), at most `MAX_UNPACKED` bytes
    in all."""
    members: list[tuple[tarfile.TarInfo, PurePosixPath]] = []
    total = 0
    while (member := tar.next()) is not None:
        if len(members) >= MAX_ENTRIES:
            raise BadInput(f"app package: more than {MAX_ENTRIES} entries")
        rel = _member_path(member.name)
        if member.issparse() or member.sparse is not None:
            raise BadInput(
                f"app package: refused entry {member.name[:80]!r}: a sparse file; only regular files and directories"
            )
        if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.DIRTYPE):
            raise BadInput(f"app package: refused entry {member.name[:80]!r}: only regular files and directories")
        if member.isreg():
            total += member.size
            if total > MAX_UNPACKED:
                raise BadInput(f"app package: more than {MAX_UNPACKED >> 20} MiB of files; nothing was unpacked")
        members.append((member, rel))
    return members


def _extract(tar: tarfile.TarFile, member: tarfile.TarInfo, target: Path) -> None:
    """Copy one regular file out, at most its declared size."""
    source = tar.extractfile(member)
    if source is None:
        raise BadInput(f"app package: entry {member.name!r} has no data")
    written = 0
    with source, open(target, "xb") as out:
        while piece := source.read(min(CHUNK, member.size - written)):
            out.write(piece)
            written += len(piece)
    if written != member.size:
        raise BadInput(f"app package: entry {member.name[:80]!r} is truncated")
    target.chmod(0o755 if member.mode & 0o111 else 0o644)


def unpack(data: bytes, dest: Path) -> Manifest:
    """Unpack a package into the empty directory `dest`; return its manifest. `BadInput` for anything unsafe (the
    caller removes `dest` then). The gzip layer is decompressed in pieces with a cap (`MAX_TAR`) into a spooled
    temporary file, and every entry is checked (`_members`) before the first byte is written to `dest`."""
    if len(data) > MAX_PACKAGE:
        raise BadInput(f"app package: {len(data)} bytes, more than the {MAX_PACKAGE >> 20} MiB allowed")
    with tempfile.SpooledTemporaryFile(max_size=SPOOL) as raw:
        _gunzip(data, raw)
        if not raw.tell():
            raise BadInput("app package: empty; an app package is a .tar.gz made by 'ztm publish app'")
        raw.seek(0)
        try:
            with tarfile.open(fileobj=raw, mode="r:") as tar:
                for member, rel in _members(tar):
                    target = dest.joinpath(*rel.parts)
                    if member.isdir():
                        target.mkdir(parents=True, exist_ok=True)
                    else:
                        target.parent.mkdir(parents=True, exist_ok=True)
                        _extract(tar, member, target)
        except (tarfile.TarError, EOFError) as exc:
            raise BadInput(f"app package: not a valid tar archive ({exc})") from None
        except FileExistsError as exc:
            raise BadInput(f"app package: duplicate entry {Path(str(exc.filename)).name!r}") from None
        except OSError as exc:
            raise BadInput(f"app package: cannot unpack: {exc.strerror or exc}") from None
    manifest_file = dest / MANIFEST
    if not manifest_file.is_file():
        raise BadInput(f"app package: no {MANIFEST} at its top level")
    return Manifest.parse(manifest_file.read_bytes(), f"app package: {MANIFEST}")
