"""`ztm.hub.interest`: which `endpoint` events one session gets (sans-IO)."""

from __future__ import annotations

import uuid

from ztm.hub.interest import WATCH_MAX, Interest


def test_no_header_or_an_unknown_value_means_everything() -> None:
    for value in (None, "", "all", "ALL", "some-later-mode"):
        assert Interest.from_header(value).everything, value
    assert not Interest.from_header("watched").everything
    assert not Interest.from_header(" Watched ").everything


def test_a_watching_interest_wants_only_what_it_watches() -> None:
    interest = Interest.from_header("watched")
    assert not interest.wants("a")
    assert interest.watch("a") is None
    assert interest.wants("a") and not interest.wants("b")


def test_everything_keeps_no_set() -> None:
    interest = Interest()
    assert interest.watch("a") is None and len(interest) == 0 and interest.wants("b")


def test_the_set_is_bounded_and_forgets_the_least_recently_used() -> None:
    interest = Interest(everything=False)
    ids = [str(i) for i in range(WATCH_MAX)]
    for ep_id in ids:
        assert interest.watch(ep_id) is None
    assert interest.watch("0") is None  # used again: now the most recent
    assert interest.watch("new") == "1"  # the least recently used goes, and is reported
    assert not interest.wants("1") and interest.wants("0") and interest.wants("new")
    forgotten = [interest.watch(str(uuid.uuid4())) for _ in range(100_000)]
    assert len(interest) == WATCH_MAX
    assert sum(1 for f in forgotten if f is not None) == 100_000


def test_widening_drops_the_set() -> None:
    interest = Interest(everything=False)
    interest.watch("a")
    interest.want_everything()
    assert interest.everything and len(interest) == 0 and interest.wants("z")
