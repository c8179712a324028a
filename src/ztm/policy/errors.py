"""The one error of the policy language: `PolicyError`, a `BadInput` (HTTP 400) that carries the 1-based line and
column of the offending token and a one-line message "policy line L, column C: what is wrong (how to fix it)"."""

from __future__ import annotations

from ztm.errors import BadInput


class PolicyError(BadInput):
    """A policy text that cannot be used: bad HuJSON, an unknown key, a wrong type, an undefined name, ..."""

    def __init__(self, line: int, column: int, what: str) -> None:
        what = " ".join(what.split())  # one line, whatever a quoted fragment held
        super().__init__(f"policy line {line}, column {column}: {what}")
        self.line = line
        self.column = column
        self.what = what
