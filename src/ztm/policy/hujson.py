"""A HuJSON reader that keeps the line and column of every key and value.

HuJSON is JSON plus `//` line comments, `/* */` block comments and trailing commas after the last element of an
array or object (the format of Tailscale's policy file). This reader parses it into a small tree of `Node`s, each
with the 1-based line and column of its first character, so that the policy checker can say exactly where a wrong
key or value is. Duplicate keys in an object are errors (at the second one), never "the last one wins".

Why our own reader: none of the libraries we keep gives positions. The stdlib `json` module returns plain values
(positions only in its syntax errors), and `json5` on PyPI (JSON5, a superset of HuJSON: single quotes, unquoted
keys, hex numbers) gives no positions either and keeps the last of duplicate keys unless told otherwise; the few
packages with source spans (json5kit's syntax tree, json5-document) are new or little used, and read JSON5 too, so
each would be a new runtime dependency in the trust path that still needs the HuJSON subset enforced on top. The
grammar is small enough to read here in a few hundred lines.

Every error is a `PolicyError` at the offending token. Nesting is limited (`MAX_DEPTH`) so that hostile input cannot
exhaust the stack; the cost is linear in the length of the text (up to 3 s of CPU for 1 MiB of the densest
input, `[0,0,0,...]`, on a loaded 2-core machine; a 1,000-rule policy of 200 kB loads in about 0.17 s with its
checks: bench/policy_decide.py). Callers that load untrusted drafts do it off their event loop.
"""

from __future__ import annotations

import bisect
import re

from ztm.policy.errors import PolicyError

MAX_DEPTH = 32
"""Arrays and objects nested deeper than this are refused (a policy needs 4 levels)."""
_MAX_NUMBER = 40
"""Longer number tokens are refused (Python's int() is quadratic in the digits)."""

_SKIP = re.compile(r"(?:[ \t\r\n]+|//[^\n]*|/\*.*?\*/)*", re.DOTALL)
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_SKIPPABLE = frozenset(" \t\r\n/")
_SIMPLE_STRING = re.compile(r'"([^"\\\x00-\x1f]*)"')
_PLAIN = re.compile(r'[^"\\\x00-\x1f]*')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_HEX4 = re.compile(r"[0-9a-fA-F]{4}")


class Lines:
    """Line and column (1-based, in characters) of an offset in a text."""

    __slots__ = ("_starts",)

    def __init__(self, text: str) -> None:
        self._starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def where(self, pos: int) -> tuple[int, int]:
        line = bisect.bisect_right(self._starts, pos)
        return line, pos - self._starts[line - 1] + 1


class Node:
    """A parsed value starting at offset `pos` (`line`, `column` are 1-based and computed when asked). `value` is a
    str, int, float, bool or None for scalars; `items` the `Node`s of an array; `members` the (key `Node`, value
    `Node`) pairs of an object, in text order."""

    __slots__ = ("_lines", "items", "kind", "members", "pos", "value")

    def __init__(
        self,
        kind: str,  # "object" | "array" | "string" | "number" | "bool" | "null"
        lines: Lines,
        pos: int,
        value: object = None,
        items: list[Node] | None = None,
        members: list[tuple[Node, Node]] | None = None,
    ) -> None:
        self.kind = kind
        self._lines = lines
        self.pos = pos
        self.value = value
        self.items: list[Node] = items if items is not None else []
        self.members: list[tuple[Node, Node]] = members if members is not None else []

    @property
    def line(self) -> int:
        return self._lines.where(self.pos)[0]

    @property
    def column(self) -> int:
        return self._lines.where(self.pos)[1]

    @property
    def text(self) -> str:
        """The string of a "string" node ("" for other kinds)."""
        return self.value if isinstance(self.value, str) else ""

    def __repr__(self) -> str:
        return f"Node({self.kind}, line {self.line}, column {self.column})"


_KIND_NAMES = {
    "object": "an object",
    "array": "an array",
    "string": "a string",
    "number": "a number",
    "bool": "true or false",
    "null": "null",
}


def kind_name(kind: str) -> str:
    """ "an object", "a string", ... for messages."""
    return _KIND_NAMES.get(kind, kind)


