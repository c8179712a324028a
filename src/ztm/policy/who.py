"""Who asks and where: `Subject` (the verified caller), `Place` (the endpoint that serves), and the names the policy
language uses for them: users, endpoint names, `group:NAME` and `tag:NAME`.

Tags are labels of an endpoint that start with "tag:" (`tags_of_labels`); who may give an endpoint a tag is the
policy's `tagOwners` (checked by the hub when a label is set).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ztm import validate
from ztm.errors import BadInput

TAG = re.compile(r"tag:[A-Za-z0-9][A-Za-z0-9._-]{0,58}")
"""A tag (a whole label, so at most 63 characters; no ':' after the prefix); use with `fullmatch`."""
GROUP = re.compile(r"group:[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
"""A group name as the policy's `groups` defines it; use with `fullmatch`."""


@dataclass(frozen=True)
class Subject:
    """The verified caller: its user, its endpoint's name ("" when not known) and that endpoint's tags."""

    user: str
    ep: str = ""
    tags: frozenset[str] = frozenset()

    def __str__(self) -> str:
        return f"{self.user}@{self.ep}" if self.ep else self.user


@dataclass(frozen=True)
class Place:
    """The endpoint that serves: its name ("" for an abstract tagged place in tests) and its tags."""

    ep: str
    tags: frozenset[str] = frozenset()


def tags_of_labels(labels: Iterable[str]) -> frozenset[str]:
    """The labels that are tags (start with "tag:")."""
    return frozenset(label for label in labels if label.startswith("tag:"))


def parse_subject(text: str) -> Subject:
    """ "USER" or "USER@EP" (the CLI's `--from`, a policy test's "src"); BadInput saying the accepted forms."""
    user, at, ep = text.partition("@")
    if not validate.USER.fullmatch(user) or (at and not validate.NAME.fullmatch(ep)):
        raise BadInput(
            f"invalid caller {text[:80]!r}: write USER or USER@ENDPOINT (e.g. ops1 or ops1@laptop): a user name is "
            "lowercase letters, digits, '.', '_' or '-'; an endpoint name letters, digits, '.', '_' or '-'"
        )
    return Subject(user, ep)
