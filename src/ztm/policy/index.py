"""Which rules can decide a request, found by lookups instead of a scan of every rule.

`RuleIndex` maps each way a `src` entry can name a caller (any, a user, an endpoint name, USER@EP, a group's member,
a tag) and each way a `dst` entry can name a place and a kind of target (any place, an endpoint, a tag) to the set of
rule numbers that have such an entry. A request's candidates are the rules in both sets; they are then checked in
file order (`Rule.srcs`, `Rule.dsts`), so the first rule that matches still decides. With 1,000 rules a first
decision costs a few set operations rather than 1,000 rule checks.
"""

from __future__ import annotations

from collections import defaultdict

from ztm.policy.rules import Rule
from ztm.policy.target import KINDS
from ztm.policy.who import Place, Subject

_EMPTY: frozenset[int] = frozenset()


class RuleIndex:
    """Candidate rules (their positions in `acls`) for a caller and for a place and kind."""

    def __init__(self, rules: tuple[Rule, ...]) -> None:
        any_src: set[int] = set()
        by_user: defaultdict[str, set[int]] = defaultdict(set)  # bare names (as users) and group members
        by_ep: defaultdict[str, set[int]] = defaultdict(set)  # bare names (as endpoint names)
        by_pair: defaultdict[tuple[str, str], set[int]] = defaultdict(set)
        by_src_tag: defaultdict[str, set[int]] = defaultdict(set)
        by_place: defaultdict[tuple[str, str], set[int]] = defaultdict(set)  # ("*" | "ep:NAME" | tag, kind)
        for number, rule in enumerate(rules):
            for src in rule.srcs:
                if src.kind == "any":
                    any_src.add(number)
                elif src.kind == "name":
                    by_user[src.text].add(number)
                    by_ep[src.text].add(number)
                elif src.kind == "group":
                    for user in src.users:
                        by_user[user].add(number)
                elif src.kind == "tag":
                    by_src_tag[src.text].add(number)
                else:
                    by_pair[(src.user, src.ep)].add(number)
            for dst in rule.dsts:
                key = dst.target if dst.target == "*" or dst.target.startswith("tag:") else "ep:" + dst.target
                for kind in dst.part.kinds:
                    by_place[(key, kind)].add(number)
        self._any_src = frozenset(any_src)
        self._by_user = {k: frozenset(v) for k, v in by_user.items()}
        self._by_ep = {k: frozenset(v) for k, v in by_ep.items()}
        self._by_pair = {k: frozenset(v) for k, v in by_pair.items()}
        self._by_src_tag = {k: frozenset(v) for k, v in by_src_tag.items()}
        self._by_place = {k: frozenset(v) for k, v in by_place.items()}

    def callers(self, who: Subject) -> set[int]:
        """Rules with a src entry that may match `who` (a superset: each candidate is checked afterwards)."""
        found = set(self._any_src)
        found.update(self._by_user.get(who.user, _EMPTY))
        if who.ep:
            found.update(self._by_ep.get(who.ep, _EMPTY))
            found.update(self._by_pair.get((who.user, who.ep), _EMPTY))
        for tag in who.tags:
            found.update(self._by_src_tag.get(tag, _EMPTY))
        return found

    def places(self, where: Place, kinds: frozenset[str] | set[str]) -> set[int]:
        """Rules with a dst entry whose target names `where` and whose part can match one of `kinds`."""
        found: set[int] = set()
        for kind in kinds:
            if kind not in KINDS:
                continue
            found.update(self._by_place.get(("*", kind), _EMPTY))
            if where.ep:
                found.update(self._by_place.get(("ep:" + where.ep, kind), _EMPTY))
            for tag in where.tags:
                found.update(self._by_place.get((tag, kind), _EMPTY))
        return found

    def candidates(self, who: Subject, where: Place, kinds: frozenset[str] | set[str]) -> list[int]:
        """Rules that may decide, in file order."""
        callers = self.callers(who)
        if not callers:
            return []
        return sorted(callers.intersection(self.places(where, kinds)))
