"""The HuJSON reader of the policy (`ztm.policy.hujson`): values with their positions, comments and trailing commas,
and every syntax error at its exact line and column. A `§` in a test text marks where the error must be reported
(it is removed before parsing)."""

from __future__ import annotations

import pytest

from ztm.policy import PolicyError
from ztm.policy.hujson import MAX_DEPTH, Node, parse


def marked(text: str) -> tuple[str, int, int]:
    """`text` without its '§', and the 1-based line and column where the '§' was."""
    index = text.index("§")
    before = text[:index]
    return text.replace("§", "", 1), before.count("\n") + 1, index - (before.rfind("\n") + 1) + 1


def plain(node: Node) -> object:
    if node.kind == "object":
        return {key.text: plain(value) for key, value in node.members}
    if node.kind == "array":
        return [plain(item) for item in node.items]
    return node.value


def test_values_comments_and_trailing_commas() -> None:
    text = """// a policy
{
  /* block
     comment */ "a": [1, -2.5, 3e2, true, false, null, "x\\n\\u00e9\\ud83d\\ude00",],  // trailing comma
  "b": {"c": {},  "d": [],},
}
"""
    assert plain(parse(text)) == {
        "a": [1, -2.5, 300.0, True, False, None, "x\né😀"],
        "b": {"c": {}, "d": []},
    }


def test_positions_of_keys_and_values() -> None:
    root = parse('{\n  "acls": [\n    {"src": ["*"]},\n  ],\n}')
    assert (root.line, root.column) == (1, 1)
    key, acls = root.members[0]
    assert (key.line, key.column, key.text) == (2, 3, "acls")
    assert (acls.line, acls.column) == (2, 11)
    rule = acls.items[0]
    assert (rule.line, rule.column) == (3, 5)
    src_key, src = rule.members[0]
    assert (src_key.line, src_key.column) == (3, 6)
    assert (src.items[0].line, src.items[0].column) == (3, 14)


def test_columns_count_characters_not_bytes() -> None:
    root = parse('{"é": "ü", "b": 1}')
    assert [(k.column, v.column) for k, v in root.members] == [(2, 7), (12, 17)]


def test_a_byte_order_mark_is_skipped() -> None:
    assert plain(parse('\ufeff{"a": 1}')) == {"a": 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"a": 1, §"a": 2}', "duplicate key 'a' (first at line 1, column 2)"),
        ('{\n  "acls": [],\n  §"acls": [],\n}', "duplicate key 'acls' (first at line 2, column 3)"),
        ('{"a": §tru}', "expected a value"),
        ('{"a": §nul}', "expected a value"),
        ('{"a": §undefined}', "expected a value"),
        ("{§'a': 1}", "expected a key in double quotes"),
        ("{\"a\": §'x'}", "double quotes"),
        ('{"a" §1}', "expected ':' after the key 'a'"),
        ('{"a": 1 §"b": 2}', "expected ',' or '}'"),
        ('["a" §"b"]', "expected ',' or ']'"),
        ('{"a": [1, §, 2]}', "a value is missing before it"),
        ('{"a": §,}', "a value is missing before it"),
        ('{"a": §}', "a value is missing before it"),
        ("{§, }", "expected a key"),
        ("{§1: 2}", "expected a key"),
        ('{"a": 1}\n§x', "after the end of the policy object"),
        ('{"a": 1}§}', "after the end of the policy object"),
        ('{"a": 1} §{"b": 2}', "after the end of the policy object"),
        ('{"a": 1}\n// ok\n§/ one slash', "after the end of the policy object"),
        ('{\n  §/* never closed\n  "a": 1}', "unterminated comment"),
        ('{"a": §"never closed}', "unterminated string"),
        ('{"a": §"two\nlines"}', "unterminated string"),
        ('{"a": "tab§\there"}', "control character"),
        ('{"a": "§\\x41"}', "bad escape '\\x'"),
        ('{"a": "§\\u12"}', "\\u' takes 4 hex digits"),
        ('{"a": "§\\ud800"}', "lone surrogate"),
        ('{"a": "x§\\udc00y"}', "lone surrogate"),
        ('{"a": §01}', "leading zero"),
        ('{"a": §-01}', "leading zero"),
        ('{"a": 1§.}', "in a number"),
        ('{"a": 1§x}', "in a number"),
        ('{"a": §-}', "expected a number"),
        ('{"a": §+1}', "expected a value"),
        ('{"a": §' + "1" * 41 + "}", "number too long (41 characters)"),
        ("§", "the policy is empty"),
        ("  // only a comment\n§", "the policy is empty"),
        ('{"a": [1, 2\n§', "the array opened at line 1 is not closed"),
        ('{"a": 1,\n§', "the object opened at line 1 is not closed"),
        ('{"a":§', "a value is missing"),
    ],
)
def test_syntax_errors_at_their_position(text: str, message: str) -> None:
    source, line, column = marked(text)
    with pytest.raises(PolicyError) as caught:
        parse(source)
    error = caught.value
    assert (error.line, error.column) == (line, column), error.message
    assert message in error.message
    assert error.message.startswith(f"policy line {line}, column {column}: ")
    assert "\n" not in error.message


def test_nesting_is_limited() -> None:
    assert parse("[" * MAX_DEPTH + "]" * MAX_DEPTH).kind == "array"
    with pytest.raises(PolicyError, match=f"nested more than {MAX_DEPTH} levels") as caught:
        parse("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    assert (caught.value.line, caught.value.column) == (1, MAX_DEPTH + 1)