def parse(text: str) -> Node:
    """The single value of `text` (comments and whitespace around it allowed); PolicyError at the first problem."""
    return _Reader(text).document()


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines = Lines(text)

    def where(self, pos: int) -> tuple[int, int]:
        return self.lines.where(pos)

    def fail(self, pos: int, what: str) -> PolicyError:
        line, column = self.where(pos)
        return PolicyError(line, column, what)

    def document(self) -> Node:
        if self.text.startswith("\ufeff"):
            self.pos = 1
        self.skip()
        if self.pos >= len(self.text):
            raise self.fail(self.pos, "the policy is empty: '{}' is the smallest policy (it denies everything)")
        node = self.value(0)
        self.skip()
        if self.pos < len(self.text):
            raise self.fail(
                self.pos,
                f"unexpected {self.describe(self.pos)} after the end of the policy object: "
                "remove it, or move it inside the braces",
            )
        return node

    def describe(self, pos: int) -> str:
        if pos >= len(self.text):
            return "end of text"
        char = self.text[pos]
        return f"character {char!r}"

    def skip(self) -> None:
        """Skip whitespace and comments."""
        if self.text[self.pos : self.pos + 1] not in _SKIPPABLE:
            return
        self.pos = _SKIP.match(self.text, self.pos).end()  # type: ignore[union-attr]  # always matches
        if self.text.startswith("/*", self.pos):
            raise self.fail(self.pos, "unterminated comment: '/*' has no closing '*/'")

    def value(self, depth: int) -> Node:
        text = self.text
        pos = self.pos
        if pos >= len(text):
            raise self.fail(pos, "unexpected end of text: a value is missing (the text was cut short?)")
        char = text[pos]
        if char == '"':
            return Node("string", self.lines, pos, self.string())
        if char == "{":
            return self.obj(depth + 1)
        if char == "[":
            return self.array(depth + 1)
        if char == "-" or char.isdigit():
            return Node("number", self.lines, pos, self.number())
        for word, kind, result in (("true", "bool", True), ("false", "bool", False), ("null", "null", None)):
            if text.startswith(word, pos):
                self.pos = pos + len(word)
                return Node(kind, self.lines, pos, result)
        if char == "'":
            raise self.fail(pos, 'strings take double quotes ("), not single quotes')
        if char in "]}":
            raise self.fail(pos, f"unexpected {char!r}: a value is missing before it")
        if char == ",":
            raise self.fail(pos, "unexpected ',': a value is missing before it")
        raise self.fail(pos, f"unexpected {self.describe(pos)}: expected a value (an object, array, string, ...)")

    def nested(self, depth: int, pos: int) -> None:
        if depth > MAX_DEPTH:
            raise self.fail(pos, f"nested more than {MAX_DEPTH} levels deep: a policy needs only 4")

    def obj(self, depth: int) -> Node:
        start = self.pos
        self.nested(depth, start)
        line = self.where(start)[0]
        self.pos += 1
        members: list[tuple[Node, Node]] = []
        seen: dict[str, Node] = {}
        text = self.text
        while True:
            self.skip()
            if self.pos >= len(text):
                raise self.fail(self.pos, f"unexpected end of text: the object opened at line {line} is not closed")
            if text[self.pos] == "}":
                self.pos += 1
                return Node("object", self.lines, start, members=members)
            if text[self.pos] != '"':
                raise self.fail(
                    self.pos,
                    f"unexpected {self.describe(self.pos)}: expected a key in double quotes or '}}' "
                    f"(the object opened at line {line})",
                )
            key = Node("string", self.lines, self.pos, self.string())
            if key.text in seen:
                first = seen[key.text]
                raise PolicyError(
                    key.line,
                    key.column,
                    f"duplicate key {key.text!r} (first at line {first.line}, column {first.column}): keep one of them",
                )
            seen[key.text] = key
            self.skip()
            if self.pos >= len(text) or text[self.pos] != ":":
                raise self.fail(self.pos, f"expected ':' after the key {key.text!r}, found {self.describe(self.pos)}")
            self.pos += 1
            self.skip()
            members.append((key, self.value(depth)))
            self.skip()
            if self.pos < len(text) and text[self.pos] == ",":
                self.pos += 1
            elif self.pos >= len(text):
                raise self.fail(self.pos, f"unexpected end of text: the object opened at line {line} is not closed")
            elif text[self.pos] != "}":
                raise self.fail(
                    self.pos,
                    f"unexpected {self.describe(self.pos)}: expected ',' or '}}' (the object opened at line {line})",
                )

    def array(self, depth: int) -> Node:
        start = self.pos
        self.nested(depth, start)
        line = self.where(start)[0]
        self.pos += 1
        items: list[Node] = []
        text = self.text
        while True:
            self.skip()
            if self.pos >= len(text):
                raise self.fail(self.pos, f"unexpected end of text: the array opened at line {line} is not closed")
            if text[self.pos] == "]":
                self.pos += 1
                return Node("array", self.lines, start, items=items)
            items.append(self.value(depth))
            self.skip()
            if self.pos < len(text) and text[self.pos] == ",":
                self.pos += 1
            elif self.pos >= len(text):
                raise self.fail(self.pos, f"unexpected end of text: the array opened at line {line} is not closed")
            elif text[self.pos] != "]":
                raise self.fail(
                    self.pos,
                    f"unexpected {self.describe(self.pos)}: expected ',' or ']' (the array opened at line {line})",
                )

    def string(self) -> str:
        """The string starting at the '"' at self.pos; self.pos moves past its closing quote."""
        text = self.text
        start = self.pos
        simple = _SIMPLE_STRING.match(text, start)
        if simple:  # no escapes: most strings
            self.pos = simple.end()
            return simple.group(1)
        pos = start + 1
        parts: list[str] = []
        while True:
            plain = _PLAIN.match(text, pos)
            if plain and plain.end() > pos:
                parts.append(plain.group())
                pos = plain.end()
            if pos >= len(text):
                raise self.fail(start, "unterminated string: the closing '\"' is missing")
            char = text[pos]
            if char == '"':
                self.pos = pos + 1
                return "".join(parts)
            if char != "\\":
                if char == "\n":
                    raise self.fail(start, "unterminated string: the closing '\"' is missing on this line")
                raise self.fail(pos, f"control character {char!r} in a string: write it as an escape such as \\n")
            esc = text[pos + 1 : pos + 2]
            if esc in _ESCAPES:
                parts.append(_ESCAPES[esc])
                pos += 2
                continue
            if esc != "u":
                raise self.fail(
                    pos,
                    f"bad escape '\\{esc}' in a string: use \\\" \\\\ \\/ \\b \\f \\n \\r \\t "
                    "or \\u and four hex digits (\\u00e9)",
                )
            code, pos = self.unicode(pos)
            if 0xD800 <= code < 0xDC00 and text.startswith("\\u", pos):
                low, after = self.unicode(pos)
                if 0xDC00 <= low < 0xE000:
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    pos = after
            if 0xD800 <= code < 0xE000:
                raise self.fail(pos - 6, "lone surrogate escape in a string: it is not a character")
            parts.append(chr(code))

    def unicode(self, pos: int) -> tuple[int, int]:
        digits = _HEX4.match(self.text, pos + 2)
        if not digits:
            raise self.fail(pos, "bad escape in a string: '\\u' takes 4 hex digits (\\u00e9)")
        return int(digits.group(), 16), pos + 6

    def number(self) -> int | float:
        match = _NUMBER.match(self.text, self.pos)
        if not match:
            raise self.fail(self.pos, f"unexpected {self.describe(self.pos)}: expected a number")
        token = match.group()
        if len(token) > _MAX_NUMBER:
            raise self.fail(self.pos, f"number too long ({len(token)} characters)")
        if token.lstrip("-") == "0" and self.text[match.end() : match.end() + 1].isdigit():
            raise self.fail(self.pos, "number with a leading zero: write 7, not 07")
        self.pos = match.end()
        if self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[self.pos] in "._"):
            raise self.fail(self.pos, f"unexpected {self.describe(self.pos)} in a number")
        if any(c in token for c in ".eE"):
            return float(token)
        return int(token)
