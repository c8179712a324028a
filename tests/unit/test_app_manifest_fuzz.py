"""Fuzzing the app manifest parser and the package unpacker: whatever they are given, they return a result or raise
`BadInput` with a one-line message, and unpacking never writes outside its directory."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ztm.apps.manifest import FIELDS, Manifest
from ztm.apps.package import unpack
from ztm.errors import BadInput

FUZZ = settings(max_examples=300, deadline=None)
GOOD: dict[str, Any] = {"name": "kv", "version": "0.1", "provider": "me", "description": "d", "entry": "m:C"}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _check(data: bytes | str | dict[str, Any]) -> None:
    try:
        m = Manifest.parse(data)
    except BadInput as exc:
        assert exc.message and "\n" not in exc.message
        return
    assert Manifest.parse(m.to_json()) == m
    assert m.name and m.version and m.provider and ":" in m.entry


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes(data: bytes) -> None:
    _check(data)


@FUZZ
@given(st.dictionaries(st.sampled_from([*FIELDS, "x"]), json_values, max_size=7))
def test_any_object(obj: dict[str, Any]) -> None:
    _check(obj)


@FUZZ
@given(st.sampled_from(FIELDS), json_values | st.text(max_size=80))
def test_one_field_mutated(key: str, value: object) -> None:
    _check(json.dumps({**GOOD, key: value}))


@FUZZ
@given(st.lists(st.tuples(st.text(min_size=1, max_size=30), st.binary(max_size=20)), max_size=6))
def test_unpack_any_tar(entries: list[tuple[str, bytes]]) -> None:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("ztm-app.json", json.dumps(GOOD).encode()), *entries]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dest = root / "dest"
        dest.mkdir()
        try:
            unpack(gzip.compress(raw.getvalue()), dest)
        except BadInput as exc:
            assert exc.message and "\n" not in exc.message
        assert [p.name for p in root.iterdir()] == ["dest"]
        for path in dest.rglob("*"):
            assert path.resolve().is_relative_to(dest.resolve())
