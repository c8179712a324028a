"""The app manifest `ztm-app.json`: what a directory app declares about itself, parsed and validated (pure, no I/O).

```json
{"name": "chat", "version": "1.0.0", "provider": "example.org",
 "description": "a one-line description", "entry": "app:ChatApp"}
```

`name` is the app name on the wire (the `ztm-app` header), so it follows the hub's rule: a lowercase letter, then up
to 31 lowercase letters, digits or '-'. `entry` is `module:Class`, the module relative to the app's directory.
Every failure is a `BadInput` whose one-line message names the manifest, the field and what to write instead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ztm.errors import BadInput
from ztm.validate import APP_NAME

MANIFEST = "ztm-app.json"
MAX_MANIFEST = 64 * 1024

VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,23}")
"""Fits in a service name of the `apps` app: `NAME/VERSION/SHA256` (at most 128 characters)."""
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
ENTRY = re.compile(rf"({_IDENT}(?:\.{_IDENT})*):({_IDENT})")
FIELDS = ("name", "version", "provider", "description", "entry")
REQUIRED = ("name", "version", "provider", "entry")


@dataclass(frozen=True)
class Manifest:
    name: str
    version: str
    provider: str
    description: str
    entry: str
    """`module:Class`."""

    @property
    def module(self) -> str:
        return self.entry.partition(":")[0]

    @property
    def class_name(self) -> str:
        return self.entry.partition(":")[2]

    @classmethod
    def parse(cls, data: bytes | str | dict[str, Any], where: str = MANIFEST) -> Manifest:
        """A manifest from its JSON text or object; `BadInput` naming `where` if anything is wrong."""
        obj = _object(data, where)
        unknown = sorted(k for k in obj if k not in FIELDS)
        if unknown:
            raise BadInput(f"{where}: unknown field {unknown[0]!r}; the fields are {', '.join(FIELDS)}")
        for key in REQUIRED:
            if key not in obj:
                raise BadInput(f"{where}: missing field {key!r}; the fields are {', '.join(FIELDS)}")
        return cls(
            name=check_name(_text(obj, "name", where), where),
            version=_match(
                obj,
                "version",
                VERSION,
                where,
                "1-24 letters, digits and . _ -, starting with a letter or digit, e.g. 1.0.0",
            ),
            provider=_printable(obj, "provider", where, 1, 63),
            description=_printable(obj, "description", where, 0, 300) if "description" in obj else "",
            entry=_match(obj, "entry", ENTRY, where, "module:Class, e.g. app:ChatApp"),
        )

    def to_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "version": self.version,
            "provider": self.provider,
            "description": self.description,
            "entry": self.entry,
        }


def check_name(value: object, where: str = "app name") -> str:
    """An app name: a lowercase letter, then up to 31 lowercase letters, digits or '-'."""
    if not isinstance(value, str) or not APP_NAME.fullmatch(value):
        raise BadInput(
            f"{where}: invalid app name {_show(value)}: use a lowercase letter, then up to 31 lowercase letters, "
            "digits or '-'"
        )
    return value


def _object(data: bytes | str | dict[str, Any], where: str) -> dict[str, Any]:
    if isinstance(data, dict):
        return data
    if len(data) > MAX_MANIFEST:
        raise BadInput(f"{where}: larger than {MAX_MANIFEST} bytes; a manifest is a small JSON object")
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise BadInput(f"{where}: not valid JSON ({' '.join(str(exc).split())})") from None
    if not isinstance(value, dict):
        raise BadInput(f"{where}: must be a JSON object with {', '.join(REQUIRED)}, got {type(value).__name__}")
    return value


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj[key]
    if not isinstance(value, str):
        raise BadInput(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def _match(obj: dict[str, Any], key: str, pattern: re.Pattern[str], where: str, hint: str) -> str:
    value = _text(obj, key, where)
    if not pattern.fullmatch(value):
        raise BadInput(f"{where}: invalid {key} {_show(value)}: expected {hint}")
    return value


def _printable(obj: dict[str, Any], key: str, where: str, lo: int, hi: int) -> str:
    value = _text(obj, key, where)
    if not lo <= len(value) <= hi or not value.isprintable() or value != value.strip():
        raise BadInput(
            f"{where}: invalid {key} {_show(value)}: {lo}-{hi} printable characters without leading or trailing spaces"
        )
    return value


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
