"""App packages: a directory app as one deterministic `.tar.gz`, its SHA-256, and safe unpacking.

`pack` gives the same bytes for the same files wherever and whenever it runs: entries sorted by path, mtimes, owners
and modes fixed (0644, or 0755 for executables and directories), gzip without a timestamp. `__pycache__`, `*.pyc`
and dot-files are left out (an installed app keeps its origin in `.ztm-origin.json`). `unpack` accepts only regular
files and directories with plain relative paths inside limits, and writes into an empty directory the caller
then renames into place, so a bad package leaves nothing behind.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path, PurePosixPath

from ztm.apps.manifest import MANIFEST, Manifest
from ztm.errors import BadInput

MAX_PACKAGE = 16 << 20
"""Bytes of a packed app (compressed)."""
MAX_UNPACKED = 64 << 20
MAX_ENTRIES = 2000
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


def unpack(data: bytes, dest: Path) -> Manifest:
    """Unpack a package into the empty directory `dest`; return its manifest. `BadInput` for anything unsafe (the
    caller removes `dest` then)."""
    if len(data) > MAX_PACKAGE:
        raise BadInput(f"app package: {len(data)} bytes, more than the {MAX_PACKAGE >> 20} MiB allowed")
    try:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else b""
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise BadInput(f"app package: not a gzip file ({exc})") from None
    if not raw or len(raw) > MAX_UNPACKED + (MAX_ENTRIES << 10):
        raise BadInput("app package: not a .tar.gz of a ztm app, or too large unpacked")
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            members = tar.getmembers()
            if len(members) > MAX_ENTRIES:
                raise BadInput(f"app package: more than {MAX_ENTRIES} entries")
            for member in members:
                rel = _member_path(member.name)
                target = dest.joinpath(*rel.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif member.isreg():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    if source is None:
                        raise BadInput(f"app package: entry {member.name!r} has no data")
                    with source, open(target, "xb") as out:
                        out.write(source.read())
                    target.chmod(0o755 if member.mode & 0o111 else 0o644)
                else:
                    raise BadInput(
                        f"app package: refused entry {member.name[:80]!r}: only regular files and directories"
                    )
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
