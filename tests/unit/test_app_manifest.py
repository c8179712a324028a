"""The app manifest (`ztm-app.json`), app packages and the app loader: validation with clear one-line errors,
deterministic packaging, safe unpacking, and importing directory apps and entry-point apps."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ztm.agent.apps import MeshApp
from ztm.apps import loader
from ztm.apps.manifest import Manifest
from ztm.apps.package import pack, sha256, unpack
from ztm.errors import BadInput

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "chat"
GOOD: dict[str, Any] = {
    "name": "chat",
    "version": "1.0.0",
    "provider": "example.org",
    "description": "messages",
    "entry": "app:ChatApp",
}


def test_a_good_manifest() -> None:
    m = Manifest.parse(json.dumps(GOOD).encode())
    assert (m.name, m.version, m.provider, m.module, m.class_name) == ("chat", "1.0.0", "example.org", "app", "ChatApp")
    assert Manifest.parse(m.to_json()) == m
    assert Manifest.parse({k: v for k, v in GOOD.items() if k != "description"}).description == ""
    assert Manifest.parse({**GOOD, "entry": "pkg.sub.mod:Cls_2"}).module == "pkg.sub.mod"
    assert Manifest.parse((EXAMPLE / "ztm-app.json").read_bytes()).name == "chat"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "Chat"}, "invalid app name 'Chat'"),
        ({"name": "9lives"}, "invalid app name"),
        ({"name": "a" * 33}, "invalid app name"),
        ({"name": 7}, "field 'name' must be a string"),
        ({"version": ""}, "invalid version ''"),
        ({"version": "1.0+build"}, "invalid version"),
        ({"version": "1" * 25}, "invalid version"),
        ({"provider": ""}, "invalid provider"),
        ({"provider": " x"}, "without leading or trailing spaces"),
        ({"description": "two\nlines"}, "invalid description"),
        ({"entry": "app"}, "expected module:Class"),
        ({"entry": "../evil:X"}, "expected module:Class"),
        ({"entry": "app:Chat.App"}, "expected module:Class"),
        ({"entry": None}, "field 'entry' must be a string"),
        ({"extra": 1}, "unknown field 'extra'"),
    ],
)
def test_bad_fields_say_what_is_wrong(change: dict[str, Any], message: str) -> None:
    with pytest.raises(BadInput) as caught:
        Manifest.parse({**GOOD, **change}, "apps/chat/ztm-app.json")
    assert message in caught.value.message
    assert caught.value.message.startswith("apps/chat/ztm-app.json: ")
    assert "\n" not in caught.value.message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "not valid JSON"),
        (b"{", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b"\xff\xfe", "not valid JSON"),
        (json.dumps({"name": "x"}).encode(), "missing field 'version'"),
        (b" " * (65 * 1024), "larger than"),
    ],
)
def test_bad_documents(data: bytes, message: str) -> None:
    with pytest.raises(BadInput, match=message):
        Manifest.parse(data)


# ---- packages ----


def make_app(root: Path, name: str = "hello", body: str = "") -> Path:
    app = root / name
    (app / "lib").mkdir(parents=True)
    (app / "ztm-app.json").write_text(json.dumps({**GOOD, "name": name, "entry": "app:Hello"}))
    (app / "app.py").write_text(
        "from ztm.agent.apps import MeshApp\nfrom .lib.words import WORD\n\n"
        f"class Hello(MeshApp):\n    word = WORD\n{body}"
    )
    (app / "lib" / "__init__.py").write_text("")
    (app / "lib" / "words.py").write_text("WORD = 'hi'\n")
    return app


def test_packing_is_deterministic_and_skips_caches(tmp_path: Path) -> None:
    first = make_app(tmp_path / "a")
    second = make_app(tmp_path / "b")
    (second / "__pycache__").mkdir()
    (second / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"junk")
    (second / ".ztm-origin.json").write_text("{}")
    (second / "app.py").touch()  # another mtime
    assert pack(first) == pack(second)
    assert sha256(pack(first)) == sha256(pack(second))
    (second / "lib" / "words.py").write_text("WORD = 'ho'\n")
    assert pack(first) != pack(second)


def test_unpack_round_trip(tmp_path: Path) -> None:
    data = pack(make_app(tmp_path / "src"))
    dest = tmp_path / "dest"
    dest.mkdir()
    assert unpack(data, dest).name == "hello"
    assert (dest / "lib" / "words.py").read_text() == "WORD = 'hi'\n"


def test_symlinks_are_not_packed(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    (app / "link").symlink_to("/etc/passwd")
    with pytest.raises(BadInput, match="symbolic link"):
        pack(app)


def _tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in entries:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return gzip.compress(raw.getvalue())


def _file(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), b"x"


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, b""


MANIFEST_ENTRY = (tarfile.TarInfo("ztm-app.json"), json.dumps(GOOD).encode())


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([MANIFEST_ENTRY, _file("../escape.py")], "only plain relative paths"),
        ([MANIFEST_ENTRY, _file("/etc/cron.d/x")], "only plain relative paths"),
        ([MANIFEST_ENTRY, _file("a/./b")], "only plain relative paths"),
        ([MANIFEST_ENTRY, _link("evil", "/etc/passwd")], "only regular files and directories"),
        ([MANIFEST_ENTRY, _link("evil", "ztm-app.json", tarfile.LNKTYPE)], "only regular files and directories"),
        ([MANIFEST_ENTRY, MANIFEST_ENTRY], "duplicate entry"),
        ([_file("app.py")], "no ztm-app.json"),
    ],
)
def test_unsafe_packages_are_refused(
    tmp_path: Path, entries: list[tuple[tarfile.TarInfo, bytes]], message: str
) -> None:
    with pytest.raises(BadInput, match=message):
        unpack(_tar(entries), tmp_path)
    assert not (tmp_path.parent / "escape.py").exists()


@pytest.mark.parametrize("data", [b"", b"not gzip", gzip.compress(b"not a tar", mtime=0), b"\x1f\x8b\x08garbage"])
def test_garbage_is_refused(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(BadInput, match="app package"):
        unpack(data, tmp_path)


def test_summed_sizes_are_checked_before_anything_is_written(tmp_path: Path) -> None:
    # 64 MiB and one byte in two files: refused from the headers, before the first file is written.
    raw = io.BytesIO()
    for name, size in (("ztm-app.json", 32 << 20), ("b.bin", (32 << 20) + 1)):
        info = tarfile.TarInfo(name)
        info.size = size
        raw.write(info.tobuf(format=tarfile.GNU_FORMAT) + bytes(size))
    with pytest.raises(BadInput, match="MiB of files; nothing was unpacked"):
        unpack(gzip.compress(raw.getvalue(), 1), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_pax_sparse_and_truncated_or_trailing_gzip_are_refused(tmp_path: Path) -> None:
    info = tarfile.TarInfo("big.bin")
    info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": str(1 << 30)}
    sparse = _tar([MANIFEST_ENTRY, (info, b"1\n0\n0\n" + bytes(509))])
    with pytest.raises(BadInput, match="sparse file"):
        unpack(sparse, tmp_path)
    good = _tar([MANIFEST_ENTRY])
    with pytest.raises(BadInput, match="ends early"):
        unpack(good[: len(good) - 12], tmp_path)
    with pytest.raises(BadInput, match="after the end of the gzip stream"):
        unpack(good + b"more", tmp_path)


# ---- loader ----


def test_directory_apps_are_found_and_imported(tmp_path: Path) -> None:
    apps = tmp_path / "apps"
    make_app(apps)
    (apps / "broken").mkdir()
    (apps / "broken" / "ztm-app.json").write_text("{")
    make_app(apps, "elsewhere")
    (apps / "elsewhere" / "ztm-app.json").write_text(json.dumps({**GOOD, "name": "other", "entry": "app:Hello"}))
    (apps / ".new-x-1234").mkdir()
    found = loader.discover([], apps)
    assert sorted(found) == ["broken", "hello", "other"]
    assert found["broken"].error is not None and "not valid JSON" in found["broken"].error
    assert found["other"].error is not None and "its directory must have that name" in found["other"].error
    with pytest.raises(BadInput, match="cannot run"):
        found["other"].load_class()
    cls = found["hello"].load_class()
    assert issubclass(cls, MeshApp) and cls.name == "hello" and cls.version == "1.0.0"
    assert cls.word == "hi"  # type: ignore[attr-defined]
    # a reinstall with other code is imported afresh
    (apps / "hello" / "lib" / "words.py").write_text("WORD = 'new'\n")
    loader.forget_modules("hello")
    assert loader.discover([], apps)["hello"].load_class().word == "new"  # type: ignore[attr-defined]
    loader.forget_modules("hello")


@pytest.mark.parametrize(
    ("body", "entry", "message"),
    [
        ("", "app:Missing", "is not a subclass of ztm.agent.apps.MeshApp"),
        ("    name = 'other'\n", "app:Hello", "its name must be 'hello'"),
        ("raise RuntimeError('boom')\n", "app:Hello", "RuntimeError: boom"),
        ("", "nomodule:Hello", "ModuleNotFoundError"),
    ],
)
def test_bad_code_is_reported_not_raised(tmp_path: Path, body: str, entry: str, message: str) -> None:
    apps = tmp_path / "apps"
    app = make_app(apps, body=body)
    (app / "ztm-app.json").write_text(json.dumps({**GOOD, "name": "hello", "entry": entry}))
    info = loader.discover([], apps)["hello"]
    try:
        with pytest.raises(BadInput, match=message):
            info.load_class()
    finally:
        loader.forget_modules("hello")


def test_builtins_take_precedence_and_entry_points_are_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Builtin(MeshApp):
        name = "hello"

    class FromPackage(MeshApp):
        name = "pkgapp"

    class FakeDist:
        version = "2.0"
        name = "pkgapp-dist"
        metadata = {"Author": "someone", "Summary": "a packaged app"}

    class FakeEntryPoint:
        def __init__(self, name: str, value: object) -> None:
            self.name, self.value, self.dist, self._target = name, "pkgapp.mod:FromPackage", FakeDist(), value

        def load(self) -> object:
            return self._target

    monkeypatch.setattr(
        loader,
        "_entry_points",
        lambda: [FakeEntryPoint("pkgapp", FromPackage), FakeEntryPoint("Bad Name", FromPackage)],
    )
    make_app(tmp_path / "apps")
    found = loader.discover([Builtin], tmp_path / "apps")
    assert found["hello"].source == loader.BUILTIN and found["hello"].load_class() is Builtin
    assert (found["pkgapp"].source, found["pkgapp"].version, found["pkgapp"].provider) == ("package", "2.0", "someone")
    assert found["pkgapp"].load_class() is FromPackage
    assert found["Bad Name"].error is not None and "not a valid app name" in found["Bad Name"].error
