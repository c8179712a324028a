"""ztm.validate: the one user-name and name pattern every layer checks with."""

from __future__ import annotations

import pytest

from ztm import pki, validate
from ztm.errors import BadInput


@pytest.mark.parametrize("good", ["bob", "a", "alice.smith", "x_1-2", "9" * 63])
def test_user_names_accepted(good: str) -> None:
    assert validate.user_name(good) == good
    assert pki.is_valid_user(good)


@pytest.mark.parametrize("bad", ["", "Bob", "-bob", ".bob", "bob\n", "bo b", "9" * 64, None, 7])
def test_user_names_refused_everywhere(bad: object) -> None:
    with pytest.raises(BadInput, match="invalid user name"):
        validate.user_name(bad)
    assert not pki.is_valid_user(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["", "-x", "a b", "office\n", "x" * 64, "é"])
def test_names_refused_with_what_they_name(bad: str) -> None:
    with pytest.raises(BadInput, match="invalid endpoint name"):
        validate.name(bad, "endpoint name")


def test_names_accepted() -> None:
    assert validate.name("Office-1.home_2", "mesh name") == "Office-1.home_2"
