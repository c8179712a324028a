"""Checks for untrusted input shared by every API: names, labels, and typed fields of JSON bodies.

Each check raises `BadInput` with a message that says what is wrong and what is accepted.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

from ztm.errors import BadInput

T = TypeVar("T")

USER = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""A user name (also in certificates); use with `fullmatch`."""
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
"""An endpoint, mesh or tunnel name; use with `fullmatch`."""
_LABEL = re.compile(r"^[A-Za-z0-9_.=:/-]{1,63}$")
APP_NAME = re.compile(r"[a-z][a-z0-9-]{0,31}")
"""An app name (the `ztm-app` header on the wire, as the hub checks it); use with `fullmatch`."""
MAX_LABELS = 32
ZONE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
"""A hub's or agent's zone (`--zone`); use with `fullmatch`."""


def user_name(value: object) -> str:
    if not isinstance(value, str) or not USER.fullmatch(value):
        raise BadInput(
            f"invalid user name {value!r}: use 1-63 lowercase letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return value


def name(value: object, what: str) -> str:
    """An endpoint or mesh name: 1-63 letters, digits, '.', '_', '-'."""
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise BadInput(
            f"invalid {what} {value!r}: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return value


def zone(value: str, what: str = "--zone") -> str:
    """`value` if it is a zone name or "" (no zone); BadInput saying what to fix."""
    if value == "" or ZONE.fullmatch(value):
        return value
    raise BadInput(
        f"{what}: {value[:40]!r} is not a zone name: use 1 to 32 lowercase letters, digits and '-', "
        "starting with a letter or digit (e.g. eu-west-1)"
    )


def looks_like_id(text: str) -> bool:
    """True when `text` parses as an endpoint id (a UUID in any spelling Python accepts: upper case, without or with
    moved hyphens, ...). Such text is never an endpoint name, so a reference that parses as an id means that id."""
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


def endpoint_name(value: object, what: str = "endpoint name") -> str:
    """An endpoint name: `name`, and not something that parses as an endpoint id (a name could pass for another
    endpoint's id where a name or an id is accepted: `--entrances`, `--exits`, `--from`)."""
    text = name(value, what)
    if looks_like_id(text):
        raise BadInput(
            f"invalid {what} {text!r}: it reads as an endpoint id (a UUID), and names may not, so that no endpoint "
            "can pass for another; choose a name such as 'laptop' or 'office-1'"
        )
    return text


def label(value: object) -> str:
    if not isinstance(value, str) or not _LABEL.match(value):
        raise BadInput(f"invalid label {value!r}: use 1-63 characters of letters, digits and _ . = : / -")
    return value


def labels(value: object) -> list[str]:
    items = list_of(value, str, "labels")
    if len(items) > MAX_LABELS:
        raise BadInput(f"too many labels ({len(items)}); at most {MAX_LABELS}")
    return [label(item) for item in items]


def ep_id(value: object) -> str:
    if not isinstance(value, str):
        raise BadInput(f"invalid endpoint id {value!r}: expected a UUID")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise BadInput(f"invalid endpoint id {value!r}: expected a UUID") from None
    if str(parsed) != value:
        raise BadInput(f"invalid endpoint id {value!r}: expected a lowercase canonical UUID")
    return value


def json_object(body: bytes, what: str = "request body") -> dict[str, Any]:
    """Parse a JSON object from bytes."""
    if not body:
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadInput(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def field(obj: Mapping[str, Any], key: str, kind: type[T], *, default: T | None = None, required: bool = True) -> T:
    """`obj[key]` checked to be of `kind` (bool is not accepted as int)."""
    if key not in obj or obj[key] is None:
        if default is not None or not required:
            return default  # type: ignore[return-value]
        raise BadInput(f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadInput(f"field {key!r} must be {_kind_name(kind)}, got {type(value).__name__}")
    return value


def list_of(value: object, kind: type[T], what: str) -> list[T]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise BadInput(f"{what} must be a list of {_plural(kind)}")
    return list(value)


def user_names(value: object, what: str, most: int) -> tuple[str, ...]:
    """A JSON list of at most `most` user names (None: none), duplicates dropped, order kept."""
    items = list_of(value, str, what)
    if len(items) > most:
        raise BadInput(f"{what}: at most {most} users")
    return tuple(dict.fromkeys(user_name(u) for u in items))


def int_range(value: object, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise BadInput(f"{what} must be a whole number from {lo} to {hi}, got {value!r}")
    return value


def _plural(kind: type[Any]) -> str:
    return {str: "strings", int: "numbers", bool: "booleans", dict: "objects"}.get(kind, f"{kind.__name__} values")


def _kind_name(kind: type[Any]) -> str:
    return {str: "a string", int: "a number", bool: "true or false", list: "a list", dict: "an object"}.get(
        kind, kind.__name__
    )


MAX_NOTE = 500
"""Characters of a note (a policy version's `--note`): one line, shown in `ztm policy history` and the hub's log."""


def note(value: object) -> str:
    """An optional note: one line of at most `MAX_NOTE` printable characters (no control characters: it is printed
    in terminals and written to logs); "" when absent."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadInput(f"field 'note' must be a string, got {type(value).__name__}")
    if len(value) > MAX_NOTE or not value.isprintable():
        raise BadInput(f"field 'note' must be one line of at most {MAX_NOTE} characters that are printable")
    return value
